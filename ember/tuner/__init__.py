"""The Tuner: a learning-rate range test (and its suggestion) and a batch-size search, before training."""
from __future__ import annotations

from typing import Any

from ..callbacks.batch_size_finder import BatchSizeFinder
from ..callbacks.lr_finder import LRFinderResult, LearningRateFinder, TunerExit, check_range_args

__all__ = ["Tuner", "LRFinderResult"]


class Tuner:
    """Wraps a Trainer: ``Tuner(trainer).lr_find(model, train_dataloaders=...)``."""

    def __init__(self, trainer: Any) -> None:
        self._trainer = trainer

    def lr_find(
        self,
        model: Any,
        train_dataloaders: Any = None,
        val_dataloaders: Any = None,
        dataloaders: Any = None,
        datamodule: Any = None,
        method: str = "fit",
        min_lr: float = 1e-8,
        max_lr: float = 1.0,
        num_training: int = 100,
        mode: str = "exponential",
        early_stop_threshold: float | None = 4.0,
        update_attr: bool = True,
        attr_name: str = "",
    ) -> LRFinderResult | None:
        """Run the range test on a copy of nothing: the model trains, then is restored exactly."""
        if method != "fit":
            raise ValueError(f"lr_find(method={method!r}) is not valid; only 'fit' is allowed.")
        if dataloaders is not None:
            raise ValueError("lr_find(dataloaders=...) is for other methods; with method='fit' pass train_dataloaders.")
        check_range_args(min_lr, max_lr, num_training, mode, early_stop_threshold)
        finder = LearningRateFinder(min_lr=min_lr, max_lr=max_lr, num_training_steps=num_training, mode=mode,
                                    early_stop_threshold=early_stop_threshold, update_attr=update_attr,
                                    attr_name=attr_name)
        self._host(finder, model, train_dataloaders, val_dataloaders, datamodule)
        return finder.optimal_lr

    def scale_batch_size(
        self,
        model: Any,
        train_dataloaders: Any = None,
        val_dataloaders: Any = None,
        dataloaders: Any = None,
        datamodule: Any = None,
        method: str = "fit",
        mode: str = "power",
        steps_per_trial: int = 3,
        init_val: int = 2,
        max_trials: int = 25,
        batch_arg_name: str = "batch_size",
        margin: float = 0.05,
        max_val: int = 8192,
    ) -> int | None:
        """The largest batch size (at most ``max_val``) that trains ``steps_per_trial`` steps without running out
        of memory; the model's ``batch_arg_name`` is set to it and everything else is put back."""
        if method != "fit":
            raise NotImplementedError(f"scale_batch_size(method={method!r}): ember searches with method='fit' only "
                                      "(the training step uses the most memory).")
        if dataloaders is not None:
            raise ValueError("scale_batch_size(dataloaders=...) is for other methods; with method='fit' the "
                             "loaders come from train_dataloader().")
        if train_dataloaders is not None and not hasattr(train_dataloaders, "train_dataloader"):
            raise ValueError("scale_batch_size cannot resize dataloaders passed in directly; build them in the "
                             f"LightningModule's or LightningDataModule's train_dataloader() from self.{batch_arg_name}.")
        finder = BatchSizeFinder(mode=mode, steps_per_trial=steps_per_trial, init_val=init_val, max_trials=max_trials,
                                 batch_arg_name=batch_arg_name, margin=margin, max_val=max_val)
        self._host(finder, model, train_dataloaders, val_dataloaders, datamodule)
        return finder.optimal_batch_size

    def _host(self, finder: Any, model: Any, train: Any, val: Any, datamodule: Any) -> None:
        """Run ``finder`` in a fit of its own that ends right after it (no sanity check, nothing trained)."""
        finder.ends_fit = True
        trainer = self._trainer
        trainer.callbacks = [finder] + trainer.callbacks
        quiet, trainer.quiet = trainer.quiet, True
        try:
            trainer.fit(model, train, val, datamodule)
        except TunerExit:
            pass
        finally:
            trainer.quiet = quiet
            trainer.callbacks = [cb for cb in trainer.callbacks if cb is not finder]
            trainer.state.fn = None
