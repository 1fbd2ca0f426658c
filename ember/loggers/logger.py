"""Same module path as ``lightning.pytorch.loggers.logger``, which custom loggers import from."""

from ember.loggers.base import Logger, rank_zero_experiment

__all__ = ["Logger", "rank_zero_experiment"]
