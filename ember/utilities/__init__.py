"""Small helpers with Lightning's names: rank_zero_only, seed_everything, CombinedLoader."""
from __future__ import annotations

import importlib
from typing import Any

from .rank_zero import rank_zero_info, rank_zero_only, rank_zero_warn
from .seed import seed_everything

__all__ = ["rank_zero_only", "rank_zero_warn", "rank_zero_info", "seed_everything", "CombinedLoader"]


def __getattr__(name: str) -> Any:
    # CombinedLoader loads on first use, like every public name of ember.
    if name == "CombinedLoader":
        return importlib.import_module(".combined_loader", __name__).CombinedLoader
    raise AttributeError(f"module 'ember.utilities' has no attribute {name!r}")
