"""When a callback that writes to the loggers itself (device stats, throughput, lr) should write, and at which step.

Lightning's rule: write when the batch about to step is a logging step (every ``log_every_n_steps``) or a stop is
requested, at the step "batches that stepped so far". ember counts a batch's optimizer step as soon as it is
taken, before ``on_train_batch_end``; Lightning counts it after the batch's validation. So from the end of a
stepping batch until the next one starts, ember's counter is one ahead of the value Lightning logs.
"""
from __future__ import annotations

from typing import Any


def logged_step(trainer: Any, after_step: bool) -> int:
    """Lightning's ``batches_that_stepped`` at this point; ``after_step``: in on_train_batch_end or in a
    validation inside fit (after the batch's step), rather than before it (on_train_batch_start)."""
    state = trainer.state
    count = state.batches_that_stepped
    if after_step and state.in_fit and not state.accumulated and count > 0:
        return count - 1  # this batch's step is counted already
    return count


def should_update_logs(trainer: Any, after_step: bool, eval_batch: int | None = None) -> bool:
    """Lightning's rule. In training: the step about to be taken (or just taken) is a logging step. Inside an
    evaluation or predict run, ``eval_batch`` (1-based, counted over the run's loaders) is the batch number that
    must be a multiple of ``log_every_n_steps``."""
    every = trainer.log_every_n_steps
    if not every:
        return False
    count = eval_batch if eval_batch is not None else logged_step(trainer, after_step) + 1
    return count % every == 0 or trainer.should_stop


def next_eval_batch(previous: int, batch_idx: int, dataloader_idx: int) -> int:
    """The 1-based batch number inside an evaluation/predict run, from an ``on_*_batch_start``: a run begins with
    batch 0 of loader 0."""
    return 1 if batch_idx == 0 and dataloader_idx == 0 else previous + 1
