"""One walk over a nested batch: dicts, lists, tuples, namedtuples and dataclasses, down to the tensors."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import torch


def apply_to_tensors(data: Any, fn: Callable[[torch.Tensor], Any], other: Callable[[Any], Any] | None = None) -> Any:
    """``data`` with ``fn`` applied to every tensor in it; other leaves go through ``other`` (or stay as they are)."""
    if isinstance(data, torch.Tensor):
        return fn(data)
    if isinstance(data, dict):
        return type(data)((k, apply_to_tensors(v, fn, other)) for k, v in data.items())
    if isinstance(data, tuple) and hasattr(data, "_fields"):  # namedtuple
        return type(data)(*(apply_to_tensors(v, fn, other) for v in data))
    if isinstance(data, (list, tuple)):
        return type(data)(apply_to_tensors(v, fn, other) for v in data)
    if dataclasses.is_dataclass(data) and not isinstance(data, type):
        changes = {f.name: apply_to_tensors(getattr(data, f.name), fn, other) for f in dataclasses.fields(data) if f.init}
        return dataclasses.replace(data, **changes)
    return other(data) if other is not None else data
