"""Profilers: time what the Trainer does, action by action, under Lightning's action names.

    Trainer(profiler="simple")                       # or "advanced", "pytorch", or a Profiler object
    Trainer(profiler=SimpleProfiler(dirpath=".", filename="perf"))   # the report goes to ./fit-perf.txt

A profiler that is off costs nothing per batch: the Trainer hands the loop
timed callables only when one is on (``ember.profilers.wiring``). Submodules
load on first use.
"""
from __future__ import annotations

from ..lazy_exports import lazy_exports
from .profiler import PassThroughProfiler, Profiler

_LAZY = {
    "SimpleProfiler": ".simple",
    "AdvancedProfiler": ".advanced",
    "PyTorchProfiler": ".pytorch",
}

__all__ = ["Profiler", "PassThroughProfiler", *_LAZY]

__getattr__ = lazy_exports(__name__, _LAZY)
