"""``RunLoaders``: the user's data sources turned into what a run iterates.

One place decides where each loader comes from (the argument, the
datamodule or the module's ``*_dataloader`` hook), when it is requested
(where Lightning asks for it, see ``loop.run_fit``), when it is reloaded
(``reload_dataloaders_every_n_epochs``), how many batches of it run
(``limit_*_batches``, ``overfit_batches``), which batches validation follows
(``val_check_interval``) and which share of it this rank reads (the
strategy's distributed sampler).
"""
from __future__ import annotations

import math
import os
import time
from typing import Any, Callable

import torch

from .config import TrainerConfig, parse_duration
from .hooks import is_overridden
from .iterator_step import takes_dataloader_iter
from .utilities.combined_loader import CombinedLoader, ZippedBatches, inner_loaders
from .utilities.seed import seed_workers_of
from .utilities.warnings import advise

_HOOK_OF_STAGE = {"validate": "val_dataloader", "test": "test_dataloader", "predict": "predict_dataloader"}
_LIMIT_OF_STAGE = {"validate": "limit_val_batches", "test": "limit_test_batches", "predict": "limit_predict_batches"}


def loader_length(loader: Any) -> float:
    try:
        return len(loader)
    except TypeError:
        return math.inf


def resolve_limit(limit: Any, length: float, name: str) -> int | None:
    """Number of batches to run, or None for 'the whole (maybe endless) loader'."""
    if limit is None or (isinstance(limit, float) and limit == 1.0):
        return None if length == math.inf else int(length)
    if isinstance(limit, float):
        if length == math.inf:
            raise ValueError(f"Trainer({name}={limit}) is a fraction, but the dataloader has no length; give an int.")
        return int(length * limit)
    return int(min(limit, length)) if length != math.inf else int(limit)


class RunLoaders:
    """The loaders of one Trainer and the batch counts that follow from its settings."""

    def __init__(self, config: TrainerConfig, strategy: Any) -> None:
        self.config = config
        self.strategy = strategy
        self.module: Any = None
        self.datamodule: Any = None
        self.profiler: Any = None
        self.train_source: Any = None  # what fit() was given; None: the datamodule or the module's hook
        self.val_source: Any = None
        self.train_dataloader: Any = None  # what trainer.train_dataloader shows (several: the list or dict given)
        self.train_iterable: Any = None  # what the loop iterates (several: their zipped batches)
        self.steps_on_iterator = False  # training_step(self, dataloader_iter) (ember.iterator_step)
        self.train_ready = False
        self.train_limit: int | None = None
        self.num_training_batches: float = 0
        self.val_check_batch: float | None = math.inf
        self.val_check_seconds = math.inf  # a time-based val_check_interval, in seconds
        self.last_val_time = 0.0  # time.monotonic() when the clock of a time-based val_check_interval started
        self.val_loaders: list[Any] | None = []  # None: validation will run, its loaders are not requested yet
        self.val_limits: list[int | None] = []
        self.val_dataloaders: Any = None
        self.num_val_batches: list[float] = []
        self.last_val_reload_epoch: float = -math.inf
        self.test_dataloaders: Any = None
        self.predict_dataloaders: Any = None

    def attach(self, module: Any, datamodule: Any, config: TrainerConfig, profiler: Any = None) -> None:
        self.module, self.datamodule, self.config = module, datamodule, config
        self.profiler = profiler  # times the *_dataloader hooks (Lightning's action names) while one records

    # ---- sources ----
    def defines(self, name: str) -> bool:
        """Whether the datamodule or the module defines the hook ``name`` (without calling it)."""
        from .datamodule import LightningDataModule
        from .module import LightningModule

        if self.datamodule is not None and is_overridden(self.datamodule, name, LightningDataModule):
            return True
        return any(name in vars(c) for c in type(self.module).__mro__
                   if c not in (LightningModule, torch.nn.Module, object))

    def _from_hooks(self, name: str) -> Any:
        from .datamodule import LightningDataModule

        from .profilers.wiring import timed

        if self.datamodule is not None and is_overridden(self.datamodule, name, LightningDataModule):
            return timed(self.profiler, self.datamodule, name)()
        return timed(self.profiler, self.module, name)() if self.defines(name) else None

    def prepare_fit(self, train: Any, val: Any) -> None:
        """Check that fit has training data and decide whether it validates; nothing is requested yet."""
        self.train_source, self.val_source, self.train_ready = train, val, False
        self.num_val_batches = []
        if train is None and not self.defines("train_dataloader"):
            raise ValueError(_NO_TRAIN_DATA.format(type(self.module).__name__))
        self.val_loaders = None if self._validation_possible(val) else []

    def _validation_possible(self, val: Any) -> bool:
        """Lightning's rule: validation runs with a val source, a validation_step and limit_val_batches > 0."""
        from .module import LightningModule

        has_source = val is not None or self.defines("val_dataloader")
        has_step = is_overridden(self.module, "validation_step", LightningModule)
        if has_step and not has_source and self.config.limit_val_batches != 0:
            advise(f"{type(self.module).__name__} defines validation_step but no val dataloader was given; "
                   "validation is skipped. Pass val_dataloaders=... to fit().", stacklevel=5)
        elif has_source and not has_step:
            advise("A val dataloader was given but the model has no validation_step; validation is skipped.",
                   stacklevel=5)
        return has_source and has_step and self.config.limit_val_batches != 0

    # ---- training ----
    def setup_train(self) -> None:
        config = self.config
        source = self.train_source if self.train_source is not None else self._from_hooks("train_dataloader")
        if source is None:
            raise ValueError(_NO_TRAIN_DATA.format(type(self.module).__name__))
        combined = _train_combined(source)
        if combined is None:  # one loader: iterated as it is, no wrapper per batch
            loader = self._prepare_train_loader(source)
            self.train_dataloader = self.train_iterable = loader
            length = loader_length(loader)
            self.train_limit = resolve_limit(config.limit_train_batches, length, "limit_train_batches")
        else:
            # Several loaders: each gets what one would (sampler, worker seeds, limit), Lightning's rule.
            combined.flattened = [self._prepare_train_loader(dl) for dl in combined.flattened]
            limits = [resolve_limit(config.limit_train_batches, loader_length(dl), "limit_train_batches")
                      for dl in combined.flattened]
            combined.limits = [math.inf if lim is None else lim for lim in limits]
            self.train_dataloader, self.train_iterable = combined.iterables, ZippedBatches(combined)
            length = loader_length(combined)
            self.train_limit = None if length == math.inf else int(length)
        if length == 0:
            raise ValueError("The training dataloader is empty (len 0): there is nothing to train on. Check the "
                             "dataset size, batch_size and drop_last.")
        self.train_ready = True
        self.steps_on_iterator = takes_dataloader_iter(self.module)
        self.num_training_batches = self.train_limit if self.train_limit is not None else math.inf
        self.val_check_batch = self._val_check_batch()

    def _prepare_train_loader(self, loader: Any) -> Any:
        config = self.config
        if config.overfit_batches:
            loader = _without_shuffle(loader)
        # Distributed: a DistributedSampler gives this rank its share; one device: unchanged.
        loader = self.strategy.distribute_loader(loader, "train", config.use_distributed_sampler,
                                                 bool(config.overfit_batches))
        seed_workers_of(loader, self.strategy.global_rank)
        _warn_few_workers(loader, "train")
        return loader

    def _val_check_batch(self) -> float | None:
        """``val_check_interval`` as a number of training batches (inf: at the end of a loader without len;
        None: a time, checked on the clock after every batch, which starts now, as in Lightning)."""
        vci, n, config = self.config.val_check_interval, self.num_training_batches, self.config
        if not isinstance(vci, (int, float)):
            self.val_check_seconds = parse_duration(vci, "val_check_interval")
            self.restart_val_clock()
            return None
        if isinstance(vci, float):
            if n == math.inf:
                if vci != 1.0:
                    raise ValueError(f"Trainer(val_check_interval={vci}) is a fraction, but the training dataloader "
                                     "has no length; give an int number of batches.")
                return math.inf
            return max(1, int(n * vci))
        if n != math.inf and vci > n and config.check_val_every_n_epoch is not None:
            raise ValueError(f"Trainer(val_check_interval={vci}) is larger than the {n} training batches per epoch; "
                             "lower it, or set check_val_every_n_epoch=None to count batches across epochs.")
        return vci

    # ---- a time-based val_check_interval ----
    def restart_val_clock(self) -> None:
        """Called when the train loader is (re)loaded and when an evaluation ends (Lightning's two points)."""
        self.last_val_time = time.monotonic()

    def val_time_due(self) -> bool:
        return time.monotonic() - self.last_val_time >= self.val_check_seconds

    def begin_epoch(self, epoch: int) -> None:
        """Reload the train loader when due (a loader given to fit is reused as is), then ``set_epoch``."""
        n = self.config.reload_dataloaders_every_n_epochs
        if n and epoch % n == 0 and epoch > 0:
            self.setup_train()
            # Lightning opens a reloaded loader twice (once when it loads it, once when the epoch starts) and
            # reads the second; each opening draws the loader's base seed from the global RNG. Opening it once
            # more here draws the same numbers, so the shuffles that follow match.
            for loader in inner_loaders(self.train_iterable):
                iter(loader)
        for loader in inner_loaders(self.train_iterable):
            sampler = getattr(loader, "sampler", None)
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(epoch)

    # ---- validation inside fit ----
    def validation_epoch(self, epoch: int) -> bool:
        """Whether epoch ``epoch`` validates (``check_val_every_n_epoch``; None counts batches across epochs)."""
        n = self.config.check_val_every_n_epoch
        return n is None or (epoch + 1) % n == 0

    def setup_val(self, epoch: int, sanity_checking: bool, validation_epoch: bool) -> None:
        config = self.config
        loaders = self.val_source if self.val_source is not None else self._from_hooks("val_dataloader")
        # Lightning notes the epoch of a (re)load, except for a sanity check before a non-validation epoch.
        if not sanity_checking or validation_epoch:
            self.last_val_reload_epoch = epoch
        if loaders is None:
            self.val_loaders, self.val_limits = [], []
            return
        # overfit_batches: validation reads its own data, in a fixed order (Lightning)
        loaders, self.val_dataloaders = self._prepare_eval(loaders, "validate", bool(config.overfit_batches))
        self.val_loaders = loaders
        self.val_limits = [resolve_limit(config.limit_val_batches, loader_length(dl), "limit_val_batches")
                           for dl in loaders]
        self.num_val_batches = [lim if lim is not None else math.inf for lim in self.val_limits]
        if all(lim == 0 for lim in self.val_limits):
            self.val_loaders = []

    def val_reload_due(self, epoch: int) -> bool:
        n = self.config.reload_dataloaders_every_n_epochs
        return self.val_loaders is None or bool(n) and epoch - self.last_val_reload_epoch >= n

    def val_limits_for_run(self, sanity_checking: bool) -> list[int | None]:
        limits = list(self.val_limits)
        cap = self.config.num_sanity_val_steps
        if sanity_checking and cap != -1:
            limits = [cap if lim is None else min(cap, lim) for lim in limits]
        return limits

    # ---- validate / test / predict ----
    def eval_request(self, stage: str, given: Any) -> Callable[[], tuple[list[Any], list[int | None]]]:
        """What the loop calls, under no_grad/inference_mode, to get ``(loaders, limits)``: where Lightning asks."""
        limit_name = _LIMIT_OF_STAGE[stage]
        limit = getattr(self.config, limit_name)

        def request() -> tuple[list[Any], list[int | None]]:
            if limit == 0:
                return [], []  # Lightning does not even ask for the loaders
            loaders = self._eval_loaders(stage, given)
            return loaders, [resolve_limit(limit, loader_length(dl), limit_name) for dl in loaders]

        return request

    def _eval_loaders(self, stage: str, given: Any) -> list[Any]:
        name = _HOOK_OF_STAGE[stage]
        loaders = given if given is not None else self._from_hooks(name)
        if loaders is None:
            raise ValueError(f"Trainer.{stage}() found no data: pass dataloaders=DataLoader(...), a datamodule, or "
                             f"define {type(self.module).__name__}.{name}().")
        loaders, public = self._prepare_eval(loaders, stage)
        if stage == "validate":
            self.val_dataloaders = public
        elif stage == "test":
            self.test_dataloaders = public
        else:
            self.predict_dataloaders = public
        return loaders

    def _prepare_eval(self, source: Any, stage: str, overfit: bool = False) -> tuple[list[Any], Any]:
        """The eval loaders the loop runs one after the other, and what ``trainer.*_dataloaders`` shows.

        A list or dict runs loader by loader (``dataloader_idx`` in its order); a zipping CombinedLoader is one
        loader of zipped batches. Each inner loader gets the distributed sampler and the worker seeds.
        """
        combined = _eval_combined(source)
        flat = combined.flattened if combined is not None else [source]
        if overfit:
            flat = [_without_shuffle(dl) for dl in flat]
        flat = [self.strategy.distribute_loader(dl, stage, self.config.use_distributed_sampler) for dl in flat]
        for dl in flat:
            seed_workers_of(dl, self.strategy.global_rank)
        if combined is None:
            return flat, flat[0]
        combined.flattened = flat
        if combined.mode != "sequential":
            return [ZippedBatches(combined)], combined.iterables
        return flat, flat[0] if len(flat) == 1 else combined.iterables


def _train_combined(source: Any) -> CombinedLoader | None:
    """Several train loaders as one CombinedLoader (a list or dict of them: ``max_size_cycle``); None for one."""
    if isinstance(source, CombinedLoader):
        if source.mode == "sequential":
            raise ValueError("Trainer.fit() does not train on CombinedLoader(mode='sequential'); allowed modes: "
                             "'max_size_cycle', 'min_size', 'max_size'.")
        return CombinedLoader(source.iterables, source.mode)  # a copy: the Trainer replaces its loaders
    if isinstance(source, (list, tuple, dict)) and source and all(
            isinstance(dl, torch.utils.data.DataLoader) for dl in inner_loaders(source)):
        return CombinedLoader(source, "max_size_cycle")
    return None


def _eval_combined(source: Any) -> CombinedLoader | None:
    if isinstance(source, CombinedLoader):
        return CombinedLoader(source.iterables, source.mode)  # a copy: the Trainer replaces its loaders
    if isinstance(source, (list, tuple, dict)):
        return CombinedLoader(source, "sequential")
    return None


_NO_TRAIN_DATA = ("Trainer.fit() found no training data: pass train_dataloaders=DataLoader(...), a datamodule, or "
                  "define {}.train_dataloader().")


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
    cores = os.cpu_count() or 1
    advise(
        f"The {which} DataLoader has num_workers=0, so batches load in the training process. If loading is slow, "
        f"try num_workers={max(1, cores - 1)} (this machine has {cores} cores).", stacklevel=5)
