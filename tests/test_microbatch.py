"""Trainer(microbatch_on_oom=True): a batch that runs out of memory is split, with the same update (1e-6)."""
from __future__ import annotations

import warnings

import pytest
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

import ember as L


class OOMAbove(torch.autograd.Function):
    """Identity whose backward raises torch.OutOfMemoryError above ``limit`` rows (a simulated CUDA OOM)."""

    @staticmethod
    def forward(ctx, x, limit):
        ctx.limit = limit
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        if grad.shape[0] > ctx.limit:
            raise torch.OutOfMemoryError(f"simulated: {grad.shape[0]} rows in backward")
        return grad, None


class Net(L.LightningModule):
    """Raises torch.OutOfMemoryError in the forward above ``forward_limit`` rows, in the backward above
    ``backward_limit``; records what on_train_batch_end receives and how many OOMs it raised."""

    def __init__(self, forward_limit=10**9, backward_limit=10**9, optimizer="sgd"):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(4, 32), torch.nn.Tanh(), torch.nn.Linear(32, 2))
        self.forward_limit, self.backward_limit, self.optimizer = forward_limit, backward_limit, optimizer
        self.ooms, self.outputs, self.rows_seen = 0, [], []

    def rows(self, batch):
        return batch[0].shape[0] if isinstance(batch, (tuple, list)) else batch["x"].shape[0]

    def training_step(self, batch, batch_idx):
        x, y = (batch[0], batch[1]) if isinstance(batch, (tuple, list)) else (batch["x"], batch["y"])
        self.rows_seen.append(x.shape[0])
        if x.shape[0] > self.forward_limit:
            self.ooms += 1
            self.log("never_logged", 1.0)  # logged before the OOM: must not reach the metrics
            raise torch.OutOfMemoryError(f"simulated: {x.shape[0]} rows in forward")
        h = OOMAbove.apply(self.net[0](x), self.backward_limit)
        loss = torch.nn.functional.mse_loss(self.net[2](self.net[1](h)), y)
        self.log("train_loss", loss, on_step=True, on_epoch=True, prog_bar=True)
        return {"loss": loss, "extra": torch.tensor(float(batch_idx))}

    def on_train_batch_end(self, outputs, batch, batch_idx):
        self.outputs.append(float(outputs["loss"]))

    def configure_optimizers(self):
        if self.optimizer == "adam":
            return torch.optim.Adam(self.parameters(), lr=1e-2)
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)


def data(n=40):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(n, 4, generator=g)
    return TensorDataset(x, torch.stack([x.sum(1), x[:, 0] * 2], 1))


class DictData(Dataset):
    def __init__(self):
        self.inner = data()

    def __len__(self):
        return len(self.inner)

    def __getitem__(self, i):
        x, y = self.inner[i]
        return {"x": x, "y": y}


def fit(tmp_path, model, batch_size=16, dataset=None, **kw):
    args = dict(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                enable_checkpointing=False, default_root_dir=str(tmp_path), max_epochs=3)
    args.update(kw)
    trainer = L.Trainer(**args)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model, train_dataloaders=DataLoader(dataset or data(), batch_size=batch_size))
    trainer.oom_warnings = [str(w.message) for w in caught if "out of memory" in str(w.message)]
    return trainer


def assert_close_weights(a, b):
    for k, v in a.state_dict().items():
        torch.testing.assert_close(b.state_dict()[k], v, rtol=1e-6, atol=1e-6, msg=k)


@pytest.mark.parametrize("where", ["forward", "backward"])
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_oom_splits_the_batch_and_trains_to_the_same_weights(tmp_path, where, optimizer):
    plain = Net(optimizer=optimizer)
    t_plain = fit(tmp_path / "plain", plain)
    limits = {"forward_limit": 6} if where == "forward" else {"backward_limit": 6}
    split = Net(optimizer=optimizer, **limits)
    t_split = fit(tmp_path / "split", split, microbatch_on_oom=True)
    assert_close_weights(plain, split)
    assert t_split.global_step == t_plain.global_step == 9  # 40 rows / 16: batches of 16, 16, 8; 3 epochs
    # the first batch ran out of memory at 16 rows, then at 8; every later batch was split up front
    assert t_split.state.microbatch_rows == 4
    if where == "forward":
        assert split.ooms == 2
        assert split.rows_seen[:2] == [16, 8] and set(split.rows_seen[2:]) == {4}
    assert len(t_split.oom_warnings) == 2 and "microbatches of at most 4 rows" in t_split.oom_warnings[1]
    # what self.log and on_train_batch_end see is the whole batch's loss
    assert split.outputs == pytest.approx(plain.outputs, rel=1e-6)
    for key in ("train_loss", "train_loss_step", "train_loss_epoch"):
        torch.testing.assert_close(t_split.callback_metrics[key], t_plain.callback_metrics[key], rtol=1e-6, atol=1e-7)
    assert "never_logged" not in t_split.callback_metrics


def test_the_split_also_holds_with_accumulation_and_a_dict_batch(tmp_path):
    plain = Net()
    fit(tmp_path / "plain", plain, dataset=DictData(), batch_size=8, accumulate_grad_batches=2)
    split = Net(forward_limit=5)
    t = fit(tmp_path / "split", split, dataset=DictData(), batch_size=8, accumulate_grad_batches=2,
            microbatch_on_oom=True)
    assert_close_weights(plain, split)
    assert t.state.microbatch_rows == 4 and split.ooms == 1
    assert split.outputs == pytest.approx(plain.outputs, rel=1e-6)


def test_a_backward_oom_inside_an_accumulation_window_stops_with_a_clear_error(tmp_path):
    class Late(Net):
        def training_step(self, batch, batch_idx):
            self.backward_limit = 10**9 if batch_idx == 0 else 4  # only the second batch of the window fails
            return super().training_step(batch, batch_idx)

    with pytest.raises(RuntimeError, match="inside an open gradient-accumulation window .* cannot be retried"):
        fit(tmp_path, Late(), batch_size=8, accumulate_grad_batches=2, microbatch_on_oom=True)


def test_off_an_oom_is_raised_as_it_is(tmp_path):
    with pytest.raises(torch.OutOfMemoryError, match="simulated: 16 rows"):
        fit(tmp_path, Net(forward_limit=6))


def test_one_row_that_does_not_fit_is_an_error(tmp_path):
    with pytest.raises(RuntimeError, match="Out of memory with microbatches of 1 row"):
        fit(tmp_path, Net(forward_limit=0), microbatch_on_oom=True)


def test_bad_settings_and_unsplittable_batches_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"Trainer\(microbatch_on_oom='yes'\) is not valid; allowed: True, False"):
        L.Trainer(microbatch_on_oom="yes")

    class Manual(Net):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = False

    with pytest.raises(ValueError, match=r"microbatch_on_oom=True\) does not apply to manual optimization"):
        fit(tmp_path, Manual(), microbatch_on_oom=True)

    from ember.microbatch import batch_rows, split_batch

    with pytest.raises(ValueError, match=r"cannot split batch\[2\] of type str"):
        batch_rows((torch.zeros(3, 1), torch.zeros(3), "tag"))
    with pytest.raises(ValueError, match="different sizes there"):
        batch_rows({"a": torch.zeros(3), "b": torch.zeros(4)})
    parts, shares = split_batch({"a": torch.arange(5), "b": (torch.arange(5) * 2,)}, 2)
    assert [p["a"].tolist() for p in parts] == [[0, 1, 2], [3, 4]] and shares == [0.6, 0.4]
    assert parts[1]["b"][0].tolist() == [6, 8]


def test_a_compiled_step_splits_too_and_logs_the_whole_batch(tmp_path):
    plain = Net()
    t_plain = fit(tmp_path / "plain", plain)
    split = L.compile_step(Net(forward_limit=6), backend="eager")
    t = fit(tmp_path / "split", split, microbatch_on_oom=True)
    assert_close_weights(plain, split)
    assert t.state.microbatch_rows == 4
    for key in ("train_loss_step", "train_loss_epoch"):
        torch.testing.assert_close(t.callback_metrics[key], t_plain.callback_metrics[key], rtol=1e-6, atol=1e-7)
    assert "never_logged" not in t.callback_metrics and "log" not in split.__dict__
