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
def batches(loader: Iterable, limit: int | None, skip: int = 0) -> Iterable[tuple[int, Any]]:
    """``(batch_idx, batch)`` pairs, at most ``limit`` of them, starting after ``skip`` consumed batches."""
    it = enumerate(loader)
    if skip:
        it = itertools.islice(it, skip, None)
    if limit is not None:
        it = itertools.islice(it, max(limit - skip, 0))
    return it


def prepare_batch(trainer: Any, module: Any, batch: Any, dataloader_idx: int) -> Any:
    """The module's batch-transfer hooks, or a plain device move when it does not override them."""
    if trainer._batch_hooks:
        batch = module.on_before_batch_transfer(batch, dataloader_idx)
        batch = module.transfer_batch_to_device(batch, trainer.strategy.root_device, dataloader_idx)
        batch = module.on_after_batch_transfer(batch, dataloader_idx)
    else:
        batch = trainer.strategy.batch_to_device(batch)
    return trainer.precision.convert_input(batch)


# --------------------------------------------------------------------------- fit
def run_fit(trainer: Any, module: Any) -> None:
    hooks = trainer.hooks
    if trainer.num_sanity_val_steps and trainer._val_loaders and not trainer.sanity_checked:
        run_sanity_check(trainer, module)
    hooks.call("on_train_start")
    while not trainer._fit_done():
        trainer._begin_epoch()
        train_epoch(trainer, module)
        if trainer._interrupted:
            break
        trainer._finish_epoch()
    hooks.call("on_train_end")


def run_sanity_check(trainer: Any, module: Any) -> None:
    trainer.sanity_checking = True
    trainer.hooks.call("on_sanity_check_start")
    run_evaluation(trainer, module, "validate", trainer._val_loaders, trainer.num_sanity_val_steps)
    trainer.hooks.call("on_sanity_check_end")
    trainer.sanity_checking = False
    trainer.sanity_checked = True
    # What the sanity run logged is thrown away, as in Lightning.
    trainer._metrics.callback_metrics.clear()
    trainer._metrics.logged_metrics.clear()
    trainer._metrics.progress_bar_metrics.clear()


def train_epoch(trainer: Any, module: Any) -> None:
    """One pass over the training data (or until a stop condition)."""
    hooks = trainer.hooks
    metrics = trainer._metrics
    metrics.begin("train", step_defaults=False, fresh=True)
    hooks.call("on_train_epoch_start")
    metrics.step_defaults = True
    on_batch_start = hooks.listeners("on_train_batch_start")
    on_batch_end = hooks.listeners("on_train_batch_end")
    publish = trainer._publish_step_metrics
    step_fn = automatic_step if module.automatic_optimization else manual_step
    loader = trainer.train_dataloader
    skip = trainer._resume_batch_idx
    trainer._resume_batch_idx = 0
    trainer._is_last_batch = False
    n_batches = trainer.num_training_batches
    for batch_idx, batch in batches(loader, trainer._train_limit, skip):
        trainer.batch_idx = batch_idx
        trainer._is_last_batch = n_batches != math.inf and batch_idx + 1 >= n_batches
        batch = prepare_batch(trainer, module, batch, 0)
        metrics.current_batch = batch
        if on_batch_start:
            skip_rest = False
            for fn in on_batch_start:
                if fn(batch, batch_idx) == -1:
                    skip_rest = True
            if skip_rest:
                break
        outputs = step_fn(trainer, module, batch, batch_idx)
        trainer._batches_seen_in_epoch = batch_idx + 1
        trainer._total_batches_run += 1
        if trainer._accumulated == 0:  # the optimizer stepped (always, in manual optimization)
            trainer._batches_that_stepped += 1
        for fn in on_batch_end:
            fn(outputs, batch, batch_idx)
        publish()
        if trainer._should_validate_now(batch_idx):
            run_evaluation(trainer, module, "validate", trainer._val_loaders, trainer._val_limit)
            metrics.begin("train", step_defaults=True, fresh=False)
            trainer._step_plateau_schedulers("step")
        if trainer._stop_within_epoch():
            break
    else:
        if trainer._batches_seen_in_epoch == 0 and trainer._train_limit != 0:
            raise ValueError(
                "The training dataloader produced no batches. Check that the dataset is not empty and that "
                "drop_last=True with batch_size larger than the dataset is not discarding everything."
            )
    # Validation scheduled for the end of the epoch happens before on_train_epoch_end.
    if trainer._should_validate_at_epoch_end():
        run_evaluation(trainer, module, "validate", trainer._val_loaders, trainer._val_limit)
    metrics.begin("train", step_defaults=False, fresh=False)
    trainer._finish_train_epoch_metrics()


def automatic_step(trainer: Any, module: Any, batch: Any, batch_idx: int) -> Any:
    """training_step -> zero_grad -> backward -> (clip) -> optimizer step, in Lightning's order.

    With gradient accumulation the optimizer steps on the last batch of each
    window; zero_grad runs on the first one.
    """
    optimizer = trainer.optimizers[0]
    hooks = trainer.hooks
    precision = trainer.precision
    accumulate = trainer.accumulate_grad_batches
    window_pos = trainer._accumulated
    steps_now = window_pos + 1 >= accumulate or trainer._is_last_batch
    result: dict[str, Any] = {}

    def closure() -> Any:
        with precision.autocast():
            out = module.training_step(batch, batch_idx)
        loss = _loss_of(out, trainer)
        result["out"] = out
        if loss is None:
            result["loss"] = None
            return None
        if accumulate > 1:
            loss = loss / accumulate
        result["loss"] = loss
        if window_pos == 0:
            hooks.call("on_before_zero_grad", optimizer)
            module.optimizer_zero_grad(trainer.current_epoch, batch_idx, optimizer)
        hooks.call("on_before_backward", loss)
        with trainer.strategy.no_backward_sync(not steps_now):
            precision.backward(loss, module.backward)
        hooks.call("on_after_backward")
        if trainer.check_finite_loss and not bool(torch.isfinite(loss)):
            trainer._raise_non_finite(loss)
        if steps_now:
            hooks.call("on_before_optimizer_step", optimizer)
            if trainer.gradient_clip_val or trainer._custom_clipping:
                precision.unscale(optimizer)
                module.configure_gradient_clipping(
                    optimizer, trainer.gradient_clip_val, trainer.gradient_clip_algorithm)
        return loss

    if steps_now:
        if trainer._custom_optimizer_step:
            module.optimizer_step(trainer.current_epoch, batch_idx, _StepCounter(optimizer, precision), closure)
        elif trainer._optimizer_needs_closure:
            precision.step(optimizer, closure)
        else:
            # Same arithmetic as optimizer.step(closure) without the closure indirection.
            closure()
            precision.step(optimizer)
        trainer._accumulated = 0
        trainer.global_step += 1
        trainer._step_schedulers("step")
    else:
        closure()
        trainer._accumulated = window_pos + 1

    out = result.get("out")
    loss = result.get("loss")
    if loss is None:
        return None
    detached = loss.detach()
    trainer._last_loss = detached
    if isinstance(out, dict):
        return {**out, "loss": detached}
    return {"loss": detached}


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


def manual_step(trainer: Any, module: Any, batch: Any, batch_idx: int) -> Any:
    """Manual optimization: the user's training_step does its own backward and step."""
    with trainer.precision.autocast():
        out = module.training_step(batch, batch_idx)
    loss = out.get("loss") if isinstance(out, dict) else out
    if isinstance(loss, torch.Tensor):
        trainer._last_loss = loss.detach()
    if out is None:
        return None
    if isinstance(out, dict):
        return out
    return {"loss": out.detach() if isinstance(out, torch.Tensor) else out}


def _loss_of(out: Any, trainer: Any) -> torch.Tensor | None:
    """Check what training_step returned and pull out the loss."""
    if out is None:
        return None
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


def run_evaluation(trainer: Any, module: Any, stage: str, loaders: list[Any], limits: list[int | None] | int | None
                   ) -> list[dict[str, float]]:
    """One validation or test run over every loader; returns one metric dict per loader."""
    hooks = trainer.hooks
    prefix = _EVAL_PREFIX[stage]
    step = getattr(module, _EVAL_STEP[stage])
    metrics = trainer._metrics
    was_training = trainer.training
    trainer.training = False
    trainer.evaluating = stage
    metrics.begin(stage, step_defaults=False, fresh=True)
    getattr(module, f"{prefix}_model_eval")()
    per_loader_limits = limits if isinstance(limits, list) else [limits] * len(loaders)
    multi = len(loaders) > 1
    context = torch.inference_mode if trainer.inference_mode else torch.no_grad
    with context():
        hooks.call(f"{prefix}_start")
        hooks.call(f"{prefix}_epoch_start")
        for dl_idx, loader in enumerate(loaders):
            metrics.dataloader_suffix = f"/dataloader_idx_{dl_idx}" if multi else ""
            extra = (dl_idx,) if multi else ()
            for batch_idx, batch in batches(loader, per_loader_limits[dl_idx]):
                batch = prepare_batch(trainer, module, batch, dl_idx)
                metrics.current_batch = batch
                hooks.call(f"{prefix}_batch_start", batch, batch_idx, *extra)
                with trainer.precision.autocast():
                    out = step(batch, batch_idx, *extra)
                hooks.call(f"{prefix}_batch_end", out, batch, batch_idx, *extra)
                trainer._publish_step_metrics(eval_stage=stage)
        metrics.dataloader_suffix = ""
        hooks.call(f"{prefix}_epoch_end")
        results = trainer._finish_eval_metrics(stage, len(loaders))
        hooks.call(f"{prefix}_end")
    getattr(module, f"{prefix}_model_train")()
    trainer.training = was_training
    trainer.evaluating = None
    return results


def run_predict(trainer: Any, module: Any, loaders: list[Any], limits: list[int | None], return_predictions: bool
                ) -> Any:
    hooks = trainer.hooks
    trainer._metrics.begin("predict", step_defaults=False)
    module.on_predict_model_eval()
    multi = len(loaders) > 1
    all_preds: list[list[Any]] = []
    context = torch.inference_mode if trainer.inference_mode else torch.no_grad
    with context():
        hooks.call("on_predict_start")
        hooks.call("on_predict_epoch_start")
        for dl_idx, loader in enumerate(loaders):
            extra = (dl_idx,) if multi else ()
            preds: list[Any] = []
            for batch_idx, batch in batches(loader, limits[dl_idx]):
                batch = prepare_batch(trainer, module, batch, dl_idx)
                hooks.call("on_predict_batch_start", batch, batch_idx, *extra)
                with trainer.precision.autocast():
                    out = module.predict_step(batch, batch_idx, *extra)
                hooks.call("on_predict_batch_end", out, batch, batch_idx, *extra)
                if return_predictions:
                    preds.append(out)
            all_preds.append(preds)
        hooks.call("on_predict_epoch_end")
        hooks.call("on_predict_end")
    if not return_predictions:
        return None
    return all_preds if multi else all_preds[0]

