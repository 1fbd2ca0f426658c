"""One place that decides who hears each event, and in which order.

The loop never calls a callback or a module hook directly: it calls
``HookDispatcher.call(name, *args)``. Who listens, and in which order, is the
data below; ``tests/test_hook_order.py`` records every call of a real fit,
validate, test and predict and compares the sequence with Lightning's.

Hooks nobody overrides are dropped when the table is built, so an empty event
costs one dict lookup and an empty loop in the hot path.
"""
from __future__ import annotations

from functools import partial
from typing import Any, Callable

# Events the Callback base class defines (all no-ops there).
CALLBACK_EVENTS: tuple[str, ...] = (
    "setup", "teardown",
    "on_fit_start", "on_fit_end",
    "on_sanity_check_start", "on_sanity_check_end",
    "on_train_start", "on_train_end",
    "on_train_epoch_start", "on_train_epoch_end",
    "on_train_batch_start", "on_train_batch_end",
    "on_validation_start", "on_validation_end",
    "on_validation_epoch_start", "on_validation_epoch_end",
    "on_validation_batch_start", "on_validation_batch_end",
    "on_test_start", "on_test_end",
    "on_test_epoch_start", "on_test_epoch_end",
    "on_test_batch_start", "on_test_batch_end",
    "on_predict_start", "on_predict_end",
    "on_predict_epoch_start", "on_predict_epoch_end",
    "on_predict_batch_start", "on_predict_batch_end",
    "on_before_backward", "on_after_backward",
    "on_before_optimizer_step", "on_before_zero_grad",
    "on_save_checkpoint", "on_load_checkpoint",
    "on_exception",
)

# Who hears an event: "callbacks" (every callback, in list order), "module",
# or the split Lightning uses for the end of a training epoch, where the
# monitoring callbacks (checkpointing, early stopping) must see what the
# module logged in its own ``on_train_epoch_end``.
DEFAULT_LISTENERS: tuple[str, ...] = ("callbacks", "module")
LISTENERS: dict[str, tuple[str, ...]] = {
    "on_train_epoch_end": ("plain_callbacks", "module", "monitor_callbacks"),
    # The module and its callbacks see a checkpoint being written after the
    # callbacks have put their own state in it.
    "on_save_checkpoint": ("callbacks", "module"),
    "on_load_checkpoint": ("module", "callbacks"),
    # The module has no on_sanity_check_* / on_exception hooks.
    "on_sanity_check_start": ("callbacks",),
    "on_sanity_check_end": ("callbacks",),
    "on_exception": ("callbacks",),
}

# Callback events whose module counterpart takes the same arguments minus
# (trainer, pl_module). ``setup``/``teardown`` take ``stage`` on both sides.
_MODULE_ALSO_HAS = frozenset(CALLBACK_EVENTS) - {"on_sanity_check_start", "on_sanity_check_end", "on_exception"}


def is_overridden(obj: Any, name: str, base: type) -> bool:
    """True when ``obj`` implements ``name`` itself rather than inheriting ``base``'s no-op."""
    if name in getattr(obj, "__dict__", {}):
        return True
    impl = getattr(type(obj), name, None)
    return impl is not None and impl is not getattr(base, name, None)


def _is_monitor(callback: Any) -> bool:
    # Checkpointing and early stopping read metrics the module logs at the
    # end of an epoch, so they run after the module there.
    return getattr(callback, "_monitors_metrics", False)


class HookDispatcher:
    """Calls the callbacks and the module for each event, in the order of ``LISTENERS``."""

    def __init__(self, trainer: Any, module: Any, callbacks: list[Any]) -> None:
        from .callbacks.callback import Callback
        from .module import LightningModule

        self._table: dict[str, tuple[Callable[..., Any], ...]] = {}
        for event in CALLBACK_EVENTS:
            found: list[Callable[..., Any]] = []
            for who in LISTENERS.get(event, DEFAULT_LISTENERS):
                if who == "module":
                    if event in _MODULE_ALSO_HAS and is_overridden(module, event, LightningModule):
                        found.append(getattr(module, event))
                    continue
                for cb in callbacks:
                    if who == "plain_callbacks" and _is_monitor(cb):
                        continue
                    if who == "monitor_callbacks" and not _is_monitor(cb):
                        continue
                    # ``_idle_events``: hooks a callback implements but has nothing to do in for this run
                    # (a ModelCheckpoint that saves once per epoch skips the per-step hook).
                    if is_overridden(cb, event, Callback) and event not in getattr(cb, "_idle_events", ()):
                        found.append(partial(getattr(cb, event), trainer, module))
            self._table[event] = tuple(found)

    def listeners(self, event: str) -> tuple[Callable[..., Any], ...]:
        """The bound callables for ``event``; the hot loop fetches these once per epoch."""
        return self._table[event]

    def call(self, event: str, *args: Any, **kwargs: Any) -> Any:
        """Fire ``event``; returns the last non-None result (``on_train_batch_start`` may return -1)."""
        result = None
        for fn in self._table[event]:
            out = fn(*args, **kwargs)
            if out is not None:
                result = out
        return result
