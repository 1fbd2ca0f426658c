"""ModelCheckpoint: save the training state on a schedule, keep the best k.

Every file goes through ``ember.checkpoint.save_atomic``. The top-k list is
kept in this callback's state (it travels inside each checkpoint), and the
files it no longer wants are deleted only after the new file is complete, so
a crash between the two leaves an extra file, never a missing one.
"""
from __future__ import annotations

import math
import os
import re
import time
from datetime import timedelta
from typing import Any

import torch

from .callback import Callback

_MODES = {"min": (torch.lt, math.inf), "max": (torch.gt, -math.inf)}


class ModelCheckpoint(Callback):
    CHECKPOINT_JOIN_CHAR = "-"
    CHECKPOINT_EQUALS_CHAR = "="
    CHECKPOINT_NAME_LAST = "last"
    FILE_EXTENSION = ".ckpt"
    STARTING_VERSION = 1
    _monitors_metrics = True
    _is_checkpoint = True

    def __init__(
        self,
        dirpath: str | os.PathLike | None = None,
        filename: str | None = None,
        monitor: str | None = None,
        verbose: bool = False,
        save_last: bool | str | None = None,
        save_top_k: int = 1,
        save_on_exception: bool = False,
        save_weights_only: bool = False,
        mode: str = "min",
        auto_insert_metric_name: bool = True,
        every_n_train_steps: int | None = None,
        train_time_interval: timedelta | None = None,
        every_n_epochs: int | None = None,
        save_on_train_epoch_end: bool | None = None,
        enable_version_counter: bool = True,
    ) -> None:
        if mode not in _MODES:
            raise ValueError(f"ModelCheckpoint(mode={mode!r}) is not valid; allowed: 'min', 'max'.")
        if not isinstance(save_top_k, int) or save_top_k < -1:
            raise ValueError(f"ModelCheckpoint(save_top_k={save_top_k!r}) is not valid; allowed: an int >= -1.")
        if save_last not in (None, True, False, "link"):
            raise ValueError(f"ModelCheckpoint(save_last={save_last!r}) is not valid; allowed: None, True, False, 'link'.")
        for name, value in (("every_n_train_steps", every_n_train_steps), ("every_n_epochs", every_n_epochs)):
            if value is not None and (not isinstance(value, int) or value < 0):
                raise ValueError(f"ModelCheckpoint({name}={value!r}) is not valid; allowed: an int >= 0 or None.")
        if monitor is None and save_top_k not in (-1, 0, 1):
            raise ValueError(f"ModelCheckpoint(save_top_k={save_top_k}) needs a monitor to rank checkpoints; "
                             "set monitor='<metric>' or use save_top_k in (-1, 0, 1).")
        set_schedules = sum(x is not None and x != 0 for x in (every_n_train_steps, every_n_epochs, train_time_interval))
        if set_schedules > 1:
            raise ValueError("ModelCheckpoint: every_n_train_steps, every_n_epochs and train_time_interval are "
                             "mutually exclusive; set one of them.")
        self.dirpath = os.path.realpath(os.path.expanduser(os.fspath(dirpath))) if dirpath is not None else None
        self.filename = filename
        self.monitor = monitor
        self.verbose = verbose
        self.save_last = save_last
        self.save_top_k = save_top_k
        self.save_on_exception = save_on_exception
        self.save_weights_only = save_weights_only
        self.mode = mode
        self.auto_insert_metric_name = auto_insert_metric_name
        self._every_n_train_steps = every_n_train_steps or 0
        self._train_time_interval = train_time_interval
        if every_n_epochs is None:
            every_n_epochs = 0 if (self._every_n_train_steps or train_time_interval) else 1
        self._every_n_epochs = every_n_epochs
        self._save_on_train_epoch_end = save_on_train_epoch_end
        self.enable_version_counter = enable_version_counter
        self.best_k_models: dict[str, Any] = {}
        self.kth_best_model_path = ""
        self.best_model_score: Any = None
        self.best_model_path = ""
        self.last_model_path = ""
        self.current_score: Any = None
        self._last_global_step_saved = -1
        self._last_time_checked: float | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(
            monitor=self.monitor, mode=self.mode, every_n_train_steps=self._every_n_train_steps,
            every_n_epochs=self._every_n_epochs, train_time_interval=self._train_time_interval)

    # ------------------------------------------------------------------ hooks
    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if self.dirpath is None:
            self.dirpath = self._default_dirpath(trainer)
        self._last_time_checked = time.monotonic()

    def _default_dirpath(self, trainer: Any) -> str:
        logger = trainer.logger
        if logger is not None:
            save_dir = getattr(logger, "save_dir", None) or trainer.default_root_dir
            name, version = logger.name, logger.version
            version = version if isinstance(version, str) else f"version_{version}"
            parts = [save_dir] + ([name] if name else []) + [version, "checkpoints"]
            return os.path.realpath(os.path.join(*parts))
        return os.path.realpath(os.path.join(trainer.default_root_dir, "checkpoints"))

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._should_skip(trainer):
            return
        step_due = self._every_n_train_steps and trainer.global_step % self._every_n_train_steps == 0
        time_due = False
        if self._train_time_interval is not None:
            now = time.monotonic()
            time_due = now - (self._last_time_checked or now) >= self._train_time_interval.total_seconds()
            if time_due:
                self._last_time_checked = now
        if step_due or time_due:
            self._save_checkpoints(trainer)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if not self._should_skip(trainer) and self._saves_on_train_epoch_end(trainer) and self._epoch_due(trainer):
            self._save_checkpoints(trainer)

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.state_fn != "fit" or self._should_skip(trainer) or self._saves_on_train_epoch_end(trainer):
            return
        if self._epoch_due(trainer):
            self._save_checkpoints(trainer)

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        if self.save_on_exception and trainer.state_fn == "fit" and self.dirpath:
            self._save(trainer, os.path.join(self.dirpath, f"exception{self.CHECKPOINT_JOIN_CHAR}epoch="
                                             f"{trainer.current_epoch}-step={trainer.global_step}{self.FILE_EXTENSION}"))

    def state_dict(self) -> dict[str, Any]:
        return {
            "monitor": self.monitor, "best_model_score": self.best_model_score, "best_model_path": self.best_model_path,
            "current_score": self.current_score, "dirpath": self.dirpath, "best_k_models": dict(self.best_k_models),
            "kth_best_model_path": self.kth_best_model_path, "kth_value": getattr(self, "kth_value", None),
            "last_model_path": self.last_model_path,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("dirpath") == self.dirpath or self.dirpath is None:
            self.best_k_models = {k: v for k, v in state_dict.get("best_k_models", {}).items() if os.path.isfile(k)}
            self.kth_best_model_path = state_dict.get("kth_best_model_path", "")
            self.last_model_path = state_dict.get("last_model_path", "")
        self.best_model_score = state_dict.get("best_model_score")
        self.best_model_path = state_dict.get("best_model_path", "")

    # ------------------------------------------------------------------ decisions
    def _should_skip(self, trainer: Any) -> bool:
        return (trainer.fast_dev_run or trainer.sanity_checking or trainer.state_fn != "fit"
                or self._last_global_step_saved == trainer.global_step)

    def _saves_on_train_epoch_end(self, trainer: Any) -> bool:
        if self._save_on_train_epoch_end is not None:
            return self._save_on_train_epoch_end
        # With validation, save after it so the monitored val metric exists.
        return not trainer._val_loaders

    def _epoch_due(self, trainer: Any) -> bool:
        n = self._every_n_epochs
        return n >= 1 and (trainer.current_epoch + 1) % n == 0

    def _save_checkpoints(self, trainer: Any) -> None:
        metrics = dict(trainer.callback_metrics)
        metrics.setdefault("epoch", torch.tensor(trainer.current_epoch))
        metrics.setdefault("step", torch.tensor(trainer.global_step))
        if self.save_top_k:
            if self.monitor is None:
                self._save_latest(trainer, metrics)
            else:
                self._save_ranked(trainer, metrics)
        if self.save_last:
            self._save_last(trainer, metrics)
        self._last_global_step_saved = trainer.global_step

    def _save_latest(self, trainer: Any, metrics: dict[str, Any]) -> None:
        path = self.format_checkpoint_name(metrics)
        previous = self.best_model_path
        self._save(trainer, path)
        self.best_model_path = path
        if self.save_top_k == 1 and previous and previous != path:
            self._remove(previous)

    def _save_ranked(self, trainer: Any, metrics: dict[str, Any]) -> None:
        if self.monitor not in metrics:
            available = sorted(k for k in metrics if k not in ("epoch", "step"))
            raise ValueError(
                f"ModelCheckpoint(monitor={self.monitor!r}) found no such metric; logged metrics are: "
                f"{', '.join(available) or '(none)'}. Log it with self.log({self.monitor!r}, ...) or fix the name."
            )
        score = metrics[self.monitor]
        score = score.detach().float().cpu() if isinstance(score, torch.Tensor) else torch.tensor(float(score))
        if torch.isnan(score):
            score = torch.tensor(_MODES[self.mode][1])
        self.current_score = score
        if self.save_top_k != -1 and len(self.best_k_models) >= self.save_top_k:
            better, _ = _MODES[self.mode]
            worst = self.kth_value
            if not bool(better(score, worst)):
                return
        path = self.format_checkpoint_name(metrics)
        self.best_k_models[path] = score
        drop = None
        if self.save_top_k != -1 and len(self.best_k_models) > self.save_top_k:
            drop = self._kth_path()
            self.best_k_models.pop(drop)
        self._refresh_best()
        self._save(trainer, path)  # the new file is complete before the old one goes
        if drop and drop != path:
            self._remove(drop)

    def _kth_path(self) -> str:
        reverse = self.mode == "min"
        return sorted(self.best_k_models, key=lambda p: float(self.best_k_models[p]), reverse=reverse)[0]

    def _refresh_best(self) -> None:
        pick = min if self.mode == "min" else max
        self.best_model_path = pick(self.best_k_models, key=lambda p: float(self.best_k_models[p]))
        self.best_model_score = self.best_k_models[self.best_model_path]
        self.kth_best_model_path = self._kth_path()
        self.kth_value = self.best_k_models[self.kth_best_model_path]

    def _save_last(self, trainer: Any, metrics: dict[str, Any]) -> None:
        path = self.format_checkpoint_name(metrics, self.CHECKPOINT_NAME_LAST)
        if self.save_last == "link" and self.best_model_path and os.path.isfile(self.best_model_path):
            tmp = path + ".tmp-link"
            if os.path.lexists(tmp):
                os.remove(tmp)
            os.symlink(os.path.relpath(self.best_model_path, os.path.dirname(path)), tmp)
            os.replace(tmp, path)
        else:
            self._save(trainer, path)
        self.last_model_path = path

    def _save(self, trainer: Any, path: str) -> None:
        trainer.save_checkpoint(path, weights_only=self.save_weights_only)
        for lg in trainer.loggers:
            lg.after_save_checkpoint(self)

    def _remove(self, path: str) -> None:
        if os.path.isfile(path) and path != self.last_model_path and path not in self.best_k_models:
            os.remove(path)

    # ------------------------------------------------------------------ names
    def format_checkpoint_name(self, metrics: dict[str, Any], filename: str | None = None, ver: int | None = None
                               ) -> str:
        template = filename or self.filename or "{epoch}" + self.CHECKPOINT_JOIN_CHAR + "{step}"
        name = self._format(template, metrics)
        if ver is not None:
            name += f"{self.CHECKPOINT_JOIN_CHAR}v{ver}"
        return os.path.join(self.dirpath or "", name + self.FILE_EXTENSION)

    def _format(self, template: str, metrics: dict[str, Any]) -> str:
        def one(match: re.Match) -> str:
            key, spec = match.group(1), match.group(2) or ""
            value = metrics.get(key, 0)
            if isinstance(value, torch.Tensor):
                value = value.item()
            text = format(value, spec.lstrip(":")) if spec else str(value)
            return f"{key}{self.CHECKPOINT_EQUALS_CHAR}{text}" if self.auto_insert_metric_name else text

        return re.sub(r"\{([^{}:]+)(:[^{}]*)?\}", one, template)
