"""GradientAccumulationScheduler: how many batches each optimizer step sums, changing as training goes on.

``scheduling={epoch: n}`` is Lightning's form: from that epoch on, ``n`` batches per optimizer step.
ember adds ``interval="step"``: the keys are optimizer steps (``trainer.global_step``), so the window
can grow inside a long epoch. Either way the change lands on a window boundary (an epoch start, or the
batch after an optimizer step), and learning-rate schedulers keep stepping once per optimizer step.
"""
from __future__ import annotations

import warnings
from typing import Any

from ..hooks import is_overridden
from .callback import Callback


class GradientAccumulationScheduler(Callback):
    """Sets ``trainer.accumulate_grad_batches`` from ``scheduling`` at each epoch (or optimizer step)."""

    def __init__(self, scheduling: dict[int, int], *, interval: str = "epoch") -> None:
        if not scheduling:
            raise TypeError(f"GradientAccumulationScheduler(scheduling={scheduling!r}): the schedule is empty; "
                            "give at least one {epoch: batches} pair, e.g. {0: 1, 4: 2}.")
        unit = "Epoch" if interval == "epoch" else "Step"
        if interval not in ("epoch", "step"):
            raise ValueError(f"GradientAccumulationScheduler(interval={interval!r}) is not valid; allowed: 'epoch' "
                             "(Lightning's keys) or 'step' (keys are optimizer steps, ember's extension).")
        if any(isinstance(k, bool) or not isinstance(k, int) or k < 0 for k in scheduling):
            raise ValueError(f"GradientAccumulationScheduler(scheduling=...): {unit} should be an int greater than or "
                             f"equal to 0. Got {list(scheduling)}.")
        if any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in scheduling.values()):
            raise ValueError("GradientAccumulationScheduler(scheduling=...): Accumulation factor should be an int "
                             f"greater than 0. Got {list(scheduling.values())}.")
        # A schedule that starts later accumulates nothing until then (Lightning adds {0: 1}); the user's dict
        # is left as it was given.
        self.scheduling = {0: 1, **scheduling} if 0 not in scheduling else dict(scheduling)
        self.interval = interval
        self.epochs = sorted(self.scheduling)  # Lightning's name; the keys, steps or epochs, in order
        # One hook per mode, so the other costs nothing per batch.
        self.idle_events = ("on_train_batch_start",) if interval == "epoch" else ("on_train_epoch_start",)
        self._applied: int | None = None  # the factor this callback set last (a second fit starts from it)

    def going_to_accumulate_grad_batches(self) -> bool:
        return any(v > 1 for v in self.scheduling.values())

    def get_accumulate_grad_batches(self, epoch: int) -> int:
        """The factor for ``epoch`` (with ``interval="step"``: for the window that starts at this step)."""
        chosen = 1
        for key in self.epochs:
            if key <= epoch:
                chosen = self.scheduling[key]
        return chosen

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        from ..module import LightningModule

        if not pl_module.automatic_optimization:
            raise RuntimeError("GradientAccumulationScheduler needs automatic optimization; with "
                               "automatic_optimization=False the training_step decides when to step. Remove the "
                               "callback or switch to automatic optimization.")
        if self.going_to_accumulate_grad_batches() and any(
                is_overridden(pl_module, name, LightningModule) for name in ("optimizer_step", "optimizer_zero_grad")):
            warnings.warn("With accumulate_grad_batches > 1 an overridden LightningModule.optimizer_step or "
                          "optimizer_zero_grad runs once per optimizer step, not on every batch.", UserWarning,
                          stacklevel=2)
        if trainer.accumulate_grad_batches not in (1, self._applied):
            raise ValueError(f"Trainer(accumulate_grad_batches={trainer.accumulate_grad_batches}) was given together "
                             "with a GradientAccumulationScheduler; remove one of the two.")

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self._apply(trainer, self.get_accumulate_grad_batches(trainer.current_epoch))

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        # global_step moves only when a window closes, so inside a window (a resume into one included) this
        # gives the factor the window was opened with.
        self._apply(trainer, self.get_accumulate_grad_batches(trainer.global_step))

    def _apply(self, trainer: Any, factor: int) -> None:
        self._applied = factor
        if trainer.accumulate_grad_batches != factor:
            trainer.accumulate_grad_batches = factor
