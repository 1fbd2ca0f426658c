"""A 2-rank classifier where one rank meets a bad label: the issue-9 failure, for the failure-report tests.

    python failure_report.py OUT RANK [--strategy ddp|ddp_spawn]   # RANK -1: both ranks meet the bad label
    torchrun --nproc_per_node=2 failure_report.py OUT RANK

At global step 2, rank RANK's batch holds the label 7 of a 3-class problem, so its cross_entropy raises
``IndexError: Target 7 is out of bounds.`` and the other rank's next collective loses its peer. Just
before the bad step the failing rank writes OUT/failed_at (time.time()), so a test can time the exit
from the failure rather than from the start.
"""
import argparse
import os
import time

import torch
from torch.utils.data import DataLoader, TensorDataset

import ember as L

BAD_STEP = 2


class Classifier(L.LightningModule):
    def __init__(self, fail_rank: int, out: str) -> None:
        super().__init__()
        self.fail_rank, self.out = fail_rank, out
        self.net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))

    def training_step(self, batch, batch_idx):
        x, y = batch
        if self.fail_rank in (self.global_rank, -1) and self.global_step == BAD_STEP:
            y = y.clone()
            y[0] = 7  # a label only this rank sees
            with open(os.path.join(self.out, "failed_at"), "w") as fh:
                fh.write(repr(time.time()))
        return torch.nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("fail_rank", type=int)
    p.add_argument("--strategy", default="ddp")
    args = p.parse_args()
    torch.set_num_threads(1)
    L.seed_everything(0, verbose=False)
    g = torch.Generator().manual_seed(1)
    data = TensorDataset(torch.randn(48, 4, generator=g), torch.randint(0, 3, (48,), generator=g))
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy=args.strategy, max_epochs=2, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=args.out)
    trainer.fit(Classifier(args.fail_rank, args.out), DataLoader(data, batch_size=4))


if __name__ == "__main__":
    main()
