"""ember: a small, fast training loop for PyTorch with Lightning 2.x's public API.

    import ember as L          # instead of: import lightning as L

Public names load on first use, so ``import ember`` costs little more than
``import torch``.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "LightningModule": ".module",
    "LightningDataModule": ".datamodule",
    "Trainer": ".trainer",
    "Callback": ".callbacks.callback",
    "seed_everything": ".utilities.seed",
    "NonFiniteLossError": ".step",
    "compile_step": ".compile",
}
_SUBMODULES = {"callbacks", "loggers", "tuner", "utilities", "checkpoint", "runtime", "loop", "hooks", "module",
               "trainer", "datamodule", "optim", "logging", "strategies", "config", "state", "data", "step",
               "hparams", "cli", "compile", "plugins", "profilers"}

__all__ = [*_LAZY, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value  # later lookups skip this function
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'ember' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY) | _SUBMODULES)


class _PytorchAlias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Makes ``ember.pytorch[.x.y]`` the very same module objects as ``ember[.x.y]``.

    Lightning programs write ``L.pytorch.tuner.Tuner`` or
    ``from lightning.pytorch.callbacks import ...``; with the import line
    changed to ember these must resolve to ember's classes, not to copies.
    """

    _prefix = __name__ + ".pytorch"

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname == self._prefix or fullname.startswith(self._prefix + "."):
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec: Any) -> Any:
        real = __name__ + spec.name[len(self._prefix):]
        return importlib.import_module(real)

    def exec_module(self, module: Any) -> None:
        pass  # already executed under its real name


sys.meta_path.insert(0, _PytorchAlias())
pytorch = sys.modules[__name__]
sys.modules[__name__ + ".pytorch"] = pytorch
