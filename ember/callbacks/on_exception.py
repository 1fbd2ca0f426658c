"""OnExceptionCheckpoint: a full checkpoint when a run fails, to resume from once the cause is fixed.

The file holds what any ``trainer.save_checkpoint`` holds (weights, optimizers, counters, the position
inside the epoch). Resuming from it redoes the batch that failed; that is exact when the failure came
before the batch's backward (an error in ``training_step``, a data error, an interrupt between batches).
A run that ends well removes the file, so a stale one never looks like a fresh failure (Lightning's rule).
"""
from __future__ import annotations

import os
import warnings
from typing import Any

from .callback import Checkpoint


class OnExceptionCheckpoint(Checkpoint):
    """Saves ``<dirpath>/<filename>.ckpt`` from ``on_exception``."""

    FILE_EXTENSION = ".ckpt"

    def __init__(self, dirpath: str | os.PathLike, filename: str = "on_exception") -> None:
        if not filename or not isinstance(filename, str):
            raise ValueError(f"OnExceptionCheckpoint(filename={filename!r}) is not valid; allowed: a non-empty "
                             "file name (without .ckpt).")
        self.dirpath = dirpath
        self.filename = filename

    @property
    def ckpt_path(self) -> str:
        return os.path.join(os.fspath(self.dirpath), self.filename + self.FILE_EXTENSION)

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        try:
            trainer.save_checkpoint(self.ckpt_path)
        except Exception as save_error:  # the run's own error is what the user must see; the save is a bonus
            warnings.warn(f"OnExceptionCheckpoint could not save {self.ckpt_path!r} after {type(exception).__name__}: "
                          f"{type(save_error).__name__}: {save_error}", UserWarning, stacklevel=2)

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        trainer.strategy.remove_checkpoint(self.ckpt_path)  # rank 0, if it exists
