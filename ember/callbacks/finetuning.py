"""Freeze parts of a model before training and unfreeze them into the optimizer on a schedule.

``BaseFinetuning`` holds the tools (freeze, make_trainable, filter_params, unfreeze_and_add_param_group) and the
bookkeeping: the optimizer's parameter groups are remembered by parameter *name*, so that a resumed fit rebuilds
the groups the callback added before the optimizer's saved state is loaded into them. ``BackboneFinetuning`` is
the ready-made schedule for a module with a ``backbone``.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import Any, Callable, Union

import torch
from torch.nn.modules.batchnorm import _BatchNorm

from ..utilities.rank_zero import rank_zero_warn
from .callback import Callback

log = logging.getLogger(__name__)

Modules = Union[torch.nn.Module, Iterable[Any]]


def multiplicative(epoch: int) -> float:
    """BackboneFinetuning's default schedule: the backbone's lr doubles every epoch after the unfreeze."""
    return 2.0


def _direct_parameters(module: torch.nn.Module) -> list[torch.nn.Parameter]:
    # recurse=False: a parent module that owns parameters itself must not hand out its children's twice.
    return list(module.parameters(recurse=False))


def _groups_by(param_groups: list[dict[str, Any]], key_of: Callable[[Any], Any]) -> list[dict[str, Any]]:
    """Copies of the groups with every hyperparameter and ``params`` mapped through ``key_of``."""
    return [{**{k: v for k, v in group.items() if k != "params"}, "params": [key_of(p) for p in group["params"]]}
            for group in param_groups]


class BaseFinetuning(Callback):
    """Subclass it and override ``freeze_before_training(pl_module)`` (runs in ``setup``, before
    ``configure_optimizers``) and ``finetune_function(pl_module, epoch, optimizer)`` (runs when each training
    epoch starts). Build the optimizer from the trainable parameters only
    (``filter(lambda p: p.requires_grad, self.parameters())``)."""

    def __init__(self) -> None:
        # {optimizer index: [param group with parameter names instead of tensors]}; what state_dict saves.
        self._internal_optimizer_metadata: dict[int, list[dict[str, Any]]] = {}
        self._restarting = False

    def state_dict(self) -> dict[str, Any]:
        return {"internal_optimizer_metadata": self._internal_optimizer_metadata}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restarting = True
        # Very old Lightning checkpoints stored the mapping itself.
        self._internal_optimizer_metadata = state_dict.get("internal_optimizer_metadata", state_dict)

    # ---- resume: the groups must exist before the optimizer's saved state is loaded into them ----------------
    def on_load_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        # ember loads the optimizer state right after this event (Lightning does it after on_fit_start), and
        # torch refuses a state whose group count differs, so the saved groups are rebuilt here.
        saved = (checkpoint.get("callbacks") or {}).get(self.state_key)
        if saved is not None:
            self.load_state_dict(saved)
            self._restore_param_groups(trainer, pl_module)

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        self._restore_param_groups(trainer, pl_module)  # a state loaded by hand (load_state_dict) lands here

    def _restore_param_groups(self, trainer: Any, pl_module: Any) -> None:
        if not self._restarting:
            return
        self._restarting = False
        by_name = dict(pl_module.named_parameters())
        name_of = {p: n for n, p in by_name.items()}
        for index, optimizer in enumerate(trainer.optimizers):
            groups = self._internal_optimizer_metadata.get(index)
            # Already rebuilt (on_load_checkpoint, then the checkpoint's load_state_dict armed this again):
            # replacing them now would throw away the hyperparameters the optimizer state just brought back.
            if not groups or [g["params"] for g in groups] == [g["params"] for g in _groups_by(
                    optimizer.param_groups, name_of.get)]:
                continue
            configured = len(optimizer.param_groups)  # what configure_optimizers built; the rest were unfrozen
            optimizer.param_groups = _groups_by(groups, by_name.__getitem__)
            # setup() froze them again (freeze_before_training); without this they would sit in the optimizer
            # without gradients and stop training. Lightning 2.6.6 leaves them frozen on a resume.
            for group in optimizer.param_groups[configured:]:
                for param in group["params"]:
                    param.requires_grad = True

    # ---- the tools -----------------------------------------------------------------------------------------
    @staticmethod
    def flatten_modules(modules: Modules) -> list[torch.nn.Module]:
        """The leaf modules of ``modules`` (a module, a ModuleDict or any nesting of iterables), plus every parent
        module that owns parameters directly."""
        if isinstance(modules, torch.nn.ModuleDict):
            modules = modules.values()
        if isinstance(modules, Iterable):
            found = [m for item in modules for m in BaseFinetuning.flatten_modules(item)]
        else:
            found = list(modules.modules())
        return [m for m in found if next(m.children(), None) is None or _direct_parameters(m)]

    @staticmethod
    def filter_params(modules: Modules, train_bn: bool = True, requires_grad: bool = True) -> Iterator[torch.nn.Parameter]:
        """The parameters of ``modules`` whose ``requires_grad`` equals ``requires_grad``; batch-norm layers are
        skipped when ``train_bn`` is False."""
        for module in BaseFinetuning.flatten_modules(modules):
            if isinstance(module, _BatchNorm) and not train_bn:
                continue
            for param in _direct_parameters(module):
                if param.requires_grad == requires_grad:
                    yield param

    @staticmethod
    def make_trainable(modules: Modules) -> None:
        """Unfreeze every parameter of ``modules`` (batch-norm layers track running stats again)."""
        for module in BaseFinetuning.flatten_modules(modules):
            if isinstance(module, _BatchNorm):
                module.track_running_stats = True
            for param in _direct_parameters(module):
                param.requires_grad = True

    @staticmethod
    def freeze_module(module: torch.nn.Module) -> None:
        """Freeze the parameters ``module`` owns directly (a batch-norm layer stops tracking running stats)."""
        if isinstance(module, _BatchNorm):
            module.track_running_stats = False
        for param in _direct_parameters(module):
            param.requires_grad = False

    @staticmethod
    def freeze(modules: Modules, train_bn: bool = True) -> None:
        """Freeze ``modules``; with ``train_bn`` their batch-norm layers stay trainable."""
        for module in BaseFinetuning.flatten_modules(modules):
            if isinstance(module, _BatchNorm) and train_bn:
                BaseFinetuning.make_trainable(module)
            else:
                BaseFinetuning.freeze_module(module)

    @staticmethod
    def filter_on_optimizer(optimizer: torch.optim.Optimizer, params: Iterable[torch.nn.Parameter]) -> list[Any]:
        """``params`` less those the optimizer already holds (they are skipped with a warning).

        A parameter counts as held when it is the same tensor; Lightning compares values (``torch.equal``), which
        also drops a different parameter that happens to hold equal numbers (two zero-initialised biases)."""
        held = {id(p) for group in optimizer.param_groups for p in group["params"]}
        params = list(params)
        fresh = [p for p in params if id(p) not in held]
        if len(fresh) != len(params):
            rank_zero_warn(f"{len(params) - len(fresh)} of the parameters to unfreeze are already in an optimizer "
                           f"group of {type(optimizer).__name__} and are skipped. Build the optimizer from the "
                           "trainable parameters only: filter(lambda p: p.requires_grad, self.parameters()).")
        return fresh

    @staticmethod
    def unfreeze_and_add_param_group(modules: Modules, optimizer: torch.optim.Optimizer, lr: float | None = None,
                                     initial_denom_lr: float = 10.0, train_bn: bool = True) -> None:
        """Unfreeze ``modules`` and add their parameters to ``optimizer`` as a new group, with ``lr`` or, without
        one, the first group's lr divided by ``initial_denom_lr``."""
        BaseFinetuning.make_trainable(modules)
        group_lr = optimizer.param_groups[0]["lr"] / initial_denom_lr if lr is None else float(lr)
        params = BaseFinetuning.filter_on_optimizer(
            optimizer, BaseFinetuning.filter_params(modules, train_bn=train_bn, requires_grad=True))
        if params:
            optimizer.add_param_group({"params": params, "lr": group_lr})

    # ---- the schedule --------------------------------------------------------------------------------------
    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        self.freeze_before_training(pl_module)  # before configure_optimizers, which sees only what is trainable

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        name_of = {p: n for n, p in pl_module.named_parameters()}
        for index, optimizer in enumerate(trainer.optimizers):
            groups_before = len(optimizer.param_groups)
            self.finetune_function(pl_module, trainer.current_epoch, optimizer)
            groups = optimizer.param_groups
            if index not in self._internal_optimizer_metadata:
                self._internal_optimizer_metadata[index] = _groups_by(groups, name_of.__getitem__)
            elif len(groups) != groups_before:  # remember the groups this epoch added
                self._internal_optimizer_metadata[index].extend(_groups_by(groups[groups_before:], name_of.__getitem__))

    def finetune_function(self, pl_module: Any, epoch: int, optimizer: torch.optim.Optimizer) -> None:
        """Override: unfreeze what ``epoch`` should train and add it to ``optimizer``."""
        raise NotImplementedError(f"{type(self).__name__} must override finetune_function(pl_module, epoch, optimizer).")

    def freeze_before_training(self, pl_module: Any) -> None:
        """Override: freeze what the first epochs must not train."""
        raise NotImplementedError(f"{type(self).__name__} must override freeze_before_training(pl_module).")


class BackboneFinetuning(BaseFinetuning):
    """Train ``pl_module.backbone`` from ``unfreeze_backbone_at_epoch`` on, in its own parameter group.

    Its lr starts at ``backbone_initial_lr`` (default: the first group's lr times ``backbone_initial_ratio_lr``)
    and is then multiplied by ``lambda_func(epoch + 1)`` at each epoch start; with ``should_align`` it never
    passes the first group's lr.
    """

    def __init__(self, unfreeze_backbone_at_epoch: int = 10, lambda_func: Callable[[int], float] = multiplicative,
                 backbone_initial_ratio_lr: float = 10e-2, backbone_initial_lr: float | None = None,
                 should_align: bool = True, initial_denom_lr: float = 10.0, train_bn: bool = True,
                 verbose: bool = False, rounding: int = 12) -> None:
        super().__init__()
        if isinstance(unfreeze_backbone_at_epoch, bool) or not isinstance(unfreeze_backbone_at_epoch, int) \
                or unfreeze_backbone_at_epoch < 0:
            raise ValueError(f"BackboneFinetuning(unfreeze_backbone_at_epoch={unfreeze_backbone_at_epoch!r}): "
                             "expected an epoch number, an int >= 0.")
        if not callable(lambda_func):
            raise TypeError(f"BackboneFinetuning(lambda_func={lambda_func!r}): expected a function epoch -> factor.")
        self.unfreeze_backbone_at_epoch = unfreeze_backbone_at_epoch
        self.lambda_func = lambda_func
        self.backbone_initial_ratio_lr = backbone_initial_ratio_lr
        self.backbone_initial_lr = backbone_initial_lr
        self.should_align = should_align
        self.initial_denom_lr = initial_denom_lr
        self.train_bn = train_bn
        self.verbose = verbose
        self.rounding = rounding
        self.previous_backbone_lr: float | None = None

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "previous_backbone_lr": self.previous_backbone_lr}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.previous_backbone_lr = state_dict["previous_backbone_lr"]
        super().load_state_dict(state_dict)

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        if not isinstance(getattr(pl_module, "backbone", None), torch.nn.Module):
            raise ValueError(f"BackboneFinetuning needs {type(pl_module).__name__}.backbone, an nn.Module; got "
                             f"{type(getattr(pl_module, 'backbone', None)).__name__}.")
        super().on_fit_start(trainer, pl_module)

    def freeze_before_training(self, pl_module: Any) -> None:
        self.freeze(pl_module.backbone)

    def finetune_function(self, pl_module: Any, epoch: int, optimizer: torch.optim.Optimizer) -> None:
        if epoch < self.unfreeze_backbone_at_epoch:
            return
        current_lr = optimizer.param_groups[0]["lr"]
        if epoch == self.unfreeze_backbone_at_epoch:
            backbone_lr = (self.backbone_initial_lr if self.backbone_initial_lr is not None
                           else current_lr * self.backbone_initial_ratio_lr)
            self.unfreeze_and_add_param_group(pl_module.backbone, optimizer, backbone_lr, train_bn=self.train_bn,
                                              initial_denom_lr=self.initial_denom_lr)
        else:
            backbone_lr = self.lambda_func(epoch + 1) * self.previous_backbone_lr
            if self.should_align and backbone_lr > current_lr:
                backbone_lr = current_lr
            optimizer.param_groups[-1]["lr"] = backbone_lr
        self.previous_backbone_lr = backbone_lr
        if self.verbose:
            log.info(f"Current lr: {round(current_lr, self.rounding)}, "
                     f"Backbone lr: {round(backbone_lr, self.rounding)}")
