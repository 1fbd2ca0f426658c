"""OOM-adaptive microbatching: ``Trainer(microbatch_on_oom=True)`` (an ember extension, after Composer).

When the forward or backward of a training batch raises ``torch.OutOfMemoryError``, the batch is cut
along dim 0 into microbatches that run one after the other, each loss scaled by its microbatch's share
of the rows, so their gradients add up to the update of the whole batch. The microbatch size that
worked is remembered (``FitState.microbatch_rows``) and later batches are split up front; it never
grows back.

What ``self.log`` records during the step is held back (``compile.LogCapture``) and logged once per
name when the batch is done: a number or tensor as the share-weighted mean of the microbatches' values
(the full batch's value for a per-row mean such as the loss), anything else (a torchmetrics object) as
its last value. ``on_train_batch_end`` receives the summed (scaled) loss, as for the whole batch.

Limits: the batch must be tensors, or tuples/lists/dicts of them, with the same dim 0; one device
(under DDP each rank would split on its own, and their collectives would not line up); automatic
optimization (manual optimization owns its own backward: refused). Layers that see the batch as a whole
(BatchNorm) see microbatches. Hooks around the backward (``on_before_backward``, ``on_after_backward``)
run once per microbatch, and a batch that is retried after an OOM runs its step hooks again. An OOM in
a backward inside an open gradient-accumulation window cannot be retried (the gradients of the earlier
batches of the window are partly overwritten), and stops with an error that says so.

Switched off, none of this runs: ``EpochPlan`` then calls the plain forward/backward.
"""
from __future__ import annotations

import copy
import math
import numbers
import warnings
from typing import Any, Callable

import torch
from torch import Tensor

from .compile import LogCapture


class MicrobatchedForwardBackward:
    """Stands in for ``step._forward_backward`` (same arguments) when ``microbatch_on_oom`` is on."""

    def __init__(self, run: Any, plan: Any) -> None:
        if run.strategy.world_size > 1:
            raise ValueError(f"Trainer(microbatch_on_oom=True) works on one device; this run has "
                             f"{run.strategy.world_size} processes. Leave it off under distributed strategies.")
        from .step import _forward_backward

        self.plain = _forward_backward
        self.plan = plan
        self.variant: Any = None  # a copy of the plan whose step and backward are wrapped per microbatch
        self.capture = LogCapture(run.module)

    def __call__(self, run: Any, batch: Any, batch_idx: int, plan: Any, window_pos: int, steps_now: bool
                 ) -> tuple[Any, Any]:
        state = run.state
        while True:
            rows = None if state.microbatch_rows is None else batch_rows(batch)
            pieces = 1 if rows is None else max(1, math.ceil(rows / state.microbatch_rows))
            progress = {"backward": False}
            try:
                return self._run_pieces(run, batch, batch_idx, window_pos, steps_now, pieces, progress)
            except torch.OutOfMemoryError as exc:
                if progress["backward"] and window_pos > 0:
                    raise RuntimeError(
                        f"Out of memory in a backward inside an open gradient-accumulation window (batch {batch_idx}, "
                        f"{window_pos} batch(es) into it): the gradients of the window are partly overwritten, so "
                        "this batch cannot be retried in microbatches. Lower accumulate_grad_batches or the batch "
                        "size.") from exc
                rows = batch_rows(batch) if rows is None else rows
                now = math.ceil(rows / pieces)
                if now <= 1:
                    raise RuntimeError(f"Out of memory with microbatches of 1 row (batch {batch_idx} of {rows} rows); "
                                       "microbatching cannot go lower.") from exc
                state.microbatch_rows = math.ceil(now / 2)
            # Retried outside the except block, so the failed attempt's tensors (held by the traceback) are freed.
            if torch.cuda.is_available() and torch.cuda.is_initialized():
                torch.cuda.empty_cache()
            warnings.warn(f"ember: out of memory on a batch of {rows} rows; from now on batches are split into "
                          f"microbatches of at most {state.microbatch_rows} rows (Trainer(microbatch_on_oom=True)).",
                          UserWarning, stacklevel=2)

    def _run_pieces(self, run: Any, batch: Any, batch_idx: int, window_pos: int, steps_now: bool, pieces: int,
                    progress: dict[str, bool]) -> tuple[Any, Any]:
        if self.variant is None:
            self.variant = copy.copy(self.plan)
        variant, plan = self.variant, self.plan
        variant.backward = _noting_backward(plan.backward, progress)
        if pieces == 1:
            variant.training_step = plan.training_step
            with self.capture:
                out, loss = self.plain(run, batch, batch_idx, variant, window_pos, steps_now)
            self.capture.replay()
            return out, loss
        parts, shares = split_batch(batch, pieces)
        logged: list[tuple[float, list]] = []
        total = None
        for i, (part, share) in enumerate(zip(parts, shares)):
            variant.training_step = _scaled_step(plan.training_step, share)
            last = i == len(parts) - 1
            with self.capture:
                # zero_grad with the first microbatch only (window_pos 0); the pre-step work after the last one
                out, loss = self.plain(run, part, batch_idx, variant, window_pos if i == 0 else 1, steps_now and last)
            logged.append((share, self.capture.calls))
            if loss is not None:
                total = loss.detach() if total is None else total + loss.detach()
        log_combined(run.module, logged)
        return out, total


def _noting_backward(backward: Callable, progress: dict[str, bool]) -> Callable:
    def noted(loss: Tensor) -> None:
        progress["backward"] = True
        backward(loss)

    return noted


def _scaled_step(training_step: Callable, share: float) -> Callable:
    """training_step whose loss is multiplied by the microbatch's share of the rows (the sum is the batch's mean)."""

    def step(batch: Any, batch_idx: int) -> Any:
        out = training_step(batch, batch_idx)
        if isinstance(out, Tensor):
            return out * share
        if isinstance(out, dict) and isinstance(out.get("loss"), Tensor):
            return {**out, "loss": out["loss"] * share}
        return out  # None (skip this microbatch), or something step.loss_of refuses with its own message

    return step


# --------------------------------------------------------------------------- splitting
def batch_rows(batch: Any) -> int:
    """The batch size: dim 0 of its tensors, which must all agree."""
    sizes: dict[str, int] = {}
    _collect_rows(batch, "batch", sizes)
    if not sizes:
        raise ValueError(f"Trainer(microbatch_on_oom=True) cannot split a batch without tensors (got "
                         f"{type(batch).__name__}); allowed: tensors, or tuples/lists/dicts of tensors.")
    if len(set(sizes.values())) > 1:
        raise ValueError(f"Trainer(microbatch_on_oom=True) splits the batch along dim 0, but its tensors have "
                         f"different sizes there: {sizes}.")
    return next(iter(sizes.values()))


def _collect_rows(obj: Any, where: str, sizes: dict[str, int]) -> None:
    if isinstance(obj, Tensor):
        if obj.ndim == 0:
            raise ValueError(f"Trainer(microbatch_on_oom=True) cannot split {where}: a 0-d tensor has no dim 0.")
        sizes[where] = obj.shape[0]
    elif isinstance(obj, dict):
        for key, value in obj.items():
            _collect_rows(value, f"{where}[{key!r}]", sizes)
    elif isinstance(obj, (tuple, list)):
        for i, value in enumerate(obj):
            _collect_rows(value, f"{where}[{i}]", sizes)
    else:
        raise ValueError(f"Trainer(microbatch_on_oom=True) cannot split {where} of type {type(obj).__name__}; "
                         "allowed: tensors, or tuples/lists/dicts of tensors, split along dim 0.")


def split_batch(batch: Any, pieces: int) -> tuple[list[Any], list[float]]:
    """``pieces`` microbatches of near-equal rows (``torch.tensor_split``) and each one's share of the rows."""
    rows = batch_rows(batch)
    base, extra = divmod(rows, pieces)
    bounds = [base + 1] * extra + [base] * (pieces - extra)  # torch.tensor_split's sizes
    parts = [_take(batch, start, start + n) for start, n in zip(_starts(bounds), bounds) if n]
    return parts, [n / rows for n in bounds if n]


def _starts(sizes: list[int]) -> list[int]:
    out, at = [], 0
    for n in sizes:
        out.append(at)
        at += n
    return out


def _take(obj: Any, start: int, stop: int) -> Any:
    if isinstance(obj, Tensor):
        return obj[start:stop]
    if isinstance(obj, dict):
        return type(obj)((k, _take(v, start, stop)) for k, v in obj.items())
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # a namedtuple
        return type(obj)(*(_take(v, start, stop) for v in obj))
    return type(obj)(_take(v, start, stop) for v in obj)


# --------------------------------------------------------------------------- what self.log sees
def log_combined(module: Any, logged: list[tuple[float, list]]) -> None:
    """One ``self.log`` per name for the whole batch: the share-weighted mean of numbers and tensors."""
    by_name: dict[str, list[tuple[float, Any, tuple, dict]]] = {}
    for share, calls in logged:
        for name, value, args, kwargs in calls:
            by_name.setdefault(name, []).append((share, value, args, kwargs))
    for name, entries in by_name.items():
        _, first_value, args, kwargs = entries[0]
        values = [v for _, v, _, _ in entries]
        if all(isinstance(v, (Tensor, numbers.Real)) and not isinstance(v, bool) for v in values):
            weight = sum(s for s, _, _, _ in entries)
            value = sum(s * v for s, v, _, _ in entries) / weight
        else:
            value = values[-1]  # a metric object accumulates the microbatches itself
        module.log(name, value, *args, **kwargs)
