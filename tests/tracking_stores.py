"""Local, offline stores for the MLflow and W&B logger tests, and readers that use the libraries' own code.

Nothing here reaches a server: MLflow writes a ``file:`` store under the test's tmp_path (MLflow 3 needs
``MLFLOW_ALLOW_FILE_STORE=true`` for that), W&B runs in offline mode with every directory in tmp_path.
"""
from __future__ import annotations

import glob
import json
import os
import struct
import time
from typing import Any, Iterator

import pytest


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch):
    """A ``file:`` tracking URI in tmp_path, and MlflowClient on it."""
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    import mlflow

    yield f"file:{tmp_path / 'mlruns'}"
    mlflow.set_tracking_uri(None)  # the logger points MLflow's fluent API at the store; undo it


def mlflow_history(client: Any, run_id: str) -> dict[str, list[tuple[int, float]]]:
    """Every metric of the run as [(step, value), ...] in the order they were logged."""
    run = client.get_run(run_id)
    return {key: [(m.step, m.value) for m in client.get_metric_history(run_id, key)] for key in sorted(run.data.metrics)}


def mlflow_artifacts(client: Any, run_id: str, folder: str | None = None) -> list[str]:
    """The paths of every artifact file of the run, depth first."""
    found = []
    for entry in client.list_artifacts(run_id, folder):
        found += mlflow_artifacts(client, run_id, entry.path) if entry.is_dir else [entry.path]
    return found


@pytest.fixture
def wandb_offline(tmp_path, monkeypatch):
    """W&B in offline mode, silent, with its run, config, cache and data directories in tmp_path."""
    root = tmp_path / "wandb_home"
    root.mkdir()
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(root))
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(name, str(root / name.lower()))
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    import wandb

    yield tmp_path
    if wandb.run is not None:
        wandb.finish()


# A .wandb file is a LevelDB-style log (https://github.com/google/leveldb/blob/main/doc/log_format.md) of
# protobuf records. wandb 0.31 ships the record type (wandb.proto.wandb_internal_pb2.Record) but no longer a
# Python reader for the file, so the framing is undone here and each record is parsed with wandb's own type.
_BLOCK = 32768
_HEADER = 7  # crc32c (4 bytes), length (2), chunk type (1)
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def wandb_records(run_dir: str) -> Iterator[Any]:
    from wandb.proto import wandb_internal_pb2

    (path,) = glob.glob(os.path.join(run_dir, "run-*.wandb"))
    with open(path, "rb") as fp:
        data = fp.read()
    assert data[:4] == b":W&B", f"{path} is not a W&B transaction log"
    pos, pending = _HEADER, b""  # the file starts with a 7-byte header of its own
    while pos + _HEADER <= len(data):
        room = _BLOCK - pos % _BLOCK
        if room < _HEADER:  # a block's tail too short for a chunk header is padding
            pos += room
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + _HEADER])
        if kind == 0:  # zero padding to the end of the block
            pos += room
            continue
        chunk = data[pos + _HEADER:pos + _HEADER + length]
        pos += _HEADER + length
        pending = chunk if kind in (_FULL, _FIRST) else pending + chunk
        if kind in (_FULL, _LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


def wandb_run_dirs(root: Any) -> list[str]:
    return sorted(glob.glob(os.path.join(str(root), "**", "offline-run-*"), recursive=True))


def finished_records(run_dir: str, timeout: float = 120.0) -> list[Any]:
    """The run's records once its ``exit`` record is on disk.

    ``run.finish()`` can return while wandb's service process is still writing the log, so a test waits
    for the last record rather than reading a file that is still growing.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            records = list(wandb_records(run_dir))
        except Exception:  # a record cut in the middle: the writer is not done
            records = []
        if records and records[-1].WhichOneof("record_type") == "exit":
            return records
        if time.monotonic() > deadline:
            raise TimeoutError(f"{run_dir}: no exit record after {timeout} s; the run was not finished")
        time.sleep(0.02)


def wandb_run(run_dir: str) -> dict[str, Any]:
    """What a finished offline run recorded: its id/project/name, the config, the history rows and the artifacts."""
    out: dict[str, Any] = {"config": {}, "history": [], "artifacts": []}
    for record in finished_records(run_dir):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            out.update(id=record.run.run_id, project=record.run.project, name=record.run.display_name)
        elif kind == "config":
            for item in record.config.update:
                if item.key != "_wandb":
                    out["config"][item.key] = json.loads(item.value_json)
        elif kind == "history":
            row = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            out["history"].append({k: v for k, v in row.items() if k not in ("_timestamp", "_runtime", "_step")})
        elif kind == "artifact":
            out["artifacts"].append(record.artifact)
    return out
