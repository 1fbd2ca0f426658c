import csv
import os
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import pytest
import torch

from ember.loggers import CSVLogger, Logger, TensorBoardLogger
from ember.loggers import base as logger_base
from ember.loggers import tensorboard as tb_module

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _rank_zero(monkeypatch):
    # Tests may run under a launcher that exports a rank; loggers must act as rank 0 here.
    for key in ("RANK", "LOCAL_RANK", "SLURM_PROCID"):
        monkeypatch.delenv(key, raising=False)


def _read_csv(path):
    with open(path, newline="") as fp:
        reader = csv.reader(fp)
        return next(reader), list(reader)


def _log_sequence(logger):
    """The same calls are replayed on Lightning's logger in the parity test."""
    logger.log_metrics({"loss": 1.0, "acc": torch.tensor(0.5)}, step=0)
    logger.log_metrics({"loss": 0.5}, step=1)
    logger.log_metrics({"loss": 0.25, "val_loss": 0.75}, step=2)  # new key after the first flush
    logger.log_metrics({"loss": 0.125, "epoch": 1}, step=3)
    logger.log_metrics({"loss": 0.0625}, step=None)
    logger.finalize("success")


# ----------------------------------------------------------------------------- CSVLogger


def test_csv_rows_and_header_rewrite_on_new_key(tmp_path):
    logger = CSVLogger(tmp_path, flush_logs_every_n_steps=2)
    _log_sequence(logger)

    path = tmp_path / "lightning_logs" / "version_0" / "metrics.csv"
    assert logger.log_dir == str(path.parent)
    header, rows = _read_csv(path)
    assert header == ["acc", "epoch", "loss", "step", "val_loss"]  # sorted, `step` included
    assert rows == [
        ["0.5", "", "1.0", "0", ""],
        ["", "", "0.5", "1", ""],
        ["", "", "0.25", "2", "0.75"],
        ["", "1", "0.125", "3", ""],
        # step=None: the index within the unflushed buffer (Lightning's rule)
        ["", "", "0.0625", "0", ""],
    ]


def test_csv_buffers_until_flush_interval(tmp_path):
    logger = CSVLogger(tmp_path, name="exp", flush_logs_every_n_steps=3, prefix="train")
    path = Path(logger.log_dir) / "metrics.csv"
    logger.log_metrics({"loss": 3.0}, step=0)
    logger.log_metrics({"loss": 2.0}, step=1)
    assert not path.exists()
    logger.log_metrics({"loss": 1.0}, step=2)  # (2 + 1) % 3 == 0 -> flush
    assert _read_csv(path) == (["step", "train-loss"], [["0", "3.0"], ["1", "2.0"], ["2", "1.0"]])
    logger.log_metrics({"loss": 0.5}, step=3)
    logger.save()
    assert _read_csv(path)[1][-1] == ["3", "0.5"]


def test_csv_versions_and_directory_layout(tmp_path):
    root = tmp_path / "lightning_logs"
    assert CSVLogger(tmp_path).version == 0
    for n in (0, 3):
        (root / f"version_{n}").mkdir(parents=True)
    (root / "version_x").mkdir()  # not a number: ignored
    (root / "version_9").write_text("a file, not a run directory")
    logger = CSVLogger(tmp_path)
    assert logger.version == 4
    assert logger.log_dir == str(root / "version_4")
    assert logger.root_dir == str(root) and logger.save_dir == str(tmp_path)
    assert logger.name == "lightning_logs"

    assert CSVLogger(tmp_path, version=7).log_dir == str(root / "version_7")
    assert CSVLogger(tmp_path, version="version_2").log_dir == str(root / "version_2")
    assert CSVLogger(tmp_path, version="my_run").log_dir == str(root / "my_run")
    no_name = CSVLogger(tmp_path, name=None)
    assert no_name.name == "" and no_name.log_dir == os.path.join(str(tmp_path), "version_0")
    assert CSVLogger(tmp_path, name="", version="run").log_dir == os.path.join(str(tmp_path), "run")

    # a version is fixed once resolved, even if new directories appear later
    logger.log_metrics({"a": 1.0}, step=0)
    logger.save()
    assert CSVLogger(tmp_path).version == 5 and logger.version == 4


def test_csv_reused_version_dir_replaces_old_metrics(tmp_path):
    first = CSVLogger(tmp_path, version=0)
    first.log_metrics({"old": 1.0}, step=0)
    first.save()
    second = CSVLogger(tmp_path, version=0)
    with pytest.warns(UserWarning, match="not empty"):
        second.log_metrics({"new": 2.0}, step=0)
    second.save()
    assert _read_csv(Path(second.log_dir) / "metrics.csv") == (["new", "step"], [["2.0", "0"]])


def test_csv_hparams_yaml(tmp_path):
    yaml = pytest.importorskip("yaml")
    logger = CSVLogger(tmp_path)
    logger.log_hyperparams(Namespace(lr=0.001, layers=[64, 32], optimizer="Adam"))
    logger.log_hyperparams({"batch_size": 16, "scheduler": None, "lr": 0.01, "nested": {"b": True, "a": 1e-05}})
    text = (Path(logger.log_dir) / "hparams.yaml").read_text()
    assert text == (
        "batch_size: 16\n"
        "layers:\n- 64\n- 32\n"
        "lr: 0.01\n"
        "nested:\n  a: 1.0e-05\n  b: true\n"
        "optimizer: Adam\n"
        "scheduler: null\n"
    )
    assert yaml.safe_load(text) == {
        "batch_size": 16,
        "layers": [64, 32],
        "lr": 0.01,
        "nested": {"a": 1e-05, "b": True},
        "optimizer": "Adam",
        "scheduler": None,
    }


# ----------------------------------------------------------------------------- hparams.yaml without PyYAML

_YAML_SAMPLE = {
    "lr": 0.001,
    "wd": 1e-05,
    "big": 1e20,
    "steps": 1000,
    "neg": -0.5,
    "flag": False,
    "nothing": None,
    "name": "resnet 18",
    "path": "/data/train",
    "looks_like_bool": "yes",
    "looks_like_number": "1.0",
    "date": "2024-01-01",
    "quote": "it's: odd",
    "empty_str": "",
    "empty_list": [],
    "empty_dict": {},
    "list": [1, 2.5, "a", None, True],
    "nested": {"z": 1, "a": [{"x": 1, "y": [1, 2]}, [3, 4]]},
}


def test_fallback_yaml_writer_matches_pyyaml():
    yaml = pytest.importorskip("yaml")
    assert logger_base._fallback_yaml_dump(_YAML_SAMPLE) == yaml.dump(_YAML_SAMPLE)
    assert logger_base._fallback_yaml_dump({}) == yaml.dump({})
    # where the text differs (control characters), it must still load back to the same value
    tricky = {"multi": "a\nb", "tab": "x\ty", "accent": "café"}
    assert yaml.safe_load(logger_base._fallback_yaml_dump(tricky)) == tricky


def test_hparams_yaml_written_without_pyyaml(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "yaml", None)  # makes `import yaml` raise ImportError
    logger = CSVLogger(tmp_path)
    with pytest.warns(UserWarning, match="'model'"):
        logger.log_hyperparams({"lr": 0.1, "layers": [8, 4], "model": torch.nn.Linear(1, 1)})
    assert (Path(logger.log_dir) / "hparams.yaml").read_text() == "layers:\n- 8\n- 4\nlr: 0.1\n"


# ----------------------------------------------------------------------------- TensorBoardLogger


def _load_events(log_dir):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return acc


def test_tensorboard_scalars(tmp_path):
    pytest.importorskip("tensorboard")
    logger = TensorBoardLogger(tmp_path, name="tb", version=2)
    assert logger.log_dir == str(tmp_path / "tb" / "version_2")
    logger.log_metrics({"loss": 1.5, "acc": torch.tensor(0.25)}, step=0)
    logger.log_metrics({"loss": 0.75}, step=10)
    logger.log_metrics({"lrs": {"a": 0.1, "b": 0.2}}, step=10)  # add_scalars: one sub-run per key
    logger.finalize("success")

    acc = _load_events(logger.log_dir)
    assert sorted(acc.Tags()["scalars"]) == ["acc", "loss"]
    assert [(e.step, e.value) for e in acc.Scalars("loss")] == [(0, 1.5), (10, 0.75)]
    assert [(e.step, e.value) for e in acc.Scalars("acc")] == [(0, 0.25)]
    sub = _load_events(Path(logger.log_dir) / "lrs_a")
    assert [(e.step, pytest.approx(e.value)) for e in sub.Scalars("lrs")] == [(10, 0.1)]
    # finalize("success") leaves an (empty) hparams.yaml like Lightning
    assert (Path(logger.log_dir) / "hparams.yaml").read_text() == "{}\n"


def test_tensorboard_hparams(tmp_path):
    pytest.importorskip("tensorboard")
    pytest.importorskip("yaml")
    from tensorboard.plugins.hparams import plugin_data_pb2

    logger = TensorBoardLogger(tmp_path)
    logger.log_hyperparams({"lr": 0.01, "opt": {"name": "sgd", "momentum": 0.9}, "layers": [64, 32]})
    logger.log_metrics({"loss": 2.0}, step=1)
    logger.finalize("success")

    acc = _load_events(logger.log_dir)
    assert [(e.step, e.value) for e in acc.Scalars("hp_metric")] == [(0, -1.0)]
    content = acc.PluginTagToContent("hparams")
    assert sorted(content) == ["_hparams_/experiment", "_hparams_/session_end_info", "_hparams_/session_start_info"]
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hp = start.session_start_info.hparams
    assert sorted(hp) == ["layers", "lr", "opt/momentum", "opt/name"]  # nested dicts flattened with "/"
    assert hp["lr"].number_value == pytest.approx(0.01)
    assert hp["opt/momentum"].number_value == pytest.approx(0.9)
    assert hp["opt/name"].string_value == "sgd"
    assert hp["layers"].string_value == "[64, 32]"
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert [m.name.tag for m in experiment.metric_infos] == ["hp_metric"]

    # hparams.yaml keeps the unflattened structure
    assert (Path(logger.log_dir) / "hparams.yaml").read_text() == (
        "layers:\n- 64\n- 32\nlr: 0.01\nopt:\n  momentum: 0.9\n  name: sgd\n"
    )


def test_tensorboard_hparams_explicit_metric_and_no_default(tmp_path):
    pytest.importorskip("tensorboard")
    logger = TensorBoardLogger(tmp_path, version="a")
    logger.log_hyperparams({"lr": 0.1}, metrics=0.5, step=3)
    logger.finalize("success")
    acc = _load_events(logger.log_dir)
    assert [(e.step, e.value) for e in acc.Scalars("hp_metric")] == [(3, 0.5)]

    quiet = TensorBoardLogger(tmp_path, version="b", default_hp_metric=False)
    quiet.log_hyperparams({"lr": 0.1})
    quiet.log_metrics({"loss": 1.0}, step=0)
    quiet.finalize("success")
    acc = _load_events(quiet.log_dir)
    assert acc.Tags()["scalars"] == ["loss"]
    with pytest.raises(KeyError):  # no hparams summary without a metric
        acc.PluginTagToContent("hparams")


def test_tensorboard_versions_and_sub_dir(tmp_path):
    pytest.importorskip("tensorboard")
    (tmp_path / "lightning_logs" / "version_1").mkdir(parents=True)
    logger = TensorBoardLogger(tmp_path, sub_dir="train")
    assert logger.version == 2
    assert logger.root_dir == str(tmp_path / "lightning_logs")
    assert logger.log_dir == str(tmp_path / "lightning_logs" / "version_2" / "train")
    assert TensorBoardLogger(tmp_path, name=None, version="x").log_dir == os.path.join(str(tmp_path), "x")


def test_tensorboard_missing_gives_install_hint(tmp_path, monkeypatch):
    monkeypatch.setattr(tb_module, "_tensorboard_available", lambda: False)
    with pytest.raises(ModuleNotFoundError, match="pip install tensorboard"):
        TensorBoardLogger(tmp_path)


def test_importing_loggers_does_not_import_tensorboard():
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import ember.loggers; "
        "from ember.loggers import TensorBoardLogger; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('tensorboard', 'yaml') or 'utils.tensorboard' in m]; "
        "assert not bad, bad"
    )
    result = subprocess.run([sys.executable, "-c", code, str(REPO_ROOT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# ----------------------------------------------------------------------------- rank zero only


def test_non_zero_rank_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "1")
    csv_logger = CSVLogger(tmp_path)
    csv_logger.log_hyperparams({"lr": 0.1})
    csv_logger.log_metrics({"loss": 1.0}, step=0)
    csv_logger.experiment.log_metrics({"loss": 1.0})  # dummy experiment: silently ignored
    csv_logger.finalize("success")
    assert list(tmp_path.iterdir()) == []

    monkeypatch.setenv("RANK", "0")  # the global rank wins over LOCAL_RANK
    assert logger_base._is_global_zero()


def test_custom_logger_subclass():
    class Recorder(Logger):
        def __init__(self):
            self.calls = []

        @property
        def name(self):
            return "rec"

        @property
        def version(self):
            return 0

        def log_metrics(self, metrics, step=None):
            self.calls.append((step, dict(metrics)))

        def log_hyperparams(self, params, *args, **kwargs):
            pass

    rec = Recorder()
    rec.log_metrics({"x": 1.0}, step=4)
    rec.finalize("success")
    rec.after_save_checkpoint(None)
    assert rec.calls == [(4, {"x": 1.0})]
    assert rec.log_dir is None and rec.save_dir is None and rec.group_separator == "/"
    with pytest.raises(TypeError):
        Logger()


# ----------------------------------------------------------------------------- parity with Lightning


def test_csv_parity_with_lightning(tmp_path):
    pytest.importorskip("lightning")
    from lightning.pytorch.loggers import CSVLogger as LightningCSVLogger

    hparams = {"lr": 0.001, "layers": [64, 32], "name": "Adam", "sched": None, "nested": {"b": 1, "a": True}}
    for cls, where in ((LightningCSVLogger, "theirs"), (CSVLogger, "ours")):
        logger = cls(tmp_path / where, name="exp", prefix="fit", flush_logs_every_n_steps=2)
        logger.log_hyperparams(hparams)
        _log_sequence(logger)
        assert logger.log_dir == str(tmp_path / where / "exp" / "version_0")

    theirs = tmp_path / "theirs" / "exp" / "version_0"
    ours = tmp_path / "ours" / "exp" / "version_0"
    assert _read_csv(ours / "metrics.csv") == _read_csv(theirs / "metrics.csv")
    assert (ours / "metrics.csv").read_bytes() == (theirs / "metrics.csv").read_bytes()
    assert (ours / "hparams.yaml").read_text() == (theirs / "hparams.yaml").read_text()
