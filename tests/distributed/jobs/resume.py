"""Exact resume under DDP: a run resumed from a mid-epoch checkpoint ends with the weights of a run never stopped.

    python resume.py OUT CKPT     # CKPT: the last checkpoint a crashed failure.py run left behind

Each rank writes OUT/straight_rank{r}.pt and OUT/resumed_rank{r}.pt.
"""
import os
import sys

import torch

import ember as L
from common import Model, loader, trainer

if __name__ == "__main__":
    torch.set_num_threads(1)
    out, ckpt = sys.argv[1], sys.argv[2]
    L.seed_everything(0, verbose=False)
    straight = Model()
    t = trainer(None, max_epochs=2)
    t.fit(straight, loader())
    torch.save(straight.state_dict(), os.path.join(out, f"straight_rank{t.global_rank}.pt"))
    # Scramble the RNGs (not the seed, which the DistributedSampler's order derives from, as in Lightning):
    # the checkpoint's per-rank RNG states must win.
    torch.manual_seed(123 + t.global_rank)
    resumed = Model()
    t = trainer(None, max_epochs=2)
    t.fit(resumed, loader(), ckpt_path=ckpt)
    torch.save(resumed.state_dict(), os.path.join(out, f"resumed_rank{t.global_rank}.pt"))
    torch.save({"global_step": t.global_step}, os.path.join(out, f"steps_rank{t.global_rank}.pt"))
