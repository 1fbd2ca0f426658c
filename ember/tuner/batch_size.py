"""The batch-size search: the largest batch size that trains a few steps without running out of memory.

``search_sizes`` is the rule, on its own (it only sees "this size worked" or "this size ran out of
memory"); ``scale_batch_size`` runs each trial as a short fit on a variant of the trainer's ``Run``
and puts the model, optimizers, RNG and counters back afterwards (``TrainingSnapshot``).

Unlike Lightning 2.6.6, the answer is always a size that trained: Lightning stops at ``max_val``
without running it, and its ``binsearch`` margin shrinks the answer to a size it never ran. ember
runs the size it stops at, and runs the margin's size once more to confirm it.
"""
from __future__ import annotations

import dataclasses
import gc
import warnings
from typing import Any, Callable

import torch

MODES = ("power", "binsearch")
_CPU_OOM = "DefaultCPUAllocator: can't allocate memory"


def is_out_of_memory(exc: BaseException) -> bool:
    """An allocator failure: torch's OutOfMemoryError, or the RuntimeError texts CUDA, cuDNN and the CPU use."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc.args[0]) if isinstance(exc, RuntimeError) and exc.args else ""
    return ("CUDA" in text and "out of memory" in text) or _CPU_OOM in text or \
        "cuDNN error: CUDNN_STATUS_NOT_SUPPORTED" in text


def check_arguments(mode: Any, steps_per_trial: Any, init_val: Any, max_trials: Any, margin: Any, max_val: Any,
                    where: str = "scale_batch_size") -> None:
    if mode not in MODES:
        raise ValueError(f"{where}(mode={mode!r}) is not valid; allowed: 'power', 'binsearch'.")
    for name, value in (("steps_per_trial", steps_per_trial), ("init_val", init_val), ("max_trials", max_trials),
                        ("max_val", max_val)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{where}({name}={value!r}) is not valid; allowed: an int >= 1.")
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not 0.0 <= margin < 1.0:
        raise ValueError(f"{where}(margin={margin!r}) is not valid; allowed: a number in [0, 1).")


def search_sizes(fits: Callable[[int], bool], mode: str, init_val: int, max_trials: int, max_val: int,
                 margin: float = 0.0, covers_dataset: Callable[[int], bool] = lambda size: False
                 ) -> tuple[int, list[tuple[int, bool]]]:
    """The largest size ``fits`` accepted, and every ``(size, fitted)`` trial in order.

    Both modes double from ``init_val`` while sizes fit (up to ``max_val``, or until one batch holds the
    whole dataset). Above the first failure ``power`` keeps the last size that fitted; ``binsearch``
    bisects between it and the failure. Starting too large, both go down (halving; binsearch bisects
    between 1 and the failure, as Lightning) until a size fits. The margin (binsearch) takes a share off
    the answer; that smaller size is then run too. ``max_trials`` counts every trial, in both modes.
    """
    trials: list[tuple[int, bool]] = []
    size, best, failed = min(init_val, max_val), None, None
    while len(trials) < max_trials:
        ok = fits(size)
        trials.append((size, ok))
        if ok:
            best = size
            if size >= max_val or covers_dataset(size):
                break
            nxt = min(2 * size, max_val) if failed is None else (best + failed) // 2 if mode == "binsearch" else best
        else:
            failed = size
            if best is None:
                if size == 1:
                    raise torch.OutOfMemoryError("scale_batch_size: even a batch of 1 ran out of memory, so no batch "
                                                 "size fits; make the model or its inputs smaller.")
                nxt = (1 + size) // 2 if mode == "binsearch" else size // 2
            else:
                nxt = (best + failed) // 2 if mode == "binsearch" else best
        if nxt == best:
            break  # nothing new left to try between what fitted and what failed
        size = nxt
    if best is None:
        raise torch.OutOfMemoryError(f"scale_batch_size: no batch size fitted in max_trials={max_trials} trials "
                                     f"(tried {[s for s, _ in trials]}); raise max_trials or lower init_val.")
    if mode == "binsearch" and margin > 0:
        reduced = max(1, int(best * (1 - margin)))
        if reduced != best:
            ok = fits(reduced)  # never hand back a size that was not run
            trials.append((reduced, ok))
            if ok:
                best = reduced
            else:
                warnings.warn(f"scale_batch_size: the margin's size {reduced} ran out of memory although {best} "
                              f"fitted; keeping {best}.", UserWarning, stacklevel=3)
    return best, trials


# --------------------------------------------------------------------------- where the batch size lives
def _owners(module: Any, datamodule: Any, name: str) -> list[tuple[Any, str]]:
    """The places that hold ``name``: the module, its hparams, the datamodule (and its hparams)."""
    found = []
    for obj in (module, datamodule):
        if obj is None:
            continue
        hparams = getattr(obj, "hparams", None) or {}
        if name in hparams:
            found.append((hparams, "item"))
        if name in vars(obj) or hasattr(type(obj), name):
            found.append((obj, "attr"))
    return found


def get_batch_size(module: Any, datamodule: Any, name: str) -> int:
    owners = _owners(module, datamodule, name)
    if not owners:
        raise AttributeError(f"scale_batch_size(batch_arg_name={name!r}): neither the model, its hparams nor the "
                             f"datamodule has {name!r}. Keep the batch size there (e.g. self.{name} = 32) and build "
                             "the dataloaders from it in train_dataloader().")
    obj, how = owners[0]
    return obj[name] if how == "item" else getattr(obj, name)


def set_batch_size(module: Any, datamodule: Any, name: str, value: int) -> None:
    for obj, how in _owners(module, datamodule, name):
        if how == "item":
            obj[name] = value
        else:
            setattr(obj, name, value)


# --------------------------------------------------------------------------- the trials
def scale_batch_size(trainer: Any, module: Any, mode: str, steps_per_trial: int, init_val: int, max_trials: int,
                     batch_arg_name: str, margin: float, max_val: int) -> tuple[int | None, list[tuple[int, bool]]]:
    """Search from inside a fit (``on_fit_start``); leaves the module's batch size at the answer."""
    from .. import loop
    from ..data import RunLoaders
    from ..hooks import HookDispatcher
    from .snapshot import TrainingSnapshot

    if trainer.fast_dev_run:
        warnings.warn("scale_batch_size is skipped with fast_dev_run.", UserWarning, stacklevel=3)
        return None, []
    datamodule = trainer.datamodule
    get_batch_size(module, datamodule, batch_arg_name)  # a clear error before any trial
    fit_run, snapshot = trainer.run_context, TrainingSnapshot(trainer, module)
    # Each trial: the module's own hooks (no callbacks, no loggers), steps_per_trial optimizer steps and as many
    # validation batches, from loaders built again at the trial's batch size.
    config = dataclasses.replace(fit_run.config, limit_train_batches=1.0, limit_val_batches=steps_per_trial,
                                 check_finite_loss=False)
    hooks = HookDispatcher(trainer, module, [])
    dataset_size: list[int | None] = [None]  # known once a trial has built the train loader

    def fits(size: int) -> bool:
        set_batch_size(module, datamodule, batch_arg_name, size)
        data = RunLoaders(config, trainer.strategy)
        data.attach(module, datamodule, config)
        data.prepare_fit(None, None)
        trial = dataclasses.replace(fit_run, config=dataclasses.replace(
            config, max_steps=trainer.global_step + steps_per_trial), data=data, hooks=hooks, loggers=[], plan=None)
        trainer.run_context, trainer.data = trial, data
        trainer.state.sanity_checked = trainer.state.training = True
        try:
            module.train()
            loop.run_fit(trial)
            return True
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            return False
        finally:
            dataset_size[0] = _dataset_size(data.train_dataloader) or dataset_size[0]
            snapshot.restore()
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    def covers_dataset(size: int) -> bool:
        return dataset_size[0] is not None and size >= dataset_size[0]

    try:
        best, trials = search_sizes(fits, mode, init_val, max_trials, max_val, margin, covers_dataset)
    finally:
        snapshot.restore()
    set_batch_size(module, datamodule, batch_arg_name, best)
    return best, trials


def _dataset_size(loader: Any) -> int | None:
    try:
        return len(loader.dataset)
    except (AttributeError, TypeError):
        return None
