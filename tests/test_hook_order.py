"""Every hook call of a real run, recorded live under Lightning 2.6.6 and under ember, must be the same.

Each entry is ``(who.hook, simple args)``; module entries also carry the model's train/eval mode,
grad mode, inference mode, global_step and current_epoch at the call, so the test also pins where
``eval()/train()``, ``no_grad``/``inference_mode`` and the counters change. The order ember follows
is data in ``ember.hooks.LISTENERS``; this test is what keeps it equal to Lightning's.
"""
from __future__ import annotations

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "parity"))
from parity_harness import first_difference, loader, quiet, recording, recording_callback, run_both  # noqa: E402


def _program(L, tmp_path, stage="fit", sched=None, val_loaders=1, ckpt=False, **trainer_kw):
    calls: list = []

    class Model(L.LightningModule):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.layer = torch.nn.Linear(3, 1)

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = torch.nn.functional.mse_loss(self.layer(x), y)
            self.log("loss", loss)
            return loss

        def validation_step(self, batch, batch_idx, dataloader_idx=0):
            x, y = batch
            self.log("val_loss", torch.nn.functional.mse_loss(self.layer(x), y))

        def test_step(self, batch, batch_idx):
            x, y = batch
            self.log("test_loss", torch.nn.functional.mse_loss(self.layer(x), y))

        def predict_step(self, batch, batch_idx):
            return self.layer(batch[0])

        def configure_optimizers(self):
            opt = torch.optim.SGD(self.parameters(), lr=0.1)
            if sched is None:
                return opt
            return {"optimizer": opt,
                    "lr_scheduler": {"scheduler": torch.optim.lr_scheduler.StepLR(opt, 1), "interval": sched}}

        def train_dataloader(self):
            return loader(8, 2)

        def val_dataloader(self):
            loaders = [loader(8, 4, seed=1), loader(4, 4, seed=2)]
            return loaders[:val_loaders] if val_loaders > 1 else loaders[0]

        def test_dataloader(self):
            return loader(8, 4, seed=1)

        def predict_dataloader(self):
            return loader(8, 4, seed=1)

    model = recording(Model, calls)()
    kw = quiet(tmp_path, max_epochs=2, callbacks=[recording_callback(L, calls)], num_sanity_val_steps=1,
               enable_checkpointing=ckpt)
    kw.update(trainer_kw)
    getattr(L.Trainer(**kw), stage)(model)
    return calls


def _assert_same(tmp_path, **kw):
    lightning_calls, ember_calls = run_both(_program, tmp_path=tmp_path, **kw)
    assert lightning_calls == ember_calls, first_difference(lightning_calls, ember_calls)
    return ember_calls


@pytest.mark.parametrize("stage", ["fit", "validate", "test", "predict"])
def test_hook_sequence_matches_lightning(tmp_path, stage):
    calls = _assert_same(tmp_path, stage=stage)
    names = [c[0] for c in calls]
    if stage == "fit":  # the recorded run really is a 2-epoch fit with a sanity check and validation
        assert names.count("cb.on_train_epoch_start") == 2
        assert names.count("cb.on_sanity_check_start") == 1
        assert names.count("cb.on_validation_start") == 3


def test_hook_sequence_with_epoch_scheduler_and_checkpointing(tmp_path):
    # lr_scheduler_step comes on the last batch, before on_train_batch_end; checkpoint hooks at epoch end.
    calls = _assert_same(tmp_path, sched="epoch", ckpt=True)
    assert "m.lr_scheduler_step" in [c[0] for c in calls]
    assert "m.on_save_checkpoint" in [c[0] for c in calls]


def test_hook_sequence_with_accumulation_clipping_two_val_loaders_and_step_scheduler(tmp_path):
    _assert_same(tmp_path, sched="step", val_loaders=2, accumulate_grad_batches=3, gradient_clip_val=0.5,
                 val_check_interval=0.5)


def test_hook_order_is_data():
    from ember.hooks import LISTENERS

    # The monitoring callbacks (checkpoint, early stopping) hear on_train_epoch_end after the module.
    assert LISTENERS["on_train_epoch_end"] == ("plain_callbacks", "module", "monitor_callbacks")
