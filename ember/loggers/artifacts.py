"""Which checkpoints a tracking logger (MLflow, W&B) still has to upload, and what it says about them.

``log_model=True`` uploads once at the end of fitting, ``log_model="all"`` after every save; either way
the logger asks ``checkpoints_to_log`` for the files that are new, or were rewritten, since it last
uploaded (``last.ckpt`` keeps its name, so its modification time tells a new version apart).
"""
from __future__ import annotations

import os
from typing import Any, NamedTuple

import torch

# The ModelCheckpoint settings recorded next to each uploaded file (public attributes only).
_CHECKPOINT_SETTINGS = ("monitor", "mode", "save_last", "save_top_k", "save_weights_only")


class CheckpointToLog(NamedTuple):
    mtime: float
    path: str
    score: Any


def checkpoints_to_log(callback: Any, logged: dict[str, float]) -> list[CheckpointToLog]:
    """The files of ``callback`` (last, best, the top k) not uploaded yet, oldest first.

    ``logged`` maps a path to the modification time it had when it was uploaded. ModelCheckpoint finishes
    its writes on a background thread, so they are waited for first: a file is uploaded complete or not at all.
    """
    from ember.checkpoint import wait_for_writes

    wait_for_writes()
    scores: dict[str, Any] = {}
    if getattr(callback, "last_model_path", ""):
        scores[callback.last_model_path] = callback.current_score
    if getattr(callback, "best_model_path", ""):
        scores[callback.best_model_path] = callback.best_model_score
    scores.update(getattr(callback, "best_k_models", {}))
    found = sorted(CheckpointToLog(os.path.getmtime(path), path, score)
                   for path, score in scores.items() if os.path.isfile(path))
    return [c for c in found if c.path not in logged or logged[c.path] < c.mtime]


def checkpoint_metadata(callback: Any, checkpoint: CheckpointToLog) -> dict[str, Any]:
    """What is stored beside an uploaded checkpoint: its score, its file name and the callback's settings."""
    score = checkpoint.score
    return {
        "score": score.item() if isinstance(score, torch.Tensor) else score,
        "original_filename": os.path.basename(checkpoint.path),
        type(callback).__name__: {key: getattr(callback, key) for key in _CHECKPOINT_SETTINGS if hasattr(callback, key)},
    }


def checkpoint_aliases(callback: Any, path: str) -> list[str]:
    """``latest`` for every upload, ``best`` as well for the callback's best file."""
    return ["latest", "best"] if path == getattr(callback, "best_model_path", None) else ["latest"]


def uploads_now(log_model: Any, callback: Any) -> bool:
    """Whether a save is uploaded at once: ``log_model="all"``, or ``True`` with every checkpoint kept
    (``save_top_k=-1``: nothing is replaced, so there is no reason to wait for the end)."""
    return log_model == "all" or (log_model is True and getattr(callback, "save_top_k", None) == -1)
