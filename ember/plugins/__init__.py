"""Trainer plugins: ``Trainer(plugins=[...])`` accepts ``environments.SLURMEnvironment``; the rest are refused."""
from __future__ import annotations

from typing import Any

from . import environments  # noqa: F401  (L.pytorch.plugins.environments.SLURMEnvironment, as in Lightning)


def cluster_environment(plugins: Any) -> Any:
    """The ``SLURMEnvironment`` among ``plugins`` (None when there is none); any other plugin is refused by name."""
    if plugins is None:
        return None
    SLURMEnvironment = environments.SLURMEnvironment

    given = list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
    others = [p for p in given if not isinstance(p, SLURMEnvironment)]
    if others:
        names = ", ".join(type(p).__name__ if not isinstance(p, str) else repr(p) for p in others)
        raise NotImplementedError(f"Trainer(plugins=[{names}]) is not implemented in ember; the only plugin it "
                                  "accepts is ember.plugins.environments.SLURMEnvironment (SLURM auto-requeue). "
                                  "Set precision with Trainer(precision=...).")
    found = [p for p in given if isinstance(p, SLURMEnvironment)]
    if len(found) > 1:
        raise ValueError(f"Trainer(plugins=...) got {len(found)} SLURMEnvironment objects; pass one.")
    return found[0] if found else None
