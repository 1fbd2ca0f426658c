"""Which indices each rank reads: Lightning 2.6's sampler rules, on torch's ``DistributedSampler``.

``prepare_loader`` is what ``Strategy.distribute_loader`` runs for every DataLoader the Trainer is
given. With ``use_distributed_sampler=True`` under a multi-process strategy (``shard`` given):

=================  =========================================================================
stage              sampler this rank reads through
=================  =========================================================================
train              ``DistributedSampler(shuffle=True)``, whether or not the loader shuffled;
                   ``shuffle=False`` with ``overfit_batches``. ``set_epoch`` every epoch.
validate, test     ``DistributedSampler(shuffle=<the loader shuffles>)`` (a warning when it does)
predict            ``UnrepeatedDistributedSamplerWrapper``: no padding, ``drop_last=False``
custom sampler     ``DistributedSamplerWrapper`` around it: its output, sharded as above
batch_sampler      rebuilt as ``type(bs)(distributed sampler, batch_size, drop_last)``
=================  =========================================================================

The seed is ``PL_GLOBAL_SEED`` (what ``seed_everything`` set) or 0. A loader whose sampler is already
a ``DistributedSampler``, and an ``IterableDataset``, are left alone. Samplers made for evaluation
take the trainer's epoch each time they are iterated, as Lightning sets it before every evaluation.
"""
from __future__ import annotations

import copy
import math
import os
from typing import Any, Callable, Iterator

import torch
from torch.utils.data import (BatchSampler, DataLoader, DistributedSampler, IterableDataset, RandomSampler, Sampler,
                              SequentialSampler)

from ..utilities.rank_zero import rank_zero_warn
from ..utilities.warnings import AdvisoryWarning

_PREFIX = {"train": "train", "validate": "val", "test": "test", "predict": "predict"}


class _Positions:
    """A stand-in dataset for ``DistributedSampler``: position i of what the wrapped sampler yields."""

    def __init__(self, sampler: Any) -> None:
        self.sampler = sampler

    def __len__(self) -> int:
        return len(self.sampler)


class DistributedSamplerWrapper(DistributedSampler):
    """Rank ``rank``'s share of what another (sized) sampler yields, each epoch.

    The wrapped sampler's output is read once per epoch on every rank; its positions are then sharded
    exactly as ``DistributedSampler`` shards a dataset (shuffled with ``seed + epoch`` when
    ``shuffle``, padded to equal shares). So the wrapped sampler must yield the same sequence on every
    rank (seed it, e.g. with ``seed_everything``). ``set_epoch`` reaches the wrapped sampler too.
    """

    def __init__(self, sampler: Any, num_replicas: int, rank: int, shuffle: bool = True, seed: int = 0,
                 drop_last: bool = False) -> None:
        _check_sized(sampler)
        super().__init__(_Positions(sampler), num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed,
                         drop_last=drop_last)
        self.sampler = sampler
        self.epoch_source: Callable[[], int] | None = None

    def _positions(self) -> Iterator[int]:
        return super().__iter__()

    def __iter__(self) -> Iterator[Any]:
        if self.epoch_source is not None:
            self.set_epoch(self.epoch_source())
        order = list(self.sampler)
        return iter([order[p] for p in self._positions()])

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        inner = getattr(self.sampler, "set_epoch", None)
        if callable(inner):
            inner(epoch)


class UnrepeatedDistributedSamplerWrapper(DistributedSamplerWrapper):
    """For predict: every position exactly once (no padding), so ranks may differ by one sample.

    As in Lightning, a shuffled one is seeded with the epoch alone (not ``seed + epoch``).
    """

    def __init__(self, sampler: Any, num_replicas: int, rank: int, shuffle: bool = False, seed: int = 0,
                 drop_last: bool = False) -> None:
        super().__init__(sampler, num_replicas, rank, shuffle, seed)
        n = len(sampler)
        self.num_samples = len(range(rank, n, num_replicas))
        self.total_size = n

    def _positions(self) -> Iterator[int]:
        n = len(self.sampler)
        if self.shuffle:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.epoch)).tolist()
        else:
            order = list(range(n))
        return iter(order[self.rank::self.num_replicas])


class _EvalDistributedSampler(DistributedSampler):
    """A ``DistributedSampler`` for validation/test that takes the trainer's epoch before each pass."""

    epoch_source: Callable[[], int] | None = None

    def __iter__(self) -> Iterator[Any]:
        if self.epoch_source is not None:
            self.set_epoch(self.epoch_source())
        return super().__iter__()


def _check_sized(sampler: Any) -> None:
    try:
        n = len(sampler)
    except TypeError:
        n = None
    if n is None or n == math.inf:
        raise TypeError(
            f"The DataLoader's sampler ({type(sampler).__name__}) has no finite __len__, so it cannot be split "
            "between the processes. Give it a __len__, or pass Trainer(use_distributed_sampler=False) and make it "
            "yield only this rank's indices (trainer.global_rank of trainer.world_size).")


def _inner_sampler(loader: DataLoader) -> Any:
    """The sampler that decides the order: the batch sampler's own, when it has one."""
    batch_sampler = loader.batch_sampler
    if batch_sampler is not None:
        return getattr(batch_sampler, "sampler", batch_sampler)
    return loader.sampler


def is_shuffled(loader: Any) -> bool:
    """Whether a DataLoader reads in a random order (Lightning's test: its sampler is a RandomSampler)."""
    if not isinstance(loader, DataLoader) or isinstance(loader.dataset, IterableDataset):
        return False
    return isinstance(_inner_sampler(loader), RandomSampler)


def prepare_loader(loader: Any, stage: str, shard: dict[str, int] | None, overfit: bool = False,
                   epoch_source: Callable[[], int] | None = None) -> Any:
    """``loader`` as this rank reads it in ``stage``; a predict loader also records its batches' indices."""
    prepared = _prepare_loader(loader, stage, shard, overfit, epoch_source)
    if stage == "predict" and isinstance(prepared, DataLoader) and prepared.batch_sampler is not None \
            and not isinstance(prepared.batch_sampler, BatchIndexRecorder):
        prepared = _with_batch_sampler(prepared, BatchIndexRecorder(prepared.batch_sampler))
    return prepared


class BatchIndexRecorder:
    """A batch sampler that keeps the dataset indices of every batch it yields this epoch, in order.

    ``BasePredictionWriter`` reads ``seen[batch_idx]``: the rows the batch really holds, even when the
    sampler shuffles or workers prefetch ahead (the DataLoader draws indices in the main process).
    """

    def __init__(self, batch_sampler: Any) -> None:
        self.batch_sampler = batch_sampler
        self.seen: list[list[int]] = []

    def __iter__(self) -> Any:
        self.seen = []
        for indices in self.batch_sampler:
            self.seen.append(list(indices))
            yield indices

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __getattr__(self, name: str) -> Any:  # batch_size, drop_last, sampler: the wrapped sampler's
        return getattr(self.batch_sampler, name)


def _with_batch_sampler(loader: DataLoader, batch_sampler: Any) -> DataLoader:
    new = copy.copy(loader)
    object.__setattr__(new, "batch_sampler", batch_sampler)  # DataLoader forbids it after __init__; a fresh copy
    object.__setattr__(new, "_iterator", None)
    return new


def _prepare_loader(loader: Any, stage: str, shard: dict[str, int] | None, overfit: bool = False,
                    epoch_source: Callable[[], int] | None = None) -> Any:
    """``loader`` as this rank reads it in ``stage`` ("train", "validate", "test" or "predict").

    ``shard``: ``{"num_replicas": W, "rank": r}`` to give the loader a distributed sampler
    (``use_distributed_sampler=True`` under a multi-process strategy), or None to keep its sampler.
    ``overfit``: ``Trainer(overfit_batches=...)`` is set; the train data is then read in order.
    """
    if stage not in _PREFIX:
        raise ValueError(f"distribute_loader(stage={stage!r}) is not known; allowed: {', '.join(map(repr, _PREFIX))}.")
    if not isinstance(loader, DataLoader) or isinstance(loader.dataset, IterableDataset):
        return loader  # an iterable dataset shards itself (it knows its own rank)
    if stage == "train":
        shuffle = not overfit
        if overfit and not isinstance(loader.sampler, SequentialSampler):
            loader = _rebuild(loader, SequentialSampler(loader.dataset), stage)  # overfit: a fixed order
    else:
        shuffle = is_shuffled(loader) and not overfit
        if shuffle:
            rank_zero_warn(f"The {_PREFIX[stage]} DataLoader shuffles (its sampler is a RandomSampler). Evaluation "
                           "is usually run in a fixed order; pass shuffle=False unless you mean it.", AdvisoryWarning)
    inject = shard is not None and not isinstance(loader.sampler, DistributedSampler)
    if not inject:
        # Predict never drops the last, short batch: every sample gets a prediction (as in Lightning).
        if stage == "predict" and getattr(loader.batch_sampler, "drop_last", False):
            return _rebuild(loader, loader.sampler, stage)
        return loader
    kwargs = dict(shard, shuffle=shuffle, seed=int(os.environ.get("PL_GLOBAL_SEED", 0)))
    sampler: Sampler
    if stage == "predict":
        sampler = UnrepeatedDistributedSamplerWrapper(loader.sampler, **kwargs)
    elif isinstance(loader.sampler, (RandomSampler, SequentialSampler)):
        cls = DistributedSampler if stage == "train" else _EvalDistributedSampler
        sampler = cls(loader.dataset, **kwargs)
    else:
        sampler = DistributedSamplerWrapper(loader.sampler, **kwargs)
    if stage != "train":
        sampler.epoch_source = epoch_source  # type: ignore[attr-defined]
    return _rebuild(loader, sampler, stage)


def _rebuild(loader: DataLoader, sampler: Any, stage: str) -> DataLoader:
    """A shallow copy of ``loader`` (subclass, workers, collate_fn and all) that draws indices from ``sampler``."""
    predicting = stage == "predict"
    batch_sampler = loader.batch_sampler
    drop_last = loader.drop_last and not predicting
    if batch_sampler is not None and (type(batch_sampler) is not BatchSampler or predicting):
        batch_sampler = _rebuild_batch_sampler(batch_sampler, sampler, stage)
    elif batch_sampler is not None:
        batch_sampler = BatchSampler(sampler, loader.batch_size, drop_last)  # type: ignore[arg-type]
    new = copy.copy(loader)
    # DataLoader forbids re-assigning these after __init__; the copy is fresh and not iterated yet. With a
    # batch_sampler, DataLoader reads only it; ``sampler`` is kept pointing at the distributed sampler too,
    # so that the trainer's set_epoch(loader.sampler) reaches it.
    object.__setattr__(new, "sampler", sampler)
    object.__setattr__(new, "batch_sampler", batch_sampler)
    object.__setattr__(new, "drop_last", drop_last)
    object.__setattr__(new, "_iterator", None)
    return new


def _rebuild_batch_sampler(batch_sampler: Any, sampler: Any, stage: str) -> Any:
    """``type(batch_sampler)(sampler, batch_size=..., drop_last=...)``, or a clear error when that cannot work."""
    name = type(batch_sampler).__name__
    predicting = stage == "predict"
    if not (hasattr(batch_sampler, "batch_size") and hasattr(batch_sampler, "drop_last")):
        if predicting:
            rank_zero_warn(f"The predict DataLoader has a custom batch_sampler ({name}) without batch_size and "
                           "drop_last; ember keeps it as it is, so it must yield every index (no dropped last batch) "
                           "and, under several processes, only this rank's.", UserWarning)
            return batch_sampler
        raise TypeError(
            f"The {_PREFIX[stage]} DataLoader's batch_sampler ({name}) is not a torch BatchSampler and has no "
            "batch_size and drop_last, so ember cannot rebuild it around a distributed sampler. Make it take "
            "(sampler, batch_size, drop_last) as BatchSampler does, or pass Trainer(use_distributed_sampler=False) "
            "and make it yield only this rank's batches (trainer.global_rank of trainer.world_size).")
    try:
        return type(batch_sampler)(sampler, batch_size=batch_sampler.batch_size,
                                   drop_last=False if predicting else batch_sampler.drop_last)
    except TypeError as err:
        raise TypeError(
            f"ember rebuilds the {_PREFIX[stage]} DataLoader's batch_sampler as {name}(sampler, batch_size=..., "
            f"drop_last=...) to give it a distributed sampler, and that call failed: {err}. Give {name}.__init__ "
            "that signature, or pass Trainer(use_distributed_sampler=False) and make it yield only this rank's "
            "batches.") from err
