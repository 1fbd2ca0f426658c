"""Optimisation callbacks on ember alone: the accumulation schedule by step, OnExceptionCheckpoint,
weight averaging and the batch-size finder (the Lightning comparisons are in parity/test_parity_optcb.py)."""
from __future__ import annotations

import torch

import ember as L
from ember.callbacks import Callback, GradientAccumulationScheduler
from boring import BoringLinear, sum_loader

QUIET = dict(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
             enable_checkpointing=False)


class StepsSeen(Callback):
    """For every batch: the accumulation it ran with and the global_step after it."""

    def __init__(self):
        self.seen = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.seen.append((trainer.current_epoch, batch_idx, trainer.accumulate_grad_batches, trainer.global_step))


def test_accumulation_by_step_changes_the_window_after_an_optimizer_step(tmp_path):
    seen = StepsSeen()
    trainer = L.Trainer(max_epochs=2, default_root_dir=tmp_path, **QUIET,
                        callbacks=[GradientAccumulationScheduler({2: 2, 4: 3}, interval="step"), seen])
    trainer.fit(BoringLinear(), sum_loader(n=20, batch_size=2))  # 10 batches an epoch
    accum = [a for _, _, a, _ in seen.seen]
    steps = [s for *_, s in seen.seen]
    # steps 0, 1 alone; steps 2, 3 from windows of 2; then windows of 3, the epoch's end closing one early
    assert accum == [1, 1, 2, 2, 2, 2, 3, 3, 3, 3] + [3] * 10
    assert steps == [1, 2, 2, 3, 3, 4, 4, 4, 5, 6] + [6, 6, 7, 7, 7, 8, 8, 8, 9, 10]
    assert trainer.global_step == 10


def test_accumulation_by_step_refuses_bad_intervals():
    import pytest

    with pytest.raises(ValueError, match="interval='batch'.*allowed: 'epoch'"):
        GradientAccumulationScheduler({0: 2}, interval="batch")
    with pytest.raises(ValueError, match=r"Step should be an int greater than or equal to 0. Got \[-3\]"):
        GradientAccumulationScheduler({-3: 2}, interval="step")


def test_a_second_fit_on_the_same_trainer_keeps_its_schedule(tmp_path):
    # Lightning refuses the second fit (the trainer's accumulate_grad_batches is left at the schedule's value).
    trainer = L.Trainer(max_epochs=2, default_root_dir=tmp_path, **QUIET,
                        callbacks=[GradientAccumulationScheduler({1: 2})])
    model = BoringLinear()
    trainer.fit(model, sum_loader(n=8, batch_size=2))
    assert trainer.global_step == 4 + 2
    trainer.max_epochs = 3
    trainer.fit(model, sum_loader(n=8, batch_size=2))
    assert trainer.global_step == 4 + 2 + 2


class SaveAtBatchStart(Callback):
    def __init__(self, path, at):
        self.path, self.at, self.validations = path, at, 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if (trainer.current_epoch, batch_idx) == self.at:
            trainer.save_checkpoint(self.path)

    def on_validation_end(self, trainer, pl_module):
        self.validations += not trainer.sanity_checking


class Validating(BoringLinear):
    def validation_step(self, batch, batch_idx):
        self.log("val_loss", torch.nn.functional.mse_loss(self.layer(batch[0]), batch[1]))


def test_a_save_before_a_batch_resumes_without_redoing_the_previous_batchs_validation(tmp_path):
    """A checkpoint from on_train_batch_start (or from an error inside the step) has the previous batch done
    to its end: the resume neither validates again nor publishes its metrics again."""
    path = str(tmp_path / "start.ckpt")
    saver = SaveAtBatchStart(path, at=(0, 3))
    trainer = L.Trainer(max_epochs=1, default_root_dir=tmp_path, val_check_interval=3, num_sanity_val_steps=0,
                        **QUIET, callbacks=[saver])
    straight = Validating()
    trainer.fit(straight, sum_loader(n=12, batch_size=2), sum_loader(n=4))  # validations after batches 3 and 6
    assert saver.validations == 2
    counter = SaveAtBatchStart(str(tmp_path / "unused.ckpt"), at=None)
    resumed = Validating()
    L.Trainer(max_epochs=1, default_root_dir=tmp_path, val_check_interval=3, num_sanity_val_steps=0, **QUIET,
              callbacks=[counter]).fit(resumed, sum_loader(n=12, batch_size=2), sum_loader(n=4), ckpt_path=path)
    assert counter.validations == 1  # only the one after batch 6
    assert all(torch.equal(p, q) for p, q in zip(straight.parameters(), resumed.parameters()))
