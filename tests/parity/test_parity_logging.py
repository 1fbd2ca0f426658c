"""Logging parity: self.log/log_dict semantics, the three metric views at every hook, and logger output."""
from __future__ import annotations

import csv
import glob
import os

import pytest
import torch
from parity_harness import as_plain, assert_same_metrics, boring_class, data, loader, quiet, run_both
from torch.utils.data import DataLoader


def _snapshotting(L, snaps):
    class Snap(L.Callback):
        def _snap(self, where, trainer):
            snaps.append((where, trainer.global_step, as_plain(trainer.callback_metrics),
                          as_plain(trainer.logged_metrics), as_plain(trainer.progress_bar_metrics)))

    for hook in ("on_train_epoch_start", "on_train_batch_end", "on_validation_batch_end", "on_validation_epoch_end",
                 "on_validation_end", "on_train_epoch_end", "on_test_epoch_end", "on_test_end", "on_train_end"):
        setattr(Snap, hook, lambda self, trainer, *a, _h=hook: self._snap(_h, trainer))
    return Snap()


def _csv_rows(root):
    path = glob.glob(os.path.join(root, "**", "metrics.csv"), recursive=True)
    assert len(path) == 1, path
    with open(path[0], newline="") as fp:
        return list(csv.DictReader(fp))


def _logging_program(L, tmp_path, model_hooks, trainer_kw=None, fit=True, test=False, val_loaders=1):
    snaps = []
    root = os.path.join(str(tmp_path), L.__name__)
    cls = boring_class(L, n_train=12, val_loaders=val_loaders, **model_hooks)
    model = cls()
    kw = quiet(root, max_epochs=2, callbacks=[_snapshotting(L, snaps)], num_sanity_val_steps=1,
               logger=L.pytorch.loggers.CSVLogger(root, name="logs"), log_every_n_steps=2)
    kw.update(trainer_kw or {})
    trainer = L.Trainer(**kw)
    out = {}
    if fit:
        trainer.fit(model)
    out["validate"] = [as_plain(d) for d in trainer.validate(model, verbose=False)]
    if test:
        out["test"] = [as_plain(d) for d in trainer.test(model, verbose=False)]
    return snaps, _csv_rows(root), out


def _assert_same(a, b):
    assert len(a[0]) == len(b[0])
    for x, y in zip(a[0], b[0]):
        assert x[:2] == y[:2]
        for view_a, view_b in zip(x[2:], y[2:]):
            assert_same_metrics(view_a, view_b)
    assert len(a[1]) == len(b[1])
    for row_a, row_b in zip(a[1], b[1]):
        assert row_a.keys() == row_b.keys()
        for k in row_a:
            if row_a[k] == "" or row_b[k] == "":
                assert row_a[k] == row_b[k], (k, row_a, row_b)
            else:
                assert float(row_b[k]) == pytest.approx(float(row_a[k]), rel=1e-6), (k, row_a, row_b)
    assert a[2].keys() == b[2].keys()
    for key in a[2]:
        assert len(a[2][key]) == len(b[2][key]), key  # one result dict per loader, in both
        for x, y in zip(a[2][key], b[2][key]):
            assert_same_metrics(x, y)


def training_step_many(self, batch, batch_idx):
    x, y = batch
    loss = torch.nn.functional.mse_loss(self(x), y)
    self.log("loss", loss, prog_bar=True)  # step only (training default)
    self.log("both", loss * 2, on_step=True, on_epoch=True, prog_bar=True)
    self.log("ep", loss * 3, on_epoch=True, on_step=False, batch_size=x.shape[0] + batch_idx)  # weighted mean
    self.log("mx", loss, on_epoch=True, reduce_fx="max")
    self.log("mn", loss, on_epoch=True, on_step=False, reduce_fx=torch.min)
    self.log("sm", loss, on_epoch=True, on_step=False, reduce_fx="sum")
    self.log("hidden", loss, logger=False, on_epoch=True)
    self.log("int_value", batch_idx)  # ints become floats
    self.log_dict({"a": 1.0 * batch_idx, "b": torch.tensor(2.0)}, on_epoch=True, sync_dist=True)
    return loss


def on_train_epoch_end_log(self):
    self.log("train_end_metric", float(self.current_epoch) + 0.5)


def on_train_epoch_start_log(self):
    self.log("epoch_start_metric", 7.0)


def validation_step_many(self, batch, batch_idx, dataloader_idx=0):
    x, y = batch
    loss = torch.nn.functional.mse_loss(self(x), y)
    self.log("val_loss", loss, prog_bar=True)
    self.log("val_both", loss, on_step=True, on_epoch=True)
    self.log("val_sum", loss, reduce_fx="sum")
    self.log_dict({"val_a": loss + 1, "val_b": loss + 2})


def on_validation_epoch_end_log(self):
    self.log("val_end", 5.0)


MANY = dict(training_step=training_step_many, on_train_epoch_end=on_train_epoch_end_log,
            on_train_epoch_start=on_train_epoch_start_log, validation_step=validation_step_many,
            on_validation_epoch_end=on_validation_epoch_end_log)


def test_log_semantics_views_and_csv_rows(tmp_path):
    _assert_same(*run_both(_logging_program, tmp_path=tmp_path, model_hooks=MANY))


def test_fractional_validation_with_sanity_steps_logging(tmp_path):
    _assert_same(*run_both(_logging_program, tmp_path=tmp_path, model_hooks=MANY,
                           trainer_kw=dict(val_check_interval=0.5, num_sanity_val_steps=2, log_every_n_steps=1)))


def test_accumulation_logging_steps(tmp_path):
    _assert_same(*run_both(_logging_program, tmp_path=tmp_path, model_hooks=MANY,
                           trainer_kw=dict(accumulate_grad_batches=2, log_every_n_steps=1)))


def test_two_val_loaders_and_test(tmp_path):
    def test_step(self, batch, batch_idx, dataloader_idx=0):
        self.log("test_loss", torch.nn.functional.mse_loss(self(batch[0]), batch[1]))

    def on_test_epoch_end(self):
        self.log("test_end", 1.0)

    hooks = dict(MANY, test_step=test_step, on_test_epoch_end=on_test_epoch_end)
    _assert_same(*run_both(_logging_program, tmp_path=tmp_path, model_hooks=hooks, val_loaders=2, test=True))


def test_torchmetrics_metric_objects(tmp_path):
    torchmetrics = pytest.importorskip("torchmetrics")

    def program(L, tmp_path):
        class Model(boring_class(L)):
            def __init__(self):
                super().__init__()
                self.train_mse = torchmetrics.MeanSquaredError()
                self.val_mse = torchmetrics.MeanSquaredError()

            def training_step(self, batch, batch_idx):
                x, y = batch
                pred = self(x)
                self.train_mse(pred, y)  # forward: the batch value is the step value
                self.log("train_mse", self.train_mse, on_step=True, on_epoch=True, prog_bar=True)
                return torch.nn.functional.mse_loss(pred, y)

            def validation_step(self, batch, batch_idx):
                x, y = batch
                self.val_mse.update(self(x), y)
                self.log("val_mse", self.val_mse)

        snaps = []
        m = Model()
        t = L.Trainer(**quiet(tmp_path, max_epochs=2, callbacks=[_snapshotting(L, snaps)], num_sanity_val_steps=1))
        t.fit(m)
        return snaps, as_plain(t.callback_metrics)

    a, b = run_both(program, tmp_path=tmp_path)
    assert [s[:2] for s in a[0]] == [s[:2] for s in b[0]]
    for x, y in zip(a[0], b[0]):
        for va, vb in zip(x[2:], y[2:]):
            assert_same_metrics(va, vb)
    assert_same_metrics(a[1], b[1])


def test_tensorboard_scalars_match(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    def program(L, tmp_path):
        root = os.path.join(str(tmp_path), L.__name__)
        m = boring_class(L, n_train=12, **MANY)()
        t = L.Trainer(**quiet(root, max_epochs=2, logger=L.pytorch.loggers.TensorBoardLogger(root, name="tb"),
                              log_every_n_steps=1))
        t.fit(m)
        acc = EventAccumulator(t.logger.log_dir)
        acc.Reload()
        return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}

    a, b = run_both(program, tmp_path=tmp_path)
    assert sorted(a) == sorted(b)
    for tag in a:
        assert [s for s, _ in a[tag]] == [s for s, _ in b[tag]], tag
        assert [v for _, v in b[tag]] == pytest.approx([v for _, v in a[tag]], rel=1e-6), tag


def test_batch_size_from_batch_weights_epoch_means(tmp_path):
    # Uneven last batch: the epoch mean is weighted by batch size, as Lightning does.
    def program(L, tmp_path):
        m = boring_class(L, n_train=10, batch_size=4)()
        t = L.Trainer(**quiet(tmp_path, max_epochs=1))
        t.fit(m, val_dataloaders=DataLoader(data(7, seed=3), batch_size=3))
        return as_plain(t.callback_metrics)

    a, b = run_both(program, tmp_path=tmp_path)
    assert_same_metrics(a, b)
    assert "train_loss_epoch" in b and "val_loss" in b


def test_validate_and_test_without_fit(tmp_path):
    def program(L, tmp_path):
        m = boring_class(L, validation_step=validation_step_many, on_validation_epoch_end=on_validation_epoch_end_log)()
        t = L.Trainer(**quiet(tmp_path))
        v = t.validate(m, dataloaders=loader(8, 3, seed=4), verbose=False)
        return [as_plain(d) for d in v], as_plain(t.callback_metrics), as_plain(t.logged_metrics)

    a, b = run_both(program, tmp_path=tmp_path)
    assert_same_metrics(a[0][0], b[0][0])
    assert_same_metrics(a[1], b[1])
    assert_same_metrics(a[2], b[2])
