"""Numeric precision: one autocast context, and a GradScaler only for fp16.

The loop asks this object for ``autocast()`` around forward passes,
``backward(loss)``, ``step(optimizer)`` and ``convert_input(batch)``; it
never branches on the precision itself.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, ContextManager

import torch

# Lightning's accepted spellings, mapped onto one canonical name each.
ALIASES: dict[Any, str] = {
    "32-true": "32-true", "32": "32-true", 32: "32-true",
    "64-true": "64-true", "64": "64-true", 64: "64-true",
    "16-mixed": "16-mixed", "16": "16-mixed", 16: "16-mixed",
    "bf16-mixed": "bf16-mixed", "bf16": "bf16-mixed",
    "bf16-true": "bf16-true",
    "16-true": "16-true",
}


def canonical(precision: Any) -> str:
    try:
        return ALIASES[precision]
    except (KeyError, TypeError):
        allowed = ", ".join(repr(k) for k in ALIASES)
        raise ValueError(f"Trainer(precision={precision!r}) is not known; allowed: {allowed}.") from None


def _cast_floats(batch: Any, dtype: torch.dtype) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(dtype) if batch.is_floating_point() else batch
    if isinstance(batch, dict):
        return type(batch)((k, _cast_floats(v, dtype)) for k, v in batch.items())
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):
        return type(batch)(*(_cast_floats(v, dtype) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(_cast_floats(v, dtype) for v in batch)
    return batch


class Precision:
    """Autocast, the fp16 loss scaler and whole-model dtypes for one precision setting."""

    def __init__(self, precision: Any, device_type: str) -> None:
        self.name = canonical(precision)
        self.device_type = device_type
        self.scaler: torch.amp.GradScaler | None = None
        self._autocast_dtype: torch.dtype | None = None
        self.param_dtype: torch.dtype | None = None  # "true" precisions cast the whole model
        if self.name == "16-mixed":
            if device_type == "cpu" and not _cpu_supports_fp16_autocast():
                raise RuntimeError(
                    "Trainer(precision='16-mixed') on the CPU needs torch.autocast('cpu', dtype=torch.float16), "
                    f"which torch {torch.__version__} does not support. Use precision='bf16-mixed' on the CPU."
                )
            self._autocast_dtype = torch.float16
            if device_type in ("cuda", "cpu"):
                # fp16 gradients underflow without loss scaling; bf16 has fp32's range and needs none.
                # Lightning scales on the CPU too, so the numbers match there as well.
                self.scaler = torch.amp.GradScaler(device_type)
        elif self.name == "bf16-mixed":
            self._autocast_dtype = torch.bfloat16
        elif self.name == "bf16-true":
            self.param_dtype = torch.bfloat16
        elif self.name == "16-true":
            self.param_dtype = torch.float16
        elif self.name == "64-true":
            self.param_dtype = torch.float64

    def autocast(self) -> ContextManager[Any]:
        if self._autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self._autocast_dtype)

    def convert_module(self, module: torch.nn.Module) -> torch.nn.Module:
        if self.param_dtype is not None:
            module.to(dtype=self.param_dtype)
        return module

    def convert_input(self, batch: Any) -> Any:
        if self.param_dtype is None:
            return batch
        return _cast_floats(batch, self.param_dtype)

    def backward(self, loss: torch.Tensor, backward: Callable[[torch.Tensor], None]) -> None:
        backward(self.scaler.scale(loss) if self.scaler is not None else loss)

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        """Bring fp16 gradients back to their true scale, e.g. before clipping."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer, closure: Callable[[], Any] | None = None) -> Any:
        if self.scaler is None:
            return optimizer.step(closure) if closure is not None else optimizer.step()
        if closure is not None:
            closure()
        out = self.scaler.step(optimizer)
        self.scaler.update()
        return out

    def state_dict(self) -> dict[str, Any]:
        return self.scaler.state_dict() if self.scaler is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)


def _cpu_supports_fp16_autocast() -> bool:
    try:
        with torch.autocast("cpu", dtype=torch.float16):
            return (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float16
    except (RuntimeError, AssertionError):
        return False
