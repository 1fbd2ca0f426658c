"""Weight averaging: a running average of the weights (``torch.optim.swa_utils.AveragedModel``) next to the
model that trains.

``WeightAveraging`` is Lightning 2.6's callback: the average is updated after the optimizer steps (or the
epochs) that ``should_update`` picks, validation runs on the average, checkpoints hold the average as
their ``state_dict`` (so a loaded checkpoint *is* the averaged model) and the training weights beside it
(``current_model_state``), and when training ends the model is left holding the average.
``EMAWeightAveraging`` is the exponential moving average. ``StochasticWeightAveraging`` lives in
``swa.py``.
"""
from __future__ import annotations

import itertools
import warnings
from typing import Any

import torch

from .callback import Callback


def averaged_copy(pl_module: Any, **kwargs: Any) -> torch.optim.swa_utils.AveragedModel:
    """``AveragedModel(pl_module)`` (a deep copy), without copying the Trainer the module points to."""
    trainer = pl_module.trainer
    pl_module.trainer = None
    try:
        return torch.optim.swa_utils.AveragedModel(pl_module, **kwargs)
    finally:
        pl_module.trainer = trainer


def _tensors(module: torch.nn.Module) -> Any:
    return itertools.chain(module.parameters(), module.buffers())


class WeightAveraging(Callback):
    """Averages after every optimizer step by default; subclasses choose with ``should_update``.

    ``kwargs`` go to ``AveragedModel`` (``avg_fn``, ``multi_avg_fn``); ``use_buffers=True`` averages the
    buffers (batch-norm statistics) too.
    """

    def __init__(self, device: torch.device | str | int | None = None, use_buffers: bool = True,
                 **kwargs: Any) -> None:
        self._device = torch.device(device) if isinstance(device, str) else device
        self._use_buffers = use_buffers
        self._kwargs = kwargs
        self._average_model: torch.optim.swa_utils.AveragedModel | None = None
        self._latest_update_step = 0
        self._latest_update_epoch = -1

    @property
    def average_model(self) -> torch.optim.swa_utils.AveragedModel | None:
        return self._average_model

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        """Whether to average after optimizer step ``step_idx`` (0-based) or at the end of epoch ``epoch_idx``."""
        return step_idx is not None

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage != "fit":
            return
        from ..hooks import is_overridden
        from ..module import LightningModule

        if is_overridden(pl_module, "configure_model", LightningModule):
            # The average is a full copy, so the layers configure_model makes must exist now (no sharding).
            warnings.warn("WeightAveraging copies the whole model, so configure_model() runs now; sharded layers "
                          "are not supported and may run out of memory.", UserWarning, stacklevel=2)
            pl_module.configure_model()
        self._average_model = averaged_copy(pl_module, device=self._device or pl_module.device,
                                            use_buffers=self._use_buffers, **self._kwargs)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        # Once per optimizer step: inside an accumulation window global_step has not moved.
        if trainer.global_step > self._latest_update_step and self.should_update(step_idx=trainer.global_step - 1):
            self._average_model.update_parameters(pl_module)
            self._latest_update_step = trainer.global_step

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.current_epoch > self._latest_update_epoch and self.should_update(epoch_idx=trainer.current_epoch):
            self._average_model.update_parameters(pl_module)
            self._latest_update_epoch = trainer.current_epoch

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        for average, current in zip(_tensors(self._average_model.module), _tensors(pl_module)):
            current.data.copy_(average.data)

    def on_validation_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        if self._average_model is not None:
            self._swap(pl_module)

    def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if self._average_model is not None:
            self._swap(pl_module)

    def _swap(self, pl_module: Any) -> None:
        for average, current in zip(_tensors(self._average_model.module), _tensors(pl_module)):
            held = average.data.clone()
            average.data.copy_(current.data)
            current.data.copy_(held)

    def state_dict(self) -> dict[str, Any]:
        # Lightning keeps only the step; the epoch too makes a resume from an epoch end exact for epoch updates.
        return {"latest_update_step": self._latest_update_step, "latest_update_epoch": self._latest_update_epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._latest_update_step = state_dict["latest_update_step"]
        self._latest_update_epoch = state_dict.get("latest_update_epoch", -1)

    def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        """The average becomes ``state_dict``; the training weights and ``n_averaged`` go beside it (Lightning's
        layout, so the files move between the two)."""
        if self._average_model is None:
            return  # outside fit: the model already holds the average once training ended
        averaged = self._average_model.state_dict()
        checkpoint["current_model_state"] = checkpoint["state_dict"]
        checkpoint["state_dict"] = {k[len("module."):]: v for k, v in averaged.items() if k.startswith("module.")}
        checkpoint["averaging_state"] = {k: v for k, v in averaged.items() if not k.startswith("module.")}

    def on_load_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        if self._average_model is None:
            return  # validate/test/predict from a file: its state_dict is the average, which is what they want
        if "current_model_state" in checkpoint and "averaging_state" in checkpoint:
            self._average_model.load_state_dict(
                {**{"module." + k: v for k, v in checkpoint["state_dict"].items()}, **checkpoint["averaging_state"]})
            # The trainer loads ``state_dict`` into the model next: make that the training weights.
            checkpoint["state_dict"] = checkpoint["current_model_state"]
        else:
            warnings.warn("The checkpoint was not written with weight averaging: the average starts from its weights.",
                          UserWarning, stacklevel=2)
            self._average_model.module.load_state_dict(checkpoint["state_dict"], strict=False)


class EMAWeightAveraging(WeightAveraging):
    """An exponential moving average: ``average = decay * average + (1 - decay) * weights``.

    Updated after every ``update_every_n_steps``-th optimizer step from ``update_starting_at_step``, and/or
    at the end of every epoch from ``update_starting_at_epoch`` (Lightning 2.6's arguments).
    """

    def __init__(self, device: torch.device | str | int | None = None, use_buffers: bool = True,
                 decay: float = 0.999, update_every_n_steps: int = 1, update_starting_at_step: int | None = None,
                 update_starting_at_epoch: int | None = None, **kwargs: Any) -> None:
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMAWeightAveraging(decay={decay!r}) is not valid; allowed: a number in [0, 1].")
        if isinstance(update_every_n_steps, bool) or not isinstance(update_every_n_steps, int):
            raise ValueError(f"EMAWeightAveraging(update_every_n_steps={update_every_n_steps!r}) is not valid; "
                             "allowed: an int (0 or less: never by step).")
        super().__init__(device=device, use_buffers=use_buffers, avg_fn=torch.optim.swa_utils.get_ema_avg_fn(decay),
                         **kwargs)
        self.update_every_n_steps = update_every_n_steps
        self.update_starting_at_step = update_starting_at_step
        self.update_starting_at_epoch = update_starting_at_epoch

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        if step_idx is not None and (self.update_starting_at_step is None or step_idx >= self.update_starting_at_step) \
                and self.update_every_n_steps > 0 and step_idx % self.update_every_n_steps == 0:
            return True
        return epoch_idx is not None and self.update_starting_at_epoch is not None \
            and epoch_idx >= self.update_starting_at_epoch
