"""The training loop, as plain functions that read top to bottom.

    run_fit -> train_epoch -> automatic_step (or the user's manual step)
            -> run_evaluation (validation, inside the epoch)
    run_evaluation (validate / test), run_predict

Everything a step needs from the outside world comes through three small
objects on the trainer: ``strategy`` (device, collectives), ``precision``
(autocast, loss scaling) and ``hooks`` (callbacks and module hooks). The loop
never branches on the backend.
"""
from __future__ import annotations

import itertools
import math
from typing import Any, Iterable

import torch



class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; the weights are those of the last good step."""


# --------------------------------------------------------------------------- data
def batches(loader: Iterable, limit: int | None) -> Iterable[tuple[int, Any]]:
    """``(batch_idx, batch)`` pairs, at most ``limit`` of them."""
    it = enumerate(loader)
    if limit is not None:
        it = itertools.islice(it, limit)
    return it


def prepare_batch(trainer: Any, module: Any, batch: Any, dataloader_idx: int) -> Any:
    """The module's batch-transfer hooks, or a plain device move when it does not override them."""
    # Lightning casts the inputs (bf16-true, 64-true) before the transfer hooks see the batch.
    batch = trainer.precision.convert_input(batch)
    if trainer._batch_hooks:
        batch = module.on_before_batch_transfer(batch, dataloader_idx)
        batch = module.transfer_batch_to_device(batch, trainer.strategy.root_device, dataloader_idx)
        return module.on_after_batch_transfer(batch, dataloader_idx)
    return trainer.strategy.batch_to_device(batch)


# --------------------------------------------------------------------------- fit
def run_fit(trainer: Any, module: Any) -> None:
    hooks = trainer.hooks
    # Lightning's order: the sanity check asks for the val loaders, then the train loader is built,
    # then (if not done yet) the val loaders, and only then on_train_start.
    if trainer.num_sanity_val_steps and trainer._val_loaders is None and not trainer.sanity_checked:
        run_sanity_check(trainer, module)
    if not trainer._train_data_ready:
        trainer._setup_train_data(module, trainer._train_source)
    if trainer._val_loaders is None:
        trainer._setup_val_data(module, trainer._val_source)
    if trainer._fit_done() or trainer._train_limit == 0:
        return  # nothing to train (limit 0, max_epochs reached, or a stop already requested): no train hooks
    _warn_if_eval_mode(module)
    trainer._metrics.enter("train", "epoch")  # on_train_start may log (epoch-level), as in Lightning
    hooks.call("on_train_start")
    while not trainer._fit_done():
        trainer._begin_epoch()
        train_epoch(trainer, module)
        if trainer._interrupted:
            break
        trainer._finish_epoch()
    trainer._metrics.enter(None)  # no logging in on_train_end / on_fit_end
    hooks.call("on_train_end")


def run_sanity_check(trainer: Any, module: Any) -> None:
    from .checkpoint import capture_rng, restore_rng

    # The sanity run must not change what training draws (shuffling, dropout): Lightning isolates the RNGs.
    rng = capture_rng()
    trainer.sanity_checking = True
    trainer.hooks.call("on_sanity_check_start")
    run_evaluation(trainer, module, "validate", None, None)
    trainer.hooks.call("on_sanity_check_end")
    trainer.sanity_checking = False
    trainer.sanity_checked = True
    restore_rng(rng)
    # What the sanity run logged is thrown away, as in Lightning.
    trainer._metrics.reset_all()


def validate_in_fit(trainer: Any, module: Any) -> None:
    """A validation run inside fit; gradients are dropped first unless an accumulation window is open."""
    if trainer._accumulated == 0:
        module.on_validation_model_zero_grad()
    run_evaluation(trainer, module, "validate", None, None)


def train_epoch(trainer: Any, module: Any) -> None:
    """One pass over the training data (or until a stop condition)."""
    hooks = trainer.hooks
    metrics = trainer._metrics
    # The train entries restart at the end of each epoch (after its values are logged), so what
    # on_train_start logged counts in the first epoch, as in Lightning.
    metrics.enter("train", "epoch")
    hooks.call("on_train_epoch_start")
    metrics.step_defaults = True
    # Everything the per-batch code needs is resolved here, once per epoch.
    plan = _StepPlan(trainer, module)
    on_batch_start = hooks.listeners("on_train_batch_start")
    on_batch_end = hooks.listeners("on_train_batch_end")
    step_fn = automatic_step if module.automatic_optimization else manual_step
    move = trainer._batch_hooks or trainer.strategy.root_device.type != "cpu" or trainer.precision.param_dtype is not None
    n_batches = trainer.num_training_batches
    last_idx = n_batches - 1 if n_batches != math.inf else -1
    validate_inside = bool(trainer._val_loaders) and trainer._validation_epoch()
    step_cap = trainer.max_steps if trainer.max_steps != -1 else math.inf
    timed = trainer.max_time is not None
    log_every = trainer.log_every_n_steps if trainer.loggers else 0
    trainer._is_last_batch = False
    trainer._epoch_finished = False
    trainer._epoch_reached_end = False
    for batch_idx, batch in trainer._open_train_iterator():
        trainer.batch_idx = batch_idx
        is_last = trainer._is_last_batch = batch_idx == last_idx
        if move:
            batch = prepare_batch(trainer, module, batch, 0)
        metrics.current_batch = batch
        if on_batch_start:
            skip_rest = False
            for fn in on_batch_start:
                if fn(batch, batch_idx) == -1:
                    skip_rest = True
            if skip_rest:
                # -1 ends the epoch here: Lightning still steps the lr schedulers for this batch.
                trainer._is_last_batch = trainer._epoch_reached_end = True
                if plan.step_schedulers:
                    trainer._step_schedulers("step")
                if plan.epoch_schedulers:
                    trainer._step_schedulers("epoch")
                break
        outputs = step_fn(trainer, module, batch, batch_idx, plan)
        if is_last:
            # Epoch-interval schedulers step with the last batch, before on_train_batch_end (Lightning).
            trainer._epoch_reached_end = True
            if plan.epoch_schedulers:
                trainer._step_schedulers("epoch")
        trainer._batches_seen_in_epoch = batch_idx + 1
        trainer._total_batches_run += 1
        if trainer._accumulated == 0:  # the optimizer stepped (always, in manual optimization)
            trainer._batches_that_stepped += 1
        for fn in on_batch_end:
            fn(outputs, batch, batch_idx)
        # Step metrics reach loggers every log_every_n_steps; callbacks and the bar read them on demand.
        if log_every and metrics._stepped_keys and (trainer._batches_that_stepped % log_every == 0 or trainer.should_stop):
            trainer._publish_step_metrics()
        # Validation (at val_check_interval, at the end of the epoch, or because of a stop) comes
        # after on_train_batch_end, as part of the batch, as in Lightning.
        if validate_inside and trainer._should_validate_now(batch_idx):
            validate_in_fit(trainer, module)
            metrics.begin("train", step_defaults=True, fresh=False)
        if plan.plateau_step and trainer._accumulated == 0:
            trainer._step_plateau_schedulers("step")
        if plan.vote_on_stop:  # distributed only (ember.runtime.ddp): every rank stops after the same batch
            trainer.strategy.vote_on_stop(trainer)
        if trainer.should_stop or trainer.global_step >= step_cap or timed:
            if trainer._stop_within_epoch():
                break
    else:
        if trainer._batches_seen_in_epoch == 0 and trainer._train_limit != 0:
            raise ValueError(
                "The training dataloader produced no batches. Check that the dataset is not empty and that "
                "drop_last=True with batch_size larger than the dataset is not discarding everything."
            )
        if n_batches == math.inf and trainer._batches_seen_in_epoch:
            # A loader without len: its end is only known now (Lightning looks one batch ahead, so there
            # the schedulers and the validation below happen inside the last batch).
            trainer._is_last_batch = trainer._epoch_reached_end = True
            if plan.epoch_schedulers:
                trainer._step_schedulers("epoch")
            if validate_inside and trainer._should_validate_now(trainer.batch_idx):
                validate_in_fit(trainer, module)
            if plan.plateau_step and trainer._accumulated == 0:
                trainer._step_plateau_schedulers("step")
    if trainer._preempt_signal is not None:
        # SIGTERM: the last batch is complete; ember.checkpoint.preemption_guard saves and exits.
        from .checkpoint import TrainingPreempted

        trainer._epoch_state = "between_batches"
        raise TrainingPreempted(trainer._preempt_signal)
    trainer._epoch_finished = True
    metrics.begin("train", step_defaults=False, fresh=False)
    trainer._finish_train_epoch_metrics()


def finish_saved_batch(trainer: Any, module: Any, left: str) -> bool:
    """Mid-epoch resume: run what the checkpointed batch still had to do after the save; True ends the epoch.

    ``left`` says where the save happened (ember.checkpoint): "batch_end" (in
    on_train_batch_end), "after_validation" (in a validation inside the
    epoch) or "stop_check" (after the whole batch, the SIGTERM save). This
    mirrors the end of the batch body in ``train_epoch``: keep the two in step.
    """
    metrics = trainer._metrics
    batch_idx = trainer._batches_seen_in_epoch - 1
    n_batches = trainer.num_training_batches
    trainer.batch_idx = batch_idx
    trainer._is_last_batch = n_batches != math.inf and batch_idx == n_batches - 1
    metrics.step_defaults = True
    if left == "batch_end":
        log_every = trainer.log_every_n_steps if trainer.loggers else 0
        if log_every and metrics._stepped_keys and (trainer._batches_that_stepped % log_every == 0 or trainer.should_stop):
            trainer._publish_step_metrics()
        if trainer._val_loaders and trainer._validation_epoch() and trainer._should_validate_now(batch_idx):
            validate_in_fit(trainer, module)
            left = "after_validation"
    if left == "after_validation":
        metrics.begin("train", step_defaults=True, fresh=False)
    if left != "stop_check" and trainer._accumulated == 0:
        trainer._step_plateau_schedulers("step")
    return trainer._stop_within_epoch()


class _StepPlan:
    """What an automatic step needs, looked up once per epoch instead of once per batch."""

    def __init__(self, trainer: Any, module: Any) -> None:
        from .hooks import is_overridden
        from .module import LightningModule

        hooks = trainer.hooks
        precision = trainer.precision
        self.optimizer = trainer.optimizers[0] if trainer.optimizers else None
        self.accumulate = trainer.accumulate_grad_batches
        self.before_zero_grad = hooks.listeners("on_before_zero_grad")
        self.before_backward = hooks.listeners("on_before_backward")
        self.after_backward = hooks.listeners("on_after_backward")
        self.before_optimizer_step = hooks.listeners("on_before_optimizer_step")
        self.autocast = precision.has_forward_context  # autocast, or the default dtype of a "true" precision
        self.custom_zero_grad = is_overridden(module, "optimizer_zero_grad", LightningModule)
        # loss.backward() directly when nothing wraps it (no loss scaling, custom backward or DDP no_sync).
        self.plain_backward = (precision.scaler is None and not is_overridden(module, "backward", LightningModule)
                               and not trainer.strategy.needs_no_sync)
        # configure_gradient_clipping is called only when it can do or show something (a clip value,
        # or an override of it or of clip_gradients); otherwise it would be a no-op call per step.
        self.clip = bool(trainer.gradient_clip_val) or trainer._custom_clipping
        self.scaled = precision.scaler is not None
        self.custom_step = trainer._custom_optimizer_step or trainer._optimizer_needs_closure
        # Schedulers step only under automatic optimization (manual: the user calls .step()), as in Lightning.
        configs = trainer.lr_scheduler_configs if module.automatic_optimization else []
        self.step_schedulers = any(c.interval == "step" and not c.reduce_on_plateau for c in configs)
        self.epoch_schedulers = any(c.interval == "epoch" and not c.reduce_on_plateau for c in configs)
        self.plateau_step = any(c.interval == "step" and c.reduce_on_plateau for c in configs)
        self.check_finite = trainer.check_finite_loss
        # Detaching the loss and building the outputs dict costs ~0.5 us; skip it when no hook reads it.
        self.wants_outputs = bool(hooks.listeners("on_train_batch_end"))
        # The module's own training_step on one device; under DDP it runs through the DDP wrapper.
        self.training_step = trainer.strategy.step_method(module, "training_step")
        # Several processes vote after each batch, so a SIGTERM on any rank stops all of them together.
        self.vote_on_stop = trainer.strategy.votes_on_stop


def automatic_step(trainer: Any, module: Any, batch: Any, batch_idx: int, plan: _StepPlan) -> Any:
    """training_step -> zero_grad -> backward -> (clip) -> optimizer step, in Lightning's order.

    With gradient accumulation the optimizer steps on the last batch of each
    window; zero_grad runs on the first one.
    """
    window_pos = trainer._accumulated
    steps_now = window_pos + 1 >= plan.accumulate or trainer._is_last_batch
    if not steps_now:
        # DDP decides in the forward whether the backward all-reduces: the whole step runs without sync.
        with trainer.strategy.no_backward_sync(True):
            out, loss = _forward_backward(trainer, module, batch, batch_idx, plan, window_pos, steps_now)
        trainer._accumulated = window_pos + 1
    elif plan.custom_step:
        # A user optimizer_step (e.g. lr warm-up) or an optimizer that re-evaluates the loss (LBFGS) gets a closure.
        result: list[Any] = [None, None]

        def closure() -> Any:
            result[0], result[1] = _forward_backward(trainer, module, batch, batch_idx, plan, window_pos, steps_now)
            return result[1]

        if trainer._custom_optimizer_step:
            module.optimizer_step(trainer.current_epoch, batch_idx, _StepCounter(plan.optimizer, trainer.precision),
                                  closure)
        else:
            trainer.precision.step(plan.optimizer, closure)
        out, loss = result
    else:
        # Same arithmetic as optimizer.step(closure), without building a closure per step.
        out, loss = _forward_backward(trainer, module, batch, batch_idx, plan, window_pos, steps_now)
        if not plan.scaled:
            plan.optimizer.step()
        elif loss is not None:  # fp16 skips the step of a skipped batch (Lightning)
            trainer.precision.step(plan.optimizer)
    if steps_now:
        trainer._accumulated = 0
        trainer.global_step += 1
        if plan.step_schedulers:
            trainer._step_schedulers("step")
    if loss is None:
        return {}  # what Lightning hands to on_train_batch_end for a skipped step
    if not plan.wants_outputs:
        return None
    detached = loss.detach()
    if type(out) is dict:
        return {**out, "loss": detached}
    return {"loss": detached}


def _forward_backward(trainer: Any, module: Any, batch: Any, batch_idx: int, plan: _StepPlan, window_pos: int,
                      steps_now: bool) -> tuple[Any, Any]:
    """The closure body: forward, zero_grad (first batch of a window), backward, pre-step hooks and clipping."""
    optimizer = plan.optimizer
    if plan.autocast:
        with trainer.precision.autocast():
            out = plan.training_step(batch, batch_idx)
    else:
        out = plan.training_step(batch, batch_idx)
    if type(out) is torch.Tensor and out.requires_grad and out.ndim == 0:
        loss = out  # the common case, without a call
    else:
        loss = _loss_of(out, trainer)
    if loss is None:
        # Lightning still runs zero_grad (with its hooks) for a skipped step, so the optimizer step that
        # follows is a no-op, and still calls the pre-step hooks and clipping.
        if window_pos == 0:
            _zero_grad(trainer, module, batch_idx, plan)
        if steps_now:
            for fn in plan.before_optimizer_step:
                fn(optimizer)
            if plan.clip:
                module.configure_gradient_clipping(optimizer, trainer.gradient_clip_val, trainer.gradient_clip_algorithm)
        return out, None
    if plan.check_finite and not math.isfinite(loss.item()):
        # Checked before backward and the optimizer step, so the weights stay those of the last good step.
        trainer._raise_non_finite(loss)
    if plan.accumulate > 1:
        loss = loss / plan.accumulate
    if window_pos == 0:
        _zero_grad(trainer, module, batch_idx, plan)
    for fn in plan.before_backward:
        fn(loss)
    if plan.plain_backward:
        loss.backward()
    else:
        with trainer.strategy.no_backward_sync(not steps_now):
            trainer.precision.backward(loss, module.backward)
    for fn in plan.after_backward:
        fn()
    if steps_now:
        if plan.scaled:
            # fp16: hooks and clipping see the true gradients (Lightning unscales right after the closure).
            trainer.precision.unscale(optimizer)
        for fn in plan.before_optimizer_step:
            fn(optimizer)
        if plan.clip:
            module.configure_gradient_clipping(optimizer, trainer.gradient_clip_val, trainer.gradient_clip_algorithm)
    return out, loss


def _zero_grad(trainer: Any, module: Any, batch_idx: int, plan: _StepPlan) -> None:
    """on_before_zero_grad, then the module's optimizer_zero_grad (or the optimizer's own)."""
    optimizer = plan.optimizer
    for fn in plan.before_zero_grad:
        fn(optimizer)
    if plan.custom_zero_grad:
        module.optimizer_zero_grad(trainer.current_epoch, batch_idx, optimizer)
    else:
        optimizer.zero_grad()


class _StepCounter:
    """What a user's ``optimizer_step`` override receives: the optimizer, stepped through the precision."""

    def __init__(self, optimizer: Any, precision: Any) -> None:
        self.optimizer = optimizer
        self._precision = precision

    def step(self, closure: Any = None) -> Any:
        return self._precision.step(self.optimizer, closure)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.optimizer, name)


def manual_step(trainer: Any, module: Any, batch: Any, batch_idx: int, plan: Any = None) -> Any:
    """Manual optimization: the user's training_step does its own backward and step."""
    step = plan.training_step if plan is not None else trainer.strategy.step_method(module, "training_step")
    with trainer.precision.autocast():
        out = step(batch, batch_idx)
    # What on_train_batch_end receives, as in Lightning: {} for None, the dict (loss detached), or {"loss": ...}.
    if out is None:
        return {}
    if isinstance(out, dict):
        return {**out, "loss": out["loss"].detach()} if isinstance(out.get("loss"), torch.Tensor) else dict(out)
    if not isinstance(out, torch.Tensor):
        raise ValueError(f"In manual optimization training_step must return a tensor, a dict or None; it returned "
                         f"{type(out).__name__}.")
    return {"loss": out.detach()}


def _loss_of(out: Any, trainer: Any) -> torch.Tensor | None:
    """Check what training_step returned and pull out the loss."""
    if out is None:
        return None
    if type(out) is torch.Tensor and out.requires_grad and out.numel() == 1:
        return out  # the common case, checked in three attribute reads
    loss = out
    if isinstance(out, dict):
        if "loss" not in out:
            raise ValueError(
                f"training_step returned a dict without a 'loss' key (keys: {sorted(out)}); in automatic "
                "optimization the dict must hold the loss under 'loss'."
            )
        loss = out["loss"]
    if not isinstance(loss, torch.Tensor):
        raise ValueError(
            f"training_step must return a loss tensor, a dict with 'loss', or None; it returned "
            f"{type(loss).__name__} at epoch {trainer.current_epoch}, step {trainer.global_step}."
        )
    if loss.numel() != 1:
        raise ValueError(
            f"training_step returned a loss of shape {tuple(loss.shape)}; the loss must be a scalar. Reduce it, "
            "e.g. loss.mean() or loss.sum()."
        )
    if not loss.requires_grad:
        raise ValueError(
            "training_step returned a loss that does not require grad, so backward() cannot train anything. "
            "Check that the loss is computed from the model's parameters, that they have requires_grad=True, "
            "and that training_step does not run under torch.no_grad()."
        )
    return loss


# --------------------------------------------------------------------------- evaluation
_EVAL_STEP = {"validate": "validation_step", "test": "test_step"}
_EVAL_PREFIX = {"validate": "on_validation", "test": "on_test"}


def run_evaluation(trainer: Any, module: Any, stage: str, loaders: list[Any] | None,
                   limits: list[int | None] | int | None) -> list[dict[str, float]]:
    """One validation or test run over every loader; returns one metric dict per loader.

    ``loaders=None`` is validation inside fit: the trainer's val loaders, requested (or reloaded) here,
    under ``torch.no_grad`` as Lightning does; ``validate``/``test`` run under ``inference_mode`` when the
    Trainer asks for it. ``loaders`` may also be a callable returning ``(loaders, limits)``. Either way
    the loaders are requested inside that context, as in Lightning.
    """
    in_fit = loaders is None
    context = torch.inference_mode if trainer.inference_mode and not in_fit else torch.no_grad
    with context():
        if in_fit:
            loaders, limits = trainer._val_loaders_for_run()
        elif callable(loaders):
            loaders, limits = loaders()
        per_loader_limits = limits if isinstance(limits, list) else [limits] * len(loaders)
        if not loaders or all(lim == 0 for lim in per_loader_limits):
            return []  # nothing to run: Lightning skips every hook
        return _evaluate(trainer, module, stage, loaders, per_loader_limits)


def _capture_modes(module: torch.nn.Module) -> list[tuple[torch.nn.Module, bool]]:
    return [(m, m.training) for m in module.modules()]


def _restore_modes(modes: list[tuple[torch.nn.Module, bool]]) -> None:
    # Each submodule gets back its own mode (a frozen, eval-mode backbone stays in eval), as in Lightning.
    for m, training in modes:
        m.training = training


def _warn_if_eval_mode(module: torch.nn.Module) -> None:
    # Lightning does not call .train() when fit starts; it trains the modes it finds and says so.
    frozen = [name or type(module).__name__ for name, m in module.named_modules() if not m.training]
    if frozen:
        import warnings

        shown = ", ".join(frozen[:5]) + (f" and {len(frozen) - 5} more" if len(frozen) > 5 else "")
        warnings.warn(f"fit() starts with {len(frozen)} module(s) in eval mode ({shown}); they stay in eval mode "
                      "while training. Call model.train() first if that is not intended.", UserWarning, stacklevel=4)


def _evaluate(trainer: Any, module: Any, stage: str, loaders: list[Any], limits: list[int | None]
              ) -> list[dict[str, float]]:
    from .hooks import is_overridden
    from .module import LightningModule

    hooks = trainer.hooks
    prefix = _EVAL_PREFIX[stage]
    step = trainer.strategy.step_method(module, _EVAL_STEP[stage])  # the bound method unless a wrapper needs it
    metrics = trainer._metrics
    was_training = trainer.training
    trainer.training = False
    trainer.evaluating = stage
    resume_phase = metrics.phase  # the training phase to return to after a validation inside fit
    metrics.enter(stage, "epoch")
    modes = _capture_modes(module)
    getattr(module, f"{prefix}_model_eval")()
    multi = len(loaders) > 1
    hooks.call(f"{prefix}_start")
    hooks.call(f"{prefix}_epoch_start")
    seen = trainer._eval_steps_seen
    outputs = []
    # Resolved once per run: the per-batch body below only calls what is there.
    on_batch_start = hooks.listeners(f"{prefix}_batch_start")
    on_batch_end = hooks.listeners(f"{prefix}_batch_end")
    precision = trainer.precision
    forward_context = precision.has_forward_context
    move = trainer._batch_hooks or trainer.strategy.root_device.type != "cpu" or precision.param_dtype is not None
    counting = not trainer.sanity_checking
    for dl_idx, loader in enumerate(loaders):
        metrics.enter(stage, "batch")
        metrics.dataloader_idx = dl_idx if multi else None
        extra = (dl_idx,) if multi else ()
        for batch_idx, batch in batches(loader, limits[dl_idx]):
            if move:
                batch = prepare_batch(trainer, module, batch, dl_idx)
            metrics.current_batch = batch
            for fn in on_batch_start:
                fn(batch, batch_idx, *extra)
            if forward_context:
                with precision.autocast():
                    out = step(batch, batch_idx, *extra)
            else:
                out = step(batch, batch_idx, *extra)
            for fn in on_batch_end:
                fn(out, batch, batch_idx, *extra)
            if counting:
                if metrics._stepped_keys:
                    trainer._publish_step_metrics(eval_stage=stage, dataloader_idx=dl_idx)
                seen[dl_idx] = seen.get(dl_idx, 0) + 1
        # Each loader's epoch values are taken when it is done (validate()/test() return one dict per loader).
        outputs.append(trainer._store_eval_loader(dl_idx if multi else None))
    metrics.enter(stage, "epoch")
    hooks.call(f"{prefix}_epoch_end")
    results = trainer._finish_eval_metrics(stage, outputs)
    metrics.enter(None)  # on_*_end reads the views but may not log
    hooks.call(f"{prefix}_end")
    metrics.reset_stage(stage)
    if trainer.state_fn == "fit" and not trainer.sanity_checking:
        metrics.enter("train", resume_phase)
    # The *_model_train hook runs only when the module overrides it; otherwise the captured modes come back.
    if is_overridden(module, f"{prefix}_model_train", LightningModule):
        getattr(module, f"{prefix}_model_train")()
    else:
        _restore_modes(modes)
    trainer.training = was_training
    trainer.evaluating = None
    return results


def run_predict(trainer: Any, module: Any, loaders: Any, limits: list[int | None] | None, return_predictions: bool
                ) -> Any:
    """``loaders`` may be a callable returning ``(loaders, limits)``; it is then called under no_grad/inference_mode."""
    context = torch.inference_mode if trainer.inference_mode else torch.no_grad
    with context():
        if callable(loaders):
            loaders, limits = loaders()
        if not loaders or all(lim == 0 for lim in limits):
            return None
        return _predict(trainer, module, loaders, limits, return_predictions)


def _predict(trainer: Any, module: Any, loaders: list[Any], limits: list[int | None], return_predictions: bool
             ) -> Any:
    hooks = trainer.hooks
    trainer._metrics.begin("predict", step_defaults=False)
    modes = _capture_modes(module)
    module.on_predict_model_eval()
    multi = len(loaders) > 1
    all_preds: list[list[Any]] = []
    hooks.call("on_predict_start")
    hooks.call("on_predict_epoch_start")
    predict_step = trainer.strategy.step_method(module, "predict_step")
    for dl_idx, loader in enumerate(loaders):
        extra = (dl_idx,) if multi else ()
        preds: list[Any] = []
        for batch_idx, batch in batches(loader, limits[dl_idx]):
            batch = prepare_batch(trainer, module, batch, dl_idx)
            hooks.call("on_predict_batch_start", batch, batch_idx, *extra)
            with trainer.precision.autocast():
                out = predict_step(batch, batch_idx, *extra)
            hooks.call("on_predict_batch_end", out, batch, batch_idx, *extra)
            if return_predictions:
                preds.append(out)
        all_preds.append(preds)
    hooks.call("on_predict_epoch_end")
    hooks.call("on_predict_end")
    _restore_modes(modes)
    if not return_predictions:
        return None
    return all_preds if multi else all_preds[0]

