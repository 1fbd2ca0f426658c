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
