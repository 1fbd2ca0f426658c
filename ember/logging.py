"""What ``self.log`` records, and how it becomes step and epoch values.

Values stay tensors on their device: a step value is only turned into a
Python float when a logger writes it (every ``log_every_n_steps``) or the
progress bar refreshes, so logging a metric costs no host sync per step.
Epoch values are accumulated as a list of (value, batch size) pairs and
folded into a running sum every ``_FOLD`` entries, which keeps the per-step
cost at a list append while bounding memory on long epochs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

_Tensor, _F32, _F64 = torch.Tensor, torch.float32, torch.float64  # read once per self.log call

from .iterator_step import DataloaderIter

_FOLD = 512
_REDUCE_NAMES = {"mean": "mean", "avg": "mean", "sum": "sum", "max": "max", "min": "min"}


def _reduce_name(reduce_fx: Any) -> str:
    if isinstance(reduce_fx, str) and reduce_fx.lower() in _REDUCE_NAMES:
        return _REDUCE_NAMES[reduce_fx.lower()]
    for name, fn in (("mean", torch.mean), ("sum", torch.sum), ("max", torch.max), ("min", torch.min)):
        if reduce_fx is fn:
            return name
    raise ValueError(f"self.log(reduce_fx={reduce_fx!r}) is not supported; allowed: 'mean', 'sum', 'max', 'min' "
                     "or torch.mean/sum/max/min.")


def extract_batch_size(batch: Any) -> int:
    """The length of the first tensor found in the batch (how Lightning weighs epoch means)."""
    if type(batch) in (tuple, list) and batch and type(batch[0]) is torch.Tensor:
        # The usual (x, y) batch, once per logged batch of every eval step: answered without the walk below.
        first = batch[0]
        if first.ndim == 0:
            return 1
        if first.shape[0]:
            return int(first.shape[0])
    if isinstance(batch, torch.Tensor):
        return 1 if batch.ndim == 0 else int(batch.shape[0])
    if isinstance(batch, str):
        return 1
    if isinstance(batch, dict):
        for v in batch.values():
            n = extract_batch_size(v)
            if n:
                return n
        return 1
    if isinstance(batch, (list, tuple)):
        for v in batch:
            n = extract_batch_size(v)
            if n:
                return n
        return 1
    if isinstance(batch, DataloaderIter):
        raise ValueError("With training_step(self, dataloader_iter) there is no batch to measure: pass "
                         "self.log(..., batch_size=N) for a value averaged over the epoch.")
    return 1


@dataclass(eq=False)
class _Entry:
    """One metric as logged from one place of one stage (Lightning keeps one "result" per hook and name)."""

    name: str  # the key users see, with "/dataloader_idx_N" when several eval loaders run
    on_step: bool
    on_epoch: bool
    prog_bar: bool
    logger: bool
    reduce: str
    sync_dist: bool
    dataloader_idx: int | None = None
    is_metric_object: bool = False
    step_value: Any = None  # the latest step value (Lightning's forward cache)
    pending: list = field(default_factory=list)  # (tensor, weight) not yet folded
    total: Any = None  # folded running reduction
    weight: float = 0.0
    epoch_value: Any = None  # computed epoch value, cached until the next update
    has_reset: bool = False  # reset at the end of its epoch; hidden until logged again

    def __post_init__(self) -> None:
        # Logged on step only, so its latest value is all there is (the training step's default): the fast path
        # of MetricStore.log only swaps it.
        self.step_only = self.on_step and not self.on_epoch and not self.is_metric_object

    def settings(self) -> tuple:
        return (self.on_step, self.on_epoch, self.reduce, self.prog_bar, self.logger)

    def update(self, value: Any, batch_size: int) -> None:
        self.has_reset = False
        self.epoch_value = None
        if self.is_metric_object:
            # The Metric keeps its own state; its last forward() output is the step value.
            self.step_value = value
            return
        if self.on_step:
            self.step_value = value
        if self.on_epoch:
            self.pending.append((value, batch_size))
            if len(self.pending) >= _FOLD:
                self.fold()

    def step_cache(self) -> Any:
        if self.is_metric_object:
            return getattr(self.step_value, "_forward_cache", None)
        value = self.step_value
        if isinstance(value, torch.Tensor) and value.requires_grad:
            value = self.step_value = value.detach()  # the fast path of log() stores the loss as given
        return value

    def fold(self) -> None:
        if not self.pending:
            return
        raw = [v for v, _ in self.pending]
        if any(v.dtype is not raw[0].dtype for v in raw):
            raw = [v.to(torch.float64) for v in raw]
        values = torch.stack(raw).to(torch.float64)  # one cast for the lot, not one per value
        weights = torch.tensor([w for _, w in self.pending], dtype=torch.float64, device=values.device)
        if self.reduce == "mean":
            part = (values * weights).sum()
        elif self.reduce == "sum":
            part = values.sum()
        elif self.reduce == "max":
            part = values.max()
        else:
            part = values.min()
        if self.total is None:
            self.total = part
        elif self.reduce in ("mean", "sum"):
            self.total = self.total + part
        elif self.reduce == "max":
            self.total = torch.maximum(self.total, part)
        else:
            self.total = torch.minimum(self.total, part)
        self.weight += float(weights.sum())
        self.pending.clear()

    def compute_epoch(self) -> Any:
        if self.epoch_value is not None:
            return self.epoch_value
        if self.is_metric_object:
            value = self.step_value.compute() if self.step_value is not None else None
        else:
            self.fold()
            if self.total is None:
                return None
            # float64 sums, then fp32 as Lightning reports them (Lightning sums in fp32: last bits may differ)
            value = (self.total / self.weight if self.reduce == "mean" else self.total).to(torch.float32)
        self.epoch_value = value
        return value

    def reset(self) -> None:
        if self.is_metric_object and self.step_value is not None:
            self.step_value.reset()
        self.pending.clear()
        self.total = None
        self.weight = 0.0
        self.epoch_value = None
        self.has_reset = True


def _forked(entry: _Entry) -> tuple[str | None, str | None]:
    """The keys a metric appears under for its step and epoch values."""
    name, suffix = entry.name, ""
    if "/dataloader_idx_" in name:
        name, _, idx = name.partition("/dataloader_idx_")
        suffix = f"/dataloader_idx_{idx}"
    if entry.on_step and entry.on_epoch:
        return f"{name}_step{suffix}", f"{name}_epoch{suffix}"
    return (entry.name if entry.on_step else None), (entry.name if entry.on_epoch else None)


# Where self.log may be called and its defaults there: Lightning's per-hook table, grouped by phase
# ("batch": the steps and batch-level hooks; "epoch": *_start / *_epoch_start / *_epoch_end).
# Value: (default on_step, default on_epoch, on_step=True allowed).
_PHASES: dict[tuple[str, str], tuple[bool, bool, bool]] = {
    ("train", "batch"): (True, False, True),
    ("train", "epoch"): (False, True, False),
    ("validate", "batch"): (False, True, True),
    ("validate", "epoch"): (False, True, False),
    ("test", "batch"): (False, True, True),
    ("test", "epoch"): (False, True, False),
}
_ANY_LOADER = object()


class MetricStore:
    """Everything ``self.log`` recorded, and the three views the Trainer exposes, as Lightning defines them.

    Each stage (train, validate, test) has its own entries, one per (phase, name). The loop tells the
    store where it is with ``enter(stage, phase)``: phase "batch" is inside the batch loop (step values
    are current: Lightning's "on_step" view), phase "epoch" is around it (epoch values are current).
    The views (``callback_metrics`` and friends) are dicts that keep the latest value of every key;
    they are brought up to date when read and whenever the loop changes stage or phase, never per step.
    """

    def __init__(self, reduce_fn: Callable[..., torch.Tensor] | None = None) -> None:
        # reduce_fn(value, reduce_op="mean"|...): the strategy's all-reduce, for sync_dist=True
        self._by_stage: dict[str, dict[tuple, _Entry]] = {}
        self.entries: dict[tuple, _Entry] = {}
        self.stage: str | None = None  # None: self.log is not allowed here (setup, on_fit_start, on_*_end ...)
        self.phase = "epoch"
        self.current_batch: Any = None
        self._sized_batch: Any = None
        self._batch_size = 1
        self.dataloader_idx: int | None = None  # the eval loader running, when there are several
        self._callback: dict[str, Any] = {}
        self._logged: dict[str, Any] = {}
        self._pbar: dict[str, Any] = {}
        self._reduce_fn = reduce_fn
        self.logging_off = False  # Trainer(barebones=True): self.log warns and records nothing (Lightning)
        self.stepped: list[_Entry] = []  # entries of the stage logged on step: loggers may want them (read by the loop)
        self._fast: dict[tuple, _Entry] = {}  # the exact call -> its entry, in the current stage and phase

    # ---- kept for code that sets the defaults directly --------------------------
    @property
    def step_defaults(self) -> bool:
        return self.phase == "batch"

    @step_defaults.setter
    def step_defaults(self, value: bool) -> None:
        self.enter(self.stage, "batch" if value else "epoch")

    # ---- the views ----------------------------------------------------------------
    @property
    def callback_metrics(self) -> dict[str, Any]:
        self.refresh()
        return self._callback

    @property
    def logged_metrics(self) -> dict[str, Any]:
        self.refresh()
        return self._logged

    @property
    def progress_bar_metrics(self) -> dict[str, Any]:
        self.refresh()
        return self._pbar

    def refresh(self) -> None:
        """Bring the views up to date with the current stage and phase (Lightning does this after every batch)."""
        if self.stage in ("train", "validate", "test"):
            self._merge(*self.collect(self.phase == "batch", self.dataloader_idx))

    flush_steps = refresh  # older name, still used by callers that read the views

    def collect(self, on_step: bool, dataloader_idx: Any = _ANY_LOADER) -> tuple[dict, dict, dict]:
        """(callback, log, progress bar) values of the current stage: Lightning's ``metrics(on_step)``."""
        callback: dict[str, Any] = {}
        log: dict[str, Any] = {}
        pbar: dict[str, Any] = {}
        training = self.stage == "train"
        for entry in self.entries.values():
            if entry.has_reset or (dataloader_idx is not _ANY_LOADER and entry.dataloader_idx != dataloader_idx):
                continue
            if on_step:
                if not entry.on_step:
                    continue
                value = entry.step_cache()
            elif entry.on_epoch:
                value = entry.compute_epoch()
            else:
                continue
            if not isinstance(value, torch.Tensor):
                continue
            step_key, epoch_key = _forked(entry)
            key = step_key if on_step else epoch_key
            if entry.logger:
                log[key] = value
            # Eval step values are no callback metrics; a "_step" fork is one only while training.
            if training or (entry.on_epoch and not on_step):
                callback[entry.name] = value
                callback[key] = value
            if entry.prog_bar:
                pbar[key] = value
        return callback, log, pbar

    def _merge(self, callback: dict, log: dict, pbar: dict) -> None:
        self._callback.update(callback)
        self._logged.update(log)
        self._pbar.update(pbar)

    # ---- where the loop is ----------------------------------------------------------
    def enter(self, stage: str | None, phase: str = "epoch", dataloader_idx: int | None = None) -> None:
        """Move to ``stage``/``phase``; leaving a batch loop, the views take its last step values.

        (Lightning refreshes the views after every batch; doing it once when the loop is left gives
        the same views without per-step work. Epoch phases refresh only when read or when the loop
        finishes an epoch, as in Lightning.)
        """
        if self.stage is not None and self.phase == "batch" and (stage != self.stage or phase != self.phase):
            self.refresh()
        self.stage = stage
        self.phase = phase
        self.dataloader_idx = dataloader_idx  # the eval loader running, when there are several
        self._fast = {}  # entries are per stage, phase and loader
        if stage is not None:
            self.entries = self._by_stage.setdefault(stage, {})
            self.stepped = [e for e in self.entries.values() if e.on_step]

    def begin(self, stage: str, step_defaults: bool, fresh: bool = True) -> None:
        """Older entry point: enter ``stage``; ``fresh`` also restarts what it accumulated."""
        if fresh:
            self.reset_stage(stage)
        self.enter(stage, "batch" if step_defaults else "epoch")

    def reset_stage(self, stage: str) -> None:
        """End of an epoch or evaluation run: accumulators restart, entries hide until logged again."""
        self._fast = {}  # the next log of each entry goes the full way, which shows it again
        for entry in self._by_stage.get(stage, {}).values():
            entry.reset()

    def reset_all(self) -> None:
        """A new trainer run: nothing logged before is visible (Lightning resets results and views)."""
        self._by_stage.clear()
        self.entries = {}
        self._fast = {}
        self.stepped = []
        self._callback = {}
        self._logged = {}
        self._pbar = {}
        self.stage = None
        self.phase = "epoch"
        self.dataloader_idx = None

    def clear_views(self) -> None:
        """Empty the three views (the learning-rate finder's range test leaves nothing visible)."""
        self._callback.clear()
        self._logged.clear()
        self._pbar.clear()

    # ---- called from LightningModule.log --------------------------------------------
    def log(self, module: Any, name: str, value: Any, prog_bar: bool, logger: bool | None, on_step: bool | None,
            on_epoch: bool | None, reduce_fx: Any, enable_graph: bool, sync_dist: bool, add_dataloader_idx: bool,
            batch_size: int | None) -> None:
        # Fast path: the same call as before in this stage, phase and loader (the common case, once per step per
        # metric) skips the checks and key building below; only the value is looked at. (_fast is emptied
        # whenever those change and when entries are reset, so an entry found here is shown and up to date.)
        fast_key = (name, prog_bar, logger, on_step, on_epoch, reduce_fx, sync_dist, add_dataloader_idx)
        entry = self._fast.get(fast_key)
        if (entry is not None and type(value) is _Tensor and not enable_graph and value.ndim == 0
                and (value.dtype is _F32 or value.dtype is _F64)):
            if entry.step_only:
                # Kept as given: step_cache() detaches it when it is read, which most steps never are (the loop
                # holds the step's graph until the next step anyway), and a detach costs ~2k instructions.
                entry.step_value = value
                return
            if value.requires_grad:
                value = value.detach()
            if batch_size is None:
                batch_size = 1
                if entry.reduce == "mean":
                    batch = self.current_batch
                    if batch is not self._sized_batch:
                        self._sized_batch = batch
                        self._batch_size = extract_batch_size(batch)
                    batch_size = self._batch_size
            entry.update(value, batch_size or 1)
            return
        self._log(name, value, prog_bar, logger, on_step, on_epoch, reduce_fx, enable_graph, sync_dist,
                  add_dataloader_idx, batch_size, fast_key)

    def _log(self, name: str, value: Any, prog_bar: bool, logger: bool | None, on_step: bool | None,
             on_epoch: bool | None, reduce_fx: Any, enable_graph: bool, sync_dist: bool, add_dataloader_idx: bool,
             batch_size: int | None, fast_key: tuple) -> None:
        if self.logging_off:
            import warnings

            warnings.warn(f"self.log({name!r}, ...) is ignored: Trainer(barebones=True) switches logging off.",
                          UserWarning, stacklevel=4)
            return
        stage, logger = self.stage, True if logger is None else logger
        if stage == "predict":
            raise RuntimeError(f"self.log({name!r}, ...) is not supported during predict; return values from "
                               "predict_step instead.")
        rules = _PHASES.get((stage, self.phase)) if stage is not None else None
        if rules is None:
            raise RuntimeError(f"self.log({name!r}, ...) is not allowed here: log from the training, validation or "
                               "test steps and their batch/epoch hooks (not from setup, configure_*, on_fit_*, "
                               "on_*_end or the dataloader hooks).")
        if not isinstance(name, str) or not name:
            raise ValueError(f"self.log(name={name!r}): the name must be a non-empty string.")
        is_metric = hasattr(value, "compute") and hasattr(value, "update") and not isinstance(value, torch.Tensor)
        if not is_metric:
            if isinstance(value, torch.Tensor):
                if value.numel() != 1:
                    raise ValueError(f"self.log({name!r}, value) needs a scalar; got a tensor of shape "
                                     f"{tuple(value.shape)}. Reduce it first, e.g. value.mean().")
                if not enable_graph:
                    value = value.detach()
                if value.ndim:
                    value = value.reshape(())
                if value.dtype is not torch.float32 and value.dtype is not torch.float64:
                    value = value.to(torch.get_default_dtype())  # ints and half floats are kept in fp32 (Lightning)
            elif isinstance(value, (int, float)):
                value = torch.tensor(float(value), dtype=torch.get_default_dtype())
            else:
                raise ValueError(f"self.log({name!r}, value) needs a number, a scalar tensor or a torchmetrics "
                                 f"Metric; got {type(value).__name__}.")
        default_step, default_epoch, step_allowed = rules
        if on_step is None:
            on_step = default_step
        if on_epoch is None:
            on_epoch = default_epoch
        if on_step and not step_allowed:
            raise ValueError(f"self.log({name!r}, on_step=True) is not allowed in an epoch-level hook (on_*_start, "
                             "on_*_epoch_start, on_*_epoch_end); log it from the step or drop on_step.")
        reduce = _reduce_name(reduce_fx)
        dl_idx = self.dataloader_idx
        if add_dataloader_idx and "/dataloader_idx_" in name:
            raise ValueError(f"self.log({name!r}): the name must not contain '/dataloader_idx_'; the index is added "
                             "for you (or pass add_dataloader_idx=False).")
        key_name = f"{name}/dataloader_idx_{dl_idx}" if add_dataloader_idx and dl_idx is not None else name
        key = (self.phase, key_name)
        entry = self.entries.get(key)
        if entry is None:
            entry = _Entry(key_name, on_step, on_epoch, prog_bar, logger, reduce, sync_dist, dl_idx,
                           is_metric_object=is_metric)
            self._check_collision(entry)
            self.entries[key] = entry
            if on_step:
                self.stepped.append(entry)
        elif entry.settings() != (on_step, on_epoch, reduce, prog_bar, logger):
            raise ValueError(
                f"self.log({name!r}) was called with on_step={on_step}, on_epoch={on_epoch}, reduce_fx={reduce!r}, "
                f"prog_bar={prog_bar}, logger={logger}, but the same name was logged earlier here with "
                f"on_step={entry.on_step}, on_epoch={entry.on_epoch}, reduce_fx={entry.reduce!r}, "
                f"prog_bar={entry.prog_bar}, logger={entry.logger}. Use one setting per name."
            )
        if sync_dist and self._reduce_fn is not None and not is_metric:
            value = self._reduce_fn(value, reduce_op=reduce)
        elif not is_metric:
            self._fast[fast_key] = entry  # next time this exact call goes straight to the update
        if on_epoch and not is_metric and batch_size is None:
            batch_size = 1
            if reduce == "mean":
                batch = self.current_batch
                if batch is not self._sized_batch:  # the batch size is found once per batch
                    self._sized_batch = batch
                    self._batch_size = extract_batch_size(batch)
                batch_size = self._batch_size
        entry.update(value, batch_size or 1)

    def _check_collision(self, new: _Entry) -> None:
        step_key, epoch_key = _forked(new)
        for other in self.entries.values():
            if other.name == new.name:
                continue  # the same name from another hook: the later one wins, as in Lightning
            theirs = set(_forked(other)) - {None}
            for mine in (step_key, epoch_key):
                if mine is not None and mine in theirs:
                    raise ValueError(
                        f"self.log({new.name!r}) would be stored under {mine!r}, which metric {other.name!r} already "
                        "uses (a metric logged with on_step=True and on_epoch=True appears as '<name>_step' and "
                        "'<name>_epoch'). Rename one of them."
                    )

    # ---- the values loggers receive ---------------------------------------------------
    def step_log_values(self) -> dict[str, Any]:
        """Step values bound for loggers (each on_step metric's latest value); the views take them too."""
        callback, log, pbar = self.collect(True, self.dataloader_idx if self.stage != "train" else _ANY_LOADER)
        self._merge(callback, log, pbar)
        return log

    def epoch_log_values(self, dataloader_idx: Any = _ANY_LOADER) -> dict[str, Any]:
        """Epoch values bound for loggers; the views take them too."""
        callback, log, pbar = self.collect(False, dataloader_idx)
        self._merge(callback, log, pbar)
        return log

    # ---- exact resume (ember.checkpoint saves these in every full checkpoint) ----
    _ENTRY_FIELDS = ("name", "on_step", "on_epoch", "prog_bar", "logger", "reduce", "sync_dist", "dataloader_idx",
                     "step_value", "total", "weight", "epoch_value", "has_reset")

    def state_dict(self) -> dict[str, Any]:
        """The training epoch's accumulators and the metric views, so a mid-epoch resume logs the same numbers.

        torchmetrics ``Metric`` objects are left out: they keep their own state.
        """
        entries = []
        for key, e in self._by_stage.get("train", {}).items():
            if e.is_metric_object:
                continue
            e.step_cache()  # detaches a step value log() kept as given
            saved = {f: getattr(e, f) for f in self._ENTRY_FIELDS}
            saved["key"] = list(key)
            saved["pending_values"] = [v.detach() for v, _ in e.pending]
            saved["pending_weights"] = [w for _, w in e.pending]
            entries.append(saved)
        self.refresh()
        return {"train_entries": entries, "callback_metrics": dict(self._callback),
                "logged_metrics": dict(self._logged), "progress_bar_metrics": dict(self._pbar)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        train: dict[tuple, _Entry] = {}
        for saved in state.get("train_entries", []):
            entry = _Entry(**{f: saved[f] for f in self._ENTRY_FIELDS if f in saved})
            entry.pending = list(zip(saved["pending_values"], saved["pending_weights"]))
            train[tuple(saved["key"])] = entry
        self._by_stage["train"] = train
        self._fast = {}
        if self.stage == "train":
            self.entries = train
            self.stepped = [e for e in train.values() if e.on_step]
        self._callback = dict(state.get("callback_metrics", {}))
        self._logged = dict(state.get("logged_metrics", {}))
        self._pbar = dict(state.get("progress_bar_metrics", {}))



def as_floats(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: (v.item() if isinstance(v, torch.Tensor) else float(v)) for k, v in metrics.items()}


# ---- what reaches the loggers, and when ---------------------------------------------------------------
# Lightning's schedule: step values reach the loggers every log_every_n_steps optimizer steps; epoch values
# once per epoch/evaluation; each write is stamped with the count of optimizer steps taken before the
# current batch (Lightning's "batches that stepped"). ``run`` is the loop's ``Run``.
def publish_step_metrics(run: Any, eval_stage: str | None = None, dataloader_idx: int = 0) -> None:
    """Step values to the loggers: after a training batch (when due) or after an eval batch."""
    metrics, state = run.metrics, run.state
    if not metrics.stepped or not run.loggers or state.sanity_checking:
        return
    if eval_stage is not None:
        # Eval step values are stamped with the batch count of their loader (Lightning), without 'epoch'.
        write_logs(run, metrics.step_log_values(), step=state.eval_steps_seen.get(dataloader_idx, 0), add_epoch=False)
        return
    if state.accumulated != 0 and run.module.automatic_optimization:
        return  # only after an optimizer step
    n = run.config.log_every_n_steps
    if n and (state.batches_that_stepped % n == 0 or state.should_stop):
        write_logs(run, metrics.step_log_values(), step=state.batches_that_stepped - 1)


def write_logs(run: Any, values: dict[str, Any], step: int | None = None, add_epoch: bool = True) -> None:
    """Lightning's ``log_metrics``: floats to every logger; 'epoch' is added when the step is implied."""
    if not run.loggers or not values:
        return
    state = run.state
    run.metrics._logged.update(values)
    floats = as_floats(values)
    if step is None:
        logged_step = floats.pop("step", None)  # a metric named "step" sets the x-axis (Lightning)
        if logged_step is not None:
            step = int(logged_step)
        elif state.fn == "fit" and state.accumulated == 0:
            # ember counts a batch's optimizer step right after it; Lightning after the batch's validation.
            step = max(state.batches_that_stepped - 1, 0)
        else:
            step = state.batches_that_stepped
    if add_epoch and "step" not in values:
        floats.setdefault("epoch", state.current_epoch)
    for lg in run.loggers:
        lg.log_metrics(floats, step=step)


def write_train_epoch(run: Any) -> None:
    """After on_train_epoch_end: the epoch values, with the step count of the epoch's last batch (Lightning)."""
    write_logs(run, run.metrics.epoch_log_values(), step=max(run.state.batches_that_stepped - 1, 0))
    run.metrics.reset_stage("train")


def eval_loader_values(run: Any, dataloader_idx: int | None) -> dict[str, Any]:
    """The epoch values of one eval loader, kept for validate()/test()'s return (not during sanity)."""
    return {} if run.state.sanity_checking else run.metrics.epoch_log_values(dataloader_idx)


def write_eval_epoch(run: Any, outputs: list[dict[str, Any]]) -> list[dict[str, float]]:
    """After on_*_epoch_end: merge what the epoch hooks logged into each loader's values, write them."""
    metrics = run.metrics
    metrics.refresh()  # the views take the epoch values, sanity check included
    if run.state.sanity_checking:
        return []
    at_end = metrics.epoch_log_values(None)
    everything: dict[str, Any] = {}
    for out in outputs:
        everything.update(out)
        out.update(at_end)
    everything.update(at_end)
    write_logs(run, everything)
    return [as_floats(out) for out in outputs]


def print_eval_results(stage: str, results: list[dict[str, float]]) -> None:
    """The table validate()/test() print: one block of metrics per loader."""
    for idx, metrics in enumerate(results):
        if not metrics:
            continue
        title = f"{stage} metric" + (f" (dataloader {idx})" if len(results) > 1 else "")
        width = max(len(title), *(len(k) for k in metrics))
        print(f"{title:<{width}}  value")
        for key, value in sorted(metrics.items()):
            print(f"{key:<{width}}  {value:.6g}")
