"""DeviceStatsMonitor: the accelerator's stats, logged at every batch start and end of fit's training and
evaluation and of test, as ``DeviceStatsMonitor.<event>/<stat>`` (Lightning's names)."""
from __future__ import annotations

from typing import Any

from ..runtime.device_stats import PSUTIL_MISSING, cpu_stats, psutil_available
from .callback import Callback
from .log_schedule import logged_step, next_eval_batch, should_update_logs


class DeviceStatsMonitor(Callback):
    """``cpu_stats=None``: CPU stats (psutil) only when training on the CPU; ``True``: also next to a GPU's;
    ``False``: never (on the CPU nothing is logged then). Needs a logger; logs every ``log_every_n_steps``."""

    def __init__(self, cpu_stats: bool | None = None) -> None:
        if cpu_stats not in (None, True, False):
            raise ValueError(f"DeviceStatsMonitor(cpu_stats={cpu_stats!r}): allowed: None, True, False.")
        self._cpu_stats = cpu_stats
        self._eval_batch = 0  # the batch number inside the current evaluation run (Lightning's log rule there)

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage != "fit":
            return
        if not trainer.loggers:
            raise ValueError("DeviceStatsMonitor needs a logger to write to, but the Trainer has none "
                             "(logger=False). Give the Trainer a logger or drop the callback.")
        on_cpu = trainer.strategy.root_device.type == "cpu"
        wants_cpu = self._cpu_stats or (self._cpu_stats is None and on_cpu)
        if wants_cpu and not psutil_available():  # fail before training, not at the first batch
            raise ModuleNotFoundError(f"DeviceStatsMonitor(cpu_stats={self._cpu_stats!r}) logs CPU stats, but "
                                      f"{PSUTIL_MISSING}")

    def _log(self, trainer: Any, event: str, after_step: bool, eval_batch: int | None = None) -> None:
        if not should_update_logs(trainer, after_step, eval_batch):
            return
        device = trainer.strategy.root_device
        if self._cpu_stats is False and device.type == "cpu":
            return
        stats = trainer.accelerator.get_device_stats(device)
        if self._cpu_stats and device.type != "cpu":
            stats.update(cpu_stats())
        step = logged_step(trainer, after_step)
        for lg in trainer.loggers:
            prefix = f"{type(self).__qualname__}.{event}{lg.group_separator}"
            lg.log_metrics({prefix + k: v for k, v in stats.items()}, step=step)

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self._log(trainer, "on_train_batch_start", after_step=False)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._log(trainer, "on_train_batch_end", after_step=True)

    def on_validation_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int,
                                  dataloader_idx: int = 0) -> None:
        self._eval_batch = next_eval_batch(self._eval_batch, batch_idx, dataloader_idx)
        self._log(trainer, "on_validation_batch_start", True, self._eval_batch)

    def on_validation_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int,
                                dataloader_idx: int = 0) -> None:
        self._log(trainer, "on_validation_batch_end", True, self._eval_batch)

    def on_test_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int,
                            dataloader_idx: int = 0) -> None:
        self._eval_batch = next_eval_batch(self._eval_batch, batch_idx, dataloader_idx)
        self._log(trainer, "on_test_batch_start", True, self._eval_batch)

    def on_test_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int,
                          dataloader_idx: int = 0) -> None:
        self._log(trainer, "on_test_batch_end", True, self._eval_batch)
