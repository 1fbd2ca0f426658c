"""Run a function only on the global rank-0 process."""
from __future__ import annotations

import functools
import os
import warnings
from typing import Any, Callable, TypeVar

T = TypeVar("T")


def _rank_from_env() -> int:
    # torchrun sets RANK; SLURM sets SLURM_PROCID; a spawned worker sets LOCAL_RANK at least.
    for var in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if var in os.environ:
            return int(os.environ[var])
    return 0


def rank_zero_only(fn: Callable[..., T]) -> Callable[..., T | None]:
    """Decorator: call ``fn`` on rank 0, return None elsewhere. ``rank_zero_only.rank`` may be set by the strategy."""

    @functools.wraps(fn)
    def wrapped(*args: Any, **kwargs: Any) -> T | None:
        rank = getattr(rank_zero_only, "rank", None)
        if (rank if rank is not None else _rank_from_env()) == 0:
            return fn(*args, **kwargs)
        return None

    return wrapped


rank_zero_only.rank = None  # type: ignore[attr-defined]


@rank_zero_only
def rank_zero_warn(message: str, category: type = UserWarning, stacklevel: int = 3) -> None:
    from .warnings import AdvisoryWarning, advisories_quiet

    if not (issubclass(category, AdvisoryWarning) and advisories_quiet()):
        warnings.warn(message, category, stacklevel=stacklevel)


@rank_zero_only
def rank_zero_info(message: str) -> None:
    print(message)
