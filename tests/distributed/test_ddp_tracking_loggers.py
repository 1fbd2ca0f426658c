"""MLFlowLogger and WandbLogger under DDP on 2 CPU processes: one run each, written by global rank 0 only."""
import json
import os

import pytest

import _djobs as J
from tracking_stores import wandb_run

pytest.importorskip("mlflow")
pytest.importorskip("wandb")


def test_only_rank_zero_writes_an_mlflow_and_a_wandb_run(tmp_path):
    out = str(tmp_path)
    J.check(J.run("tracking_loggers.py", out, "ddp", timeout=300, cwd=out))
    with open(os.path.join(out, "result.json")) as fh:
        result = json.load(fh)
    assert result["global_step"] == 8  # 32 samples, 2 ranks x batch 4, 2 epochs
    (run,) = result["mlflow_runs"]  # rank 1's logger created no run
    assert run["status"] == "FINISHED" and run["params"] == {"lr": "0.05"}
    assert run["loss_steps"] == list(range(8))
    (name,) = result["wandb_runs"]
    recorded = wandb_run(os.path.join(out, "wandb", name))
    assert recorded["config"] == {"lr": 0.05} and recorded["project"] == "ddp"
    assert [r["trainer/global_step"] for r in recorded["history"] if "loss" in r] == list(range(8))
