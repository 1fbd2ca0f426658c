"""LearningRateFinder: the learning-rate range test, run at the start of fit.

One optimizer step per candidate rate, rising exponentially (or linearly)
from ``min_lr`` to ``max_lr``; the smoothed loss is recorded for each. The
candidate rates and the smoothing follow Lightning 2.6.6 exactly, so the
curves (and its 'steepest' suggestion) agree. Unlike Lightning, the model,
optimizer and RNG snapshot lives in memory and is restored in ``finally``:
no temporary checkpoint file, even when the search crashes.
"""
from __future__ import annotations

import math
from typing import Any

import torch

from .callback import Callback


class TunerExit(Exception):
    """Ends the fit() that only ran to host the range test (the Trainer tears down as after a normal run)."""


class _RangeSchedule(torch.optim.lr_scheduler.LRScheduler):
    """Rate for step k: ``min_lr`` at k=0, then ``min_lr * (max_lr/min_lr) ** ((k+1)/n)`` (or linear).

    The (k+1) skips one candidate after the first; it is kept because it is
    what Lightning records, and matching its candidates is the point.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, end_lr: float, num_iter: int, mode: str) -> None:
        self.end_lr = end_lr
        self.num_iter = num_iter
        self.mode = mode
        super().__init__(optimizer)

    def get_lr(self) -> list[float]:
        k = self.last_epoch
        if k <= 0:
            return list(self.base_lrs)
        r = (k + 1) / self.num_iter
        if self.mode == "linear":
            return [base + r * (self.end_lr - base) for base in self.base_lrs]
        return [base * (self.end_lr / base) ** r for base in self.base_lrs]


class _Recorder(Callback):
    """Records the rate before each step and the smoothed loss after it; may stop a diverging search."""

    def __init__(self, optimizer: torch.optim.Optimizer, early_stop_threshold: float | None, beta: float = 0.98) -> None:
        self.optimizer = optimizer
        self.threshold = early_stop_threshold
        self.beta = beta
        self.lrs: list[float] = []
        self.losses: list[float] = []
        self.avg = 0.0
        self.best = 0.0

    def _window_ends(self, trainer: Any, batch_idx: int) -> bool:
        return (batch_idx + 1) % trainer.accumulate_grad_batches == 0

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if self._window_ends(trainer, batch_idx):
            self.lrs.append(self.optimizer.param_groups[0]["lr"])

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if not self._window_ends(trainer, batch_idx):
            return
        if not outputs:
            self.losses.append(float("nan"))
            return
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        step = trainer.global_step
        self.avg = self.beta * self.avg + (1 - self.beta) * loss.item()
        # Lightning's bias correction uses step + 1 with a step counted from 1; kept for identical curves.
        smoothed = self.avg / (1 - self.beta ** (step + 1))
        if self.threshold is not None and step > 1 and smoothed > self.threshold * self.best:
            trainer.should_stop = True
        if smoothed < self.best or step == 1:
            self.best = smoothed
        self.losses.append(smoothed)


class LRFinderResult:
    """What ``Tuner.lr_find`` returns: ``results``, ``suggestion()`` and ``plot()``."""

    def __init__(self, mode: str, lr_min: float, lr_max: float, num_training: int) -> None:
        self.mode = mode
        self.lr_min = lr_min
        self.lr_max = lr_max
        self.num_training = num_training
        self.results: dict[str, list[float]] = {"lr": [], "loss": []}
        self._optimal_idx: int | None = None

    def suggestion(self, skip_begin: int = 10, skip_end: int = 1, method: str | None = None) -> float | None:
        """A learning rate read off the curve. ``method=None`` uses ember's default, which trains;
        ``method="steepest"`` is Lightning's rule."""
        from ..tuner import suggest

        found = suggest.suggest(self.results["lr"], self.results["loss"], method=method or suggest.DEFAULT_METHOD,
                                skip_begin=skip_begin, skip_end=skip_end)
        if found is None:
            self._optimal_idx = None
            return None
        self._optimal_idx, lr = found
        return lr

    def plot(self, suggest: bool = False, show: bool = False, ax: Any = None, method: str | None = None) -> Any:
        """The loss against the rate (log axis for the exponential range); the suggestion as a red dot."""
        import matplotlib.pyplot as plt  # plotting is optional: imported only here

        fig = ax.figure if ax is not None else plt.figure()
        ax = ax if ax is not None else fig.add_subplot(1, 1, 1)
        ax.plot(self.results["lr"], self.results["loss"])
        if self.mode == "exponential":
            ax.set_xscale("log")
        ax.set_xlabel("Learning rate")
        ax.set_ylabel("Loss")
        if suggest:
            lr = self.suggestion(method=method)
            if lr is not None and self._optimal_idx is not None:
                i = self._optimal_idx
                ax.plot(self.results["lr"][i], self.results["loss"][i], markersize=10, marker="o", color="red")
        if show:
            plt.show()
        return fig


def find_lr_attr(model: Any, attr_name: str = "") -> str:
    """The attribute holding the learning rate on the model or in its hparams."""
    names = [attr_name] if attr_name else ["lr", "learning_rate"]
    for name in names:
        if hasattr(model, name) or name in getattr(model, "hparams", {}):
            return name
    if attr_name:
        raise AttributeError(f"lr_find(attr_name={attr_name!r}): neither the model nor model.hparams has that attribute.")
    raise AttributeError("lr_find(update_attr=True) looks for `lr` or `learning_rate` on the model or in model.hparams "
                         "and found neither; add one, pass attr_name=..., or update_attr=False.")


def _set_lr_attr(model: Any, name: str, value: float) -> None:
    if hasattr(model, name) and not (name in getattr(model, "hparams", {}) and not name in vars(model)):
        setattr(model, name, value)
    if name in getattr(model, "hparams", {}):
        model.hparams[name] = value


class LearningRateFinder(Callback):
    """Runs the range test when fit starts; the Tuner ends that fit right after."""

    def __init__(self, min_lr: float = 1e-8, max_lr: float = 1.0, num_training_steps: int = 100,
                 mode: str = "exponential", early_stop_threshold: float | None = 4.0, update_attr: bool = True,
                 attr_name: str = "") -> None:
        check_range_args(min_lr, max_lr, num_training_steps, mode, early_stop_threshold)
        self._min_lr, self._max_lr = float(min_lr), float(max_lr)
        self._num_training_steps = num_training_steps
        self._mode = mode
        self._early_stop_threshold = early_stop_threshold
        self._update_attr = update_attr
        self._attr_name = attr_name
        self.ends_fit = False  # True: the Tuner hosts the search in a fit of its own, which ends right after it
        self.optimal_lr: LRFinderResult | None = None

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        self.lr_find(trainer, pl_module)

    def lr_find(self, trainer: Any, pl_module: Any) -> None:
        self.optimal_lr = run_range_test(trainer, pl_module, self._min_lr, self._max_lr, self._num_training_steps,
                                         self._mode, self._early_stop_threshold, self._update_attr, self._attr_name)
        if self.ends_fit:
            raise TunerExit()


def check_range_args(min_lr: Any, max_lr: Any, num_training: Any, mode: Any, early_stop_threshold: Any) -> None:
    for name, value in (("min_lr", min_lr), ("max_lr", max_lr)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or math.isinf(value):
            raise ValueError(f"lr_find({name}={value!r}) is not valid; allowed: a finite number > 0.")
    if min_lr >= max_lr:
        raise ValueError(f"lr_find(min_lr={min_lr!r}, max_lr={max_lr!r}): min_lr must be smaller than max_lr.")
    if isinstance(num_training, bool) or not isinstance(num_training, int) or num_training < 2:
        raise ValueError(f"lr_find(num_training={num_training!r}) is not valid; allowed: an int >= 2.")
    if mode not in ("exponential", "linear"):
        raise ValueError(f"lr_find(mode={mode!r}) is not valid; allowed: 'exponential', 'linear'.")
    if early_stop_threshold is not None and (isinstance(early_stop_threshold, bool) or not isinstance(
            early_stop_threshold, (int, float)) or early_stop_threshold <= 0):
        raise ValueError(f"lr_find(early_stop_threshold={early_stop_threshold!r}) is not valid; allowed: a number > 0 or None.")


def run_range_test(trainer: Any, module: Any, min_lr: float, max_lr: float, num_training: int, mode: str,
                   early_stop_threshold: float | None, update_attr: bool, attr_name: str) -> LRFinderResult | None:
    """Train one step per candidate rate from the current state, then put everything back.

    The loop runs on a variant of the trainer's ``Run``: only the recorder listens, nothing is logged,
    nothing validates, the range schedule replaces the model's schedulers and ``max_steps`` is the
    number of candidates. The weights, the optimizer, the RNG and the ``FitState`` are snapshots in
    memory, put back in ``finally``.
    """
    import dataclasses

    from .. import loop
    from ..hooks import HookDispatcher
    from ..optim import LRSchedulerConfig
    from ..tuner.snapshot import TrainingSnapshot

    if trainer.fast_dev_run:
        import warnings

        warnings.warn("lr_find is skipped with fast_dev_run.", UserWarning, stacklevel=2)
        return None
    if update_attr:
        attr_name = find_lr_attr(module, attr_name)
    if len(trainer.optimizers) != 1:
        raise ValueError(f"lr_find works with one optimizer; configure_optimizers() returned {len(trainer.optimizers)}.")
    snapshot = TrainingSnapshot(trainer, module)  # in memory
    optimizer = trainer.optimizers[0]
    fit_run, state = trainer.run_context, trainer.state
    result = LRFinderResult(mode, min_lr, max_lr, num_training)
    try:
        for group in optimizer.param_groups:
            group["lr"] = min_lr
            group["initial_lr"] = min_lr
        recorder = _Recorder(optimizer, early_stop_threshold)
        # A diverging loss is what the range test looks for: it is recorded (inf/nan), not an error.
        config = dataclasses.replace(fit_run.config, max_steps=num_training + state.global_step,
                                     check_finite_loss=False)
        test_run = dataclasses.replace(fit_run, config=config, hooks=HookDispatcher(trainer, module, [recorder]),
                                       loggers=[], validation=False)  # validation does not change the curve
        schedule = _RangeSchedule(optimizer, max_lr, num_training, mode)
        test_run.use_optimizers(fit_run.optimizers, [LRSchedulerConfig(schedule, interval="step")])
        state.sanity_checked = True
        trainer.run_context = test_run
        module.train()
        state.training = True
        loop.run_fit(test_run)
        result.results = trainer.strategy.broadcast({"lr": recorder.lrs, "loss": recorder.losses})
    finally:
        snapshot.restore()
    if update_attr:
        lr = result.suggestion()
        if lr is not None:
            _set_lr_attr(module, attr_name, lr)
            for group in optimizer.param_groups:
                group["lr"] = lr
    return result
