"""Shipped callbacks: bad input, state, and what needs no Lightning to check."""
from __future__ import annotations

import contextlib
import importlib.util
import io
from datetime import timedelta

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import ember as L
from ember.callbacks import EarlyStopping, LearningRateMonitor, ModelSummary, Timer, TQDMProgressBar

QUIET = dict(logger=False, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)


def _loader(n=8):
    x = torch.randn(n, 2, generator=torch.Generator().manual_seed(0))
    return DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=4)


class Net(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        loss = torch.nn.functional.mse_loss(self.layer(batch[0]), batch[1])
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", torch.nn.functional.mse_loss(self.layer(batch[0]), batch[1]))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_early_stopping_on_a_metric_never_logged_lists_what_is_there():
    with pytest.raises(RuntimeError, match="watches 'val_acc', which is not among the logged metrics: .*val_loss"):
        L.Trainer(max_epochs=2, callbacks=[EarlyStopping("val_acc")], **QUIET).fit(Net(), _loader(), _loader())


def test_early_stopping_not_strict_keeps_training():
    trainer = L.Trainer(max_epochs=2, callbacks=[EarlyStopping("val_acc", strict=False)], **QUIET)
    trainer.fit(Net(), _loader(), _loader())
    assert trainer.current_epoch == 2


@pytest.mark.parametrize("kw,match", [(dict(mode="maximum"), "mode"), (dict(patience=-1), "patience")])
def test_early_stopping_bad_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        EarlyStopping("val_loss", **kw)


def test_early_stopping_state_round_trip():
    es = EarlyStopping("val_loss", patience=2)
    es.wait_count, es.best_score = 1, torch.tensor(0.5)
    other = EarlyStopping("val_loss", patience=2)
    other.load_state_dict(es.state_dict())
    assert (other.wait_count, float(other.best_score)) == (1, 0.5)
    assert es.state_key == "EarlyStopping{'monitor': 'val_loss', 'mode': 'min'}"


def test_timer_durations_and_bad_input():
    assert Timer("00:01:02:03")._duration == 3723
    assert Timer(timedelta(minutes=1))._duration == 60
    assert Timer({"hours": 1})._duration == 3600
    with pytest.raises(ValueError, match="DD:HH:MM:SS"):
        Timer("1h")
    with pytest.raises(ValueError, match="interval"):
        Timer(interval="batch")


def test_max_time_adds_a_timer_unless_one_is_given():
    trainer = L.Trainer(max_time={"minutes": 5}, **QUIET)
    assert [c._duration for c in trainer.callbacks if isinstance(c, Timer)] == [300]
    mine = Timer(duration="00:00:01:00")
    trainer = L.Trainer(max_time={"minutes": 5}, callbacks=[mine], **QUIET)
    assert [c for c in trainer.callbacks if isinstance(c, Timer)] == [mine]


def test_lr_monitor_needs_a_logger():
    with pytest.raises(ValueError, match="needs a logger"):
        L.Trainer(max_epochs=1, callbacks=[LearningRateMonitor()], **QUIET).fit(Net(), _loader())


def test_lr_monitor_bad_interval():
    with pytest.raises(ValueError, match="logging_interval"):
        LearningRateMonitor(logging_interval="batch")


def test_progress_bar_shows_prog_bar_metrics_not_the_loss_by_itself():
    bar = TQDMProgressBar()
    trainer = L.Trainer(max_epochs=1, callbacks=[bar], **{**QUIET, "enable_progress_bar": True})
    with contextlib.redirect_stderr(io.StringIO()):
        trainer.fit(Net(), _loader())
    assert set(bar.get_metrics(trainer, trainer.lightning_module)) == {"train_loss"}


@pytest.mark.skipif(importlib.util.find_spec("rich") is not None, reason="rich is installed")
def test_rich_progress_bar_without_rich_says_how_to_install():
    from ember.callbacks import RichProgressBar

    with pytest.raises(ModuleNotFoundError, match="pip install rich"):
        RichProgressBar()


def test_model_summary_counts_trainable_and_frozen():
    model = Net()
    model.block = torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
    model.block[0].weight.requires_grad_(False)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        trainer = L.Trainer(max_epochs=1, limit_train_batches=1, callbacks=[ModelSummary(max_depth=2)],
                            **{**QUIET, "enable_model_summary": True})
        trainer.fit(model, _loader())
    text = out.getvalue()
    assert "block.0" in text  # depth 2
    lines = {line.split(maxsplit=1)[1].strip(): line.split()[0] for line in text.splitlines() if "params" in line}
    assert lines["Trainable params"] == "12" and lines["Non-trainable params"] == "8" and lines["Total params"] == "20"
