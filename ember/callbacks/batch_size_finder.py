"""BatchSizeFinder: the largest batch size that trains without running out of memory, found when fit starts.

The search itself is ``ember.tuner.batch_size``; this callback runs it from ``on_fit_start`` (the Tuner
runs it in a fit of its own that ends right after). The batch size must live on the model, its hparams
or the datamodule, and the loaders must be built from it (``train_dataloader()``), so that each trial
can build them again at its size.
"""
from __future__ import annotations

from typing import Any

from .callback import Callback
from .lr_finder import TunerExit


class BatchSizeFinder(Callback):
    """Lightning's arguments; ``max_val`` caps the search (Lightning 2.6's keyword, also 8192 there)."""

    SUPPORTED_MODES = ("power", "binsearch")

    def __init__(self, mode: str = "power", steps_per_trial: int = 3, init_val: int = 2, max_trials: int = 25,
                 batch_arg_name: str = "batch_size", margin: float = 0.05, max_val: int = 8192) -> None:
        from ..tuner.batch_size import check_arguments

        mode = mode.lower() if isinstance(mode, str) else mode
        check_arguments(mode, steps_per_trial, init_val, max_trials, margin, max_val, where="BatchSizeFinder")
        self._mode, self._steps_per_trial, self._init_val = mode, steps_per_trial, init_val
        self._max_trials, self._batch_arg_name, self._margin, self._max_val = max_trials, batch_arg_name, margin, max_val
        self.optimal_batch_size: int | None = init_val
        self.trials: list[tuple[int, bool]] = []  # (size, fitted) in the order they ran
        self.ends_fit = False  # True: the Tuner hosts the search in a fit of its own, which ends right after it

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        self.scale_batch_size(trainer, pl_module)

    def scale_batch_size(self, trainer: Any, pl_module: Any) -> None:
        from ..tuner.batch_size import scale_batch_size

        if trainer.world_size > 1:
            raise ValueError("BatchSizeFinder does not work with a distributed strategy (each process would search "
                             "on its own); find the size on one device, then pass it to the distributed run.")
        if trainer.data.train_source is not None:
            raise ValueError("BatchSizeFinder cannot resize dataloaders passed to fit() directly; build them in "
                             "the LightningModule's or LightningDataModule's train_dataloader() from "
                             f"self.{self._batch_arg_name}.")
        self.optimal_batch_size, self.trials = scale_batch_size(
            trainer, pl_module, self._mode, self._steps_per_trial, self._init_val, self._max_trials,
            self._batch_arg_name, self._margin, self._max_val)
        if self.ends_fit:
            raise TunerExit()
