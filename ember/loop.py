"""The loop, as plain functions that read top to bottom.

    run_fit -> train_epoch -> (ember.step) one step -> end_of_batch -> validation (run_evaluation)
    run_evaluation (validate / test), run_predict

Every function receives the ``Run``: the objects one trainer run works with
(state, config, loaders, runtime, hooks, module). None of them calls back
into the Trainer, which only builds the ``Run`` and starts it. The rules of
*when* something happens (stop, validate, step a scheduler) are the small
functions under "rules", next to the code that follows them.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Any, Callable

import torch

from .hooks import is_overridden
from .iterator_step import EpochRanOut
from .logging import MetricStore, eval_loader_values, publish_step_metrics, write_eval_epoch, write_train_epoch
from .optim import LightningOptimizer, step_schedulers
from .profilers.wiring import timed, timed_batches
from .state import BatchPhase, FitState, Position
from .step import EpochPlan, batch_mover


@dataclasses.dataclass
class Run:
    """What one fit, validate, test or predict works with. The Trainer builds it; the learning-rate finder
    runs the loop on a variant of it (other callbacks, no loggers, no validation)."""

    module: Any
    state: FitState
    config: Any  # TrainerConfig
    data: Any  # ember.data.RunLoaders
    strategy: Any
    precision: Any
    hooks: Any  # HookDispatcher
    metrics: MetricStore
    loggers: list[Any]
    optimizers: list[Any] = dataclasses.field(default_factory=list)
    schedulers: list[Any] = dataclasses.field(default_factory=list)  # optim.LRSchedulerConfig
    lightning_optimizers: list[LightningOptimizer] = dataclasses.field(default_factory=list)
    batch_hooks: bool = False  # the module overrides a batch-transfer hook
    profiler: Any = None  # the run's profiler while one records (ember.profilers.wiring times what it needs)
    validation: bool = True  # False: the learning-rate range test trains without validating
    plan: EpochPlan | None = None  # the open epoch's plan: Run.configure keeps its accumulation in step

    def configure(self, **changes: Any) -> None:
        """New settings mid-run (``trainer.accumulate_grad_batches = n`` from a callback), the open epoch's too."""
        self.config = dataclasses.replace(self.config, **changes)
        if self.plan is not None:
            self.plan.accumulate = self.config.accumulate_grad_batches

    def use_optimizers(self, optimizers: list[Any], schedulers: list[Any]) -> None:
        self.optimizers, self.schedulers = optimizers, schedulers
        self.lightning_optimizers = [LightningOptimizer(o, self) for o in optimizers]


# --------------------------------------------------------------------------- rules
def minimums_reached(run: Run) -> bool:
    state, config = run.state, run.config
    return (config.min_epochs is None or state.current_epoch >= config.min_epochs) and (
        config.min_steps is None or state.global_step >= config.min_steps)


def stop_within_epoch(run: Run) -> bool:
    """max_steps reached, or a stop requested once min_epochs/min_steps are met (a SIGTERM stops regardless)."""
    state, max_steps = run.state, run.config.max_steps
    if max_steps != -1 and state.global_step >= max_steps:
        return True
    return state.should_stop and (state.preempt_signal is not None or minimums_reached(run))


def fit_done(run: Run) -> bool:
    # max_time is a Timer callback (added by the Trainer) that sets should_stop, as in Lightning.
    max_epochs = run.config.max_epochs
    return stop_within_epoch(run) or max_epochs != -1 and run.state.current_epoch >= max_epochs


def validate_now(run: Run, batch_idx: int) -> bool:
    """Lightning's rule, checked after every training batch (the last one included) of a validation epoch."""
    state, every = run.state, run.data.val_check_batch
    if not run.data.val_loaders:
        return False  # a reload inside the epoch found none
    stopping = state.should_stop and minimums_reached(run)
    if every == math.inf or state.is_last_batch and run.data.steps_on_iterator:
        return state.is_last_batch or stopping  # at the loader's end: it has no len / a dataloader_iter step ran out
    if stopping:
        return True  # a stop request validates before stopping
    if every is None:  # a time-based val_check_interval: no end-of-epoch run, only the clock (Lightning)
        return run.data.val_time_due()
    if run.config.check_val_every_n_epoch is None:
        return state.total_batches_run % every == 0
    # With a fraction that does not divide the epoch, the epoch's end gets no extra validation (Lightning).
    return (batch_idx + 1) % every == 0


# --------------------------------------------------------------------------- fit
def run_fit(run: Run) -> None:
    state, data, hooks = run.state, run.data, run.hooks
    # Lightning's order: the sanity check asks for the val loaders, then the train loader is built,
    # then (if not done yet) the val loaders, and only then on_train_start.
    if run.config.num_sanity_val_steps and data.val_loaders is None and not state.sanity_checked:
        run_sanity_check(run)
    if not data.train_ready:
        data.setup_train()
    if data.val_loaders is None and run.validation:
        setup_val(run)
    if fit_done(run) or data.train_limit == 0:
        return  # nothing to train (limit 0, max_epochs reached, or a stop already requested): no train hooks
    _warn_if_eval_mode(run.module)
    run.metrics.enter("train", "epoch")  # on_train_start may log (epoch-level), as in Lightning
    hooks.call("on_train_start")
    while not fit_done(run):
        data.begin_epoch(state.current_epoch)
        state.batches_seen_in_epoch = state.accumulated = 0
        timed(run.profiler, None, "run_training_epoch", train_epoch)(run)  # the plain function while none records
        finish_epoch(run)
    run.metrics.enter(None)  # no logging in on_train_end / on_fit_end
    hooks.call("on_train_end")


def setup_val(run: Run) -> None:
    state = run.state
    run.data.setup_val(state.current_epoch, state.sanity_checking, run.data.validation_epoch(state.current_epoch))
    state.eval_steps_seen = {}


def finish_epoch(run: Run) -> None:
    # Plateau "epoch" schedulers step after on_train_epoch_end, and only if the epoch ran to its end
    # (the other epoch schedulers already stepped with its last batch; see train_epoch).
    if run.state.epoch_reached_end:
        step_schedulers(run, "epoch", plateau=True)
    run.state.current_epoch += 1
    run.state.position = Position.BETWEEN_EPOCHS  # a checkpoint from here starts the next epoch afresh


def run_sanity_check(run: Run) -> None:
    from .checkpoint import capture_rng, restore_rng

    # The sanity run must not change what training draws (shuffling, dropout): Lightning isolates the RNGs.
    rng, state = capture_rng(), run.state
    state.sanity_checking = True
    run.hooks.call("on_sanity_check_start")
    run_evaluation(run, "validate", None)
    run.hooks.call("on_sanity_check_end")
    state.sanity_checking, state.sanity_checked = False, True
    restore_rng(rng)
    run.metrics.reset_all()  # what the sanity run logged is thrown away, as in Lightning


def train_epoch(run: Run) -> None:
    """One pass over the training data (or until a stop condition)."""
    state, hooks, metrics, data = run.state, run.hooks, run.metrics, run.data
    # The train entries restart at the end of each epoch (after its values are logged), so what
    # on_train_start logged counts in the first epoch, as in Lightning.
    metrics.enter("train", "epoch")
    hooks.call("on_train_epoch_start")
    metrics.enter("train", "batch")
    plan = run.plan = EpochPlan(run)  # everything the per-batch code needs, resolved once per epoch
    on_batch_start, step, move, prepare = plan.on_batch_start, plan.run_step, plan.move_batches, plan.prepare_batch
    last_idx = data.num_training_batches - 1 if data.num_training_batches != math.inf else -1
    state.is_last_batch = state.epoch_reached_end = False
    try:
        for batch_idx, batch in open_epoch(run, plan):
            state.batch_idx = batch_idx
            is_last = state.is_last_batch = batch_idx == last_idx
            if move:
                batch = prepare(run, batch, 0)
            metrics.current_batch = batch
            if on_batch_start and -1 in [fn(batch, batch_idx) for fn in on_batch_start]:
                # -1 ends the epoch here: Lightning still steps the lr schedulers for this batch.
                state.is_last_batch = state.epoch_reached_end = True
                for interval in ("step", "epoch"):
                    step_schedulers(run, interval)
                break
            outputs = step(run, batch, batch_idx, plan)
            if is_last:
                # Epoch-interval schedulers step with the last batch, before on_train_batch_end (Lightning).
                state.epoch_reached_end = True
                if plan.epoch_schedulers:
                    step_schedulers(run, "epoch")
            if end_of_batch(run, plan, outputs, batch, batch_idx):
                break
        else:
            if state.batches_seen_in_epoch == 0 and data.train_limit != 0:
                raise ValueError("The training dataloader produced no batches. Check that the dataset is not empty "
                                 "and that drop_last=True with batch_size larger than the dataset is not discarding "
                                 "everything.")
            if data.num_training_batches == math.inf and state.batches_seen_in_epoch:
                # A loader without len: its end is only known now (Lightning looks one batch ahead, so there the
                # schedulers and the validation below happen inside the last batch).
                state.is_last_batch = state.epoch_reached_end = True
                if plan.epoch_schedulers:
                    step_schedulers(run, "epoch")
                end_of_batch(run, plan, None, None, state.batch_idx, _VALIDATION, _AFTER_VALIDATION)
    except EpochRanOut:
        pass  # a training_step(dataloader_iter) asked for more than there was: the epoch ends (Lightning)
    if state.preempt_signal is not None:
        # SIGTERM: the last batch is complete; ember.checkpoint.preemption_guard saves and exits.
        from .checkpoint import TrainingPreempted

        state.position = Position.AFTER_BATCH
        raise TrainingPreempted(state.preempt_signal)
    state.position = Position.EPOCH_ENDED
    metrics.enter("train", "epoch")
    hooks.call("on_train_epoch_end")
    write_train_epoch(run)


def open_epoch(run: Run, plan: EpochPlan) -> Any:
    """``(batch_idx, batch)`` for this epoch, positioned where a resumed run left off.

    On a mid-epoch resume ``checkpoint.open_train_batches`` skips what was trained and puts back the RNG
    of the save; the rest of the saved batch runs here (if that ends the epoch, no batch is left).
    """
    from .checkpoint import open_train_batches

    pairs, phase = open_train_batches(run)
    if phase is None:
        return pairs
    state = run.state
    state.batch_idx = batch_idx = state.batches_seen_in_epoch - 1
    n = run.data.num_training_batches
    state.is_last_batch = n != math.inf and batch_idx == n - 1
    return iter(()) if end_of_batch(run, plan, None, None, batch_idx, phase) else pairs


# The phases as plain ints for the per-batch comparisons below (an enum member lookup costs more than the test).
_HOOKS, _PUBLISH, _VALIDATION, _AFTER_VALIDATION, _STOP_CHECK = (int(p) for p in BatchPhase)


def end_of_batch(run: Run, plan: EpochPlan, outputs: Any, batch: Any, batch_idx: int,
                 start: int = _HOOKS, last: int = _STOP_CHECK) -> bool:
    """The rest of a training batch once its step has run, phase by phase; True ends the epoch.

    A mid-epoch resume starts at the phase its checkpoint recorded (``state.BatchPhase``); a loader without
    len, whose end is only known once it ran out, runs the validation phases after its last batch. A batch
    with nothing to publish, validate or vote on (``EpochPlan.later_phases``) goes from its hooks to the stop rules.
    """
    state = run.state
    if start == _HOOKS:
        state.batches_seen_in_epoch = batch_idx + 1
        state.total_batches_run += 1
        if not state.accumulated:  # the optimizer stepped (always, in manual optimization)
            state.batches_that_stepped += 1
        for fn in plan.on_batch_end:
            fn(outputs, batch, batch_idx)
        if batch_idx >= plan.paced_due:
            plan.call_paced(outputs, batch, batch_idx)
    if start != _HOOKS or plan.later_phases:
        # Step metrics reach loggers every log_every_n_steps; callbacks and the bar read them on demand.
        if plan.log_every and start <= _PUBLISH and run.metrics.stepped and (
                state.batches_that_stepped % plan.log_every == 0 or state.should_stop):
            publish_step_metrics(run)
        # Validation (at val_check_interval, at the end of the epoch, or because of a stop) comes after
        # on_train_batch_end, as part of the batch, as in Lightning.
        if plan.validate and start <= _VALIDATION <= last and validate_now(run, batch_idx):
            if not state.accumulated:
                timed(run.profiler, run.module, "on_validation_model_zero_grad")()  # unless a window is open
            run_evaluation(run, "validate", None)
            run.metrics.enter("train", "batch")
        elif start == _AFTER_VALIDATION:
            run.metrics.enter("train", "batch")
        if plan.plateau_step and start <= _AFTER_VALIDATION <= last and not state.accumulated:
            step_schedulers(run, "step", plateau=True)
        if last != _STOP_CHECK:
            return False
        if plan.vote_on_stop:  # distributed only: every rank stops after the same batch
            agreed = run.strategy.vote_on_stop(state.preempt_signal)
            if agreed:
                state.preempt_signal, state.should_stop = agreed, True
    # (max_time too: its Timer callback sets should_stop.)
    return (state.should_stop or state.global_step >= plan.step_cap) and stop_within_epoch(run)


def _warn_if_eval_mode(module: torch.nn.Module) -> None:
    # Lightning does not call .train() when fit starts; it trains the modes it finds and says so.
    frozen = [name or type(module).__name__ for name, m in module.named_modules() if not m.training]
    if frozen:
        from .utilities.warnings import advise

        shown = ", ".join(frozen[:5]) + (f" and {len(frozen) - 5} more" if len(frozen) > 5 else "")
        advise(f"fit() starts with {len(frozen)} module(s) in eval mode ({shown}); they stay in eval mode "
               "while training. Call model.train() first if that is not intended.", stacklevel=4)


# --------------------------------------------------------------------------- evaluation
_EVAL_STEP = {"validate": "validation_step", "test": "test_step"}
_EVAL_PREFIX = {"validate": "on_validation", "test": "on_test"}
LoaderRequest = Callable[[], "tuple[list[Any], list[int | None]]"]


def run_evaluation(run: Run, stage: str, request: LoaderRequest | None) -> list[dict[str, float]]:
    """One validation or test run over every loader; returns one metric dict per loader.

    ``request=None``: validation inside fit, under ``no_grad``; ``validate``/``test`` pass ``request`` (it
    returns the loaders and limits) and run under ``inference_mode``. Loaders are requested inside (Lightning).
    """
    in_fit = request is None
    context = torch.inference_mode if run.config.inference_mode and not in_fit else torch.no_grad
    with context():
        if in_fit:
            if run.data.val_reload_due(run.state.current_epoch):
                setup_val(run)
            loaders, limits = run.data.val_loaders, run.data.val_limits_for_run(run.state.sanity_checking)
        else:
            loaders, limits = request()
        if not loaders or all(lim == 0 for lim in limits):
            return []  # nothing to run: Lightning skips every hook
        return _evaluate(run, stage, loaders, limits)


def _evaluate(run: Run, stage: str, loaders: list[Any], limits: list[int | None]) -> list[dict[str, float]]:
    state, hooks, metrics, module, precision = run.state, run.hooks, run.metrics, run.module, run.precision
    prefix = _EVAL_PREFIX[stage]
    step = timed(  # the bound method unless a wrapper needs it; a profiler times it as the strategy's (Lightning)
        run.profiler, run.strategy, _EVAL_STEP[stage], run.strategy.step_method(module, _EVAL_STEP[stage]))
    was_training, state.training, state.evaluating = state.training, False, stage
    resume_phase = metrics.phase  # the training phase to return to after a validation inside fit
    metrics.enter(stage, "epoch")
    modes = [(m, m.training) for m in module.modules()]
    timed(run.profiler, module, f"{prefix}_model_eval")()
    multi = len(loaders) > 1
    hooks.call(f"{prefix}_start")
    hooks.call(f"{prefix}_epoch_start")
    seen, outputs = state.eval_steps_seen, []
    # Resolved once per run: the per-batch body below only calls what is there.
    on_batch_start, on_batch_end = hooks.listeners(f"{prefix}_batch_start"), hooks.listeners(f"{prefix}_batch_end")
    forward_context, (move, prepare) = precision.has_forward_context, batch_mover(run)
    counting = not state.sanity_checking
    fetch = f"[_EvaluationLoop].{'test' if stage == 'test' else 'val'}_next"  # Lightning's action name
    for dl_idx, loader in enumerate(loaders):
        metrics.enter(stage, "batch", dl_idx if multi else None)
        extra = (dl_idx,) if multi else ()
        for batch_idx, batch in _batches(run, fetch, loader, limits[dl_idx]):
            if move:
                batch = prepare(run, batch, dl_idx)
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
                if metrics.stepped:
                    publish_step_metrics(run, eval_stage=stage, dataloader_idx=dl_idx)
                seen[dl_idx] = seen.get(dl_idx, 0) + 1
        # Each loader's epoch values are taken when it is done (validate()/test() return one dict per loader).
        outputs.append(eval_loader_values(run, dl_idx if multi else None))
    metrics.enter(stage, "epoch")
    hooks.call(f"{prefix}_epoch_end")
    results = write_eval_epoch(run, outputs)
    metrics.enter(None)  # on_*_end reads the views but may not log
    hooks.call(f"{prefix}_end")
    run.data.restart_val_clock()
    metrics.reset_stage(stage)
    if state.in_fit:
        metrics.enter("train", resume_phase)
    _back_to_train_modes(run, prefix, modes)
    state.training, state.evaluating = was_training, None
    return results


def _back_to_train_modes(run: Run, prefix: str, modes: list[tuple[Any, bool]]) -> None:
    from .module import LightningModule

    # The *_model_train hook runs only when the module overrides it; otherwise each submodule gets back its
    # own mode (a frozen, eval-mode backbone stays in eval), as in Lightning.
    if is_overridden(run.module, f"{prefix}_model_train", LightningModule):
        timed(run.profiler, run.module, f"{prefix}_model_train")()
    else:
        _restore_modes(modes)


def _batches(run: Run, action: str, loader: Any, limit: int | None) -> Any:
    """``(batch_idx, batch)`` pairs, at most ``limit`` of them (each fetch timed as ``action`` while profiling)."""
    pairs = itertools.islice(enumerate(loader), limit) if limit is not None else enumerate(loader)
    return timed_batches(run.profiler, action, pairs, limit, loader)


def _restore_modes(modes: list[tuple[torch.nn.Module, bool]]) -> None:
    for m, training in modes:
        m.training = training


def run_predict(run: Run, request: LoaderRequest, return_predictions: bool) -> Any:
    """Every predict loader under no_grad/inference_mode (requested inside it); one list of outputs per loader."""
    hooks, module = run.hooks, run.module
    with (torch.inference_mode if run.config.inference_mode else torch.no_grad)():
        loaders, limits = request()
        if not loaders or all(lim == 0 for lim in limits):
            return None
        run.metrics.begin("predict", step_defaults=False)
        modes = [(m, m.training) for m in module.modules()]
        timed(run.profiler, module, "on_predict_model_eval")()
        multi, all_preds = len(loaders) > 1, []
        hooks.call("on_predict_start")
        hooks.call("on_predict_epoch_start")
        predict_step = timed(run.profiler, run.strategy, "predict_step", run.strategy.step_method(module, "predict_step"))
        prepare = batch_mover(run)[1]
        for dl_idx, loader in enumerate(loaders):
            extra, preds = ((dl_idx,) if multi else ()), []
            for batch_idx, batch in _batches(run, "[_PredictionLoop].predict_next", loader, limits[dl_idx]):
                batch = prepare(run, batch, dl_idx)
                hooks.call("on_predict_batch_start", batch, batch_idx, *extra)
                with run.precision.autocast():
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
