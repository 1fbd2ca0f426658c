"""Public names that load their module on first use (PEP 562), so ``import ember`` stays fast.

A package lists ``{name: ".submodule"}`` and sets ``__getattr__ = lazy_exports(__name__, table)``;
``from ember.callbacks import ModelCheckpoint`` then imports only ``ember/callbacks/checkpoint.py``.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable


def lazy_exports(package: str, table: dict[str, str]) -> Callable[[str], Any]:
    def module_getattr(name: str) -> Any:
        if name in table:
            return getattr(importlib.import_module(table[name], package), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return module_getattr
