"""SpikeDetection: stop training when the loss jumps away from its running mean (Lightning 2.6's rule).

A batch's loss is a spike when it is not an improvement on the previous loss and it lies at least ``atol`` and
at least ``rtol`` times the mean away from the mean of the last ``window`` losses (with ``finite_only``, a NaN or
inf loss is a spike too). On a spike the batch and the one before it are appended to a JSON list of batches to
skip (``exclude_batches_path``, default ``<default_root_dir>/skip_batches.json``) and ``TrainingSpikeException``
ends the fit.
"""
from __future__ import annotations

import collections
import json
import os
from collections.abc import Mapping
from typing import Any

import torch

from .callback import Callback


class TrainingSpikeException(RuntimeError):
    """Raised by SpikeDetection when a training loss spikes."""

    def __init__(self, batch_idx: int, *args: Any) -> None:
        super().__init__(f"Training spike detected in batch {batch_idx}", *args)
        self.batch_idx = batch_idx


class SpikeDetection(Callback):
    def __init__(self, mode: str = "min", window: int = 10, warmup: int = 1, atol: float | None = None,
                 rtol: float | None = 2.0, exclude_batches_path: str | os.PathLike | None = None,
                 finite_only: bool = True) -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"SpikeDetection(mode={mode!r}): allowed: 'min' (the loss should fall), 'max'.")
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(f"SpikeDetection(window={window!r}): expected an int >= 1, the losses the mean spans.")
        if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
            raise ValueError(f"SpikeDetection(warmup={warmup!r}): expected an int >= 0, the batches not checked.")
        self.mode = mode
        self.window = window
        self.warmup = warmup
        self.atol = atol
        self.rtol = rtol
        self.exclude_batches_path = exclude_batches_path
        self.finite_only = finite_only
        self.bad_batches: list[int] = []
        self.last_val: torch.Tensor | float = 0.0
        self._recent: collections.deque[torch.Tensor] = collections.deque(maxlen=window)

    # ---- the rule -------------------------------------------------------------------------------------------
    def running_mean(self) -> torch.Tensor:
        """The mean of the last ``window`` accepted losses (NaN before the first)."""
        if not self._recent:
            return torch.tensor(float("nan"))
        return torch.stack(list(self._recent)).mean()

    def _is_spike(self, loss: torch.Tensor) -> bool:
        if self.finite_only and not bool(torch.isfinite(loss).all()):
            return True
        change = loss - self.last_val
        improved = (change <= 0).all() if self.mode == "min" else (change >= 0).all()
        if bool(improved):
            return False
        mean = self.running_mean().to(loss.device)
        distance = (loss - mean).abs()
        far_abs = self.atol is None or bool(distance >= abs(self.atol))
        far_rel = self.rtol is None or bool(distance >= (self.rtol * mean).abs())
        return far_abs and far_rel

    def _accept(self, loss: torch.Tensor) -> None:
        self._recent.append(loss.float())
        self.last_val = loss

    # ---- the event ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if isinstance(outputs, torch.Tensor):
            loss = outputs.detach()
        elif isinstance(outputs, Mapping) and isinstance(outputs.get("loss"), torch.Tensor):
            loss = outputs["loss"].detach()
        else:
            raise TypeError(f"SpikeDetection needs training_step to return the loss (a tensor or a dict with "
                            f"'loss'); got {type(outputs).__qualname__}.")
        spike = batch_idx >= self.warmup and self._is_spike(loss)
        strategy = trainer.strategy
        if strategy.reduce_boolean_decision(spike, all=False):  # one rank's spike stops every rank
            self._handle_spike(trainer, batch_idx)
        if self.finite_only or strategy.reduce_boolean_decision(bool(torch.isfinite(loss).all()), all=True):
            self._accept(loss)

    def _skip_file(self, trainer: Any) -> str:
        path = str(self.exclude_batches_path or trainer.default_root_dir)
        return path if path.endswith(".json") else os.path.join(path, "skip_batches.json")

    def _handle_spike(self, trainer: Any, batch_idx: int) -> None:
        # The batch before may have pushed the weights where this one blows up: skip both on the rerun.
        self.bad_batches.extend([batch_idx - 1, batch_idx])
        if trainer.is_global_zero:
            path = self._skip_file(trainer)
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            tmp = f"{path}.tmp"
            with open(tmp, "w") as f:  # written whole, then renamed: never a half-written list
                json.dump(self.bad_batches, f, indent=4)
            os.replace(tmp, path)
        raise TrainingSpikeException(batch_idx=batch_idx)

    # ---- resume ---------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        last = self.last_val.item() if isinstance(self.last_val, torch.Tensor) else self.last_val
        return {"last_val": last, "mode": self.mode, "warmup": self.warmup, "atol": self.atol, "rtol": self.rtol,
                "bad_batches": list(self.bad_batches), "bad_batches_path": self.exclude_batches_path,
                "recent_losses": [float(v) for v in self._recent]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.last_val = state_dict["last_val"]
        self.mode, self.warmup = state_dict["mode"], state_dict["warmup"]
        self.atol, self.rtol = state_dict["atol"], state_dict["rtol"]
        self.bad_batches = list(state_dict["bad_batches"])
        self.exclude_batches_path = state_dict["bad_batches_path"]
        # Lightning keeps the window in torchmetrics states instead; from its checkpoints the window restarts.
        self._recent = collections.deque((torch.tensor(v) for v in state_dict.get("recent_losses", [])),
                                         maxlen=self.window)
