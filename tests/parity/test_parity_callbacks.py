"""Callback parity: EarlyStopping, LearningRateMonitor, Timer, progress bars, ModelSummary."""
from __future__ import annotations

import contextlib
import io
import math

import pytest
import torch
from parity_harness import assert_same_metrics, assert_same_run, boring_class, quiet, run_both, run_program


def _early_stopping(**kw):
    return lambda L: [L.pytorch.callbacks.EarlyStopping(**kw)]


@pytest.mark.parametrize("kw,trainer", [
    (dict(monitor="val_loss", patience=1, min_delta=0.5), {}),
    (dict(monitor="val_loss", patience=0, mode="max"), {}),
    (dict(monitor="train_loss_epoch", patience=2, min_delta=0.05), {}),
    (dict(monitor="val_loss", stopping_threshold=3.0), {}),
    (dict(monitor="val_loss", divergence_threshold=1.0, mode="max"), {}),
    (dict(monitor="val_loss", patience=1, min_delta=1.0), dict(val_check_interval=0.5)),  # checks after validation
    (dict(monitor="val_loss", patience=0, mode="max"), dict(min_epochs=4)),
], ids=["patience", "mode-max", "train-metric", "stopping-threshold", "divergence", "mid-epoch-val", "min-epochs"])
def test_early_stopping_stops_in_the_same_epoch(tmp_path, kw, trainer):
    a, b = run_both(run_program, tmp_path=tmp_path, callbacks=_early_stopping(**kw),
                    trainer=dict(max_epochs=8, **trainer))
    assert_same_run(a, b)
    es = [next(cb for cb in r["trainer"].callbacks if type(cb).__name__ == "EarlyStopping") for r in (a, b)]
    assert (es[0].stopped_epoch, es[0].wait_count, es[0].stopping_reason.value) == \
           (es[1].stopped_epoch, es[1].wait_count, es[1].stopping_reason.value)
    assert float(es[0].best_score) == pytest.approx(float(es[1].best_score), rel=1e-6)
    assert es[0].state_key == es[1].state_key


def test_early_stopping_check_finite(tmp_path):
    def validation_step(self, batch, batch_idx):
        self.log("val_loss", torch.tensor(math.nan) if self.current_epoch == 1 else torch.tensor(1.0))

    a, b = run_both(run_program, tmp_path=tmp_path, model=dict(validation_step=validation_step),
                    callbacks=_early_stopping(monitor="val_loss", patience=5), trainer=dict(max_epochs=5))
    assert_same_run(a, b)
    assert a["current_epoch"] == 2


def _lr_program(L, tmp_path, configure, interval, **trainer_kw):
    logged = []

    class Capture(L.pytorch.loggers.CSVLogger):
        def log_metrics(self, metrics, step=None):
            logged.append((step, {k: float(v) for k, v in metrics.items() if k.startswith("lr-")}))
            super().log_metrics(metrics, step)

    monitor = L.pytorch.callbacks.LearningRateMonitor(logging_interval=interval, log_momentum=True,
                                                      log_weight_decay=True)
    m = boring_class(L, configure=configure)()
    t = L.Trainer(**quiet(tmp_path, max_epochs=3, logger=Capture(str(tmp_path)), callbacks=[monitor],
                          log_every_n_steps=2, **trainer_kw))
    t.fit(m)
    return [x for x in logged if x[1]], monitor.lrs, {k: float(v) for k, v in t.callback_metrics.items()
                                                        if k.startswith("lr-")}


def _two_opts_with_groups(m):
    a = torch.optim.SGD([{"params": [m.layer.weight]}, {"params": [m.layer.bias], "lr": 0.05}], lr=0.1, momentum=0.9)
    return {"optimizer": a, "lr_scheduler": {"scheduler": torch.optim.lr_scheduler.StepLR(a, 2, 0.5), "interval": "step"}}


@pytest.mark.parametrize("interval", [None, "step", "epoch"])
@pytest.mark.parametrize("configure", [
    lambda m: {"optimizer": (o := torch.optim.Adam(m.parameters(), lr=0.1, weight_decay=0.01)),
               "lr_scheduler": torch.optim.lr_scheduler.StepLR(o, 1, 0.5)},
    _two_opts_with_groups,
    lambda m: torch.optim.SGD(m.parameters(), lr=0.1),
], ids=["adam-epoch-sched", "groups-step-sched", "no-sched"])
def test_learning_rate_monitor(tmp_path, interval, configure):
    a, b = run_both(_lr_program, tmp_path=tmp_path, configure=configure, interval=interval)
    assert a == b


def test_timer_callback_measures_and_stops(tmp_path):
    def program(L, tmp_path, duration, seconds):
        timer = L.pytorch.callbacks.Timer(duration=duration, interval="step")
        r = run_program(L, tmp_path, callbacks=lambda L: [timer], record=False, trainer=dict(max_epochs=3))
        elapsed, remaining = timer.time_elapsed("train"), timer.time_remaining("train")
        # After fit the train clock is stopped: what remains is exactly the budget minus what was used.
        return r["global_step"], elapsed > 0, elapsed < 60, remaining == pytest.approx(seconds - elapsed, abs=1e-9)

    a, b = run_both(program, tmp_path=tmp_path, duration={"seconds": 0}, seconds=0)  # spent already at fit start
    assert a == b == (0, False, True, True)
    a, b = run_both(program, tmp_path=tmp_path, duration="00:01:00:00", seconds=3600)
    assert a == b == (12, True, True, True)


def test_max_time_stops_like_a_timer_and_respects_min_epochs(tmp_path):
    a, b = run_both(run_program, tmp_path=tmp_path, trainer=dict(max_time={"seconds": 0}, min_epochs=1,
                                                                   max_epochs=3))
    assert_same_run(a, b)
    assert a["current_epoch"] == 1


@pytest.mark.parametrize("bar", ["tqdm", "rich"])
def test_progress_bar_runs_and_shows_prog_bar_metrics(tmp_path, bar):

    def program(L, tmp_path):
        cb = (L.pytorch.callbacks.TQDMProgressBar(refresh_rate=1) if bar == "tqdm"
              else L.pytorch.callbacks.RichProgressBar())
        m = boring_class(L)()
        t = L.Trainer(**quiet(tmp_path, max_epochs=1, enable_progress_bar=True, callbacks=[cb]))
        with contextlib.redirect_stderr(io.StringIO()):
            t.fit(m)
        return sorted(cb.get_metrics(t, m))

    a, b = run_both(program, tmp_path=tmp_path)
    assert a == b
    assert "train_loss_step" in a and "val_loss" in a


def test_configure_callbacks_replaces_trainer_callbacks_of_the_same_type(tmp_path):
    def configure_callbacks(self):
        return [self._es]

    def program(L, tmp_path):
        cls = boring_class(L, configure_callbacks=configure_callbacks)
        m = cls()
        m._es = L.pytorch.callbacks.EarlyStopping(monitor="val_loss", patience=0, mode="max")
        t = L.Trainer(**quiet(tmp_path, max_epochs=5,
                              callbacks=[L.pytorch.callbacks.EarlyStopping(monitor="val_loss", patience=10)]))
        t.fit(m)
        return t.current_epoch, [type(c).__name__ for c in t.callbacks], [c.patience for c in t.callbacks
                                                                         if type(c).__name__ == "EarlyStopping"]

    a, b = run_both(program, tmp_path=tmp_path)
    assert a == b


def _exception_order_program(L, tmp_path):
    """Who hears an exception raised in training_step, in which order: callbacks, then the datamodule."""
    heard = []

    class Boom(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(3, 1)

        def training_step(self, batch, batch_idx):
            raise ValueError("boom at batch %d" % batch_idx)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    class Data(L.LightningDataModule):
        def train_dataloader(self):
            from parity_harness import loader

            return loader(8, 4)

        def on_exception(self, exception):
            heard.append(("datamodule", str(exception)))

    class Hear(L.pytorch.callbacks.Callback):
        def on_exception(self, trainer, pl_module, exception):
            heard.append(("callback", str(exception)))

    trainer = L.Trainer(max_epochs=1, callbacks=[Hear()], **quiet(tmp_path))
    with pytest.raises(ValueError, match="boom at batch 0"):
        trainer.fit(Boom(), datamodule=Data())
    return heard, trainer.interrupted


def test_an_exception_reaches_the_callbacks_then_the_datamodule(tmp_path):
    expected, got = run_both(_exception_order_program, tmp_path=tmp_path)
    assert got == expected == ([("callback", "boom at batch 0"), ("datamodule", "boom at batch 0")], True)


def _diverging_range_test(L, tmp_path):
    """lr_find up to a rate that blows the loss up, with early_stop_threshold=None (the StatQuest call)."""

    class Linear(L.LightningModule):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.layer = torch.nn.Linear(3, 1)
            self.lr = 1e-3

        def training_step(self, batch, batch_idx):
            return torch.nn.functional.mse_loss(self.layer(batch[0]), batch[1])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=self.lr)

    from parity_harness import loader

    tuner = L.pytorch.tuner.Tuner(L.Trainer(max_epochs=50, **quiet(tmp_path)))
    found = tuner.lr_find(Linear(), train_dataloaders=loader(64, 4), min_lr=1e-3, max_lr=1e4, num_training=40,
                          early_stop_threshold=None)
    steepest = found.suggestion() if L.__name__ == "lightning" else found.suggestion(method="steepest")
    return [str(v) for v in found.results["lr"]], [str(v) for v in found.results["loss"]], steepest


def test_a_diverging_range_test_records_inf_and_nan_like_lightning(tmp_path):
    """The range test looks for the rate where training blows up: the non-finite losses are recorded, not raised."""
    expected, got = run_both(_diverging_range_test, tmp_path=tmp_path)
    assert got == expected
    lrs, losses, steepest = got
    assert len(losses) == 40 and losses[-1] == "nan" and "inf" in losses
    assert steepest == pytest.approx(0.0841395, rel=1e-6)


def _lambda_program(L, tmp_path):
    """LambdaCallback: plain functions per event, called with (trainer, pl_module, ...) where Lightning calls them."""
    calls = []
    cb = L.pytorch.callbacks.LambdaCallback(
        on_train_start=lambda trainer, pl_module: calls.append(("train_start", trainer.global_step)),
        on_train_batch_end=lambda trainer, pl_module, outputs, batch, batch_idx: calls.append(
            ("batch_end", batch_idx, trainer.global_step, round(float(outputs["loss"]), 6))),
        on_validation_epoch_end=lambda trainer, pl_module: calls.append(("val_end", trainer.sanity_checking)),
        on_fit_end=lambda trainer, pl_module: calls.append(("fit_end", trainer.current_epoch)),
        on_train_epoch_start=None)
    model = boring_class(L)()
    trainer = L.Trainer(max_epochs=2, callbacks=[cb], **quiet(tmp_path, limit_train_batches=2, limit_val_batches=1))
    trainer.fit(model)
    return calls


def test_lambda_callback_calls_its_functions_like_lightning(tmp_path):
    expected, got = run_both(_lambda_program, tmp_path=tmp_path)
    assert got == expected
    assert [c[0] for c in got] == ["val_end", "train_start", "batch_end", "batch_end", "val_end", "batch_end",
                                   "batch_end", "val_end", "fit_end"]
    assert got[-1] == ("fit_end", 2) and got[3][:3] == ("batch_end", 1, 2)


def test_lambda_callback_refuses_an_unknown_event():
    from ember.callbacks import LambdaCallback

    with pytest.raises(ValueError, match=r"LambdaCallback\(on_train_bach_end=\.\.\.\): not a callback event"):
        LambdaCallback(on_train_bach_end=lambda *a: None)
    with pytest.raises(TypeError, match=r"LambdaCallback\(on_fit_end=3\) needs a function"):
        LambdaCallback(on_fit_end=3)
