"""One dict that holds the whole training state; atomic writes; exact resume; preemption.

The layout keeps Lightning's top-level keys (``state_dict``, ``epoch``,
``global_step``, ``optimizer_states``, ``lr_schedulers``, ``callbacks``,
``hyper_parameters``) so checkpoints move between the two frameworks, and
adds an ``ember`` section with what an exact resume needs: where in the epoch
the save happened, the RNG states, the partial gradients of an unfinished
accumulation window and the epoch accumulators of logged metrics.

Where a checkpoint can be taken, and what a resume from it does (the
position is ``FitState.position``; ``FitState.state_dict`` records it):

- between epochs: start epoch ``epoch``;
- after the batch loop of an epoch, during its closing validation or
  ``on_train_epoch_end``: finish that epoch (epoch schedulers), then start
  the next one;
- inside the batch loop, from ``on_train_batch_end`` or from a validation
  inside the epoch: reopen the epoch's iterator with the RNG it was opened
  with (the same shuffle), skip the batches already trained on, put back the
  RNG of the moment of the save, then run what was left of the saved batch
  (``loop.end_of_batch`` from the recorded phase) and go on;
- after the whole of a batch (the SIGTERM save).

Files are written to a temporary name in the same directory, fsync'ed and
renamed over the target, so a crash at any moment leaves either the old
complete file or the new complete one.
"""
from __future__ import annotations

import atexit
import contextlib
import io
import itertools
import os
import pickle
import queue
import random
import signal
import socket
import sys
import tempfile
import threading
import uuid
import warnings
import zipfile
from typing import Any, Callable, Iterator

import torch

from .state import BatchPhase, FitState, Position, ResumePoint

FORMAT_VERSION = 1
# Lightning reads this key to decide how to migrate a checkpoint; ember writes
# the layout of this Lightning release.
LIGHTNING_LAYOUT_VERSION = "2.6.6"
TMP_PREFIX = ".tmp-"
TMP_SUFFIX = ".ckpt.part"


def _ember_version() -> str:
    from . import __version__

    return __version__


# --------------------------------------------------------------------------- RNG
def loader_generators(loader: Any) -> list[torch.Generator]:
    """The explicit ``torch.Generator`` objects that decide a DataLoader's order (``generator=`` arguments)."""
    from .utilities.combined_loader import inner_loaders

    found: list[torch.Generator] = []
    for dl in inner_loaders(loader):  # several train loaders: each one's, in order
        batch_sampler = getattr(dl, "batch_sampler", None)
        for obj in (dl, getattr(dl, "sampler", None), batch_sampler, getattr(batch_sampler, "sampler", None)):
            gen = getattr(obj, "generator", None)
            if isinstance(gen, torch.Generator) and all(gen is not g for g in found):
                found.append(gen)
    return found


def capture_rng(generators: list[torch.Generator] = ()) -> dict[str, Any]:
    """Every random state a training step may draw from, as each library returns it (taken once per epoch:
    nothing is converted here; ``storable_rng`` makes it checkpoint-ready)."""
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    numpy = sys.modules.get("numpy")  # never import numpy just to save its state
    if numpy is not None:
        state["numpy"] = numpy.random.get_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if generators:
        state["generators"] = [g.get_state() for g in generators]
    return state


def storable_rng(state: dict[str, Any] | None) -> dict[str, Any] | None:
    """``capture_rng``'s result in a form ``torch.load(weights_only=True)`` accepts."""
    if state is None:
        return None
    out = dict(state)
    if isinstance(state["python"], tuple):
        version, internal, gauss = state["python"]
        # The Mersenne Twister's 625 words as one tensor: pickling them as ints costs more than the rest.
        out["python"] = {"version": version, "state": torch.tensor(internal, dtype=torch.int64), "gauss": gauss}
    if isinstance(state.get("numpy"), tuple):
        kind, keys, pos, has_gauss, cached = state["numpy"]
        out["numpy"] = {"kind": kind, "keys": torch.from_numpy(keys.astype("int64")), "pos": int(pos),
                        "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}
    return out


def restore_rng(state: dict[str, Any], generators: list[torch.Generator] = ()) -> None:
    """Put back a state from ``capture_rng`` or from a checkpoint (``storable_rng``)."""
    random.setstate(_as_python_state(state["python"]))
    torch.set_rng_state(state["torch"])
    np_state = state.get("numpy")
    if np_state is not None:
        import numpy

        if isinstance(np_state, dict):
            np_state = (np_state["kind"], np_state["keys"].numpy().astype("uint32"), np_state["pos"],
                        np_state["has_gauss"], np_state["cached_gaussian"])
        numpy.random.set_state(np_state)
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    saved = state.get("generators", [])
    if len(saved) == len(generators):
        for gen, gen_state in zip(generators, saved):
            gen.set_state(gen_state)


def _as_python_state(state: Any) -> tuple:
    if isinstance(state, dict):
        return state["version"], tuple(state["state"].tolist()), state["gauss"]
    version, internal, gauss = state  # a plain random.getstate() (torch.load makes its tuple a list)
    return version, tuple(internal), gauss


# --------------------------------------------------------------------------- build
def dump_checkpoint(trainer: Any, weights_only: bool = False) -> dict[str, Any]:
    """The whole training state as one dict (only weights, hparams and counters with ``weights_only``)."""
    module, state = trainer.lightning_module, trainer.state
    ckpt: dict[str, Any] = {
        "epoch": state.current_epoch,
        "global_step": state.global_step,
        "pytorch-lightning_version": LIGHTNING_LAYOUT_VERSION,
        "state_dict": trainer.strategy.lightning_module_state_dict(module),
        "loops": None,
    }
    info: dict[str, Any] = {"version": _ember_version(), "format": FORMAT_VERSION, **state.state_dict()}
    ckpt["ember"] = info
    if not weights_only:
        ckpt["optimizer_states"] = [trainer.strategy.optimizer_state(opt) for opt in trainer.optimizers]
        ckpt["lr_schedulers"] = [cfg.scheduler.state_dict() for cfg in trainer.lr_scheduler_configs]
        scaler = trainer.precision.state_dict()
        if scaler:
            ckpt["native_amp_scaling_state"] = scaler
        ckpt["callbacks"] = {cb.state_key: cb.state_dict() for cb in trainer.callbacks if cb.state_dict()}
        if info.get("restart_epoch") and state.epoch_start_rng is not None:
            info["rng"] = storable_rng(state.epoch_start_rng)
        else:
            info["rng"] = storable_rng(capture_rng(loader_generators(trainer.data.train_iterable)))
        if info["mid_epoch"]:
            info["epoch_start_rng"] = storable_rng(state.epoch_start_rng)
            if state.accumulated:
                # The gradients summed so far in an unfinished accumulation window.
                info["grads"] = {name: p.grad for name, p in module.named_parameters() if p.grad is not None}
        info["metrics"] = trainer.metric_store.state_dict()
        loader_state = _loader_state(trainer.data.train_iterable)
        if loader_state is not None:
            info["train_loader_state"] = loader_state
        if trainer.world_size > 1:
            # Distributed: each rank has its own RNG stream (dropout), logged values and, inside an
            # accumulation window, its own unsynced gradients; keep every rank's copy. A collective: every
            # rank builds the checkpoint, rank 0 writes it.
            mine = {k: info.get(k) for k in _PER_RANK}
            info["per_rank"] = trainer.strategy.all_gather_object(mine)
    if module.hparams:
        ckpt["hparams_name"] = "kwargs"
        ckpt["hyper_parameters"] = dict(module.hparams)
    dm = trainer.datamodule
    if dm is not None and dm.hparams:
        ckpt["datamodule_hparams_name"] = "kwargs"
        ckpt["datamodule_hyper_parameters"] = dict(dm.hparams)
    if dm is not None and dm.state_dict():
        ckpt[type(dm).__qualname__] = dm.state_dict()
    if not weights_only:
        trainer.hooks.call("on_save_checkpoint", ckpt)
    else:
        module.on_save_checkpoint(ckpt)
    return ckpt


_PER_RANK = ("rng", "epoch_start_rng", "metrics", "grads")  # what differs between ranks under DDP


def _loader_state(loader: Any) -> Any:
    """A stateful dataloader or sampler (torchdata's StatefulDataLoader, say) describes its own position."""
    for obj in _stateful_candidates(loader):
        if callable(getattr(obj, "state_dict", None)) and callable(getattr(obj, "load_state_dict", None)):
            return {"owner": type(obj).__name__, "state": obj.state_dict()}
    return None


def _stateful_candidates(loader: Any) -> list[Any]:
    batch_sampler = getattr(loader, "batch_sampler", None)
    objs = [loader, getattr(loader, "sampler", None), batch_sampler, getattr(batch_sampler, "sampler", None)]
    return [o for o in objs if o is not None]


# --------------------------------------------------------------------------- write
def save_atomic(obj: Any, path: str) -> None:
    """``torch.save`` to a temp file beside ``path``, fsync, rename over ``path``, fsync the directory.

    A crash at any moment leaves ``path`` either as it was or complete. The
    temp name carries host and pid so a later run can tell a leftover of a
    dead process from a save in progress (``remove_stale_temp_files``).

    Inside ``durable_in_background()`` the fsync and the rename happen on a
    background thread (in order, one save after the other): the caller only
    pays for serialising, and the file appears under ``path`` once it is on
    disk. ModelCheckpoint saves this way; ``Trainer.save_checkpoint`` called
    directly returns with the file in place.
    """
    directory = os.path.dirname(os.path.abspath(path)) or "."
    os.makedirs(directory, exist_ok=True)
    background = getattr(_durability, "background", False)
    if background and _tensor_bytes(obj) <= _IN_MEMORY_LIMIT:
        # Small checkpoints are serialised into memory here and written by the writer thread: creating a
        # file costs as much as serialising a small model, so the training thread skips that too.
        buffer = io.BytesIO()
        torch.save(obj, buffer)
        _finisher.submit(_write_durably, buffer, path, directory, target=path)
        return
    # A fresh name that torch.save creates, exactly like a plain torch.save(obj, path): torch's C++ writer
    # then writes the file itself (faster for large tensors than a Python file object), and no existing file
    # is truncated (ext4 flushes a file that was truncated and rewritten when it is closed).
    tmp = _temp_name(directory)
    try:
        torch.save(obj, tmp)
        if not background:
            _finisher.wait()  # earlier background saves land first
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if background:
        _finisher.submit(_make_durable, tmp, path, directory, target=path)
    else:
        _make_durable(tmp, path, directory)


_IN_MEMORY_LIMIT = 64 * 2**20  # bytes of tensors; above it, a background save writes its file in the caller


def _temp_file(directory: str) -> tuple[int, str]:
    return tempfile.mkstemp(prefix=f"{TMP_PREFIX}{socket.gethostname()}-{os.getpid()}-", suffix=TMP_SUFFIX,
                            dir=directory)


def _temp_name(directory: str) -> str:
    """A name no other save uses (host, pid and 96 random bits), for torch.save to create."""
    return os.path.join(directory, f"{TMP_PREFIX}{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:24]}"
                                   f"{TMP_SUFFIX}")


def _tensor_bytes(obj: Any) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def _write_durably(buffer: io.BytesIO, path: str, directory: str) -> None:
    fd, tmp = _temp_file(directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(buffer.getbuffer())
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _make_durable(tmp, path, directory)


def _fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# A test hook, for ember's own crash-safety tests: when set, every save calls ``save_test_hook(stage, temp_path)``
# at two moments, "written" (the temp file holds the whole checkpoint, not yet fsync'ed) and "synced" (fsync'ed,
# not yet renamed over the target), on the thread that finishes the save. tests/test_preemption.py kills the
# process from there, so a kill inside a save happens every time instead of by luck. None (no call) otherwise.
save_test_hook: Callable[[str, str], None] | None = None


def _make_durable(tmp: str, path: str, directory: str) -> None:
    try:
        if save_test_hook is not None:
            save_test_hook("written", tmp)
        _fsync_path(tmp)
        if save_test_hook is not None:
            save_test_hook("synced", tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
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


class _Finisher:
    """One background thread that runs file operations in submission order (fsync + rename, deletions)."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._lock = threading.Lock()
        self.pending_targets: dict[str, int] = {}

    def submit(self, fn: Any, *args: Any, target: str | None = None) -> None:
        self._raise_error()
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="ember-checkpoint-writer", daemon=True)
            self._thread.start()
        if target is not None:
            with self._lock:
                self.pending_targets[target] = self.pending_targets.get(target, 0) + 1
        self._queue.put((fn, args, target))

    def wait(self) -> None:
        """Block until every submitted operation is done; re-raise the first failure."""
        if self._thread is not None:
            self._queue.join()
        self._raise_error()

    def busy(self) -> bool:
        return self._queue.unfinished_tasks > 0

    def _raise_error(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise CheckpointError(f"A checkpoint could not be written: {error}") from error

    def _run(self) -> None:
        while True:
            fn, args, target = self._queue.get()
            try:
                fn(*args)
            except BaseException as exc:  # kept for the training thread to raise
                self._error = self._error or exc
            finally:
                if target is not None:
                    with self._lock:
                        self.pending_targets[target] -= 1
                        if not self.pending_targets[target]:
                            del self.pending_targets[target]
                self._queue.task_done()


_finisher = _Finisher()
_durability = threading.local()
atexit.register(lambda: _finisher.wait())  # a normal exit never drops a checkpoint in flight
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_finisher._reset)  # the writer thread does not survive a fork


@contextlib.contextmanager
def durable_in_background() -> Iterator[None]:
    """Saves inside this block return once serialised; fsync and rename follow on the writer thread."""
    previous = getattr(_durability, "background", False)
    _durability.background = True
    try:
        yield
    finally:
        _durability.background = previous


def wait_for_writes() -> None:
    """Block until every checkpoint saved in the background is on disk under its name."""
    _finisher.wait()


def after_writes(fn: Any, *args: Any) -> None:
    """Run ``fn(*args)`` once the saves queued before this call are in place (now, if none is pending).

    ModelCheckpoint deletes a replaced checkpoint, or points ``last.ckpt`` at
    a new one, this way: never before the new file exists.
    """
    if _finisher.busy():
        _finisher.submit(fn, *args)
    else:
        fn(*args)


def is_pending(path: str) -> bool:
    """Whether a background save to ``path`` has not landed yet."""
    return path in _finisher.pending_targets


def remove_stale_temp_files(directory: str) -> list[str]:
    """Delete temp files that a process on this host left behind when it died mid-save."""
    removed = []
    host = socket.gethostname()
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    for name in names:
        if not (name.startswith(TMP_PREFIX + host + "-") and name.endswith(TMP_SUFFIX)):
            continue
        pid_text = name[len(TMP_PREFIX + host + "-"):].split("-", 1)[0]
        if not pid_text.isdigit() or _pid_alive(int(pid_text)):
            continue
        with contextlib.suppress(OSError):
            os.remove(os.path.join(directory, name))
            removed.append(name)
    return removed


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --------------------------------------------------------------------------- read
class CheckpointError(RuntimeError):
    """A checkpoint file cannot be used; the message names the file and why."""


def load_file(path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
    """Load a checkpoint with a clear error for damaged, foreign, unsafe or too-new files.

    ``weights_only=None`` (the default) and ``True`` load with
    ``torch.load(weights_only=True)``, which runs no code from the file; a file
    that holds other objects (a ``Namespace`` in the hyper-parameters, say)
    needs ``weights_only=False``, which the error says.
    """
    path = os.fspath(path)
    _finisher.wait()  # a checkpoint saved in the background is read only once it is complete
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Checkpoint {path!r} does not exist.")
    size = os.path.getsize(path)
    if size == 0:
        raise CheckpointError(f"Checkpoint {path!r} is empty (0 bytes); it was probably cut off while being written.")
    _verify_archive(path, size)
    safe = weights_only is not False
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=safe)
    except pickle.UnpicklingError as exc:
        if not zipfile.is_zipfile(path):
            raise CheckpointError(f"Checkpoint {path!r} ({size} bytes) is not a torch.save archive: it is truncated, "
                                  f"damaged or not a checkpoint ({_first_line(exc)}).") from exc
        raise CheckpointError(
            f"Checkpoint {path!r} holds objects that the safe loader (torch.load(weights_only=True)) refuses: "
            f"{_first_line(exc)}\nIf you trust this file, load it with weights_only=False (e.g. "
            "Model.load_from_checkpoint(path, weights_only=False) or trainer.fit(..., ckpt_path=path, "
            "weights_only=False)); loading it that way can run code stored in the file."
        ) from exc
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as exc:
        what = "is truncated" if not zipfile.is_zipfile(path) else "is damaged"
        raise CheckpointError(f"Checkpoint {path!r} ({size} bytes) {what} and cannot be read: "
                              f"{_first_line(exc)}") from exc
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        keys = sorted(map(str, ckpt)) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"Checkpoint {path!r} has no 'state_dict' (found {keys}); it is not a training "
                              "checkpoint. A bare model.state_dict() file loads with model.load_state_dict(torch.load(path)).")
    _check_version(ckpt, path)
    return ckpt


def _verify_archive(path: str, size: int) -> None:
    """Check every record of the archive against its CRC-32: torch.load itself does not notice flipped bits."""
    if not zipfile.is_zipfile(path):
        return  # torch.load reports what it is (legacy format, truncated file, not a checkpoint)
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        raise CheckpointError(f"Checkpoint {path!r} ({size} bytes) is damaged and cannot be read: {exc}") from exc
    if bad is not None:
        raise CheckpointError(f"Checkpoint {path!r} ({size} bytes) is damaged: record {bad!r} fails its CRC-32 "
                              "check (the bytes on disk are not the ones that were saved).")


def _first_line(exc: BaseException) -> str:
    """The informative line of a torch.load error, without terminal colour codes."""
    import re

    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in str(exc).splitlines()]
    lines = [line for line in lines if line]
    for line in lines:
        if "Unsupported global" in line or "WeightsUnpickler error" in line:
            return line.split(" Please use")[0][:300]
    return lines[0][:300] if lines else type(exc).__name__


def _check_version(ckpt: dict[str, Any], path: str) -> None:
    info = ckpt.get("ember")
    if not info:
        return  # a Lightning checkpoint
    fmt = info.get("format", 1)
    if fmt > FORMAT_VERSION:
        raise CheckpointError(
            f"Checkpoint {path!r} was written by ember {info.get('version')} (checkpoint format {fmt}); this is ember "
            f"{_ember_version()}, which reads format {FORMAT_VERSION} and older. Upgrade ember to load it."
        )


def load_state_into(module: torch.nn.Module, state: dict[str, Any], path: str, strict: bool = True,
                    strategy: Any = None) -> None:
    """``module.load_state_dict`` with an error that lists what does not match (nothing is loaded then)."""
    from .compile import strip_compile_prefix

    own = module.state_dict()
    state = strip_compile_prefix(state, own)  # saved from torch.compile(model) itself
    shapes = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}" for k, v in state.items()
              if k in own and isinstance(v, torch.Tensor) and isinstance(own[k], torch.Tensor)
              and v.shape != own[k].shape]
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if shapes or strict and (missing or unexpected):
        lines = [f"Checkpoint {path!r} does not match {type(module).__name__}:"]
        if missing:
            lines.append(f"  missing keys (in the model, not in the file): {missing}")
        if unexpected:
            lines.append(f"  unexpected keys (in the file, not in the model): {unexpected}")
        if shapes:
            lines.append(f"  shape mismatches: {shapes}")
        lines.append("Pass strict=False to load the keys that match." if not shapes else
                     "Shapes must match even with strict=False; build the model with the checkpoint's hyper-parameters.")
        raise CheckpointError("\n".join(lines))
    if strategy is not None:
        strategy.load_module_state_dict(module, state)  # sharded strategies scatter here
    else:
        module.load_state_dict(state, strict=False)


def load_weights_into(module: Any, path: str, strict: bool = True, weights_only: bool | None = None) -> dict[str, Any]:
    ckpt = load_file(path, map_location=module.device, weights_only=weights_only)
    module.on_load_checkpoint(ckpt)
    load_state_into(module, ckpt["state_dict"], path, strict)
    return ckpt


def restore_training_state(trainer: Any, path: str, weights_only: bool | None = None) -> None:
    """Put the trainer, model, optimizers, schedulers and callbacks back where the checkpoint left them.

    What the fit loop must redo itself (a mid-epoch position) is left in ``trainer.state.resume`` for
    ``open_train_batches``.
    """
    module, state, strategy = trainer.lightning_module, trainer.state, trainer.strategy
    if os.path.isdir(path):  # a sharded checkpoint (FSDP state_dict_type="sharded"): the strategy reads it
        ckpt = strategy.load_checkpoint(path)
    else:
        ckpt = load_file(path, map_location=strategy.root_device, weights_only=weights_only)
    if "optimizer_states" not in ckpt:
        raise CheckpointError(
            f"Checkpoint {path!r} holds only the model weights (saved with weights_only=True or "
            "ModelCheckpoint(save_weights_only=True)), so training cannot resume from it. Load the weights with "
            "Model.load_from_checkpoint(path) and start a new fit, or resume from a full checkpoint."
        )
    trainer.hooks.call("on_load_checkpoint", ckpt)
    load_state_into(module, ckpt["state_dict"], path, strict=getattr(module, "strict_loading", True), strategy=strategy)
    _load_optimization_state(trainer, ckpt, path)
    cb_states = ckpt.get("callbacks") or {}
    for cb in trainer.callbacks:
        if cb.state_key in cb_states:
            cb.load_state_dict(cb_states[cb.state_key])
    dm = trainer.datamodule
    if dm is not None and type(dm).__qualname__ in ckpt:
        dm.load_state_dict(ckpt[type(dm).__qualname__])

    info = ckpt.get("ember") or _from_lightning(ckpt, path)
    per_rank = info.get("per_rank")
    if per_rank and len(per_rank) == trainer.world_size:  # same number of ranks: each takes back its own
        info = {**info, **{k: v for k, v in per_rank[trainer.global_rank].items() if v is not None}}
    state.load_state_dict(info, ckpt["epoch"], ckpt["global_step"])
    if info.get("metrics") is not None:
        trainer.metric_store.load_state_dict(info["metrics"])
    loader_restored = "train_loader_state" in info and _restore_loader(trainer.data.train_iterable,
                                                                       info["train_loader_state"])
    for name, p in module.named_parameters():
        grad = (info.get("grads") or {}).get(name)
        if grad is not None:
            p.grad = grad.to(device=p.device, dtype=p.dtype).clone()
    if info.get("mid_epoch"):
        state.resume = ResumePoint(
            batches_done=info["batches_done_in_epoch"], accumulated=info.get("accumulated", 0),
            phase=FitState.saved_phase(info), epoch_start_rng=info.get("epoch_start_rng"), rng=info.get("rng"),
            metrics=info.get("metrics"), loader_restored=loader_restored,
            epoch_reached_end=info.get("epoch_reached_end", False))
        return  # the RNG is put back by open_train_batches, once the epoch's iterator exists again
    if info.get("epoch_completed"):
        # Saved in on_train_epoch_end: close the epoch now as the run that wrote the checkpoint did next
        # (its metric accumulators restart, plateau schedulers step, the epoch counter moves on).
        from .loop import finish_epoch

        trainer.metric_store.reset_stage("train")
        state.epoch_reached_end = info.get("epoch_reached_end", True)
        finish_epoch(trainer.run_context)
    if info.get("rng") is not None:
        restore_rng(info["rng"], loader_generators(trainer.data.train_iterable))


def _load_optimization_state(trainer: Any, ckpt: dict[str, Any], path: str) -> None:
    states = ckpt["optimizer_states"]
    if len(states) != len(trainer.optimizers):
        raise CheckpointError(f"Checkpoint {path!r} holds {len(states)} optimizer state(s) but configure_optimizers() "
                              f"returned {len(trainer.optimizers)}.")
    for opt, st in zip(trainer.optimizers, states):
        trainer.strategy.load_optimizer_state(opt, st)
    scheds = ckpt.get("lr_schedulers", [])
    if len(scheds) != len(trainer.lr_scheduler_configs):
        raise CheckpointError(f"Checkpoint {path!r} holds {len(scheds)} lr scheduler state(s) but "
                              f"configure_optimizers() returned {len(trainer.lr_scheduler_configs)}.")
    for cfg, st in zip(trainer.lr_scheduler_configs, scheds):
        cfg.scheduler.load_state_dict(st)
    if "native_amp_scaling_state" in ckpt:
        trainer.precision.load_state_dict(ckpt["native_amp_scaling_state"])


def _from_lightning(ckpt: dict[str, Any], path: str) -> dict[str, Any]:
    """Counters from a Lightning checkpoint's loop state (epochs resume at an epoch boundary)."""
    try:
        fit_loop = ckpt["loops"]["fit_loop"]
        epochs_done = fit_loop["epoch_progress"]["current"]["processed"]
        stepped = fit_loop["epoch_loop.state_dict"]["_batches_that_stepped"]
    except (KeyError, TypeError):
        return {}
    info = {"batches_that_stepped": stepped, "total_batches_run": stepped}
    if epochs_done == ckpt["epoch"] + 1:
        info["epoch_completed"] = True  # saved at the end of an epoch whose batches had all run
    elif fit_loop["epoch_loop.batch_progress"]["current"]["completed"]:
        warnings.warn(f"Checkpoint {path!r} was written by Lightning in the middle of an epoch; ember restarts that "
                      "epoch from its first batch.", UserWarning, stacklevel=3)
    return info


def _restore_loader(loader: Any, saved: dict[str, Any]) -> bool:
    for obj in _stateful_candidates(loader):
        if type(obj).__name__ == saved["owner"] and callable(getattr(obj, "load_state_dict", None)):
            obj.load_state_dict(saved["state"])
            return True
    return False


# --------------------------------------------------------------------------- the epoch's iterator
def open_train_batches(run: Any) -> tuple[Iterator[tuple[int, Any]], BatchPhase | None]:
    """This epoch's ``(batch_idx, batch)`` pairs, and the phase of the saved batch a mid-epoch resume goes on from.

    The RNG is captured just before the iterator is created, because creating
    it draws the shuffle order (and the workers' seeds); a mid-epoch
    checkpoint stores that capture so a resume draws the same order. Runs
    once per epoch, never per step.
    """
    state, loader = run.state, run.data.train_iterable
    resume, state.resume = state.resume, None
    gens = loader_generators(loader)
    if resume is not None and resume.epoch_start_rng is not None:
        restore_rng(resume.epoch_start_rng, gens)
    state.epoch_start_rng = capture_rng(gens)
    state.position = Position.IN_BATCHES
    iterator = iter(loader)
    skip = 0
    if resume is not None:
        skip = resume.batches_done
        if skip and run.data.steps_on_iterator:
            raise CheckpointError("This checkpoint was saved inside an epoch of a training_step(self, dataloader_iter), "
                                  "whose steps take any number of batches, so ember cannot tell which batches are "
                                  "left; resume from a checkpoint saved at the end of an epoch.")
        if resume.epoch_start_rng is None:
            _warn_once("no-epoch-rng", "The checkpoint does not hold the RNG state of its epoch's start, so the "
                       "resumed epoch may draw a different shuffle order than the interrupted one.")
        if skip and not resume.loader_restored:
            _skip_batches(iterator, loader, skip)
        if resume.rng is not None:
            restore_rng(resume.rng, gens)
        if resume.metrics is not None:
            run.metrics.load_state_dict(resume.metrics)  # the epoch accumulators the epoch's start just cleared
        state.accumulated, state.batches_seen_in_epoch = resume.accumulated, skip
        state.epoch_reached_end = resume.epoch_reached_end
    pairs: Iterator[tuple[int, Any]] = enumerate(iterator, skip)
    limit = run.data.train_limit
    if limit is not None:
        pairs = itertools.islice(pairs, max(limit - skip, 0))
    if run.profiler is not None:  # each fetch timed, as many as the epoch has batches (see timed_batches)
        from .profilers.wiring import timed_batches

        left = run.data.num_training_batches - skip
        pairs = timed_batches(run.profiler, "[_TrainingEpochLoop].train_dataloader_next", pairs,
                              left if left != float("inf") else None)
    if run.data.steps_on_iterator:
        from .iterator_step import steps_of

        # training_step(dataloader_iter): one step may take several batches; the loop gets (step, iterator).
        return steps_of(pairs, run.data.num_training_batches, run.data.num_training_batches), None
    return pairs, (resume.phase if resume is not None and skip else None)


def _skip_batches(iterator: Any, loader: Any, n: int) -> None:
    """Advance a fresh iterator past the ``n`` batches the interrupted run already trained on."""
    from torch.utils.data import DataLoader, IterableDataset
    from torch.utils.data.dataloader import _SingleProcessDataLoaderIter

    if isinstance(loader, DataLoader) and type(iterator) is _SingleProcessDataLoaderIter \
            and not isinstance(loader.dataset, IterableDataset):
        # In-process, map-style: the sampler alone decides the batches, so draw their indices without
        # loading the samples (skipping 10k image batches costs milliseconds, not minutes).
        for _ in range(n):
            try:
                iterator._next_index()
            except StopIteration:
                break
        iterator._num_yielded += n
    else:
        for _ in itertools.islice(iterator, n):
            pass
    _warn_if_unknown_order(loader)


_SAMPLERS_WITH_KNOWN_ORDER = ("SequentialSampler", "RandomSampler", "DistributedSampler", "SubsetRandomSampler",
                              "WeightedRandomSampler", "BatchSampler")


def _warn_if_unknown_order(loader: Any) -> None:
    """Say so when ember cannot know that re-reading the first batches reproduces the interrupted epoch."""
    from torch.utils.data import DataLoader, IterableDataset

    from .utilities.combined_loader import ZippedBatches

    if isinstance(loader, (list, tuple)):
        return
    if isinstance(loader, ZippedBatches):  # several loaders: read again one by one, in the same order
        for inner in loader.combined.flattened:
            _warn_if_unknown_order(inner)
        return
    if not isinstance(loader, DataLoader):
        what = f"the training dataloader ({type(loader).__name__})"
    elif isinstance(loader.dataset, IterableDataset):
        what = f"the training dataloader's IterableDataset ({type(loader.dataset).__name__})"
    else:
        custom = [type(s).__name__ for s in (loader.sampler, loader.batch_sampler)
                  if s is not None and type(s).__name__ not in _SAMPLERS_WITH_KNOWN_ORDER]
        if not custom:
            return
        what = f"the training dataloader's sampler ({custom[0]})"
    _warn_once(what, f"Resuming mid-epoch: ember skipped the batches already trained on by reading {what} again, "
               "but cannot tell whether it yields them in the same order as before. If it does not, the resumed "
               "epoch differs from the interrupted one. Give it state_dict() and load_state_dict() (or use "
               "torchdata's StatefulDataLoader) so that checkpoints store its position.")


_warned: set[str] = set()


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, UserWarning, stacklevel=3)


# --------------------------------------------------------------------------- preemption
class TrainingPreempted(SystemExit):
    """Raised out of ``fit`` after a SIGTERM: the step finished and a resumable checkpoint was saved.

    A ``SystemExit``, so an uncaught one ends the program without a traceback,
    with exit status 128 + the signal number (143 for SIGTERM).
    """

    def __init__(self, signum: int, checkpoint_path: str | None = None) -> None:
        super().__init__(128 + signum)
        self.signum = signum
        self.checkpoint_path = checkpoint_path


@contextlib.contextmanager
def preemption_guard(trainer: Any) -> Iterator[None]:
    """For the duration of the fit loop, turn SIGTERM into "finish this step, save, exit".

    The handler only sets flags; the loop acts on them at the next step
    boundary (``loop.stop_within_epoch``), so no step is ever cut in half.
    With ``Trainer(plugins=[SLURMEnvironment(auto_requeue=True)])`` its requeue
    signal (SIGUSR1) takes the same path and, once the checkpoint is saved,
    rank 0 requeues the job (``ember.plugins.environments``).
    """
    state, environment = trainer.state, trainer.cluster_environment
    requeue_signal = environment.requeue_signal if environment is not None and environment.auto_requeue else None
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        previous = {signal.SIGTERM: signal.getsignal(signal.SIGTERM)}
        if previous[signal.SIGTERM] is signal.SIG_IGN:
            previous = {}  # the program asked to ignore SIGTERM; respect that
        if requeue_signal is not None:
            previous[requeue_signal] = signal.getsignal(requeue_signal)  # asked for explicitly: always installed

    def on_signal(signum: int, frame: Any) -> None:
        if state.preempt_signal is None:
            print(f"ember: received {signal.Signals(signum).name}; finishing the current step, then saving a "
                  "checkpoint.", file=sys.stderr, flush=True)
        state.preempt_signal, state.should_stop = signum, True
        if callable(previous.get(signum)):
            previous[signum](signum, frame)

    on_signal.ember_preemption = True  # type: ignore[attr-defined]  # DDP defers it to its stop vote (runtime.ddp)
    for signum in previous:
        signal.signal(signum, on_signal)
    try:
        yield
        if state.preempt_signal is not None:
            # The signal came after the last step (closing validation or hooks): the fit ended normally.
            raise TrainingPreempted(state.preempt_signal)
    except TrainingPreempted as exc:
        exc.checkpoint_path = _save_preemption_checkpoint(trainer)
        if trainer.is_global_zero:
            print(f"ember: stopped by {signal.Signals(exc.signum).name} after step {trainer.global_step} (epoch "
                  f"{trainer.current_epoch}); saved a resumable checkpoint to {exc.checkpoint_path}. Resume with "
                  f"trainer.fit(..., ckpt_path={exc.checkpoint_path!r}) or ckpt_path=\"last\". Exiting with status "
                  f"{exc.code}.", file=sys.stderr, flush=True)
            if exc.signum == requeue_signal:
                environment.requeue()  # only once the checkpoint is on disk
        raise
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        state.preempt_signal = None


def _save_preemption_checkpoint(trainer: Any) -> str:
    """Save to the first ModelCheckpoint's "last" file (or ``default_root_dir/last.ckpt``)."""
    from .callbacks.checkpoint import ModelCheckpoint

    cb = next((c for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint)), None)
    if cb is not None and getattr(cb, "dirpath", None):
        path = cb.last_model_path = cb.last_checkpoint_path(trainer)
    else:
        path = os.path.join(trainer.default_root_dir, "last.ckpt")
    trainer.save_checkpoint(path)
    return path


# --------------------------------------------------------------------------- modules and paths
def load_module_from_checkpoint(cls: type, path: Any, map_location: Any = None, hparams_file: Any = None,
                                strict: bool | None = None, weights_only: bool | None = None, **overrides: Any) -> Any:
    """Build ``cls`` from the checkpoint's hyper-parameters (``overrides`` win), then load its weights."""
    from .hparams import build_from_hparams, read_hparams_file

    path = os.fspath(path)
    ckpt = load_file(path, map_location=map_location or "cpu", weights_only=weights_only)
    hparams = dict(ckpt.get("hyper_parameters") or {})
    if hparams_file is not None:
        hparams.update(read_hparams_file(hparams_file))
    hparams.update(overrides)
    module = build_from_hparams(cls, hparams)
    module.on_load_checkpoint(ckpt)
    if strict is None:
        strict = getattr(module, "strict_loading", True)
    load_state_into(module, ckpt["state_dict"], path, strict=strict)
    if map_location is not None and not callable(map_location) and not isinstance(map_location, dict):
        module.to(map_location)
    return module  # left in train mode, as Lightning does


def _exception_checkpoints(trainer: Any) -> list[Any]:
    from .callbacks.on_exception import OnExceptionCheckpoint

    return [cb for cb in trainer.callbacks if isinstance(cb, OnExceptionCheckpoint)]


def find_checkpoint(trainer: Any, which: str, warn: bool = True) -> str | None:
    """Resolve ``ckpt_path="best"`` or ``"last"`` through the trainer's ModelCheckpoint callbacks.

    "last" is the newest ``last*.ckpt`` (save_last files, preemption saves and
    OnExceptionCheckpoint files); without one, the newest checkpoint any of them wrote. With
    nothing at all it warns and returns None, so the fit starts fresh (as in
    Lightning: a requeued job can always pass ``ckpt_path="last"``).
    """
    from .callbacks.checkpoint import ModelCheckpoint

    cbs = [cb for cb in trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint)]  # not OnExceptionCheckpoint
    _finisher.wait()
    if which == "best":
        for cb in cbs:
            if getattr(cb, "best_model_path", ""):
                return cb.best_model_path
        raise ValueError('ckpt_path="best" needs a ModelCheckpoint that has saved a best checkpoint; none has. '
                         "Pass the file's path instead.")
    last: list[str] = []
    others: list[str] = []
    for cb in cbs:
        if getattr(cb, "last_model_path", "") and os.path.isfile(cb.last_model_path):
            last.append(cb.last_model_path)
        for directory in cb.checkpoint_dirs():
            for name in os.listdir(directory):
                full = os.path.join(directory, name)
                if not name.endswith(cb.FILE_EXTENSION) or not os.path.isfile(full):
                    continue
                (last if name.startswith(cb.CHECKPOINT_NAME_LAST) else others).append(full)
    fallback = os.path.join(trainer.default_root_dir, "last.ckpt")  # the preemption save without a ModelCheckpoint
    last += [path for path in [fallback] + [cb.ckpt_path for cb in _exception_checkpoints(trainer)]
             if os.path.isfile(path)]
    candidates = last or others
    if not candidates:
        if not warn:
            return None
        warnings.warn('ckpt_path="last" found no checkpoint, so training starts from scratch. Checkpoints are looked '
                      "for in the ModelCheckpoint's dirpath.", UserWarning, stacklevel=3)
        return None
    return max(candidates, key=os.path.getmtime)


def resolve_ckpt_path(trainer: Any, ckpt_path: Any) -> str | None:
    """``ckpt_path`` as a file: "last"/"best" looked up (rank 0's answer on every rank), or a path checked.

    With an OnExceptionCheckpoint, ``fit(ckpt_path=None)`` means "last" (its file counts), as in Lightning, so
    running the failed script again resumes it; finding nothing then starts afresh without a warning.
    """
    implied = ckpt_path is None and trainer.state.fn == "fit" and bool(_exception_checkpoints(trainer))
    if implied:
        ckpt_path = "last"
    if ckpt_path is None:
        return None
    if ckpt_path in ("last", "best"):
        try:
            found, error = find_checkpoint(trainer, ckpt_path, warn=not implied), None
        except ValueError as exc:
            found, error = None, exc
        # Distributed: every rank resumes from the file rank 0 found (identity on one device).
        found, error = trainer.strategy.broadcast((found, error))
        if error is not None:
            raise error
        return found
    path = os.fspath(ckpt_path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"ckpt_path={path!r} does not exist.")
    return path
