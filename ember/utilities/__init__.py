"""Small helpers with Lightning's names: rank_zero_only, seed_everything."""
from __future__ import annotations

from .rank_zero import rank_zero_info, rank_zero_only, rank_zero_warn
from .seed import seed_everything

__all__ = ["rank_zero_only", "rank_zero_warn", "rank_zero_info", "seed_everything"]
