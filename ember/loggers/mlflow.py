"""MLflow logger: parameters, metrics by step and checkpoints as artifacts of one MLflow run.

``mlflow`` (``mlflow-skinny`` is enough) is an optional dependency, imported when the logger is built.
The tracking store is MLflow's: ``tracking_uri`` (or ``$MLFLOW_TRACKING_URI``), else a file store
under ``save_dir``. MLflow 3 refuses a ``file:`` store unless ``MLFLOW_ALLOW_FILE_STORE=true`` is
set; that error comes from MLflow at construction, before any training.
"""
from __future__ import annotations

import os
import re
import tempfile
import time
import warnings
from argparse import Namespace
from typing import TYPE_CHECKING, Any, Literal, Mapping

from ember.loggers.artifacts import (
    checkpoint_aliases,
    checkpoint_metadata,
    checkpoints_to_log,
    uploads_now,
)
from ember.loggers.base import Logger, _add_prefix, _convert_params, _flatten, _rank_zero_only, rank_zero_experiment

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

LOCAL_FILE_URI_PREFIX = "file:"
_MISSING_MLFLOW = (
    "MLFlowLogger needs the `mlflow` package, which is not installed. "
    "Install it with `pip install mlflow-skinny` (or `pip install ember[mlflow]`)."
)
# Lightning cuts parameter values at 250 characters (MLflow's old limit); ember writes the same values.
_PARAM_LENGTH = 250
_PARAMS_PER_BATCH = 100  # MLflow's limit for one log_batch call
# The characters MLflow accepts in a metric name besides letters and digits.
_NOT_IN_METRIC_NAME = re.compile(r"[^a-zA-Z0-9_/. -]+")
_RUN_STATUS = {"success": "FINISHED", "finished": "FINISHED", "failed": "FAILED"}


class MLFlowLogger(Logger):
    """Log to one MLflow run of the experiment ``experiment_name`` (created when missing).

    ``log_model=True`` uploads the checkpoints once fitting ends, ``"all"`` after every save, ``False``
    never. ``run_id`` continues an existing run. ``synchronous=False`` lets MLflow log in the background.
    """

    LOGGER_JOIN_CHAR = "-"

    def __init__(
        self,
        experiment_name: str = "lightning_logs",
        run_name: str | None = None,
        tracking_uri: str | None = None,
        tags: dict[str, Any] | None = None,
        save_dir: str | None = "./mlruns",
        log_model: Literal[True, False, "all"] = False,
        prefix: str = "",
        artifact_location: str | None = None,
        run_id: str | None = None,
        synchronous: bool | None = None,
    ) -> None:
        if log_model not in (True, False, "all") or (log_model != "all" and not isinstance(log_model, bool)):
            raise ValueError(f"MLFlowLogger(log_model={log_model!r}) is not valid; allowed: True, False, 'all'.")
        if synchronous is not None and not isinstance(synchronous, bool):
            raise ValueError(f"MLFlowLogger(synchronous={synchronous!r}) is not valid; allowed: None, True, False.")
        try:
            from mlflow.tracking import MlflowClient
        except ModuleNotFoundError as err:
            raise ModuleNotFoundError(_MISSING_MLFLOW) from err
        # Read when the logger is built (not when ember is imported), so a variable set later still counts.
        tracking_uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"{LOCAL_FILE_URI_PREFIX}{save_dir}"
        self._experiment_name = experiment_name
        self._experiment_id: str | None = None
        self._tracking_uri = tracking_uri
        self._run_name = run_name
        self._run_id = run_id
        self.tags = tags
        self._log_model = log_model
        self._prefix = prefix
        self._artifact_location = artifact_location
        self._batch_options = {} if synchronous is None else {"synchronous": synchronous}
        self._uploaded: dict[str, float] = {}  # checkpoint path -> its mtime when uploaded
        self._checkpoint_callback: Any = None  # log_model=True: uploaded by finalize
        self._started = False
        # Built now so that a bad tracking URI (or MLflow refusing a file store) fails before training.
        self._client = MlflowClient(tracking_uri)

    # ------------------------------------------------------------------ the run
    @property
    @rank_zero_experiment
    def experiment(self) -> MlflowClient:
        """The ``MlflowClient``; the first access finds or creates the experiment and the run."""
        if not self._started:
            self._start()
        return self._client

    def _start(self) -> None:
        import mlflow

        # MLflow's own calls in user code (mlflow.log_*) then go to the same store.
        mlflow.set_tracking_uri(self._tracking_uri)
        if self._run_id is not None:
            self._experiment_id = self._client.get_run(self._run_id).info.experiment_id
            self._started = True
            return
        found = self._client.get_experiment_by_name(self._experiment_name)
        if found is not None and found.lifecycle_stage != "deleted":
            self._experiment_id = found.experiment_id
        else:
            self._experiment_id = self._client.create_experiment(
                name=self._experiment_name, artifact_location=self._artifact_location)
        tags = dict(self.tags or {})
        if self._run_name is not None:
            from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME

            tags[MLFLOW_RUN_NAME] = self._run_name  # run_name wins over a tag of the same name (Lightning)
        from mlflow.tracking.context.registry import resolve_tags

        # resolve_tags adds MLflow's context tags (source, user, git commit), as mlflow.start_run does.
        run = self._client.create_run(experiment_id=self._experiment_id, tags=resolve_tags(tags))
        self._run_id = run.info.run_id
        self._started = True

    @property
    def run_id(self) -> str | None:
        _ = self.experiment
        return self._run_id

    @property
    def experiment_id(self) -> str | None:
        _ = self.experiment
        return self._experiment_id

    @property
    def name(self) -> str | None:
        """The experiment id (the directory level ModelCheckpoint puts below ``save_dir``)."""
        return self.experiment_id

    @property
    def version(self) -> str | None:
        """The run id."""
        return self.run_id

    @property
    def save_dir(self) -> str | None:
        """The local directory of a ``file:`` tracking store; ``None`` for any other store."""
        if self._tracking_uri.startswith(LOCAL_FILE_URI_PREFIX):
            return self._tracking_uri[len(LOCAL_FILE_URI_PREFIX):]
        return None

    # ------------------------------------------------------------------ logging
    @_rank_zero_only
    def log_hyperparams(self, params: dict[str, Any] | Namespace) -> None:
        from mlflow.entities import Param

        flat = _flatten(_convert_params(params))
        entries = [Param(key=key, value=str(value)[:_PARAM_LENGTH]) for key, value in flat.items()]
        for start in range(0, len(entries), _PARAMS_PER_BATCH):
            self.experiment.log_batch(run_id=self.run_id, params=entries[start:start + _PARAMS_PER_BATCH],
                                      **self._batch_options)

    @_rank_zero_only
    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        entries = []
        for key, value in _add_prefix(metrics, self._prefix, self.LOGGER_JOIN_CHAR).items():
            if isinstance(value, str):
                warnings.warn(f"MLFlowLogger: metric {key!r} has the string value {value!r}; MLflow stores numbers "
                              "only, so it is not logged.", UserWarning, stacklevel=2)
                continue
            allowed = _NOT_IN_METRIC_NAME.sub("", key)
            if allowed != key:
                warnings.warn(f"MLFlowLogger: MLflow allows only letters, digits and '_', '/', '.', ' ', '-' in a "
                              f"metric name; {key!r} is logged as {allowed!r}.", RuntimeWarning, stacklevel=2)
            number = value.item() if hasattr(value, "item") else value
            entries.append(Metric(key=allowed, value=float(number), timestamp=stamp, step=step or 0))
        self.experiment.log_batch(run_id=self.run_id, metrics=entries, **self._batch_options)

    # ------------------------------------------------------------------ checkpoints and the end
    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        if uploads_now(self._log_model, checkpoint_callback):
            self._upload_checkpoints(checkpoint_callback)
        elif self._log_model is True:
            self._checkpoint_callback = checkpoint_callback

    def _upload_checkpoints(self, callback: Any) -> None:
        import yaml  # a dependency of mlflow

        for checkpoint in checkpoints_to_log(callback, self._uploaded):
            # Each file gets a folder named after it: the checkpoint, its metadata and its aliases.
            folder = os.path.splitext(os.path.basename(checkpoint.path))[0]
            self.experiment.log_artifact(self._run_id, checkpoint.path, folder)
            with tempfile.TemporaryDirectory() as tmp:
                with open(os.path.join(tmp, "metadata.yaml"), "w") as fp:
                    yaml.dump(checkpoint_metadata(callback, checkpoint), fp, default_flow_style=False)
                with open(os.path.join(tmp, "aliases.txt"), "w") as fp:
                    fp.write(str(checkpoint_aliases(callback, checkpoint.path)))
                self.experiment.log_artifacts(self._run_id, tmp, folder)
            self._uploaded[checkpoint.path] = checkpoint.mtime

    @_rank_zero_only
    def finalize(self, status: str = "success") -> None:
        if not self._started:
            return  # nothing was logged: no run to close
        if self._checkpoint_callback is not None:
            self._upload_checkpoints(self._checkpoint_callback)
        self.experiment.set_terminated(self._run_id, _RUN_STATUS.get(status, status))
