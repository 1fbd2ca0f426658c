"""Turn whatever ``configure_optimizers`` returns into optimizers and scheduler configs."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

_FORMS = ("an optimizer, a list/tuple of optimizers, ([optimizers], [schedulers]), "
          "{'optimizer': ..., 'lr_scheduler': ...} or a list of such dicts")
_SCHEDULER_KEYS = {"scheduler", "name", "interval", "frequency", "monitor", "strict", "reduce_on_plateau"}


@dataclass
class LRSchedulerConfig:
    scheduler: Any
    name: str | None = None
    interval: str = "epoch"
    frequency: int = 1
    reduce_on_plateau: bool = False
    monitor: str | None = None
    strict: bool = True


def _is_optimizer(obj: Any) -> bool:
    return isinstance(obj, torch.optim.Optimizer) or (hasattr(obj, "step") and hasattr(obj, "param_groups"))


def _scheduler_config(obj: Any, where: str) -> LRSchedulerConfig:
    if isinstance(obj, dict):
        if "scheduler" not in obj:
            raise ValueError(f"configure_optimizers(): the lr_scheduler dict in {where} has no 'scheduler' key; "
                             f"got keys {sorted(obj)}.")
        unknown = set(obj) - _SCHEDULER_KEYS
        if unknown:
            raise ValueError(f"configure_optimizers(): unknown lr_scheduler keys {sorted(unknown)}; "
                             f"allowed: {sorted(_SCHEDULER_KEYS)}.")
        interval = obj.get("interval", "epoch")
        if interval not in ("epoch", "step"):
            raise ValueError(f"configure_optimizers(): lr_scheduler 'interval' is {interval!r}; allowed: 'epoch', 'step'.")
        frequency = obj.get("frequency", 1)
        if not isinstance(frequency, int) or frequency < 1:
            raise ValueError(f"configure_optimizers(): lr_scheduler 'frequency' is {frequency!r}; it must be an int >= 1.")
        sched = obj["scheduler"]
        plateau = obj.get("reduce_on_plateau", isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau))
        monitor = obj.get("monitor")
        if plateau and monitor is None:
            raise ValueError("configure_optimizers(): a ReduceLROnPlateau scheduler needs a metric to watch; add "
                             "'monitor': '<logged metric name>' to its lr_scheduler dict.")
        return LRSchedulerConfig(sched, obj.get("name"), interval, frequency, plateau, monitor, obj.get("strict", True))
    if isinstance(obj, torch.optim.lr_scheduler.ReduceLROnPlateau):
        raise ValueError("configure_optimizers(): a ReduceLROnPlateau scheduler needs a metric to watch; return it as "
                         "{'scheduler': scheduler, 'monitor': '<logged metric name>'}.")
    if not hasattr(obj, "step"):
        raise ValueError(f"configure_optimizers(): {where} holds {type(obj).__name__}, which is not an lr scheduler.")
    return LRSchedulerConfig(obj)


def parse(returned: Any) -> tuple[list[Any], list[LRSchedulerConfig]]:
    """Accepts every form Lightning accepts; raises a ValueError naming what was returned otherwise."""
    if returned is None:
        raise ValueError(f"configure_optimizers() returned None; it must return {_FORMS}.")
    if _is_optimizer(returned):
        return [returned], []
    if isinstance(returned, dict):
        return _from_dicts([returned])
    if isinstance(returned, (list, tuple)):
        items = list(returned)
        if not items:
            raise ValueError(f"configure_optimizers() returned an empty {type(returned).__name__}; it must return {_FORMS}.")
        if len(items) == 2 and isinstance(items[0], (list, tuple)):
            optimizers = list(items[0])
            scheds = items[1] if isinstance(items[1], (list, tuple)) else [items[1]]
            if not all(_is_optimizer(o) for o in optimizers):
                raise ValueError(f"configure_optimizers(): the first list holds {[type(o).__name__ for o in optimizers]}, "
                                 "not optimizers.")
            return optimizers, [_scheduler_config(s, "the scheduler list") for s in scheds]
        if all(isinstance(i, dict) for i in items):
            return _from_dicts(items)
        if all(_is_optimizer(i) for i in items):
            return items, []
    raise ValueError(f"configure_optimizers() returned {type(returned).__name__} ({returned!r:.80}); it must return {_FORMS}.")


def check_optimization(module: Any, config: Any, optimizers: list[Any]) -> None:
    """Refuse the Trainer settings that do not apply to the module's kind of optimization (as Lightning does)."""
    if not module.automatic_optimization:
        # The user's training_step owns the step.
        if config.accumulate_grad_batches != 1:
            raise ValueError(f"Trainer(accumulate_grad_batches={config.accumulate_grad_batches}) does not apply to "
                             "manual optimization; accumulate in training_step yourself (step every N batches).")
        if config.gradient_clip_val:
            raise ValueError(f"Trainer(gradient_clip_val={config.gradient_clip_val}) does not apply to manual "
                             "optimization; call self.clip_gradients(opt, gradient_clip_val=...) in training_step.")
        if config.microbatch_on_oom:
            raise ValueError("Trainer(microbatch_on_oom=True) does not apply to manual optimization: training_step "
                             "runs its own backward, so ember cannot split it. Leave it False, or split the batch "
                             "in training_step yourself.")
    elif len(optimizers) > 1:
        raise ValueError(f"configure_optimizers() returned {len(optimizers)} optimizers; automatic optimization steps "
                         "one. Set `self.automatic_optimization = False` and step them yourself in training_step.")


def _from_dicts(dicts: list[dict]) -> tuple[list[Any], list[LRSchedulerConfig]]:
    optimizers, configs = [], []
    for d in dicts:
        if "optimizer" not in d:
            raise ValueError(f"configure_optimizers() returned a dict without 'optimizer'; its keys are {sorted(d)}.")
        unknown = set(d) - {"optimizer", "lr_scheduler", "monitor", "frequency"}
        if unknown:
            raise ValueError(f"configure_optimizers() returned a dict with unknown keys {sorted(unknown)}; allowed: "
                             "'optimizer', 'lr_scheduler', 'monitor'.")
        if not _is_optimizer(d["optimizer"]):
            raise ValueError(f"configure_optimizers(): 'optimizer' holds {type(d['optimizer']).__name__}, not an optimizer.")
        optimizers.append(d["optimizer"])
        if d.get("lr_scheduler") is not None:
            sched = d["lr_scheduler"]
            if not isinstance(sched, dict):
                sched = {"scheduler": sched}
            if "monitor" in d and "monitor" not in sched:
                sched = {**sched, "monitor": d["monitor"]}
            configs.append(_scheduler_config(sched, "'lr_scheduler'"))
    return optimizers, configs


def clip_gradients(optimizer: Any, value: float | None, algorithm: str | None, trainer: Any) -> None:
    """``LightningModule.clip_gradients``: the Trainer's settings fill what is not given, and may not disagree."""
    trainer_val = getattr(trainer, "gradient_clip_val", None)
    trainer_algo = getattr(trainer, "gradient_clip_algorithm", None)
    if value is None:
        value = trainer_val or 0.0
    elif trainer_val is not None and trainer_val != value:
        raise ValueError(f"Trainer(gradient_clip_val={trainer_val!r}) and clip_gradients(gradient_clip_val="
                         f"{value!r}) disagree; set the value in one place only.")
    given = algorithm
    if algorithm is None:
        algorithm = trainer_algo or "norm"
    else:
        algorithm = algorithm.lower()
        if trainer_algo is not None and trainer_algo != algorithm:
            raise ValueError(f"Trainer(gradient_clip_algorithm={trainer_algo!r}) and clip_gradients("
                             f"gradient_clip_algorithm={given!r}) disagree; set it in one place only.")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"gradient_clip_val must be an int or a float; got {value!r}.")
    if algorithm not in ("norm", "value"):
        raise ValueError(f"gradient_clip_algorithm={given!r} is not known; allowed: 'norm', 'value'.")
    if value <= 0:
        return
    params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    if algorithm == "norm":
        torch.nn.utils.clip_grad_norm_(params, value)
    else:
        torch.nn.utils.clip_grad_value_(params, value)


def _no_closure() -> None:
    return None


class LightningOptimizer:
    """The optimizer as the module sees it (``self.optimizers()``, ``optimizer_step``'s argument).

    ``step()`` goes through the precision (loss scaling for fp16). Under manual optimization it also runs
    the closure, the ``on_before_optimizer_step`` hooks and counts one ``global_step``, as in Lightning.
    Everything else (``param_groups``, ``state``, ``zero_grad`` ...) is the optimizer's own.
    """

    def __init__(self, optimizer: Any, run: Any) -> None:
        from .profilers.wiring import timed

        self._optimizer = optimizer
        self._run = run
        # A profiler times the user's manual step as Lightning's bare "optimizer_step" action (decided per run).
        self._manual_step = timed(run.profiler, None, "optimizer_step", self._step_manually)

    @property
    def optimizer(self) -> Any:
        return self._optimizer

    def __getattr__(self, name: str) -> Any:
        return getattr(self._optimizer, name)

    def __repr__(self) -> str:
        return f"LightningOptimizer({self._optimizer!r})"

    def zero_grad(self, set_to_none: bool = True) -> None:
        self._optimizer.zero_grad(set_to_none=set_to_none)

    def step(self, closure: Any = None, **kwargs: Any) -> Any:
        run = self._run
        if closure is not None and not callable(closure):
            raise TypeError(f"optimizer.step(closure=...) needs a callable; got {type(closure).__name__}.")
        if run.module.automatic_optimization:
            return run.precision.optimizer_step(self._optimizer, closure)  # its closure runs the hooks
        return self._manual_step(closure or _no_closure, **kwargs)

    def _step_manually(self, closure: Any, **kwargs: Any) -> Any:
        run, precision, optimizer = self._run, self._run.precision, self._optimizer

        def closure_and_hooks() -> Any:
            result = closure()
            precision.unscale(optimizer)  # fp16: the hooks see the true gradients
            run.hooks.call("on_before_optimizer_step", optimizer)
            return result

        if precision.scaler is not None:
            closure_and_hooks()
            out = precision.optimizer_step(optimizer)
        else:
            out = optimizer.step(closure=closure_and_hooks, **kwargs)
        run.state.optimizer_stepped()
        return out


# Lightning's scheduler clock: "step" schedulers count batches of the current epoch (batch_idx + 1),
# "epoch" ones count epochs (current_epoch + 1); `frequency` divides that count. Manual optimization
# steps no scheduler (the user does).
def step_schedulers(run: Any, interval: str, plateau: bool = False) -> None:
    """Step the schedulers of ``interval`` that are due: the plain ones, or (``plateau``) the ReduceLROnPlateau ones."""
    module = run.module
    if not module.automatic_optimization:
        return
    counter = run.state.batch_idx + 1 if interval == "step" else run.state.current_epoch + 1
    for config in run.schedulers:
        if config.interval != interval or config.reduce_on_plateau != plateau or counter % config.frequency:
            continue
        if not plateau:
            module.lr_scheduler_step(config.scheduler, None)
            continue
        metrics = run.metrics.callback_metrics
        value = metrics.get(config.monitor)
        if value is None:
            available = sorted(metrics) or ["(none logged)"]
            if config.strict:
                raise ValueError(f"The ReduceLROnPlateau scheduler watches {config.monitor!r}, which was never "
                                 f"logged. Log it with self.log({config.monitor!r}, ...), or pick one of: "
                                 f"{', '.join(available)}.")
            import warnings

            warnings.warn(f"The ReduceLROnPlateau scheduler watches {config.monitor!r}, which is not logged; "
                          "strict=False, so this update is skipped.", RuntimeWarning, stacklevel=2)
            continue
        module.lr_scheduler_step(config.scheduler, value)
