"""LambdaCallback: a callback made of plain functions, one per event (``LambdaCallback(on_train_start=fn)``)."""
from __future__ import annotations

from typing import Any, Callable

from .callback import Callback


class LambdaCallback(Callback):
    """Each keyword names an event of ``ember.hooks.LISTENERS``; its function gets what a Callback method
    would, without ``self``: ``fn(trainer, pl_module, ...)``."""

    def __init__(self, **hooks: Callable[..., Any] | None) -> None:
        from ..hooks import LISTENERS

        unknown = sorted(set(hooks) - set(LISTENERS))
        if unknown:
            raise ValueError(f"LambdaCallback({', '.join(f'{k}=...' for k in unknown)}): not a callback event; "
                             f"allowed: {', '.join(sorted(LISTENERS))}.")
        for event, fn in hooks.items():
            if fn is None:
                continue
            if not callable(fn):
                raise TypeError(f"LambdaCallback({event}={fn!r}) needs a function; got {type(fn).__name__}.")
            setattr(self, event, fn)  # an instance attribute: the dispatcher sees the event as overridden
