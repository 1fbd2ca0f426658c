"""Checkpoints move between ember and Lightning 2.6.6 in both directions (weights and hyper-parameters)."""
from __future__ import annotations

import os

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import ember as L

lightning = pytest.importorskip("lightning")

QUIET = dict(logger=False, enable_progress_bar=False, enable_model_summary=False)


def make_class(framework):
    """The same module written against either framework."""

    class Regressor(framework.LightningModule):
        def __init__(self, hidden: int = 8, lr: float = 0.05, tag: str = "default"):
            super().__init__()
            self.save_hyperparameters()
            self.body = nn.Sequential(nn.Linear(3, hidden), nn.Tanh(), nn.Linear(hidden, 1))
            self.register_buffer("seen", torch.zeros(()))

        def forward(self, x):
            return self.body(x)

        def training_step(self, batch, batch_idx):
            x, y = batch
            self.seen += len(x)
            loss = nn.functional.mse_loss(self(x), y)
            self.log("train_loss", loss)
            return loss

        def validation_step(self, batch, batch_idx):
            x, y = batch
            self.log("val_loss", nn.functional.mse_loss(self(x), y))

        def configure_optimizers(self):
            opt = torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
            return [opt], [torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)]

    return Regressor


def loader():
    x = torch.randn(16, 3, generator=torch.Generator().manual_seed(0))
    return DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=4)


def assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def test_ember_loads_a_lightning_checkpoint(tmp_path):
    lightning.seed_everything(0)
    theirs = make_class(lightning)(hidden=16, lr=0.01, tag="from-lightning")
    trainer = lightning.Trainer(max_epochs=2, default_root_dir=tmp_path, **QUIET)
    trainer.fit(theirs, loader())
    path = trainer.checkpoint_callback.best_model_path  # Lightning's own ModelCheckpoint wrote it
    assert os.path.isfile(path)

    ours = make_class(L).load_from_checkpoint(path)
    assert dict(ours.hparams) == {"hidden": 16, "lr": 0.01, "tag": "from-lightning"}
    assert_same_weights(ours, theirs)
    # Both frameworks hand the module back in train mode (as constructed).
    assert ours.training == make_class(lightning).load_from_checkpoint(path).training is True
    assert float(ours.seen) == 32

    # ember can also continue the training a Lightning checkpoint describes (epoch, step, optimizer, scheduler).
    trainer = L.Trainer(max_epochs=3, default_root_dir=tmp_path / "ember", enable_checkpointing=False, **QUIET)
    trainer.fit(ours, loader(), ckpt_path=path)
    assert (trainer.current_epoch, trainer.global_step) == (3, 12)
    assert trainer.lr_scheduler_configs[0].scheduler.last_epoch == 3


def test_lightning_loads_an_ember_checkpoint(tmp_path):
    L.seed_everything(0)
    ours = make_class(L)(hidden=12, lr=0.02, tag="from-ember")
    trainer = L.Trainer(max_epochs=2, default_root_dir=tmp_path, **QUIET)
    trainer.fit(ours, loader())
    trainer.save_checkpoint(tmp_path / "manual.ckpt")
    for path in (trainer.checkpoint_callback.best_model_path, str(tmp_path / "manual.ckpt")):
        theirs = make_class(lightning).load_from_checkpoint(path)  # Lightning's default: torch weights_only load
        assert dict(theirs.hparams) == {"hidden": 12, "lr": 0.02, "tag": "from-ember"}
        assert_same_weights(theirs, ours)
    # Lightning's Trainer restores the module from the file too (validate with ckpt_path).
    theirs = make_class(lightning)(hidden=12)
    result = lightning.Trainer(**QUIET).validate(theirs, loader(), ckpt_path=str(tmp_path / "manual.ckpt"))
    ours.eval()
    with torch.no_grad():
        expected = torch.stack([nn.functional.mse_loss(ours(a), b) for a, b in loader()]).mean()
    assert result[0]["val_loss"] == pytest.approx(float(expected), rel=1e-6)
