"""ember.cli.LightningCLI: real entry points in subprocesses, argument errors, config saving, hparams."""
from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from cli_app.train import InjectedRegressor, Numbers, Regressor
from ember.cli import LightningCLI, ReduceLROnPlateau, SaveConfigCallback

TESTS = Path(__file__).parent
README = TESTS.parent / "README.md"
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]



@pytest.fixture(autouse=True)
def _seed_environment(monkeypatch):
    """The CLI seeds (seed_everything sets PL_GLOBAL_SEED/PL_SEED_WORKERS); other tests must not see that."""
    for name in ("PL_GLOBAL_SEED", "PL_SEED_WORKERS"):
        monkeypatch.delenv(name, raising=False)


def run_python(*args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    # the repository (ember) and tests/ (cli_app, which `python tests/cli_app/train.py` imports as a package)
    path = [str(TESTS.parent), str(TESTS), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def cli_error(capsys: Any, args: list, model: Any = Regressor) -> str:
    """The one-line message a bad ``args`` gets; the CLI exits with 2 as argparse does."""
    with pytest.raises(SystemExit) as exit_info:
        LightningCLI(model, Numbers if model is not None else None, args=args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "usage:" not in err  # the error alone, not under a fifty-line usage block
    return err.split("error: ", 1)[1].strip()


# ---------------------------------------------------------------------------------------------- entry points
def test_script_and_python_m_entry_points_train_and_test_from_a_config_file(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "seed_everything": 5, "model": {"hidden": 6, "activation": "tanh"}, "data": {"batch_size": 4},
        "trainer": {"max_epochs": 1, "log_every_n_steps": 1, "enable_progress_bar": False,
                    "logger": {"class_path": "CSVLogger", "init_args": {"save_dir": str(tmp_path), "name": "run"}}}}))
    fit = run_python(str(TESTS / "cli_app" / "train.py"), "fit", "--config", str(config),
                     "--trainer.max_epochs", "2", cwd=tmp_path)
    assert fit.returncode == 0, fit.stderr
    log_dir = tmp_path / "run" / "version_0"
    saved = yaml.safe_load((log_dir / "config.yaml").read_text())
    assert saved["seed_everything"] == 5 and saved["trainer"]["max_epochs"] == 2  # the flag beat the file
    assert saved["model"] == {"hidden": 6, "activation": "tanh", "lr": 0.1}
    with open(log_dir / "metrics.csv") as fh:
        losses = [float(row["train_loss"]) for row in csv.DictReader(fh) if row.get("train_loss")]
    assert len(losses) == 8 and all(torch.isfinite(torch.tensor(losses)))  # 16 samples / 4, two epochs
    (ckpt,) = (log_dir / "checkpoints").iterdir()
    assert ckpt.name == "epoch=1-step=8.ckpt"
    state = torch.load(ckpt, weights_only=False)
    assert state["global_step"] == 8
    assert state["hyper_parameters"] == {"hidden": 6, "activation": "tanh", "lr": 0.1,
                                         "_instantiator": "ember.cli.instantiate_module"}

    # No config file: the model's arguments come from the checkpoint it was trained to (hidden=6, tanh).
    test = run_python("-m", "cli_app.train", "test", "--ckpt_path", str(ckpt), "--trainer.default_root_dir",
                      str(tmp_path / "test"), cwd=TESTS)
    assert test.returncode == 0, test.stderr
    reloaded = Regressor.load_from_checkpoint(ckpt)
    expected = _test_loss(reloaded, Numbers(batch_size=4))
    printed = float(re.search(r"test_loss\W+([0-9.e-]+)", test.stdout).group(1))
    assert printed == pytest.approx(expected, rel=1e-4)  # the table rounds
    saved = yaml.safe_load((tmp_path / "test" / "lightning_logs" / "version_0" / "config.yaml").read_text())
    assert saved["model"] == {"hidden": 6, "activation": "tanh", "lr": 0.1}


def _test_loss(model: Regressor, data: Numbers) -> float:
    model.eval()
    with torch.no_grad():
        losses = [torch.nn.functional.mse_loss(model.net(x), y) for x, y in data.test_dataloader()]
    return float(torch.stack(losses).mean())


def test_print_config_prints_every_setting_and_trains_nothing(tmp_path):
    out = run_python(str(TESTS / "cli_app" / "train.py"), "fit", "--model.hidden", "3", "--optimizer", "Adam",
                     "--print_config", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    printed = yaml.safe_load(out.stdout)
    assert printed["model"] == {"hidden": 3, "activation": "relu", "lr": 0.1}
    assert printed["trainer"]["max_epochs"] is None and printed["trainer"]["enable_progress_bar"] is False
    assert printed["optimizer"]["class_path"] == "torch.optim.Adam" and printed["optimizer"]["init_args"]["lr"] == 0.001
    assert not any(tmp_path.iterdir())  # nothing ran, nothing written


def test_a_wrong_flag_in_a_real_run_exits_2_with_the_flag_named(tmp_path):
    out = run_python(str(TESTS / "cli_app" / "train.py"), "fit", "--trainer.max_epoch", "3", cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1] == (
        "train.py [options] fit: error: --trainer.max_epoch is not a flag of this command (with value '3'). "
        "Did you mean --trainer.max_epochs? "
        "Run `train.py [options] fit --help` for every flag.")


def test_readme_example_runs_as_written(tmp_path):
    text = README.read_text()
    section = text[text.index("## Command line: LightningCLI"):]
    section = section[:section.index("\n## ", 10)]
    script = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    config = re.search(r"```yaml\n(.*?)```", section, re.S).group(1)
    (tmp_path / "train.py").write_text(script)
    (tmp_path / "config.yaml").write_text(config)
    out = run_python("train.py", "fit", "--config", "config.yaml", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    log_dir = tmp_path / "lightning_logs" / "version_0"
    assert yaml.safe_load((log_dir / "config.yaml").read_text())["model"] == {"hidden": 32, "lr": 0.05}
    # the checkpoint the README's resume line names: 64 samples / 16 = 4 batches, 3 epochs
    ckpt = log_dir / "checkpoints" / "epoch=2-step=12.ckpt"
    assert "lightning_logs/version_0/checkpoints/epoch=2-step=12.ckpt" in section and ckpt.exists()
    assert torch.load(ckpt, weights_only=False)["global_step"] == 12


def test_import_ember_does_not_import_jsonargparse_and_without_it_the_error_says_how_to_install(tmp_path):
    code = ("import sys, ember, ember.cli; from ember.pytorch.cli import LightningCLI, SaveConfigCallback\n"
            "print('jsonargparse' in sys.modules)\n"
            "sys.modules['jsonargparse'] = None  # as if it were not installed\n"
            "try:\n    LightningCLI(ember.LightningModule, args=[])\n"
            "except ModuleNotFoundError as err:\n    print(err)\n")
    out = run_python("-c", code, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    imported, message = out.stdout.strip().splitlines()
    assert imported == "False"
    assert message == ('LightningCLI needs jsonargparse, which ember does not install by default: '
                       'pip install "ember[cli]" (missing: jsonargparse)')


# ---------------------------------------------------------------------------------------------- errors
def test_wrong_type_names_flag_value_and_allowed(capsys):
    assert cli_error(capsys, ["fit", "--trainer.max_epochs", "three"]) == \
        "--trainer.max_epochs got 'three'; allowed: an int or null."
    assert cli_error(capsys, ["fit", "--model.hidden", "1.5"]) == "--model.hidden got '1.5'; allowed: an int."
    assert cli_error(capsys, ["fit", "--trainer.limit_train_batches", "all"]) == \
        "--trainer.limit_train_batches got 'all'; allowed: an int or a float or null."


def test_bad_choice_names_the_choices(capsys):
    assert cli_error(capsys, ["fit", "--model.activation", "gelu"]) == \
        "--model.activation got 'gelu'; allowed: one of 'relu', 'tanh'."
    assert cli_error(capsys, ["fitt"]) == (
        "the subcommand got 'fitt'; allowed: fit, validate, test, predict. Did you mean 'fit'? "
        "The subcommand comes first, then its flags: fit --trainer.max_epochs 3.")


def test_unknown_flags_and_classes_suggest_the_close_ones(capsys):
    message = cli_error(capsys, ["fit", "--model.hiden", "4"])
    assert message.startswith("--model.hiden is not a flag of this command (with value '4'). "
                              "Did you mean --model.hidden? Run `")
    assert cli_error(capsys, ["fit", "--optimizer", "Adamm"]).endswith("Did you mean 'Adam' or 'RAdam' or 'NAdam'?")
    assert cli_error(capsys, ["fit", "--optimizer", "Adam", "--optimizer.lrr", "0.1"]).startswith(
        "--optimizer.lrr: torch.optim.Adam has no argument 'lrr'; allowed: lr, betas, eps, weight_decay,")
    assert cli_error(capsys, ["fit", "--optimizer.lr", "0.1"]).startswith(
        "--optimizer.lr was given before a class for --optimizer: name the class first, e.g. --optimizer Adam")
    assert cli_error(capsys, ["fit", "--trainer.callbacks+=EarlyStoping"]).endswith("Did you mean 'EarlyStopping'?")
    assert cli_error(capsys, ["fit", "stray"]).startswith(
        "unexpected argument 'stray': every value needs a flag before it")


def test_arguments_of_a_chosen_class_are_named_with_their_full_flag(capsys):
    assert cli_error(capsys, ["fit", "--optimizer", "Adam", "--optimizer.lr", "fast"]) == \
        "--optimizer.lr got 'fast'; allowed: a float or a Tensor."
    assert cli_error(capsys, ["fit", "--lr_scheduler", "StepLR"]) == \
        "torch.optim.lr_scheduler.StepLR needs --lr_scheduler.step_size; give --lr_scheduler.step_size VALUE."
    assert cli_error(capsys, ["fit", "--trainer.callbacks+=EarlyStopping", "--trainer.callbacks.patience", "x"]) == \
        "--trainer.callbacks.patience got 'x'; allowed: an int."
    assert cli_error(capsys, ["fit", "--trainer.callbacks+=EarlyStopping", "--trainer.callbacks.patiense", "3"]) \
        .endswith("has no argument 'patiense'; allowed: monitor, min_delta, patience, verbose, mode, strict, "
                  "check_finite, stopping_threshold, divergence_threshold, check_on_train_epoch_end, "
                  "log_rank_zero_only. Did you mean 'patience'?")
    assert cli_error(capsys, ["fit"], model=None).startswith(
        "--model is required and not given; name a class on the command line (--model=MyClass)")
    assert cli_error(capsys, ["fit", "--trainer.callbacks.patience", "3"]) == (
        "--trainer.callbacks.patience was given before a class for --trainer.callbacks: name the class first, "
        "e.g. --trainer.callbacks+=EarlyStopping --trainer.callbacks.patience ..., or give class_path/init_args "
        "in the config.")


def test_a_required_init_argument_is_named(capsys):
    class NeedsClasses(Regressor):
        def __init__(self, num_classes: int, hidden: int = 8) -> None:
            super().__init__(hidden=hidden)

    assert cli_error(capsys, ["fit"], model=NeedsClasses).startswith(
        "--model.num_classes is required and not given; give --model.num_classes VALUE, or set it in a config file.")


def test_config_file_errors_name_the_key(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer:\n  max_epochz: 3\n")
    assert cli_error(capsys, ["fit", "--config", str(bad)]).startswith(
        "--trainer.max_epochz (a key of the config given to `fit`) is not a flag of `fit`. "
        "Did you mean --trainer.max_epochs")
    assert cli_error(capsys, ["fit", "--config", str(tmp_path / "missing.yaml")]) == \
        f"--config got a file that does not exist: {tmp_path / 'missing.yaml'}."


def test_a_setting_the_trainer_refuses_is_named_as_its_flag():
    with pytest.raises(ValueError, match=r"^--trainer.precision: Trainer\(precision=17\) is not known; allowed: "):
        LightningCLI(Regressor, Numbers, args=["fit", "--trainer.precision", "17"])


def test_bad_lightningcli_arguments_raise_before_parsing():
    with pytest.raises(TypeError, match=r"seed_everything_default='7'\): expected True, False or an int seed"):
        LightningCLI(Regressor, Numbers, seed_everything_default="7", args=[])
    with pytest.raises(TypeError, match=r"args='fit --trainer.max_epochs 1'\): expected a list of strings"):
        LightningCLI(Regressor, Numbers, args="fit --trainer.max_epochs 1")


# ---------------------------------------------------------------------------------------------- behaviour
def test_run_false_with_a_dict_builds_without_running(tmp_path):
    cli = LightningCLI(Regressor, Numbers, run=False, seed_everything_default=False,
                       trainer_defaults={"max_epochs": 7, "default_root_dir": str(tmp_path)},
                       args={"model": {"hidden": 4}, "data": {"samples": 8}, "trainer": {"limit_train_batches": 2}})
    assert cli.subcommand is None
    assert cli.config["seed_everything"] is False
    assert dict(cli.model.hparams) == {"hidden": 4, "activation": "relu", "lr": 0.1,
                                       "_instantiator": "ember.cli.instantiate_module"}
    assert cli.datamodule.hparams.samples == 8
    assert (cli.trainer.max_epochs, cli.trainer.limit_train_batches, cli.trainer.global_step) == (7, 2, 0)
    assert [type(c) for c in cli.trainer.callbacks].count(SaveConfigCallback) == 1
    assert not any(tmp_path.iterdir())


def test_seed_is_recorded_in_the_saved_config(tmp_path):
    cli = LightningCLI(Regressor, Numbers, args=["fit", "--trainer.max_epochs", "1", "--trainer.logger", "false",
                                                 "--trainer.default_root_dir", str(tmp_path), *QUIET])
    assert cli.config["fit"]["seed_everything"] == 0  # True: Lightning 2.6's unseeded choice, 0
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["seed_everything"] == 0
    assert cli.trainer.global_step == 4


def test_save_config_refuses_to_overwrite_an_earlier_run(tmp_path):
    args = ["fit", "--trainer.max_epochs", "1", "--trainer.logger", "false", "--trainer.default_root_dir",
            str(tmp_path), *QUIET]
    LightningCLI(Regressor, Numbers, args=args)
    first = (tmp_path / "config.yaml").read_text()
    with pytest.raises(RuntimeError, match=r"config.yaml exists already; ember will not overwrite"):
        LightningCLI(Regressor, Numbers, args=[*args, "--model.hidden", "3"])
    assert (tmp_path / "config.yaml").read_text() == first
    LightningCLI(Regressor, Numbers, args=[*args, "--model.hidden", "3"], save_config_kwargs={"overwrite": True})
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["model"]["hidden"] == 3
    cli = LightningCLI(Regressor, Numbers, args=args, save_config_callback=None)
    assert not any(isinstance(c, SaveConfigCallback) for c in cli.trainer.callbacks)


def test_hooks_run_in_lightnings_order_and_add_arguments_to_parser_links(tmp_path):
    calls = []

    class RecordingCLI(LightningCLI):
        def add_arguments_to_parser(self, parser):
            calls.append("add_arguments_to_parser")
            parser.link_arguments("data.batch_size", "model.hidden")  # hidden follows the batch size
            parser.add_argument("--notes", default="none")

        def before_instantiate_classes(self):
            calls.append(("before_instantiate_classes", self.config["fit"]["notes"]))

        def after_instantiate_classes(self):
            calls.append("after_instantiate_classes")

        def before_fit(self):
            calls.append(("before_fit", self.trainer.global_step))

        def after_fit(self):
            calls.append(("after_fit", self.trainer.global_step))

    cli = RecordingCLI(Regressor, Numbers, args=["fit", "--data.batch_size", "8", "--notes", "hi",
                                                 "--trainer.max_epochs", "1", "--trainer.logger", "false",
                                                 "--trainer.default_root_dir", str(tmp_path), *QUIET])
    # one add_arguments_to_parser per subcommand parser, then the run
    assert calls == ["add_arguments_to_parser"] * 4 + [("before_instantiate_classes", "hi"),
                                                       "after_instantiate_classes", ("before_fit", 0),
                                                       ("after_fit", 2)]
    assert cli.model.hparams.hidden == 8 and cli.model.net[0].out_features == 8


def test_subclass_mode_and_injected_optimizer_and_plateau_scheduler(tmp_path):
    cli = LightningCLI(args=["fit", "--model=cli_app.train.InjectedRegressor", "--model.optimizer", "Adam",
                             "--model.optimizer.lr", "0.02", "--data=cli_app.train.Numbers",
                             "--trainer.max_epochs", "1", "--trainer.logger", "false",
                             "--trainer.default_root_dir", str(tmp_path), *QUIET])
    assert type(cli.model) is InjectedRegressor and type(cli.datamodule) is Numbers
    (optimizer,) = cli.trainer.optimizers
    assert type(optimizer).__name__ == "Adam" and optimizer.param_groups[0]["lr"] == 0.02
    assert cli.model.hparams["_class_path"] == "cli_app.train.InjectedRegressor"

    cli = LightningCLI(Regressor, Numbers, args=[
        "fit", "--optimizer", "SGD", "--optimizer.lr", "0.3", "--lr_scheduler", "ReduceLROnPlateau",
        "--lr_scheduler.monitor", "val_loss", "--lr_scheduler.patience", "0", "--trainer.max_epochs", "2",
        "--trainer.logger", "false", "--trainer.default_root_dir", str(tmp_path / "b"), *QUIET])
    (config,) = cli.trainer.lr_scheduler_configs
    assert isinstance(config.scheduler, ReduceLROnPlateau) and config.monitor == "val_loss"
    assert type(cli.trainer.optimizers[0]).__name__ == "SGD"
    assert config.scheduler.best < float("inf")  # it has seen val_loss
    assert config.scheduler.last_epoch == 2  # stepped once per epoch on val_loss


def test_load_from_checkpoint_rebuilds_a_cli_model(tmp_path):
    cli = LightningCLI(Regressor, Numbers, args=["fit", "--model.hidden", "5", "--trainer.max_epochs", "1",
                                                 "--trainer.logger", "false",
                                                 "--trainer.default_root_dir", str(tmp_path), *QUIET])
    path = tmp_path / "m.ckpt"
    cli.trainer.save_checkpoint(path)
    loaded = Regressor.load_from_checkpoint(path)
    # as in Lightning, the rebuilt model's hparams are its arguments; the rebuilder is not recorded again
    assert dict(loaded.hparams) == {"hidden": 5, "activation": "relu", "lr": 0.1}
    assert cli.model.hparams["_instantiator"] == "ember.cli.instantiate_module"
    for a, b in zip(loaded.state_dict().values(), cli.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    state = torch.load(path, weights_only=False)
    state["hyper_parameters"]["_instantiator"] = "lightning.pytorch.cli.instantiate_module"  # a Lightning CLI file
    torch.save(state, path)
    assert Regressor.load_from_checkpoint(path).net[0].out_features == 5
    state["hyper_parameters"]["_instantiator"] = "os.system"
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"_instantiator='os.system'; ember only runs"):
        Regressor.load_from_checkpoint(path)
