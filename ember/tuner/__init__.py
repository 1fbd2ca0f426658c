"""The Tuner: a learning-rate range test (and its suggestion) before training."""
from __future__ import annotations

from typing import Any

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
        finder.ends_fit = True
        trainer = self._trainer
        trainer.callbacks = [finder] + trainer.callbacks
        quiet, trainer.quiet = trainer.quiet, True
        try:
            trainer.fit(model, train_dataloaders, val_dataloaders, datamodule)
        except TunerExit:
            pass
        finally:
            trainer.quiet = quiet
            trainer.callbacks = [cb for cb in trainer.callbacks if cb is not finder]
            trainer.state.fn = None
        return finder.optimal_lr

    def scale_batch_size(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("Tuner.scale_batch_size is not implemented in ember.")
