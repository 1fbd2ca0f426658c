"""The callbacks a Trainer runs: the user's, plus those its settings ask for."""
from __future__ import annotations

from datetime import timedelta
from typing import Any

from .callback import Callback


def trainer_callbacks(callbacks: Any, config: Any) -> list[Callback]:
    """The user's callbacks plus the ones the settings ask for (Timer, progress bar, summary, checkpoint)."""
    user = [] if callbacks is None else [callbacks] if isinstance(callbacks, Callback) else list(callbacks)
    for cb in user:
        if not isinstance(cb, Callback):
            raise TypeError(f"Trainer(callbacks=...) must hold ember Callback objects; got {type(cb).__name__}.")
    out = list(user)
    if config.max_time is not None:
        from .timer import Timer

        # max_time is enforced by a Timer, checked after every batch (Lightning's arrangement);
        # a Timer the user passed takes precedence.
        if not any(isinstance(cb, Timer) for cb in out):
            out.append(Timer(duration=timedelta(seconds=config.max_time), interval="step"))
    _add_default(out, config.enable_progress_bar, is_progress_bar, "enable_progress_bar", "a progress bar callback",
                 lambda: _make("progress", "TQDMProgressBar"))
    if config.enable_model_summary and not any(is_model_summary(cb) for cb in out):  # RichModelSummary too
        out.append(_make("model_summary", "ModelSummary"))
    # Any checkpoint callback (ModelCheckpoint subclasses included) replaces the default one, as in Lightning.
    _add_default(out, config.enable_checkpointing, is_checkpoint, "enable_checkpointing", "a ModelCheckpoint callback",
                 lambda: _make("checkpoint", "ModelCheckpoint"))
    return checkpoints_last(out)


def _add_default(out: list[Callback], enabled: bool, given: Any, flag: str, what: str, make: Any) -> None:
    """The default callback of a Trainer flag, unless one was given; a flag set to False with one given is an error."""
    present = any(given(cb) for cb in out)
    if enabled and not present:
        out.append(make())
    elif not enabled and present:
        raise ValueError(f"Trainer({flag}=False) was given together with {what}; drop one of them.")


def _make(module: str, name: str) -> Callback:
    import importlib

    return getattr(importlib.import_module(f"{__package__}.{module}"), name)()


def is_checkpoint(cb: Any) -> bool:
    from .callback import Checkpoint

    return isinstance(cb, Checkpoint)


def is_progress_bar(cb: Any) -> bool:
    from .progress import ProgressBar

    return isinstance(cb, ProgressBar)


def is_model_summary(cb: Any) -> bool:
    from .model_summary import ModelSummary

    return isinstance(cb, ModelSummary)


def is_early_stopping(cb: Any) -> bool:
    from .early_stopping import EarlyStopping

    return isinstance(cb, EarlyStopping)


def checkpoints_last(callbacks: list[Callback]) -> list[Callback]:
    # Checkpoints run last so they save what every other callback has done this epoch.
    return [cb for cb in callbacks if not is_checkpoint(cb)] + [cb for cb in callbacks if is_checkpoint(cb)]
