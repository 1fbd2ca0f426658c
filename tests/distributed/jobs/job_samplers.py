"""Samplers the distributed jobs share (no framework imported: the parity job runs under Lightning too)."""
from __future__ import annotations

from torch.utils.data import Sampler


class EveryOther(Sampler):
    """A custom sampler: the even indices, then the odd ones (deterministic: every rank yields the same list)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        return iter(list(range(0, self.n, 2)) + list(range(1, self.n, 2)))
