"""Callbacks shipped with ember. Submodules load on first use to keep ``import ember`` fast."""
from __future__ import annotations

from ..lazy_exports import lazy_exports
from .callback import Callback, Checkpoint

_LAZY = {
    "TQDMProgressBar": ".progress",
    "ProgressBar": ".progress",
    "RichProgressBar": ".progress",
    "ModelSummary": ".model_summary",
    "ModelCheckpoint": ".checkpoint",
    "EarlyStopping": ".early_stopping",
    "LearningRateMonitor": ".lr_monitor",
    "Timer": ".timer",
    "LearningRateFinder": ".lr_finder",
    "BasePredictionWriter": ".prediction_writer",
    "LambdaCallback": ".lambda_function",
    "GradientAccumulationScheduler": ".gradient_accumulation",
    "OnExceptionCheckpoint": ".on_exception",
    "BatchSizeFinder": ".batch_size_finder",
    "WeightAveraging": ".weight_averaging",
    "EMAWeightAveraging": ".weight_averaging",
    "StochasticWeightAveraging": ".swa",
    "BaseFinetuning": ".finetuning",
    "BackboneFinetuning": ".finetuning",
    "ModelPruning": ".pruning",
    "DeviceStatsMonitor": ".device_stats_monitor",
    "ThroughputMonitor": ".throughput_monitor",
    "RichModelSummary": ".rich_model_summary",
    "SpikeDetection": ".spike",
    "TrainingSpikeException": ".spike",
}

__all__ = ["Callback", "Checkpoint", *_LAZY]

__getattr__ = lazy_exports(__name__, _LAZY)
