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
    has_bar = any(is_progress_bar(cb) for cb in out)
    if config.enable_progress_bar and not has_bar:
        from .progress import TQDMProgressBar

        out.append(TQDMProgressBar())
    elif not config.enable_progress_bar and has_bar:
        raise ValueError("Trainer(enable_progress_bar=False) was given together with a progress bar callback; "
                         "drop one of them.")
    if config.enable_model_summary and not any(type(cb).__name__ == "ModelSummary" for cb in out):
        from .model_summary import ModelSummary

        out.append(ModelSummary())
    # Any checkpoint callback (ModelCheckpoint subclasses included) replaces the default one, as in Lightning.
    has_checkpoint = any(is_checkpoint(cb) for cb in out)
    if config.enable_checkpointing and not has_checkpoint:
        from .checkpoint import ModelCheckpoint

        out.append(ModelCheckpoint())
    elif not config.enable_checkpointing and has_checkpoint:
        raise ValueError("Trainer(enable_checkpointing=False) was given together with a ModelCheckpoint callback; "
                         "drop one of them.")
    return checkpoints_last(out)


def is_checkpoint(cb: Any) -> bool:
    from .checkpoint import ModelCheckpoint

    return isinstance(cb, ModelCheckpoint)


def is_progress_bar(cb: Any) -> bool:
    from .progress import ProgressBar

    return isinstance(cb, ProgressBar)


def is_early_stopping(cb: Any) -> bool:
    from .early_stopping import EarlyStopping

    return isinstance(cb, EarlyStopping)


def checkpoints_last(callbacks: list[Callback]) -> list[Callback]:
    # Checkpoints run last so they save what every other callback has done this epoch.
    return [cb for cb in callbacks if not is_checkpoint(cb)] + [cb for cb in callbacks if is_checkpoint(cb)]
