"""Time the train/validate/test loops and stop training when a time budget is spent."""
from __future__ import annotations

import re
import time
from datetime import timedelta
from typing import Any

from .callback import Callback

_STAGES = ("train", "sanity_check", "validate", "test", "predict")


def parse_duration(duration: Any) -> float | None:
    """Seconds from "DD:HH:MM:SS", a timedelta, a dict of timedelta arguments, or None."""
    if duration is None:
        return None
    if isinstance(duration, str):
        match = re.fullmatch(r"(\d+):(\d\d):(\d\d):(\d\d)", duration.strip())
        if not match:
            raise ValueError(f"duration={duration!r} is not valid; expected 'DD:HH:MM:SS', e.g. '00:12:00:00'.")
        d, h, m, s = (int(g) for g in match.groups())
        return timedelta(days=d, hours=h, minutes=m, seconds=s).total_seconds()
    if isinstance(duration, dict):
        return timedelta(**duration).total_seconds()
    if isinstance(duration, timedelta):
        return duration.total_seconds()
    raise ValueError(f"duration={duration!r} is not valid; allowed: 'DD:HH:MM:SS', a timedelta or a dict of "
                     "timedelta arguments.")


class Timer(Callback):
    """Measures each loop; with ``duration`` set, asks the Trainer to stop once training has used it up.

    ``interval="step"`` checks after every training batch, ``"epoch"`` at the end of each epoch.
    ``Trainer(max_time=...)`` adds one of these with ``interval="step"``.
    """

    def __init__(self, duration: Any = None, interval: str = "step", verbose: bool = True) -> None:
        if interval not in ("step", "epoch"):
            raise ValueError(f"Timer(interval={interval!r}) is not valid; allowed: 'step', 'epoch'.")
        self._duration = parse_duration(duration)
        self._interval = interval
        self._verbose = verbose
        self._start_time: dict[str, float | None] = dict.fromkeys(_STAGES)
        self._end_time: dict[str, float | None] = dict.fromkeys(_STAGES)
        self._offset = 0.0  # training time of the run this one resumes

    def start_time(self, stage: str = "train") -> float | None:
        return self._start_time[_stage(stage)]

    def end_time(self, stage: str = "train") -> float | None:
        return self._end_time[_stage(stage)]

    def time_elapsed(self, stage: str = "train") -> float:
        stage = _stage(stage)
        start, end = self._start_time[stage], self._end_time[stage]
        offset = self._offset if stage == "train" else 0.0
        if start is None:
            return offset
        return (time.monotonic() if end is None else end) - start + offset

    def time_remaining(self, stage: str = "train") -> float | None:
        return None if self._duration is None else self._duration - self.time_elapsed(stage)

    # ---- the loops' clocks -------------------------------------------------------------
    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self._start_time["train"] = time.monotonic()

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self._end_time["train"] = time.monotonic()

    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        self._start_time["validate"] = time.monotonic()

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        self._end_time["validate"] = time.monotonic()

    def on_test_start(self, trainer: Any, pl_module: Any) -> None:
        self._start_time["test"] = time.monotonic()

    def on_test_end(self, trainer: Any, pl_module: Any) -> None:
        self._end_time["test"] = time.monotonic()

    # ---- the budget ------------------------------------------------------------------------
    def on_fit_start(self, trainer: Any, *args: Any, **kwargs: Any) -> None:
        if self._duration is not None:
            self._check_time_remaining(trainer)

    def on_train_batch_end(self, trainer: Any, *args: Any, **kwargs: Any) -> None:
        if self._interval == "step" and self._duration is not None:
            self._check_time_remaining(trainer)

    def on_train_epoch_end(self, trainer: Any, *args: Any, **kwargs: Any) -> None:
        if self._interval == "epoch" and self._duration is not None:
            self._check_time_remaining(trainer)

    def state_dict(self) -> dict[str, Any]:
        return {"time_elapsed": {stage: self.time_elapsed(stage) for stage in _STAGES}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._offset = state_dict.get("time_elapsed", {}).get("train", 0.0)

    def _check_time_remaining(self, trainer: Any) -> None:
        should_stop = self.time_elapsed() >= self._duration
        should_stop = trainer.strategy.broadcast(should_stop)
        trainer.should_stop = trainer.should_stop or should_stop
        if should_stop and self._verbose:
            import logging

            spent = timedelta(seconds=int(self.time_elapsed()))
            logging.getLogger(__name__).info(f"Time limit reached after {spent}. Signaling the Trainer to stop.")


def _stage(stage: str) -> str:
    stage = getattr(stage, "value", stage)
    if stage not in _STAGES:
        raise ValueError(f"Timer: unknown stage {stage!r}; allowed: {', '.join(_STAGES)}.")
    return stage
