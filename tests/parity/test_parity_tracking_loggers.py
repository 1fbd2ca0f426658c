"""The same program under Lightning's and ember's MLFlowLogger / WandbLogger writes the same run.

Each framework writes its own store (an MLflow file store, an offline W&B run); both are read back with the
library's own client or record type and compared: params/config, every metric's (step, value) history,
checkpoint artifacts.
"""
import math
import os

import pytest
import torch

from parity_harness import boring_class, quiet, run_both
from tracking_stores import mlflow_artifacts, mlflow_history, mlflow_store, wandb_offline, wandb_run, wandb_run_dirs  # noqa: F401

pytest.importorskip("mlflow")
pytest.importorskip("wandb")


def _module(L):
    """The boring regression with hyperparameters (saved for the loggers) and a stepping LR schedule."""

    def configure(self):
        opt = torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=self.hparams.optim["momentum"])
        return [opt], [torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)]

    class WithHparams(boring_class(L, configure=configure)):
        def __init__(self, lr=0.1, widths=(3, 1), optim={"name": "sgd", "momentum": 0.9}):
            super().__init__()
            self.save_hyperparameters()

    return WithHparams()


def _trainer(L, tmp_path, logger, **kw):
    cbs = [L.pytorch.callbacks.LearningRateMonitor(), *kw.pop("callbacks", [])]
    return L.Trainer(**quiet(tmp_path, logger=logger, max_epochs=3, log_every_n_steps=2, callbacks=cbs, **kw))


def _close_enough(a, b):
    """Same keys; per key the same steps in the same order, values within 1e-6."""
    assert sorted(a) == sorted(b)
    for key in a:
        assert [s for s, _ in a[key]] == [s for s, _ in b[key]], key
        for (_, x), (_, y) in zip(a[key], b[key]):
            assert math.isclose(x, y, rel_tol=1e-6, abs_tol=1e-9), (key, x, y)


def mlflow_program(L, tmp_path, store):
    from mlflow.tracking import MlflowClient

    name = L.__name__
    logger = L.pytorch.loggers.MLFlowLogger(experiment_name=name, run_name="r", tracking_uri=store, log_model="all",
                                            tags={"framework": name})
    checkpoint = L.pytorch.callbacks.ModelCheckpoint(monitor="val_loss", save_top_k=2)
    trainer = _trainer(L, tmp_path / name, logger, callbacks=[checkpoint], enable_checkpointing=True)
    trainer.fit(_module(L))
    client = MlflowClient(store)
    run = client.get_run(logger.run_id)
    return {"params": run.data.params, "history": mlflow_history(client, logger.run_id),
            "status": run.info.status, "run_name": run.info.run_name,
            "artifacts": sorted(os.path.basename(p) for p in mlflow_artifacts(client, logger.run_id)),
            "checkpoint_dir": os.path.relpath(checkpoint.dirpath, logger.save_dir),
            "run_path": os.path.join(logger.experiment_id, logger.run_id, "checkpoints")}


def test_mlflow_logger_writes_the_same_params_metric_histories_and_artifacts(tmp_path, mlflow_store):
    a, b = run_both(mlflow_program, tmp_path=tmp_path, store=mlflow_store)
    assert a["params"] == b["params"] == {"lr": "0.1", "widths": "(3, 1)", "optim/name": "sgd",
                                          "optim/momentum": "0.9"}
    _close_enough(a["history"], b["history"])
    assert sorted(b["history"]) == ["epoch", "lr-SGD", "train_loss_epoch", "train_loss_step", "val_loss"]
    assert b["history"]["lr-SGD"] == [(0, 0.1), (4, 0.05), (8, 0.025)]
    assert [s for s, _ in b["history"]["train_loss_step"]] == [1, 3, 5, 7, 9, 11]
    assert [s for s, _ in b["history"]["val_loss"]] == [3, 7, 11]
    assert a["status"] == b["status"] == "FINISHED" and a["run_name"] == b["run_name"] == "r"
    # log_model="all": every save, with its metadata and aliases, even those top-2 later deleted
    assert a["artifacts"] == b["artifacts"]
    assert len(b["artifacts"]) == 9 and b["artifacts"].count("metadata.yaml") == 3
    # ModelCheckpoint's folder is <store>/<experiment id>/<run id>/checkpoints under both
    assert a["checkpoint_dir"] == a["run_path"] and b["checkpoint_dir"] == b["run_path"]


def wandb_program(L, tmp_path):
    import wandb

    name = L.__name__
    save_dir = tmp_path / name
    save_dir.mkdir()
    logger = L.pytorch.loggers.WandbLogger(project="parity", name=name, save_dir=str(save_dir), offline=True)
    trainer = _trainer(L, save_dir, logger)
    trainer.fit(_module(L))
    logger.log_table("table", columns=["a"], data=[[1], [2]], step=trainer.global_step)
    wandb.finish()
    (run_dir,) = wandb_run_dirs(save_dir / "wandb")
    run = wandb_run(run_dir)
    rows = [{k: v for k, v in row.items() if not k.startswith("table/")} for row in run["history"]]
    return {"config": run["config"], "rows": rows, "project": run["project"], "name": run["name"],
            "logger": (logger.name, logger.save_dir == str(save_dir)), "table": run["history"][-1]["table/nrows"]}


def test_wandb_logger_writes_the_same_config_and_history(tmp_path, wandb_offline):
    a, b = run_both(wandb_program, tmp_path=tmp_path)
    assert a["config"] == b["config"] == {"lr": 0.1, "widths": [3, 1], "optim": {"name": "sgd", "momentum": 0.9}}
    assert len(a["rows"]) == len(b["rows"]) == 3 + 6 + 3 + 3 + 1  # lr (per epoch), train steps, val, train epoch, the table
    for row_a, row_b in zip(a["rows"], b["rows"]):
        assert sorted(row_a) == sorted(row_b)
        for key in row_a:
            assert math.isclose(row_a[key], row_b[key], rel_tol=1e-6), (key, row_a, row_b)
    steps = [r["trainer/global_step"] for r in b["rows"] if "train_loss_step" in r]
    assert steps == [1, 3, 5, 7, 9, 11]
    assert [r["lr-SGD"] for r in b["rows"] if "lr-SGD" in r] == [0.1, 0.05, 0.025]
    assert (a["project"], b["project"], b["name"]) == ("parity", "parity", "ember")
    assert a["logger"] == b["logger"] == ("parity", True) and a["table"] == b["table"] == 2
