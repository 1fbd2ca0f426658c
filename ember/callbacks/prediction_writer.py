"""BasePredictionWriter: write what ``predict_step`` returns, on every rank, as it is produced.

With several processes each rank predicts its own share of the data; a subclass writes that share
(to a file per rank, say) and can merge the files afterwards. ``batch_indices`` name the dataset
rows each batch holds, recorded as the loop draws them, so rows can be put back in order.
"""
from __future__ import annotations

from typing import Any

from .callback import Callback

_INTERVALS = ("batch", "epoch", "batch_and_epoch")


class BasePredictionWriter(Callback):
    """Override ``write_on_batch_end`` and/or ``write_on_epoch_end``; ``write_interval`` picks which run."""

    def __init__(self, write_interval: str = "batch") -> None:
        if write_interval not in _INTERVALS:
            raise ValueError(f"BasePredictionWriter(write_interval={write_interval!r}) is not valid; allowed: "
                             f"{', '.join(repr(i) for i in _INTERVALS)}.")
        self.interval = write_interval
        self._loaders: list[Any] = []
        self._indices: list[list[list[int] | None]] = []
        self._predictions: list[list[Any]] = []

    def write_on_batch_end(self, trainer: Any, pl_module: Any, prediction: Any, batch_indices: list[int] | None,
                           batch: Any, batch_idx: int, dataloader_idx: int) -> None:
        raise NotImplementedError(f"{type(self).__name__} uses write_interval={self.interval!r}; override "
                                  "write_on_batch_end.")

    def write_on_epoch_end(self, trainer: Any, pl_module: Any, predictions: list[Any],
                           batch_indices: list[Any]) -> None:
        raise NotImplementedError(f"{type(self).__name__} uses write_interval={self.interval!r}; override "
                                  "write_on_epoch_end.")

    # ---- hooks ----------------------------------------------------------------
    def on_predict_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        loaders = trainer.predict_dataloaders
        self._loaders = list(loaders) if isinstance(loaders, (list, tuple)) else [loaders]
        self._indices = [[] for _ in self._loaders]
        self._predictions = [[] for _ in self._loaders]

    def on_predict_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int,
                             dataloader_idx: int = 0) -> None:
        # The predict loader's batch sampler records the indices as the loop draws them (runtime.samplers).
        seen = getattr(getattr(self._loaders[dataloader_idx], "batch_sampler", None), "seen", None)
        batch_indices = seen[batch_idx] if seen is not None and batch_idx < len(seen) else None
        self._indices[dataloader_idx].append(batch_indices)
        if self.interval != "batch":
            self._predictions[dataloader_idx].append(outputs)
        if self.interval != "epoch":
            self.write_on_batch_end(trainer, pl_module, outputs, batch_indices, batch, batch_idx, dataloader_idx)

    def on_predict_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if self.interval == "batch":
            return
        n = len(self._predictions)
        predictions = self._predictions[0] if n == 1 else self._predictions
        self.write_on_epoch_end(trainer, pl_module, predictions, self._indices[0] if n == 1 else self._indices)
        self._predictions = []
