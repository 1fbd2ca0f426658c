"""``CombinedLoader``: several dataloaders (a list, tuple or dict of them, nested if need be) read as one.

Four ways to combine them, Lightning's names:

- ``"min_size"``: one batch of every loader per step, until the shortest runs out;
- ``"max_size_cycle"``: until the longest runs out; a shorter loader starts again when it runs out
  (what ``Trainer.fit`` does with a list or dict of train loaders);
- ``"max_size"``: until the longest runs out; a loader that ran out gives ``None``;
- ``"sequential"``: the loaders one after the other, one batch a step (validation, test, predict).

Iterating yields ``(batch, batch_idx, dataloader_idx)``. In the three zipping modes ``batch`` has the
structure of the loaders (a dict of loaders gives a dict of batches) and ``dataloader_idx`` is 0; in
``"sequential"`` it is one loader's batch and the index of that loader in the flattened order.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Iterator

MODES = ("min_size", "max_size_cycle", "max_size", "sequential")


_PLAIN = (int, float, bool, str, bytes, type(None))


def _is_leaf(tree: Any) -> bool:
    # A container of plain values (a list of numbers, say) is itself something to iterate, as in Lightning.
    if not isinstance(tree, (list, tuple, dict)):
        return True
    return all(isinstance(v, _PLAIN) for v in (tree.values() if isinstance(tree, dict) else tree))


def _flatten(tree: Any) -> tuple[list[Any], Any]:
    """The leaves of nested lists/tuples/dicts, and a spec that ``_unflatten`` rebuilds the structure from."""
    if _is_leaf(tree):
        return [tree], None
    keys = list(tree) if isinstance(tree, dict) else [None] * len(tree)
    children = tree.values() if isinstance(tree, dict) else tree
    leaves, specs = [], []
    for key, child in zip(keys, children):
        sub, spec = _flatten(child)
        leaves += sub
        specs.append((key, spec, len(sub)))
    return leaves, ("dict" if isinstance(tree, dict) else type(tree), specs)


def _unflatten(leaves: list[Any], spec: Any) -> Any:
    if spec is None:
        return leaves[0]
    kind, parts = spec
    built, start = [], 0
    for key, sub, n in parts:
        built.append((key, _unflatten(leaves[start:start + n], sub)))
        start += n
    if kind == "dict":
        return dict(built)
    values = [v for _, v in built]
    return values if kind is list else kind(values)


def _length(iterable: Any) -> float:
    try:
        return len(iterable)
    except TypeError:
        return math.inf


class CombinedLoader:
    """Iterate several loaders together; ``mode`` is one of ``MODES`` (default ``"min_size"``, as Lightning)."""

    def __init__(self, iterables: Any, mode: str = "min_size") -> None:
        if mode not in MODES:
            raise ValueError(f"CombinedLoader(mode={mode!r}) is not valid; allowed: {', '.join(map(repr, MODES))}.")
        self._iterables, self._mode = iterables, mode
        self._flattened, self._spec = _flatten(iterables)
        self._limits: list[int | float] | None = None
        self._iterator: Iterator[tuple[Any, int, int]] | None = None

    @property
    def mode(self) -> str:
        return self._mode

    @property
    def structure(self) -> Any:
        """How the flat batches nest again into the structure of ``iterables`` (ember's, for the loops)."""
        return self._spec

    @property
    def iterables(self) -> Any:
        """The loaders as given (the list, tuple or dict)."""
        return self._iterables

    @property
    def flattened(self) -> list[Any]:
        """The loaders in one flat list, in the order of ``dataloader_idx``."""
        return list(self._flattened)

    @flattened.setter
    def flattened(self, loaders: list[Any]) -> None:
        # The Trainer replaces the loaders (distributed sampler, no shuffling for overfit_batches) in place.
        if len(loaders) != len(self._flattened):
            raise ValueError(f"CombinedLoader.flattened got {len(loaders)} loaders; it holds {len(self._flattened)}, "
                             "and the structure cannot change.")
        self._flattened = list(loaders)
        self._iterables = _unflatten(self._flattened, self._spec)

    @property
    def sampler(self) -> Any:
        """Each loader's ``sampler``, in the structure of ``iterables`` (None for a loader without one)."""
        return self._map(lambda dl: getattr(dl, "sampler", None))

    @property
    def batch_sampler(self) -> Any:
        return self._map(lambda dl: getattr(dl, "batch_sampler", None))

    def _map(self, fn: Callable[[Any], Any]) -> Any:
        return _unflatten([fn(dl) for dl in self._flattened], self._spec)

    @property
    def limits(self) -> list[int | float] | None:
        """At most this many batches of each loader (the Trainer's ``limit_*_batches``); None: no limit."""
        return self._limits

    @limits.setter
    def limits(self, limits: int | float | list[int | float] | None) -> None:
        if isinstance(limits, (int, float)) and not isinstance(limits, bool):
            limits = [limits] * len(self._flattened)
        elif limits is not None and (not isinstance(limits, list) or len(limits) != len(self._flattened)):
            raise ValueError(f"CombinedLoader.limits={limits!r} is not valid; allowed: a number, None, or a list of "
                             f"{len(self._flattened)} numbers (one per loader).")
        self._limits = limits

    def _lengths(self) -> list[float]:
        lengths = [_length(dl) for dl in self._flattened]
        if self._limits is not None:
            lengths = [min(n, lim) for n, lim in zip(lengths, self._limits)]
        return lengths

    def __len__(self) -> int:
        """Batches one pass yields (with ``limits`` applied); a TypeError when a loader has no length."""
        lengths = self._lengths()
        if not lengths:
            return 0
        if self._mode == "sequential":
            total = sum(lengths)
        elif self._mode == "min_size":
            total = min(lengths)
        else:
            total = max(lengths)
        if total == math.inf:
            raise TypeError(f"CombinedLoader(mode={self._mode!r}) has no length: one of its loaders has none.")
        return int(total)

    def _cap(self) -> float:
        """How many steps a zipping pass may take: the limits cut the pass, never one loader inside it."""
        if self._limits is None:
            return math.inf
        try:
            return len(self)
        except TypeError:
            return math.inf

    def __iter__(self) -> "CombinedLoader":
        self._iterator = self.open_pass()
        return self

    def open_pass(self) -> Iterator[tuple[Any, int, int]]:
        """A new pass: ``(flat batches or one batch, batch_idx, dataloader_idx)``, the structure not rebuilt yet.

        The loaders' iterators are created here, as a plain DataLoader's is by ``iter()``: creating one draws
        its shuffle seed, and the resume code captures the RNG right before this call.
        """
        if self._mode == "sequential":
            return _sequential(self._flattened, self._limits)
        iterators = [iter(dl) for dl in self._flattened]
        step = {"min_size": _min_size, "max_size_cycle": _max_size_cycle, "max_size": _max_size}[self._mode]
        return step(self._flattened, iterators, self._cap())

    def __next__(self) -> tuple[Any, int, int]:
        if self._iterator is None:
            raise RuntimeError("CombinedLoader: call iter(combined_loader) before next().")
        batch, batch_idx, dataloader_idx = next(self._iterator)
        if self._mode != "sequential":
            batch = _unflatten(batch, self._spec)
        return batch, batch_idx, dataloader_idx

    def reset(self) -> None:
        self._iterator = None


def batches_of(combined: CombinedLoader) -> Iterator[Any]:
    """The batches alone (no indices): what the loops step on. Opens a new pass."""
    # (Not ``for b in combined``: a generator over it would call iter() on it a second time, opening a second
    # pass and drawing every shuffle seed twice.)
    flat_batches = combined.open_pass()
    if combined.mode == "sequential":
        return (batch for batch, _, _ in flat_batches)
    spec = combined.structure
    return (_unflatten(batch, spec) for batch, _, _ in flat_batches)


def inner_loaders(source: Any) -> list[Any]:
    """The loaders behind a CombinedLoader or a list/tuple/dict of them; ``[source]`` for anything else."""
    if isinstance(source, ZippedBatches):
        return source.combined.flattened
    if isinstance(source, CombinedLoader):
        return source.flattened
    if isinstance(source, (list, tuple, dict)):
        return _flatten(source)[0]
    return [source]


# ---- one pass of each mode: yields (the flat list of batches or one batch, batch_idx, dataloader_idx) ----
def _min_size(loaders: list[Any], iterators: list[Iterator[Any]], cap: float) -> Iterator[tuple[Any, int, int]]:
    idx = 0
    while idx < cap:
        try:
            out = [next(it) for it in iterators]
        except StopIteration:
            return
        yield out, idx, 0
        idx += 1


def _max_size_cycle(loaders: list[Any], iterators: list[Iterator[Any]], cap: float
                    ) -> Iterator[tuple[Any, int, int]]:
    ran_out = [False] * len(iterators)
    idx = 0
    while idx < cap and iterators:
        out = []
        for i, it in enumerate(iterators):
            try:
                out.append(next(it))
            except StopIteration:
                ran_out[i] = True
                if all(ran_out):
                    return  # the longest loader is done
                iterators[i] = iter(loaders[i])  # a shorter one starts again (a new shuffle)
                out.append(next(iterators[i]))
        yield out, idx, 0
        idx += 1


def _max_size(loaders: list[Any], iterators: list[Iterator[Any]], cap: float) -> Iterator[tuple[Any, int, int]]:
    idx = 0
    while idx < cap:
        out, any_left = [], False
        for it in iterators:
            try:
                out.append(next(it))
                any_left = True
            except StopIteration:
                out.append(None)
        if not any_left:
            return
        yield out, idx, 0
        idx += 1


def _sequential(loaders: list[Any], limits: list[int | float] | None) -> Iterator[tuple[Any, int, int]]:
    for dl_idx, loader in enumerate(loaders):
        limit = limits[dl_idx] if limits is not None else math.inf
        if limit <= 0:
            continue  # its iterator is never created (no workers start for it)
        for batch_idx, batch in enumerate(loader):
            yield batch, batch_idx, dl_idx
            if batch_idx + 1 >= limit:
                break


class ZippedBatches:
    """A zipping CombinedLoader seen as one loader: ``iter`` gives its batches without the indices, ``len`` its
    number of steps. What the loops iterate, so they treat one loader and several alike."""

    def __init__(self, combined: CombinedLoader) -> None:
        self.combined = combined

    def __iter__(self) -> Iterator[Any]:
        return batches_of(self.combined)

    def __len__(self) -> int:
        return len(self.combined)
