"""LightningModule: an ``nn.Module`` that also holds its training code.

Every hook here is a default the Trainer falls back on; the dispatcher skips
the no-op ones, so a model pays only for the hooks it overrides.
"""
from __future__ import annotations

import contextlib
from typing import Any, Mapping

import torch
from torch import nn

from .hparams import HyperparametersMixin


def _from_trainer(name: str, default: Any) -> property:
    """``module.<name>`` is the Trainer's; without one, ``default`` (called when it is a factory like list)."""
    return property(lambda self: getattr(self._trainer, name) if self._trainer is not None
                    else default() if callable(default) else default)


class LightningModule(HyperparametersMixin, nn.Module):
    """Weights in ``__init__``, ``forward``, ``training_step``, ``configure_optimizers``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._trainer: Any = None
        self._automatic_optimization = True
        self._device = torch.device("cpu")
        self._log_hyperparams = False  # save_hyperparameters(logger=True) turns it on (Lightning's default)
        self.example_input_array: Any = None

    # ---- trainer-provided state ----------------------------------------
    @property
    def trainer(self) -> Any:
        if self._trainer is None:
            raise RuntimeError(f"{type(self).__name__} is not attached to a Trainer; call trainer.fit(model) first.")
        return self._trainer

    @trainer.setter
    def trainer(self, trainer: Any) -> None:
        self._trainer = trainer

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def dtype(self) -> torch.dtype:
        for p in self.parameters():
            return p.dtype
        return torch.get_default_dtype()

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> "LightningModule":
        # Track the device after .to()/.cuda()/.cpu() so self.device is free to read.
        out = super()._apply(fn, *args, **kwargs)
        for t in self.parameters():
            self._device = t.device
            break
        else:
            for t in self.buffers():
                self._device = t.device
                break
        return out

    # What the attached Trainer says, with the value Lightning gives a module that has none.
    current_epoch = _from_trainer("current_epoch", 0)
    global_step = _from_trainer("global_step", 0)
    global_rank = _from_trainer("global_rank", 0)
    local_rank = _from_trainer("local_rank", 0)
    logger = _from_trainer("logger", None)
    loggers = _from_trainer("loggers", list)

    @property
    def automatic_optimization(self) -> bool:
        return self._automatic_optimization

    @automatic_optimization.setter
    def automatic_optimization(self, value: bool) -> None:
        self._automatic_optimization = bool(value)

    @property
    def on_gpu(self) -> bool:
        return self.device.type == "cuda"

    def print(self, *args: Any, **kwargs: Any) -> None:
        if self._trainer is None or self._trainer.is_global_zero:
            print(*args, **kwargs)

    def all_gather(self, data: Any, group: Any = None, sync_grads: bool = False) -> Any:
        """Every rank's copy of ``data`` (a tensor or a collection of them), stacked along a new first dim.

        With one process it returns ``data`` unchanged. ``sync_grads=True`` lets gradients flow back.
        """
        if self._trainer is None:
            return data
        return self._trainer.strategy.all_gather(data, group=group, sync_grads=sync_grads)

    # ---- logging ----------------------------------------------------------
    def log(self, name: str, value: Any, prog_bar: bool = False, logger: bool | None = None,
            on_step: bool | None = None, on_epoch: bool | None = None, reduce_fx: Any = "mean",
            enable_graph: bool = False, sync_dist: bool = False, sync_dist_group: Any = None,
            add_dataloader_idx: bool = True, batch_size: int | None = None, metric_attribute: str | None = None,
            rank_zero_only: bool = False) -> None:
        """Record a metric; the Trainer decides when it reaches the logger and the progress bar."""
        trainer = self._trainer
        if trainer is None:
            return  # Lightning ignores log() outside a Trainer run as well
        # Positional: this runs once per metric per step, keyword passing would cost more than the rest.
        trainer.metric_store.log(self, name, value, prog_bar, logger, on_step, on_epoch, reduce_fx, enable_graph,
                                 sync_dist, add_dataloader_idx, batch_size)

    def log_dict(self, dictionary: Mapping[str, Any], **kwargs: Any) -> None:
        for name, value in dictionary.items():
            self.log(name, value, **kwargs)

    # ---- hyperparameters: save_hyperparameters, hparams, hparams_initial (ember.hparams) ----
    @classmethod
    def load_from_checkpoint(
        cls, checkpoint_path: Any, map_location: Any = None, hparams_file: Any = None, strict: bool | None = None,
        weights_only: bool | None = None, **kwargs: Any,
    ) -> "LightningModule":
        """Build the module from a checkpoint's hyper-parameters (overridden by ``kwargs``) and load its weights.

        Reads ember and Lightning checkpoints. ``weights_only=False`` allows files holding arbitrary
        objects (see ``ember.checkpoint.load_file``); only use it for files you trust.
        """
        from .checkpoint import load_module_from_checkpoint

        return load_module_from_checkpoint(cls, checkpoint_path, map_location=map_location, hparams_file=hparams_file,
                                           strict=strict, weights_only=weights_only, **kwargs)

    # ---- optimizers ----------------------------------------------------------
    def configure_optimizers(self) -> Any:
        raise NotImplementedError(
            f"{type(self).__name__} must define configure_optimizers() to be trained; it should return an "
            "optimizer, a list of optimizers, ([optimizers], [schedulers]), or {'optimizer': ..., 'lr_scheduler': ...}."
        )

    def optimizers(self, use_pl_optimizer: bool = True) -> Any:
        """The optimizer(s); wrapped so that ``step()`` runs the hooks, the precision and counts global_step."""
        trainer = self.trainer
        run = trainer.run_context
        # One wrapper per optimizer for the whole run (the same object on every call, as in Lightning).
        opts = run.lightning_optimizers if use_pl_optimizer and run is not None else trainer.optimizers
        return opts[0] if len(opts) == 1 else opts

    def lr_schedulers(self) -> Any:
        configs = self.trainer.lr_scheduler_configs
        if not configs:
            return None
        scheds = [c.scheduler for c in configs]
        return scheds[0] if len(scheds) == 1 else scheds

    def manual_backward(self, loss: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        """Backward for manual optimization: applies loss scaling and the backward hooks."""
        if self._automatic_optimization:
            raise RuntimeError(
                "manual_backward() is for manual optimization; set `self.automatic_optimization = False` in "
                f"{type(self).__name__}.__init__ or return the loss from training_step instead."
            )
        from .step import manual_backward

        manual_backward(self.trainer.run_context, loss, lambda t: self.backward(t, *args, **kwargs))

    def backward(self, loss: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        loss.backward(*args, **kwargs)

    def toggle_optimizer(self, optimizer: Any) -> None:
        """Freeze every parameter that ``optimizer`` does not own, remembering their flags."""
        owned = {id(p) for p in _params(_unwrap(optimizer))}
        self._toggled = {}
        for p in _params(*self.trainer.optimizers):
            # A parameter shared with the active optimizer stays trainable.
            if id(p) not in owned and id(p) not in self._toggled:
                self._toggled[id(p)], p.requires_grad = p.requires_grad, False

    def untoggle_optimizer(self, optimizer: Any) -> None:
        toggled = getattr(self, "_toggled", {})
        for p in _params(*self.trainer.optimizers):
            p.requires_grad = toggled.get(id(p), p.requires_grad)
        self._toggled = {}

    @contextlib.contextmanager
    def toggled_optimizer(self, optimizer: Any) -> Any:
        self.toggle_optimizer(optimizer)
        try:
            yield
        finally:
            self.untoggle_optimizer(optimizer)

    def clip_gradients(
        self, optimizer: Any, gradient_clip_val: float | None = None, gradient_clip_algorithm: str | None = None
    ) -> None:
        """Clip the gradients of ``optimizer``'s parameters; unset arguments fall back to the Trainer's."""
        from .optim import clip_gradients

        clip_gradients(_unwrap(optimizer), gradient_clip_val, gradient_clip_algorithm, self._trainer)

    def configure_gradient_clipping(
        self, optimizer: Any, gradient_clip_val: float | None = None, gradient_clip_algorithm: str | None = None
    ) -> None:
        self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None) -> None:
        optimizer.step(closure=optimizer_closure)

    def optimizer_zero_grad(self, epoch: int, batch_idx: int, optimizer: Any) -> None:
        optimizer.zero_grad()

    def lr_scheduler_step(self, scheduler: Any, metric: Any) -> None:
        if metric is None:
            scheduler.step()
        else:
            scheduler.step(metric)

    # ---- data movement hooks ---------------------------------------------------
    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        from .runtime.accelerator import move_to_device

        return move_to_device(batch, device)

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        return batch

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        return batch

    # ---- steps ---------------------------------------------------------------
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return super().forward(*args, **kwargs)

    def training_step(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must define training_step(batch, batch_idx) to be trained.")

    def validation_step(self, *args: Any, **kwargs: Any) -> Any:
        return None

    def test_step(self, *args: Any, **kwargs: Any) -> Any:
        return None

    def predict_step(self, batch: Any, batch_idx: int = 0, dataloader_idx: int = 0) -> Any:
        if isinstance(batch, (list, tuple)) and batch:
            batch = batch[0]
        return self(batch)

    # ---- hooks (no-ops; the dispatcher skips them unless overridden) -----------
    def configure_callbacks(self) -> Any:
        return []

    def configure_model(self) -> None: ...
    def prepare_data(self) -> None: ...
    def setup(self, stage: str) -> None: ...
    def teardown(self, stage: str) -> None: ...
    def on_fit_start(self) -> None: ...
    def on_fit_end(self) -> None: ...
    def on_train_start(self) -> None: ...
    def on_train_end(self) -> None: ...
    def on_train_epoch_start(self) -> None: ...
    def on_train_epoch_end(self) -> None: ...
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> Any: ...
    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None: ...
    def on_validation_start(self) -> None: ...
    def on_validation_end(self) -> None: ...
    def on_validation_epoch_start(self) -> None: ...
    def on_validation_epoch_end(self) -> None: ...
    def on_validation_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None: ...
    def on_validation_batch_end(self, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None: ...
    def on_test_start(self) -> None: ...
    def on_test_end(self) -> None: ...
    def on_test_epoch_start(self) -> None: ...
    def on_test_epoch_end(self) -> None: ...
    def on_test_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None: ...
    def on_test_batch_end(self, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None: ...
    def on_predict_start(self) -> None: ...
    def on_predict_end(self) -> None: ...
    def on_predict_epoch_start(self) -> None: ...
    def on_predict_epoch_end(self) -> None: ...
    def on_predict_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None: ...
    def on_predict_batch_end(self, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None: ...
    def on_before_backward(self, loss: torch.Tensor) -> None: ...
    def on_after_backward(self) -> None: ...
    def on_before_optimizer_step(self, optimizer: Any) -> None: ...
    def on_before_zero_grad(self, optimizer: Any) -> None: ...
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None: ...
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None: ...

    # The model is switched to eval/train around evaluation through these, so
    # a model that keeps e.g. dropout on during validation can override them.
    def on_validation_model_zero_grad(self) -> None:
        # Before a validation inside fit: drop the gradients so they do not hold memory meanwhile.
        self.zero_grad()

    def on_validation_model_eval(self) -> None:
        self._wrapped().eval()

    def on_validation_model_train(self) -> None:
        self._wrapped().train()

    def on_test_model_eval(self) -> None:
        self._wrapped().eval()

    def on_test_model_train(self) -> None:
        self._wrapped().train()

    def on_predict_model_eval(self) -> None:
        self._wrapped().eval()

    def _wrapped(self) -> nn.Module:
        """What forward runs through: the strategy's wrapper (DDP, FSDP) when there is one, else this module."""
        model = self.trainer.model
        return model if model is not None else self

    # ---- convenience -----------------------------------------------------------
    def freeze(self) -> None:
        for p in self.parameters():
            p.requires_grad = False
        self.eval()

    def unfreeze(self) -> None:
        for p in self.parameters():
            p.requires_grad = True
        self.train()


def _unwrap(optimizer: Any) -> torch.optim.Optimizer:
    return getattr(optimizer, "optimizer", optimizer)


def _params(*optimizers: Any) -> Any:
    return (p for opt in optimizers for group in opt.param_groups for p in group["params"])
