"""ThroughputMonitor: batches, samples, items and FLOPs per second of each stage, logged as Lightning names them
(``train/device/samples_per_sec``, ``validate/batches``, ...)."""
from __future__ import annotations

import time
from typing import Any, Callable

import torch

from ..utilities.rank_zero import rank_zero_warn
from ..utilities.throughput import Throughput, compute_dtype, get_available_flops
from .callback import Callback
from .log_schedule import should_update_logs

_STAGE_OF_FN = {"fit": "train", "validate": "validate", "test": "test", "predict": "predict"}


class ThroughputMonitor(Callback):
    """``batch_size_fn(batch)`` gives a batch's samples, ``length_fn(batch)`` its items (tokens, say); FLOPs come
    from the module's ``flops_per_batch`` attribute (see ``ember.utilities.measure_flops``). ``kwargs`` go to
    ``ember.utilities.Throughput`` (``window_size``, ``separator``). Training rates leave out the time spent in
    validation. Logged on rank 0, every ``log_every_n_steps`` in training and every batch in evaluation."""

    def __init__(self, batch_size_fn: Callable[[Any], int], length_fn: Callable[[Any], int] | None = None,
                 **kwargs: Any) -> None:
        if not callable(batch_size_fn):
            raise TypeError(f"ThroughputMonitor(batch_size_fn={batch_size_fn!r}): expected a function batch -> "
                            "number of samples.")
        if length_fn is not None and not callable(length_fn):
            raise TypeError(f"ThroughputMonitor(length_fn={length_fn!r}): expected a function batch -> number of "
                            "items, or None.")
        Throughput(**kwargs)  # a wrong keyword or window fails here, not when training starts
        self.kwargs = kwargs
        self.batch_size_fn = batch_size_fn
        self.length_fn = length_fn
        self.available_flops: int | None = None
        self._throughputs: dict[str, Throughput] = {}
        self._t0s: dict[str, float] = {}
        self._samples: dict[str, int] = {}
        self._batches: dict[str, int] = {}
        self._lengths: dict[str, int] = {}
        self._eval_batches_this_run = 0  # Lightning's eval x-axis: batches of the current evaluation run
        self._module_has_flops: bool | None = None

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        self.available_flops = get_available_flops(trainer.strategy.root_device, compute_dtype(trainer.precision.name))
        stages = ("train", "validate") if stage == "fit" else (_STAGE_OF_FN[stage],)
        for name in stages:
            self._throughputs[name] = Throughput(available_flops=self.available_flops, world_size=trainer.world_size,
                                                 **self.kwargs)

    # ---- the three steps: start a stage's clock, count a batch, log the rates ------------------------------
    def _start(self, trainer: Any, stage: str) -> None:
        # A fit starts every count afresh; validate/test/predict calls on one trainer keep counting.
        if trainer.state.fn == "fit" or stage not in self._samples:
            self._throughputs[stage].reset()
            self._samples[stage] = self._batches[stage] = self._lengths[stage] = 0
        self._eval_batches_this_run = 0
        self._t0s[stage] = time.perf_counter()

    @torch.inference_mode()  # batch_size_fn / length_fn must not record autograd history
    def _update(self, trainer: Any, pl_module: Any, stage: str, batch: Any) -> None:
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize()  # the clock must include the work queued on the device
        elapsed = time.perf_counter() - self._t0s[stage]
        if self._module_has_flops is None:
            self._module_has_flops = hasattr(pl_module, "flops_per_batch")
            if not self._module_has_flops:
                rank_zero_warn(f"ThroughputMonitor: {type(pl_module).__name__} has no `flops_per_batch` attribute, "
                               "so no FLOPs are logged (ember.utilities.measure_flops can count them).")
        if self.length_fn is not None:
            self._lengths[stage] += self.length_fn(batch)
        self._samples[stage] += self.batch_size_fn(batch)
        self._batches[stage] += 1
        self._throughputs[stage].update(
            time=elapsed, batches=self._batches[stage], samples=self._samples[stage],
            lengths=None if self.length_fn is None else self._lengths[stage],
            flops=pl_module.flops_per_batch if self._module_has_flops else None)

    def _log(self, trainer: Any, stage: str, step: int | None) -> None:
        from ..logging import write_logs

        # step is None in training; in evaluation it is the run's batch number, which the log rule counts there
        if not should_update_logs(trainer, after_step=True, eval_batch=step):
            return
        throughput = self._throughputs[stage]
        metrics = {f"{stage}{throughput.separator}{k}": v for k, v in throughput.compute().items()}
        # step=None: the training x-axis, with "epoch" added (Lightning's logger connector does the same)
        write_logs(trainer.run_context, metrics, step=step, add_epoch=step is None)

    def _eval_batch_end(self, trainer: Any, pl_module: Any, stage: str, batch: Any) -> None:
        self._eval_batches_this_run += 1
        self._update(trainer, pl_module, stage, batch)
        self._log(trainer, stage, self._eval_batches_this_run)

    # ---- events (rank 0 only) ------------------------------------------------------------------------------
    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if trainer.is_global_zero:
            self._start(trainer, "train")

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if not trainer.is_global_zero:
            return
        self._update(trainer, pl_module, "train", batch)
        if not trainer.state.accumulated:  # rates are logged after batches that stepped
            self._log(trainer, "train", None)

    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        if trainer.is_global_zero and not trainer.sanity_checking:
            self._start(trainer, "validate")

    def on_validation_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int,
                                dataloader_idx: int = 0) -> None:
        if trainer.is_global_zero and not trainer.sanity_checking:
            self._eval_batch_end(trainer, pl_module, "validate", batch)

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if not trainer.is_global_zero or trainer.sanity_checking or trainer.state.fn != "fit":
            return
        # Move the training clock's start past the validation, so training rates count training time only.
        if "train" not in self._t0s:
            return
        train_end = self._t0s["train"] + self._throughputs["train"].last_time
        self._t0s["train"] += (self._t0s["validate"] - train_end) + self._throughputs["validate"].last_time

    def on_test_start(self, trainer: Any, pl_module: Any) -> None:
        if trainer.is_global_zero:
            self._start(trainer, "test")

    def on_test_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int,
                          dataloader_idx: int = 0) -> None:
        if trainer.is_global_zero:
            self._eval_batch_end(trainer, pl_module, "test", batch)

    def on_predict_start(self, trainer: Any, pl_module: Any) -> None:
        if trainer.is_global_zero:
            self._start(trainer, "predict")

    def on_predict_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int,
                             dataloader_idx: int = 0) -> None:
        if trainer.is_global_zero:
            self._eval_batch_end(trainer, pl_module, "predict", batch)
