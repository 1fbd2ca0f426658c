"""Every event, who hears it and in which order, as data; and the one dispatcher that fires them.

The loop never calls a callback or a module hook directly: it calls
``HookDispatcher.call(name, *args)`` (or, in the per-batch code, the
listeners it fetched once per epoch). ``LISTENERS`` says who listens to each
event; ``ORDER`` is the sequence of events of fit, validate, test and
predict. ``tests/test_hooks_table.py`` checks the ``Callback`` and
``LightningModule`` stubs against ``LISTENERS`` and a recorded run against
``ORDER``; ``tests/test_hook_order.py`` compares recorded runs with
Lightning 2.6.6's.

Hooks nobody overrides are dropped when the table is built, so an empty event
costs one dict lookup and an empty loop in the hot path.
"""
from __future__ import annotations

from functools import partial
from typing import Any, Callable

from .profilers.wiring import profiled_table

_BOTH, _ALL = ("callbacks", "module"), ("callbacks", "module", "strategy")  # _ALL: the strategy hears it too

# Who hears an event: "callbacks" (every callback, in list order), "module", or the split Lightning uses at
# the end of a training epoch, where the monitoring callbacks (checkpointing, early stopping) must see what
# the module logged in its own ``on_train_epoch_end``. The module's hook takes the callback's arguments
# without (trainer, pl_module).
LISTENERS: dict[str, tuple[str, ...]] = {
    "setup": _BOTH, "teardown": _BOTH,
    "on_fit_start": _BOTH, "on_fit_end": _BOTH,
    "on_sanity_check_start": ("callbacks",), "on_sanity_check_end": ("callbacks",),
    "on_train_start": _ALL, "on_train_end": _ALL,
    "on_train_epoch_start": _BOTH, "on_train_epoch_end": ("plain_callbacks", "module", "monitor_callbacks"),
    "on_train_batch_start": _ALL, "on_train_batch_end": _BOTH,
    **{f"on_{stage}_{when}": _ALL if when in ("start", "end") else _BOTH for stage in ("validation", "test", "predict")
       for when in ("start", "end", "epoch_start", "epoch_end", "batch_start", "batch_end")},
    "on_before_backward": _BOTH, "on_after_backward": _BOTH,
    "on_before_optimizer_step": _BOTH, "on_before_zero_grad": _BOTH,
    # The module and its callbacks see a checkpoint being written after the callbacks put their own state in it.
    "on_save_checkpoint": _BOTH, "on_load_checkpoint": ("module", "callbacks"),
    "on_exception": ("callbacks",),
}

# The events of each entry point, in order. A name in ORDER is a group of events; "?" marks what may not
# happen, "*" what repeats. Saving, loading and exceptions happen out of this order.
ORDER: dict[str, tuple[str, ...]] = {
    "fit": ("setup", "on_fit_start", "sanity_check?", "on_train_start", "train_epoch*", "on_train_end",
            "on_fit_end", "teardown"),
    "validate": ("setup", "validation?", "teardown"),
    "test": ("setup", "test_run?", "teardown"),
    "predict": ("setup", "predict_run?", "teardown"),
    "sanity_check": ("on_sanity_check_start", "validation?", "on_sanity_check_end"),
    "train_epoch": ("on_train_epoch_start", "train_batch*", "validation?", "on_train_epoch_end"),
    # on_train_batch_start returning -1 ends the epoch before the step.
    "train_batch": ("on_train_batch_start", "optimization?", "on_train_batch_end?", "validation?"),
    "optimization": ("on_before_zero_grad?", "on_before_backward?", "on_after_backward?",
                     "on_before_optimizer_step?"),
    **{f"{stage}{suffix}": (f"on_{stage}_start", f"on_{stage}_epoch_start", f"{stage}_batch*",
                            f"on_{stage}_epoch_end", f"on_{stage}_end")
       for stage, suffix in (("validation", ""), ("test", "_run"), ("predict", "_run"))},
    **{f"{stage}_batch": (f"on_{stage}_batch_start", f"on_{stage}_batch_end") for stage in ("validation", "test",
                                                                                          "predict")},
}
OUT_OF_ORDER = ("on_save_checkpoint", "on_load_checkpoint", "on_exception")


def is_overridden(obj: Any, name: str, base: type) -> bool:
    """True when ``obj`` implements ``name`` itself rather than inheriting ``base``'s no-op."""
    if name in getattr(obj, "__dict__", {}):
        return True
    impl = getattr(type(obj), name, None)
    return impl is not None and impl is not getattr(base, name, None)


def _ember_own(owner: Any, event: str) -> bool:
    return getattr(type(owner), event).__module__.startswith("ember.")  # not a subclass's override


def _is_monitor(callback: Any) -> bool:
    # Checkpointing and early stopping read metrics the module logs at the end of an epoch, so they run
    # after the module there.
    return getattr(callback, "monitors_metrics", False)


def own_events(owner: Any, base: type) -> frozenset[str]:
    """The events ``owner`` implements itself. Only names defined below ``base`` (in its own classes or instance
    dict) can be overrides, so a fit's table takes ~40 us instead of ~37 lookups per owner (~400 us)."""
    inherited = set(base.__mro__)
    names = set(getattr(owner, "__dict__", ()))
    for cls in type(owner).__mro__:
        if cls not in inherited:
            names.update(cls.__dict__)
    return frozenset(e for e in names.intersection(LISTENERS) if is_overridden(owner, e, base))


def listener_table(trainer: Any, module: Any, callbacks: list[Any], every: bool = False
                   ) -> dict[str, list[tuple[Any, Callable[..., Any]]]]:
    """For each event, (owner, bound callable) of its listeners, in order: those that implement it, or
    (``every``, for a profiler, which times every hook as Lightning calls them all) everyone in ``LISTENERS``."""
    from .callbacks.callback import Callback
    from .module import LightningModule
    from .runtime.strategy import Strategy

    owners = {who: (owner, own_events(owner, base)) for who, owner, base in
              (("module", module, LightningModule), ("strategy", getattr(trainer, "strategy", None), Strategy))
              if owner is not None}
    # ``idle_events``: hooks a callback implements but has nothing to do in for this run
    # (a ModelCheckpoint that saves once per epoch skips the per-step hook).
    heard = [(cb, own_events(cb, Callback).difference(getattr(cb, "idle_events", ())), _is_monitor(cb))
             for cb in callbacks]
    table: dict[str, list[tuple[Any, Callable[..., Any]]]] = {}
    for event, who_hears in LISTENERS.items():
        found = table[event] = []
        for who in who_hears:
            if who in owners:
                owner, events = owners[who]
                if every or event in events:
                    found.append((owner, getattr(owner, event)))
                continue
            for cb, events, monitor in heard:
                if who != "callbacks" and monitor != (who == "monitor_callbacks"):
                    continue
                if every or event in events:
                    found.append((cb, partial(getattr(cb, event), trainer, module)))
    return table


class HookDispatcher:
    """Calls the callbacks, the module (and the strategy) for each event, in the order of ``LISTENERS``."""

    def __init__(self, trainer: Any, module: Any, callbacks: list[Any], profiler: Any = None) -> None:
        listeners = listener_table(trainer, module, callbacks)
        self._owners = {event: [owner for owner, _ in pairs] for event, pairs in listeners.items()}
        self._table = {event: tuple(fn for _, fn in pairs) for event, pairs in listeners.items()}
        self._paced = {event: tuple((fn, owner.batches_to_next_call) for owner, fn in pairs  # see Callback.paced_events
                                    if event in getattr(owner, "paced_events", ()) and _ember_own(owner, event))
                       for event, pairs in listeners.items()}
        if profiler is not None:  # every listener after every batch, each timed under Lightning's action name
            self._table, self._paced = profiled_table(trainer, module, callbacks, profiler), {}

    def listeners(self, event: str) -> tuple[Callable[..., Any], ...]:
        """The bound callables for ``event``; the hot loop fetches these once per epoch."""
        return self._table[event]

    def batch_listeners(self, event: str) -> tuple[tuple[Callable[..., Any], ...], tuple[tuple[Callable, ...], ...]]:
        """``event``'s listeners to call after every batch, and the paced ones as (listener, batches_to_next_call)."""
        paced = self._paced.get(event, ())
        return tuple(fn for fn in self._table[event] if all(fn is not p for p, _ in paced)), paced

    def reads_outputs(self, event: str) -> bool:
        """Whether a listener of ``event`` may read its ``outputs``.

        Only ember's own callbacks can say they never do (``ignores_batch_outputs``); a subclass that
        overrides the hook is taken to read them.
        """
        return any(not (getattr(owner, "ignores_batch_outputs", False) and _ember_own(owner, event))
                   for owner in self._owners[event])

    def call(self, event: str, *args: Any, **kwargs: Any) -> Any:
        """Fire ``event``; returns the last non-None result (``on_train_batch_start`` may return -1)."""
        result = None
        for fn in self._table[event]:
            out = fn(*args, **kwargs)
            if out is not None:
                result = out
        return result
