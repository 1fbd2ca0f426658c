"""Experiment loggers. Optional backends (tensorboard) are imported only when used."""

from ember.loggers.base import Logger
from ember.loggers.csv_logs import CSVLogger
from ember.loggers.tensorboard import TensorBoardLogger

__all__ = ["Logger", "CSVLogger", "TensorBoardLogger"]
