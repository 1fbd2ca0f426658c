"""The argument parser behind ``ember.cli.LightningCLI``: jsonargparse with Lightning's helpers.

This module imports jsonargparse at the top; ``ember.cli`` imports it only when a CLI is built, so
``import ember`` and ``import ember.cli`` work without the optional package.
"""
from __future__ import annotations

import sys
from typing import Any, Callable

import jsonargparse
import torch

from .callbacks.callback import Callback
from .cli import AUTOMATIC, LR_SCHEDULER_TYPES
from .cli_errors import explain
from .datamodule import LightningDataModule
from .module import LightningModule
from .trainer import Trainer



def load_stock_classes() -> None:
    """Import every stock callback and logger, so ``--trainer.callbacks+=EarlyStopping`` finds it by name.

    jsonargparse resolves a short class name among the subclasses that exist; ember's callbacks load lazily
    (``import ember`` stays fast), so the CLI loads them when it builds its parser.
    """
    from . import callbacks, loggers

    for package in (callbacks, loggers):
        for name in package.__all__:
            getattr(package, name)


_LIGHTNING_CLASSES = (Trainer, LightningModule, LightningDataModule, Callback)


class LightningArgumentParser(jsonargparse.ArgumentParser):
    """jsonargparse's parser plus the three helpers Lightning programs call in ``add_arguments_to_parser``.

    ``optimizer_args``/``lr_scheduler_args`` map a config key to ``(class or tuple of classes, link_to)``;
    ``callback_keys`` are the keys whose instantiated callbacks join the Trainer's.
    """

    def __init__(self, *args: Any, description: str = "ember command line tool (Lightning's LightningCLI)",
                 env_prefix: str = "PL", default_env: bool = False, **kwargs: Any) -> None:
        # Abbreviated flags (--trainer.max_epoch for --trainer.max_epochs) are refused: jsonargparse 5 drops
        # them, and a typo that silently lands on another flag is worse than an error that names both.
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, description=description, env_prefix=env_prefix, default_env=default_env, **kwargs)
        load_stock_classes()
        self.callback_keys: list[str] = []
        self.optimizer_args: dict[str, tuple[Any, str]] = {}
        self.lr_scheduler_args: dict[str, tuple[Any, str]] = {}
        self.subcommand_parsers: dict[str, LightningArgumentParser] = {}  # LightningCLI fills it (fit, ...)

    def add_lightning_class_args(self, lightning_class: Any, nested_key: str, subclass_mode: bool = False,
                                 required: bool = True) -> list[str]:
        """Arguments for a Trainer, LightningModule, LightningDataModule or Callback class under ``nested_key``.

        ``subclass_mode=True`` takes any subclass, chosen by ``class_path`` in the config or by name on the
        command line (``--model=MyModel``).
        """
        if callable(lightning_class) and not isinstance(lightning_class, type):
            lightning_class = jsonargparse.class_from_function(lightning_class)
        if not (isinstance(lightning_class, type) and issubclass(lightning_class, _LIGHTNING_CLASSES)):
            raise ValueError(f"add_lightning_class_args(lightning_class={lightning_class!r}): expected a subclass of "
                             "Trainer, LightningModule, LightningDataModule or Callback, or a function returning one.")
        if issubclass(lightning_class, Callback):
            self.callback_keys.append(nested_key)
        if subclass_mode:
            return self.add_subclass_arguments(lightning_class, nested_key, fail_untyped=False, required=required)
        # The Trainer is built by LightningCLI itself (it adds the SaveConfigCallback and callback_keys).
        return self.add_class_arguments(lightning_class, nested_key, fail_untyped=False,
                                        instantiate=not issubclass(lightning_class, Trainer), sub_configs=True)

    def add_optimizer_args(self, optimizer_class: Any = (torch.optim.Optimizer,), nested_key: str = "optimizer",
                           link_to: str = AUTOMATIC) -> None:
        """``--optimizer``: one optimizer class (its arguments as flags) or a tuple of bases (any subclass)."""
        self._add_injected_args(optimizer_class, torch.optim.Optimizer, nested_key, link_to, "params",
                                self.optimizer_args)

    def add_lr_scheduler_args(self, lr_scheduler_class: Any = None, nested_key: str = "lr_scheduler",
                              link_to: str = AUTOMATIC) -> None:
        """``--lr_scheduler``: like ``add_optimizer_args``; the default takes any torch scheduler."""
        lr_scheduler_class = LR_SCHEDULER_TYPES if lr_scheduler_class is None else lr_scheduler_class
        self._add_injected_args(lr_scheduler_class, LR_SCHEDULER_TYPES, nested_key, link_to, "optimizer",
                                self.lr_scheduler_args)

    def _add_injected_args(self, classes: Any, base: Any, nested_key: str, link_to: str, first_argument: str,
                           registry: dict[str, tuple[Any, str]]) -> None:
        several = isinstance(classes, tuple)
        for cls in classes if several else (classes,):
            if not (isinstance(cls, type) and issubclass(cls, base)):
                raise ValueError(f"--{nested_key}: {cls!r} is not a subclass of {base!r}.")
        # The first argument (the parameters, the optimizer) is filled in when the model exists, so it is
        # never a flag; the classes stay uninstantiated in the config.
        kwargs = {"instantiate": False, "fail_untyped": False, "skip": {first_argument}}
        if several:
            self.add_subclass_arguments(classes, nested_key, **kwargs)
        else:
            self.add_class_arguments(classes, nested_key, sub_configs=True, **kwargs)
        registry[nested_key] = (classes, link_to)

    def error(self, message: str, ex: Exception | None = None) -> Any:
        """jsonargparse's error, reworded to name the flag, the value it got and what is allowed.

        It prints that one message (no fifty-line usage block) and exits with 2, as argparse does; a parser
        made with ``exit_on_error=False`` raises jsonargparse's error unchanged.
        """
        if not self.exit_on_error:
            # jsonargparse's inner parsers (one per chosen class) raise; their text is nested into the outer
            # message, which is reworded once, where it is shown.
            return super().error(message, ex)
        text = explain(self, message)
        sys.stderr.write(f"{self.prog}: error: {text}\n")
        sys.exit(2)


def instantiate(parser: jsonargparse.ArgumentParser, config: Any) -> Any:
    """``parser.instantiate`` (jsonargparse >= 4.49) or its older name."""
    method: Callable[[Any], Any] = getattr(parser, "instantiate", None) or parser.instantiate_classes
    return method(config)
