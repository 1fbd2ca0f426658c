"""Weights & Biases logger: metrics, config, media and checkpoints of one W&B run.

``wandb`` is an optional dependency, imported when the logger is built. The run is started on first
use (``logger.experiment``), so building the logger costs nothing and other ranks never start one.
``offline=True`` (or ``WANDB_MODE=offline``) writes the run under ``save_dir/wandb/`` for a later
``wandb sync``.
"""
from __future__ import annotations

import json
import os
import warnings
from argparse import Namespace
from enum import Enum
from typing import TYPE_CHECKING, Any, Literal, Mapping

import torch

from ember.loggers.artifacts import (
    checkpoint_aliases,
    checkpoint_metadata,
    checkpoints_to_log,
    uploads_now,
)
from ember.loggers.base import Logger, _add_prefix, _convert_params, _rank_zero_only, rank_zero_experiment

if TYPE_CHECKING:
    from wandb import Artifact
    from wandb.sdk.wandb_run import Run

_MISSING_WANDB = (
    "WandbLogger needs the `wandb` package, which is not installed. "
    "Install it with `pip install wandb` (or `pip install ember[wandb]`)."
)
STEP_METRIC = "trainer/global_step"  # the x-axis every metric is plotted against (Lightning's name)


class WandbLogger(Logger):
    """Log to a W&B run in ``project`` (``$WANDB_PROJECT``, else ``"lightning_logs"``).

    ``version``/``id`` resume that run (``resume="allow"``); ``experiment`` uses a run you started
    yourself. ``log_model=True`` uploads checkpoints as a ``model`` artifact when fitting ends, ``"all"``
    after every save. Other keyword arguments go to ``wandb.init`` (``entity``, ``group``, ``tags``, ...).
    """

    LOGGER_JOIN_CHAR = "-"

    def __init__(
        self,
        name: str | None = None,
        save_dir: str | os.PathLike = ".",
        version: str | None = None,
        offline: bool = False,
        dir: str | os.PathLike | None = None,
        id: str | None = None,
        anonymous: bool | None = None,
        project: str | None = None,
        log_model: Literal["all"] | bool = False,
        experiment: Run | None = None,
        prefix: str = "",
        checkpoint_name: str | None = None,
        add_file_policy: Literal["mutable", "immutable"] = "mutable",
        **kwargs: Any,
    ) -> None:
        if log_model not in (True, False, "all") or (log_model != "all" and not isinstance(log_model, bool)):
            raise ValueError(f"WandbLogger(log_model={log_model!r}) is not valid; allowed: True, False, 'all'.")
        if offline and log_model:
            raise ValueError(f"WandbLogger(offline=True, log_model={log_model!r}): an offline run cannot upload "
                             "checkpoints; set offline=False or log_model=False.")
        if add_file_policy not in ("mutable", "immutable"):
            raise ValueError(f"WandbLogger(add_file_policy={add_file_policy!r}) is not valid; "
                             "allowed: 'mutable', 'immutable'.")
        try:
            import wandb  # noqa: F401
        except ModuleNotFoundError as err:
            raise ModuleNotFoundError(_MISSING_WANDB) from err
        # Lightning's rule: save_dir wins; dir is used only when save_dir is None.
        directory = save_dir if save_dir is not None else dir
        self._init_args: dict[str, Any] = {
            "name": name,
            "project": project or os.environ.get("WANDB_PROJECT", "lightning_logs"),
            "dir": None if directory is None else os.fspath(directory),  # what save_dir reports
            "id": version or id,
            "resume": "allow",
        }
        if anonymous:
            self._init_args["anonymous"] = "allow"
        if offline:
            self._init_args["mode"] = "offline"  # for this run only; the environment is left alone
        self._init_args.update(kwargs)
        self._offline = offline
        self._log_model = log_model
        self._prefix = prefix
        self._experiment = experiment
        self._checkpoint_name = checkpoint_name
        self.add_file_policy = add_file_policy
        self._uploaded: dict[str, float] = {}  # checkpoint path -> its mtime when uploaded
        self._checkpoint_callbacks: dict[int, Any] = {}  # log_model=True: uploaded by finalize

    # ------------------------------------------------------------------ the run
    @property
    @rank_zero_experiment
    def experiment(self) -> Run:
        """The ``wandb`` run, started on first access (or the one already running in this process)."""
        if self._experiment is None:
            import wandb

            if wandb.run is not None:
                warnings.warn("WandbLogger: a wandb run is already active in this process and is used; call "
                              "wandb.finish() before building the logger to get a new one.", UserWarning, stacklevel=2)
                self._experiment = wandb.run
            else:
                # wandb's service process may have another working directory: hand it an absolute one.
                directory = self._init_args["dir"]
                self._experiment = wandb.init(**{**self._init_args,
                                                 "dir": None if directory is None else os.path.abspath(directory)})
                self._define_step_axis()
        return self._experiment

    def _define_step_axis(self) -> None:
        if self._init_args.get("sync_tensorboard"):
            # TensorBoard's events carry their own step, which wandb names global_step.
            self._experiment.define_metric("*", step_metric="global_step")
        else:
            self._experiment.define_metric(STEP_METRIC)
            self._experiment.define_metric("*", step_metric=STEP_METRIC, step_sync=True)

    def watch(self, model: torch.nn.Module, log: str | None = "gradients", log_freq: int = 100,
              log_graph: bool = True) -> None:
        """Have wandb record gradients (and/or parameters) of ``model`` every ``log_freq`` steps."""
        self.experiment.watch(model, log=log, log_freq=log_freq, log_graph=log_graph)

    @property
    def save_dir(self) -> str | None:
        return self._init_args.get("dir")

    @property
    def name(self) -> str | None:
        """The project (wandb's run name is ``logger.experiment.name``)."""
        return self._init_args.get("project")

    @property
    def version(self) -> str | None:
        """The run id; before the run starts, the id asked for (if any). Reading it starts no run."""
        return self._experiment.id if self._experiment is not None else self._init_args.get("id")

    # ------------------------------------------------------------------ logging
    @_rank_zero_only
    def log_hyperparams(self, params: dict[str, Any] | Namespace) -> None:
        self.experiment.config.update(_json_ready(_convert_params(params)), allow_val_change=True)

    @_rank_zero_only
    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        metrics = dict(_add_prefix(metrics, self._prefix, self.LOGGER_JOIN_CHAR))
        if step is not None and not self._init_args.get("sync_tensorboard"):
            metrics[STEP_METRIC] = step
        self.experiment.log(metrics)

    @_rank_zero_only
    def log_table(self, key: str, columns: list[str] | None = None, data: list[list[Any]] | None = None,
                  dataframe: Any = None, step: int | None = None) -> None:
        """A ``wandb.Table`` from ``columns`` and ``data`` rows, or from a pandas ``dataframe``."""
        import wandb

        self.log_metrics({key: wandb.Table(columns=columns, data=data, dataframe=dataframe)}, step)

    @_rank_zero_only
    def log_text(self, key: str, columns: list[str] | None = None, data: list[list[str]] | None = None,
                 dataframe: Any = None, step: int | None = None) -> None:
        """Text is a table of strings to wandb."""
        self.log_table(key, columns, data, dataframe, step)

    @_rank_zero_only
    def log_image(self, key: str, images: list[Any], step: int | None = None, **kwargs: Any) -> None:
        """``images``: arrays, tensors, PIL images or paths; each keyword is a list with one entry an image
        (``caption=[...]``, ``masks=[...]``)."""
        self._log_media(key, "Image", "images", images, step, kwargs)

    @_rank_zero_only
    def log_audio(self, key: str, audios: list[Any], step: int | None = None, **kwargs: Any) -> None:
        """``audios``: arrays or paths; keywords as for ``log_image`` (``sample_rate=[...]``, ``caption=[...]``)."""
        self._log_media(key, "Audio", "audios", audios, step, kwargs)

    @_rank_zero_only
    def log_video(self, key: str, videos: list[Any], step: int | None = None, **kwargs: Any) -> None:
        """``videos``: arrays or paths; keywords as for ``log_image`` (``fps=[...]``, ``format=[...]``)."""
        self._log_media(key, "Video", "videos", videos, step, kwargs)

    def _log_media(self, key: str, kind: str, argument: str, items: Any, step: int | None,
                   options: dict[str, Any]) -> None:
        if not isinstance(items, list):
            raise TypeError(f"WandbLogger.log_{kind.lower()}({argument}=...) needs a list, got {type(items).__name__}.")
        for option, values in options.items():
            if len(values) != len(items):
                raise ValueError(f"WandbLogger.log_{kind.lower()}: {option}= has {len(values)} entries for "
                                 f"{len(items)} {argument}; give one per item.")
        import wandb

        media = getattr(wandb, kind)
        self.log_metrics({key: [media(item, **{option: values[i] for option, values in options.items()})
                                for i, item in enumerate(items)]}, step)

    # ------------------------------------------------------------------ artifacts and the end
    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        if uploads_now(self._log_model, checkpoint_callback):
            self._upload_checkpoints(checkpoint_callback)
        elif self._log_model is True:
            self._checkpoint_callbacks[id(checkpoint_callback)] = checkpoint_callback

    def _upload_checkpoints(self, callback: Any) -> None:
        import wandb

        for checkpoint in checkpoints_to_log(callback, self._uploaded):
            if not self._checkpoint_name:
                self._checkpoint_name = f"model-{self.experiment.id}"
            artifact = wandb.Artifact(name=self._checkpoint_name, type="model",
                                      metadata=checkpoint_metadata(callback, checkpoint))
            artifact.add_file(checkpoint.path, name="model.ckpt", policy=self.add_file_policy)
            self.experiment.log_artifact(artifact, aliases=checkpoint_aliases(callback, checkpoint.path))
            self._uploaded[checkpoint.path] = checkpoint.mtime

    @staticmethod
    @_rank_zero_only
    def download_artifact(artifact: str, save_dir: str | os.PathLike | None = None, artifact_type: str | None = None,
                          use_artifact: bool | None = True) -> str:
        """Download ``artifact`` (``"entity/project/name:alias"``) and return the folder it went to."""
        import wandb

        if wandb.run is not None and use_artifact:
            found = wandb.run.use_artifact(artifact)
        else:
            found = wandb.Api().artifact(artifact, type=artifact_type)
        return found.download(root=None if save_dir is None else os.fspath(save_dir))

    def use_artifact(self, artifact: str, artifact_type: str | None = None) -> Artifact:
        """Mark ``artifact`` as an input of this run and return it."""
        return self.experiment.use_artifact(artifact, type=artifact_type)

    @_rank_zero_only
    def finalize(self, status: str) -> None:
        # The run itself stays open (a later trainer.test() logs to it); wandb closes it at exit.
        if status != "success" or self._experiment is None:
            return  # checkpoints are uploaded after a successful fit only
        for callback in self._checkpoint_callbacks.values():
            self._upload_checkpoints(callback)

    def __getstate__(self) -> dict[str, Any]:
        # A run holds a connection to wandb's service; a spawned worker starts (or resumes) its own.
        state = self.__dict__.copy()
        if self._experiment is not None:
            state["_init_args"] = {**self._init_args, "id": self._experiment.id, "name": self._experiment.name}
        state["_experiment"] = None
        return state


def _json_ready(params: dict[str, Any]) -> dict[str, Any]:
    """Values wandb's config can store: a function or class by its name, anything JSON cannot hold as its ``str``."""
    ready = {}
    for key, value in params.items():
        if isinstance(value, dict):
            ready[key] = _json_ready(value)
            continue
        if callable(value) and not isinstance(value, Enum):
            value = getattr(value, "__name__", value)
        try:
            json.dumps(value)
        except (TypeError, OverflowError, ValueError):
            value = str(value)
        ready[key] = value
    return ready
