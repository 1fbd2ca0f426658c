"""The ``training_step(self, dataloader_iter)`` form: the step pulls its own batches.

A module whose ``training_step`` has a parameter named ``dataloader_iter`` gets, at every step, an
iterator that yields ``(batch, batch_idx, dataloader_idx)`` and may take any number of batches from it
(a prefetching pipeline, several micro-batches a step). Lightning 2.6's rules, which ember follows:

- the epoch runs while the iterator has batches, at most ``num_training_batches`` steps; a step that
  asks for a batch after the last one ends the epoch on the spot (no ``on_train_batch_end``, no
  optimizer step, no end-of-epoch validation or scheduler step: what Lightning does too);
- ``on_train_batch_start`` gets the batch fetched last and its index (``None, 0`` at a step that
  starts an epoch), ``on_train_batch_end`` the batch the step fetched last;
- the batch is not moved to the device (the step does it), and ``self.log`` needs ``batch_size=``
  for an epoch mean, since no batch is known to measure.

Everything here is set up once per epoch (``step.EpochPlan``); the plain form's path is unchanged.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Iterator


def takes_dataloader_iter(module: Any) -> bool:
    """Lightning's test: a ``training_step`` parameter named ``dataloader_iter``."""
    try:
        return "dataloader_iter" in inspect.signature(module.training_step).parameters
    except (TypeError, ValueError):
        return False


class EpochRanOut(Exception):
    """A ``training_step(dataloader_iter)`` asked for a batch after the last one: the epoch ends there."""


class DataloaderIter:
    """What ``training_step(dataloader_iter)`` receives: this epoch's batches, one ``next()`` at a time."""

    def __init__(self, pairs: Iterator[tuple[int, Any]], length: float) -> None:
        self._pairs, self._length = pairs, length
        self.fetched = 0
        self.done = length == 0
        self.batch: Any = None  # the batch fetched last (what the batch hooks receive)
        self.batch_idx = 0

    def __iter__(self) -> "DataloaderIter":
        return self

    def __next__(self) -> tuple[Any, int, int]:
        if self.done:
            raise StopIteration
        try:
            batch_idx, batch = next(self._pairs)
        except StopIteration:
            self.done = True
            raise
        self.fetched += 1
        self.done = self.fetched >= self._length
        self.batch, self.batch_idx = batch, batch_idx
        return batch, batch_idx, 0


def steps_of(pairs: Iterator[tuple[int, Any]], length: float, max_steps: float) -> Iterator[tuple[int, DataloaderIter]]:
    """``(step_idx, dataloader_iter)`` for the loop, while batches are left and ``max_steps`` is not reached."""
    fetcher = DataloaderIter(pairs, length)
    step_idx = 0
    while not fetcher.done and step_idx < max_steps:
        yield step_idx, fetcher
        step_idx += 1


def adapt_plan(plan: Any, run: Any) -> None:
    """Turn one epoch's plan into the dataloader_iter form (called once per epoch by ``EpochPlan``)."""
    training_step = plan.training_step
    plan.training_step = lambda fetcher, _step_idx: training_step(fetcher)
    plan.move_batches = False  # the step moves what it takes
    plan.on_batch_start = [_with_last_batch_start(fn) for fn in plan.on_batch_start]
    plan.on_batch_end = [_with_last_batch_end(fn) for fn in plan.on_batch_end]
    plan.paced = [(_with_last_batch_end(fn), pace) for fn, pace in plan.paced]
    plan.run_step = _ending_on_exhaustion(plan.run_step)


def _with_last_batch_start(fn: Callable[..., Any]) -> Callable[..., Any]:
    return lambda fetcher, _step_idx: fn(fetcher.batch, fetcher.batch_idx)


def _with_last_batch_end(fn: Callable[..., Any]) -> Callable[..., Any]:
    return lambda outputs, fetcher, _step_idx: fn(outputs, fetcher.batch, fetcher.batch_idx)


def _ending_on_exhaustion(run_step: Callable[..., Any]) -> Callable[..., Any]:
    def step(run: Any, fetcher: DataloaderIter, step_idx: int, plan: Any) -> Any:
        try:
            # optimizer_step/optimizer_zero_grad get the index of the batch fetched last, as in Lightning
            out = run_step(run, fetcher, fetcher.batch_idx, plan)
        except StopIteration:
            # Raised by next(dataloader_iter) inside the step, before any backward or optimizer step.
            raise EpochRanOut() from None
        run.state.is_last_batch = fetcher.done  # known only now: the step may have taken the last batch
        return out

    return step
