"""seed_everything: one seed for python, numpy and torch (CPU and CUDA)."""
from __future__ import annotations

import os
import random
import sys
from typing import Any


def seed_everything(seed: int | None = None, workers: bool = False, verbose: bool = True) -> int:
    """Seed every RNG a training run uses; returns the seed. ``workers=True`` lets DataLoader workers derive theirs."""
    if seed is None:
        env = os.environ.get("PL_GLOBAL_SEED")
        if env is None:
            # Lightning 2.6's choice: an unseeded call is reproducible (0), with a warning that says so.
            from .rank_zero import rank_zero_warn

            rank_zero_warn("seed_everything(): no seed given and PL_GLOBAL_SEED is not set; the seed is 0.")
        seed = int(env) if env is not None else 0
    seed = int(seed)
    if not 0 <= seed <= 2**32 - 1:
        raise ValueError(f"seed_everything(seed={seed}) is out of range; allowed: 0 to {2**32 - 1}.")
    import torch

    os.environ["PL_GLOBAL_SEED"] = str(seed)
    os.environ["PL_SEED_WORKERS"] = str(int(workers))
    random.seed(seed)
    if "numpy" in sys.modules or _numpy_installed():
        import numpy

        numpy.random.seed(seed)
    torch.manual_seed(seed)
    if verbose:
        print(f"Seed set to {seed}", file=sys.stderr)
    return seed


def _numpy_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("numpy") is not None


_MASK64 = 2**64 - 1


def worker_init_function(worker_id: int, rank: int = 0) -> None:
    """The DataLoader ``worker_init_fn`` the Trainer adds after ``seed_everything(workers=True)``.

    Each worker seeds torch, Python's ``random`` and NumPy from the loader's base seed, its worker id and
    the process rank. The seeds follow Lightning 2.6's layout and mixing, so a worker draws the same
    augmentation under both frameworks.
    """
    import torch

    base_seed = torch.initial_seed() - worker_id  # the DataLoader started this worker at base_seed + worker_id
    torch_seed, high, low = _worker_seeds(base_seed, worker_id, rank, 3)
    torch.manual_seed(torch_seed)
    random.seed((high << 32) | low)
    if "numpy" in sys.modules or _numpy_installed():
        import numpy

        numpy.random.seed(numpy.random.SeedSequence([base_seed, worker_id, rank]).generate_state(4))


def _worker_seeds(base_seed: int, worker_id: int, rank: int, count: int) -> list[int]:
    """``count`` 64-bit seeds: (base, worker, rank) packed into one number, mixed with MurmurHash3's 64-bit
    finalizer (so that small seeds still fill every bit), then stepped with Knuth's MMIX LCG."""
    x = (base_seed << 32) | (worker_id << 16) | rank
    for multiplier in (0xFF51AFD7ED558CCD, 0xC4CEB9FE1A85EC53):
        x ^= x >> 33
        x = (x * multiplier) & _MASK64
    x ^= x >> 33
    seeds = []
    for _ in range(count):
        x = (x * 6364136223846793005 + 1) & _MASK64
        seeds.append(x)
    return seeds


def seed_workers_of(loader: Any, rank: int) -> None:
    """After ``seed_everything(workers=True)``: give a DataLoader without a ``worker_init_fn`` ember's (Lightning)."""
    from functools import partial

    from torch.utils.data import DataLoader

    if int(os.environ.get("PL_SEED_WORKERS", 0)) and isinstance(loader, DataLoader) and loader.worker_init_fn is None:
        loader.worker_init_fn = partial(worker_init_function, rank=rank)

