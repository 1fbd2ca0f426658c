"""What a device reports about itself, with Lightning's stat names (DeviceStatsMonitor logs these).

CPU and Apple MPS stats come from ``psutil`` (an optional extra, ``pip install ember[stats]``), CUDA stats from
torch's caching allocator (``torch.cuda.memory_stats``).
"""
from __future__ import annotations

from typing import Any

import torch

PSUTIL_MISSING = "psutil is not installed; install it with `pip install psutil` (or `pip install ember[stats]`)."


def psutil_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("psutil") is not None


def _psutil_stats(prefix: str) -> dict[str, float]:
    try:
        import psutil
    except ImportError as err:
        raise ModuleNotFoundError(f"{prefix} stats need psutil: {PSUTIL_MISSING}") from err
    return {f"{prefix}_vm_percent": psutil.virtual_memory().percent, f"{prefix}_percent": psutil.cpu_percent(),
            f"{prefix}_swap_percent": psutil.swap_memory().percent}


def cpu_stats() -> dict[str, float]:
    """System-wide CPU use, RAM use and swap use, in percent."""
    return _psutil_stats("cpu")


def device_stats(device: torch.device) -> dict[str, Any]:
    """The stats of ``device``: the allocator's counters on CUDA, psutil's percentages elsewhere."""
    if device.type == "cuda":
        return torch.cuda.memory_stats(device)
    if device.type == "mps":
        return _psutil_stats("M1")  # Lightning's names: the M1's memory is the system's
    if device.type == "xla":
        return {}  # not collected for TPUs yet (Lightning reads torch_xla's memory info and op counters)
    return cpu_stats()
