"""self.log: bad input gets a clear error; the views stay lazy (no per-step work)."""
from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import ember as L
from ember.logging import MetricStore

QUIET = dict(logger=False, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)


def _loader(n=8):
    x = torch.randn(n, 2, generator=torch.Generator().manual_seed(0))
    return DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=4)


def _fit_logging(log_fn, hook="training_step", **trainer_kw):
    class Net(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(2, 1)

        def training_step(self, batch, batch_idx):
            loss = torch.nn.functional.mse_loss(self.layer(batch[0]), batch[1])
            if hook == "training_step":
                log_fn(self, loss, batch_idx)
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    if hook != "training_step":
        setattr(Net, hook, lambda self, *a: log_fn(self, torch.tensor(1.0), 0))
    trainer = L.Trainer(max_epochs=1, **QUIET, **trainer_kw)
    trainer.fit(Net(), _loader())
    return trainer


def test_logging_a_non_scalar_names_its_shape():
    with pytest.raises(ValueError, match=r"needs a scalar; got a tensor of shape \(2,\)"):
        _fit_logging(lambda self, loss, i: self.log("pair", torch.ones(2)))


def test_logging_an_unsupported_type_is_named():
    with pytest.raises(ValueError, match="got str"):
        _fit_logging(lambda self, loss, i: self.log("text", "hello"))


def test_key_collision_between_forked_names_is_an_error():
    def log(self, loss, i):
        self.log("acc", loss, on_step=True, on_epoch=True)  # stored as acc_step / acc_epoch
        self.log("acc_step", loss)

    with pytest.raises(ValueError, match="'acc_step', which metric 'acc' already uses"):
        _fit_logging(log)


def test_same_name_with_different_settings_in_one_hook_is_an_error():
    def log(self, loss, i):
        self.log("x", loss, on_epoch=i == 1)

    with pytest.raises(ValueError, match="same name was logged earlier"):
        _fit_logging(log)


def test_logging_where_lightning_forbids_it_is_an_error():
    with pytest.raises(RuntimeError, match="not allowed here"):
        _fit_logging(lambda self, loss, i: self.log("x", 1.0), hook="on_fit_start")


def test_on_step_in_an_epoch_hook_is_an_error():
    with pytest.raises(ValueError, match="on_step=True.*epoch-level hook"):
        _fit_logging(lambda self, loss, i: self.log("x", 1.0, on_step=True), hook="on_train_epoch_end")


def test_dataloader_idx_in_the_name_is_an_error():
    with pytest.raises(ValueError, match="dataloader_idx"):
        _fit_logging(lambda self, loss, i: self.log("x/dataloader_idx_0", loss))


def test_log_outside_a_trainer_is_ignored():
    class Net(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(2, 1)

        def training_step(self, batch, batch_idx):
            loss = torch.nn.functional.mse_loss(self.layer(batch[0]), batch[1])
            self.log("loss", loss)
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    module = Net()
    assert module.log("early", 1.0) is None and module.log_dict({"early_dict": 2.0}) is None  # no trainer: no-op
    trainer = L.Trainer(max_epochs=1, **QUIET)
    trainer.fit(module, _loader())
    # Nothing logged before the run reached it: only the metric logged inside fit is there.
    assert set(trainer.callback_metrics) == set(trainer.logged_metrics) == {"loss"}


def test_views_are_computed_when_read_not_per_step():
    store = MetricStore()
    store.enter("train", "batch")
    calls = []
    original = store.collect
    store.collect = lambda *a, **k: calls.append(a) or original(*a, **k)  # type: ignore[method-assign]
    for i in range(100):
        store.current_batch = torch.zeros(4, 1)
        store.log(None, "loss", torch.tensor(float(i)), prog_bar=True, logger=True, on_step=None, on_epoch=True,
                  reduce_fx="mean", enable_graph=False, sync_dist=False, add_dataloader_idx=True, batch_size=None)
    assert calls == []  # logging 100 steps computed nothing
    assert float(store.callback_metrics["loss_step"]) == 99.0
    store.enter("train", "epoch")
    assert float(store.callback_metrics["loss_epoch"]) == pytest.approx(49.5)


def test_epoch_mean_is_weighted_by_batch_size():
    store = MetricStore()
    store.enter("validate", "batch")
    for value, size in ((1.0, 4), (4.0, 1)):
        store.current_batch = torch.zeros(size, 3)
        store.log(None, "v", torch.tensor(value), prog_bar=False, logger=True, on_step=None, on_epoch=None,
                  reduce_fx="mean", enable_graph=False, sync_dist=False, add_dataloader_idx=True, batch_size=None)
    store.enter("validate", "epoch")
    assert float(store.callback_metrics["v"]) == pytest.approx((1.0 * 4 + 4.0) / 5)


def test_extract_batch_size_reads_the_first_tensor_with_rows():
    """How epoch means are weighted: the first tensor's length, through tuples, dicts and lists alike."""
    from ember.logging import extract_batch_size

    x, y = torch.zeros(5, 3), torch.zeros(5)
    assert extract_batch_size((x, y)) == 5
    assert extract_batch_size([torch.tensor(2.0), y]) == 1  # a scalar first counts as one sample
    assert extract_batch_size((torch.zeros(0, 3), torch.zeros(7))) == 7  # an empty first tensor is skipped
    assert extract_batch_size({"x": x[:2], "y": y}) == 2
    assert extract_batch_size(("text", [x[:4]])) == 1  # a string counts as one sample, as in Lightning
    assert extract_batch_size(x[:3]) == 3


def test_a_logged_loss_is_read_detached_and_equal_to_the_step_loss():
    """log() keeps a training-step value as given; whoever reads it (a callback, the views, a checkpoint's
    metric state) gets it without its graph, and with the value the step returned."""
    seen = []

    class Reads(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            logged = trainer.callback_metrics["loss"]
            seen.append((logged.requires_grad, logged.grad_fn, float(logged), float(outputs["loss"])))

    trainer = _fit_logging(lambda self, loss, i: self.log("loss", loss, prog_bar=True), callbacks=[Reads()])
    assert len(seen) == 2
    assert all(not grad and fn is None and value == step for grad, fn, value, step in seen)
    saved = trainer.metric_store.state_dict()["train_entries"]
    assert [e["step_value"].requires_grad for e in saved] == [False]
    assert not trainer.callback_metrics["loss"].requires_grad
