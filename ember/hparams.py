"""Hyper-parameters: ``save_hyperparameters``, ``self.hparams`` and what loading a checkpoint needs of them.

``LightningModule`` and ``LightningDataModule`` both take ``HyperparametersMixin``;
``checkpoint.load_module_from_checkpoint`` rebuilds a module from the saved
values with ``init_kwargs``; the Trainer sends them to the loggers with
``hparams_to_log``.
"""
from __future__ import annotations

import copy
import inspect
import os
from argparse import Namespace
from contextvars import ContextVar
from typing import Any, Iterable

import torch


# Set while LightningCLI builds a model or datamodule: save_hyperparameters() then records the parsed
# config (plain values, as in config.yaml) instead of the __init__ arguments, plus "_instantiator".
GIVEN_HPARAMS: ContextVar[dict[str, Any] | None] = ContextVar("given_hparams", default=None)
# The rebuilders a checkpoint's "_instantiator" may name; Lightning's CLI checkpoints name Lightning's.
INSTANTIATORS = {"ember.cli.instantiate_module": "ember.cli.instantiate_module",
                 "lightning.pytorch.cli.instantiate_module": "ember.cli.instantiate_module",
                 "pytorch_lightning.cli.instantiate_module": "ember.cli.instantiate_module"}


class AttributeDict(dict):
    """A dict whose keys read like attributes: ``self.hparams.lr``."""

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError:
            raise AttributeError(f"hparams has no {key!r}; it has {sorted(self)}") from None

    def __setattr__(self, key: str, value: Any) -> None:
        self[key] = value


class HyperparametersMixin:
    """``save_hyperparameters()`` captures the arguments of the ``__init__`` that calls it."""

    def save_hyperparameters(self, *args: Any, ignore: str | Iterable[str] | None = None, frame: Any = None,
                             logger: bool = True) -> None:
        self._log_hyperparams = logger  # the Trainer sends them to the loggers (Lightning's default: yes)
        ignored = {ignore} if isinstance(ignore, str) else set(ignore or ())
        frame = frame or inspect.currentframe().f_back  # type: ignore[union-attr]
        given = GIVEN_HPARAMS.get()
        init_args = dict(given) if given is not None else collect_init_args(frame, type(self))
        if args and all(isinstance(a, str) for a in args):
            chosen = {k: init_args[k] for k in args if k in init_args}
        elif len(args) == 1 and isinstance(args[0], (dict, Namespace)):
            chosen = dict(vars(args[0]) if isinstance(args[0], Namespace) else args[0])
        elif args:
            raise ValueError("save_hyperparameters(*args) takes names of __init__ arguments, or one dict/Namespace; "
                             f"got {args!r}.")
        else:
            chosen = dict(init_args)
        for key in ignored:
            chosen.pop(key, None)
        self.hparams.update(chosen)
        self._hparams_initial = AttributeDict(copy.deepcopy(dict(self.hparams)))

    @property
    def hparams(self) -> AttributeDict:
        if "_hparams" not in self.__dict__:
            self.__dict__["_hparams"] = AttributeDict()
        return self.__dict__["_hparams"]

    @property
    def hparams_initial(self) -> AttributeDict:
        return AttributeDict(self.__dict__.get("_hparams_initial", {}))


def collect_init_args(frame: Any, cls: type) -> dict[str, Any]:
    """The named arguments of every ``__init__`` on the stack from ``frame`` up, outermost last wins.

    Walking up covers ``save_hyperparameters()`` called in a parent class's
    ``__init__`` reached through ``super().__init__(...)``.
    """
    collected: dict[str, Any] = {}
    chain = []
    while frame is not None and frame.f_code.co_name == "__init__":
        if not isinstance(frame.f_locals.get("self"), cls):
            break
        chain.append(frame)
        frame = frame.f_back
    for fr in reversed(chain):
        code = fr.f_code
        names = code.co_varnames[: code.co_argcount + code.co_kwonlyargcount]
        local = fr.f_locals
        for name in names:
            if name != "self" and not name.startswith("__") and name in local:
                collected[name] = local[name]
        if code.co_flags & inspect.CO_VARKEYWORDS:
            n_named = code.co_argcount + code.co_kwonlyargcount + bool(code.co_flags & inspect.CO_VARARGS)
            kw_name = code.co_varnames[n_named]
            collected.update(local.get(kw_name, {}))
            collected.pop(kw_name, None)
    return collected


def build_from_hparams(cls: type, hparams: dict[str, Any]) -> Any:
    """``cls`` from saved hyper-parameters: through the CLI's rebuilder when a LightningCLI saved them."""
    path = hparams.pop("_instantiator", None)
    if path is None:
        return cls(**init_kwargs(cls, hparams))
    if path not in INSTANTIATORS:  # an import path from a file is code to run: only known ones
        raise ValueError(f"The checkpoint's hyper-parameters name _instantiator={path!r}; ember only runs "
                         f"{sorted(INSTANTIATORS)}. Remove the key if you trust the file.")
    import importlib

    module_name, _, name = INSTANTIATORS[path].rpartition(".")
    return getattr(importlib.import_module(module_name), name)(cls, hparams)


def init_kwargs(cls: type, hparams: dict[str, Any]) -> dict[str, Any]:
    """The saved hyper-parameters that ``cls.__init__`` accepts."""
    params = inspect.signature(cls.__init__).parameters
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return hparams
    return {k: v for k, v in hparams.items() if k in params}


def read_hparams_file(path: Any) -> dict[str, Any]:
    path = os.fspath(path)
    if not path.endswith((".yaml", ".yml")):
        raise ValueError(f"hparams_file={path!r}: ember reads .yaml hyper-parameter files only.")
    import yaml  # only needed for this rarely used option

    with open(path) as fh:
        return dict(yaml.safe_load(fh) or {})


def hparams_to_log(module: Any, datamodule: Any) -> dict[str, Any] | None:
    """What the loggers receive: the module's and the datamodule's saved values (those saved with logger=True)."""
    params: dict[str, Any] | None = None
    if getattr(module, "_log_hyperparams", False):
        params = dict(module.hparams_initial)
    if datamodule is not None and getattr(datamodule, "_log_hyperparams", False):
        dm_params = dict(datamodule.hparams_initial)
        clash = [k for k in params.keys() & dm_params.keys() if not _same_value(params[k], dm_params[k])] \
            if params is not None else []
        if clash:
            raise RuntimeError(f"The hyperparameters {sorted(clash)} are saved by both the LightningModule and the "
                               "LightningDataModule with different values; rename one of them.")
        params = {**(params or {}), **dm_params}
    return params


def _same_value(a: Any, b: Any) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, torch.Tensor):
        return a is b
    try:
        return bool(a == b)
    except Exception:  # values that do not compare (arrays): only the same object counts
        return a is b
