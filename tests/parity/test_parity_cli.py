"""LightningCLI: the same ``args=[...]`` builds the same model, datamodule and Trainer under both frameworks."""
from __future__ import annotations

import contextlib
import importlib
import io
from typing import Any

import pytest
import torch
import yaml
from cli_app.models import classes
from parity_harness import assert_same_weights, run_both, weights

QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
         "--trainer.enable_checkpointing", "false", "--trainer.logger", "false"]



@pytest.fixture(autouse=True)
def _seed_environment(monkeypatch):
    """The CLI seeds (seed_everything sets PL_GLOBAL_SEED/PL_SEED_WORKERS); other tests must not see that."""
    for name in ("PL_GLOBAL_SEED", "PL_SEED_WORKERS"):
        monkeypatch.delenv(name, raising=False)


def cli_program(L: Any, tmp_path: Any, args: list | dict, run: bool = True, **cli_kwargs: Any) -> dict[str, Any]:
    Model, Data = classes(L)
    root = tmp_path / L.__name__  # each framework writes its config.yaml in its own folder
    if isinstance(args, list) and run:
        args = [*args, "--trainer.default_root_dir", str(root)]
    cli_module = importlib.import_module(f"{L.__name__}.pytorch.cli")  # lightning.pytorch.cli or ember.pytorch.cli
    cli = cli_module.LightningCLI(Model, Data, args=args, run=run, **cli_kwargs)
    trainer = cli.trainer
    optimizers = trainer.optimizers or [cli.model.configure_optimizers()]
    optimizer = optimizers[0][0][0] if isinstance(optimizers[0], tuple) else optimizers[0]
    saved = root / "config.yaml"
    return {
        "model_class": type(cli.model).__name__.split("_")[0],
        "hparams": _hparams(L, cli.model),
        "instantiator": cli.model.hparams.get("_instantiator"),
        "data_hparams": _hparams(L, cli.datamodule),
        "settings": {name: getattr(trainer, name) for name in
                     ("max_epochs", "max_steps", "limit_train_batches", "limit_val_batches",
                      "accumulate_grad_batches", "check_val_every_n_epoch", "global_step", "current_epoch")},
        "optimizer": (type(optimizer).__name__, optimizer.param_groups[0].get("initial_lr",
                                                                         optimizer.param_groups[0]["lr"]),
                      optimizer.param_groups[0]["lr"]),
        "schedulers": [type(c.scheduler).__name__ for c in trainer.lr_scheduler_configs] if trainer.optimizers else [],
        "callbacks": sorted(type(c).__name__ for c in trainer.callbacks if type(c).__name__ in
                            ("SaveConfigCallback", "EarlyStopping", "Timer")),
        "subcommand": cli.subcommand,
        "config": _sections(L, cli.config.get(cli.subcommand) if cli.subcommand else cli.config),
        "saved_config": _sections(L, yaml.safe_load(saved.read_text())) if saved.exists() else None,
        "weights": weights(cli.model),
    }


def _hparams(L: Any, module: Any) -> dict[str, Any]:
    """hparams without the framework's own names: its instantiator, and its name in a subclass-mode class path."""
    found = {k: v for k, v in module.hparams.items() if k != "_instantiator"}
    if "_class_path" in found:
        found["_class_path"] = found["_class_path"].replace(L.__name__, "L")
    return found


def _sections(L: Any, config: Any) -> dict[str, Any]:
    """The parts of a config that name user classes and settings both frameworks spell the same way."""
    plain = config.as_dict() if hasattr(config, "as_dict") else dict(config)
    for key in ("model", "data"):
        if isinstance(plain[key], dict) and "class_path" in plain[key]:
            plain[key]["class_path"] = plain[key]["class_path"].replace(L.__name__, "L")
    trainer = plain["trainer"]
    return {"seed_everything": plain["seed_everything"], "model": plain["model"], "data": plain["data"],
            "optimizer": plain.get("optimizer"), "lr_scheduler": plain.get("lr_scheduler"),
            "trainer": {k: trainer[k] for k in ("max_epochs", "limit_train_batches", "accumulate_grad_batches",
                                                "limit_val_batches")}}


def _assert_same(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if key == "weights":
            assert_same_weights(a[key], b[key])
        elif key == "instantiator":
            # Lightning records its own import path so load_from_checkpoint can rebuild the CLI's model;
            # ember records its own in the same place.
            assert (a[key], b[key]) == ("lightning.pytorch.cli.instantiate_module", "ember.cli.instantiate_module")
        else:
            assert a[key] == b[key], key


def test_fit_from_args_builds_and_trains_the_same(tmp_path):
    args = ["fit", "--seed_everything", "7", "--model.hidden", "6", "--model.activation", "tanh",
            "--data.batch_size", "4", "--trainer.max_epochs", "2", "--trainer.limit_train_batches", "4",
            "--trainer.limit_val_batches", "2", "--trainer.accumulate_grad_batches", "2",
            "--optimizer", "Adam", "--optimizer.lr", "0.01", "--lr_scheduler", "StepLR",
            "--lr_scheduler.step_size", "1", "--lr_scheduler.gamma", "0.5", *QUIET]
    a, b = run_both(cli_program, tmp_path=tmp_path, args=args)
    _assert_same(a, b)
    assert b["hparams"] == {"hidden": 6, "activation": "tanh", "lr": 0.1}
    assert b["data_hparams"] == {"batch_size": 4, "samples": 16}
    assert b["settings"] == {"max_epochs": 2, "max_steps": -1, "limit_train_batches": 4, "limit_val_batches": 2,
                             "accumulate_grad_batches": 2, "check_val_every_n_epoch": 1, "global_step": 4,
                             "current_epoch": 2}
    # Adam from the command line replaced the model's SGD; StepLR halved the lr after each of the 2 epochs.
    assert b["optimizer"] == ("Adam", 0.01, 0.0025)
    assert b["schedulers"] == ["StepLR"]
    assert b["callbacks"] == ["SaveConfigCallback"]
    for section in ("seed_everything", "model", "data", "trainer", "lr_scheduler"):  # YAML has no tuples (betas)
        assert b["saved_config"][section] == b["config"][section], section
    assert b["saved_config"]["seed_everything"] == 7 and b["saved_config"]["model"]["hidden"] == 6
    assert b["saved_config"]["optimizer"]["class_path"] == "torch.optim.Adam"
    assert b["saved_config"]["optimizer"]["init_args"]["lr"] == 0.01


def test_config_file_and_trainer_defaults_match(tmp_path):
    config = tmp_path / "config_in.yaml"
    config.write_text(yaml.safe_dump({
        "seed_everything": 3, "model": {"hidden": 5, "lr": 0.05},
        "trainer": {"max_epochs": 1, "limit_train_batches": 1.0, "callbacks": [{"class_path": "EarlyStopping",
                                                    "init_args": {"monitor": "val_loss", "patience": 2}}]}}))
    args = ["fit", "--config", str(config), "--data.samples", "16", *QUIET]

    def program(L: Any, tmp_path: Any) -> dict[str, Any]:
        # trainer_defaults' callbacks join those of the config instead of being replaced by them
        defaults = {"limit_val_batches": 1, "callbacks": [L.pytorch.callbacks.Timer()]}
        return cli_program(L, tmp_path, args, trainer_defaults=defaults)
    a, b = run_both(program, tmp_path=tmp_path)
    _assert_same(a, b)
    assert b["hparams"] == {"hidden": 5, "activation": "relu", "lr": 0.05}
    assert b["settings"]["max_epochs"] == 1 and b["settings"]["limit_val_batches"] == 1
    assert b["settings"]["global_step"] == 4  # 16 samples / batch 4, one epoch
    assert b["optimizer"] == ("SGD", 0.05, 0.05)  # the model's own configure_optimizers: no --optimizer given
    assert b["callbacks"] == ["EarlyStopping", "SaveConfigCallback", "Timer"]


def test_run_false_with_a_dict_and_subclass_mode_match(tmp_path):
    def program(L: Any, tmp_path: Any) -> dict[str, Any]:
        classes(L)
        args = {"model": {"class_path": f"cli_app.models.Regressor_{L.__name__}", "init_args": {"hidden": 3}},
                "data": {"class_path": f"cli_app.models.Numbers_{L.__name__}"},
                "trainer": {"max_epochs": 4, "accumulate_grad_batches": 3, "limit_val_batches": 0.25}, "seed_everything": 11}
        return cli_program(L, tmp_path, args, run=False, subclass_mode_model=True, subclass_mode_data=True,
                           trainer_defaults={"limit_train_batches": 0.5})
    a, b = run_both(program, tmp_path=tmp_path)
    _assert_same(a, b)
    assert b["subcommand"] is None
    assert b["model_class"] == "Regressor"
    assert b["hparams"] == {"_class_path": "cli_app.models.Regressor_L", "hidden": 3, "activation": "relu", "lr": 0.1}
    assert b["data_hparams"] == {"_class_path": "cli_app.models.Numbers_L", "batch_size": 4, "samples": 16}
    assert b["settings"]["max_epochs"] == 4 and b["settings"]["accumulate_grad_batches"] == 3
    assert b["settings"]["limit_train_batches"] == 0.5 and b["settings"]["global_step"] == 0


def test_optimizer_linked_into_the_model_with_link_to_matches(tmp_path):
    def program(L: Any, tmp_path: Any) -> dict[str, Any]:
        cli_module = importlib.import_module(f"{L.__name__}.pytorch.cli")
        Regressor, Numbers = classes(L)

        class LinkedRegressor(Regressor):
            def __init__(self, optimizer_init: dict, hidden: int = 8) -> None:
                super().__init__(hidden=hidden)
                self.optimizer_init = optimizer_init

            def configure_optimizers(self) -> Any:
                return cli_module.instantiate_class(self.parameters(), self.optimizer_init)

        class LinkingCLI(cli_module.LightningCLI):
            def add_arguments_to_parser(self, parser: Any) -> None:
                parser.add_optimizer_args(torch.optim.Adam, link_to="model.optimizer_init")

        cli = LinkingCLI(LinkedRegressor, Numbers, args=[
            "fit", "--seed_everything", "3", "--optimizer.lr", "0.02", "--trainer.max_epochs", "1",
            "--trainer.default_root_dir", str(tmp_path / L.__name__), *QUIET])
        (optimizer,) = cli.trainer.optimizers
        return {"optimizer": (type(optimizer).__name__, optimizer.param_groups[0]["lr"]),
                "init": cli.model.optimizer_init, "steps": cli.trainer.global_step, "weights": weights(cli.model)}

    a, b = run_both(program, tmp_path=tmp_path)
    assert_same_weights(a.pop("weights"), b.pop("weights"))
    assert a == b
    assert b["optimizer"] == ("Adam", 0.02) and b["steps"] == 4
    assert b["init"]["class_path"] == "torch.optim.adam.Adam" and b["init"]["init_args"]["lr"] == 0.02


def test_a_bad_value_exits_2_under_both_and_ember_says_it_in_one_line(tmp_path):
    def program(L: Any, tmp_path: Any) -> dict[str, Any]:
        cli_module = importlib.import_module(f"{L.__name__}.pytorch.cli")
        Regressor, Numbers = classes(L)
        stderr = io.StringIO()
        with contextlib.redirect_stderr(stderr), pytest.raises(SystemExit) as exit_info:
            cli_module.LightningCLI(Regressor, Numbers, args=["fit", "--trainer.max_epochs", "three"])
        return {"code": exit_info.value.code, "stderr": stderr.getvalue().splitlines()}

    a, b = run_both(program, tmp_path=tmp_path)
    assert a["code"] == b["code"] == 2
    # On purpose: Lightning shows jsonargparse's usage block and nested Union report (#19714); ember one line.
    assert any(line.startswith("usage:") for line in a["stderr"]) and len(a["stderr"]) > 40
    assert "  Given value: three" in a["stderr"]
    assert len(b["stderr"]) == 1
    assert b["stderr"][0].endswith("fit: error: --trainer.max_epochs got 'three'; allowed: an int or null.")
