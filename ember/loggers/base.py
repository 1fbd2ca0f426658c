"""The ``Logger`` interface the Trainer talks to, plus helpers shared by the built-in loggers.

Nothing here imports an optional dependency at module load: PyYAML is imported
only when an hparams file is written, so ``import ember.loggers`` stays cheap.
"""

from __future__ import annotations

import functools
import math
import os
import re
import warnings
from abc import ABC, abstractmethod
from argparse import Namespace
from collections.abc import MutableMapping
from dataclasses import asdict, is_dataclass
from enum import Enum
from typing import Any, Callable, Mapping

import torch

# --------------------------------------------------------------------------- rank handling


def _is_global_zero() -> bool:
    """True on the process that owns the log files.

    Launchers (torchrun, SLURM, ...) export the rank before user code runs, so it is
    read at call time. ``RANK`` is the global rank; the others are only consulted
    when it is missing (``LOCAL_RANK`` first, because ``SLURM_PROCID`` may be set
    even when SLURM is not the one spawning the workers).
    """
    for key in ("RANK", "LOCAL_RANK", "SLURM_PROCID"):
        value = os.environ.get(key)
        if value is not None:
            return int(value) == 0
    return True


def _rank_zero_only(fn: Callable) -> Callable:
    """Run ``fn`` on global rank zero; elsewhere do nothing and return ``None``."""

    @functools.wraps(fn)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        if _is_global_zero():
            return fn(*args, **kwargs)
        return None

    return wrapped


class _DummyExperiment:
    """Stand-in for a real experiment object on non-zero ranks: every call is a no-op,
    so user code like ``self.logger.experiment.add_image(...)`` runs on all ranks."""

    def _nop(self, *args: Any, **kwargs: Any) -> None:
        return None

    def __getattr__(self, _: str) -> Callable:
        return self._nop

    def __getitem__(self, _: Any) -> "_DummyExperiment":
        return self

    def __setitem__(self, *args: Any) -> None:
        pass


def rank_zero_experiment(fn: Callable) -> Callable:
    """Decorate a logger's ``experiment`` getter so only rank zero builds the real object
    (which usually creates directories/files); other ranks get a ``_DummyExperiment``."""

    @functools.wraps(fn)
    def experiment(self: Any) -> Any:
        if not _is_global_zero():
            return _DummyExperiment()
        return fn(self)

    return experiment


# --------------------------------------------------------------------------- base class


class Logger(ABC):
    """Base class for experiment loggers.

    Subclasses must provide ``name``, ``version``, ``log_metrics`` and
    ``log_hyperparams``; everything else has a harmless default.
    """

    @property
    @abstractmethod
    def name(self) -> str | None:
        """Experiment name."""

    @property
    @abstractmethod
    def version(self) -> int | str | None:
        """Experiment version."""

    @property
    def save_dir(self) -> str | None:
        """Top-level directory given by the user, or ``None`` for loggers that store nothing locally."""
        return None

    @property
    def root_dir(self) -> str | None:
        """Directory holding all versions of this experiment (``None`` if not local)."""
        return None

    @property
    def log_dir(self) -> str | None:
        """Directory of this particular run (``None`` if not local)."""
        return None

    @property
    def group_separator(self) -> str:
        """Separator used in metric names to group them (``"train/loss"``)."""
        return "/"

    @property
    def experiment(self) -> Any:
        """The backend object (e.g. a ``SummaryWriter``); ``None`` when there is none."""
        return None

    @abstractmethod
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Record a dict of scalar metrics at ``step``."""

    @abstractmethod
    def log_hyperparams(self, params: dict[str, Any] | Namespace, *args: Any, **kwargs: Any) -> None:
        """Record the run's hyperparameters."""

    def log_graph(self, model: torch.nn.Module, input_array: torch.Tensor | None = None) -> None:
        """Record the model graph; most loggers cannot, so the default does nothing."""

    def save(self) -> None:
        """Flush pending data to storage."""

    def finalize(self, status: str) -> None:
        """Called once at the end of fitting with ``"success"`` or ``"failed"``."""
        self.save()

    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        """Hook called after a checkpoint was written (e.g. to upload it)."""


# --------------------------------------------------------------------------- shared helpers


def _convert_params(params: dict[str, Any] | Namespace | None) -> dict[str, Any]:
    if isinstance(params, Namespace):
        return vars(params)
    return {} if params is None else params


def _flatten(params: MutableMapping, parent: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}} -> {"a/b": 1}``; a list made only of dicts is flattened by index."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        full_key = f"{parent}/{key}" if parent else str(key)
        if is_dataclass(value) and not isinstance(value, type):
            value = asdict(value)
        elif isinstance(value, Namespace):
            value = vars(value)
        if isinstance(value, MutableMapping):
            out.update(_flatten(value, full_key))
        elif isinstance(value, list) and value and all(isinstance(v, MutableMapping) for v in value):
            for i, item in enumerate(value):
                out.update(_flatten(item, f"{full_key}/{i}"))
        else:
            out[full_key] = value
    return out


def _add_prefix(metrics: Mapping[str, Any], prefix: str, separator: str) -> Mapping[str, Any]:
    if not prefix:
        return metrics
    return {f"{prefix}{separator}{key}": value for key, value in metrics.items()}


def _scalar(value: Any) -> Any:
    """0-d tensors become Python numbers; anything else is passed through."""
    return value.item() if isinstance(value, torch.Tensor) else value


def _next_version(versions_root: str) -> int:
    """One past the highest ``version_<N>`` sub-directory of ``versions_root`` (0 if none)."""
    if not os.path.isdir(versions_root):
        return 0
    found = []
    for entry in os.listdir(versions_root):
        parts = entry.split("_")
        if (
            parts[0] == "version"
            and len(parts) > 1
            and parts[1].isdigit()
            and os.path.isdir(os.path.join(versions_root, entry))
        ):
            found.append(int(parts[1]))
    return max(found) + 1 if found else 0


def _version_dirname(version: int | str) -> str:
    # An explicit string is the directory name verbatim; an int N means "version_N".
    return version if isinstance(version, str) else f"version_{version}"


# --------------------------------------------------------------------------- hparams.yaml


def _save_hparams_yaml(path: str, hparams: dict[str, Any] | Namespace) -> None:
    """Write ``hparams`` to ``path`` as YAML.

    With PyYAML available this produces exactly what ``yaml.dump`` produces (sorted
    keys, block style), so files can be diffed against Lightning's. Values that cannot
    be serialised are dropped with a warning rather than failing the run.
    """
    if isinstance(hparams, Namespace):
        hparams = vars(hparams)
    hparams = {k: (v.name if isinstance(v, Enum) else v) for k, v in hparams.items()}

    try:
        import yaml
    except ImportError:
        yaml = None

    if yaml is not None:
        def dumpable(value: Any) -> bool:
            try:
                yaml.dump(value)
                return True
            except (TypeError, ValueError):
                return False
    else:
        dumpable = _fallback_yaml_supports

    kept = {}
    for key, value in hparams.items():
        if dumpable(value):
            kept[key] = value
        else:
            warnings.warn(f"Skipping hyperparameter {key!r}: it cannot be written to YAML.", UserWarning)

    with open(path, "w", encoding="utf-8", newline="") as fp:
        if yaml is not None:
            yaml.dump(kept, fp)
        else:
            fp.write(_fallback_yaml_dump(kept))


# A small YAML emitter for when PyYAML is not installed. It covers None, bools,
# numbers, strings, lists/tuples (written as lists) and dicts, in the same block
# layout yaml.dump uses; strings that YAML could misread as another type are quoted.

_PLAIN_STR = re.compile(r"[A-Za-z0-9_/][A-Za-z0-9_./ -]*")
_YAML_SPECIAL_WORDS = {
    "", "~", "null", "Null", "NULL",
    "true", "True", "TRUE", "false", "False", "FALSE",
    "yes", "Yes", "YES", "no", "No", "NO", "on", "On", "ON", "off", "Off", "OFF",
}
_NUMBER_LIKE = re.compile(r"[-+]?(\.?[0-9][0-9_:.eE+-]*|0[xob][0-9a-fA-F_]+|\.(inf|Inf|INF|nan|NaN|NAN))")


def _fallback_yaml_supports(value: Any) -> bool:
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_fallback_yaml_supports(v) for v in value)
    if isinstance(value, dict):
        return all(_fallback_yaml_supports(k) and _fallback_yaml_supports(v) for k, v in value.items())
    return False


def _yaml_scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return ".nan"
        if math.isinf(value):
            return ".inf" if value > 0 else "-.inf"
        text = repr(value).lower()
        # YAML 1.1 needs a dot in a float: 1e-05 -> 1.0e-05
        return text.replace("e", ".0e", 1) if "." not in text and "e" in text else text
    text = str(value)
    plain = (
        _PLAIN_STR.fullmatch(text)
        and text == text.strip()
        and "  " not in text
        and text not in _YAML_SPECIAL_WORDS
        and not _NUMBER_LIKE.fullmatch(text)
    )
    if plain:
        return text
    if text.isprintable():
        return "'" + text.replace("'", "''") + "'"
    # Control characters/newlines: a JSON string is a valid YAML double-quoted scalar.
    import json

    return json.dumps(text)


def _yaml_lines(value: Any, indent: int) -> list[str]:
    """Block-style lines for a non-empty dict or list, indented by ``indent`` spaces."""
    pad = " " * indent
    lines: list[str] = []
    if isinstance(value, dict):
        try:
            items = sorted(value.items())
        except TypeError:  # mixed key types
            items = sorted(value.items(), key=lambda kv: str(kv[0]))
        for key, item in items:
            head = f"{pad}{_yaml_scalar(key)}:"
            if isinstance(item, dict) and item:
                lines += [head, *_yaml_lines(item, indent + 2)]
            elif isinstance(item, (list, tuple)) and item:
                # yaml.dump does not indent a sequence that is a mapping value
                lines += [head, *_yaml_lines(list(item), indent)]
            else:
                lines.append(f"{head} {_yaml_inline(item)}")
    else:
        for item in value:
            if isinstance(item, (dict, list, tuple)) and item:
                nested = _yaml_lines(item if isinstance(item, dict) else list(item), indent + 2)
                # the first nested line shares the "- " marker's line
                lines += [f"{pad}- {nested[0][indent + 2:]}", *nested[1:]]
            else:
                lines.append(f"{pad}- {_yaml_inline(item)}")
    return lines


def _yaml_inline(value: Any) -> str:
    if isinstance(value, dict):
        return "{}"  # only reached for empty dicts
    if isinstance(value, (list, tuple)):
        return "[]"  # only reached for empty sequences
    return _yaml_scalar(value)


def _fallback_yaml_dump(data: dict[str, Any]) -> str:
    if not data:
        return "{}\n"
    return "\n".join(_yaml_lines(data, 0)) + "\n"


class _FolderLogger(Logger):
    """A logger that writes under ``save_dir/name/version_N``; N is found on first use, then fixed.

    Metric keys get ``prefix`` joined by ``LOGGER_JOIN_CHAR`` (Lightning's ``prefix-key``).
    """

    LOGGER_JOIN_CHAR = "-"

    def __init__(self, save_dir: str | os.PathLike, name: str | None, version: int | str | None, prefix: str) -> None:
        self._save_dir = os.fspath(save_dir)
        self._name = name or ""
        self._version = version
        self._prefix = prefix

    @property
    def name(self) -> str:
        return self._name

    @property
    def version(self) -> int | str:
        # Resolved lazily (and then frozen) so the directory scan happens when logging starts.
        if self._version is None:
            self._version = _next_version(self.root_dir)
        return self._version

    @property
    def save_dir(self) -> str:
        return self._save_dir

    @property
    def root_dir(self) -> str:
        return os.path.join(self.save_dir, self.name)

