"""LightningCLI: the model, the datamodule and the Trainer built from the command line and YAML files.

    python train.py fit --config config.yaml --trainer.max_epochs 3 --optimizer Adam --optimizer.lr 0.01

The parsing is jsonargparse's (the optional extra ``ember[cli]``): the flags come from the type hints of
the classes' ``__init__``. This module imports jsonargparse only when a ``LightningCLI`` is built
(``ember.cli_parser``), so importing it costs nothing without the extra.
"""
from __future__ import annotations

import os
import sys
from functools import partial, update_wrapper
from types import MethodType
from typing import Any, Callable, Iterable, Union

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from .callbacks.callback import Callback
from .datamodule import LightningDataModule
from .hooks import is_overridden
from .module import LightningModule
from .trainer import Trainer
from .utilities.rank_zero import rank_zero_warn
from .utilities.seed import seed_everything

# link_to="AUTOMATIC": LightningCLI injects the optimizer/scheduler into the model's configure_optimizers.
AUTOMATIC = "AUTOMATIC"
INSTALL_HINT = 'LightningCLI needs jsonargparse, which ember does not install by default: pip install "ember[cli]"'


class ReduceLROnPlateau(torch.optim.lr_scheduler.ReduceLROnPlateau):
    """torch's ReduceLROnPlateau plus the metric it watches, so ``--lr_scheduler ReduceLROnPlateau
    --lr_scheduler.monitor val_loss`` is a complete scheduler config."""

    def __init__(self, optimizer: Optimizer, monitor: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(optimizer, *args, **kwargs)
        self.monitor = monitor


# The types a user's __init__ hints with, to receive an optimizer/scheduler factory from the config.
OptimizerCallable = Callable[[Iterable], Optimizer]
LRSchedulerTypeUnion = Union[LRScheduler, torch.optim.lr_scheduler.ReduceLROnPlateau]
LRSchedulerCallable = Callable[[Optimizer], LRSchedulerTypeUnion]
LR_SCHEDULER_TYPES = (LRScheduler, ReduceLROnPlateau)
LRSchedulerTypeTuple = LR_SCHEDULER_TYPES
ArgsType = Union[list, dict, None]  # a list of strings as on the command line, or a dict like a config file

# Each subcommand is the Trainer method of that name; these of its arguments come from the CLI, not flags.
SUBCOMMANDS = {
    "fit": {"model", "train_dataloaders", "val_dataloaders", "datamodule"},
    "validate": {"model", "dataloaders", "datamodule"},
    "test": {"model", "dataloaders", "datamodule"},
    "predict": {"model", "dataloaders", "datamodule"},
}


def _parser_module() -> Any:
    try:
        from . import cli_parser
    except ModuleNotFoundError as err:
        if err.name is not None and err.name.split(".")[0] in ("jsonargparse", "docstring_parser", "typeshed_client"):
            raise ModuleNotFoundError(f"{INSTALL_HINT} (missing: {err.name})") from err
        raise
    return cli_parser


def __getattr__(name: str) -> Any:
    # LightningArgumentParser subclasses jsonargparse's parser, so it exists only with the extra installed.
    if name == "LightningArgumentParser":
        return _parser_module().LightningArgumentParser
    raise AttributeError(f"module 'ember.cli' has no attribute {name!r}")


class SaveConfigCallback(Callback):
    """Writes the parsed config to ``<trainer.log_dir>/config.yaml`` when the run starts (global rank 0).

    It refuses to overwrite a config from an earlier run unless ``overwrite=True``. Override
    ``save_config`` to send the config somewhere else too (an experiment tracker).
    """

    def __init__(self, parser: Any, config: Any, config_filename: str = "config.yaml", overwrite: bool = False,
                 multifile: bool = False, save_to_log_dir: bool = True) -> None:
        self.parser = parser
        self.config = config
        self.config_filename = config_filename
        self.overwrite = overwrite
        self.multifile = multifile
        self.save_to_log_dir = save_to_log_dir
        self.already_saved = False
        if not save_to_log_dir and not is_overridden(self, "save_config", SaveConfigCallback):
            raise ValueError("SaveConfigCallback(save_to_log_dir=False) saves nothing unless a subclass overrides "
                             "save_config(trainer, pl_module, stage); set save_to_log_dir=True or override it.")

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if self.already_saved:
            return
        if self.save_to_log_dir:
            self._write(trainer)
        if trainer.is_global_zero:
            self.save_config(trainer, pl_module, stage)
            self.already_saved = True
        self.already_saved = trainer.strategy.broadcast(self.already_saved)

    def _write(self, trainer: Any) -> None:
        log_dir = trainer.log_dir
        if log_dir is None:
            raise ValueError("SaveConfigCallback: the Trainer has no log_dir to save config.yaml in (no logger and "
                             "no default_root_dir); give one, or LightningCLI(save_config_callback=None).")
        path = os.path.join(log_dir, self.config_filename)
        # Every rank must agree before any raises, or the others would wait forever in the next collective.
        exists = trainer.strategy.broadcast(trainer.is_global_zero and os.path.isfile(path))
        if exists and not self.overwrite:
            raise RuntimeError(
                f"SaveConfigCallback: {path} exists already; ember will not overwrite the config of an earlier "
                "run. Delete it, choose another log dir, or pass LightningCLI(save_config_kwargs={'overwrite': "
                "True}) to overwrite it, or LightningCLI(save_config_callback=None) to save no config.")
        if trainer.is_global_zero:
            os.makedirs(log_dir, exist_ok=True)
            self.parser.save(self.config, path, skip_none=False, overwrite=self.overwrite, multifile=self.multifile)

    def save_config(self, trainer: Any, pl_module: Any, stage: str) -> None:
        """Called once on global rank 0 after the file is written; a hook for subclasses."""


class LightningCLI:
    """Builds ``self.model``, ``self.datamodule`` and ``self.trainer`` from arguments and runs a subcommand.

    Lightning's arguments, defaults and overridable methods; see the README section "Command line:
    LightningCLI". With ``run=False`` there are no subcommands: the objects are built and nothing runs.
    """

    def __init__(
        self, model_class: Any = None, datamodule_class: Any = None,
        save_config_callback: type[SaveConfigCallback] | None = SaveConfigCallback,
        save_config_kwargs: dict[str, Any] | None = None, trainer_class: Any = Trainer,
        trainer_defaults: dict[str, Any] | None = None, seed_everything_default: bool | int = True,
        parser_kwargs: dict[str, Any] | None = None, parser_class: Any = None, subclass_mode_model: bool = False,
        subclass_mode_data: bool = False, args: ArgsType = None, run: bool = True,
        auto_configure_optimizers: bool = True, load_from_checkpoint_support: bool = True,
    ) -> None:
        parsing = _parser_module()  # the install hint comes before anything else happens
        _check_arguments(seed_everything_default, args, save_config_callback)
        self.save_config_callback = save_config_callback
        self.save_config_kwargs = save_config_kwargs or {}
        self.trainer_class = trainer_class
        self.trainer_defaults = trainer_defaults or {}
        self.seed_everything_default = seed_everything_default
        self.parser_kwargs = parser_kwargs or {}
        self.parser_class = parser_class or parsing.LightningArgumentParser
        self.auto_configure_optimizers = auto_configure_optimizers
        self.load_from_checkpoint_support = load_from_checkpoint_support
        # model_class/datamodule_class stay as given (None too); the parser takes the *_base class, and with
        # no class given any subclass of it, named in the config (class_path) or on the command line.
        self.model_class, self.datamodule_class = model_class, datamodule_class
        self.model_base = model_class or LightningModule
        self.datamodule_base = datamodule_class or LightningDataModule
        self.subclass_mode_model = model_class is None or subclass_mode_model
        self.subclass_mode_data = datamodule_class is None or subclass_mode_data

        main_kwargs, subparser_kwargs = self._split_parser_kwargs(self.parser_kwargs)
        self.setup_parser(run, main_kwargs, subparser_kwargs)
        if load_from_checkpoint_support:
            self._add_instantiators()
        self.parse_arguments(self.parser, args)
        if load_from_checkpoint_support:
            self._config_from_checkpoint()
        self.subcommand = self.config["subcommand"] if run else None
        self._set_seed()
        self.before_instantiate_classes()
        self.instantiate_classes()
        self.after_instantiate_classes()
        if self.subcommand is not None:
            self._run_subcommand(self.subcommand)

    # ------------------------------------------------------------------ the parser
    def _split_parser_kwargs(self, kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        # parser_kwargs={"fit": {...}} configures one subcommand's parser; other keys go to the main parser.
        names = self.subcommands().keys()
        main = {k: v for k, v in kwargs.items() if k not in names}
        return main, {k: v for k, v in kwargs.items() if k in names}

    def init_parser(self, **kwargs: Any) -> Any:
        """A parser with ``-c/--config`` (a YAML/JSON file; jsonargparse adds ``--print_config`` with it)."""
        from jsonargparse import ActionConfigFile

        parser = self.parser_class(**kwargs)
        parser.add_argument("-c", "--config", action=ActionConfigFile,
                            help="Path to a configuration file in YAML or JSON format.")
        return parser

    def setup_parser(self, add_subcommands: bool, main_kwargs: dict[str, Any],
                     subparser_kwargs: dict[str, Any]) -> None:
        self.parser = self.init_parser(**main_kwargs)
        self._subcommand_arguments: dict[str, set[str]] = {}
        if add_subcommands:
            self._add_subcommands(self.parser, **subparser_kwargs)
        else:
            self._add_arguments(self.parser)

    def add_default_arguments_to_parser(self, parser: Any) -> None:
        parser.add_argument("--seed_everything", type=Union[bool, int], default=self.seed_everything_default,
                            help="true: a seed is chosen (0 unless PL_GLOBAL_SEED is set), false: no seeding, or "
                                 "an integer seed.")

    def add_core_arguments_to_parser(self, parser: Any) -> None:
        parser.add_lightning_class_args(self.trainer_class, "trainer")
        # Callbacks in trainer_defaults are added to the user's at instantiation, never replaced by them.
        parser.set_defaults({f"trainer.{k}": v for k, v in self.trainer_defaults.items() if k != "callbacks"})
        parser.add_lightning_class_args(self.model_base, "model", subclass_mode=self.subclass_mode_model)
        # Not required without a datamodule class: the model may bring its own *_dataloader methods.
        parser.add_lightning_class_args(self.datamodule_base, "data", subclass_mode=self.subclass_mode_data,
                                        required=self.datamodule_class is not None)

    def add_arguments_to_parser(self, parser: Any) -> None:
        """Override to add arguments, link them (``parser.link_arguments``) or set defaults."""

    def _add_arguments(self, parser: Any) -> None:
        self.add_default_arguments_to_parser(parser)
        self.add_core_arguments_to_parser(parser)
        self.add_arguments_to_parser(parser)
        if self.auto_configure_optimizers:
            if not parser.optimizer_args:
                parser.add_optimizer_args()
            if not parser.lr_scheduler_args:
                parser.add_lr_scheduler_args()
        self.link_optimizers_and_lr_schedulers(parser)

    def _add_subcommands(self, parser: Any, **kwargs: Any) -> None:
        subcommands = parser.add_subcommands()
        for name, skip in self.subcommands().items():
            method = getattr(self.trainer_class, name)
            subparser = self.init_parser(**kwargs.get(name, {}))
            self._add_arguments(subparser)
            added = subparser.add_method_arguments(self.trainer_class, name, skip=skip)
            self._subcommand_arguments[name] = set(added)
            parser.subcommand_parsers[name] = subparser
            summary = (method.__doc__ or "").strip().split("\n")[0] or f"Runs Trainer.{name}."
            subcommands.add_subcommand(name, subparser, help=summary)

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        """The subcommands and, for each, the Trainer method arguments that are not flags."""
        return {name: set(skip) for name, skip in SUBCOMMANDS.items()}

    @staticmethod
    def link_optimizers_and_lr_schedulers(parser: Any) -> None:
        """An optimizer/scheduler registered with ``link_to="model.x"`` becomes that init argument."""
        for key, (classes, link_to) in {**parser.optimizer_args, **parser.lr_scheduler_args}.items():
            if link_to != AUTOMATIC:
                parser.link_arguments(key, link_to, compute_fn=partial(_with_class_path, classes))

    def parse_arguments(self, parser: Any, args: ArgsType) -> None:
        if args is not None and len(sys.argv) > 1:
            rank_zero_warn("LightningCLI(args=...) is given and the command line has arguments too "
                           f"({sys.argv[1:]}); ember parses args and ignores the command line.")
        from jsonargparse import Namespace

        as_config = isinstance(args, (dict, Namespace))
        self.config = parser.parse_object(args) if as_config else parser.parse_args(args)

    def _config_from_checkpoint(self) -> None:
        """``validate/test/predict/fit --ckpt_path x.ckpt``: the model's arguments are those it was trained with.

        A checkpoint of a CLI-built model holds its config as hparams; they replace the model section, so
        ``python train.py test --ckpt_path x.ckpt`` builds the trained architecture without its config file.
        """
        subcommand = self.config.get("subcommand")
        path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if not path or not os.path.isfile(path):
            return
        from .checkpoint import load_file

        hparams = dict(load_file(path, map_location="cpu", weights_only=True).get("hyper_parameters") or {})
        hparams.pop("_instantiator", None)
        if not hparams:
            return
        if "_class_path" in hparams:
            hparams = {"class_path": hparams.pop("_class_path"), "dict_kwargs": hparams}
        self.config = self.parser.parse_object({subcommand: {"model": hparams}}, self.config)

    def _parser(self, subcommand: str | None) -> Any:
        return self.parser if subcommand is None else self.parser.subcommand_parsers[subcommand]

    def _get(self, config: Any, key: str, default: Any = None) -> Any:
        section = config.get(str(self.subcommand), config) if self.subcommand is not None else config
        return section.get(key, default)

    # ------------------------------------------------------------------ the objects
    def _set_seed(self) -> None:
        seed = self._get(self.config, "seed_everything")
        if seed is False:
            return
        seed = seed_everything(None if seed is True else seed, workers=True)
        # The saved config records the seed used, so the run can be repeated from it.
        (self.config[self.subcommand] if self.subcommand else self.config)["seed_everything"] = seed

    def _add_instantiators(self) -> None:
        # The model and datamodule are built through _RecordingInstantiator, so their hparams are the config.
        for key, cls, subclasses in (("model", self.model_base, self.subclass_mode_model),
                                     ("data", self.datamodule_base, self.subclass_mode_data)):
            base = LightningModule if key == "model" else LightningDataModule
            self.parser.add_instantiator(_RecordingInstantiator(self, key), _module_base(cls, base),
                                         subclasses=subclasses)

    def config_section(self, key: str) -> Any:
        """``key``'s part of the parsed config as plain values (what config.yaml holds), for the subcommand run."""
        if getattr(self, "_config_dump", None) is None:
            import yaml

            dumped = self.parser.dump(self.config, skip_link_targets=False, skip_none=False, format="yaml")
            self._config_dump = yaml.safe_load(dumped)
        section = self._config_dump.get(self.subcommand, {}) if self.subcommand else self._config_dump
        return section.get(key) or {}

    def before_instantiate_classes(self) -> None:
        """Called after parsing, before the model, datamodule and Trainer are built (``self.config`` is set)."""

    def instantiate_classes(self) -> None:
        from .cli_parser import instantiate

        self.config_init = instantiate(self.parser, self.config)
        self.datamodule = self._get(self.config_init, "data")
        self.model = self._get(self.config_init, "model")
        self._inject_configure_optimizers()
        self.trainer = self.instantiate_trainer()

    def after_instantiate_classes(self) -> None:
        """Called after ``self.model``, ``self.datamodule`` and ``self.trainer`` exist."""

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        """The Trainer from the ``trainer`` config plus ``kwargs``; the callbacks gain ``callback_keys``'
        callbacks, those of ``trainer_defaults`` and the SaveConfigCallback."""
        parser = self._parser(self.subcommand)
        settings = {**self._get(self.config_init, "trainer", {}), **kwargs}
        if "callbacks" not in settings:  # a trainer_class without a callbacks argument
            rank_zero_warn(f"{self.trainer_class!r} takes no `callbacks`; LightningCLI adds no SaveConfigCallback "
                           "or trainer_defaults callbacks to it.")
            return self.trainer_class(**settings)
        callbacks = settings.get("callbacks")
        callbacks = [] if callbacks is None else list(callbacks) if isinstance(callbacks, list) else [callbacks]
        callbacks += [self._get(self.config_init, key) for key in parser.callback_keys]
        default = self.trainer_defaults.get("callbacks", [])
        callbacks += default if isinstance(default, list) else [default]
        if self.save_config_callback is not None and not settings.get("fast_dev_run", False):
            config = self.config.get(str(self.subcommand), self.config) if self.subcommand else self.config
            callbacks.append(self.save_config_callback(parser, config, **self.save_config_kwargs))
        settings["callbacks"] = callbacks
        return _build_trainer(self.trainer_class, settings)

    def _inject_configure_optimizers(self) -> None:
        """``--optimizer``/``--lr_scheduler`` given: the model's configure_optimizers returns them instead."""
        if not self.auto_configure_optimizers:
            return
        parser = self._parser(self.subcommand)
        optimizer_keys = [k for k, (_, link) in parser.optimizer_args.items() if link == AUTOMATIC]
        scheduler_keys = [k for k, (_, link) in parser.lr_scheduler_args.items() if link == AUTOMATIC]
        if len(optimizer_keys) > 1 or len(scheduler_keys) > 1:
            raise ValueError(f"LightningCLI can inject one optimizer and one scheduler into configure_optimizers; "
                             f"add_arguments_to_parser registered optimizers {optimizer_keys} and schedulers "
                             f"{scheduler_keys} with link_to='AUTOMATIC'. Give the others a link_to=, or override "
                             "LightningCLI.configure_optimizers.")
        optimizer_init = self._injected_config(parser.optimizer_args, optimizer_keys)
        if not optimizer_init:
            return  # no --optimizer given: the model's own configure_optimizers stays
        scheduler_init = self._injected_config(parser.lr_scheduler_args, scheduler_keys)
        if is_overridden(self.model, "configure_optimizers", LightningModule):
            rank_zero_warn(f"`{type(self.model).__name__}.configure_optimizers` will be overridden by "
                           "`LightningCLI.configure_optimizers` (the --optimizer/--lr_scheduler given).")
        optimizer = instantiate_class(self.model.parameters(), optimizer_init)
        scheduler = instantiate_class(optimizer, scheduler_init) if scheduler_init else None
        injected = partial(self.configure_optimizers, optimizer=optimizer, lr_scheduler=scheduler)
        update_wrapper(injected, self.model.configure_optimizers)
        self.model.configure_optimizers = MethodType(injected, self.model)

    def _injected_config(self, registry: dict[str, tuple[Any, str]], keys: list[str]) -> Any:
        if not keys:
            return None
        init = self._get(self.config_init, keys[0])
        classes = registry[keys[0]][0]
        return _with_class_path(classes, init) if init and not isinstance(classes, tuple) else init

    @staticmethod
    def configure_optimizers(lightning_module: Any, optimizer: Optimizer, lr_scheduler: Any = None) -> Any:
        """What the injected configure_optimizers returns (override to change it)."""
        if lr_scheduler is None:
            return optimizer
        if isinstance(lr_scheduler, ReduceLROnPlateau):
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": lr_scheduler,
                                                             "monitor": lr_scheduler.monitor}}
        return [optimizer], [lr_scheduler]

    def _run_subcommand(self, subcommand: str) -> None:
        before = getattr(self, f"before_{subcommand}", None)
        if callable(before):
            before()
        method = getattr(self, subcommand, getattr(self.trainer, subcommand))
        settings = self.config_init[subcommand]
        kwargs = {k: settings[k] for k in self._subcommand_arguments[subcommand] if k in settings}
        kwargs["model"] = self.model
        if self.datamodule is not None:
            kwargs["datamodule"] = self.datamodule
        method(**kwargs)
        after = getattr(self, f"after_{subcommand}", None)
        if callable(after):
            after()


class _RecordingInstantiator:
    """Builds the model or datamodule with ``save_hyperparameters()`` recording its config section.

    A checkpoint of that model then holds the config (a ``_class_path`` in subclass mode) and
    ``"_instantiator": "ember.cli.instantiate_module"``, so ``load_from_checkpoint`` rebuilds arguments
    that are classes (an encoder given as ``class_path``) the way the CLI did.
    """

    def __init__(self, cli: LightningCLI, key: str) -> None:
        self.cli = cli
        self.key = key

    def __call__(self, class_type: type, *args: Any, applied_instantiation_links: dict | None = None,
                 **kwargs: Any) -> Any:
        from .hparams import GIVEN_HPARAMS

        config = dict(self.cli.config_section(self.key))
        if "class_path" in config:  # subclass mode: the same flat hparams as without it, plus the class
            config = {"_class_path": config["class_path"], **(config.get("init_args") or {}),
                      **(config.get("dict_kwargs") or {})}
        for link, value in (applied_instantiation_links or {}).items():
            prefix = f"{self.key}."
            if link.startswith(prefix):
                config[link[len(prefix):].removeprefix("init_args.")] = value
        token = GIVEN_HPARAMS.set({**config, "_instantiator": "ember.cli.instantiate_module"})
        try:
            return class_type(*args, **kwargs)
        finally:
            GIVEN_HPARAMS.reset(token)


def instantiate_module(class_type: type, config: dict[str, Any]) -> Any:
    """Rebuilds a CLI-made module from its saved hparams (``load_from_checkpoint`` calls it)."""
    from jsonargparse import ArgumentParser

    from .cli_parser import instantiate

    parser = ArgumentParser(exit_on_error=False)
    if "_class_path" in config:
        parser.add_subclass_arguments(class_type, "module", fail_untyped=False)
        config = {"class_path": config["_class_path"],
                  "dict_kwargs": {k: v for k, v in config.items() if k != "_class_path"}}
    else:
        parser.add_class_arguments(class_type, "module", fail_untyped=False)
    return instantiate(parser, parser.parse_object({"module": config})).module


def _module_base(cls: Any, default: type) -> type:
    """The class an instantiator is registered for: the class, or what a factory function says it returns."""
    if isinstance(cls, type):
        return cls
    import inspect

    returned = inspect.signature(cls).return_annotation
    return returned if isinstance(returned, type) else default


def _build_trainer(trainer_class: Any, settings: dict[str, Any]) -> Any:
    """The Trainer; a setting it refuses ("Trainer(precision=17) is not known ...") is named as its flag too."""
    try:
        return trainer_class(**settings)
    except (ValueError, TypeError) as err:
        import re

        named = re.match(r"Trainer\((\w+)=", str(err))
        if type(err) not in (ValueError, TypeError) or named is None:
            raise
        raise type(err)(f"--trainer.{named.group(1)}: {err}") from err


def _check_arguments(seed: Any, args: Any, save_config_callback: Any) -> None:
    if not isinstance(seed, (bool, int)):
        raise TypeError(f"LightningCLI(seed_everything_default={seed!r}): expected True, False or an int seed.")
    if args is not None and not isinstance(args, (list, tuple, dict)) and not hasattr(args, "as_dict"):
        raise TypeError(f"LightningCLI(args={args!r}): expected a list of strings (as on the command line), a dict "
                        "(as in a config file) or None (read sys.argv).")
    if save_config_callback is not None and not (isinstance(save_config_callback, type)
                                                 and issubclass(save_config_callback, SaveConfigCallback)):
        raise TypeError(f"LightningCLI(save_config_callback={save_config_callback!r}): expected SaveConfigCallback, "
                        "a subclass of it, or None.")


def _with_class_path(classes: Any, init: Any) -> Any:
    """A config for a single registered class given without ``class_path`` gets it, so ``instantiate_class`` can import it."""
    if isinstance(classes, tuple) or not init:
        return init
    init = _plain(init)
    if "class_path" in init:
        return init
    return {"class_path": f"{classes.__module__}.{classes.__qualname__}", "init_args": init}


def instantiate_class(args: Any, init: dict[str, Any]) -> Any:
    """The object a ``class_path``/``init_args`` config describes, with ``args`` (one value or a tuple) first.

    For optimizers linked into a model (``add_optimizer_args(..., link_to="model.optimizer_init")``): the
    model receives the config and calls ``instantiate_class(self.parameters(), optimizer_init)``.
    """
    import importlib

    module_name, _, class_name = init["class_path"].rpartition(".")
    cls = getattr(importlib.import_module(module_name), class_name)
    positional = args if isinstance(args, tuple) else (args,)
    return cls(*positional, **_plain(init.get("init_args") or {}))


def _plain(config: Any) -> dict[str, Any]:
    """A jsonargparse Namespace (or a dict) as a dict of its top-level keys."""
    return dict(vars(config)) if hasattr(config, "as_dict") else dict(config)
