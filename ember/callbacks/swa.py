"""StochasticWeightAveraging: average the weights at each epoch from ``swa_epoch_start`` on, under
``torch.optim.swa_utils.SWALR``, and end training with the average.

Lightning 2.6.6's arguments, checks and schedule: from the epoch ``swa_epoch_start`` (an int, 1-based,
or a fraction of ``max_epochs``) the model's scheduler is replaced by ``SWALR``, and the weights are
averaged into an ``AveragedModel`` at the start of every epoch up to the last; when training ends the
model holds the average. Validation runs on the weights that train, as in Lightning.

One difference: a model with batch norm gets its statistics recomputed for the averaged weights by
``torch.optim.swa_utils.update_bn`` over the train loader when training ends. Lightning instead adds one
epoch to ``max_epochs`` and runs forward passes through its training loop (its hooks fire and
``current_epoch`` ends one higher).
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from .callback import Callback
from .weight_averaging import averaged_copy


# The public batch-norm classes (their common base is private to torch).
_BATCH_NORMS = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d, torch.nn.SyncBatchNorm,
                torch.nn.LazyBatchNorm1d, torch.nn.LazyBatchNorm2d, torch.nn.LazyBatchNorm3d)


def _running_mean(averaged: torch.Tensor, current: torch.Tensor, n_averaged: torch.Tensor) -> torch.Tensor:
    # The arithmetic Lightning uses (AveragedModel's default lerp can differ in the last bit).
    return averaged + (current - averaged) / (n_averaged + 1)


class StochasticWeightAveraging(Callback):
    def __init__(self, swa_lrs: float | list[float], swa_epoch_start: int | float = 0.8, annealing_epochs: int = 10,
                 annealing_strategy: str = "cos", avg_fn: Callable[..., torch.Tensor] | None = None,
                 device: torch.device | str | None = torch.device("cpu")) -> None:
        start_bad = isinstance(swa_epoch_start, bool) or not isinstance(swa_epoch_start, (int, float)) or (
            swa_epoch_start < 1 if isinstance(swa_epoch_start, int) else not 0 <= swa_epoch_start <= 1)
        if start_bad:
            raise ValueError(f"StochasticWeightAveraging(swa_epoch_start={swa_epoch_start!r}) is not valid; allowed: "
                             "an int >= 1 (the epoch, counted from 1) or a float in [0, 1] (a share of max_epochs).")
        lrs = swa_lrs if isinstance(swa_lrs, list) else [swa_lrs]
        if not isinstance(swa_lrs, (float, list)) or not lrs or not all(isinstance(lr, float) and lr > 0 for lr in lrs):
            raise ValueError(f"StochasticWeightAveraging(swa_lrs={swa_lrs!r}) is not valid; allowed: a positive float "
                             "or a list of positive floats (one per parameter group).")
        if annealing_strategy not in ("cos", "linear"):
            raise ValueError(f"StochasticWeightAveraging(annealing_strategy={annealing_strategy!r}) is not valid; "
                             "allowed: 'cos', 'linear'.")
        if avg_fn is not None and not callable(avg_fn):
            raise ValueError(f"StochasticWeightAveraging(avg_fn={avg_fn!r}) is not valid; allowed: a callable "
                             "(averaged, current, n_averaged) -> tensor, or None.")
        if device is not None and not isinstance(device, (torch.device, str)):
            raise ValueError(f"StochasticWeightAveraging(device={device!r}) is not valid; allowed: a torch.device, "
                             "a str or None (the model's device).")
        self._swa_epoch_start = swa_epoch_start
        self._swa_lrs = swa_lrs
        self._annealing_epochs = annealing_epochs
        self._annealing_strategy = annealing_strategy
        self._avg_fn = avg_fn or _running_mean
        self._device = device
        self._average_model: torch.optim.swa_utils.AveragedModel | None = None
        self._swa_scheduler: Any = None
        self._scheduler_state: dict[str, Any] | None = None  # from a checkpoint: SWA had started
        self._latest_update_epoch = -1
        self._initialized = False
        self._max_epochs = -1

    @property
    def swa_start(self) -> int:
        return max(self._swa_epoch_start - 1, 0)  # 0-based

    @property
    def swa_end(self) -> float:
        return float("inf") if self._max_epochs == -1 else self._max_epochs - 1

    @property
    def average_model(self) -> torch.optim.swa_utils.AveragedModel | None:
        return self._average_model

    @property
    def n_averaged(self) -> torch.Tensor | None:
        return None if self._average_model is None else self._average_model.n_averaged

    @staticmethod
    def pl_module_contains_batch_norm(pl_module: Any) -> bool:
        return any(isinstance(m, _BATCH_NORMS) for m in pl_module.modules())

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if type(trainer.strategy).__name__.startswith("FSDP"):
            raise ValueError("StochasticWeightAveraging does not support sharded models (FSDP): the average is a "
                             "full copy of the model.")
        if stage == "fit":
            # Parameters only, as Lightning: batch-norm statistics are recomputed for the average at the end.
            self._average_model = averaged_copy(pl_module, avg_fn=self._avg_fn, use_buffers=False)

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        if len(trainer.optimizers) != 1:
            raise ValueError(f"StochasticWeightAveraging works with one optimizer; configure_optimizers() returned "
                             f"{len(trainer.optimizers)}.")
        if len(trainer.lr_scheduler_configs) > 1:
            raise ValueError(f"StochasticWeightAveraging replaces one lr scheduler at most; configure_optimizers() "
                             f"returned {len(trainer.lr_scheduler_configs)}.")
        if isinstance(self._swa_epoch_start, float):
            if trainer.max_epochs == -1:
                raise ValueError("StochasticWeightAveraging(swa_epoch_start=<a fraction>) needs max_epochs; with "
                                 "max_epochs=-1 give the epoch as an int.")
            self._swa_epoch_start = int(trainer.max_epochs * self._swa_epoch_start)
        self._max_epochs = trainer.max_epochs
        if self._scheduler_state is not None:
            trainer.lr_scheduler_configs.clear()  # resumed after SWA started: SWALR comes back instead

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        epoch = trainer.current_epoch
        if not self._initialized and self.swa_start <= epoch <= self.swa_end:
            self._start(trainer, pl_module)
        if self.swa_start <= epoch <= self.swa_end and epoch > self._latest_update_epoch:
            self._average_model.update_parameters(pl_module)  # the weights the previous epoch ended with
            self._latest_update_epoch = epoch

    def _start(self, trainer: Any, pl_module: Any) -> None:
        from ..optim import LRSchedulerConfig

        self._initialized = True
        self._average_model.to(self._device or pl_module.device)
        optimizer = trainer.optimizers[0]
        lrs = self._swa_lrs if isinstance(self._swa_lrs, list) else [self._swa_lrs] * len(optimizer.param_groups)
        for lr, group in zip(lrs, optimizer.param_groups):
            group["initial_lr"] = lr
        # Lightning's arguments, its cos start (last_epoch=max_epochs) included, so the rates agree.
        self._swa_scheduler = torch.optim.swa_utils.SWALR(
            optimizer, swa_lr=lrs, anneal_epochs=self._annealing_epochs, anneal_strategy=self._annealing_strategy,
            last_epoch=trainer.max_epochs if self._annealing_strategy == "cos" else -1)
        if self._scheduler_state is not None:
            self._swa_scheduler.load_state_dict(self._scheduler_state)
        config = LRSchedulerConfig(self._swa_scheduler)  # every epoch
        if trainer.lr_scheduler_configs:
            trainer.lr_scheduler_configs[0] = config
        else:
            trainer.lr_scheduler_configs.append(config)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        if self._average_model is None or not (trainer.current_epoch - 1 == self.swa_end or self._max_epochs == -1):
            return
        for average, current in zip(self._average_model.module.parameters(), pl_module.parameters()):
            current.detach().copy_(average.to(current.device))
        if self.pl_module_contains_batch_norm(pl_module):
            was_training = pl_module.training
            torch.optim.swa_utils.update_bn(trainer.train_dataloader, pl_module, device=pl_module.device)
            pl_module.train(was_training)

    def state_dict(self) -> dict[str, Any]:
        return {
            "n_averaged": 0 if self._average_model is None else int(self._average_model.n_averaged),
            "latest_update_epoch": self._latest_update_epoch,
            "scheduler_state": None if self._swa_scheduler is None else self._swa_scheduler.state_dict(),
            "average_model_state": None if self._average_model is None else self._average_model.module.state_dict(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._latest_update_epoch = state_dict["latest_update_epoch"]
        self._scheduler_state = state_dict["scheduler_state"]
        if self._average_model is not None and state_dict["average_model_state"] is not None:
            self._average_model.module.load_state_dict(state_dict["average_model_state"])
            self._average_model.n_averaged.fill_(state_dict["n_averaged"])

    def on_load_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        # Once SWA started, the saved schedulers are SWALR (restored from this callback's state); the fresh
        # fit has the model's own, which on_fit_start drops. Keep the trainer's check of their count happy.
        mine = (checkpoint.get("callbacks") or {}).get(self.state_key) or {}
        if mine.get("scheduler_state") is not None:
            checkpoint["lr_schedulers"] = [cfg.scheduler.state_dict() for cfg in trainer.lr_scheduler_configs]
