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
    return 1


@dataclass(eq=False)
class _Entry:
    name: str
    on_step: bool
    on_epoch: bool
    prog_bar: bool
    logger: bool
    reduce: str
    sync_dist: bool
    step_value: Any = None
    pending: list = field(default_factory=list)  # (tensor, weight) not yet folded
    total: Any = None  # folded running reduction
    weight: float = 0.0
    epoch_value: Any = None
    is_metric_object: bool = False
    stepped: bool = False  # has a step value waiting for take_step_values()

    def settings(self) -> tuple:
        return (self.on_step, self.on_epoch, self.reduce)

    def fold(self) -> None:
        if not self.pending:
            return
        values = torch.stack([v.to(torch.float64) if v.dtype != torch.float64 else v for v, _ in self.pending])
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
        if self.is_metric_object:
            return self.step_value.compute() if self.step_value is not None else None
        self.fold()
        if self.total is None:
            return None
        value = self.total / self.weight if self.reduce == "mean" else self.total
        return value.to(torch.float32)


def _forked(entry: _Entry) -> tuple[str | None, str | None]:
    """The keys a metric appears under for its step and epoch values."""
    if entry.on_step and entry.on_epoch:
        return f"{entry.name}_step", f"{entry.name}_epoch"
    return (entry.name if entry.on_step else None), (entry.name if entry.on_epoch else None)


class MetricStore:
    """Everything logged during one trainer stage, plus the views the Trainer exposes."""

    def __init__(self, reduce_fn: Callable[[torch.Tensor, str], torch.Tensor] | None = None) -> None:
        self._by_stage: dict[str, dict[str, _Entry]] = {}
        self.entries: dict[str, _Entry] = {}
        self.step_defaults = True  # inside a training batch: on_step=True, on_epoch=False
        self.stage = "train"
        self.current_batch: Any = None
        self.dataloader_suffix = ""  # "/dataloader_idx_N" with several eval loaders
        self.callback_metrics: dict[str, Any] = {}
        self.logged_metrics: dict[str, Any] = {}
        self.progress_bar_metrics: dict[str, Any] = {}
        self._reduce_fn = reduce_fn
        self._stepped_keys: list[_Entry] = []

    # ---- called from LightningModule.log -----------------------------------
    def log(self, module: Any, name: str, value: Any, *, prog_bar: bool, logger: bool, on_step: bool | None,
            on_epoch: bool | None, reduce_fx: Any, enable_graph: bool, sync_dist: bool, add_dataloader_idx: bool,
            batch_size: int | None) -> None:
        if self.stage == "predict":
            raise RuntimeError(f"self.log({name!r}, ...) is not supported during predict; return values from "
                               "predict_step instead.")
        if not isinstance(name, str) or not name:
            raise ValueError(f"self.log(name={name!r}): the name must be a non-empty string.")
        is_metric = hasattr(value, "compute") and hasattr(value, "update") and not isinstance(value, torch.Tensor)
        if not is_metric:
            if isinstance(value, torch.Tensor):
                if value.numel() != 1:
                    raise ValueError(f"self.log({name!r}, value) needs a scalar; got a tensor of shape "
                                     f"{tuple(value.shape)}. Reduce it first, e.g. value.mean().")
                value = value if enable_graph else value.detach()
                if value.ndim:
                    value = value.reshape(())
            elif isinstance(value, (int, float, bool)):
                value = torch.tensor(float(value))
            else:
                raise ValueError(f"self.log({name!r}, value) needs a number, a scalar tensor or a torchmetrics "
                                 f"Metric; got {type(value).__name__}.")
        if on_step is None:
            on_step = self.step_defaults
        if on_epoch is None:
            on_epoch = not self.step_defaults
        reduce = _reduce_name(reduce_fx)
        key = name + self.dataloader_suffix if add_dataloader_idx else name
        entry = self.entries.get(key)
        if entry is None:
            entry = _Entry(key, on_step, on_epoch, prog_bar, logger, reduce, sync_dist, is_metric_object=is_metric)
            self._check_collision(entry)
            self.entries[key] = entry
        elif entry.settings() != (on_step, on_epoch, reduce):
            raise ValueError(
                f"self.log({name!r}) was called with on_step={on_step}, on_epoch={on_epoch}, reduce_fx={reduce!r}, "
                f"but the same name was logged earlier in this stage with on_step={entry.on_step}, "
                f"on_epoch={entry.on_epoch}, reduce_fx={entry.reduce!r}. Use one setting per name."
            )
        if sync_dist and self._reduce_fn is not None and not is_metric:
            value = self._reduce_fn(value, "sum" if reduce == "sum" else reduce)
        if on_step:
            if not entry.stepped:
                entry.stepped = True
                self._stepped_keys.append(entry)
            entry.step_value = value
        elif is_metric:
            entry.step_value = value
        if on_epoch and not is_metric:
            if batch_size is None:
                batch_size = extract_batch_size(self.current_batch) if reduce == "mean" else 1
            entry.pending.append((value, batch_size))
            if len(entry.pending) >= _FOLD:
                entry.fold()

    def _check_collision(self, new: _Entry) -> None:
        step_key, epoch_key = _forked(new)
        for other in self.entries.values():
            theirs = set(_forked(other)) - {None}
            for mine in (step_key, epoch_key):
                if mine is not None and mine in theirs:
                    raise ValueError(
                        f"self.log({new.name!r}) would be stored under {mine!r}, which metric {other.name!r} already "
                        "uses (a metric logged with on_step=True and on_epoch=True appears as '<name>_step' and "
                        "'<name>_epoch'). Rename one of them."
                    )

    # ---- called by the loop -------------------------------------------------
    def take_step_values(self) -> dict[str, tuple[_Entry, Any]]:
        """The step values logged since the last call, keyed by their step key."""
        out = {}
        for entry in self._stepped_keys:
            entry.stepped = False
            step_key, _ = _forked(entry)
            out[step_key] = (entry, entry.step_value)
        self._stepped_keys.clear()
        return out

    def flush_steps(self) -> None:
        """Publish step values logged since the last flush (callers read the views on demand, not per step)."""
        if self._stepped_keys:
            self.publish_step(self.take_step_values())

    def publish_step(self, values: dict[str, tuple[_Entry, Any]]) -> dict[str, Any]:
        """Make step values visible to callbacks and the bar; return those bound for loggers."""
        to_logger = {}
        for key, (entry, value) in values.items():
            self.callback_metrics[key] = value
            if entry.on_epoch:
                self.callback_metrics[entry.name] = value
            if entry.prog_bar:
                self.progress_bar_metrics[key] = value
            if entry.logger:
                to_logger[key] = value
        return to_logger

    def finish_epoch(self) -> dict[str, Any]:
        """Compute every epoch value of the stage; returns those bound for loggers."""
        to_logger = {}
        for entry in self.entries.values():
            if not entry.on_epoch:
                continue
            value = entry.compute_epoch()
            if value is None:
                continue
            entry.epoch_value = value
            _, epoch_key = _forked(entry)
            self.callback_metrics[epoch_key] = value
            self.callback_metrics[entry.name] = value
            if entry.prog_bar:
                self.progress_bar_metrics[epoch_key] = value
            if entry.logger:
                to_logger[epoch_key] = value
            if entry.is_metric_object:
                entry.step_value.reset()
            entry.pending.clear()
            entry.total = None
            entry.weight = 0.0
        return to_logger

    def begin(self, stage: str, step_defaults: bool, fresh: bool = True) -> None:
        """Switch to ``stage``; ``fresh`` drops what it accumulated before (a new epoch or evaluation run).

        Each stage keeps its own entries, so a validation run in the middle of
        a training epoch leaves the training epoch's accumulators alone.
        """
        self.flush_steps()  # step values not yet read must not be lost when the stage changes
        self.stage = stage
        self.step_defaults = step_defaults
        if fresh or stage not in self._by_stage:
            self._by_stage[stage] = {}
        self.entries = self._by_stage[stage]
        self._stepped_keys.clear()
        self.dataloader_suffix = ""

    def epoch_values(self) -> dict[str, float]:
        """Epoch values of the current stage, as floats (what validate()/test() return)."""
        out = {}
        for entry in self.entries.values():
            if entry.on_epoch and entry.epoch_value is not None:
                _, key = _forked(entry)
                out[key] = float(entry.epoch_value)
        return out

    # ---- exact resume (ember.checkpoint saves these in every full checkpoint) ----
    _ENTRY_FIELDS = ("name", "on_step", "on_epoch", "prog_bar", "logger", "reduce", "sync_dist", "step_value",
                     "total", "weight", "epoch_value", "stepped")

    def state_dict(self) -> dict[str, Any]:
        """The training epoch's accumulators and the metric views, so a mid-epoch resume logs the same numbers.

        torchmetrics ``Metric`` objects are left out: they keep their own state.
        """
        entries = {}
        for key, e in self._by_stage.get("train", {}).items():
            if e.is_metric_object:
                continue
            saved = {f: getattr(e, f) for f in self._ENTRY_FIELDS}
            saved["pending_values"] = [v.detach() for v, _ in e.pending]
            saved["pending_weights"] = [w for _, w in e.pending]
            entries[key] = saved
        stepped = [e.name for e in self._stepped_keys if not e.is_metric_object] if self.stage == "train" else []
        return {"train": entries, "stepped": stepped, "callback_metrics": dict(self.callback_metrics),
                "logged_metrics": dict(self.logged_metrics), "progress_bar_metrics": dict(self.progress_bar_metrics)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        train: dict[str, _Entry] = {}
        for key, saved in state["train"].items():
            entry = _Entry(**{f: saved[f] for f in self._ENTRY_FIELDS})
            entry.pending = list(zip(saved["pending_values"], saved["pending_weights"]))
            train[key] = entry
        self._by_stage["train"] = train
        if self.stage == "train":
            self.entries = train
            self._stepped_keys = [train[k] for k in state["stepped"] if k in train]
        for view in ("callback_metrics", "logged_metrics", "progress_bar_metrics"):
            getattr(self, view).clear()
            getattr(self, view).update(state[view])


def as_floats(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: (v.item() if isinstance(v, torch.Tensor) else float(v)) for k, v in metrics.items()}
