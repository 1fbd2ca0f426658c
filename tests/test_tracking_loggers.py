"""MLFlowLogger and WandbLogger against local stores, read back with each library's own client/record type.

No test reaches a server: MLflow writes a file store in tmp_path, W&B runs offline (tracking_stores.py).
"""
import os
import sys
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from torch.utils.data import DataLoader, TensorDataset

import ember as L
from ember.callbacks import LearningRateMonitor, ModelCheckpoint
from ember.loggers import MLFlowLogger, WandbLogger
from tracking_stores import mlflow_artifacts, mlflow_history, mlflow_store, wandb_offline, wandb_run, wandb_run_dirs  # noqa: F401

mlflow = pytest.importorskip("mlflow")
wandb = pytest.importorskip("wandb")
from mlflow.tracking import MlflowClient  # noqa: E402


@pytest.fixture(autouse=True)
def _rank_zero(monkeypatch):
    for key in ("RANK", "LOCAL_RANK", "SLURM_PROCID"):
        monkeypatch.delenv(key, raising=False)


class Regression(L.LightningModule):
    def __init__(self, lr: float = 0.1, hidden: int = 4, schedule: dict | None = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        torch.manual_seed(0)
        self.layer = torch.nn.Linear(3, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.layer(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", torch.nn.functional.mse_loss(self.layer(x), y))

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=self.hparams.lr)
        return [opt], [torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)]


def _loaders():
    g = torch.Generator().manual_seed(0)
    ds = TensorDataset(torch.randn(16, 3, generator=g), torch.randn(16, 1, generator=g))
    return DataLoader(ds, batch_size=4), DataLoader(ds, batch_size=8)


def _fit(tmp_path, logger, epochs=3, callbacks=(), checkpointing=False):
    trainer = L.Trainer(max_epochs=epochs, logger=logger, log_every_n_steps=2, default_root_dir=str(tmp_path),
                        callbacks=[LearningRateMonitor(), *callbacks], enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=checkpointing)
    module = Regression(schedule={"gamma": 0.5, "milestones": [1, 2]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, *_loaders())
    return trainer


# ----------------------------------------------------------------------------- MLflow


def test_mlflow_run_holds_params_metrics_by_step_and_tags(tmp_path, mlflow_store):
    logger = MLFlowLogger(experiment_name="exp", run_name="first", tracking_uri=mlflow_store, tags={"team": "ember"})
    trainer = _fit(tmp_path, logger)

    client = MlflowClient(mlflow_store)
    run = client.get_run(logger.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "first"
    assert client.get_experiment(logger.experiment_id).name == "exp"
    assert run.data.params == {"lr": "0.1", "hidden": "4", "schedule/gamma": "0.5", "schedule/milestones": "[1, 2]"}
    assert run.data.tags["team"] == "ember" and run.data.tags["mlflow.runName"] == "first"
    history = mlflow_history(client, logger.run_id)
    assert sorted(history) == ["epoch", "lr-SGD", "train_loss", "val_loss"]
    # 4 batches an epoch, a row every 2 steps, stamped with the step count before the batch's step
    assert [s for s, _ in history["train_loss"]] == [1, 3, 5, 7, 9, 11]
    assert history["lr-SGD"] == [(0, 0.1), (4, 0.05), (8, 0.025)]  # StepLR halves it each epoch
    assert [s for s, _ in history["val_loss"]] == [3, 7, 11]
    assert history["val_loss"][-1][1] == pytest.approx(trainer.callback_metrics["val_loss"].item(), rel=1e-6)
    # ModelCheckpoint's default folder follows the logger: <store>/<experiment id>/<run id>/checkpoints
    assert logger.save_dir == str(tmp_path / "mlruns")
    assert (logger.name, logger.version) == (logger.experiment_id, logger.run_id)


def test_mlflow_log_model_all_uploads_every_save_with_metadata(tmp_path, mlflow_store):
    logger = MLFlowLogger(tracking_uri=mlflow_store, log_model="all")
    checkpoint = ModelCheckpoint(monitor="val_loss", save_top_k=1)
    _fit(tmp_path, logger, callbacks=[checkpoint], checkpointing=True)

    client = MlflowClient(mlflow_store)
    files = mlflow_artifacts(client, logger.run_id)
    names = ["epoch=0-step=4", "epoch=1-step=8", "epoch=2-step=12"]
    # each save is uploaded when it happens, so even the files top-1 deleted later are in the run
    assert files == [f"{n}/{f}" for n in names for f in ("aliases.txt", f"{n}.ckpt", "metadata.yaml")]
    folder = client.download_artifacts(logger.run_id, names[-1], str(tmp_path / "down"))
    meta = yaml.safe_load(open(os.path.join(folder, "metadata.yaml")))
    assert meta["original_filename"] == "epoch=2-step=12.ckpt"
    assert meta["score"] == pytest.approx(checkpoint.best_model_score.item())
    assert meta["ModelCheckpoint"] == {"monitor": "val_loss", "mode": "min", "save_last": None, "save_top_k": 1,
                                       "save_weights_only": False}
    assert open(os.path.join(folder, "aliases.txt")).read() == "['latest', 'best']"
    uploaded = torch.load(os.path.join(folder, "epoch=2-step=12.ckpt"), weights_only=False)
    assert uploaded["global_step"] == 12


def test_mlflow_log_model_true_uploads_the_kept_files_at_the_end(tmp_path, mlflow_store):
    logger = MLFlowLogger(tracking_uri=mlflow_store, log_model=True)
    _fit(tmp_path, logger, callbacks=[ModelCheckpoint(monitor="val_loss", save_top_k=2)], checkpointing=True)
    files = mlflow_artifacts(MlflowClient(mlflow_store), logger.run_id)
    kept = sorted(f for f in files if f.endswith(".ckpt"))
    assert kept == ["epoch=1-step=8/epoch=1-step=8.ckpt", "epoch=2-step=12/epoch=2-step=12.ckpt"]  # the top 2 only


def test_mlflow_run_id_continues_a_run_and_failed_marks_it(tmp_path, mlflow_store):
    first = MLFlowLogger(tracking_uri=mlflow_store)
    first.log_metrics({"loss": 1.0}, step=0)
    first.finalize("success")
    again = MLFlowLogger(tracking_uri=mlflow_store, run_id=first.run_id)
    again.log_metrics({"loss": 0.5, "acc": torch.tensor(0.25)}, step=1)
    again.finalize("failed")
    client = MlflowClient(mlflow_store)
    assert mlflow_history(client, first.run_id) == {"acc": [(1, 0.25)], "loss": [(0, 1.0), (1, 0.5)]}
    assert client.get_run(first.run_id).info.status == "FAILED"


def test_mlflow_metric_names_strings_prefix_and_long_params(mlflow_store):
    logger = MLFlowLogger(tracking_uri=mlflow_store, prefix="train")
    with pytest.warns(RuntimeWarning, match="'train-loss@1' is logged as 'train-loss1'"):
        with pytest.warns(UserWarning, match="string value"):
            logger.log_metrics({"loss@1": 2.0, "note": "text"}, step=None)  # no step: MLflow's 0
    logger.log_hyperparams({"text": "x" * 300, "nested": {"deep": {"k": 1}}})
    client = MlflowClient(mlflow_store)
    assert mlflow_history(client, logger.run_id) == {"train-loss1": [(0, 2.0)]}
    params = client.get_run(logger.run_id).data.params
    assert params == {"text": "x" * 250, "nested/deep/k": "1"}  # cut at 250 characters, as Lightning does


def test_mlflow_bad_arguments_and_non_zero_rank(tmp_path, mlflow_store, monkeypatch):
    with pytest.raises(ValueError, match=r"log_model='best'.*allowed: True, False, 'all'"):
        MLFlowLogger(tracking_uri=mlflow_store, log_model="best")
    with pytest.raises(ValueError, match=r"synchronous='yes'"):
        MLFlowLogger(tracking_uri=mlflow_store, synchronous="yes")
    monkeypatch.setenv("RANK", "1")
    logger = MLFlowLogger(tracking_uri=mlflow_store)
    logger.log_hyperparams({"lr": 0.1})
    logger.log_metrics({"loss": 1.0}, step=0)
    logger.experiment.log_param("x", 1)  # a stand-in on other ranks: nothing happens
    logger.finalize("success")
    client = MlflowClient(mlflow_store)
    assert [e.name for e in client.search_experiments()] == ["Default"]  # MLflow's own; no "lightning_logs"
    assert client.search_runs(["0"]) == []


def test_mlflow_file_store_refusal_surfaces_before_training(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(Exception, match="MLFLOW_ALLOW_FILE_STORE"):
        MLFlowLogger(tracking_uri=f"file:{tmp_path / 'mlruns'}")


# ----------------------------------------------------------------------------- W&B


def test_wandb_offline_run_holds_config_and_metrics_by_step(tmp_path, wandb_offline):
    logger = WandbLogger(project="ember-test", name="first", save_dir=str(tmp_path), offline=True)
    trainer = _fit(tmp_path, logger, epochs=2)
    run_id = logger.version
    logger.experiment.finish()

    (run_dir,) = wandb_run_dirs(tmp_path / "wandb")  # save_dir is wandb's dir: <save_dir>/wandb/offline-run-*
    run = wandb_run(run_dir)
    assert (run["id"], run["project"], run["name"]) == (run_id, "ember-test", "first")
    assert run["config"] == {"lr": 0.1, "hidden": 4, "schedule": {"gamma": 0.5, "milestones": [1, 2]}}
    rows = run["history"]
    losses = [(r["trainer/global_step"], r["epoch"]) for r in rows if "train_loss" in r]
    assert losses == [(1, 0), (3, 0), (5, 1), (7, 1)]
    assert [(r["trainer/global_step"], r["lr-SGD"]) for r in rows if "lr-SGD" in r] == [(0, 0.1), (4, 0.05)]
    assert [r["trainer/global_step"] for r in rows if "val_loss" in r] == [3, 7]
    assert rows[-1]["val_loss"] == pytest.approx(trainer.callback_metrics["val_loss"].item(), rel=1e-6)
    assert logger.name == "ember-test" and logger.save_dir == str(tmp_path)


def test_wandb_tables_images_prefix_and_watch(tmp_path, wandb_offline):
    logger = WandbLogger(save_dir=str(tmp_path), offline=True, prefix="p")
    logger.log_table("table", columns=["a", "b"], data=[[1, "x"], [2, "y"]], step=3)
    logger.log_image("pics", [torch.zeros(3, 4, 4), torch.ones(3, 4, 4)], step=4, caption=["zero", "one"])
    logger.log_metrics({"loss": 0.5})  # no step: no trainer/global_step column
    model = torch.nn.Linear(2, 1)
    logger.watch(model, log="all", log_freq=1)
    with pytest.raises(ValueError, match="caption= has 1 entries for 2 images"):
        logger.log_image("pics", [torch.zeros(3, 4, 4)] * 2, caption=["only one"])
    with pytest.raises(TypeError, match=r"images=\.\.\.\) needs a list, got Tensor"):
        logger.log_image("pics", torch.zeros(3, 4, 4))
    logger.experiment.finish()

    run_dir = wandb_run_dirs(tmp_path / "wandb")[0]
    rows = wandb_run(run_dir)["history"]  # nested values arrive flattened: "p-table/nrows"
    assert rows[0]["trainer/global_step"] == 3 and rows[0]["p-table/_type"] == "table-file"
    assert (rows[0]["p-table/nrows"], rows[0]["p-table/ncols"]) == (2, 2)
    import json

    table = json.load(open(os.path.join(run_dir, "files", rows[0]["p-table/path"])))
    assert table["columns"] == ["a", "b"] and table["data"] == [[1, "x"], [2, "y"]]
    assert rows[1]["trainer/global_step"] == 4 and rows[1]["p-pics/_type"] == "images/separated"
    assert rows[1]["p-pics/count"] == 2 and rows[1]["p-pics/captions"] == ["zero", "one"]
    assert all(os.path.isfile(os.path.join(run_dir, "files", f)) for f in rows[1]["p-pics/filenames"])
    assert rows[2] == {"p-loss": 0.5, "trainer/global_step": 4}  # no step given: wandb's step_sync keeps the last


def test_wandb_log_model_all_records_a_model_artifact_per_save(tmp_path, wandb_offline):
    # offline=False with WANDB_MODE=offline: the artifacts go into the offline run's log, not to a server
    logger = WandbLogger(save_dir=str(tmp_path), log_model="all", checkpoint_name="boring")
    checkpoint = ModelCheckpoint(monitor="val_loss", save_top_k=1)
    _fit(tmp_path, logger, epochs=2, callbacks=[checkpoint], checkpointing=True)
    logger.experiment.finish()

    artifacts = wandb_run(wandb_run_dirs(tmp_path / "wandb")[0])["artifacts"]
    assert [(a.name, a.type) for a in artifacts] == [("boring", "model")] * 2
    assert [sorted(a.aliases) for a in artifacts] == [["best", "latest"]] * 2  # wandb keeps them as a set
    import json

    metadata = [json.loads(a.metadata) for a in artifacts]
    assert [m["original_filename"] for m in metadata] == ["epoch=0-step=4.ckpt", "epoch=1-step=8.ckpt"]
    assert metadata[-1]["score"] == pytest.approx(checkpoint.best_model_score.item())
    assert [[f.path for f in a.manifest.contents] for a in artifacts] == [["model.ckpt"]] * 2


def test_wandb_bad_arguments_and_non_zero_rank(tmp_path, wandb_offline, monkeypatch):
    with pytest.raises(ValueError, match=r"offline=True, log_model=True"):
        WandbLogger(offline=True, log_model=True)
    with pytest.raises(ValueError, match=r"log_model='best'"):
        WandbLogger(log_model="best")
    monkeypatch.setenv("LOCAL_RANK", "1")
    logger = WandbLogger(save_dir=str(tmp_path), offline=True)
    logger.log_hyperparams({"lr": 0.1})
    logger.log_metrics({"loss": 1.0}, step=0)
    logger.experiment.log({"x": 1})  # a stand-in on other ranks
    logger.finalize("success")
    assert wandb_run_dirs(tmp_path) == [] and wandb.run is None


# ----------------------------------------------------------------------------- README


def _readme_blocks(section):
    """The python code blocks of one '## ' section of README.md, in order."""
    import re

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    start = text.index(f"\n## {section}\n")
    end = text.index("\n## ", start + 1)
    return re.findall(r"```python\n(.*?)```", text[start:end], flags=re.S)


def test_readme_loggers_examples_run_and_write_what_they_say(tmp_path, wandb_offline, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    # the example sets MLFLOW_ALLOW_FILE_STORE itself; monkeypatch puts the variable back as it was afterwards
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    blocks = _readme_blocks("Loggers")
    assert len(blocks) == 3
    namespace = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for block in blocks:
            exec(compile(block, "README.md", "exec"), namespace)
    mlflow.set_tracking_uri(None)
    printed = capsys.readouterr().out.splitlines()
    assert "{'lr': '0.1'}" in printed
    assert "['epoch=1-step=16']" in printed
    steps = [line for line in printed if line.startswith("[(1, ")]
    assert len(steps) == 1 and eval(steps[0])[-1][0] == 15  # 8 batches an epoch, a row every 2 steps
    assert (tmp_path / "csv_logs" / "lightning_logs" / "version_0" / "metrics.csv").is_file()
    tb_dir = tmp_path / "tb_logs" / "lightning_logs" / "version_0"
    assert any(p.name.startswith("events.out.tfevents") for p in tb_dir.iterdir())
    (run_dir,) = wandb_run_dirs(tmp_path / "wandb")
    run = wandb_run(run_dir)
    assert run["config"] == {"lr": 0.1} and run["project"] == "regression"
    assert [r["trainer/global_step"] for r in run["history"] if "train_loss" in r] == [1, 3, 5, 7, 9, 11, 13, 15]
    assert run["history"][-1]["samples/nrows"] == 2


# ----------------------------------------------------------------------------- optional packages


def test_importing_the_loggers_imports_neither_mlflow_nor_wandb():
    import subprocess
    import sys

    code = ("import sys; sys.path.insert(0, sys.argv[1]); from ember.loggers import MLFlowLogger, WandbLogger; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('mlflow', 'wandb')]; assert not bad, bad")
    result = subprocess.run([sys.executable, "-c", code, str(Path(__file__).resolve().parents[1])],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("logger, module", [(MLFlowLogger, "mlflow.tracking"), (WandbLogger, "wandb")])
def test_a_missing_package_gives_the_install_line(logger, module, monkeypatch):
    monkeypatch.setitem(sys.modules, module, None)  # import of it now fails as if it were not installed
    extra = "mlflow" if logger is MLFlowLogger else "wandb"
    with pytest.raises(ModuleNotFoundError, match=rf"pip install ember\[{extra}\]"):
        logger()


@pytest.mark.parametrize("log_model, save_top_k, seen", [(True, -1, [0, 1, 2]), (True, 1, [0, 0, 0]),
                                                         ("all", 1, [0, 1, 2])])
def test_mlflow_uploads_at_once_only_for_all_or_keep_every_file(tmp_path, mlflow_store, log_model, save_top_k, seen):
    """log_model=True waits for the end (files may still be replaced), unless save_top_k=-1 keeps every file."""
    counts = []

    class CountUploads(L.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            files = mlflow_artifacts(MlflowClient(mlflow_store), trainer.logger.run_id)
            counts.append(sum(f.endswith(".ckpt") for f in files))

    logger = MLFlowLogger(tracking_uri=mlflow_store, log_model=log_model)
    _fit(tmp_path, logger, callbacks=[ModelCheckpoint(monitor="val_loss", save_top_k=save_top_k), CountUploads()],
         checkpointing=True)
    assert counts == seen
    final = sum(f.endswith(".ckpt") for f in mlflow_artifacts(MlflowClient(mlflow_store), logger.run_id))
    assert final == (3 if save_top_k == -1 or log_model == "all" else 1)
