"""Small helpers with Lightning's names: rank_zero_only, seed_everything, the advisory-warning switch."""
from __future__ import annotations

from .rank_zero import rank_zero_info, rank_zero_only, rank_zero_warn
from .seed import seed_everything
from .warnings import AdvisoryWarning, PossibleUserWarning, disable_possible_user_warnings, quiet_advisories

__all__ = ["rank_zero_only", "rank_zero_warn", "rank_zero_info", "seed_everything", "AdvisoryWarning",
           "PossibleUserWarning", "quiet_advisories", "disable_possible_user_warnings"]
