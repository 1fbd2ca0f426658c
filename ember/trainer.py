"""The Trainer: it wires things together and starts a run; it holds no loop logic.

Which piece owns what:
- ``ember.config.TrainerConfig``: every setting, checked once (the errors name the argument);
- ``ember.state.FitState``: the counters, the position inside an epoch, the stop flags;
- ``ember.data.RunLoaders``: the loaders, their limits and the validation schedule in batches;
- ``ember.loop`` (and ``ember.step``): the loop itself, given a ``loop.Run``;
- ``ember.runtime``: the accelerator, precision, strategy and launcher objects;
- ``ember.hooks``: who hears each event and in which order;
- ``ember.logging``: what ``self.log`` stored and when it reaches the loggers;
- ``ember.checkpoint``: the one dict that holds the whole training state.

See ``docs/architecture.md``.
"""
from __future__ import annotations

import dataclasses
import os
import sys
from typing import Any, Iterable

import torch

from . import loop
from .callbacks.callback import Callback
from .callbacks.defaults import checkpoints_last, is_checkpoint, is_early_stopping, is_progress_bar, trainer_callbacks
from .callbacks.lr_finder import TunerExit
from .compile import unwrap_compiled
from .config import TRAINER_ATTRIBUTES, TrainerConfig
from .data import RunLoaders
from .datamodule import split_datamodule
from .hooks import HookDispatcher, is_overridden
from .logging import MetricStore, as_floats, print_eval_results
from .loggers.base import Logger
from .loggers.defaults import default_loggers
from .module import LightningModule
from .plugins import cluster_environment
from .profilers.wiring import choose_profiler, start_profiling, timed, timed_if_overridden
from .runtime import accelerator as _accelerator, strategy as _strategy
from .runtime.precision import Precision, canonical
from .state import FitState

_BATCH_HOOKS = ("on_before_batch_transfer", "transfer_batch_to_device", "on_after_batch_transfer")
# The Trainer's arguments it resolves itself into objects; all the others are settings (TrainerConfig).
_OBJECT_ARGUMENTS = ("self", "accelerator", "strategy", "devices", "precision", "callbacks", "plugins")
_VERB = {"fit": "training", "validate": "validating", "test": "testing", "predict": "predicting"}


def _forward(owner: str, name: str, doc: str = "", settable: bool = False) -> property:
    """A Trainer attribute that is ``self.<owner>.<name>`` (read-only unless ``settable``)."""

    def get(self: Any) -> Any:
        return getattr(getattr(self, owner), name)

    def set_(self: Any, value: Any) -> None:
        setattr(getattr(self, owner), name, value)

    return property(get, set_ if settable else None, doc=doc or f"``{owner}.{name}``")


class Trainer:
    """Runs ``fit``, ``validate``, ``test`` and ``predict`` for a LightningModule.

    The arguments are Lightning 2.x's, in its order; ``TrainerConfig.from_arguments`` checks them.
    """

    def __init__(
        self, *, accelerator: str = "auto", strategy: Any = "auto", devices: Any = "auto", num_nodes: int = 1,
        precision: Any = None, logger: Logger | Iterable[Logger] | bool | None = None,
        callbacks: list[Callback] | Callback | None = None, fast_dev_run: int | bool = False,
        max_epochs: int | None = None, min_epochs: int | None = None, max_steps: int = -1,
        min_steps: int | None = None, max_time: Any = None, limit_train_batches: int | float | None = None,
        limit_val_batches: int | float | None = None, limit_test_batches: int | float | None = None,
        limit_predict_batches: int | float | None = None, overfit_batches: int | float = 0.0,
        val_check_interval: int | float | None = None, check_val_every_n_epoch: int | None = 1,
        num_sanity_val_steps: int | None = None, log_every_n_steps: int | None = None,
        enable_checkpointing: bool | None = None, enable_progress_bar: bool | None = None,
        enable_model_summary: bool | None = None, accumulate_grad_batches: int = 1,
        gradient_clip_val: int | float | None = None, gradient_clip_algorithm: str | None = None,
        deterministic: bool | str | None = None, benchmark: bool | None = None, inference_mode: bool = True,
        use_distributed_sampler: bool = True, profiler: Any = None, detect_anomaly: bool = False,
        barebones: bool = False, plugins: Any = None, sync_batchnorm: bool = False,
        reload_dataloaders_every_n_epochs: int = 0, default_root_dir: str | os.PathLike | None = None,
        enable_autolog_hparams: bool = True, model_registry: str | None = None,
        microbatch_on_oom: bool = False,  # ember's own from here on (Lightning has none of these)
    ) -> None:
        settings = {k: v for k, v in locals().items() if k not in _OBJECT_ARGUMENTS}
        self.config = config = TrainerConfig.from_arguments(**settings)  # every setting checked before any work
        self.cluster_environment = cluster_environment(plugins)  # SLURMEnvironment (auto-requeue) or None
        # ---- device, precision, strategy (each one small object) ----
        self.accelerator = _accelerator.choose(accelerator, devices)
        self.precision = Precision(canonical("32-true" if precision is None else precision), self.accelerator.name)
        self.strategy = _strategy.choose(strategy, self.accelerator, num_nodes)
        self.strategy.connect(self.accelerator, self.precision)
        if config.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=config.deterministic == "warn")
        if config.benchmark is not None and torch.backends.cudnn.is_available():
            torch.backends.cudnn.benchmark = config.benchmark
        # ---- loggers and callbacks ----
        self.loggers = default_loggers(logger if config.use_logger else False, config.default_root_dir)
        self.callbacks: list[Callback] = trainer_callbacks(callbacks, config)
        self.profiler = choose_profiler(profiler)  # a PassThroughProfiler when None (records nothing)
        # ---- what a run works with ----
        self.state = FitState()
        self.data = RunLoaders(config, self.strategy)
        self.metric_store = MetricStore(reduce_fn=self.strategy.reduce)  # sync_dist=True reduces across ranks
        self.lightning_module: LightningModule | None = None
        self.datamodule: Any = None
        self.optimizers: list[Any] = []
        self.lr_scheduler_configs: list[Any] = []
        self.run_context: loop.Run | None = None  # the objects of the current (or last) run
        self.ckpt_path: str | None = None  # the checkpoint the last run started from
        self.quiet = False  # True: no "ember: training on ..." line (the Tuner's range test)
        self._weights_only: bool | None = None  # how ckpt_path is loaded (ember.checkpoint.load_file)

    # ------------------------------------------------------------------ public state
    # Most attributes read the object that owns the value (FORWARDED, after the class); these are derived.
    should_stop = _forward("state", "should_stop", "Set by callbacks (early stopping, a Timer) to stop fit.", True)

    @property
    def device_ids(self) -> list[int]:
        return list(self.accelerator.device_ids)

    @property
    def hooks(self) -> HookDispatcher | None:
        return self.run_context.hooks if self.run_context is not None else None

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
    def progress_bar_metrics(self) -> dict[str, Any]:
        return as_floats(self.metric_store.progress_bar_metrics)

    @property
    def checkpoint_callback(self) -> Any:
        cbs = self.checkpoint_callbacks
        return cbs[0] if cbs else None

    @property
    def checkpoint_callbacks(self) -> list[Any]:
        return [cb for cb in self.callbacks if is_checkpoint(cb)]

    @property
    def early_stopping_callback(self) -> Any:
        return next((cb for cb in self.callbacks if is_early_stopping(cb)), None)

    @property
    def progress_bar_callback(self) -> Any:
        return next((cb for cb in self.callbacks if is_progress_bar(cb)), None)

    @property
    def estimated_stepping_batches(self) -> float:
        per_epoch, config = self.num_training_batches, self.config
        if per_epoch == float("inf"):
            return config.max_steps if config.max_steps != -1 else float("inf")
        total = -(-per_epoch // config.accumulate_grad_batches) * config.max_epochs \
            if config.max_epochs != -1 else float("inf")
        return min(total, config.max_steps) if config.max_steps != -1 else total

    @property
    def lr_schedulers(self) -> list[Any]:
        return [c.scheduler for c in self.lr_scheduler_configs]

    # ------------------------------------------------------------------ entry points
    def fit(self, model: LightningModule, train_dataloaders: Any = None, val_dataloaders: Any = None,
            datamodule: Any = None, ckpt_path: str | None = None, weights_only: bool | None = None) -> None:
        """Train ``model``; ``ckpt_path`` ("last", "best" or a file) resumes where that run stopped.

        ``weights_only=False`` allows a checkpoint that holds more than tensors and plain values (see
        ``ember.checkpoint.load_file``); only use it for files you trust.
        """
        datamodule, train_dataloaders = split_datamodule(datamodule, train_dataloaders)
        module = self._attach(model, "fit", weights_only)
        for hook, why in (("training_step", "training_step(batch, batch_idx); Trainer.fit() needs one to know what "
                                            "loss to minimise."),
                          ("configure_optimizers", "configure_optimizers(); Trainer.fit() needs it to build the "
                                                   "optimizer, e.g. `return torch.optim.SGD(self.parameters(), lr=0.01)`.")):
            if not is_overridden(module, hook, LightningModule):
                raise NotImplementedError(f"{type(module).__name__} has no {why}")
        self._run(module, "fit", datamodule, train_dataloaders, val_dataloaders, ckpt_path)

    def validate(self, model: LightningModule | None = None, dataloaders: Any = None, ckpt_path: str | None = None,
                 verbose: bool = True, datamodule: Any = None, weights_only: bool | None = None
                 ) -> list[dict[str, float]]:
        return self._evaluate("validate", model, dataloaders, ckpt_path, verbose, datamodule, weights_only)

    def test(self, model: LightningModule | None = None, dataloaders: Any = None, ckpt_path: str | None = None,
             verbose: bool = True, datamodule: Any = None, weights_only: bool | None = None) -> list[dict[str, float]]:
        return self._evaluate("test", model, dataloaders, ckpt_path, verbose, datamodule, weights_only)

    def predict(self, model: LightningModule | None = None, dataloaders: Any = None, datamodule: Any = None,
                return_predictions: bool | None = None, ckpt_path: str | None = None,
                weights_only: bool | None = None) -> Any:
        datamodule, dataloaders = split_datamodule(datamodule, dataloaders)
        module = self._attach(model, "predict", weights_only)
        return self._run(module, "predict", datamodule, dataloaders, None, ckpt_path,
                         True if return_predictions is None else return_predictions)

    def _evaluate(self, stage: str, model: Any, dataloaders: Any, ckpt_path: Any, verbose: bool, datamodule: Any,
                  weights_only: bool | None) -> list[dict[str, float]]:
        datamodule, dataloaders = split_datamodule(datamodule, dataloaders)
        module = self._attach(model, stage, weights_only)
        results = self._run(module, stage, datamodule, dataloaders, None, ckpt_path)
        if verbose and self.is_global_zero and results:
            print_eval_results(stage, results)
        return results

    def _attach(self, model: Any, stage: str, weights_only: bool | None) -> LightningModule:
        if model is None and stage != "fit":
            if self.lightning_module is None:
                raise ValueError(f"Trainer.{stage}() needs a model: pass one, or call fit() with one first.")
            model = self.lightning_module
        model = unwrap_compiled(model)  # torch.compile(module): train the module itself, compiled (ember.compile)
        if not isinstance(model, LightningModule):
            raise TypeError(f"Trainer.{stage}() needs an ember.LightningModule; got {type(model).__name__}. Subclass "
                            "ember.LightningModule (import ember as L; class Model(L.LightningModule)).")
        model.trainer = self
        self.lightning_module = model
        self.state.fn = stage
        self._weights_only = weights_only
        return model

    def save_checkpoint(self, filepath: str | os.PathLike, weights_only: bool = False, storage_options: Any = None) -> None:
        """Write the whole training state (or just the weights) to ``filepath`` atomically, on rank 0."""
        from .checkpoint import dump_checkpoint

        if self.lightning_module is None:
            raise ValueError("Trainer.save_checkpoint() needs a model attached; call fit(), validate() or test() first.")
        with self.profiler.profile("save_checkpoint"):
            state = dump_checkpoint(self, weights_only=weights_only)
            self.strategy.save_checkpoint(state, os.fspath(filepath))  # rank 0 writes (sharded: every rank)
        self.strategy.barrier("save_checkpoint")

    # ------------------------------------------------------------------ one run
    def _run(self, module: LightningModule, stage: str, datamodule: Any, loaders: Any = None, val: Any = None,
             ckpt_path: Any = None, return_predictions: bool = True) -> Any:
        # Distributed strategies start their processes (once) and join the process group here; see
        # ember/runtime/launcher.py. A single device has no launcher and nothing to join.
        launcher = self.strategy.launcher
        if launcher is not None and launcher.should_launch():
            return launcher.launch(self._run, module, stage, datamodule, loaders, val, ckpt_path, return_predictions)
        self.strategy.setup_environment()
        if not self.is_global_zero and self.progress_bar_callback is not None:
            self.progress_bar_callback.disable()  # one progress bar per job, on rank 0
        run = self._new_run(module, datamodule)
        if self.is_global_zero and not self.quiet:
            print(f"ember: {_VERB[stage]} on {self.accelerator.describe()}", file=sys.stderr)
        if datamodule is not None and self.local_rank == 0:
            timed_if_overridden(run.profiler, datamodule, "prepare_data")()
        if self.local_rank == 0:
            timed_if_overridden(run.profiler, module, "prepare_data")()
        self.strategy.barrier("prepare_data")  # other ranks wait for the download before setup() reads it
        if datamodule is not None:
            timed(run.profiler, datamodule, "setup")(stage)
        run.hooks.call("setup", stage)
        timed_if_overridden(run.profiler, module, "configure_model")()
        self.strategy.setup_module(module)
        module._device = self.strategy.root_device
        try:
            with torch.autograd.set_detect_anomaly(self.config.detect_anomaly):
                if stage == "fit":
                    result = self._run_fit(run, loaders, val, ckpt_path)
                else:
                    result = self._run_stage(run, stage, loaders, ckpt_path, return_predictions)
        except TunerExit:  # the range test ended its fit on purpose: tear down as after a normal run
            run.hooks.call("teardown", stage)
            self.profiler.teardown(stage)
            self.strategy.teardown()
            raise
        except BaseException as exc:
            self.state.interrupted = True
            self.profiler.teardown(stage)
            run.hooks.call("on_exception", exc)
            if datamodule is not None:
                datamodule.on_exception(exc)  # after the callbacks, as Lightning does
            for lg in self.loggers:
                lg.finalize("failed")
            raise
        finally:
            self.state.training = False
        run.hooks.call("teardown", stage)
        if datamodule is not None:
            timed(run.profiler, datamodule, "teardown")(stage)
        self.strategy.teardown()
        self.profiler.describe()  # the summary, printed or written to dirpath/<stage>-<filename>.txt
        return result

    def _new_run(self, module: LightningModule, datamodule: Any) -> loop.Run:
        """Fresh metrics and hooks for one run; the counters carry over (fit continues where it stopped)."""
        self.metric_store.reset_all()  # nothing logged before is visible (Lightning resets results and views)
        self.metric_store.logging_off = self.config.barebones
        self.datamodule = datamodule
        if datamodule is not None:
            datamodule.trainer = self
        state = self.state
        state.should_stop = state.interrupted = state.sanity_checked = False
        # Callbacks the model brings replace the Trainer's of the same type (Lightning's rule).
        profiler = start_profiling(self)  # None while none records
        extra = timed(profiler, module, "configure_callbacks")()
        if extra:
            extra = [extra] if isinstance(extra, Callback) else list(extra)
            kinds = {type(cb) for cb in extra}
            self.callbacks = checkpoints_last([cb for cb in self.callbacks if type(cb) not in kinds] + extra)
        self.data.attach(module, datamodule, self.config, profiler)
        run = self.run_context = loop.Run(
            module, state, self.config, self.data, self.strategy, self.precision,
            HookDispatcher(self, module, self.callbacks, profiler), self.metric_store, self.loggers,
            batch_hooks=any(is_overridden(module, h, LightningModule) for h in _BATCH_HOOKS), profiler=profiler)
        run.use_optimizers(self.optimizers, self.lr_scheduler_configs)
        return run

    def _run_fit(self, run: loop.Run, train: Any, val: Any, ckpt_path: Any) -> None:
        from .checkpoint import preemption_guard, resolve_ckpt_path, restore_training_state
        from .optim import check_optimization, parse

        module = run.module
        self.optimizers, self.lr_scheduler_configs = parse(timed(run.profiler, module, "configure_optimizers")())
        check_optimization(module, self.config, self.optimizers)
        run.use_optimizers(self.optimizers, self.lr_scheduler_configs)
        # The *_dataloader hooks run where Lightning calls them (val in the sanity check, train right before
        # on_train_start, see loop.run_fit); here we only check that a source exists.
        self.data.prepare_fit(train, val)
        self.ckpt_path = resolve_ckpt_path(self, ckpt_path)
        if self.ckpt_path is not None:
            # Resuming puts the train loader's position back, so the loaders are built before the restore.
            self.data.setup_train()
            if self.data.val_loaders is None:
                loop.setup_val(run)
            restore_training_state(self, self.ckpt_path, weights_only=self._weights_only)
        run.hooks.call("on_fit_start")
        self._log_hparams(module)  # after on_fit_start, as Lightning does
        self.state.training = True
        # No module.train() here: Lightning trains the modes it finds (loop.run_fit warns about eval ones).
        with preemption_guard(self):  # SIGTERM: finish the step, save a resumable checkpoint, exit
            loop.run_fit(run)
        self.state.training = False
        run.hooks.call("on_fit_end")
        for lg in self.loggers:
            lg.finalize("success")

    def _run_stage(self, run: loop.Run, stage: str, loaders: Any, ckpt_path: Any, return_predictions: bool) -> Any:
        """validate, test or predict: the loaders are requested by the loop, inside no_grad/inference_mode."""
        step_name = {"validate": "validation_step", "test": "test_step"}.get(stage)
        if step_name is not None and not is_overridden(run.module, step_name, LightningModule):
            raise NotImplementedError(f"Trainer.{stage}() needs {type(run.module).__name__}.{step_name}(batch, batch_idx).")
        self._load_weights(run.module, ckpt_path)
        request = self.data.eval_request(stage, loaders)
        if stage == "predict":
            return loop.run_predict(run, request, return_predictions)
        self.state.eval_steps_seen = {}
        results = loop.run_evaluation(run, stage, request)
        for lg in self.loggers:
            lg.save()
        return results

    def _load_weights(self, module: LightningModule, ckpt_path: Any) -> None:
        from .checkpoint import load_weights_into, resolve_ckpt_path

        path = self.ckpt_path = resolve_ckpt_path(self, ckpt_path)  # None: "last" with nothing saved (it warns)
        if path is not None:
            load_weights_into(module, path, weights_only=self._weights_only)

    def _log_hparams(self, module: LightningModule) -> None:
        if not self.loggers or not self.config.enable_autolog_hparams:
            return
        from .hparams import hparams_to_log

        # Lightning logs hyperparameters only for what called save_hyperparameters(logger=True).
        params = hparams_to_log(module, self.datamodule)
        for lg in self.loggers:
            if params is not None:
                lg.log_hyperparams(params)
            if hasattr(lg, "log_graph"):
                lg.log_graph(module)


def _setting(name: str) -> property:
    """``trainer.<name>`` reads the frozen config; setting it (``trainer.max_epochs = 3``, to continue a finished
    fit for more epochs) builds a new config, checked again."""

    def set_(self: Trainer, value: Any) -> None:
        self.config = self.data.config = dataclasses.replace(self.config, **{name: value})
        if self.run_context is not None:  # a callback changing a setting during fit (accumulation schedules)
            self.run_context.configure(**{name: value})

    return property(lambda self: getattr(self.config, name), set_, doc=f"``Trainer({name}=...)``")


# Lightning's setting names are Trainer attributes (trainer.max_epochs, ...).
for _name in TRAINER_ATTRIBUTES:
    setattr(Trainer, _name, _setting(_name))

# Read-only Trainer attributes, by the object that owns them.
FORWARDED = {
    "strategy": ("global_rank", "local_rank", "node_rank", "world_size", "is_global_zero", "num_nodes",
                 "model"),  # model: what forward runs through (the DDP/FSDP wrapper when there is one)
    "accelerator": ("num_devices",),
    "state": ("current_epoch", "global_step", "batch_idx", "is_last_batch", "sanity_checking", "training",
              "evaluating", "interrupted"),
    "data": ("train_dataloader", "val_dataloaders", "test_dataloaders", "predict_dataloaders",
             "num_training_batches", "num_val_batches", "val_check_batch"),
    "metric_store": ("callback_metrics", "logged_metrics"),  # brought up to date when read
}
for _owner, _names in FORWARDED.items():
    for _name in _names:
        setattr(Trainer, _name, _forward(_owner, _name))
