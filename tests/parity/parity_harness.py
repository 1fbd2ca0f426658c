"""Helpers for the parity suite: run one program under Lightning and under ember.

A parity "program" is a function ``program(L, **kw)`` whose only link to a
framework is its first argument: ``L`` is the object a Lightning user gets from
``import lightning as L``; under ember it is what ``import ember as L`` gives.
Callbacks are reached as ``L.pytorch.callbacks.X`` and loggers as
``L.pytorch.loggers.X``, which both packages spell the same way. So running a
program twice with the two modules is exactly "the same program with only its
import line changed".
"""
from __future__ import annotations

import contextlib
import io
import math
import warnings
from typing import Any, Callable

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

lightning = pytest.importorskip("lightning", reason="the parity suite needs lightning installed")
import ember  # noqa: E402

FRAMEWORKS = {"lightning": lightning, "ember": ember}


def run_both(program: Callable[..., Any], **kwargs: Any) -> tuple[Any, Any]:
    """``program`` under Lightning, then under ember; returns both results."""
    out = []
    for name in ("lightning", "ember"):
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            out.append(program(FRAMEWORKS[name], **kwargs))
    return out[0], out[1]


def quiet(tmp_path: Any, **overrides: Any) -> dict[str, Any]:
    """Trainer arguments that switch off everything a test does not look at."""
    kw = dict(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
              enable_checkpointing=False, default_root_dir=str(tmp_path))
    kw.update(overrides)
    return kw


def data(n: int = 16, d_in: int = 3, d_out: int = 1, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d_in, generator=g)
    y = x.sum(dim=1, keepdim=True).repeat(1, d_out) + 0.1 * torch.randn(n, d_out, generator=g)
    return TensorDataset(x, y)


def loader(n: int = 16, batch_size: int = 4, seed: int = 0, **kw: Any) -> DataLoader:
    return DataLoader(data(n, seed=seed), batch_size=batch_size, shuffle=False, **kw)


def weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], exact: bool = True) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        if exact:
            assert torch.equal(a[k], b[k]), f"{k}: {a[k]} != {b[k]}"
        else:
            torch.testing.assert_close(a[k], b[k], rtol=1e-6, atol=1e-7, msg=k)


def as_plain(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()}


def assert_same_metrics(a: dict[str, Any], b: dict[str, Any], rel: float = 1e-6) -> None:
    a, b = as_plain(a), as_plain(b)
    assert sorted(a) == sorted(b), f"only lightning: {sorted(set(a) - set(b))}; only ember: {sorted(set(b) - set(a))}"
    for k in a:
        if math.isnan(a[k]):
            assert math.isnan(b[k]), k
        else:
            assert b[k] == pytest.approx(a[k], rel=rel, abs=1e-7), f"{k}: lightning {a[k]} vs ember {b[k]}"


# --------------------------------------------------------------------------- hook recording
MODULE_HOOKS = (
    "configure_callbacks", "prepare_data", "setup", "teardown", "configure_model", "configure_optimizers",
    "train_dataloader", "val_dataloader", "test_dataloader", "predict_dataloader",
    "on_fit_start", "on_fit_end", "on_train_start", "on_train_end",
    "on_train_epoch_start", "on_train_epoch_end", "on_train_batch_start", "on_train_batch_end",
    "on_validation_start", "on_validation_end", "on_validation_epoch_start", "on_validation_epoch_end",
    "on_validation_batch_start", "on_validation_batch_end",
    "on_test_start", "on_test_end", "on_test_epoch_start", "on_test_epoch_end",
    "on_test_batch_start", "on_test_batch_end",
    "on_predict_start", "on_predict_end", "on_predict_epoch_start", "on_predict_epoch_end",
    "on_predict_batch_start", "on_predict_batch_end",
    "on_validation_model_eval", "on_validation_model_train", "on_validation_model_zero_grad",
    "on_test_model_eval", "on_test_model_train", "on_predict_model_eval",
    "on_before_batch_transfer", "transfer_batch_to_device", "on_after_batch_transfer",
    "training_step", "validation_step", "test_step", "predict_step",
    "optimizer_step", "optimizer_zero_grad", "backward",
    "on_before_backward", "on_after_backward", "on_before_optimizer_step", "on_before_zero_grad",
    "configure_gradient_clipping", "clip_gradients", "lr_scheduler_step",
    "on_save_checkpoint", "on_load_checkpoint",
)

CALLBACK_HOOKS = (
    "setup", "teardown", "on_fit_start", "on_fit_end", "on_sanity_check_start", "on_sanity_check_end",
    "on_train_start", "on_train_end", "on_train_epoch_start", "on_train_epoch_end",
    "on_train_batch_start", "on_train_batch_end",
    "on_validation_start", "on_validation_end", "on_validation_epoch_start", "on_validation_epoch_end",
    "on_validation_batch_start", "on_validation_batch_end",
    "on_test_start", "on_test_end", "on_test_epoch_start", "on_test_epoch_end",
    "on_test_batch_start", "on_test_batch_end",
    "on_predict_start", "on_predict_end", "on_predict_epoch_start", "on_predict_epoch_end",
    "on_predict_batch_start", "on_predict_batch_end",
    "on_before_backward", "on_after_backward", "on_before_optimizer_step", "on_before_zero_grad",
    "on_save_checkpoint", "on_load_checkpoint", "on_exception",
)


def _simple(values: Any) -> tuple:
    # Only the arguments that mean the same in both frameworks: indices, stage names, flags.
    return tuple(v for v in values if isinstance(v, (int, str, bool)) or v is None)


def _state(module: Any) -> tuple:
    trainer = module._trainer
    step = (trainer.global_step, trainer.current_epoch) if trainer is not None else (None, None)
    return ("train" if module.training else "eval", torch.is_grad_enabled(), torch.is_inference_mode_enabled(),
            *step)


def recording(base: type, calls: list, with_state: bool = True) -> type:
    """A subclass of the LightningModule class ``base`` that appends each hook call to ``calls``."""

    def wrap(name: str) -> Callable[..., Any]:
        def hook(self: Any, *args: Any, **kwargs: Any) -> Any:
            entry = (f"m.{name}", _simple(args) + _simple(kwargs.values()))
            if with_state:
                entry += (_state(self),)
            calls.append(entry)
            return getattr(super(cls, self), name)(*args, **kwargs)

        hook.__name__ = name
        return hook

    namespace = {name: wrap(name) for name in MODULE_HOOKS if hasattr(base, name)}
    cls = type(f"Recording{base.__name__}", (base,), namespace)
    return cls


def recording_callback(L: Any, calls: list) -> Any:
    """A callback that appends every event it hears to ``calls``."""

    def wrap(name: str) -> Callable[..., Any]:
        def hook(self: Any, trainer: Any, pl_module: Any, *args: Any, **kwargs: Any) -> None:
            calls.append((f"cb.{name}", _simple(args) + _simple(kwargs.values())))

        hook.__name__ = name
        return hook

    cls = type("Recorder", (L.Callback,), {name: wrap(name) for name in CALLBACK_HOOKS})
    return cls()


def first_difference(a: list, b: list) -> str:
    """A readable pointer to where two call sequences part."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            lo = max(0, i - 4)
            ctx = "\n".join(f"  {j}: L={a[j]!r}\n      E={b[j]!r}" for j in range(lo, min(i + 4, len(a), len(b))))
            return f"first difference at call {i}:\n{ctx}"
    return f"same prefix; lengths differ: lightning {len(a)}, ember {len(b)}; tail: {(a if len(a) > len(b) else b)[min(len(a), len(b)):][:6]}"


# --------------------------------------------------------------------------- a configurable boring program
def boring_class(L: Any, *, lr: float = 0.1, optimizer: str = "sgd", configure: Callable | None = None,
                 val_loaders: int = 1, test_loaders: int = 1, n_train: int = 16, batch_size: int = 4,
                 width: int = 3, **hooks: Callable) -> type:
    """A small regression LightningModule for framework ``L``; ``hooks`` add or replace methods.

    Every *_dataloader is defined on the module, so the framework decides when to call it.
    """

    class Boring(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.layer = torch.nn.Linear(width, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.layer(x)

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            x, y = batch
            loss = torch.nn.functional.mse_loss(self(x), y)
            self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=True)
            return loss

        def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
            x, y = batch
            self.log("val_loss", torch.nn.functional.mse_loss(self(x), y), prog_bar=True)

        def test_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
            x, y = batch
            self.log("test_loss", torch.nn.functional.mse_loss(self(x), y))

        def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Any:
            return self(batch[0])

        def configure_optimizers(self) -> Any:
            if configure is not None:
                return configure(self)
            if optimizer == "adam":
                return torch.optim.Adam(self.parameters(), lr=lr)
            return torch.optim.SGD(self.parameters(), lr=lr, momentum=0.9)

        def train_dataloader(self) -> Any:
            return DataLoader(data(n_train, d_in=width), batch_size=batch_size, shuffle=False)

        def val_dataloader(self) -> Any:
            loaders = [DataLoader(data(8 + 4 * i, d_in=width, seed=1 + i), batch_size=4) for i in range(val_loaders)]
            return loaders[0] if val_loaders == 1 else loaders

        def test_dataloader(self) -> Any:
            loaders = [DataLoader(data(8 + 4 * i, d_in=width, seed=5 + i), batch_size=4) for i in range(test_loaders)]
            return loaders[0] if test_loaders == 1 else loaders

        def predict_dataloader(self) -> Any:
            return DataLoader(data(8, d_in=width, seed=9), batch_size=4)

    for name, fn in hooks.items():
        setattr(Boring, name, fn)
    return Boring


def run_program(L: Any, tmp_path: Any, *, model: dict | None = None, trainer: dict | None = None,
                stage: str = "fit", record: bool = True, stage_kw: dict | None = None,
                callbacks: Callable | None = None) -> dict[str, Any]:
    """Build the boring model (recording its hooks), run ``stage`` and return what the parity tests compare."""
    calls: list = []
    cls = boring_class(L, **(model or {}))
    module = (recording(cls, calls) if record else cls)()
    cbs = [recording_callback(L, calls)] if record else []
    if callbacks is not None:
        cbs += callbacks(L)
    kw = quiet(tmp_path, max_epochs=2, callbacks=cbs)
    kw.update(trainer or {})
    t = L.Trainer(**kw)
    out = getattr(t, stage)(module, **(stage_kw or {}))
    return {"calls": calls, "weights": weights(module), "global_step": t.global_step,
            "current_epoch": t.current_epoch, "callback_metrics": as_plain(t.callback_metrics),
            "logged_metrics": as_plain(t.logged_metrics), "progress_bar_metrics": as_plain(t.progress_bar_metrics),
            "should_stop": t.should_stop, "returned": out, "trainer": t, "module": module}


def assert_same_run(a: dict[str, Any], b: dict[str, Any], exact: bool = True) -> None:
    """Same hook calls, counters, weights (bitwise unless ``exact=False``) and metric views."""
    assert a["calls"] == b["calls"], first_difference(a["calls"], b["calls"])
    assert (a["global_step"], a["current_epoch"]) == (b["global_step"], b["current_epoch"])
    assert_same_weights(a["weights"], b["weights"], exact=exact)
    for view in ("callback_metrics", "logged_metrics", "progress_bar_metrics"):
        assert_same_metrics(a[view], b[view])
