"""Strategies by their Lightning names: ``from lightning.pytorch.strategies import DDPStrategy`` works with ember."""
from __future__ import annotations

import importlib
from typing import Any

from ..runtime.strategy import SingleDeviceStrategy, Strategy

_LAZY = {"DDPStrategy": "..runtime.ddp", "ParallelStrategy": "..runtime.ddp", "FSDPStrategy": "..runtime.fsdp"}

__all__ = ["Strategy", "SingleDeviceStrategy", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:  # torch.distributed is imported only when a distributed strategy is asked for
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'ember.strategies' has no attribute {name!r}")
