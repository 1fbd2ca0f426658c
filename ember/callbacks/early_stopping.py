"""Stop training when a logged metric stops improving (or crosses a threshold, or stops being finite)."""
from __future__ import annotations

import logging
from enum import Enum
from typing import Any

import torch

from .callback import Callback

log = logging.getLogger(__name__)


class EarlyStoppingReason(Enum):
    """Why the last check asked the Trainer to stop (the same values as Lightning's)."""

    NOT_STOPPED = 0
    STOPPING_THRESHOLD = 1
    DIVERGENCE_THRESHOLD = 2
    PATIENCE_EXHAUSTED = 3
    NON_FINITE_METRIC = 4


class EarlyStopping(Callback):
    """Watch ``monitor`` in ``trainer.callback_metrics``; set ``trainer.should_stop`` when it stalls.

    A check happens once per epoch: at the end of the training epoch when validation runs exactly once
    per epoch (``val_check_interval=1.0``, ``check_val_every_n_epoch=1``), otherwise after every
    validation. ``min_epochs``/``min_steps`` of the Trainer still win over a stop.
    """

    monitors_metrics = True  # runs after the module's on_train_epoch_end (see ember.hooks.LISTENERS)
    mode_dict = {"min": torch.lt, "max": torch.gt}
    order_dict = {"min": "<", "max": ">"}

    def __init__(self, monitor: str, min_delta: float = 0.0, patience: int = 3, verbose: bool = False,
                 mode: str = "min", strict: bool = True, check_finite: bool = True,
                 stopping_threshold: float | None = None, divergence_threshold: float | None = None,
                 check_on_train_epoch_end: bool | None = None, log_rank_zero_only: bool = False) -> None:
        if mode not in self.mode_dict:
            raise ValueError(f"EarlyStopping(mode={mode!r}) is not valid; allowed: 'min', 'max'.")
        if not isinstance(patience, int) or isinstance(patience, bool) or patience < 0:
            raise ValueError(f"EarlyStopping(patience={patience!r}) is not valid; allowed: an int >= 0.")
        self.monitor = monitor
        self.patience = patience
        self.verbose = verbose
        self.mode = mode
        self.strict = strict
        self.check_finite = check_finite
        self.stopping_threshold = stopping_threshold
        self.divergence_threshold = divergence_threshold
        self.log_rank_zero_only = log_rank_zero_only
        self._check_on_train_epoch_end = check_on_train_epoch_end
        # Stored with the sign that makes "improved" one comparison: current - min_delta beats best.
        self.min_delta = abs(min_delta) if mode == "max" else -abs(min_delta)
        self.wait_count = 0
        self.stopped_epoch = 0
        self.stopping_reason = EarlyStoppingReason.NOT_STOPPED
        self.stopping_reason_message: str | None = None
        self.best_score = torch.tensor(torch.inf if mode == "min" else -torch.inf)

    @property
    def monitor_op(self) -> Any:
        return self.mode_dict[self.mode]

    @property
    def state_key(self) -> str:
        return self._generate_state_key(monitor=self.monitor, mode=self.mode)

    # ---- state kept in checkpoints ----------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"wait_count": self.wait_count, "stopped_epoch": self.stopped_epoch, "best_score": self.best_score,
                "patience": self.patience, "stopping_reason": self.stopping_reason.value,
                "stopping_reason_message": self.stopping_reason_message}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.wait_count = state_dict["wait_count"]
        self.stopped_epoch = state_dict["stopped_epoch"]
        self.best_score = state_dict["best_score"]
        self.patience = state_dict["patience"]
        self.stopping_reason = EarlyStoppingReason(state_dict.get("stopping_reason", 0))
        self.stopping_reason_message = state_dict.get("stopping_reason_message")

    # ---- when to check ------------------------------------------------------------
    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if self._check_on_train_epoch_end is None:
            # One validation per epoch: check when the epoch ends (the val metrics are there by then).
            self._check_on_train_epoch_end = trainer.val_check_interval == 1.0 and trainer.check_val_every_n_epoch == 1

    def _skip(self, trainer: Any) -> bool:
        return trainer.state.fn != "fit" or trainer.sanity_checking

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if self._check_on_train_epoch_end and not self._skip(trainer):
            self._run_early_stopping_check(trainer)

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if not self._check_on_train_epoch_end and not self._skip(trainer):
            self._run_early_stopping_check(trainer)

    # ---- the check ------------------------------------------------------------------
    def _run_early_stopping_check(self, trainer: Any) -> None:
        logs = trainer.callback_metrics
        if trainer.fast_dev_run or not self._metric_present(logs):
            return
        current = torch.as_tensor(logs[self.monitor]).squeeze()
        should_stop, reason = self._evaluate_stopping_criteria(current)
        should_stop = trainer.strategy.reduce_boolean_decision(should_stop, all=False)  # any rank stops all
        trainer.should_stop = trainer.should_stop or should_stop
        if should_stop:
            self.stopped_epoch = trainer.current_epoch
            self.stopping_reason_message = reason
        if reason and self.verbose and (not self.log_rank_zero_only or trainer.global_rank == 0):
            log.info(reason)

    def _metric_present(self, logs: dict[str, Any]) -> bool:
        if self.monitor in logs:
            return True
        available = ", ".join(sorted(logs)) or "(nothing logged yet)"
        message = (f"EarlyStopping watches {self.monitor!r}, which is not among the logged metrics: {available}. "
                   f"Log it with self.log({self.monitor!r}, ...) or change EarlyStopping(monitor=...).")
        if self.strict:
            raise RuntimeError(message)
        if self.verbose:
            import warnings

            warnings.warn(message, RuntimeWarning, stacklevel=3)
        return False

    def _evaluate_stopping_criteria(self, current: torch.Tensor) -> tuple[bool, str | None]:
        op = self.monitor_op
        if self.check_finite and not torch.isfinite(current):
            self.stopping_reason = EarlyStoppingReason.NON_FINITE_METRIC
            return True, (f"Monitored metric {self.monitor} = {current} is not finite; best so far was "
                          f"{self.best_score:.3f}. Stopping.")
        if self.stopping_threshold is not None and op(current, self.stopping_threshold):
            self.stopping_reason = EarlyStoppingReason.STOPPING_THRESHOLD
            return True, (f"Stopping threshold reached: {self.monitor} = {current} {self.order_dict[self.mode]} "
                          f"{self.stopping_threshold}. Stopping.")
        if self.divergence_threshold is not None and op(-current, -self.divergence_threshold):
            self.stopping_reason = EarlyStoppingReason.DIVERGENCE_THRESHOLD
            return True, (f"Divergence threshold reached: {self.monitor} = {current} "
                          f"{self.order_dict[self.mode]} {self.divergence_threshold}. Stopping.")
        if op(current - self.min_delta, self.best_score.to(current.device)):
            previous = self.best_score
            self.best_score = current
            self.wait_count = 0
            if torch.isfinite(previous):
                return False, (f"Metric {self.monitor} improved by {abs(previous - current):.3f} >= min_delta = "
                               f"{abs(self.min_delta)}. New best score: {current:.3f}")
            return False, f"Metric {self.monitor} improved. New best score: {current:.3f}"
        self.wait_count += 1
        if self.wait_count >= self.patience:
            self.stopping_reason = EarlyStoppingReason.PATIENCE_EXHAUSTED
            return True, (f"Monitored metric {self.monitor} did not improve in the last {self.wait_count} records. "
                          f"Best score: {self.best_score:.3f}. Stopping.")
        return False, None
