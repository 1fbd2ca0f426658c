"""ModelPruning: prune weights during training with ``torch.nn.utils.prune`` (Lightning's arguments and schedule).

Pruning runs when a training epoch ends (or, with ``prune_on_train_epoch_end=False``, when a validation epoch
ends). torch keeps a pruned tensor as ``<name>_orig`` plus a ``<name>_mask`` buffer; ``make_pruning_permanent``
folds the masks into the weights when training ends, and every checkpoint is written with folded weights, so a
checkpoint loads into the plain model.
"""
from __future__ import annotations

import copy
import functools
import inspect
import logging
from collections.abc import Sequence
from typing import Any, Callable, Union

import torch
import torch.nn.utils.prune as torch_prune

from ..utilities.rank_zero import rank_zero_only
from .callback import Callback

log = logging.getLogger(__name__)

# name -> (the function that prunes one tensor, the method class global_unstructured takes)
_BUILT_IN = {
    "ln_structured": (torch_prune.ln_structured, torch_prune.LnStructured),
    "l1_unstructured": (torch_prune.l1_unstructured, torch_prune.L1Unstructured),
    "random_structured": (torch_prune.random_structured, torch_prune.RandomStructured),
    "random_unstructured": (torch_prune.random_unstructured, torch_prune.RandomUnstructured),
}

Amount = Union[int, float]


def _is_pruning_method(obj: Any) -> bool:
    return inspect.isclass(obj) and issubclass(obj, torch_prune.BasePruningMethod)


def _pruned_names(module: torch.nn.Module) -> list[str]:
    """The tensors of ``module`` (itself, not its children) that torch's pruning has re-parametrised."""
    return [name[:-len("_orig")] for name, _ in module.named_parameters(recurse=False)
            if name.endswith("_orig") and hasattr(module, name[:-len("_orig")] + "_mask")]


def _sparsity(module: torch.nn.Module, name: str) -> tuple[int, int]:
    """(pruned entries, all entries) of ``module.<name>``; an unpruned tensor counts as (0, 1)."""
    mask = getattr(module, name + "_mask", None)
    if mask is None:
        return 0, 1
    return int((mask == 0).sum().item()), mask.numel()


class ModelPruning(Callback):
    """Prune ``parameters_to_prune`` (``[(module, "weight"), ...]``; empty: every weight and bias of the model)
    by ``amount`` (a fraction, a count, or ``fn(epoch)``) whenever ``apply_pruning`` (a bool or ``fn(epoch)``)
    says so. ``pruning_fn`` is one of torch's built-in names or a ``BasePruningMethod`` subclass."""

    PARAMETER_NAMES = ("weight", "bias")

    def __init__(self, pruning_fn: Callable | str, parameters_to_prune: Sequence[tuple[torch.nn.Module, str]] = (),
                 parameter_names: list[str] | None = None, use_global_unstructured: bool = True,
                 amount: Amount | Callable[[int], Amount] = 0.5, apply_pruning: bool | Callable[[int], bool] = True,
                 make_pruning_permanent: bool = True,
                 use_lottery_ticket_hypothesis: bool | Callable[[int], bool] = True,
                 resample_parameters: bool = False, pruning_dim: int | None = None, pruning_norm: int | None = None,
                 verbose: int = 0, prune_on_train_epoch_end: bool = True) -> None:
        self._parameter_names = parameter_names or self.PARAMETER_NAMES
        for name in self._parameter_names:
            if name not in self.PARAMETER_NAMES:
                raise ValueError(f"ModelPruning(parameter_names={parameter_names!r}): {name!r} is not allowed; "
                                 f"allowed: {self.PARAMETER_NAMES}.")
        self._use_global_unstructured = use_global_unstructured
        self._global_kwargs: dict[str, Any] = {}  # dim / n for the method class global_unstructured builds
        self._pruning_method_name: str | None = None
        if isinstance(pruning_fn, str):
            pruning_fn = self._built_in(pruning_fn.lower(), pruning_dim, pruning_norm)
        elif _is_pruning_method(pruning_fn):
            if not use_global_unstructured:
                raise ValueError(f"ModelPruning(pruning_fn={pruning_fn.__name__}, use_global_unstructured=False): a "
                                 "BasePruningMethod class works only with use_global_unstructured=True.")
        else:
            raise TypeError(f"ModelPruning(pruning_fn={pruning_fn!r}): expected one of {sorted(_BUILT_IN)} or a "
                            "torch.nn.utils.prune.BasePruningMethod subclass (the class, not an instance).")
        if use_global_unstructured and pruning_fn.PRUNING_TYPE != "unstructured":
            raise ValueError(f"ModelPruning(pruning_fn={getattr(pruning_fn, '__name__', pruning_fn)!r}) prunes "
                             f"{pruning_fn.PRUNING_TYPE!r}; use_global_unstructured=True takes only 'unstructured' "
                             "methods (pass use_global_unstructured=False for structured pruning).")
        if isinstance(amount, bool) or not (isinstance(amount, (int, float)) or callable(amount)):
            raise TypeError(f"ModelPruning(amount={amount!r}): expected an int (a count), a float (a fraction) or "
                            "a function epoch -> amount.")
        if verbose not in (0, 1, 2):
            raise ValueError(f"ModelPruning(verbose={verbose!r}): allowed: 0 (silent), 1 (overall), 2 (per layer).")
        self.pruning_fn = pruning_fn
        self.amount = amount
        self._parameters_to_prune = parameters_to_prune
        self._apply_pruning = apply_pruning
        self._make_pruning_permanent = make_pruning_permanent
        self._use_lottery_ticket_hypothesis = use_lottery_ticket_hypothesis
        self._resample_parameters = resample_parameters
        self._verbose = verbose
        self._prune_on_train_epoch_end = prune_on_train_epoch_end
        # id(module) -> (a copy taken at setup, [(index in parameters_to_prune, name)]): the lottery ticket
        self._original_layers: dict[int, tuple[torch.nn.Module, list[tuple[int, str]]]] | None = None

    def _built_in(self, name: str, dim: int | None, norm: int | None) -> Any:
        if name not in _BUILT_IN:
            raise ValueError(f"ModelPruning(pruning_fn={name!r}) is not one of torch's: {sorted(_BUILT_IN)}.")
        kwargs: dict[str, Any] = {}
        if name.endswith("_structured"):
            if dim is None:
                raise ValueError(f"ModelPruning(pruning_fn={name!r}) needs pruning_dim, the dimension to prune.")
            if name == "ln_structured":
                if norm is None:
                    raise ValueError("ModelPruning(pruning_fn='ln_structured') needs pruning_norm (1, 2, ...).")
                kwargs["n"] = norm
            kwargs["dim"] = dim
        function, method = _BUILT_IN[name]
        if self._use_global_unstructured:
            self._global_kwargs = kwargs
            self._pruning_method_name = method.__name__
            return method
        self._pruning_method_name = function.__name__
        return functools.partial(function, **kwargs)

    # ---- what to prune -------------------------------------------------------------------------------------
    def filter_parameters_to_prune(self, parameters_to_prune: Sequence[tuple[torch.nn.Module, str]] = ()
                                   ) -> Sequence[tuple[torch.nn.Module, str]]:
        """Override to choose which of the (module, name) pairs get pruned."""
        return parameters_to_prune

    @staticmethod
    def sanitize_parameters_to_prune(pl_module: Any, parameters_to_prune: Sequence[tuple[torch.nn.Module, str]] = (),
                                     parameter_names: Sequence[str] = ()) -> list[tuple[torch.nn.Module, str]]:
        """Every (layer, name) of ``parameter_names`` when ``parameters_to_prune`` is empty; otherwise
        ``parameters_to_prune``, checked against the model."""
        from ..module import LightningModule

        names = parameter_names or ModelPruning.PARAMETER_NAMES
        containers = (LightningModule, torch.nn.Sequential, torch.nn.ModuleList, torch.nn.ModuleDict)
        layers = [m for m in pl_module.modules() if not isinstance(m, containers)]
        if not parameters_to_prune:
            return [(m, n) for n in names for m in layers if isinstance(getattr(m, n, None), torch.nn.Parameter)]
        if not isinstance(parameters_to_prune, (list, tuple)) or not all(
                isinstance(p, (list, tuple)) and len(p) == 2 and isinstance(p[0], torch.nn.Module)
                and isinstance(p[1], str) for p in parameters_to_prune):
            raise TypeError(f"ModelPruning(parameters_to_prune={parameters_to_prune!r}): expected a list of "
                            "(nn.Module, parameter name) pairs, or nothing to prune every weight and bias.")
        layer_ids = {id(m) for m in layers}
        missing_modules = [type(m).__name__ for m, _ in parameters_to_prune if id(m) not in layer_ids]
        missing_names = [n for m, n in parameters_to_prune if id(m) in layer_ids and not hasattr(m, n)]
        if missing_modules or missing_names:
            raise ValueError("ModelPruning(parameters_to_prune=...) names what the model does not have: modules "
                             f"{missing_modules} (not layers of {type(pl_module).__name__}), parameters "
                             f"{missing_names}.")
        return list(parameters_to_prune)

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        found = self.sanitize_parameters_to_prune(pl_module, self._parameters_to_prune, self._parameter_names)
        self._parameters_to_prune = self.filter_parameters_to_prune(found)
        if self._use_lottery_ticket_hypothesis:
            # The weights before any training: the "winning ticket" is reset to them after each pruning.
            self._original_layers = {}
            for i, (module, name) in enumerate(self._parameters_to_prune):
                entry = self._original_layers.setdefault(id(module), (copy.deepcopy(module), []))
                entry[1].append((i, name))

    # ---- pruning -------------------------------------------------------------------------------------------
    def apply_pruning(self, amount: Amount) -> None:
        """Prune ``parameters_to_prune`` by ``amount`` (globally across them, or each on its own)."""
        before = [_sparsity(m, n) for m, n in self._parameters_to_prune] if self._verbose else None
        if self._use_global_unstructured:
            accepted = set(inspect.signature(self.pruning_fn).parameters) - {"self"}
            kwargs = {k: v for k, v in {**self._global_kwargs, "amount": amount}.items() if k in accepted}
            torch_prune.global_unstructured(self._parameters_to_prune, pruning_method=self.pruning_fn, **kwargs)
        else:
            for module, name in self._parameters_to_prune:
                self.pruning_fn(module, name=name, amount=amount)
        if before is not None:
            self._log_sparsity(before, [_sparsity(m, n) for m, n in self._parameters_to_prune], amount)

    def apply_lottery_ticket_hypothesis(self) -> None:
        """Reset the weights that survived pruning to their values at setup (or, with ``resample_parameters``,
        to a fresh initialisation), keeping the masks (Frankle & Carbin, step 4)."""
        for original, names in (self._original_layers or {}).values():
            source = original
            if self._resample_parameters and callable(getattr(original, "reset_parameters", None)):
                source = copy.deepcopy(original)  # the setup copy stays for the next reset
                source.reset_parameters()
            for i, name in names:
                module = self._parameters_to_prune[i][0]
                target = getattr(module, name + "_orig", None)
                target = getattr(module, name) if target is None else target
                value = getattr(source, name)
                if isinstance(target, torch.Tensor) and isinstance(value, torch.Tensor):
                    target.data = value.data.to(target.device)

    def make_pruning_permanent(self, module: torch.nn.Module) -> None:
        """Fold every mask into its weight and drop torch's re-parametrisation, everywhere in ``module``."""
        for layer in module.modules():
            for name in _pruned_names(layer):
                torch_prune.remove(layer, name)

    def _run_pruning(self, epoch: int) -> None:
        prune_now = self._apply_pruning(epoch) if callable(self._apply_pruning) else self._apply_pruning
        amount = self.amount(epoch) if callable(self.amount) else self.amount
        if not prune_now or not amount:
            return
        self.apply_pruning(amount)
        lottery = self._use_lottery_ticket_hypothesis
        if lottery(epoch) if callable(lottery) else lottery:
            self.apply_lottery_ticket_hypothesis()

    @rank_zero_only
    def _log_sparsity(self, before: list[tuple[int, int]], after: list[tuple[int, int]], amount: Amount) -> None:
        total = sum(n for _, n in after)
        was, now = sum(z for z, _ in before), sum(z for z, _ in after)
        log.info(f"Applied `{self._pruning_method_name}`. Pruned: {was}/{total} ({was / total:.2%}) -> "
                 f"{now}/{total} ({now / total:.2%})")
        if self._verbose == 2:
            for (module, name), (z0, n0), (z1, n1) in zip(self._parameters_to_prune, before, after):
                log.info(f"Applied `{self._pruning_method_name}` to `{module!r}.{name}` with amount={amount}. "
                         f"Pruned: {z0} ({z0 / n0:.2%}) -> {z1} ({z1 / n1:.2%})")

    # ---- events --------------------------------------------------------------------------------------------
    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if self._prune_on_train_epoch_end:
            self._run_pruning(pl_module.current_epoch)

    def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if not trainer.sanity_checking and not self._prune_on_train_epoch_end:
            self._run_pruning(pl_module.current_epoch)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        if self._make_pruning_permanent:
            self.make_pruning_permanent(pl_module)

    def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        if not self._make_pruning_permanent:
            return
        # The checkpoint gets the folded weights; the live model keeps its masks and goes on training.
        weights = dict(checkpoint["state_dict"])
        for key in [k[:-len("_mask")] for k in weights if k.endswith("_mask")]:
            original, mask = weights.pop(key + "_orig"), weights.pop(key + "_mask")
            weights[key] = mask.to(dtype=original.dtype) * original
        checkpoint["state_dict"] = {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in weights.items()}
