"""Experiment loggers. Optional backends (tensorboard, mlflow, wandb) are imported only when a logger is built."""

from ember.loggers.base import Logger
from ember.loggers.csv_logs import CSVLogger
from ember.loggers.mlflow import MLFlowLogger
from ember.loggers.tensorboard import TensorBoardLogger
from ember.loggers.wandb import WandbLogger

__all__ = ["Logger", "CSVLogger", "MLFlowLogger", "TensorBoardLogger", "WandbLogger"]
