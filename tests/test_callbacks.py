"""Shipped callbacks: bad input, state, and what needs no Lightning to check."""
from __future__ import annotations

import contextlib
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


def test_rich_progress_bar_without_rich_says_how_to_install(monkeypatch):
    import sys

    from ember.callbacks import RichProgressBar

    monkeypatch.setitem(sys.modules, "rich.progress", None)  # as if rich were not installed
    with pytest.raises(ModuleNotFoundError, match="pip install rich"):
        RichProgressBar()


def test_rich_progress_bar_draws_each_epoch_with_its_batches_and_metrics(capsys, monkeypatch):
    from ember.callbacks import RichProgressBar

    for name in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "COLUMNS"):
        monkeypatch.delenv(name, raising=False)  # rich would treat the captured output as a terminal

    bar = RichProgressBar()
    model = Net()
    trainer = L.Trainer(max_epochs=2, callbacks=[bar], **{**QUIET, "enable_progress_bar": True})
    trainer.fit(model, _loader(24))  # 6 batches an epoch
    assert trainer.progress_bar_callback is bar
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    # Not a terminal: rich prints the finished bar once, for the last epoch, with the metrics it showed.
    assert len(lines) == 1 and lines[0].startswith("Epoch 1 ") and " 6/6 " in lines[0]
    metrics = bar.get_metrics(trainer, model)
    assert list(metrics) == ["train_loss"]
    assert float(metrics["train_loss"]) == pytest.approx(trainer.progress_bar_metrics["train_loss"], rel=5e-3)  # shown to 3 digits
    assert lines[0].endswith(f"train_loss={metrics['train_loss']}")


def test_rich_progress_bar_disabled_draws_nothing(capsys):
    from ember.callbacks import RichProgressBar

    bar = RichProgressBar()
    bar.disable()
    L.Trainer(max_epochs=1, callbacks=[bar], **{**QUIET, "enable_progress_bar": True}).fit(Net(), _loader(24))
    assert capsys.readouterr().out.strip() == ""


def test_prediction_writer_batch_interval_on_one_process():
    from ember.callbacks import BasePredictionWriter

    class Rows(L.LightningModule):
        def predict_step(self, batch, batch_idx, dataloader_idx=0):
            return batch[0].flatten() * 10

    class Writer(BasePredictionWriter):
        def __init__(self):
            super().__init__(write_interval="batch")
            self.rows = []

        def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx):
            self.rows.append((dataloader_idx, batch_idx, prediction.tolist(), batch_indices, batch[0].flatten().tolist()))

    x = torch.arange(8.0).unsqueeze(1)
    writer = Writer()  # write_on_epoch_end is not overridden: it would raise if "batch" called it
    out = L.Trainer(callbacks=[writer], **QUIET).predict(
        Rows(), [DataLoader(TensorDataset(x), batch_size=3), DataLoader(TensorDataset(x[:4] + 100), batch_size=2)])
    assert writer.rows == [
        (0, 0, [0.0, 10.0, 20.0], [0, 1, 2], [0.0, 1.0, 2.0]),
        (0, 1, [30.0, 40.0, 50.0], [3, 4, 5], [3.0, 4.0, 5.0]),
        (0, 2, [60.0, 70.0], [6, 7], [6.0, 7.0]),
        (1, 0, [1000.0, 1010.0], [0, 1], [100.0, 101.0]),
        (1, 1, [1020.0, 1030.0], [2, 3], [102.0, 103.0]),
    ]
    assert [[p.tolist() for p in loader] for loader in out] == [[r[2] for r in writer.rows[:3]],
                                                                [r[2] for r in writer.rows[3:]]]
    with pytest.raises(ValueError, match="write_interval='step'"):
        Writer.__bases__[0](write_interval="step")


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
