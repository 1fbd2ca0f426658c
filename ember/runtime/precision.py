"""Numeric precision: one autocast context, and a GradScaler only for fp16.

The step asks this object for ``autocast()`` around forward passes,
``backward_fn()``, ``optimizer_step(optimizer)`` and ``convert_input(batch)``;
it never branches on the precision itself.
"""
from __future__ import annotations

import contextlib
import os
from typing import Any, Callable, ContextManager

import torch

# Test switch (ember only): with EMBER_TEST_CPU_FP16_SCALER=1 in the environment, "16-mixed" on the CPU runs the
# real fp16 path (float16 autocast and a GradScaler("cpu")) instead of falling back to bf16 like Lightning. It exists
# so that CI, which has no GPU, runs the scaler code (unscale, skipped steps, scale updates, checkpointed state);
# users never need it, and nothing turns it on unless that exact variable is set to "1".
CPU_FP16_SCALER_ENV = "EMBER_TEST_CPU_FP16_SCALER"

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
    from ..utilities.apply import apply_to_tensors

    return apply_to_tensors(batch, lambda t: t.to(dtype) if t.is_floating_point() else t)


class Precision:
    """Autocast, the fp16 loss scaler and whole-model dtypes for one precision setting."""

    def __init__(self, precision: Any, device_type: str) -> None:
        self.name = canonical(precision)
        self.device_type = device_type
        self.scaler: torch.amp.GradScaler | None = None
        self._autocast_dtype: torch.dtype | None = None
        self.param_dtype: torch.dtype | None = None  # "true" precisions cast the whole model
        cpu_fp16 = device_type == "cpu" and os.environ.get(CPU_FP16_SCALER_ENV) == "1"
        if self.name == "16-mixed" and device_type == "cpu" and not cpu_fp16:
            # Lightning 2.6 does not run fp16 AMP on the CPU: it warns and uses bf16-mixed, so ember does too
            # (same numbers as the Lightning program).
            import warnings

            warnings.warn("Trainer(precision='16-mixed') on the CPU runs as 'bf16-mixed' (fp16 autocast is for GPUs), "
                          "as Lightning does.", UserWarning, stacklevel=3)
            self.name = "bf16-mixed"
        if self.name in ("bf16-mixed", "16-mixed") and not _autocast_supported(device_type, self.name):
            raise RuntimeError(
                f"Trainer(precision={self.name!r}) needs torch.autocast({device_type!r}) with "
                f"{'bfloat16' if self.name == 'bf16-mixed' else 'float16'}, which torch {torch.__version__} does not "
                f"support on this machine. Use precision='32-true'."
            )
        if self.name == "16-mixed":
            self._autocast_dtype = torch.float16
            if device_type in ("cuda", "mps") or cpu_fp16:
                # fp16 gradients underflow without loss scaling; bf16 has fp32's range and needs none.
                self.scaler = torch.amp.GradScaler(device_type)
        elif self.name == "bf16-mixed":
            self._autocast_dtype = torch.bfloat16
        elif self.name == "bf16-true":
            self.param_dtype = torch.bfloat16
        elif self.name == "16-true":
            self.param_dtype = torch.float16
        elif self.name == "64-true":
            self.param_dtype = torch.float64

    # Lightning's trainer.precision is the setting's name ("32-true"); this object compares and prints as it.
    def __eq__(self, other: object) -> bool:
        if isinstance(other, (str, int)):
            try:
                return canonical(other) == self.name
            except ValueError:
                return False
        return self is other

    def __hash__(self) -> int:
        return hash(self.name)

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"Precision({self.name!r})"

    @property
    def has_forward_context(self) -> bool:
        """Whether ``autocast()`` does anything; when not, the loop skips entering it."""
        return self._autocast_dtype is not None or self.param_dtype is not None

    def autocast(self) -> ContextManager[Any]:
        """The context the steps run in: autocast for the mixed precisions; for the "true" ones the
        default dtype becomes the model's, so tensors made inside a step match it (as in Lightning)."""
        if self._autocast_dtype is not None:
            # cache_enabled=False as Lightning: no cached weight casts kept across the step.
            return torch.autocast(self.device_type, dtype=self._autocast_dtype, cache_enabled=False)
        if self.param_dtype is not None:
            return _DefaultDtype(self.param_dtype)
        return contextlib.nullcontext()

    def convert_module(self, module: torch.nn.Module) -> torch.nn.Module:
        if self.param_dtype is not None:
            module.to(dtype=self.param_dtype)
        return module

    def convert_input(self, batch: Any) -> Any:
        if self.param_dtype is None:
            return batch
        return _cast_floats(batch, self.param_dtype)

    def backward_fn(self, backward: Callable[[torch.Tensor], None] | None = None) -> Callable[[torch.Tensor], None]:
        """The backward a step calls: ``backward`` (a module's own) or ``loss.backward()``, fp16 loss-scaled.

        Picked once per epoch, so the plain case is a bare ``Tensor.backward`` with nothing around it.
        """
        backward = backward if backward is not None else torch.Tensor.backward
        if self.scaler is None:
            return backward
        scale = self.scaler.scale
        return lambda loss: backward(scale(loss))

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        """Bring fp16 gradients back to their true scale, e.g. before clipping."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def step_fn(self, optimizer: torch.optim.Optimizer) -> Callable[[], Any]:
        """What a step without a closure calls: the optimizer's own ``step``, or the scaler's step and update."""
        if self.scaler is None:
            return optimizer.step
        return lambda: self.optimizer_step(optimizer)

    def optimizer_step(self, optimizer: torch.optim.Optimizer, closure: Callable[[], Any] | None = None,
                       skipped: bool = False) -> Any:
        """``optimizer.step()``; with the fp16 scaler, a step it skips on inf gradients and a scale update.

        ``skipped``: training_step returned None for this batch; fp16 then leaves the optimizer alone (Lightning).
        """
        if self.scaler is None:
            return optimizer.step(closure) if closure is not None else optimizer.step()
        if closure is not None:
            closure()
        elif skipped:
            return None
        out = self.scaler.step(optimizer)
        self.scaler.update()
        return out

    def state_dict(self) -> dict[str, Any]:
        return self.scaler.state_dict() if self.scaler is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)


def _autocast_supported(device_type: str, name: str) -> bool:
    """Whether torch can autocast to this precision's dtype on ``device_type`` (checked once, at Trainer init)."""
    if device_type != "cpu":
        return True  # CUDA/MPS autocast problems surface with the device's own error
    dtype = torch.bfloat16 if name == "bf16-mixed" else torch.float16
    try:
        with torch.autocast("cpu", dtype=dtype):
            return (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == dtype
    except (RuntimeError, AssertionError):
        return False


class _DefaultDtype:
    """Set torch's default floating dtype inside a ``with`` block and put the old one back after."""

    def __init__(self, dtype: torch.dtype) -> None:
        self._dtype = dtype
        self._saved = torch.get_default_dtype()

    def __enter__(self) -> None:
        self._saved = torch.get_default_dtype()
        torch.set_default_dtype(self._dtype)

    def __exit__(self, *exc: Any) -> None:
        torch.set_default_dtype(self._saved)
