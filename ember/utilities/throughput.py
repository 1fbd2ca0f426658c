"""Throughput bookkeeping (batches, samples, items and FLOPs per second) and FLOP counting with torch.

``Throughput`` keeps the last ``window_size`` running totals and turns them into rates over that window, with
Lightning's key names. ``measure_flops`` counts with ``torch.utils.flop_counter.FlopCounterMode``; run it on a
meta-device copy of the model to count without computing.
"""
from __future__ import annotations

from collections import deque
from typing import Any, Callable

import torch

from .rank_zero import rank_zero_warn


def measure_flops(model: torch.nn.Module, forward_fn: Callable[[], torch.Tensor],
                  loss_fn: Callable[[torch.Tensor], torch.Tensor] | None = None) -> int:
    """FLOPs of ``forward_fn()`` (and, with ``loss_fn``, of the loss and its backward), as torch counts them."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        out = forward_fn()
        if loss_fn is not None:
            loss_fn(out).backward()
    return int(counter.get_total_flops())


# Peak dense FLOP/s per device from NVIDIA's data sheets, by the compute dtype. Chips not listed get no MFU.
_CUDA_PEAK_FLOPS: dict[str, dict[Any, float]] = {
    "h200": {torch.float64: 34e12, torch.float32: 67e12, "tfloat32": 494.7e12, torch.bfloat16: 989.4e12,
             torch.float16: 989.4e12},
    "h100": {torch.float64: 34e12, torch.float32: 67e12, "tfloat32": 494.7e12, torch.bfloat16: 989.4e12,
             torch.float16: 989.4e12},
    "a100": {torch.float64: 9.7e12, torch.float32: 19.5e12, "tfloat32": 156e12, torch.bfloat16: 312e12,
             torch.float16: 312e12},
    "l4": {torch.float32: 30.3e12, "tfloat32": 60e12, torch.bfloat16: 121e12, torch.float16: 121e12},
    "v100": {torch.float64: 7.8e12, torch.float32: 15.7e12, torch.float16: 125e12},
    "t4": {torch.float32: 8.1e12, torch.float16: 65e12},
}


def get_available_flops(device: torch.device, dtype: torch.dtype) -> int | None:
    """The device's theoretical peak FLOP/s for ``dtype`` (an upper bound for MFU), or None when not known."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    chip = next((c for c in _CUDA_PEAK_FLOPS if c in name.lower()), None)
    if chip is None:
        rank_zero_warn(f"No peak FLOP/s known for {name!r}: the throughput has no MFU.")
        return None
    if dtype is torch.float32 and torch.get_float32_matmul_precision() != "highest":
        dtype = "tfloat32"  # matmuls run on tensor cores in TF32
    peak = _CUDA_PEAK_FLOPS[chip].get(dtype)
    return None if peak is None else int(peak)


def compute_dtype(precision_name: str) -> torch.dtype:
    """The dtype the matmuls of a Trainer ``precision`` run in."""
    if precision_name.startswith("bf16"):
        return torch.bfloat16
    if precision_name.startswith("16"):
        return torch.float16
    if precision_name.startswith("64"):
        return torch.float64
    return torch.float32


class Throughput:
    """Rates over the last ``window_size`` calls of ``update`` (running totals in, per-second rates out).

    ``compute()`` returns ``time``, ``batches``, ``samples`` (and ``lengths``); once the window is full also
    ``device/batches_per_sec``, ``device/samples_per_sec`` (``device/items_per_sec`` with lengths), and, with
    flops, ``device/flops_per_sec`` (``device/mfu`` when ``available_flops`` is known). With ``world_size > 1``
    the rates of all devices together come without the ``device/`` prefix.
    """

    def __init__(self, available_flops: float | None = None, world_size: int = 1, window_size: int = 100,
                 separator: str = "/") -> None:
        if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
            raise ValueError(f"Throughput(world_size={world_size!r}): expected an int >= 1.")
        if isinstance(window_size, bool) or not isinstance(window_size, int) or window_size < 2:
            raise ValueError(f"Throughput(window_size={window_size!r}): expected an int >= 2 (a rate needs two "
                             "points).")
        self.available_flops = available_flops
        self.world_size = world_size
        self.separator = separator
        self.window_size = window_size
        self._time: deque[float] = deque(maxlen=window_size)
        self._batches: deque[int] = deque(maxlen=window_size)
        self._samples: deque[int] = deque(maxlen=window_size)
        self._lengths: deque[int] = deque(maxlen=window_size)
        self._flops: deque[float] = deque(maxlen=window_size)  # per update, all devices together

    def update(self, *, time: float, batches: int, samples: int, lengths: int | None = None,
               flops: int | None = None) -> None:
        """``time``, ``batches``, ``samples`` and ``lengths`` are totals since the start (they only grow);
        ``flops`` is what one device computed since the previous update."""
        for name, series, value in (("batches", self._batches, batches), ("samples", self._samples, samples)):
            if series and value < series[-1]:
                raise ValueError(f"Throughput.update({name}={value}): totals only grow; the last was {series[-1]}.")
        if samples < batches:
            raise ValueError(f"Throughput.update(samples={samples}, batches={batches}): expected samples >= batches.")
        if lengths is not None and lengths < samples:
            raise ValueError(f"Throughput.update(lengths={lengths}, samples={samples}): expected lengths >= samples.")
        if lengths is not None and len(self._lengths) != len(self._samples):
            raise ValueError("Throughput.update(lengths=...): give lengths with every update or with none.")
        self._time.append(time)
        self._batches.append(batches)
        self._samples.append(samples)
        if lengths is not None:
            self._lengths.append(lengths)
        if flops is not None:
            self._flops.append(flops * self.world_size)

    @property
    def last_time(self) -> float:
        """The ``time`` of the latest update (0.0 before the first)."""
        return self._time[-1] if self._time else 0.0

    def compute(self) -> dict[str, int | float]:
        if not self._time:
            return {}
        sep, world = self.separator, self.world_size
        metrics: dict[str, int | float] = {"time": self._time[-1], "batches": self._batches[-1],
                                           "samples": self._samples[-1]}
        if self._lengths:
            metrics["lengths"] = self._lengths[-1]
        elapsed = self._time[-1] - self._time[0]
        if len(self._time) == self.window_size and elapsed > 0:
            rates = {"batches_per_sec": (self._batches[-1] - self._batches[0]) / elapsed,
                     "samples_per_sec": (self._samples[-1] - self._samples[0]) / elapsed}
            if len(self._lengths) == self.window_size:
                rates["items_per_sec"] = (self._lengths[-1] - self._lengths[0]) / elapsed
            for key, per_device in rates.items():
                metrics[f"device{sep}{key}"] = per_device
                if world > 1:
                    metrics[key] = per_device * world
        if len(self._flops) == self.window_size and elapsed > 0:
            # the first entry's work happened before the window's first time stamp
            flops_per_sec = (sum(self._flops) - self._flops[0]) / elapsed
            if world > 1:
                metrics["flops_per_sec"] = flops_per_sec
            metrics[f"device{sep}flops_per_sec"] = flops_per_sec / world
            if self.available_flops:
                metrics[f"device{sep}mfu"] = flops_per_sec / world / self.available_flops
        return metrics

    def reset(self) -> None:
        for series in (self._time, self._batches, self._samples, self._lengths, self._flops):
            series.clear()
