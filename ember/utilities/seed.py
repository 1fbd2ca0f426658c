"""seed_everything: one seed for python, numpy and torch (CPU and CUDA)."""
from __future__ import annotations

import os
import random
import sys


def seed_everything(seed: int | None = None, workers: bool = False, verbose: bool = True) -> int:
    """Seed every RNG a training run uses; returns the seed. ``workers=True`` lets DataLoader workers derive theirs."""
    if seed is None:
        env = os.environ.get("PL_GLOBAL_SEED")
        seed = int(env) if env is not None else random.randint(0, 2**32 - 1)
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
