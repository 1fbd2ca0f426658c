"""One dict that holds the whole training state, written atomically.

The layout keeps Lightning's top-level keys (``state_dict``, ``epoch``,
``global_step``, ``optimizer_states``, ``lr_schedulers``, ``callbacks``,
``hyper_parameters``) so checkpoints move between the two frameworks, and
adds an ``ember`` section with what exact resume needs: the position inside
the epoch and the RNG states.

A file is written to a temporary name in the same directory, flushed,
fsync'ed and renamed over the target, so a crash at any moment leaves either
the old complete file or the new complete one.
"""
from __future__ import annotations

import os
import pickle
import random
import sys
import tempfile
import zipfile
from typing import Any

import torch

FORMAT_VERSION = 1
# Lightning reads this key to decide how to migrate a checkpoint; ember writes
# the layout of this Lightning release.
LIGHTNING_LAYOUT_VERSION = "2.6.6"


def _ember_version() -> str:
    from . import __version__

    return __version__


# --------------------------------------------------------------------------- RNG
def capture_rng() -> dict[str, Any]:
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if "numpy" in sys.modules:  # never import numpy just to save its state
        state["numpy"] = sys.modules["numpy"].random.get_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "numpy" in state:
        import numpy

        numpy.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------- build
def dump_checkpoint(trainer: Any, weights_only: bool = False) -> dict[str, Any]:
    module = trainer.lightning_module
    ckpt: dict[str, Any] = {
        "epoch": trainer.current_epoch,
        "global_step": trainer.global_step,
        "pytorch-lightning_version": LIGHTNING_LAYOUT_VERSION,
        "state_dict": _module_state(trainer),
        "loops": None,
    }
    mid_epoch = trainer.training and trainer._batches_seen_in_epoch > 0 and not getattr(trainer, "_epoch_finished", False)
    ckpt["ember"] = {
        "version": _ember_version(),
        "format": FORMAT_VERSION,
        "batches_done_in_epoch": trainer._batches_seen_in_epoch if mid_epoch else 0,
        "mid_epoch": bool(mid_epoch),
        "accumulated": trainer._accumulated if mid_epoch else 0,
        "batches_that_stepped": trainer._batches_that_stepped,
        "total_batches_run": trainer._total_batches_run,
        "sanity_checked": True,
    }
    if not weights_only:
        ckpt["optimizer_states"] = [opt.state_dict() for opt in trainer.optimizers]
        ckpt["lr_schedulers"] = [cfg.scheduler.state_dict() for cfg in trainer.lr_scheduler_configs]
        scaler = trainer.precision.state_dict()
        if scaler:
            ckpt["native_amp_scaling_state"] = scaler
        ckpt["callbacks"] = {cb.state_key: cb.state_dict() for cb in trainer.callbacks if cb.state_dict()}
        ckpt["ember"]["rng"] = capture_rng()
        if mid_epoch and getattr(trainer, "_epoch_start_rng", None) is not None:
            ckpt["ember"]["epoch_start_rng"] = trainer._epoch_start_rng
        ckpt["ember"]["metrics"] = trainer._metrics.state_dict() if hasattr(trainer._metrics, "state_dict") else None
        loader_state = _loader_state(trainer.train_dataloader)
        if loader_state is not None:
            ckpt["ember"]["train_loader_state"] = loader_state
    if module.hparams:
        ckpt["hparams_name"] = "kwargs"
        ckpt["hyper_parameters"] = dict(module.hparams)
    dm = trainer.datamodule
    if dm is not None and getattr(dm, "_hparams", None):
        ckpt["datamodule_hparams_name"] = "kwargs"
        ckpt["datamodule_hyper_parameters"] = dict(dm.hparams)
    if dm is not None and dm.state_dict():
        ckpt[type(dm).__qualname__] = dm.state_dict()
    if not weights_only:
        trainer.hooks.call("on_save_checkpoint", ckpt)
    else:
        module.on_save_checkpoint(ckpt)
    return ckpt


def _module_state(trainer: Any) -> dict[str, Any]:
    return trainer.lightning_module.state_dict()


def _loader_state(loader: Any) -> Any:
    """A stateful dataloader or sampler (torchdata's StatefulDataLoader, say) describes its own position."""
    for obj in (loader, getattr(loader, "sampler", None), getattr(loader, "batch_sampler", None)):
        if obj is not None and callable(getattr(obj, "state_dict", None)) and callable(getattr(obj, "load_state_dict", None)):
            return {"owner": type(obj).__name__, "state": obj.state_dict()}
    return None


# --------------------------------------------------------------------------- write
def save_atomic(obj: Any, path: str) -> None:
    """torch.save to a temp file beside ``path``, fsync, then rename over it."""
    directory = os.path.dirname(os.path.abspath(path)) or "."
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".ckpt.part", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(directory)


def _fsync_dir(directory: str) -> None:
    # The rename itself is durable only once the directory entry is on disk.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- read
class CheckpointError(RuntimeError):
    """A checkpoint file cannot be used; the message names the file and why."""


def load_file(path: str, map_location: Any = None) -> dict[str, Any]:
    """Load a checkpoint, safely where possible, with a clear error for damaged or foreign files."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Checkpoint {path!r} does not exist.")
    size = os.path.getsize(path)
    if size == 0:
        raise CheckpointError(f"Checkpoint {path!r} is empty (0 bytes); it was probably cut off while being written.")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"Checkpoint {path!r} ({size} bytes) is not a torch.save archive; it is truncated or "
                              "not a checkpoint.")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as safe_err:
        # Objects beyond tensors and plain containers (e.g. a Namespace in hparams) need full unpickling,
        # which runs code from the file: only do it for files you trust.
        try:
            ckpt = torch.load(path, map_location=map_location, weights_only=False)
        except Exception as exc:
            raise CheckpointError(f"Checkpoint {path!r} could not be read: {exc}") from exc
        import warnings

        warnings.warn(f"Checkpoint {path!r} holds objects that torch.load(weights_only=True) refuses "
                      f"({str(safe_err).splitlines()[0][:160]}); it was loaded with weights_only=False. Load only "
                      "checkpoints you trust.", UserWarning, stacklevel=3)
    except (RuntimeError, EOFError, zipfile.BadZipFile) as exc:
        raise CheckpointError(f"Checkpoint {path!r} is damaged and cannot be read: {exc}") from exc
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        keys = sorted(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"Checkpoint {path!r} has no 'state_dict' (found {keys}); it is not a training checkpoint.")
    _check_version(ckpt, path)
    return ckpt


def _check_version(ckpt: dict[str, Any], path: str) -> None:
    info = ckpt.get("ember")
    if not info:
        return  # a Lightning checkpoint
    fmt = info.get("format", 1)
    if fmt > FORMAT_VERSION:
        raise CheckpointError(
            f"Checkpoint {path!r} was written by ember {info.get('version')} (format {fmt}); this ember "
            f"{_ember_version()} reads format {FORMAT_VERSION} and older. Upgrade ember to load it."
        )


def load_state_into(module: torch.nn.Module, state: dict[str, Any], path: str, strict: bool = True) -> None:
    result = module.load_state_dict(state, strict=False)
    missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
    if strict and (missing or unexpected):
        raise CheckpointError(
            f"Checkpoint {path!r} does not match {type(module).__name__}.\n"
            f"  missing keys (in the model, not the file): {missing}\n"
            f"  unexpected keys (in the file, not the model): {unexpected}\n"
            "Pass strict=False to load what matches."
        )


def load_weights_into(module: Any, path: str, strict: bool = True) -> dict[str, Any]:
    ckpt = load_file(path, map_location=module.device)
    module.on_load_checkpoint(ckpt)
    load_state_into(module, ckpt["state_dict"], path, strict)
    return ckpt


def restore_training_state(trainer: Any, path: str) -> None:
    """Put the trainer, model, optimizers and RNGs back where the checkpoint left them."""
    module = trainer.lightning_module
    ckpt = load_file(path, map_location=trainer.strategy.root_device)
    trainer.hooks.call("on_load_checkpoint", ckpt)
    load_state_into(module, ckpt["state_dict"], path)
    states = ckpt.get("optimizer_states", [])
    if len(states) != len(trainer.optimizers):
        raise CheckpointError(f"Checkpoint {path!r} holds {len(states)} optimizer state(s) but configure_optimizers() "
                              f"returned {len(trainer.optimizers)}.")
    for opt, st in zip(trainer.optimizers, states):
        opt.load_state_dict(st)
    for cfg, st in zip(trainer.lr_scheduler_configs, ckpt.get("lr_schedulers", [])):
        cfg.scheduler.load_state_dict(st)
    if "native_amp_scaling_state" in ckpt:
        trainer.precision.load_state_dict(ckpt["native_amp_scaling_state"])
    cb_states = ckpt.get("callbacks", {})
    for cb in trainer.callbacks:
        if cb.state_key in cb_states:
            cb.load_state_dict(cb_states[cb.state_key])
    info = ckpt.get("ember") or {}
    trainer.global_step = ckpt["global_step"]
    trainer.current_epoch = ckpt["epoch"]
    trainer._batches_that_stepped = info.get("batches_that_stepped", ckpt["global_step"])
    trainer._total_batches_run = info.get("total_batches_run", trainer._batches_that_stepped)
    if info.get("sanity_checked"):
        trainer.sanity_checked = True
    if info.get("mid_epoch"):
        trainer._resume_batch_idx = info["batches_done_in_epoch"]
        trainer._resume_accumulated = info.get("accumulated", 0)
        trainer._resume_epoch_rng = info.get("epoch_start_rng")
    if "rng" in info:
        trainer._resume_rng = info["rng"]
    if info.get("metrics") is not None and hasattr(trainer._metrics, "load_state_dict"):
        trainer._resume_metrics = info["metrics"]
    if "train_loader_state" in info:
        _restore_loader(trainer.train_dataloader, info["train_loader_state"])


def _restore_loader(loader: Any, saved: dict[str, Any]) -> None:
    for obj in (loader, getattr(loader, "sampler", None), getattr(loader, "batch_sampler", None)):
        if obj is not None and type(obj).__name__ == saved["owner"] and callable(getattr(obj, "load_state_dict", None)):
            obj.load_state_dict(saved["state"])
            return


def load_module_from_checkpoint(cls: type, path: Any, map_location: Any = None, strict: bool | None = None,
                                **overrides: Any) -> Any:
    path = os.fspath(path)
    ckpt = load_file(path, map_location=map_location or "cpu")
    hparams = dict(ckpt.get("hyper_parameters") or {})
    hparams.update(overrides)
    module = cls(**_init_kwargs(cls, hparams))
    module.on_load_checkpoint(ckpt)
    load_state_into(module, ckpt["state_dict"], path, strict=True if strict is None else strict)
    if map_location is not None and not callable(map_location) and not isinstance(map_location, dict):
        module.to(map_location)
    module.eval()
    return module


def _init_kwargs(cls: type, hparams: dict[str, Any]) -> dict[str, Any]:
    import inspect

    params = inspect.signature(cls.__init__).parameters
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return hparams
    return {k: v for k, v in hparams.items() if k in params}


def find_checkpoint(trainer: Any, which: str) -> str:
    """Resolve ckpt_path="last" / "best" through the checkpoint callbacks."""
    cbs = trainer.checkpoint_callbacks
    if which == "best":
        for cb in cbs:
            if getattr(cb, "best_model_path", ""):
                return cb.best_model_path
        raise ValueError('ckpt_path="best" needs a ModelCheckpoint that has saved a best checkpoint; none has.')
    candidates = []
    for cb in cbs:
        for attr in ("last_model_path", "best_model_path"):
            p = getattr(cb, attr, "")
            if p and os.path.isfile(p):
                candidates.append(p)
        dirpath = getattr(cb, "dirpath", None) or getattr(cb, "_resolved_dirpath", None)
        if dirpath and os.path.isdir(dirpath):
            candidates += [os.path.join(dirpath, f) for f in os.listdir(dirpath) if f.endswith(".ckpt")]
    if not candidates:
        raise ValueError('ckpt_path="last" found no checkpoint; none has been saved yet by a ModelCheckpoint.')
    return max(candidates, key=os.path.getmtime)
