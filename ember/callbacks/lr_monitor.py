"""Log the learning rate (and optionally momentum and weight decay) of every optimizer to the loggers."""
from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch

from .callback import Callback
from .log_schedule import should_update_logs


class LearningRateMonitor(Callback):
    """Logs ``lr-<Optimizer>`` (or the scheduler's ``name``) per parameter group, as Lightning names them.

    ``logging_interval=None`` follows each scheduler's own interval ("step" schedulers are logged every
    ``log_every_n_steps`` steps, "epoch" ones when an epoch starts); "step" or "epoch" forces one.
    """

    def __init__(self, logging_interval: str | None = None, log_momentum: bool = False,
                 log_weight_decay: bool = False) -> None:
        if logging_interval not in (None, "step", "epoch"):
            raise ValueError(f"LearningRateMonitor(logging_interval={logging_interval!r}) is not valid; allowed: "
                             "None, 'step', 'epoch'.")
        self.logging_interval = logging_interval
        self.log_momentum = log_momentum
        self.log_weight_decay = log_weight_decay
        self.lrs: dict[str, list[float]] = {}
        self.last_momentum_values: dict[str, float | None] = {}
        self.last_weight_decay_values: dict[str, float | None] = {}

    def on_train_start(self, trainer: Any, *args: Any, **kwargs: Any) -> None:
        if not trainer.loggers:
            raise ValueError("LearningRateMonitor needs a logger to write to, but the Trainer has none "
                             "(logger=False). Give the Trainer a logger or drop the callback.")
        if self.log_momentum and not all("momentum" in o.defaults or "betas" in o.defaults
                                         for o in self._all_optimizers(trainer)):
            import warnings

            warnings.warn("LearningRateMonitor(log_momentum=True): some optimizers have no momentum; 0 is logged "
                          "for them.", RuntimeWarning, stacklevel=2)
        names = [n for group in self._names(trainer)[0] for n in group]
        self.lrs = {n: [] for n in names}
        self.last_momentum_values = {n + "-momentum": None for n in names}
        self.last_weight_decay_values = {n + "-weight_decay": None for n in names}

    def on_train_batch_start(self, trainer: Any, *args: Any, **kwargs: Any) -> None:
        if not should_update_logs(trainer, after_step=False):  # the step about to be taken is a logging step
            return
        if self.logging_interval != "epoch":
            self._log(trainer, "step" if self.logging_interval is None else "any")

    def on_train_epoch_start(self, trainer: Any, *args: Any, **kwargs: Any) -> None:
        if self.logging_interval != "step":
            self._log(trainer, "epoch" if self.logging_interval is None else "any")

    # ---- helpers ------------------------------------------------------------------------
    def _log(self, trainer: Any, interval: str) -> None:
        stats = self._extract_stats(trainer, interval)
        if stats:
            for lg in trainer.loggers:
                lg.log_metrics(stats, step=trainer.state.batches_that_stepped)

    @staticmethod
    def _all_optimizers(trainer: Any) -> list[Any]:
        return [getattr(o, "optimizer", o) for o in trainer.optimizers]

    def _names(self, trainer: Any) -> tuple[list[list[str]], list[Any], list[Any]]:
        """Names per parameter group: scheduled optimizers first, then the rest; plus both optimizer lists."""
        names: list[list[str]] = []
        seen: list[Any] = []
        type_count: dict[type, int] = defaultdict(int)
        scheduled = []
        for config in trainer.lr_scheduler_configs:
            opt = config.scheduler.optimizer
            base = config.name if config.name is not None else "lr-" + type(opt).__name__
            names.append(self._group_names(opt, base, seen, type_count, named=config.name is not None))
            scheduled.append(opt)
        plain = []
        for opt in self._all_optimizers(trainer):
            if opt in seen:
                continue
            names.append(self._group_names(opt, "lr-" + type(opt).__name__, seen, type_count, named=False))
            plain.append(opt)
        return names, scheduled, plain

    @staticmethod
    def _group_names(opt: Any, base: str, seen: list[Any], type_count: dict[type, int], named: bool) -> list[str]:
        seen.append(opt)
        if not named:
            type_count[type(opt)] += 1
        groups = opt.param_groups
        group_names = [g.get("name", f"pg{i}") for i, g in enumerate(groups, start=1)]
        if len(set(group_names)) != len(group_names):
            raise ValueError(f"{base}: parameter groups of one optimizer need distinct 'name' values; got "
                             f"{group_names}.")
        count = type_count.get(type(opt), 0)
        if count > 1:
            base = f"{base}-{count - 1}"  # a second SGD becomes lr-SGD-1
        if len(groups) > 1:
            return [f"{base}/{g.get('name', f'pg{i}')}" for i, g in enumerate(groups, start=1)]
        return [f"{base}/{groups[0]['name']}" if groups[0].get("name") else base]

    def _extract_stats(self, trainer: Any, interval: str) -> dict[str, float]:
        names, scheduled, plain = self._names(trainer)
        stats: dict[str, float] = {}
        configs = trainer.lr_scheduler_configs
        for group_names, config in zip(names[:len(configs)], configs):
            if interval in (config.interval, "any"):
                stats.update(self._optimizer_stats(config.scheduler.optimizer, group_names))
        for group_names, opt in zip(names[len(configs):], plain):
            stats.update(self._optimizer_stats(opt, group_names))
        # Lightning also exposes them to callbacks (e.g. to checkpoint on the lr).
        device = trainer.strategy.root_device
        trainer.callback_metrics.update({k: torch.tensor(v, device=device) for k, v in stats.items()})
        return stats

    def _optimizer_stats(self, opt: Any, names: list[str]) -> dict[str, float]:
        stats: dict[str, float] = {}
        use_betas = "betas" in opt.defaults
        for group, name in zip(opt.param_groups, names):
            stats[name] = group["lr"]
            self.lrs.setdefault(name, []).append(group["lr"])
            if self.log_momentum:
                momentum = group["betas"][0] if use_betas else group.get("momentum", 0)
                self.last_momentum_values[f"{name}-momentum"] = momentum
                stats[f"{name}-momentum"] = momentum
            if self.log_weight_decay:
                self.last_weight_decay_values[f"{name}-weight_decay"] = group["weight_decay"]
                stats[f"{name}-weight_decay"] = group["weight_decay"]
        return stats
