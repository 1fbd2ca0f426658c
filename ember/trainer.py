"""The Trainer: check the arguments once, own the counters, run a stage.

Which class owns what:
- ``Trainer`` (here): arguments, counters (epoch, step, stop flags), the
  entry points ``fit/validate/test/predict`` and the stop conditions;
- ``ember.loop``: the loops themselves;
- ``ember.runtime``: the accelerator, precision and strategy objects;
- ``ember.hooks``: who hears each event and in which order;
- ``ember.logging``: what ``self.log`` stored and when it becomes a number;
- ``ember.checkpoint``: the one dict that holds the whole training state.
"""
from __future__ import annotations

import itertools
import math
import os
import sys
import time
from datetime import timedelta
from typing import Any, Iterable

import torch

from . import loop
from .callbacks.callback import Callback
from .hooks import HookDispatcher, is_overridden
from .logging import MetricStore, as_floats
from .module import LightningModule
from .runtime import accelerator as _accelerator
from .runtime import strategy as _strategy
from .runtime.precision import Precision, canonical

_UNSET = object()


def _check_int(name: str, value: Any, minimum: int, allow_none: bool = True, extra: str = "") -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        allowed = f"an int >= {minimum}" + (" or None" if allow_none else "") + extra
        raise ValueError(f"Trainer({name}={value!r}) is not valid; allowed: {allowed}.")


def _check_limit(name: str, value: Any) -> None:
    """``limit_*_batches`` and ``overfit_batches``: an int count or a float fraction in [0, 1]."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"Trainer({name}={value!r}) is not valid; allowed: an int >= 0 (batches) or a float in [0.0, 1.0] (fraction).")
    if isinstance(value, int) and value < 0 or isinstance(value, float) and not 0.0 <= value <= 1.0:
        raise ValueError(f"Trainer({name}={value!r}) is not valid; allowed: an int >= 0 (batches) or a float in [0.0, 1.0] (fraction).")


def _parse_max_time(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, dict):
        return timedelta(**value).total_seconds()
    if isinstance(value, str):
        parts = value.split(":")
        if len(parts) == 4 and all(p.isdigit() for p in parts):
            d, h, m, s = (int(p) for p in parts)
            return timedelta(days=d, hours=h, minutes=m, seconds=s).total_seconds()
    raise ValueError(f"Trainer(max_time={value!r}) is not valid; allowed: 'DD:HH:MM:SS', a timedelta or a dict of timedelta arguments.")


def _loader_length(loader: Any) -> float:
    try:
        return len(loader)
    except TypeError:
        return math.inf


def _resolve_limit(limit: Any, length: float, name: str) -> int | None:
    """Number of batches to run, or None for 'the whole (maybe endless) loader'."""
    if limit is None or (isinstance(limit, float) and limit == 1.0):
        return None if length == math.inf else int(length)
    if isinstance(limit, float):
        if length == math.inf:
            raise ValueError(f"Trainer({name}={limit}) is a fraction, but the dataloader has no length; give an int.")
        return int(length * limit)
    return int(min(limit, length)) if length != math.inf else int(limit)


class Trainer:
    """Runs ``fit``, ``validate``, ``test`` and ``predict`` for a LightningModule."""

    def __init__(
        self,
        *,
        accelerator: str = "auto",
        strategy: Any = "auto",
        devices: Any = "auto",
        num_nodes: int = 1,
        precision: Any = None,
        logger: Any = None,
        callbacks: Any = None,
        fast_dev_run: int | bool = False,
        max_epochs: int | None = None,
        min_epochs: int | None = None,
        max_steps: int = -1,
        min_steps: int | None = None,
        max_time: Any = None,
        limit_train_batches: int | float | None = None,
        limit_val_batches: int | float | None = None,
        limit_test_batches: int | float | None = None,
        limit_predict_batches: int | float | None = None,
        overfit_batches: int | float = 0.0,
        val_check_interval: int | float | None = None,
        check_val_every_n_epoch: int | None = 1,
        num_sanity_val_steps: int | None = None,
        log_every_n_steps: int | None = None,
        enable_checkpointing: bool | None = None,
        enable_progress_bar: bool | None = None,
        enable_model_summary: bool | None = None,
        accumulate_grad_batches: int = 1,
        gradient_clip_val: int | float | None = None,
        gradient_clip_algorithm: str | None = None,
        deterministic: bool | str | None = None,
        benchmark: bool | None = None,
        inference_mode: bool = True,
        use_distributed_sampler: bool = True,
        profiler: Any = None,
        detect_anomaly: bool = False,
        barebones: bool = False,
        plugins: Any = None,
        sync_batchnorm: bool = False,
        reload_dataloaders_every_n_epochs: int = 0,
        default_root_dir: str | os.PathLike | None = None,
        enable_autolog_hparams: bool = True,
        model_registry: str | None = None,
    ) -> None:
        # ---- flags ember does not implement: refuse loudly, never ignore ----
        for flag, value, default in (("profiler", profiler, None), ("plugins", plugins, None),
                                     ("model_registry", model_registry, None), ("sync_batchnorm", sync_batchnorm, False)):
            if value != default:
                raise NotImplementedError(f"Trainer({flag}={value!r}) is not implemented in ember; leave it at {default!r}.")
        _check_int("num_nodes", num_nodes, 1, allow_none=False)

        # ---- check every argument before any work ----
        _check_int("max_epochs", max_epochs, -1, extra=" (-1 means no limit)")
        _check_int("min_epochs", min_epochs, 0)
        _check_int("max_steps", max_steps, -1, allow_none=False, extra=" (-1 means no limit)")
        _check_int("min_steps", min_steps, 0)
        for name, value in (("limit_train_batches", limit_train_batches), ("limit_val_batches", limit_val_batches),
                            ("limit_test_batches", limit_test_batches), ("limit_predict_batches", limit_predict_batches),
                            ("overfit_batches", overfit_batches)):
            _check_limit(name, value)
        if val_check_interval is not None:
            if isinstance(val_check_interval, bool) or not isinstance(val_check_interval, (int, float)) or (
                isinstance(val_check_interval, float) and not 0.0 < val_check_interval <= 1.0) or (
                isinstance(val_check_interval, int) and val_check_interval < 1):
                raise ValueError(f"Trainer(val_check_interval={val_check_interval!r}) is not valid; allowed: a float "
                                 "in (0.0, 1.0] (fraction of an epoch) or an int >= 1 (batches).")
        _check_int("check_val_every_n_epoch", check_val_every_n_epoch, 1)
        _check_int("num_sanity_val_steps", num_sanity_val_steps, -1, extra=" (-1 runs the whole val set)")
        _check_int("log_every_n_steps", log_every_n_steps, 0)
        _check_int("accumulate_grad_batches", accumulate_grad_batches, 1, allow_none=False)
        _check_int("reload_dataloaders_every_n_epochs", reload_dataloaders_every_n_epochs, 0, allow_none=False)
        if gradient_clip_val is not None and (isinstance(gradient_clip_val, bool) or not isinstance(
                gradient_clip_val, (int, float)) or gradient_clip_val < 0):
            raise ValueError(f"Trainer(gradient_clip_val={gradient_clip_val!r}) is not valid; allowed: a number >= 0 or None.")
        if isinstance(gradient_clip_algorithm, str):
            gradient_clip_algorithm = gradient_clip_algorithm.lower()  # Lightning accepts any case
        if gradient_clip_algorithm not in (None, "norm", "value"):
            raise ValueError(f"Trainer(gradient_clip_algorithm={gradient_clip_algorithm!r}) is not valid; allowed: 'norm', 'value'.")
        if deterministic not in (None, True, False, "warn"):
            raise ValueError(f"Trainer(deterministic={deterministic!r}) is not valid; allowed: None, True, False, 'warn'.")
        if isinstance(fast_dev_run, bool):
            fast_dev_run = 1 if fast_dev_run else 0
        _check_int("fast_dev_run", fast_dev_run, 0, allow_none=False, extra=" or a bool")
        self.max_time = _parse_max_time(max_time)

        # ---- device, precision, strategy (each one small object) ----
        self.accelerator = _accelerator.choose(accelerator, devices)
        self.precision = Precision(canonical("32-true" if precision is None else precision), self.accelerator.name)
        self.strategy = _strategy.choose(strategy, self.accelerator, num_nodes)  # num_nodes > 1: DDP (issue 5)
        self.strategy.connect(self.accelerator, self.precision)

        # ---- limits and schedule ----
        self.fast_dev_run = fast_dev_run
        if fast_dev_run:
            max_epochs, max_steps, num_sanity_val_steps = 1, fast_dev_run, 0
            limit_train_batches = limit_val_batches = limit_test_batches = limit_predict_batches = fast_dev_run
            val_check_interval, logger, enable_checkpointing = 1.0, False, False
        if barebones:
            logger, enable_checkpointing, enable_progress_bar, enable_model_summary = False, False, False, False
            log_every_n_steps = 0
        if max_epochs is None:
            max_epochs = 1000 if max_steps == -1 and max_time is None else -1
        self.max_epochs = max_epochs
        self.min_epochs = min_epochs
        self.max_steps = max_steps
        self.min_steps = min_steps
        self.overfit_batches = overfit_batches
        if overfit_batches:
            limit_train_batches = limit_val_batches = overfit_batches
        self.limit_train_batches = limit_train_batches
        self.limit_val_batches = limit_val_batches
        self.limit_test_batches = limit_test_batches
        self.limit_predict_batches = limit_predict_batches
        self.val_check_interval = 1.0 if val_check_interval is None else val_check_interval
        self.check_val_every_n_epoch = check_val_every_n_epoch
        self.num_sanity_val_steps = 2 if num_sanity_val_steps is None else num_sanity_val_steps
        self.log_every_n_steps = 50 if log_every_n_steps is None else log_every_n_steps
        self.accumulate_grad_batches = accumulate_grad_batches
        self.gradient_clip_val = gradient_clip_val
        # None when not given, as in Lightning: hooks receive None and clip_gradients falls back to "norm".
        self.gradient_clip_algorithm = gradient_clip_algorithm
        self.reload_dataloaders_every_n_epochs = reload_dataloaders_every_n_epochs
        self.inference_mode = inference_mode
        self.use_distributed_sampler = use_distributed_sampler
        self.detect_anomaly = detect_anomaly
        self.deterministic = deterministic
        self.benchmark = benchmark
        self.barebones = barebones
        self.enable_autolog_hparams = enable_autolog_hparams
        self.default_root_dir = os.fspath(default_root_dir) if default_root_dir is not None else os.getcwd()
        # A non-finite loss stops training before the optimizer step that would spread it into the weights.
        self.check_finite_loss = True

        if deterministic:
            torch.use_deterministic_algorithms(True, warn_only=deterministic == "warn")
        if benchmark is not None and torch.backends.cudnn.is_available():
            torch.backends.cudnn.benchmark = benchmark

        # ---- loggers and callbacks ----
        self.loggers = self._build_loggers(logger)
        self.callbacks: list[Callback] = self._build_callbacks(
            callbacks, enable_checkpointing=enable_checkpointing is not False,
            enable_progress_bar=enable_progress_bar is not False, enable_model_summary=enable_model_summary is not False)

        # ---- counters and state ----
        self.current_epoch = 0
        self.global_step = 0
        self.batch_idx = 0
        self.should_stop = False
        self.sanity_checking = False
        self.training = False
        self.evaluating: str | None = None
        self.state_fn: str | None = None
        self.lightning_module: LightningModule | None = None
        self.datamodule: Any = None
        self.optimizers: list[Any] = []
        self.lr_scheduler_configs: list[Any] = []
        self.train_dataloader: Any = None
        self.val_dataloaders: Any = None
        self.test_dataloaders: Any = None
        self.predict_dataloaders: Any = None
        self.num_training_batches: float = 0
        self.num_val_batches: list[int] = []
        # fit's data sources; loaders are built where Lightning asks for them (loop.run_fit)
        self._train_source: Any = None
        self._val_source: Any = None
        self._train_data_ready = False
        self._val_loaders: list[Any] | None = []  # None: validation will run, loaders not requested yet
        self._val_limit: list[int | None] = []
        self._last_val_reload_epoch: float = -math.inf
        self.sanity_checked = False
        self._metrics = MetricStore(reduce_fn=self._reduce_for_logging)
        self._eval_steps_seen: dict[int, int] = {}  # eval batches per loader: the x-axis of eval step logs
        self._interrupted = False
        # Exact resume and preemption (ember.checkpoint): where the fit loop is inside an epoch (None between
        # epochs, "batches" once the epoch's iterator is open), what a mid-epoch resume must redo, the RNG the
        # epoch's iterator was opened with, and the signal that asked the run to stop.
        self._epoch_state: str | None = None
        self._mid_epoch_resume: dict[str, Any] | None = None
        self._epoch_start_rng: dict[str, Any] | None = None
        self._preempt_signal: int | None = None
        self._ckpt_weights_only: bool | None = None
        self._batches_seen_in_epoch = 0
        self._batches_that_stepped = 0  # optimizer steps; the x-axis of step-level logs
        self._total_batches_run = 0
        self._accumulated = 0
        self._is_last_batch = False
        self._fit_start_time = 0.0
        self._ckpt_path: str | None = None
        self.hooks: HookDispatcher | None = None

    # ------------------------------------------------------------------ public read-only state
    @property
    def global_rank(self) -> int:
        return self.strategy.global_rank

    @property
    def local_rank(self) -> int:
        return self.strategy.local_rank

    @property
    def node_rank(self) -> int:
        return self.strategy.node_rank

    @property
    def world_size(self) -> int:
        return self.strategy.world_size

    @property
    def is_global_zero(self) -> bool:
        return self.strategy.is_global_zero

    @property
    def num_devices(self) -> int:
        return self.accelerator.num_devices

    @property
    def device_ids(self) -> list[int]:
        return list(self.accelerator.device_ids)

    @property
    def num_nodes(self) -> int:
        return self.strategy.num_nodes

    @property
    def model(self) -> Any:
        return self.strategy.model

    @property
    def logger(self) -> Any:
        return self.loggers[0] if self.loggers else None

    @logger.setter
    def logger(self, value: Any) -> None:
        self.loggers = [] if value is None else [value]

    @property
    def log_dir(self) -> str | None:
        if self.logger is None:
            return self.default_root_dir
        return getattr(self.logger, "log_dir", None) or getattr(self.logger, "save_dir", None)

    @property
    def callback_metrics(self) -> dict[str, Any]:
        return self._metrics.callback_metrics  # brought up to date when read (ember.logging)

    @property
    def logged_metrics(self) -> dict[str, Any]:
        return self._metrics.logged_metrics

    @property
    def progress_bar_metrics(self) -> dict[str, Any]:
        return as_floats(self._metrics.progress_bar_metrics)

    @property
    def checkpoint_callback(self) -> Any:
        cbs = self.checkpoint_callbacks
        return cbs[0] if cbs else None

    @property
    def checkpoint_callbacks(self) -> list[Any]:
        return [cb for cb in self.callbacks if type(cb).__name__ == "ModelCheckpoint" or getattr(cb, "_is_checkpoint", False)]

    @property
    def early_stopping_callback(self) -> Any:
        cbs = [cb for cb in self.callbacks if getattr(cb, "_is_early_stopping", False)]
        return cbs[0] if cbs else None

    @property
    def progress_bar_callback(self) -> Any:
        for cb in self.callbacks:
            if getattr(cb, "_is_progress_bar", False):
                return cb
        return None

    @property
    def is_last_batch(self) -> bool:
        return self._is_last_batch

    @property
    def estimated_stepping_batches(self) -> float:
        per_epoch = self.num_training_batches
        if per_epoch == math.inf:
            return self.max_steps if self.max_steps != -1 else math.inf
        steps_per_epoch = math.ceil(per_epoch / self.accumulate_grad_batches)
        total = steps_per_epoch * self.max_epochs if self.max_epochs != -1 else math.inf
        return min(total, self.max_steps) if self.max_steps != -1 else total

    @property
    def interrupted(self) -> bool:
        return self._interrupted

    @property
    def ckpt_path(self) -> str | None:
        return self._ckpt_path

    @property
    def lr_schedulers(self) -> list[Any]:
        return [c.scheduler for c in self.lr_scheduler_configs]

    @property
    def val_check_batch(self) -> float:
        return self._val_check_batch

    # ------------------------------------------------------------------ set-up helpers
    def _build_loggers(self, logger: Any) -> list[Any]:
        if logger is False or logger is None and False:
            return []
        if logger is None or logger is True:
            import importlib.util

            from .loggers import CSVLogger, TensorBoardLogger

            # Lightning's default: TensorBoard when it is installed, otherwise CSV.
            if importlib.util.find_spec("tensorboard") is not None:
                return [TensorBoardLogger(save_dir=self.default_root_dir)]
            return [CSVLogger(save_dir=self.default_root_dir)]
        if isinstance(logger, Iterable) and not isinstance(logger, (str, bytes)):
            return list(logger)
        return [logger]

    def _build_callbacks(self, callbacks: Any, *, enable_checkpointing: bool, enable_progress_bar: bool,
                         enable_model_summary: bool) -> list[Callback]:
        if callbacks is None:
            user: list[Callback] = []
        elif isinstance(callbacks, Callback):
            user = [callbacks]
        else:
            user = list(callbacks)
        for cb in user:
            if not isinstance(cb, Callback):
                raise TypeError(f"Trainer(callbacks=...) must hold ember Callback objects; got {type(cb).__name__}.")
        out = list(user)
        if self.max_time is not None:
            from .callbacks.timer import Timer

            # max_time is enforced by a Timer, checked after every batch (Lightning's arrangement);
            # a Timer the user passed takes precedence.
            if not any(isinstance(cb, Timer) for cb in out):
                out.append(Timer(duration=timedelta(seconds=self.max_time), interval="step"))
        if enable_progress_bar and not any(getattr(cb, "_is_progress_bar", False) for cb in out):
            from .callbacks.progress import TQDMProgressBar

            out.append(TQDMProgressBar())
        elif not enable_progress_bar and any(getattr(cb, "_is_progress_bar", False) for cb in out):
            raise ValueError("Trainer(enable_progress_bar=False) was given together with a progress bar callback; "
                             "drop one of them.")
        if enable_model_summary and not any(type(cb).__name__ == "ModelSummary" for cb in out):
            from .callbacks.model_summary import ModelSummary

            out.append(ModelSummary())
        # Any checkpoint callback (ModelCheckpoint subclasses included) replaces the default one, as in Lightning.
        has_checkpoint = any(getattr(cb, "_is_checkpoint", False) for cb in out)
        if enable_checkpointing and not has_checkpoint:
            from .callbacks.checkpoint import ModelCheckpoint

            out.append(ModelCheckpoint())
        elif not enable_checkpointing and has_checkpoint:
            raise ValueError("Trainer(enable_checkpointing=False) was given together with a ModelCheckpoint callback; "
                             "drop one of them.")
        return _checkpoints_last(out)

    def _attach(self, model: Any, stage: str) -> LightningModule:
        if not isinstance(model, LightningModule):
            raise TypeError(
                f"Trainer.{stage}() needs an ember.LightningModule; got {type(model).__name__}. Subclass "
                "ember.LightningModule (import ember as L; class Model(L.LightningModule))."
            )
        model.trainer = self
        self.lightning_module = model
        self.state_fn = stage
        return model

    # ------------------------------------------------------------------ entry points
    def fit(self, model: LightningModule, train_dataloaders: Any = None, val_dataloaders: Any = None,
            datamodule: Any = None, ckpt_path: str | None = None, weights_only: bool | None = None) -> None:
        """Train ``model``; ``ckpt_path`` ("last", "best" or a file) resumes where that run stopped.

        ``weights_only=False`` allows a checkpoint that holds more than tensors and plain values (see
        ``ember.checkpoint.load_file``); only use it for files you trust.
        """
        from .datamodule import LightningDataModule

        self._ckpt_weights_only = weights_only
        if isinstance(train_dataloaders, LightningDataModule):
            datamodule, train_dataloaders = train_dataloaders, None
        module = self._attach(model, "fit")
        if not is_overridden(module, "training_step", LightningModule):
            raise NotImplementedError(
                f"{type(module).__name__} has no training_step(batch, batch_idx); Trainer.fit() needs one to know "
                "what loss to minimise."
            )
        if not is_overridden(module, "configure_optimizers", LightningModule):
            raise NotImplementedError(
                f"{type(module).__name__} has no configure_optimizers(); Trainer.fit() needs it to build the "
                "optimizer, e.g. `return torch.optim.SGD(self.parameters(), lr=0.01)`."
            )
        self._run(module, "fit", datamodule, train=train_dataloaders, val=val_dataloaders, ckpt_path=ckpt_path)

    def validate(self, model: LightningModule | None = None, dataloaders: Any = None, ckpt_path: str | None = None,
                 verbose: bool = True, datamodule: Any = None, weights_only: bool | None = None
                 ) -> list[dict[str, float]]:
        self._ckpt_weights_only = weights_only  # how ckpt_path is loaded (ember.checkpoint.load_file)
        return self._evaluate("validate", model, dataloaders, ckpt_path, verbose, datamodule)

    def test(self, model: LightningModule | None = None, dataloaders: Any = None, ckpt_path: str | None = None,
             verbose: bool = True, datamodule: Any = None, weights_only: bool | None = None) -> list[dict[str, float]]:
        self._ckpt_weights_only = weights_only
        return self._evaluate("test", model, dataloaders, ckpt_path, verbose, datamodule)

    def predict(self, model: LightningModule | None = None, dataloaders: Any = None, datamodule: Any = None,
                return_predictions: bool | None = None, ckpt_path: str | None = None,
                weights_only: bool | None = None) -> Any:
        from .datamodule import LightningDataModule

        self._ckpt_weights_only = weights_only
        if isinstance(dataloaders, LightningDataModule):
            datamodule, dataloaders = dataloaders, None
        module = self._attach(model if model is not None else self._require_module("predict"), "predict")
        return self._run(module, "predict", datamodule, eval_loaders=dataloaders, ckpt_path=ckpt_path,
                         return_predictions=True if return_predictions is None else return_predictions)

    def _evaluate(self, stage: str, model: Any, dataloaders: Any, ckpt_path: Any, verbose: bool, datamodule: Any
                  ) -> list[dict[str, float]]:
        from .datamodule import LightningDataModule

        if isinstance(dataloaders, LightningDataModule):
            datamodule, dataloaders = dataloaders, None
        module = self._attach(model if model is not None else self._require_module(stage), stage)
        results = self._run(module, stage, datamodule, eval_loaders=dataloaders, ckpt_path=ckpt_path)
        if verbose and self.is_global_zero and results:
            _print_results(stage, results)
        return results

    def _require_module(self, stage: str) -> LightningModule:
        if self.lightning_module is None:
            raise ValueError(f"Trainer.{stage}() needs a model: pass one, or call fit() with one first.")
        return self.lightning_module

    def save_checkpoint(self, filepath: str | os.PathLike, weights_only: bool = False, storage_options: Any = None) -> None:
        """Write the whole training state (or just the weights) to ``filepath`` atomically, on rank 0."""
        from .checkpoint import dump_checkpoint

        if self.lightning_module is None:
            raise ValueError("Trainer.save_checkpoint() needs a model attached; call fit(), validate() or test() first.")
        state = dump_checkpoint(self, weights_only=weights_only)
        self.strategy.save_checkpoint(state, os.fspath(filepath))  # rank 0 writes (sharded strategies: every rank)
        self.strategy.barrier("save_checkpoint")

    # ------------------------------------------------------------------ one run
    def _run(self, module: LightningModule, stage: str, datamodule: Any, *, train: Any = None, val: Any = None,
             eval_loaders: Any = None, ckpt_path: Any = None, return_predictions: bool = True) -> Any:
        # Distributed strategies start their processes (once) and join the process group here; see
        # ember/runtime/launcher.py. A single device has no launcher and nothing to join.
        launcher = self.strategy.launcher
        if launcher is not None and launcher.should_launch():
            return launcher.launch(self._run, module, stage, datamodule, train=train, val=val,
                                   eval_loaders=eval_loaders, ckpt_path=ckpt_path, return_predictions=return_predictions)
        self.strategy.setup_environment()
        if not self.is_global_zero and self.progress_bar_callback is not None:
            self.progress_bar_callback.disable()  # one progress bar per job, on rank 0
        # Each run starts with nothing logged and empty metric views (Lightning resets results and views).
        self._metrics.reset_all()
        self.datamodule = datamodule
        if datamodule is not None:
            datamodule.trainer = self
        self.should_stop = False
        self._interrupted = False
        self.sanity_checked = False
        # Callbacks the model brings replace the Trainer's of the same type (Lightning's rule).
        extra = module.configure_callbacks()
        if extra:
            extra = [extra] if isinstance(extra, Callback) else list(extra)
            kinds = {type(cb) for cb in extra}
            self.callbacks = _checkpoints_last([cb for cb in self.callbacks if type(cb) not in kinds] + extra)
        self.hooks = HookDispatcher(self, module, self.callbacks)
        self._batch_hooks = any(is_overridden(module, h, LightningModule) for h in (
            "on_before_batch_transfer", "transfer_batch_to_device", "on_after_batch_transfer"))
        hook_stage = {"fit": "fit", "validate": "validate", "test": "test", "predict": "predict"}[stage]
        announce = self.is_global_zero and not getattr(self, "_quiet", False)
        if announce:
            print(f"ember: {_verb(stage)} on {self.accelerator.describe()}", file=sys.stderr)
        if datamodule is not None and self.local_rank == 0:
            datamodule.prepare_data()
        if self.local_rank == 0:
            module.prepare_data()
        self.strategy.barrier("prepare_data")  # other ranks wait for the download before setup() reads it
        if datamodule is not None:
            datamodule.setup(hook_stage)
        self.hooks.call("setup", hook_stage)
        module.configure_model()
        self.strategy.setup_module(module)
        module._device = self.strategy.root_device
        try:
            with torch.autograd.set_detect_anomaly(self.detect_anomaly):
                if stage == "fit":
                    result = self._run_fit(module, train, val, ckpt_path)
                elif stage == "predict":
                    result = self._run_predict(module, eval_loaders, ckpt_path, return_predictions)
                else:
                    result = self._run_eval(module, stage, eval_loaders, ckpt_path)
        except BaseException as exc:
            from .callbacks.lr_finder import _TunerExit

            if isinstance(exc, _TunerExit):
                # The range test ran inside fit() and ended it on purpose: tear down as after a normal run.
                self.hooks.call("teardown", hook_stage)
                self.strategy.teardown()
                raise
            self._interrupted = True
            self.hooks.call("on_exception", exc)
            for lg in self.loggers:
                lg.finalize("failed")
            raise
        finally:
            self.training = False
        self.hooks.call("teardown", hook_stage)
        if datamodule is not None:
            datamodule.teardown(hook_stage)
        self.strategy.teardown()
        return result

    def _run_fit(self, module: LightningModule, train: Any, val: Any, ckpt_path: Any) -> None:
        from . import optim

        if module.automatic_optimization and self.accumulate_grad_batches < 1:
            raise ValueError("accumulate_grad_batches must be >= 1")
        self.optimizers, self.lr_scheduler_configs = optim.parse(module.configure_optimizers())
        self._optimizer_wrappers = {}  # module.optimizers() wraps these anew for this run
        if not module.automatic_optimization:
            # Lightning refuses these with manual optimization: the user's training_step owns the step.
            if self.accumulate_grad_batches != 1:
                raise ValueError(f"Trainer(accumulate_grad_batches={self.accumulate_grad_batches}) does not apply "
                                 "to manual optimization; accumulate in training_step yourself (step every N batches).")
            if self.gradient_clip_val:
                raise ValueError(f"Trainer(gradient_clip_val={self.gradient_clip_val}) does not apply to manual "
                                 "optimization; call self.clip_gradients(opt, gradient_clip_val=...) in training_step.")
        if module.automatic_optimization and len(self.optimizers) > 1:
            raise ValueError(
                f"configure_optimizers() returned {len(self.optimizers)} optimizers; automatic optimization steps one. "
                "Set `self.automatic_optimization = False` and step them yourself in training_step."
            )
        self._custom_optimizer_step = is_overridden(module, "optimizer_step", LightningModule)
        self._custom_clipping = (is_overridden(module, "configure_gradient_clipping", LightningModule)
                                 or is_overridden(module, "clip_gradients", LightningModule))
        self._optimizer_needs_closure = any(isinstance(o, torch.optim.LBFGS) for o in self.optimizers)
        # The *_dataloader hooks run where Lightning calls them (val in the sanity check, train right before
        # on_train_start, see loop.run_fit); here we only check that a source exists.
        self._train_source, self._val_source = train, val
        self._train_data_ready = False
        if train is None and not self._has_loader_hook(module, "train_dataloader"):
            raise ValueError(
                "Trainer.fit() found no training data: pass train_dataloaders=DataLoader(...), a datamodule, or define "
                f"{type(module).__name__}.train_dataloader()."
            )
        self._val_loaders = None if self._validation_possible(module, val) else []
        self._ckpt_path = self._resolve_ckpt_path(ckpt_path)
        if self._ckpt_path is not None:
            from .checkpoint import restore_training_state

            # Resuming puts the train loader's position back, so the loaders are built before the restore.
            self._setup_train_data(module, train)
            if self._val_loaders is None:
                self._setup_val_data(module, val)
            restore_training_state(self, self._ckpt_path, weights_only=self._ckpt_weights_only)
        self._fit_start_time = time.monotonic()
        self.hooks.call("on_fit_start")
        self._log_hparams(module)  # after on_fit_start, as Lightning does
        self.training = True
        # No module.train() here: Lightning trains the modes it finds (loop.run_fit warns about eval ones).
        from .checkpoint import preemption_guard

        with preemption_guard(self):  # SIGTERM: finish the step, save a resumable checkpoint, exit
            loop.run_fit(self, module)
        self.training = False
        self.hooks.call("on_fit_end")
        for lg in self.loggers:
            lg.finalize("success")

    def _run_eval(self, module: LightningModule, stage: str, loaders: Any, ckpt_path: Any) -> list[dict[str, float]]:
        step_name = "validation_step" if stage == "validate" else "test_step"
        if not is_overridden(module, step_name, LightningModule):
            raise NotImplementedError(f"Trainer.{stage}() needs {type(module).__name__}.{step_name}(batch, batch_idx).")
        path = self._resolve_ckpt_path(ckpt_path)  # None for ckpt_path="last" with nothing saved yet (it warns)
        if path is not None:
            from .checkpoint import load_weights_into

            load_weights_into(module, path, weights_only=self._ckpt_weights_only)
        given = loaders
        limit = self.limit_val_batches if stage == "validate" else self.limit_test_batches

        def request() -> tuple[list[Any], list[int | None]]:
            # Called by the loop under no_grad/inference_mode, where Lightning asks for the loaders.
            if limit == 0:
                return [], []  # Lightning does not even ask for the loaders
            found = self._eval_loaders(module, stage, given)
            self._eval_steps_seen = {}
            name = f"limit_{'val' if stage == 'validate' else 'test'}_batches"
            return found, [_resolve_limit(limit, _loader_length(dl), name) for dl in found]

        results = loop.run_evaluation(self, module, stage, request, None)
        for lg in self.loggers:
            lg.save()
        return results

    def _run_predict(self, module: LightningModule, loaders: Any, ckpt_path: Any, return_predictions: bool) -> Any:
        path = self._resolve_ckpt_path(ckpt_path)
        if path is not None:
            from .checkpoint import load_weights_into

            load_weights_into(module, path, weights_only=self._ckpt_weights_only)
        given = loaders

        def request() -> tuple[list[Any], list[int | None]]:
            # Called by the loop under no_grad/inference_mode, where Lightning asks for the loaders.
            if self.limit_predict_batches == 0:
                return [], []
            found = self._eval_loaders(module, "predict", given)
            return found, [_resolve_limit(self.limit_predict_batches, _loader_length(dl), "limit_predict_batches")
                           for dl in found]

        return loop.run_predict(self, module, request, None, return_predictions)

    # ------------------------------------------------------------------ data
    def _loader_from(self, module: LightningModule, name: str) -> Any:
        from .datamodule import LightningDataModule

        if self.datamodule is not None and is_overridden(self.datamodule, name, LightningDataModule):
            return getattr(self.datamodule, name)()
        if name in vars(type(module)) or any(name in vars(c) for c in type(module).__mro__
                                             if c not in (LightningModule, torch.nn.Module, object)):
            return getattr(module, name)()
        return None

    def _setup_train_data(self, module: LightningModule, train: Any) -> None:
        loader = train if train is not None else self._loader_from(module, "train_dataloader")
        if isinstance(loader, (list, tuple, dict)) and loader and all(
                isinstance(dl, torch.utils.data.DataLoader) for dl in (loader.values() if isinstance(loader, dict)
                                                                     else loader)):
            # Lightning zips several train loaders (CombinedLoader); ember does not, so say so instead of
            # failing later inside training_step.
            raise ValueError(f"ember trains from one dataloader; got a {type(loader).__name__} of "
                             f"{len(loader)}. Combine the datasets (e.g. torch.utils.data.ConcatDataset) into one loader.")
        if loader is None:
            raise ValueError(
                "Trainer.fit() found no training data: pass train_dataloaders=DataLoader(...), a datamodule, or define "
                f"{type(module).__name__}.train_dataloader()."
            )
        if self.overfit_batches:
            loader = _without_shuffle(loader)
        # Distributed: a DistributedSampler gives this rank its share (shuffle kept); one device: unchanged.
        loader = self.strategy.distribute_loader(loader, "train", self.use_distributed_sampler, bool(self.overfit_batches))
        length = _loader_length(loader)
        if length == 0:
            raise ValueError(
                "The training dataloader is empty (len 0): there is nothing to train on. Check the dataset size, "
                "batch_size and drop_last."
            )
        _warn_few_workers(loader, "train")
        self.train_dataloader = loader
        self._train_data_ready = True
        self._train_limit = _resolve_limit(self.limit_train_batches, length, "limit_train_batches")
        self.num_training_batches = self._train_limit if self._train_limit is not None else math.inf
        vci = self.val_check_interval
        if isinstance(vci, float):
            if self.num_training_batches == math.inf:
                if vci != 1.0:
                    raise ValueError(f"Trainer(val_check_interval={vci}) is a fraction, but the training dataloader "
                                     "has no length; give an int number of batches.")
                self._val_check_batch = math.inf
            else:
                self._val_check_batch = max(1, int(self.num_training_batches * vci))
        else:
            if self.num_training_batches != math.inf and vci > self.num_training_batches and self.check_val_every_n_epoch is not None:
                raise ValueError(
                    f"Trainer(val_check_interval={vci}) is larger than the {self.num_training_batches} training batches "
                    "per epoch; lower it, or set check_val_every_n_epoch=None to count batches across epochs."
                )
            self._val_check_batch = vci

    def _has_loader_hook(self, module: LightningModule, name: str) -> bool:
        """Whether the datamodule or the module defines ``name`` (without calling it)."""
        from .datamodule import LightningDataModule

        if self.datamodule is not None and is_overridden(self.datamodule, name, LightningDataModule):
            return True
        return name in vars(type(module)) or any(name in vars(c) for c in type(module).__mro__
                                                 if c not in (LightningModule, torch.nn.Module, object))

    def _validation_possible(self, module: LightningModule, val: Any) -> bool:
        """Lightning's rule: validation runs with a val source, a validation_step and limit_val_batches > 0."""
        import warnings

        has_source = val is not None or self._has_loader_hook(module, "val_dataloader")
        has_step = is_overridden(module, "validation_step", LightningModule)
        if has_step and not has_source and self.limit_val_batches != 0:
            warnings.warn(f"{type(module).__name__} defines validation_step but no val dataloader was given; "
                          "validation is skipped. Pass val_dataloaders=... to fit().", UserWarning, stacklevel=4)
        elif has_source and not has_step:
            warnings.warn("A val dataloader was given but the model has no validation_step; validation is skipped.",
                          UserWarning, stacklevel=4)
        return has_source and has_step and self.limit_val_batches != 0

    def _setup_val_data(self, module: LightningModule, val: Any) -> None:
        loaders = val if val is not None else self._loader_from(module, "val_dataloader")
        # Lightning notes the epoch of a (re)load, except for a sanity check before a non-validation epoch.
        if not self.sanity_checking or self._validation_epoch():
            self._last_val_reload_epoch = self.current_epoch
        self._eval_steps_seen = {}
        if loaders is None:
            self._val_loaders, self._val_limit = [], []
            return
        loaders = list(loaders) if isinstance(loaders, (list, tuple)) else [loaders]
        if self.overfit_batches:
            loaders = [_without_shuffle(dl) for dl in loaders]  # its own data, in a fixed order (Lightning)
        loaders = [self.strategy.distribute_loader(dl, "validate", self.use_distributed_sampler) for dl in loaders]
        self._val_loaders = loaders
        self.val_dataloaders = loaders[0] if len(loaders) == 1 else loaders
        self._val_limit = [_resolve_limit(self.limit_val_batches, _loader_length(dl), "limit_val_batches") for dl in loaders]
        self.num_val_batches = [lim if lim is not None else math.inf for lim in self._val_limit]
        if all(lim == 0 for lim in self._val_limit):
            self._val_loaders = []

    def _val_loaders_for_run(self) -> tuple[list[Any], list[int | None]]:
        """The val loaders and per-loader limits for one validation inside fit, (re)loaded when due."""
        n = self.reload_dataloaders_every_n_epochs
        if self._val_loaders is None or (n and self.current_epoch - getattr(self, "_last_val_reload_epoch", -math.inf) >= n):
            self._setup_val_data(self.lightning_module, self._val_source)
        limits = list(self._val_limit)
        if self.sanity_checking and self.num_sanity_val_steps != -1:
            cap = self.num_sanity_val_steps
            limits = [cap if lim is None else min(cap, lim) for lim in limits]
        return self._val_loaders, limits

    def _eval_loaders(self, module: LightningModule, stage: str, given: Any) -> list[Any]:
        name = {"validate": "val_dataloader", "test": "test_dataloader", "predict": "predict_dataloader"}[stage]
        loaders = given if given is not None else self._loader_from(module, name)
        if loaders is None:
            raise ValueError(f"Trainer.{stage}() found no data: pass dataloaders=DataLoader(...), a datamodule, or "
                             f"define {type(module).__name__}.{name}().")
        loaders = list(loaders) if isinstance(loaders, (list, tuple)) else [loaders]
        loaders = [self.strategy.distribute_loader(dl, stage, self.use_distributed_sampler) for dl in loaders]
        setattr(self, {"validate": "val_dataloaders", "test": "test_dataloaders", "predict": "predict_dataloaders"}[stage],
                loaders[0] if len(loaders) == 1 else loaders)
        return loaders

    # ------------------------------------------------------------------ loop support (called by ember.loop)
    def _fit_done(self) -> bool:
        if self.max_steps != -1 and self.global_step >= self.max_steps:
            return True
        if self.max_epochs != -1 and self.current_epoch >= self.max_epochs:
            return True
        # max_time is a Timer callback (added by the Trainer) that sets should_stop, as in Lightning.
        # A stop request stays set while min_epochs/min_steps are not met; training ends as soon as they
        # are (possibly mid-epoch), as in Lightning.
        if self.should_stop and (self._minimums_reached() or self._preempt_signal is not None):  # SIGTERM wins
            return True
        return False

    def _minimums_reached(self) -> bool:
        return (self.min_epochs is None or self.current_epoch >= self.min_epochs) and (
            self.min_steps is None or self.global_step >= self.min_steps)

    def _stop_within_epoch(self) -> bool:
        if self.max_steps != -1 and self.global_step >= self.max_steps:
            return True
        return self.should_stop and (self._minimums_reached() or self._preempt_signal is not None)

    def _begin_epoch(self) -> None:
        if self.reload_dataloaders_every_n_epochs and self.current_epoch % self.reload_dataloaders_every_n_epochs == 0 \
                and self.current_epoch > 0:
            self._setup_train_data(self.lightning_module, self._train_source)  # a given loader is reused as is
        sampler = getattr(self.train_dataloader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(self.current_epoch)
        self._batches_seen_in_epoch = 0
        self._accumulated = 0

    def _open_train_iterator(self) -> Iterable[tuple[int, Any]]:
        """``(batch_idx, batch)`` for this epoch, positioned where a resumed run left off.

        ``ember.checkpoint.open_train_batches`` records the RNG the iterator is
        opened with and, on a mid-epoch resume, replays it, skips the batches
        already trained on and puts back the RNG of the save; the rest of the
        saved batch then runs here (``loop.finish_saved_batch``), and when that
        ends the epoch (a stop condition) no batch is left.
        """
        from .checkpoint import open_train_batches

        pairs, left_of_batch = open_train_batches(self)
        if left_of_batch is not None and loop.finish_saved_batch(self, self.lightning_module, left_of_batch):
            return iter(())
        return pairs

    def _finish_epoch(self) -> None:
        # Plateau "epoch" schedulers step after on_train_epoch_end, and only if the epoch ran to its end
        # (the other epoch schedulers already stepped with its last batch; see loop.train_epoch).
        if getattr(self, "_epoch_reached_end", True):
            self._step_plateau_schedulers("epoch")
        self.current_epoch += 1
        self._epoch_state = None  # between epochs: a checkpoint from here starts the next epoch afresh

    def _should_validate_now(self, batch_idx: int) -> bool:
        """Lightning's rule, checked after every training batch (the last one included)."""
        if not self._val_loaders or not self._validation_epoch():
            return False
        if self._val_check_batch == math.inf:
            # A loader without len validates at its end; a stop request validates before stopping.
            return self._is_last_batch or (self.should_stop and self._minimums_reached())
        if self.should_stop and self._minimums_reached():
            return True
        if self.check_val_every_n_epoch is None:
            return self._total_batches_run % self._val_check_batch == 0
        # With a fraction that does not divide the epoch, the epoch's end gets no extra validation (Lightning).
        return (batch_idx + 1) % self._val_check_batch == 0

    def _should_validate_at_epoch_end(self) -> bool:
        if not self._val_loaders or not self._validation_epoch() or self._interrupted:
            return False
        if self.check_val_every_n_epoch is None:
            return False
        # An epoch cut short by max_steps or a stop still validates, as in Lightning.
        if self._val_check_batch == math.inf:
            return True
        return self._batches_seen_in_epoch % self._val_check_batch == 0 or self._is_last_batch or \
            self._stop_within_epoch()

    def _validation_epoch(self) -> bool:
        n = self.check_val_every_n_epoch
        return n is None or (self.current_epoch + 1) % n == 0

    # Logging follows Lightning's schedule: step values reach the loggers every log_every_n_steps optimizer
    # steps; epoch values once per epoch/evaluation; each write is stamped with the count of optimizer steps
    # taken before the current batch (Lightning's "batches that stepped").
    def _publish_step_metrics(self, eval_stage: str | None = None, dataloader_idx: int = 0) -> None:
        """Step values to the loggers: after a training batch (when due) or after an eval batch."""
        metrics = self._metrics
        if not metrics._stepped_keys or not self.loggers or self.sanity_checking:
            return
        if eval_stage is None:
            if self._accumulated != 0 and self.lightning_module.automatic_optimization:
                return  # only after an optimizer step
            n = self.log_every_n_steps
            if not n or self._batches_that_stepped % n != 0 and not self.should_stop:
                return
            self._write_logs(metrics.step_log_values(), step=self._batches_that_stepped - 1)
        else:
            # Eval step values are stamped with the batch count of their loader (Lightning), without 'epoch'.
            seen = self._eval_steps_seen.get(dataloader_idx, 0)
            self._write_logs(metrics.step_log_values(), step=seen, add_epoch=False)

    def _write_logs(self, values: dict[str, Any], step: int | None = None, add_epoch: bool = True) -> None:
        """Lightning's ``log_metrics``: floats to every logger; 'epoch' is added when the step is implied."""
        if not self.loggers or not values:
            return
        self._metrics._logged.update(values)
        floats = as_floats(values)
        if step is None:
            logged_step = floats.pop("step", None)  # a metric named "step" sets the x-axis (Lightning)
            if logged_step is not None:
                step = int(logged_step)
            else:
                step = self._fit_log_step()
        if add_epoch and "step" not in values:
            floats.setdefault("epoch", self.current_epoch)
        for lg in self.loggers:
            lg.log_metrics(floats, step=step)

    def _fit_log_step(self) -> int:
        # ember counts a batch's optimizer step right after it; Lightning after the batch's validation.
        if self.state_fn == "fit" and self._accumulated == 0:
            return max(self._batches_that_stepped - 1, 0)
        return self._batches_that_stepped

    def _finish_train_epoch_metrics(self) -> None:
        metrics = self._metrics
        metrics.enter("train", "epoch")
        self.hooks.call("on_train_epoch_end")
        # Lightning writes the epoch values with the step count of the epoch's last batch.
        self._write_logs(metrics.epoch_log_values(), step=max(self._batches_that_stepped - 1, 0))
        metrics.reset_stage("train")

    def _store_eval_loader(self, dataloader_idx: int | None) -> dict[str, Any]:
        """The epoch values of one eval loader, kept for validate()/test()'s return (not during sanity)."""
        if self.sanity_checking:
            return {}
        return self._metrics.epoch_log_values(dataloader_idx)

    def _finish_eval_metrics(self, stage: str, outputs: list[dict[str, Any]]) -> list[dict[str, float]]:
        """After on_*_epoch_end: merge what the epoch hooks logged into each loader's values, write them."""
        metrics = self._metrics
        metrics.refresh()  # the views take the epoch values, sanity check included
        if self.sanity_checking:
            return []
        at_end = metrics.epoch_log_values(None)
        everything: dict[str, Any] = {}
        for out in outputs:
            everything.update(out)
            out.update(at_end)
        everything.update(at_end)
        self._write_logs(everything)
        return [as_floats(out) for out in outputs]

    # Lightning's scheduler clock: "step" schedulers count batches of the current epoch (batch_idx + 1),
    # "epoch" ones count epochs (current_epoch + 1); `frequency` divides that count. Manual
    # optimization steps no scheduler (the user does).
    def _step_schedulers(self, interval: str) -> None:
        """Non-plateau schedulers of ``interval`` (the loop calls this when an optimizer step or the epoch ends)."""
        if not self.lightning_module.automatic_optimization:
            return
        counter = self.batch_idx + 1 if interval == "step" else self.current_epoch + 1
        for config in self.lr_scheduler_configs:
            if config.interval != interval or config.reduce_on_plateau:
                continue
            if counter % config.frequency == 0:
                self.lightning_module.lr_scheduler_step(config.scheduler, None)

    def _step_plateau_schedulers(self, interval: str) -> None:
        if not self.lightning_module.automatic_optimization:
            return
        counter = self.batch_idx + 1 if interval == "step" else self.current_epoch + 1
        for config in self.lr_scheduler_configs:
            if not config.reduce_on_plateau or config.interval != interval:
                continue
            if counter % config.frequency != 0:
                continue
            value = self.callback_metrics.get(config.monitor)
            if value is None:
                available = sorted(self.callback_metrics) or ["(none logged)"]
                if config.strict:
                    raise ValueError(
                        f"The ReduceLROnPlateau scheduler watches {config.monitor!r}, which was never logged. Log it "
                        f"with self.log({config.monitor!r}, ...), or pick one of: {', '.join(available)}."
                    )
                import warnings

                warnings.warn(f"The ReduceLROnPlateau scheduler watches {config.monitor!r}, which is not logged; "
                              "strict=False, so this update is skipped.", RuntimeWarning, stacklevel=2)
                continue
            self.lightning_module.lr_scheduler_step(config.scheduler, value)

    def _raise_non_finite(self, loss: torch.Tensor) -> None:
        raise loop.NonFiniteLossError(
            f"The training loss is {loss.item()} at epoch {self.current_epoch}, step {self.global_step} "
            f"(batch {self.batch_idx}); training stopped before this step, so the weights are those of the last good "
            "step. Lower the learning rate, clip gradients (gradient_clip_val) or check the data for nan/inf."
        )

    def _manual_backward(self, loss: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        module = self.lightning_module
        self.hooks.call("on_before_backward", loss)
        self.precision.backward(loss, lambda t: module.backward(t, *args, **kwargs))
        self.hooks.call("on_after_backward")

    def _reduce_for_logging(self, value: torch.Tensor, op: str) -> torch.Tensor:
        return self.strategy.reduce(value, reduce_op=op)

    def _model_for_eval(self) -> torch.nn.Module:
        return self.strategy.model if self.strategy.model is not None else self.lightning_module

    def _log_hparams(self, module: LightningModule) -> None:
        if not self.loggers or not self.enable_autolog_hparams:
            return
        # Lightning logs hyperparameters only for what called save_hyperparameters(logger=True).
        dm = self.datamodule
        from_module = module._log_hyperparams
        from_dm = dm is not None and getattr(dm, "_log_hyperparams", False)
        params: dict[str, Any] | None = None
        if from_module:
            params = dict(module.hparams_initial)
        if from_dm:
            dm_params = dict(getattr(dm, "hparams_initial", dm.hparams))
            clash = [k for k in params.keys() & dm_params.keys() if not _same_value(params[k], dm_params[k])] \
                if params is not None else []
            if clash:
                raise RuntimeError(f"The hyperparameters {sorted(clash)} are saved by both the LightningModule and the "
                                   "LightningDataModule with different values; rename one of them.")
            params = {**(params or {}), **dm_params}
        for lg in self.loggers:
            if params is not None:
                lg.log_hyperparams(params)
            if hasattr(lg, "log_graph"):
                lg.log_graph(module)

    def _resolve_ckpt_path(self, ckpt_path: Any) -> str | None:
        if ckpt_path is None:
            return None
        if ckpt_path in ("last", "best"):
            from .checkpoint import find_checkpoint

            try:
                found, error = find_checkpoint(self, ckpt_path), None
            except ValueError as exc:
                found, error = None, exc
            # Distributed: every rank resumes from the file rank 0 found (identity on one device).
            found, error = self.strategy.broadcast((found, error))
            if error is not None:
                raise error
            return found
        path = os.fspath(ckpt_path)
        if not os.path.exists(path):
            raise FileNotFoundError(f"ckpt_path={path!r} does not exist.")
        return path


def _checkpoints_last(callbacks: list[Callback]) -> list[Callback]:
    # Checkpoints run last so they save what every other callback has done this epoch.
    plain = [cb for cb in callbacks if type(cb).__name__ != "ModelCheckpoint" and not getattr(cb, "_is_checkpoint", False)]
    ckpt = [cb for cb in callbacks if cb not in plain]
    return plain + ckpt


def _verb(stage: str) -> str:
    return {"fit": "training", "validate": "validating", "test": "testing", "predict": "predicting"}[stage]


def _without_shuffle(loader: Any) -> Any:
    from torch.utils.data import DataLoader, RandomSampler, SequentialSampler

    if isinstance(loader, DataLoader) and isinstance(loader.sampler, RandomSampler):
        return DataLoader(loader.dataset, batch_size=loader.batch_size, sampler=SequentialSampler(loader.dataset),
                          num_workers=loader.num_workers, collate_fn=loader.collate_fn, drop_last=loader.drop_last,
                          pin_memory=loader.pin_memory)
    return loader


_warned_workers: set[str] = set()


def _warn_few_workers(loader: Any, which: str) -> None:
    # A DataLoader with num_workers=0 loads in the training process; fine for tensors in memory,
    # often the bottleneck for real datasets. A hint, never an error.
    from torch.utils.data import DataLoader, TensorDataset

    if not isinstance(loader, DataLoader) or loader.num_workers > 0 or which in _warned_workers:
        return
    if isinstance(loader.dataset, TensorDataset):
        return  # in-memory tensors gain nothing from worker processes
    _warned_workers.add(which)
    import warnings

    cores = os.cpu_count() or 1
    warnings.warn(
        f"The {which} DataLoader has num_workers=0, so batches load in the training process. If loading is slow, "
        f"try num_workers={max(1, cores - 1)} (this machine has {cores} cores).", UserWarning, stacklevel=4)


def _print_results(stage: str, results: list[dict[str, float]]) -> None:
    for idx, metrics in enumerate(results):
        if not metrics:
            continue
        title = f"{stage} metric" + (f" (dataloader {idx})" if len(results) > 1 else "")
        width = max(len(title), *(len(k) for k in metrics))
        print(f"{title:<{width}}  value")
        for key, value in sorted(metrics.items()):
            print(f"{key:<{width}}  {value:.6g}")


def _same_value(a: Any, b: Any) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, torch.Tensor):
        return a is b
    try:
        return bool(a == b)
    except Exception:  # values that do not compare (arrays): only the same object counts
        return a is b
