"""TensorBoard logger: event files via ``torch.utils.tensorboard.SummaryWriter``.

``tensorboard`` is an optional dependency and slow to import, so it is only
imported when the writer is first needed (the ``experiment`` property).
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from argparse import Namespace
from typing import TYPE_CHECKING, Any, Mapping

import torch

from ember.loggers.base import (
    _FolderLogger,
    _add_prefix,
    _convert_params,
    _flatten,
    _rank_zero_only,
    _save_hparams_yaml,
    _version_dirname,
    rank_zero_experiment,
)

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

_MISSING_TENSORBOARD = (
    "TensorBoardLogger needs the `tensorboard` package, which is not installed. "
    "Install it with `pip install tensorboard` (or `pip install ember[tensorboard]`)."
)


def _tensorboard_available() -> bool:
    # find_spec locates the package without importing it.
    return importlib.util.find_spec("tensorboard") is not None


class TensorBoardLogger(_FolderLogger):
    """Log to TensorBoard event files under ``save_dir/name/version[/sub_dir]``.

    Directory rules for ``name``/``version`` are the same as ``CSVLogger``'s.
    ``log_hyperparams`` also writes ``hparams.yaml`` and, when ``default_hp_metric``
    is set and no metric is given, logs a placeholder ``hp_metric`` of -1 so the run
    shows up in TensorBoard's HPARAMS tab. Extra ``kwargs`` go to ``SummaryWriter``
    (e.g. ``flush_secs``, ``max_queue``).
    """

    NAME_HPARAMS_FILE = "hparams.yaml"

    def __init__(
        self,
        save_dir: str | os.PathLike,
        name: str | None = "lightning_logs",
        version: int | str | None = None,
        log_graph: bool = False,
        default_hp_metric: bool = True,
        prefix: str = "",
        sub_dir: str | os.PathLike | None = None,
        **kwargs: Any,
    ) -> None:
        # Fail at construction, not at the first log call deep inside training.
        if not _tensorboard_available():
            raise ModuleNotFoundError(_MISSING_TENSORBOARD)
        super().__init__(save_dir, name, version, prefix)
        self._log_graph = log_graph
        self._default_hp_metric = default_hp_metric
        self._sub_dir = None if sub_dir is None else os.fspath(sub_dir)
        self._kwargs = kwargs
        self._experiment: SummaryWriter | None = None
        self.hparams: dict[str, Any] = {}

    @property
    def sub_dir(self) -> str | None:
        return self._sub_dir

    @property
    def log_dir(self) -> str:
        log_dir = os.path.join(self.root_dir, _version_dirname(self.version))
        if self.sub_dir is not None:
            log_dir = os.path.join(log_dir, self.sub_dir)
        return os.path.expanduser(os.path.expandvars(log_dir))

    @property
    @rank_zero_experiment
    def experiment(self) -> SummaryWriter:
        if self._experiment is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ModuleNotFoundError as err:
                raise ModuleNotFoundError(_MISSING_TENSORBOARD) from err
            os.makedirs(self.root_dir, exist_ok=True)
            self._experiment = SummaryWriter(log_dir=self.log_dir, **self._kwargs)
        return self._experiment

    @_rank_zero_only
    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        metrics = _add_prefix(metrics, self._prefix, self.LOGGER_JOIN_CHAR)
        for key, value in metrics.items():
            if isinstance(value, torch.Tensor):
                value = value.item()
            if isinstance(value, dict):
                # A dict value becomes one chart with a line per sub-key.
                self.experiment.add_scalars(key, value, step)
                continue
            try:
                self.experiment.add_scalar(key, value, step)
            except Exception as err:
                raise ValueError(
                    f"Cannot log {key!r}={value!r} to TensorBoard: expected a number, a scalar tensor or a dict."
                ) from err

    @_rank_zero_only
    def log_hyperparams(
        self,
        params: dict[str, Any] | Namespace,
        metrics: dict[str, Any] | float | None = None,
        step: int | None = None,
    ) -> None:
        params = _convert_params(params)
        self.hparams.update(params)
        os.makedirs(self.log_dir, exist_ok=True)
        _save_hparams_yaml(os.path.join(self.log_dir, self.NAME_HPARAMS_FILE), self.hparams)

        if metrics is None:
            # TensorBoard only lists a run under HPARAMS if it has a metric.
            metrics = {"hp_metric": -1} if self._default_hp_metric else {}
        elif not isinstance(metrics, dict):
            metrics = {"hp_metric": metrics}
        if not metrics:
            return

        self.log_metrics(metrics, step)
        from torch.utils.tensorboard.summary import hparams

        summaries = hparams(_tensorboard_hparams(params), metrics)
        writer = self.experiment._get_file_writer()
        for summary in summaries:  # experiment, session-start and session-end records
            writer.add_summary(summary, step)

    @_rank_zero_only
    def log_graph(self, model: torch.nn.Module, input_array: Any = None) -> None:
        if not self._log_graph:
            return
        if input_array is None:
            input_array = getattr(model, "example_input_array", None)
        if input_array is None:
            warnings.warn(
                "Cannot log the model graph: set `model.example_input_array` or pass `input_array`.", UserWarning
            )
            return
        if not isinstance(input_array, (torch.Tensor, tuple)):
            warnings.warn(
                f"Cannot log the model graph: the input is a {type(input_array).__name__}; "
                "use a tensor or a tuple of forward() arguments.",
                UserWarning,
            )
            return
        # The trace runs a forward pass, so the inputs must sit where the weights are.
        param = next(model.parameters(), None)
        if param is not None:
            if isinstance(input_array, torch.Tensor):
                input_array = input_array.to(param.device)
            else:
                input_array = tuple(x.to(param.device) if isinstance(x, torch.Tensor) else x for x in input_array)
        self.experiment.add_graph(model, input_array)

    @_rank_zero_only
    def save(self) -> None:
        self.experiment.flush()
        # Make sure every run directory carries an hparams.yaml, even with no hparams;
        # an existing one (written by log_hyperparams) is left alone.
        hparams_file = os.path.join(self.log_dir, self.NAME_HPARAMS_FILE)
        if os.path.isdir(self.log_dir) and not os.path.isfile(hparams_file):
            _save_hparams_yaml(hparams_file, self.hparams)

    @_rank_zero_only
    def finalize(self, status: str) -> None:
        if status == "success":
            self.save()
        if self._experiment is not None:
            self._experiment.flush()
            self._experiment.close()

    def __getstate__(self) -> dict[str, Any]:
        # A SummaryWriter holds threads and open files; spawned workers recreate their own.
        state = self.__dict__.copy()
        state["_experiment"] = None
        return state


def _tensorboard_hparams(params: dict[str, Any]) -> dict[str, Any]:
    """Flatten ``params`` and keep only value types the HPARAMS plugin accepts
    (bool/int/float/str/tensor). numpy scalars become Python numbers; anything
    else (lists, None, objects, tensors with ndim > 1) is shown as its ``str``."""
    out = {}
    for key, value in _flatten(params).items():
        if type(value).__module__ == "numpy" and hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
            value = value.item()
        if isinstance(value, torch.Tensor) and value.ndim > 1:
            value = str(value)
        elif type(value) not in (bool, int, float, str, torch.Tensor):
            value = str(value)
        out[key] = value
    return out
