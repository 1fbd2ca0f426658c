"""ModelCheckpoint: save the training state on a schedule, keep the best k, and a "last" one.

Every file goes through ``Trainer.save_checkpoint`` (an atomic write, see
``ember.checkpoint.save_atomic``), so a crash leaves complete files only.

The top-k bookkeeping travels inside each checkpoint (``state_dict``). A file
this callback no longer wants is deleted only after its replacement is
complete, and the replacement names it (``pending_removal``): if the process
dies between the two, the resumed run deletes it.
"""
from __future__ import annotations

import math
import os
import re
import time
import warnings
from datetime import timedelta
from typing import Any

import torch

from ..checkpoint import after_writes, durable_in_background, is_pending, wait_for_writes
from .callback import Callback

_BETTER = {"min": torch.lt, "max": torch.gt}


class ModelCheckpoint(Callback):
    CHECKPOINT_JOIN_CHAR = "-"
    CHECKPOINT_EQUALS_CHAR = "="
    CHECKPOINT_NAME_LAST = "last"
    FILE_EXTENSION = ".ckpt"
    STARTING_VERSION = 1
    monitors_metrics = True

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
        if mode not in _BETTER:
            raise ValueError(f"ModelCheckpoint(mode={mode!r}) is not valid; allowed: 'min', 'max'.")
        if isinstance(save_top_k, bool) or not isinstance(save_top_k, int) or save_top_k < -1:
            raise ValueError(f"ModelCheckpoint(save_top_k={save_top_k!r}) is not valid; allowed: an int >= -1 "
                             "(-1 keeps every checkpoint, 0 none).")
        if save_last not in (None, True, False, "link"):
            raise ValueError(f"ModelCheckpoint(save_last={save_last!r}) is not valid; allowed: None, True, False, 'link'.")
        for name, value in (("every_n_train_steps", every_n_train_steps), ("every_n_epochs", every_n_epochs)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ValueError(f"ModelCheckpoint({name}={value!r}) is not valid; allowed: an int >= 0 or None.")
        if monitor is None and save_top_k not in (-1, 0, 1):
            raise ValueError(f"ModelCheckpoint(save_top_k={save_top_k}) needs a monitor to rank checkpoints; "
                             "set monitor='<metric>' or use save_top_k in (-1, 0, 1).")
        if every_n_train_steps is None and every_n_epochs is None and train_time_interval is None:
            every_n_epochs = 1  # the default schedule: once per epoch
        triggers = ((every_n_train_steps or 0) >= 1) + ((every_n_epochs or 0) >= 1) + (train_time_interval is not None)
        if triggers > 1:
            raise ValueError(f"ModelCheckpoint: every_n_train_steps={every_n_train_steps}, every_n_epochs="
                             f"{every_n_epochs} and train_time_interval={train_time_interval} are mutually exclusive; "
                             "set one of them.")
        self.dirpath = os.path.realpath(os.path.expanduser(os.fspath(dirpath))) if dirpath is not None else None
        self._dirpath_is_default = False
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
        self._every_n_epochs = every_n_epochs or 0
        self._train_time_interval = train_time_interval
        self._save_on_train_epoch_end = save_on_train_epoch_end
        self._enable_version_counter = enable_version_counter

        self.best_k_models: dict[str, torch.Tensor] = {}
        self.kth_best_model_path = ""
        self.kth_value = torch.tensor(math.inf if mode == "min" else -math.inf)
        self.best_model_score: torch.Tensor | None = None
        self.best_model_path = ""
        self.last_model_path = ""
        self.current_score: torch.Tensor | None = None
        self._last_global_step_saved = 0  # nothing to save before the first optimizer step
        self._last_checkpoint_saved = ""
        self._last_time_checked: float | None = None
        self._defer_save_until_validation = False
        self._pending_removal: list[str] = []

    @property
    def idle_events(self) -> tuple[str, ...]:
        # Without a per-step schedule the per-step hook has nothing to do: the Trainer then never calls it.
        per_step = self._every_n_train_steps >= 1 or self._train_time_interval is not None
        return () if per_step else ("on_train_batch_end",)

    @property
    def state_key(self) -> str:
        return self._generate_state_key(
            monitor=self.monitor, mode=self.mode, every_n_train_steps=self._every_n_train_steps,
            every_n_epochs=self._every_n_epochs, train_time_interval=self._train_time_interval)

    @property
    def every_n_epochs(self) -> int:
        return self._every_n_epochs

    # ------------------------------------------------------------------ hooks
    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if self.dirpath is None or self._dirpath_is_default:
            # Distributed: rank 0's choice (its logger version) is every rank's, so all ranks name the same files.
            self.dirpath = trainer.strategy.broadcast(self._default_dirpath(trainer))
            self._dirpath_is_default = True
        if trainer.is_global_zero and stage == "fit" and os.path.isdir(self.dirpath):
            from ..checkpoint import remove_stale_temp_files

            remove_stale_temp_files(self.dirpath)  # leftovers of a process killed while saving
            if self.save_top_k != 0 and any(n.endswith(self.FILE_EXTENSION) for n in os.listdir(self.dirpath)):
                warnings.warn(f"Checkpoint directory {self.dirpath} exists and is not empty.", UserWarning,
                              stacklevel=2)

    def _default_dirpath(self, trainer: Any) -> str:
        """``<save_dir>/<name>/version_N/checkpoints`` of the first logger, else ``default_root_dir/checkpoints``."""
        if trainer.loggers:
            logger = trainer.loggers[0]
            save_dir = logger.save_dir if logger.save_dir is not None else trainer.default_root_dir
            version = logger.version if isinstance(logger.version, str) else f"version_{logger.version}"
            return os.path.realpath(os.path.join(save_dir, str(logger.name or ""), version, "checkpoints"))
        return os.path.realpath(os.path.join(trainer.default_root_dir, "checkpoints"))

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self._last_time_checked = time.monotonic()

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        if self._pending_removal and trainer.is_global_zero:
            # The run that wrote our checkpoint died before deleting what it had replaced.
            for path in self._pending_removal:
                if os.path.isfile(path) and self._should_remove(trainer, path, ""):
                    os.remove(path)
        self._pending_removal = []

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._should_skip(trainer):
            return
        step_due = self._every_n_train_steps >= 1 and trainer.global_step % self._every_n_train_steps == 0
        time_due = False
        if self._train_time_interval is not None:
            now = time.monotonic()
            time_due = self._last_time_checked is not None and \
                now - self._last_time_checked >= self._train_time_interval.total_seconds()
            time_due = bool(trainer.strategy.broadcast(time_due))
            if time_due:
                self._last_time_checked = now
        if not (step_due or time_due):
            return
        candidates = self._monitor_candidates(trainer)
        if self.monitor is not None and self.monitor not in candidates:
            self._defer_save_until_validation = True  # e.g. a val metric that does not exist yet
            return
        if self.monitor is not None and not self._saves_on_train_epoch_end(trainer) and trainer.is_last_batch \
                and self._validation_will_run(trainer):
            self._defer_save_until_validation = True  # rank with the metric of the validation about to run
            return
        self._save_topk(trainer, candidates)
        self._save_last(trainer, candidates)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if not self._should_skip(trainer) and self._saves_on_train_epoch_end(trainer):
            self._save_for_epoch(trainer)

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if self._should_skip(trainer) or self._saves_on_train_epoch_end(trainer):
            return
        if self._defer_save_until_validation:
            candidates = self._monitor_candidates(trainer)
            self._save_topk(trainer, candidates)
            self._save_last(trainer, candidates)
            self._defer_save_until_validation = False
            return
        self._save_for_epoch(trainer)

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        if not self.save_on_exception or trainer.fast_dev_run or trainer.sanity_checking \
                or self._last_global_step_saved == trainer.global_step or not self.dirpath:
            wait_for_writes()
            return
        candidates = self._monitor_candidates(trainer)
        path = self.format_checkpoint_name(candidates)
        self._save_file(trainer, path)
        self._save_last(trainer, candidates)
        print(f"ember: {type(exception).__name__} ({exception}); saved a checkpoint to {path}")

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        if self.save_last and not self._last_checkpoint_saved and not trainer.fast_dev_run:
            self._save_last(trainer, self._monitor_candidates(trainer))
        wait_for_writes()  # after fit, every file named in best_model_path & co. is on disk

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        wait_for_writes()

    def state_dict(self) -> dict[str, Any]:
        return {
            "monitor": self.monitor, "best_model_score": self.best_model_score, "best_model_path": self.best_model_path,
            "current_score": self.current_score, "dirpath": self.dirpath, "best_k_models": dict(self.best_k_models),
            "kth_best_model_path": self.kth_best_model_path, "kth_value": self.kth_value,
            "last_model_path": self.last_model_path, "pending_removal": list(self._pending_removal),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved_dir = state_dict.get("dirpath", self.dirpath)
        if saved_dir == self.dirpath:
            self.best_model_score = state_dict["best_model_score"]
            self.kth_best_model_path = state_dict.get("kth_best_model_path", self.kth_best_model_path)
            self.kth_value = state_dict.get("kth_value", self.kth_value)
            self.best_k_models = dict(state_dict.get("best_k_models", self.best_k_models))
            self.last_model_path = state_dict.get("last_model_path", self.last_model_path)
            self.current_score = state_dict.get("current_score")
            self._pending_removal = list(state_dict.get("pending_removal", []))
        else:
            warnings.warn(f"The checkpoint's ModelCheckpoint saved to {saved_dir!r}, this one saves to "
                          f"{self.dirpath!r}: only best_model_path is restored, the top-k list starts empty.",
                          UserWarning, stacklevel=2)
        self.best_model_path = state_dict["best_model_path"]

    def last_checkpoint_path(self, trainer: Any) -> str:
        """Where a "last" checkpoint taken now goes (ember's preemption save writes there too)."""
        return self.format_checkpoint_name(self._monitor_candidates(trainer), self.CHECKPOINT_NAME_LAST)

    def checkpoint_dirs(self) -> list[str]:
        """The dirpath, and with the default layout also the other ``version_N/checkpoints`` folders.

        A new run gets a new logger version, so a requeued job would otherwise never see the checkpoints
        of the run it continues (``ckpt_path="last"``).
        """
        if not self.dirpath:
            return []
        dirs = [self.dirpath] if os.path.isdir(self.dirpath) else []
        if self._dirpath_is_default:
            version_dir = os.path.dirname(self.dirpath)
            parent = os.path.dirname(version_dir)
            if os.path.basename(version_dir).startswith("version_") and os.path.isdir(parent):
                for name in sorted(os.listdir(parent)):
                    other = os.path.join(parent, name, os.path.basename(self.dirpath))
                    if name.startswith("version_") and other != self.dirpath and os.path.isdir(other):
                        dirs.append(other)
        return dirs

    # ------------------------------------------------------------------ when to save
    def _should_skip(self, trainer: Any) -> bool:
        return (bool(trainer.fast_dev_run) or trainer.state.fn != "fit" or trainer.sanity_checking
                or self._last_global_step_saved == trainer.global_step)

    def _saves_on_train_epoch_end(self, trainer: Any) -> bool:
        """Lightning's rule: at the end of the training epoch unless validation runs on another schedule."""
        if self._save_on_train_epoch_end is not None:
            return self._save_on_train_epoch_end
        if trainer.check_val_every_n_epoch != 1:
            return False
        if not sum(trainer.num_val_batches):
            return True
        return trainer.val_check_interval == 1.0

    def _validation_will_run(self, trainer: Any) -> bool:
        every = trainer.check_val_every_n_epoch
        return bool(sum(trainer.num_val_batches)) and (every is None or (trainer.current_epoch + 1) % every == 0)

    def _save_for_epoch(self, trainer: Any) -> None:
        candidates = self._monitor_candidates(trainer)
        if self._every_n_epochs >= 1 and (trainer.current_epoch + 1) % self._every_n_epochs == 0:
            self._save_topk(trainer, candidates)
        # "last" follows every save made at this step (and always follows when it is a link).
        if self._last_global_step_saved == trainer.global_step or (self.save_last == "link" and self._last_checkpoint_saved):
            self._save_last(trainer, candidates)

    # ------------------------------------------------------------------ what to save
    def _monitor_candidates(self, trainer: Any) -> dict[str, Any]:
        # A shallow copy: the score kept in best_k_models is cloned in _save_topk.
        candidates = dict(trainer.callback_metrics)
        epoch, step = candidates.get("epoch"), candidates.get("step")
        candidates["epoch"] = epoch.int() if isinstance(epoch, torch.Tensor) else torch.tensor(trainer.current_epoch)
        candidates["step"] = step.int() if isinstance(step, torch.Tensor) else torch.tensor(trainer.global_step)
        return candidates

    def check_monitor_top_k(self, trainer: Any, current: torch.Tensor | None = None) -> bool:
        if current is None:
            return False
        if self.save_top_k == -1 or len(self.best_k_models) < self.save_top_k:
            return True
        better = _BETTER[self.mode](current, self.best_k_models[self.kth_best_model_path])
        return bool(trainer.strategy.reduce_boolean_decision(bool(better)))

    def _save_topk(self, trainer: Any, candidates: dict[str, Any]) -> None:
        if self.save_top_k == 0:
            return
        if self.monitor is None:
            self._save_unranked(trainer, candidates)
            return
        if self.monitor not in candidates:
            available = sorted(k for k in candidates if k not in ("epoch", "step"))
            raise ValueError(
                f"ModelCheckpoint(monitor={self.monitor!r}) found no such metric; logged metrics are: "
                f"{', '.join(available) or '(none)'}. Log it with self.log({self.monitor!r}, ...) or fix the name."
            )
        current = candidates[self.monitor]
        current = current.detach().clone() if isinstance(current, torch.Tensor) else torch.tensor(float(current))
        if self.check_monitor_top_k(trainer, current):
            self._save_ranked(trainer, current, candidates)
        elif self.verbose:
            print(f"Epoch {trainer.current_epoch}, global step {trainer.global_step}: {self.monitor!r} was not in "
                  f"top {self.save_top_k}")

    def _save_unranked(self, trainer: Any, candidates: dict[str, Any]) -> None:
        """No monitor: the newest checkpoint is the best one (save_top_k=1 keeps only it)."""
        path = self._free_name(candidates, trainer, keep=self.best_model_path)
        previous, self.best_model_path = self.best_model_path, path
        drop = previous if self.save_top_k == 1 and previous and self._should_remove(trainer, previous, path) else None
        self._save_file(trainer, path, drop)

    def _save_ranked(self, trainer: Any, current: torch.Tensor, candidates: dict[str, Any]) -> None:
        k = len(self.best_k_models) + 1 if self.save_top_k == -1 else self.save_top_k
        dropped = None
        if len(self.best_k_models) == k and k > 0:
            dropped = self.kth_best_model_path
            self.best_k_models.pop(dropped)
        if torch.isnan(current):
            current = torch.tensor(math.inf if self.mode == "min" else -math.inf, device=current.device)
        path = self._free_name(candidates, trainer, keep=dropped)
        self.current_score = current
        self.best_k_models[path] = current
        if len(self.best_k_models) == k:
            worst = max if self.mode == "min" else min
            self.kth_best_model_path = worst(self.best_k_models, key=self.best_k_models.get)
            self.kth_value = self.best_k_models[self.kth_best_model_path]
        best = min if self.mode == "min" else max
        self.best_model_path = best(self.best_k_models, key=self.best_k_models.get)
        self.best_model_score = self.best_k_models[self.best_model_path]
        if self.verbose:
            print(f"Epoch {trainer.current_epoch}, global step {trainer.global_step}: {self.monitor!r} reached "
                  f"{float(current):0.5f} (best {float(self.best_model_score):0.5f}), saving model to {path!r} as top {k}")
        drop = dropped if dropped and self._should_remove(trainer, dropped, path) else None
        self._save_file(trainer, path, drop)

    def _save_last(self, trainer: Any, candidates: dict[str, Any]) -> None:
        if not self.save_last:
            return
        path = self.format_checkpoint_name(candidates, self.CHECKPOINT_NAME_LAST)
        if self._enable_version_counter:
            version = self.STARTING_VERSION
            while self.file_exists(path, trainer) and path != self.last_model_path:
                path = self.format_checkpoint_name(candidates, self.CHECKPOINT_NAME_LAST, ver=version)
                version += 1
        previous, self.last_model_path = self.last_model_path, path
        drop = previous if previous and self._should_remove(trainer, previous, path) else None
        if self.save_last == "link" and self._last_checkpoint_saved and self.save_top_k != 0:
            self._link(trainer, self._last_checkpoint_saved, path)
            if drop:
                self._remove(trainer, drop)
        else:
            self._save_file(trainer, path, drop)

    def _save_file(self, trainer: Any, path: str, drop: str | None = None) -> None:
        """Write ``path``, then delete ``drop``; the file written names ``drop`` so a crash in between is undone."""
        if drop:
            self._pending_removal = [drop]
        # The training thread only serialises; fsync and rename follow on ember's writer thread, and the
        # deletion of ``drop`` is queued behind them (ember.checkpoint.save_atomic).
        with durable_in_background():
            trainer.save_checkpoint(path, self.save_weights_only)
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = path
        if trainer.is_global_zero:
            for lg in trainer.loggers:
                lg.after_save_checkpoint(self)
        if drop:
            self._remove(trainer, drop)
            self._pending_removal = []

    @staticmethod
    def _link(trainer: Any, target: str, linkpath: str) -> None:
        """Point ``linkpath`` at ``target`` with one atomic rename, once ``target`` is on disk."""
        if trainer.is_global_zero and os.path.abspath(target) != os.path.abspath(linkpath):
            after_writes(_symlink_atomically, target, linkpath)
        trainer.strategy.barrier("checkpoint_link")

    def _should_remove(self, trainer: Any, previous: str, current: str) -> bool:
        """Only our own files: not the one just written, not the one this run resumed from, not outside dirpath."""
        if previous == current or previous in self.best_k_models or previous in (self.last_model_path,
                                                                                self.best_model_path):
            return False
        previous = os.path.abspath(previous)
        if trainer.ckpt_path is not None and previous == os.path.abspath(trainer.ckpt_path):
            return False
        return self.dirpath is not None and os.path.dirname(previous) == os.path.abspath(self.dirpath)

    @staticmethod
    def _remove(trainer: Any, path: str) -> None:
        if trainer.is_global_zero:
            after_writes(_remove_if_present, path)

    def file_exists(self, filepath: str, trainer: Any) -> bool:
        exists = (os.path.exists(filepath) or is_pending(filepath)) if trainer.is_global_zero else False
        return bool(trainer.strategy.reduce_boolean_decision(exists, all=False))

    def _free_name(self, candidates: dict[str, Any], trainer: Any, keep: str | None) -> str:
        """The formatted name, with -v1, -v2... appended while a file of that name exists (unless it is ``keep``)."""
        path = self.format_checkpoint_name(candidates)
        if self._enable_version_counter:
            version = self.STARTING_VERSION
            while self.file_exists(path, trainer) and path != keep:
                path = self.format_checkpoint_name(candidates, ver=version)
                version += 1
        return path

    # ------------------------------------------------------------------ names
    def format_checkpoint_name(self, metrics: dict[str, Any], filename: str | None = None, ver: int | None = None,
                               prefix: str | None = None) -> str:
        """``dirpath/<filename template filled with metrics>[-v<ver>].ckpt``; a missing metric formats as 0."""
        name = self._fill(filename or self.filename or "{epoch}" + self.CHECKPOINT_JOIN_CHAR + "{step}", metrics)
        if prefix is not None:
            name = self.CHECKPOINT_JOIN_CHAR.join([prefix, name])
        if ver is not None:
            name = self.CHECKPOINT_JOIN_CHAR.join([name, f"v{ver}"])
        name += self.FILE_EXTENSION
        return os.path.join(self.dirpath, name) if self.dirpath else name

    def _fill(self, template: str, metrics: dict[str, Any]) -> str:
        def one(match: re.Match) -> str:
            key, spec = match.group(1), match.group(2) or ""
            value = metrics.get(key, 0)
            if isinstance(value, torch.Tensor):
                value = value.item()
            text = format(value, spec[1:]) if spec else str(value)
            return f"{key}{self.CHECKPOINT_EQUALS_CHAR}{text}" if self.auto_insert_metric_name else text

        return re.sub(r"\{([^{}:]+)(:[^{}]*)?\}", one, template)

    def _find_last_checkpoints(self, trainer: Any) -> set[str]:
        if not self.dirpath or not os.path.isdir(self.dirpath):
            return set()
        pattern = re.compile(rf"^{re.escape(self.CHECKPOINT_NAME_LAST)}(-(\d+))?")
        return {os.path.join(self.dirpath, n) for n in os.listdir(self.dirpath)
                if n.endswith(self.FILE_EXTENSION) and pattern.match(n)}

    def to_yaml(self, filepath: str | os.PathLike | None = None) -> None:
        """Write ``best_k_models`` (path: score) as YAML, by default to ``dirpath/best_k_models.yaml``."""
        filepath = os.fspath(filepath) if filepath is not None else os.path.join(self.dirpath or ".", "best_k_models.yaml")
        with open(filepath, "w") as fh:
            for path, score in self.best_k_models.items():
                fh.write(f"{path}: {float(score)!r}\n")


def _symlink_atomically(target: str, linkpath: str) -> None:
    tmp = linkpath + ".link-tmp"
    if os.path.lexists(tmp):
        os.remove(tmp)
    os.symlink(os.path.relpath(target, os.path.dirname(linkpath)), tmp)
    os.replace(tmp, linkpath)


def _remove_if_present(path: str) -> None:
    if os.path.lexists(path):
        os.remove(path)
