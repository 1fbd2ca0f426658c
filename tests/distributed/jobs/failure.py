"""A 2-rank DDP job that fails on purpose, for the failure (and resume) tests.

    python failure.py OUT raise RANK STEP   # RANK raises in training_step at global step STEP (and writes
                                            # OUT/failed_at, the time.monotonic() of the raise)
    python failure.py OUT hang              # trains slowly; each rank writes OUT/pid{rank} for a SIGKILL
    python failure.py OUT requeue           # as hang, with SLURMEnvironment(auto_requeue=True) (SIGUSR1)

A checkpoint is written after every step to OUT/ckpt, so a later run can resume from the last one.
"""
import os
import sys

import torch

import ember as L
from common import Model, loader, trainer

if __name__ == "__main__":
    torch.set_num_threads(1)
    out, mode = sys.argv[1], sys.argv[2]
    L.seed_everything(0, verbose=False)
    if mode == "raise":
        model = Model(fail_rank=int(sys.argv[3]), fail_step=int(sys.argv[4]), out=out)
        trainer(os.path.join(out, "ckpt"), max_epochs=2).fit(model, loader())
    elif mode == "requeue":
        from ember.plugins.environments import SLURMEnvironment

        trainer(None, max_epochs=1000, plugins=[SLURMEnvironment(auto_requeue=True)]).fit(
            Model(slow=True, out=out), loader())
    else:
        trainer(None, max_epochs=1000).fit(Model(slow=True, out=out), loader())
