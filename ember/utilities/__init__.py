"""Small helpers with Lightning's names: rank_zero_only, seed_everything, CombinedLoader, the advisory-warning
switch, measure_flops, Throughput."""
from __future__ import annotations

import importlib
from typing import Any

from .rank_zero import rank_zero_info, rank_zero_only, rank_zero_warn
from .seed import seed_everything
from .warnings import AdvisoryWarning, PossibleUserWarning, disable_possible_user_warnings, quiet_advisories

# Loaded on first use: measure_flops pulls in torch's flop counter.
_THROUGHPUT = ("measure_flops", "Throughput")

__all__ = ["rank_zero_only", "rank_zero_warn", "rank_zero_info", "seed_everything", "CombinedLoader",
           "AdvisoryWarning", "PossibleUserWarning", "quiet_advisories", "disable_possible_user_warnings",
           *_THROUGHPUT]


def __getattr__(name: str) -> Any:
    # CombinedLoader (and its module, reached as an attribute as in Lightning) load on first use.
    if name in ("CombinedLoader", "combined_loader"):
        module = importlib.import_module(".combined_loader", __name__)
        return module if name == "combined_loader" else module.CombinedLoader
    if name in _THROUGHPUT:
        return getattr(importlib.import_module(".throughput", __name__), name)
    raise AttributeError(f"module 'ember.utilities' has no attribute {name!r}")
