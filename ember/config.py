"""``TrainerConfig``: every Trainer setting, checked once and frozen.

``TrainerConfig.from_arguments`` takes the Trainer's arguments (Lightning's
names), refuses bad values with a message that names the argument, the value
and what is allowed, and fills in the defaults and the overrides of
``fast_dev_run``, ``barebones`` and ``overfit_batches``. What it returns is
what the run uses: the loop and the data layer read settings from here, never
from the raw arguments.

The objects among the arguments (accelerator, strategy, precision, loggers,
callbacks) are resolved by the Trainer, which owns them; this module only
decides which of them the settings switch off.
"""
from __future__ import annotations

import dataclasses
import os
from datetime import timedelta
from typing import Any

# Flags ember refuses rather than ignores, with the value that means "off".
NOT_IMPLEMENTED = (("model_registry", None), ("sync_batchnorm", False))

_LIMIT_HELP = "an int >= 0 (batches) or a float in [0.0, 1.0] (fraction)"


def _check_int(name: str, value: Any, minimum: int, allow_none: bool = True, extra: str = "") -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        allowed = f"an int >= {minimum}" + (" or None" if allow_none else "") + extra
        raise ValueError(f"Trainer({name}={value!r}) is not valid; allowed: {allowed}.")


def _check_limit(name: str, value: Any) -> None:
    """``limit_*_batches`` and ``overfit_batches``: an int count or a float fraction in [0, 1]."""
    if value is None:
        return
    bad_type = isinstance(value, bool) or not isinstance(value, (int, float))
    if bad_type or isinstance(value, int) and value < 0 or isinstance(value, float) and not 0.0 <= value <= 1.0:
        raise ValueError(f"Trainer({name}={value!r}) is not valid; allowed: {_LIMIT_HELP}.")


def _check_val_check_interval(value: Any) -> None:
    if isinstance(value, (str, dict, timedelta)):
        parse_duration(value, "val_check_interval")  # a time between validations; refused here if malformed
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
            isinstance(value, float) and not 0.0 < value <= 1.0) or (isinstance(value, int) and value < 1):
        raise ValueError(f"Trainer(val_check_interval={value!r}) is not valid; allowed: a float in (0.0, 1.0] "
                         "(fraction of an epoch), an int >= 1 (batches), or a time: 'DD:HH:MM:SS', a timedelta or "
                         "a dict of timedelta arguments.")


def parse_max_time(value: Any) -> float | None:
    """``max_time`` in seconds: ``"DD:HH:MM:SS"``, a ``timedelta`` or a dict of timedelta arguments."""
    return None if value is None else parse_duration(value, "max_time")


def parse_duration(value: Any, name: str) -> float:
    """A duration setting (``max_time``, a time-based ``val_check_interval``) in seconds."""
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, dict):
        try:
            return timedelta(**value).total_seconds()
        except TypeError as err:
            raise ValueError(f"Trainer({name}={value!r}) is not valid: {err}; allowed keys: days, seconds, "
                             "microseconds, milliseconds, minutes, hours, weeks.") from None
    if isinstance(value, str):
        parts = value.split(":")
        if len(parts) == 4 and all(p.isdigit() for p in parts):
            d, h, m, s = (int(p) for p in parts)
            return timedelta(days=d, hours=h, minutes=m, seconds=s).total_seconds()
    raise ValueError(f"Trainer({name}={value!r}) is not valid; allowed: 'DD:HH:MM:SS', a timedelta or a dict of "
                     "timedelta arguments.")


def _check_barebones(**given: Any) -> None:
    """``barebones=True`` switches off what may cost speed; asking for one of those too is an error (Lightning)."""
    off = {"enable_checkpointing": (None, False), "logger": (None, False), "enable_progress_bar": (None, False),
           "log_every_n_steps": (None, 0), "enable_model_summary": (None, False), "num_sanity_val_steps": (None, 0),
           "fast_dev_run": (0, False), "detect_anomaly": (False,), "profiler": (None,)}
    for name, value in given.items():
        if not any(value is v or value == v and type(value) is type(v) for v in off[name]):
            raise ValueError(f"Trainer(barebones=True, {name}={value!r}) is not valid: barebones mode switches "
                             f"{name} off because it can cost speed; drop one of the two.")


@dataclasses.dataclass(frozen=True)
class TrainerConfig:
    """The settings of one Trainer, after defaults and overrides (Lightning's names and meanings).

    Frozen: ``trainer.max_epochs = 3`` builds a new config with ``dataclasses.replace``, which checks
    the new value again (``__post_init__``).
    """

    max_epochs: int = 1000
    min_epochs: int | None = None
    max_steps: int = -1
    min_steps: int | None = None
    max_time: float | None = None  # seconds; enforced by a Timer callback, as in Lightning
    limit_train_batches: int | float = 1.0
    limit_val_batches: int | float = 1.0
    limit_test_batches: int | float = 1.0
    limit_predict_batches: int | float = 1.0
    overfit_batches: int | float = 0.0
    val_check_interval: Any = 1.0  # batches (int), a fraction of the epoch (float), or a time (str/dict/timedelta)
    check_val_every_n_epoch: int | None = 1
    num_sanity_val_steps: int = 2
    log_every_n_steps: int = 50
    accumulate_grad_batches: int = 1
    gradient_clip_val: int | float | None = None
    gradient_clip_algorithm: str | None = None  # None when not given: clip_gradients falls back to "norm"
    deterministic: bool | str | None = None
    benchmark: bool | None = None
    inference_mode: bool = True
    use_distributed_sampler: bool = True
    detect_anomaly: bool = False
    barebones: bool = False
    reload_dataloaders_every_n_epochs: int = 0
    default_root_dir: str = ""
    enable_autolog_hparams: bool = True
    fast_dev_run: int = 0
    enable_checkpointing: bool = True
    enable_progress_bar: bool = True
    enable_model_summary: bool = True
    use_logger: bool = True  # False: fast_dev_run or barebones switch every logger off
    # A non-finite loss stops training before the optimizer step that would spread it into the weights.
    check_finite_loss: bool = True
    # ember: on torch.OutOfMemoryError split the batch into microbatches (ember.microbatch).
    microbatch_on_oom: bool = False

    def __post_init__(self) -> None:
        _check_int("max_epochs", self.max_epochs, -1, extra=" (-1 means no limit)")
        _check_int("min_epochs", self.min_epochs, 0)
        _check_int("max_steps", self.max_steps, -1, allow_none=False, extra=" (-1 means no limit)")
        _check_int("min_steps", self.min_steps, 0)
        for name in ("limit_train_batches", "limit_val_batches", "limit_test_batches", "limit_predict_batches",
                     "overfit_batches"):
            _check_limit(name, getattr(self, name))
        _check_val_check_interval(self.val_check_interval)
        _check_int("check_val_every_n_epoch", self.check_val_every_n_epoch, 1)
        _check_int("num_sanity_val_steps", self.num_sanity_val_steps, -1, extra=" (-1 runs the whole val set)")
        _check_int("log_every_n_steps", self.log_every_n_steps, 0)
        _check_int("accumulate_grad_batches", self.accumulate_grad_batches, 1, allow_none=False)
        _check_int("reload_dataloaders_every_n_epochs", self.reload_dataloaders_every_n_epochs, 0, allow_none=False)
        clip = self.gradient_clip_val
        if clip is not None and (isinstance(clip, bool) or not isinstance(clip, (int, float)) or clip < 0):
            raise ValueError(f"Trainer(gradient_clip_val={clip!r}) is not valid; allowed: a number >= 0 or None.")
        if self.gradient_clip_algorithm not in (None, "norm", "value"):
            raise ValueError(f"Trainer(gradient_clip_algorithm={self.gradient_clip_algorithm!r}) is not valid; "
                             "allowed: 'norm', 'value'.")
        if self.deterministic not in (None, True, False, "warn"):
            raise ValueError(f"Trainer(deterministic={self.deterministic!r}) is not valid; allowed: None, True, "
                             "False, 'warn'.")
        _check_int("fast_dev_run", self.fast_dev_run, 0, allow_none=False, extra=" or a bool")
        if not isinstance(self.microbatch_on_oom, bool):
            raise ValueError(f"Trainer(microbatch_on_oom={self.microbatch_on_oom!r}) is not valid; allowed: True, "
                             "False.")

    @classmethod
    def from_arguments(cls, *, num_nodes: int = 1, max_epochs: int | None = None, max_time: Any = None,
                       fast_dev_run: int | bool = False, val_check_interval: Any = None,
                       num_sanity_val_steps: int | None = None, log_every_n_steps: int | None = None,
                       enable_checkpointing: bool | None = None, enable_progress_bar: bool | None = None,
                       enable_model_summary: bool | None = None, gradient_clip_algorithm: Any = None,
                       default_root_dir: Any = None, logger: Any = None, profiler: Any = None,
                       **settings: Any) -> "TrainerConfig":
        """Check the Trainer's arguments and resolve their defaults; ``settings`` are taken as they are.

        ``logger`` and ``profiler`` are only looked at (``barebones`` refuses them); the Trainer builds them.
        """
        for flag, off in NOT_IMPLEMENTED:
            if settings.pop(flag, off) != off:
                raise NotImplementedError(f"Trainer({flag}=...) is not implemented in ember; leave it at {off!r}.")
        _check_int("num_nodes", num_nodes, 1, allow_none=False)
        _check_int("max_epochs", max_epochs, -1, extra=" (-1 means no limit)")
        if val_check_interval is not None:
            _check_val_check_interval(val_check_interval)
        if isinstance(gradient_clip_algorithm, str):
            gradient_clip_algorithm = gradient_clip_algorithm.lower()  # Lightning accepts any case
        if isinstance(fast_dev_run, bool):
            fast_dev_run = 1 if fast_dev_run else 0
        _check_int("fast_dev_run", fast_dev_run, 0, allow_none=False, extra=" or a bool")
        use_logger = True
        if fast_dev_run:  # a few batches of everything, nothing written
            max_epochs, num_sanity_val_steps, val_check_interval = 1, 0, 1.0
            settings["max_steps"] = fast_dev_run
            for stage in ("train", "val", "test", "predict"):
                settings[f"limit_{stage}_batches"] = fast_dev_run
            use_logger, enable_checkpointing = False, False
        if settings.get("barebones"):
            _check_barebones(enable_checkpointing=enable_checkpointing, logger=logger,
                             enable_progress_bar=enable_progress_bar, log_every_n_steps=log_every_n_steps,
                             enable_model_summary=enable_model_summary, num_sanity_val_steps=num_sanity_val_steps,
                             fast_dev_run=fast_dev_run, detect_anomaly=settings.get("detect_anomaly", False),
                             profiler=profiler)
            use_logger, enable_checkpointing, enable_progress_bar, enable_model_summary = False, False, False, False
            log_every_n_steps, num_sanity_val_steps = 0, 0
        if max_epochs is None:
            max_epochs = 1000 if settings.get("max_steps", -1) == -1 and max_time is None else -1
        if settings.get("overfit_batches"):
            _check_limit("overfit_batches", settings["overfit_batches"])
            settings["limit_train_batches"] = settings["limit_val_batches"] = settings["overfit_batches"]
        for stage in ("train", "val", "test", "predict"):  # Lightning reads an unset limit as 1.0 (all of it)
            if settings.get(f"limit_{stage}_batches") is None:
                settings[f"limit_{stage}_batches"] = 1.0
        root = os.fspath(default_root_dir) if default_root_dir is not None else os.getcwd()
        return cls(
            max_epochs=max_epochs, max_time=parse_max_time(max_time), fast_dev_run=fast_dev_run,
            val_check_interval=1.0 if val_check_interval is None else val_check_interval,
            num_sanity_val_steps=2 if num_sanity_val_steps is None else num_sanity_val_steps,
            log_every_n_steps=50 if log_every_n_steps is None else log_every_n_steps,
            enable_checkpointing=enable_checkpointing is not False,
            enable_progress_bar=enable_progress_bar is not False,
            enable_model_summary=enable_model_summary is not False, use_logger=use_logger,
            gradient_clip_algorithm=gradient_clip_algorithm, default_root_dir=root, **settings)


# The settings a Trainer exposes as its own attributes (trainer.max_epochs, ...), as Lightning's Trainer does.
TRAINER_ATTRIBUTES = tuple(f.name for f in dataclasses.fields(TrainerConfig)
                           if f.name not in ("enable_checkpointing", "enable_progress_bar", "enable_model_summary",
                                             "use_logger"))
