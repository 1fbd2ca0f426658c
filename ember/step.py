"""One training step: the user's ``training_step`` and, under automatic optimization, the optimizer step.

    automatic_step: training_step -> zero_grad -> backward -> (unscale, clip) -> optimizer step
    plain_step:     the same, for an epoch where nothing hooks into the step

Lightning's order, with gradient accumulation (the optimizer steps on the
last batch of each window, zero_grad runs on the first). Precision owns
autocast, backward and the optimizer step (loss scaling for fp16); the
strategy owns the gradient sync (DDP skips it inside an accumulation
window). ``EpochPlan`` resolves once per epoch what the per-batch code needs.
"""
from __future__ import annotations

import math
from math import isfinite
from typing import Any

import torch
from torch import Tensor

from .hooks import is_overridden
from .optim import step_schedulers
from .profilers.wiring import profiled_prepare_batch, timed


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; the weights are those of the last good step."""


def prepare_batch(run: Any, batch: Any, dataloader_idx: int) -> Any:
    """The precision's cast, then the module's batch-transfer hooks or a plain device move."""
    # Lightning casts the inputs (bf16-true, 64-true) before the transfer hooks see the batch.
    batch = run.precision.convert_input(batch)
    if run.batch_hooks:
        module = run.module
        batch = module.on_before_batch_transfer(batch, dataloader_idx)
        batch = module.transfer_batch_to_device(batch, run.strategy.root_device, dataloader_idx)
        return module.on_after_batch_transfer(batch, dataloader_idx)
    return run.strategy.batch_to_device(batch)


def batch_mover(run: Any) -> tuple[bool, Any]:
    """Whether the batches of a run go through ``prepare_batch``, and the function that prepares them.

    A profiler times every batch's transfer as Lightning's ``batch_to_device`` (Lightning always runs it).
    """
    if run.profiler is not None:
        return True, profiled_prepare_batch(run)
    return run.batch_hooks or run.strategy.moves_batches, prepare_batch


class EpochPlan:
    """What the batches of one epoch need, looked up once per epoch instead of once per batch.

    With a profiler on (``run.profiler``), the callables are timed ones under Lightning's action names, and
    the hooks Lightning calls on every step (zero_grad, gradient clipping) are called here too.
    """

    # Slots, the per-batch ones first: after torch's work in a step, every cache line ember touches is a miss, so
    # what each batch reads sits in two lines of the object instead of spread over a 40-key dict.
    __slots__ = (
        # read by every batch (plain_step, end_of_batch)
        "accumulate", "training_step", "check_finite", "zero_grad", "backward", "step_optimizer", "step_schedulers",
        "last_loss", "wants_outputs", "on_batch_end", "paced_due", "log_every", "validate", "plateau_step",
        "vote_on_stop", "step_cap", "later_phases",
        # the rest
        "on_batch_start", "paced", "move_batches", "prepare_batch", "epoch_schedulers", "optimizer", "clip_val",
        "clip_algorithm", "before_zero_grad", "before_backward", "after_backward", "before_optimizer_step", "autocast",
        "custom_zero_grad", "module_zero_grad", "sync_control", "clip", "configure_clipping", "unscale",
        "user_optimizer_step", "closure", "wrapped_optimizer", "user_optimizer_step_fn", "optimizer_step",
        "before_step", "forward_backward", "run_step")

    def __init__(self, run: Any) -> None:
        from .module import LightningModule
        module, hooks, precision, strategy, config = run.module, run.hooks, run.precision, run.strategy, run.config
        profiler = run.profiler
        # ---- around the step (ember.loop) ----
        self.on_batch_start = hooks.listeners("on_train_batch_start")
        self.on_batch_end, self.paced = hooks.batch_listeners("on_train_batch_end")
        self.paced_due = 0 if self.paced else math.inf  # the batch_idx at which the paced listeners are next called
        self.move_batches, self.prepare_batch = batch_mover(run)
        self.log_every = config.log_every_n_steps if run.loggers else 0
        self.validate = run.validation and bool(run.data.val_loaders) and run.data.validation_epoch(run.state.current_epoch)
        self.step_cap = config.max_steps if config.max_steps != -1 else math.inf
        # Several processes vote after each batch, so a SIGTERM on any rank stops all of them together.
        self.vote_on_stop = strategy.votes_on_stop
        # ---- the step ----
        self.optimizer = run.optimizers[0] if run.optimizers else None
        self.accumulate = config.accumulate_grad_batches
        self.clip_val, self.clip_algorithm = config.gradient_clip_val, config.gradient_clip_algorithm
        self.before_zero_grad = hooks.listeners("on_before_zero_grad")
        self.before_backward = hooks.listeners("on_before_backward")
        self.after_backward = hooks.listeners("on_after_backward")
        self.before_optimizer_step = hooks.listeners("on_before_optimizer_step")
        self.autocast = precision.has_forward_context  # autocast, or the default dtype of a "true" precision
        self.custom_zero_grad = profiler is not None or is_overridden(module, "optimizer_zero_grad", LightningModule)
        self.module_zero_grad = timed(profiler, module, "optimizer_zero_grad")
        # Precision picks the backward (loss scaling, a module's own backward); the strategy wraps it only
        # when a gradient sync must be skipped inside an accumulation window.
        custom_backward = is_overridden(module, "backward", LightningModule)
        self.backward = timed(profiler, strategy, "backward",
                              precision.backward_fn(module.backward if custom_backward else None))
        self.sync_control = strategy.needs_no_sync
        # configure_gradient_clipping is called only when it can do or show something (a clip value, or an
        # override of it or of clip_gradients); otherwise it would be a no-op call per step.
        self.clip = bool(self.clip_val) or is_overridden(module, "configure_gradient_clipping", LightningModule) \
            or is_overridden(module, "clip_gradients", LightningModule) or profiler is not None
        self.configure_clipping = timed(profiler, module, "configure_gradient_clipping")
        self.unscale = precision.unscale if precision.scaler is not None else None
        # A user optimizer_step (e.g. lr warm-up) or an optimizer that re-evaluates the loss (LBFGS) gets a closure.
        self.user_optimizer_step = is_overridden(module, "optimizer_step", LightningModule)
        self.closure = self.user_optimizer_step or isinstance(self.optimizer, torch.optim.LBFGS)
        self.wrapped_optimizer = run.lightning_optimizers[0] if self.closure else None
        self.user_optimizer_step_fn = timed(profiler, module, "optimizer_step")
        # The three ways the optimizer steps are all Lightning's optimizer_step hook to a profiler.
        self.optimizer_step = timed(profiler, module, "optimizer_step", precision.optimizer_step)
        self.step_optimizer = timed(profiler, module, "optimizer_step", precision.step_fn(self.optimizer)) \
            if self.optimizer is not None else None
        self.zero_grad = self.optimizer.zero_grad if self.optimizer is not None else None
        # Anything to do between the backward and the optimizer step (the per-step code skips it otherwise).
        self.before_step = self.unscale is not None or bool(self.before_optimizer_step) or self.clip
        # Schedulers step only under automatic optimization (manual: the user calls .step()), as in Lightning.
        configs = run.schedulers if module.automatic_optimization else []
        self.step_schedulers = any(c.interval == "step" and not c.reduce_on_plateau for c in configs)
        self.epoch_schedulers = any(c.interval == "epoch" and not c.reduce_on_plateau for c in configs)
        self.plateau_step = any(c.interval == "step" and c.reduce_on_plateau for c in configs)
        # Whether a batch has anything to do after its hooks but the stop rules (see loop.end_of_batch).
        self.later_phases = bool(self.log_every or self.validate or self.plateau_step or self.vote_on_stop)
        self.check_finite = config.check_finite_loss
        # Detaching the loss and building the outputs dict costs ~0.5 us; skip it when no hook reads it.
        self.wants_outputs = hooks.reads_outputs("on_train_batch_end")
        # The module's own training_step on one device; under DDP it runs through the DDP wrapper.
        self.training_step = timed(profiler, strategy, "training_step", strategy.step_method(module, "training_step"))
        # Trainer(microbatch_on_oom=True) swaps in the forward/backward that splits a batch on an OOM
        # (ember.microbatch); off, the plain one runs and nothing is checked per batch.
        self.forward_backward = _forward_backward
        if config.microbatch_on_oom and module.automatic_optimization:
            from .microbatch import MicrobatchedForwardBackward
            self.forward_backward = MicrobatchedForwardBackward(run, self)
        # Nothing hooks into the step (no hook, precision context, clipping, closure or gradient sync): the
        # common epoch takes plain_step, automatic_step's calls without its tests.
        plain = (self.optimizer is not None and not self.closure and not self.autocast and not self.custom_zero_grad
                 and not (self.before_zero_grad or self.before_backward or self.after_backward)
                 and not self.sync_control and not self.before_step and self.forward_backward is _forward_backward)
        self.run_step = timed(profiler, None, "run_training_batch", manual_step if not module.automatic_optimization
                              else plain_step if plain else automatic_step)
        self.last_loss: Tensor | None = None
        if run.data.steps_on_iterator:  # training_step(self, dataloader_iter): the step pulls its batches
            from .iterator_step import adapt_plan

            adapt_plan(self, run)


    def call_paced(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """The paced batch-end listeners (a progress bar), due at this batch; each says when it wants the next call."""
        wait = math.inf
        for fn, batches_to_next_call in self.paced:
            fn(outputs, batch, batch_idx)
            wait = min(wait, batches_to_next_call())
        self.paced_due = batch_idx + wait


def automatic_step(run: Any, batch: Any, batch_idx: int, plan: EpochPlan) -> Any:
    """Returns what on_train_batch_end receives (None when no hook listens)."""
    state = run.state
    window_pos = state.accumulated
    if window_pos + 1 < plan.accumulate and not state.is_last_batch:
        # Inside an accumulation window: no optimizer step. DDP decides in the forward whether the backward
        # all-reduces, so the whole step runs without sync.
        with run.strategy.no_backward_sync(True):
            out, loss = plan.forward_backward(run, batch, batch_idx, plan, window_pos, False)
        state.accumulated = window_pos + 1
    else:
        if not plan.closure:
            # Same arithmetic as optimizer.step(closure), without building a closure per step.
            out, loss = plan.forward_backward(run, batch, batch_idx, plan, window_pos, True)
            if loss is not None:
                plan.step_optimizer()
            else:
                plan.optimizer_step(plan.optimizer, None, skipped=True)  # fp16 leaves it alone (Lightning)
        else:
            out, loss = _step_with_closure(run, batch, batch_idx, plan, window_pos)
        state.accumulated = 0
        state.optimizer_stepped()
        if plan.step_schedulers:
            step_schedulers(run, "step")
    return _step_outputs(plan, out, loss)


def plain_step(run: Any, batch: Any, batch_idx: int, plan: EpochPlan) -> Any:
    """``automatic_step`` when nothing hooks into the step (``EpochPlan`` decides): the same calls in the same
    order, without the ~100 bytecodes of tests for hooks, windows and precision that a plain epoch never needs."""
    if plan.accumulate != 1:  # set mid-epoch (Run.configure): windows need the full step
        return automatic_step(run, batch, batch_idx, plan)
    out = plan.training_step(batch, batch_idx)
    state = run.state
    loss = out if type(out) is Tensor and out.requires_grad and out.ndim == 0 else loss_of(out, state)
    if loss is not None:
        if plan.check_finite and not isfinite(loss.item()):
            _raise_non_finite(loss, state)
        plan.zero_grad()
        plan.backward(loss)
        plan.step_optimizer()
    else:
        plan.zero_grad()  # a skipped step zeroes the gradients too (Lightning)
        plan.optimizer_step(plan.optimizer, None, skipped=True)
    state.accumulated = 0
    state.optimizer_stepped()
    if plan.step_schedulers:
        step_schedulers(run, "step")
    return _step_outputs(plan, out, loss)


def _step_outputs(plan: EpochPlan, out: Any, loss: Tensor | None) -> Any:
    """What on_train_batch_end receives: {} for a skipped step (Lightning), None when no hook reads it."""
    # Holding the loss until the next step keeps its (already backpropagated) graph, so autograd reuses the
    # parameters' gradient-accumulator nodes instead of building them again (a hand loop's `loss` local does
    # the same): ~9k instructions less per step of a tiny model.
    plan.last_loss = loss
    if loss is None:
        return {}
    if not plan.wants_outputs:
        return None
    detached = loss.detach()
    return {**out, "loss": detached} if type(out) is dict else {"loss": detached}


def _step_with_closure(run: Any, batch: Any, batch_idx: int, plan: EpochPlan, window_pos: int) -> tuple[Any, Any]:
    """A user optimizer_step (e.g. lr warm-up) or an optimizer that re-evaluates the loss (LBFGS) gets a closure."""
    result: list[Any] = [None, None]

    def closure() -> Any:
        result[0], result[1] = plan.forward_backward(run, batch, batch_idx, plan, window_pos, True)
        return result[1]

    if plan.user_optimizer_step:
        plan.user_optimizer_step_fn(run.state.current_epoch, batch_idx, plan.wrapped_optimizer, closure)
    else:
        plan.optimizer_step(plan.optimizer, closure)
    return result[0], result[1]


def _forward_backward(run: Any, batch: Any, batch_idx: int, plan: EpochPlan, window_pos: int, steps_now: bool
                      ) -> tuple[Any, Any]:
    """The closure body: forward, zero_grad (first batch of a window), backward, pre-step hooks and clipping."""
    if plan.autocast:
        with run.precision.autocast():
            out = plan.training_step(batch, batch_idx)
    else:
        out = plan.training_step(batch, batch_idx)
    # The common case (a scalar loss that requires grad) without a call.
    loss = out if type(out) is Tensor and out.requires_grad and out.ndim == 0 else loss_of(out, run.state)
    if loss is not None:
        if plan.check_finite and not isfinite(loss.item()):
            # Checked before backward and the optimizer step, so the weights stay those of the last good step.
            _raise_non_finite(loss, run.state)
        if plan.accumulate > 1:
            loss = loss / plan.accumulate
    if window_pos == 0:
        # zero_grad on the first batch of a window, for a skipped step (loss None) too, as Lightning does:
        # the optimizer step that follows is then a no-op.
        for fn in plan.before_zero_grad:
            fn(plan.optimizer)
        if plan.custom_zero_grad:
            plan.module_zero_grad(run.state.current_epoch, batch_idx, plan.optimizer)
        else:
            plan.zero_grad()
    if loss is not None:
        for fn in plan.before_backward:
            fn(loss)
        if plan.sync_control:
            with run.strategy.no_backward_sync(not steps_now):
                plan.backward(loss)
        else:
            plan.backward(loss)
        for fn in plan.after_backward:
            fn()
    if steps_now and plan.before_step:
        if plan.unscale is not None and loss is not None:
            plan.unscale(plan.optimizer)  # fp16: hooks and clipping see the true gradients (Lightning)
        for fn in plan.before_optimizer_step:
            fn(plan.optimizer)
        if plan.clip:
            plan.configure_clipping(plan.optimizer, plan.clip_val, plan.clip_algorithm)
    return out, loss


def manual_step(run: Any, batch: Any, batch_idx: int, plan: EpochPlan) -> Any:
    """Manual optimization: the user's training_step does its own backward and step."""
    with run.precision.autocast():
        out = plan.training_step(batch, batch_idx)
    # What on_train_batch_end receives, as in Lightning: {} for None, the dict (loss detached), or {"loss": ...}.
    if out is None:
        return {}
    if isinstance(out, dict):
        return {**out, "loss": out["loss"].detach()} if isinstance(out.get("loss"), torch.Tensor) else dict(out)
    if not isinstance(out, torch.Tensor):
        raise ValueError(f"In manual optimization training_step must return a tensor, a dict or None; it returned "
                         f"{type(out).__name__}.")
    return {"loss": out.detach()}


def manual_backward(run: Any, loss: torch.Tensor, backward: Any) -> None:
    """``self.manual_backward(loss)``: the backward hooks around the precision's backward (loss scaling)."""
    run.hooks.call("on_before_backward", loss)
    run.precision.backward_fn(backward)(loss)
    run.hooks.call("on_after_backward")


def loss_of(out: Any, state: Any) -> torch.Tensor | None:
    """Check what training_step returned and pull out the loss."""
    if out is None:
        return None
    loss = out
    if isinstance(out, dict):
        if "loss" not in out:
            raise ValueError(f"training_step returned a dict without a 'loss' key (keys: {sorted(out)}); in automatic "
                             "optimization the dict must hold the loss under 'loss'.")
        loss = out["loss"]
    if not isinstance(loss, torch.Tensor):
        raise ValueError(f"training_step must return a loss tensor, a dict with 'loss', or None; it returned "
                         f"{type(loss).__name__} at epoch {state.current_epoch}, step {state.global_step}.")
    if loss.numel() != 1:
        raise ValueError(f"training_step returned a loss of shape {tuple(loss.shape)}; the loss must be a scalar. "
                         "Reduce it, e.g. loss.mean() or loss.sum().")
    if not loss.requires_grad:
        raise ValueError(
            "training_step returned a loss that does not require grad, so backward() cannot train anything. "
            "Check that the loss is computed from the model's parameters, that they have requires_grad=True, "
            "and that training_step does not run under torch.no_grad()."
        )
    return loss


def _raise_non_finite(loss: torch.Tensor, state: Any) -> None:
    raise NonFiniteLossError(
        f"The training loss is {loss.item()} at epoch {state.current_epoch}, step {state.global_step} "
        f"(batch {state.batch_idx}); training stopped before this step, so the weights are those of the last good "
        "step. Lower the learning rate, clip gradients (gradient_clip_val) or check the data for nan/inf."
    )
