"""The model, data and Trainer shared by the failure and resume jobs (same classes in every run)."""
import os
import time

import torch
from torch.utils.data import DataLoader, TensorDataset

import ember as L
from ember.callbacks import ModelCheckpoint

BATCHES_PER_EPOCH = 6  # per rank: 48 samples, batch 4, 2 ranks


class Model(L.LightningModule):
    """Dropout and Adam, so an exact resume needs every rank's RNG and the optimizer state back."""

    def __init__(self, fail_rank: int = -1, fail_step: int = -1, slow: bool = False, out: str = "") -> None:
        super().__init__()
        self.fail_rank, self.fail_step, self.slow, self.out = fail_rank, fail_step, slow, out
        self.net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Dropout(0.3), torch.nn.Linear(16, 1))

    def on_train_start(self) -> None:
        if self.trainer.global_step == 0:
            # A fresh run: a different RNG stream per rank, so each rank draws its own dropout masks and an
            # exact resume needs every rank's RNG state back, not rank 0's.
            torch.manual_seed(100 + self.global_rank)

    def training_step(self, batch, batch_idx):
        if self.global_rank == self.fail_rank and self.trainer.global_step == self.fail_step:
            if self.out:  # the moment of the failure, for the tests' time bound (CLOCK_MONOTONIC is system-wide)
                with open(os.path.join(self.out, "failed_at"), "w") as fh:
                    fh.write(repr(time.monotonic()))
            raise ValueError(f"rank {self.fail_rank} fails on purpose at step {self.fail_step}")
        if self.slow:
            if batch_idx == 0 and self.current_epoch == 0:
                with open(os.path.join(self.out, f"pid{self.global_rank}"), "w") as fh:
                    fh.write(str(os.getpid()))
            time.sleep(0.05)
        x, y = batch
        return torch.nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.01)


def loader() -> DataLoader:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(48, 4, generator=g)
    return DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=4, shuffle=True)


def trainer(ckpt_dir: str | None, max_epochs: int, **extra) -> L.Trainer:
    callbacks = [ModelCheckpoint(dirpath=ckpt_dir, every_n_train_steps=1, save_top_k=-1)] if ckpt_dir else []
    return L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=max_epochs, logger=False,
                     default_root_dir=os.getcwd(),
                     enable_checkpointing=bool(ckpt_dir), enable_progress_bar=False, enable_model_summary=False,
                     callbacks=callbacks, **extra)
