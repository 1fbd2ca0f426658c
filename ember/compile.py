"""``torch.compile`` with ember: a module the user compiled, and ember's own compiled step.

Two ways in, one mechanism:

- ``trainer.fit(torch.compile(model))``: the Trainer trains the LightningModule inside the
  ``OptimizedModule`` (``unwrap_compiled``), as Lightning does, so checkpoints hold the module's own
  keys (no ``_orig_mod.``) and load into an uncompiled model. The user's compiler settings are kept:
  ``forward`` and the step methods run through them.
- ``ember.compile_step(model, backend=..., ...)`` compiles the step methods (``training_step`` by
  default) of a module that is not compiled as a whole.

Either way ``self.log`` stays outside the graph (Lightning #17283): while a compiled step runs,
``module.log`` is shadowed by a recorder that only appends ``(name, value, kwargs)`` to a list (which
dynamo traces without a graph break), and the real ``self.log`` replays the calls once the compiled
step has returned, on ordinary tensors.
"""
from __future__ import annotations

import sys
from typing import Any, Callable

STEP_METHODS = ("training_step", "validation_step", "test_step", "predict_step")
COMPILE_PREFIX = "_orig_mod."  # what torch.compile's wrapper puts before every state_dict key


class LogCapture:
    """Holds back a module's ``self.log`` calls while a step runs, to replay (or combine) them afterwards.

    Entering shadows the ``log`` method with an instance attribute (``record``); the class's ``log`` is
    not touched, so code outside the block pays nothing. The same recorder object is used every time, so
    a compiled step that traced it does not recompile.
    """

    def __init__(self, module: Any) -> None:
        self.module = module
        self.calls: list[tuple[str, Any, tuple, dict]] = []
        self.outer: Any = None  # an enclosing capture's recorder (a compiled step inside a microbatched one)

    def record(self, name: str, value: Any, *args: Any, **kwargs: Any) -> None:
        self.calls.append((name, value, args, kwargs))

    def __enter__(self) -> "LogCapture":
        self.calls = []
        self.outer = self.module.__dict__.get("log")
        self.module.__dict__["log"] = self.record
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.outer is None:
            self.module.__dict__.pop("log", None)
        else:
            self.module.__dict__["log"] = self.outer  # replay then feeds the enclosing capture

    def replay(self) -> None:
        """Hand every recorded call to the real ``self.log``, in order."""
        calls, self.calls = self.calls, []
        for name, value, args, kwargs in calls:
            self.module.log(name, value, *args, **kwargs)


class CompiledStep:
    """A module's step method run through a ``torch.compile`` context, with ``self.log`` replayed after it."""

    def __init__(self, module: Any, name: str, compiler: Callable[[Callable], Callable]) -> None:
        self.name = name
        self.original = getattr(type(module), name).__get__(module)  # the class's method, bound
        self.capture = LogCapture(module)
        self.compiled = compiler(self.original)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with self.capture:
            out = self.compiled(*args, **kwargs)
        self.capture.replay()
        return out


def compile_step(model: Any, steps: tuple[str, ...] | list[str] | str = ("training_step",), **compile_kwargs: Any
                 ) -> Any:
    """Compile ``model``'s step methods with ``torch.compile(**compile_kwargs)``; returns ``model``.

    ``self.log`` inside a compiled step is recorded in the graph and logged after it, so it never breaks
    the graph. ``compile_kwargs`` are ``torch.compile``'s (``backend``, ``mode``, ``fullgraph``, ``dynamic``,
    ``options``). Undo with ``ember.compile.uncompile_step(model)``.
    """
    import torch

    from .module import LightningModule

    if not isinstance(model, LightningModule):
        raise TypeError(f"compile_step(model) needs an ember.LightningModule; got {type(model).__name__}.")
    steps = (steps,) if isinstance(steps, str) else tuple(steps)
    unknown = [s for s in steps if s not in STEP_METHODS]
    if unknown or not steps:
        raise ValueError(f"compile_step(steps={steps!r}) is not valid; allowed: a non-empty list of {STEP_METHODS}.")
    unknown_kwargs = set(compile_kwargs) - {"backend", "mode", "fullgraph", "dynamic", "options", "disable"}
    if unknown_kwargs:
        raise TypeError(f"compile_step() got {sorted(unknown_kwargs)}; allowed keywords: backend, mode, fullgraph, "
                        "dynamic, options, disable (those of torch.compile).")

    def compiler(fn: Callable) -> Callable:
        return torch.compile(fn, **compile_kwargs)

    _install(model, steps, compiler)
    return model


def uncompile_step(model: Any) -> Any:
    """Put back the step methods (and forward) that ``compile_step`` or a compiled fit replaced."""
    for name in (*STEP_METHODS, "forward"):
        if isinstance(model.__dict__.get(name), (CompiledStep, _CompiledForward)):
            del model.__dict__[name]
    return model


def _install(module: Any, steps: tuple[str, ...], compiler: Callable[[Callable], Callable]) -> None:
    for name in steps:
        if _overrides(module, name):  # a stub left alone: the Trainer's "needs a validation_step" checks still hold
            module.__dict__[name] = CompiledStep(module, name, compiler)


def _overrides(module: Any, name: str) -> bool:
    from .hooks import is_overridden
    from .module import LightningModule

    return is_overridden(module, name, LightningModule)


class _CompiledForward:
    """``forward`` through the user's compiler settings (a marker, so a second fit does not wrap it again)."""

    def __init__(self, module: Any, compiler: Callable[[Callable], Callable]) -> None:
        self.compiled = compiler(type(module).forward.__get__(module))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.compiled(*args, **kwargs)


def unwrap_compiled(model: Any) -> Any:
    """The LightningModule inside ``torch.compile(module)``'s wrapper, compiled with the same settings.

    Anything else comes back unchanged. Like Lightning, the Trainer then works with the module itself
    (its ``state_dict`` keys, its hooks); unlike Lightning, ``self.log`` in its steps stays out of the graph.
    """
    dynamo = sys.modules.get("torch._dynamo")  # loaded already if anything was compiled; never imported here
    if dynamo is None or not isinstance(model, dynamo.eval_frame.OptimizedModule):
        return model
    # torch offers no public accessor for the wrapped module: `_orig_mod` is what torch.compile documents
    # in its error messages and what its own state_dict prefix names.
    inner = model._orig_mod
    from .module import LightningModule

    if not isinstance(inner, LightningModule):
        raise TypeError(f"The compiled model wraps a {type(inner).__name__}, not an ember.LightningModule; compile "
                        "the LightningModule itself: torch.compile(MyModule()).")
    if not isinstance(inner.__dict__.get("forward"), _CompiledForward):
        # The backend, mode and options the user chose (a torch without the attribute: torch.compile's defaults).
        compiler = getattr(model, "dynamo_ctx", None) or _default_compiler
        inner.__dict__["forward"] = _CompiledForward(inner, compiler)
        _install(inner, STEP_METHODS, compiler)
    return inner


def _default_compiler(fn: Callable) -> Callable:
    import torch

    return torch.compile(fn)


def strip_compile_prefix(state: dict[str, Any], own_keys: Any) -> dict[str, Any]:
    """A state dict saved from ``torch.compile(model)`` (keys ``_orig_mod.x``) in the keys of ``model`` itself."""
    if not state or any(k.startswith(COMPILE_PREFIX) for k in own_keys):
        return state
    if not all(k.startswith(COMPILE_PREFIX) for k in state):
        return state
    return {k[len(COMPILE_PREFIX):]: v for k, v in state.items()}
