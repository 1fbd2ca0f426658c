"""Which device trains, and how a batch gets there.

``accelerator="auto"`` prefers a TPU (when torch_xla is installed and finds one), then CUDA, then
Apple's MPS, then the CPU. ``accelerator="tpu"`` runs through torch_xla (``ember.runtime.xla``).
Everything that asks the machine what it has goes through ``probe()`` so the
tests can fake a machine with GPUs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")


@dataclass(frozen=True)
class MachineProbe:
    """What the machine offers. Replaced wholesale by tests that fake GPUs."""

    cuda_count: int
    mps: bool
    tpu_count: int = 0  # TPU cores torch_xla reports; 0 without torch_xla


def probe() -> MachineProbe:
    cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
    mps_backend = getattr(torch.backends, "mps", None)
    mps = bool(mps_backend is not None and mps_backend.is_available())
    return MachineProbe(cuda_count=cuda, mps=mps, tpu_count=_tpu_count())


def _tpu_count() -> int:
    from . import xla

    if not xla.is_installed():
        return 0
    try:
        return xla.device_count()
    except (RuntimeError, ValueError, AssertionError, OSError):  # torch_xla present, no TPU (e.g. a CPU build)
        return 0


def _describe(found: MachineProbe) -> str:
    parts = [f"{found.cuda_count} CUDA device(s)"]
    parts.append("MPS available" if found.mps else "no MPS")
    if found.tpu_count:
        parts.append(f"{found.tpu_count} TPU core(s)")
    return ", ".join(parts)


@dataclass(frozen=True)
class Accelerator:
    """The chosen device type and the device indices this process may use."""

    name: str  # the torch device type: "cpu", "cuda", "mps", or "xla" (accelerator="tpu")
    device_ids: tuple[int, ...]

    @property
    def num_devices(self) -> int:
        return len(self.device_ids)

    def root_device(self, local_rank: int = 0) -> torch.device:
        if self.name == "cpu":
            return torch.device("cpu")
        if self.name == "xla":
            from . import xla

            return xla.device(self.device_ids[local_rank])  # the device object torch_xla hands out
        return torch.device(self.name, self.device_ids[local_rank])

    def get_device_stats(self, device: torch.device) -> dict[str, Any]:
        """What ``device`` reports about itself (Lightning's names); see ``ember.runtime.device_stats``."""
        from .device_stats import device_stats

        return device_stats(device)

    def describe(self) -> str:
        n = self.num_devices
        name = "tpu (xla)" if self.name == "xla" else self.name
        return f"{name} ({n} device{'s' if n != 1 else ''})"


def _parse_devices(devices: Any, available: int, kind: str) -> tuple[int, ...]:
    """Turn Lightning's ``devices`` forms into a tuple of indices.

    Accepted: "auto", a positive int, -1 / "-1" (all), a list of indices, or a
    string like "2" or "0,2". For the CPU an int means that many processes.
    """
    allowed = '"auto", a positive int, -1, a list of indices like [0, 2], or a string like "0,2"'
    if isinstance(devices, bool):
        raise ValueError(f"Trainer(devices={devices!r}) is not valid; allowed: {allowed}.")
    if devices == "auto":
        count = available if kind == "cuda" else 1
        return tuple(range(max(count, 1)))
    if isinstance(devices, str):
        text = devices.strip()
        if text == "-1":
            devices = -1
        elif "," in text:
            devices = [int(p) for p in text.split(",") if p.strip()]
        elif text.isdigit():
            devices = int(text)
        else:
            raise ValueError(f"Trainer(devices={devices!r}) is not valid; allowed: {allowed}.")
    if isinstance(devices, int):
        if devices == -1:
            if kind == "cpu":
                raise ValueError("Trainer(devices=-1) means 'every GPU'; with accelerator='cpu' give a number of processes.")
            return tuple(range(available))
        if devices <= 0:
            raise ValueError(f"Trainer(devices={devices!r}) is not valid; allowed: {allowed}.")
        if kind != "cpu" and devices > available:
            raise ValueError(
                f"Trainer(devices={devices}) asks for {devices} {kind} device(s), but this machine has {available}."
            )
        return tuple(range(devices))
    if isinstance(devices, (list, tuple)):
        ids = tuple(int(d) for d in devices)
        if not ids or len(set(ids)) != len(ids) or min(ids) < 0:
            raise ValueError(f"Trainer(devices={devices!r}) is not valid; allowed: {allowed}.")
        if kind != "cpu" and max(ids) >= available:
            raise ValueError(
                f"Trainer(devices={devices!r}) names {kind} device {max(ids)}, but this machine has {available}."
            )
        return ids
    raise ValueError(f"Trainer(devices={devices!r}) is not valid; allowed: {allowed}.")


def choose(accelerator: Any, devices: Any, found: MachineProbe | None = None) -> Accelerator:
    """Resolve ``accelerator`` and ``devices`` against what the machine has."""
    if not isinstance(accelerator, str) or accelerator.lower() not in ACCELERATORS:
        raise ValueError(
            f"Trainer(accelerator={accelerator!r}) is not known; allowed: {', '.join(repr(a) for a in ACCELERATORS)}."
        )
    kind = accelerator.lower()
    if kind == "tpu":
        from . import xla

        xla.torch_xla(accelerator)  # an error naming torch_xla and how to install it, when it is missing
    if kind == "cpu":  # nothing to ask the machine (the probe costs ~0.1 ms: CUDA, MPS and torch_xla queries)
        return Accelerator(name="cpu", device_ids=_parse_devices(devices, 1, kind))
    found = found or probe()
    if kind == "tpu":
        if not found.tpu_count:
            raise RuntimeError(f"Trainer(accelerator={accelerator!r}): torch_xla is installed but finds no TPU on this "
                               f"machine ({_describe(found)}). Use accelerator='auto' to fall back to what there is.")
        return Accelerator(name="xla", device_ids=xla.parse_devices(devices, found.tpu_count))
    if kind == "auto":
        if found.tpu_count:  # Lightning's order: TPU, then GPUs, then the CPU
            from . import xla

            return Accelerator(name="xla", device_ids=xla.parse_devices(devices, found.tpu_count))
        kind = "cuda" if found.cuda_count else "mps" if found.mps else "cpu"
    elif kind == "gpu":
        if found.cuda_count:
            kind = "cuda"
        elif found.mps:
            kind = "mps"
        else:
            raise RuntimeError(
                f"Trainer(accelerator={accelerator!r}) needs a GPU, but this machine has {_describe(found)}. "
                "Use accelerator='auto' to fall back to the CPU."
            )
    if kind == "cuda" and not found.cuda_count:
        raise RuntimeError(
            f"Trainer(accelerator={accelerator!r}) needs CUDA, but this machine has {_describe(found)}. "
            "Use accelerator='auto' to fall back to the CPU."
        )
    if kind == "mps" and not found.mps:
        raise RuntimeError(f"Trainer(accelerator={accelerator!r}) needs MPS, but this machine has {_describe(found)}.")
    available = found.cuda_count if kind == "cuda" else 1
    ids = _parse_devices(devices, available, kind)
    if kind == "mps" and len(ids) > 1:
        raise ValueError(f"Trainer(devices={devices!r}): MPS has a single device.")
    return Accelerator(name=kind, device_ids=ids)


def move_to_device(batch: Any, device: torch.device, non_blocking: bool = False) -> Any:
    """Move every tensor in a nested batch (lists, tuples, namedtuples, dicts, dataclasses)."""
    from ..utilities.apply import apply_to_tensors

    def other(obj: Any) -> Any:
        # Objects with their own .to() (e.g. torch_geometric data) know best.
        return obj.to(device) if hasattr(obj, "to") and callable(obj.to) and not isinstance(obj, type) else obj

    return apply_to_tensors(batch, lambda t: t.to(device, non_blocking=non_blocking), other)
