"""How a profiler reaches the run: the Trainer's argument, Lightning's action names and the timed callables.

Nothing here runs per batch while the profiler is off: every function returns the plain callable (or
iterator) when ``profiler`` is None, and the loop asks once per run or per epoch
(``step.EpochPlan``, ``loop._evaluate``, the hook table of ``hooks.HookDispatcher``).
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Iterator

from .profiler import PassThroughProfiler, Profiler

PROFILER_NAMES = ("simple", "advanced", "pytorch")
_END = object()  # what next() gives for an exhausted iterator


def choose_profiler(value: Any) -> Profiler:
    """``Trainer(profiler=...)``: a name from ``PROFILER_NAMES``, a ``Profiler`` or None (records nothing)."""
    if value is None:
        return PassThroughProfiler()
    if isinstance(value, Profiler):
        return value
    if isinstance(value, str) and value.lower() in PROFILER_NAMES:
        from . import AdvancedProfiler, PyTorchProfiler, SimpleProfiler

        return {"simple": SimpleProfiler, "advanced": AdvancedProfiler, "pytorch": PyTorchProfiler}[value.lower()]()
    raise ValueError(f"Trainer(profiler={value!r}) is not valid; allowed: "
                     f"{', '.join(map(repr, PROFILER_NAMES))}, a Profiler object (ember.profilers) or None.")


def start_profiling(trainer: Any) -> Profiler | None:
    """Set the profiler up for the run that begins; None when it records nothing (the loop then times nothing)."""
    profiler = trainer.profiler
    if isinstance(profiler, PassThroughProfiler):
        return None
    profiler.lightning_module = trainer.lightning_module
    profiler.setup(stage=trainer.state.fn, local_rank=trainer.local_rank if trainer.world_size > 1 else None,
                   log_dir=trainer.log_dir)
    return profiler


def action_name(owner: Any, hook: str) -> str:
    """Lightning's name for ``owner.hook``: ``[LightningModule]Model.training_step``, ``[Callback]<state_key>.x``,
    ``[Strategy]SingleDeviceStrategy.backward``, ``[LightningDataModule]DM.setup``; a loop action (owner None)
    is its bare name (``run_training_epoch``)."""
    from ..callbacks.callback import Callback
    from ..datamodule import LightningDataModule
    from ..module import LightningModule
    from ..runtime.strategy import Strategy

    if owner is None:
        return hook
    if isinstance(owner, Callback):
        return f"[Callback]{owner.state_key}.{hook}"
    for kind in (LightningModule, Strategy, LightningDataModule):
        if isinstance(owner, kind):
            return f"[{kind.__name__}]{type(owner).__name__}.{hook}"
    return f"[{type(owner).__name__}].{hook}"


def timed(profiler: Profiler | None, owner: Any, hook: str, fn: Callable[..., Any] | None = None
          ) -> Callable[..., Any]:
    """``fn`` (default ``owner.hook``), timed as ``action_name(owner, hook)`` when ``profiler`` is on."""
    fn = getattr(owner, hook) if fn is None else fn
    if profiler is None:
        return fn
    action, start, stop = action_name(owner, hook), profiler.start, profiler.stop

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        start(action)
        try:
            return fn(*args, **kwargs)
        finally:
            stop(action)

    return call


def timed_if_overridden(profiler: Profiler | None, owner: Any, hook: str) -> Callable[..., Any]:
    """``owner.hook``, timed only when ``owner`` overrides it: Lightning calls (and times) ``prepare_data`` and
    ``configure_model`` only then, where ember calls the no-op anyway."""
    from ..datamodule import LightningDataModule
    from ..hooks import is_overridden
    from ..module import LightningModule

    base = LightningDataModule if isinstance(owner, LightningDataModule) else LightningModule
    return timed(profiler if profiler is not None and is_overridden(owner, hook, base) else None, owner, hook)


def timed_batches(profiler: Profiler | None, action: str, pairs: Any, limit: float | None = None,
                  loader: Any = None) -> Any:
    """``pairs`` with each fetch timed as ``action``. When the number of batches is known (``limit``, or the
    ``loader``'s length) it stops after that many, without the fetch that would only find the end: Lightning
    counts one fetch per batch of a sized loader."""
    if profiler is None:
        return pairs
    count = limit
    if count is None and loader is not None:
        try:
            count = len(loader)
        except TypeError:  # an iterable dataset: the end is found by fetching
            count = None
    return _timed_fetches(profiler, action, iter(pairs), count)


def _timed_fetches(profiler: Profiler, action: str, pairs: Iterator[Any], count: float | None) -> Iterator[Any]:
    fetched = 0
    if count is None:
        # Without a length Lightning fetches the first batch ahead when the loop starts, untimed, and times every
        # later fetch, the one that finds the end included: as many timed fetches as batches, as here.
        first = next(pairs, _END)
        if first is _END:
            return
        yield first
    while count is None or fetched < count:
        profiler.start(action)
        try:
            pair = next(pairs)
        except StopIteration:
            return
        finally:
            profiler.stop(action)
        fetched += 1
        yield pair


def profiled_table(trainer: Any, module: Any, callbacks: list[Any], profiler: Profiler
                   ) -> dict[str, tuple[Callable[..., Any], ...]]:
    """``hooks.HookDispatcher``'s table while profiling: every listener of every event (Lightning calls them all,
    overridden or not), each timed under its action name."""
    from ..hooks import listener_table

    return {event: tuple(timed(profiler, owner, event, fn) for owner, fn in pairs)
            for event, pairs in listener_table(trainer, module, callbacks, every=True).items()}


_BATCH_HOOKS = ("on_before_batch_transfer", "transfer_batch_to_device", "on_after_batch_transfer")


def profiled_prepare_batch(run: Any) -> Callable[[Any, Any, int], Any]:
    """``step.prepare_batch`` as Lightning runs it while profiling: every batch goes through the strategy's
    ``batch_to_device``, which calls the module's three transfer hooks, each one timed."""
    profiler, module, strategy = run.profiler, run.module, run.strategy
    before, transfer, after = (timed(profiler, module, hook) for hook in _BATCH_HOOKS)

    def to_device(batch: Any, dataloader_idx: int) -> Any:
        batch = before(batch, dataloader_idx)
        batch = transfer(batch, strategy.root_device, dataloader_idx)
        return after(batch, dataloader_idx)

    to_device = timed(profiler, strategy, "batch_to_device", to_device)
    return lambda run, batch, dataloader_idx: to_device(run.precision.convert_input(batch), dataloader_idx)
