"""Which device trains, and how a batch gets there.

``accelerator="auto"`` prefers CUDA, then Apple's MPS, then the CPU.
Everything that asks the machine what it has goes through ``probe()`` so the
tests can fake a machine with GPUs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")


@dataclass(frozen=True)
class MachineProbe:
    """What the machine offers. Replaced wholesale by tests that fake GPUs."""

    cuda_count: int
    mps: bool


def probe() -> MachineProbe:
    cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
    mps_backend = getattr(torch.backends, "mps", None)
    mps = bool(mps_backend is not None and mps_backend.is_available())
    return MachineProbe(cuda_count=cuda, mps=mps)


def _describe(found: MachineProbe) -> str:
    parts = [f"{found.cuda_count} CUDA device(s)"]
    parts.append("MPS available" if found.mps else "no MPS")
    return ", ".join(parts)


@dataclass(frozen=True)
class Accelerator:
    """The chosen device type and the device indices this process may use."""

    name: str  # "cpu", "cuda" or "mps"
    device_ids: tuple[int, ...]

    @property
    def num_devices(self) -> int:
        return len(self.device_ids)

    def root_device(self, local_rank: int = 0) -> torch.device:
        if self.name == "cpu":
            return torch.device("cpu")
        return torch.device(self.name, self.device_ids[local_rank])

    def describe(self) -> str:
        n = self.num_devices
        return f"{self.name} ({n} device{'s' if n != 1 else ''})"


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
    found = found or probe()
    kind = accelerator.lower()
    if kind == "auto":
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
