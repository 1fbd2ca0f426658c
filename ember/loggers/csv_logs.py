"""Plain-file logger: ``metrics.csv`` plus ``hparams.yaml`` under ``save_dir/name/version_N/``."""

from __future__ import annotations

import csv
import os
import warnings
from argparse import Namespace
from typing import Any

from ember.loggers.base import (
    _FolderLogger,
    _add_prefix,
    _convert_params,
    _rank_zero_only,
    _save_hparams_yaml,
    _scalar,
    _version_dirname,
    rank_zero_experiment,
)


class ExperimentWriter:
    """Buffers metric rows in memory and appends them to ``metrics.csv`` on ``save()``.

    The header is the sorted union of every key seen so far (``step`` included).
    When a flush brings a key the file does not have yet, the file is rewritten
    with the wider header; earlier rows keep empty cells for the new column.
    """

    NAME_METRICS_FILE = "metrics.csv"
    NAME_HPARAMS_FILE = "hparams.yaml"

    def __init__(self, log_dir: str) -> None:
        self.log_dir = log_dir
        self.metrics_file_path = os.path.join(log_dir, self.NAME_METRICS_FILE)
        self.metrics: list[dict[str, Any]] = []  # rows not yet written
        self.metrics_keys: list[str] = []  # current header
        self.hparams: dict[str, Any] = {}

        if os.path.isdir(log_dir) and os.listdir(log_dir):
            warnings.warn(
                f"Log directory {log_dir} already exists and is not empty; its metrics.csv will be replaced.",
                UserWarning,
            )
            # Appending to a previous run's file would mix two runs in one table.
            if os.path.isfile(self.metrics_file_path):
                os.remove(self.metrics_file_path)
        os.makedirs(log_dir, exist_ok=True)

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        if step is None:
            step = len(self.metrics)
        row = {key: _scalar(value) for key, value in metrics.items()}
        row["step"] = step
        self.metrics.append(row)

    def log_hparams(self, params: dict[str, Any]) -> None:
        # Later calls add to (and override) earlier ones; the file always holds the union.
        self.hparams.update(params)
        _save_hparams_yaml(os.path.join(self.log_dir, self.NAME_HPARAMS_FILE), self.hparams)

    def save(self) -> None:
        if not self.metrics:
            return
        seen = set(self.metrics_keys)
        new_keys = {key for row in self.metrics for key in row} - seen
        self.metrics_keys = sorted(seen | new_keys)
        file_exists = os.path.isfile(self.metrics_file_path)

        if new_keys and file_exists:
            # CSV has no way to add a column in place: read everything back and rewrite.
            with open(self.metrics_file_path, newline="") as fp:
                old_rows = list(csv.DictReader(fp))
            with open(self.metrics_file_path, "w", newline="") as fp:
                writer = csv.DictWriter(fp, fieldnames=self.metrics_keys)
                writer.writeheader()
                writer.writerows(old_rows)

        with open(self.metrics_file_path, "a" if file_exists else "w", newline="") as fp:
            writer = csv.DictWriter(fp, fieldnames=self.metrics_keys)
            if not file_exists:
                writer.writeheader()
            writer.writerows(self.metrics)
        self.metrics = []


class CSVLogger(_FolderLogger):
    """Log metrics to ``metrics.csv`` and hyperparameters to ``hparams.yaml``.

    Files go to ``save_dir/name/version``. ``name`` of ``None`` or ``""`` drops the
    name level. ``version=None`` picks one past the highest existing ``version_N``;
    an int N means ``version_N``; a string is used as the directory name as-is.
    Rows are buffered and written every ``flush_logs_every_n_steps`` steps and on
    ``save()``/``finalize()``. ``prefix`` is prepended to metric keys as ``prefix-key``.
    """

    def __init__(
        self,
        save_dir: str | os.PathLike,
        name: str | None = "lightning_logs",
        version: int | str | None = None,
        prefix: str = "",
        flush_logs_every_n_steps: int = 100,
    ) -> None:
        super().__init__(save_dir, name, version, prefix)
        self._flush_logs_every_n_steps = flush_logs_every_n_steps
        self._experiment: ExperimentWriter | None = None

    @property
    def log_dir(self) -> str:
        return os.path.join(self.root_dir, _version_dirname(self.version))

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            os.makedirs(self.root_dir, exist_ok=True)
            self._experiment = ExperimentWriter(self.log_dir)
        return self._experiment

    @_rank_zero_only
    def log_hyperparams(self, params: dict[str, Any] | Namespace | None = None) -> None:
        self.experiment.log_hparams(_convert_params(params))

    @_rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        metrics = _add_prefix(metrics, self._prefix, self.LOGGER_JOIN_CHAR)
        if step is None:
            step = len(self.experiment.metrics)
        self.experiment.log_metrics(metrics, step)
        if (step + 1) % self._flush_logs_every_n_steps == 0:
            self.save()

    @_rank_zero_only
    def save(self) -> None:
        self.experiment.save()

    @_rank_zero_only
    def finalize(self, status: str) -> None:
        # Nothing was ever logged from this process (e.g. the launcher of spawned workers).
        if self._experiment is None:
            return
        self.save()
