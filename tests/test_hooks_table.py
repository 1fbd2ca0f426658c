"""ember.hooks keeps every event, who hears it and the order of each entry point as data; these tests hold the
Callback and LightningModule stubs and a recorded run to that data (test_hook_order.py holds it to Lightning)."""
from __future__ import annotations

import inspect
import re

import pytest
import torch

import ember as L
from ember.hooks import LISTENERS, ORDER, OUT_OF_ORDER
from boring import BoringWithEval, sum_loader

QUIET = dict(logger=False, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
_NOT_EVENTS = {"state_key", "state_dict", "load_state_dict"}


def order_pattern(entry: str) -> re.Pattern[str]:
    """A regular expression over ``"event;event;..."`` that the events of one ``entry`` point must match."""

    def expand(name: str) -> str:
        base, mark = (name[:-1], name[-1]) if name[-1] in "?*" else (name, "")
        body = "".join(expand(n) for n in ORDER[base]) if base in ORDER else re.escape(base) + ";"
        return f"(?:{body}){mark}"

    return re.compile(expand(entry))


def _callback_events() -> set[str]:
    return {name for name, _ in inspect.getmembers(L.Callback, inspect.isfunction)
            if not name.startswith("_") and name not in _NOT_EVENTS}


def test_callback_stubs_are_exactly_the_events():
    assert _callback_events() == set(LISTENERS)


def test_every_event_a_module_hears_has_a_module_stub_with_the_callback_arguments():
    for event, listeners in LISTENERS.items():
        module_hook = getattr(L.LightningModule, event, None)
        if "module" not in listeners:
            assert event in ("on_sanity_check_start", "on_sanity_check_end", "on_exception"), event
            continue
        assert callable(module_hook), event
        callback_args = list(inspect.signature(getattr(L.Callback, event)).parameters)[3:]  # self, trainer, pl_module
        module_args = list(inspect.signature(module_hook).parameters)[1:]  # self
        assert module_args == callback_args, event


def test_every_event_has_a_place_in_the_order():
    placed = {name.rstrip("?*") for seq in ORDER.values() for name in seq} - set(ORDER)
    assert placed | set(OUT_OF_ORDER) == set(LISTENERS)


class _Recorder(L.Callback):
    def __init__(self):
        self.calls: list[str] = []


for _event in LISTENERS:
    setattr(_Recorder, _event, lambda self, *args, _e=_event, **kw: self.calls.append(_e))


_Model = BoringWithEval


def _recorded(entry: str, **trainer_kw) -> list[str]:
    recorder = _Recorder()
    trainer = L.Trainer(max_epochs=2, callbacks=[recorder], **{**QUIET, **trainer_kw})
    model = _Model()
    if entry == "fit":
        trainer.fit(model, sum_loader(8, 2), sum_loader(4, 2))
    else:
        getattr(trainer, entry)(model, sum_loader(4, 2))
    return recorder.calls


@pytest.mark.parametrize("entry, trainer_kw", [
    ("fit", {}), ("fit", {"accumulate_grad_batches": 3}), ("fit", {"val_check_interval": 2}),
    ("fit", {"limit_val_batches": 0}), ("validate", {}), ("test", {}), ("predict", {}),
])
def test_a_recorded_run_follows_the_order(entry, trainer_kw):
    calls = _recorded(entry, **trainer_kw)
    assert calls[0] == "setup" and calls[-1] == "teardown"
    assert order_pattern(entry).fullmatch("".join(f"{c};" for c in calls)), calls


def test_the_order_pattern_rejects_a_run_out_of_order():
    calls = _recorded("fit")
    swapped = list(calls)
    i = swapped.index("on_train_batch_end")
    swapped[i - 1], swapped[i] = swapped[i], swapped[i - 1]
    assert not order_pattern("fit").fullmatch("".join(f"{c};" for c in swapped))
    assert not order_pattern("fit").fullmatch("".join(f"{c};" for c in calls[:-1]))


def test_outputs_are_built_only_when_a_listener_may_read_them():
    """ember's progress bar never reads on_train_batch_end's outputs; a subclass that overrides the hook may."""
    from ember.callbacks import TQDMProgressBar
    from ember.hooks import HookDispatcher

    seen = []

    class Reading(TQDMProgressBar):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            seen.append(outputs)
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    model = _Model()
    assert not HookDispatcher(None, model, [TQDMProgressBar()]).reads_outputs("on_train_batch_end")
    assert HookDispatcher(None, model, [Reading()]).reads_outputs("on_train_batch_end")
    trainer = L.Trainer(max_epochs=1, callbacks=[Reading()], logger=False, enable_model_summary=False,
                        enable_checkpointing=False)
    trainer.fit(model, sum_loader(4, 2))
    assert len(seen) == 2 and all(set(o) == {"loss"} and not o["loss"].requires_grad for o in seen)
