"""A KeyboardInterrupt (Ctrl+C) during fit: trainer.interrupted, Callback.on_exception, the loggers, and the
checkpoint ModelCheckpoint(save_on_exception=True) writes, which resumes exactly."""
from __future__ import annotations

import os

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import ember as L
from ember.callbacks import ModelCheckpoint
from ember.checkpoint import load_file, wait_for_writes
from ember.loggers import Logger

QUIET = dict(enable_progress_bar=False, enable_model_summary=False)


class Net(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Dropout(0.2), torch.nn.Linear(8, 1))

    def training_step(self, batch, batch_idx):
        loss = torch.nn.functional.mse_loss(self.net(batch[0]), batch[1])
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.01)


def loader():
    x = torch.randn(24, 3, generator=torch.Generator().manual_seed(0))
    return DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=4, shuffle=True)


class CtrlC(L.Callback):
    """Raises KeyboardInterrupt after the optimizer step of ``at_step``, as a Ctrl+C between two steps would."""

    def __init__(self, at_step):
        self.at_step = at_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.at_step:
            raise KeyboardInterrupt


class Listener(L.Callback):
    def __init__(self, name, heard):
        self.name, self.heard = name, heard

    def on_exception(self, trainer, pl_module, exception):
        self.heard.append((self.name, exception, trainer.global_step, trainer.interrupted))


class Finalized(Logger):
    def __init__(self):
        super().__init__()
        self.statuses = []

    @property
    def name(self):
        return "finalized"

    @property
    def version(self):
        return 0

    def log_metrics(self, metrics, step=None):
        pass

    def log_hyperparams(self, params, *args, **kwargs):
        pass

    def finalize(self, status):
        self.statuses.append(status)


def fit(root, callbacks, ckpt_path=None, logger=False, epochs=3):
    L.seed_everything(5, verbose=False)
    model = Net()
    trainer = L.Trainer(max_epochs=epochs, logger=logger, default_root_dir=root, callbacks=callbacks,
                        enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks), **QUIET)
    trainer.fit(model, loader(), ckpt_path=ckpt_path)
    return model, trainer


def test_keyboard_interrupt_reaches_every_on_exception_and_marks_the_trainer_interrupted(tmp_path):
    heard = []
    logger = Finalized()
    callbacks = [Listener("first", heard), CtrlC(at_step=4), Listener("second", heard)]
    L.seed_everything(5, verbose=False)
    model = Net()
    trainer = L.Trainer(max_epochs=3, logger=logger, default_root_dir=tmp_path, callbacks=callbacks,
                        enable_checkpointing=False, **QUIET)
    assert trainer.interrupted is False
    with pytest.raises(KeyboardInterrupt) as info:
        trainer.fit(model, loader())
    assert trainer.interrupted is True
    # Every callback heard it once, in order, with the exception object itself, after step 4's update.
    assert [(name, exc, step, flag) for name, exc, step, flag in heard] == \
        [("first", info.value, 4, True), ("second", info.value, 4, True)]
    assert logger.statuses == ["failed"]
    assert trainer.global_step == 4 and trainer.current_epoch == 0
    # A later fit starts as not interrupted and finishes normally: it runs epochs 0-2 again (epoch 0 never
    # ended), on top of the 4 steps taken.
    callbacks[1].at_step = -1
    trainer.fit(model, loader())
    assert trainer.interrupted is False and trainer.global_step == 4 + 18 and trainer.current_epoch == 3
    assert logger.statuses == ["failed", "success"]


def test_save_on_exception_checkpoint_holds_the_interrupted_state_and_resumes_exactly(tmp_path):
    straight, strainer = fit(tmp_path / "straight", [])
    ckpt_dir = tmp_path / "ckpt"
    saver = ModelCheckpoint(dirpath=ckpt_dir, save_on_exception=True, save_top_k=0)
    with pytest.raises(KeyboardInterrupt):
        fit(tmp_path / "run", [CtrlC(at_step=8), saver])  # 6 batches an epoch: batch 2 of epoch 1
    wait_for_writes()  # the exception save is finished on ember's writer thread, like every ModelCheckpoint save
    names = sorted(os.listdir(ckpt_dir))
    assert names == ["epoch=1-step=8.ckpt"], names
    ckpt = load_file(ckpt_dir / names[0])
    assert (ckpt["global_step"], ckpt["epoch"]) == (8, 1)
    assert ckpt["ember"]["mid_epoch"] and ckpt["ember"]["batches_done_in_epoch"] == 2
    assert len(ckpt["optimizer_states"]) == 1 and ckpt["optimizer_states"][0]["state"]  # Adam's moments
    resumed, rtrainer = fit(tmp_path / "resumed", [], ckpt_path=str(ckpt_dir / names[0]))
    assert rtrainer.global_step == strainer.global_step == 18
    for (name, p), q in zip(straight.named_parameters(), resumed.parameters()):
        assert torch.equal(p, q), name
