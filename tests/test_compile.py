"""torch.compile under ember: ember.compile_step (self.log outside the graph) and checkpoints of compiled fits."""
from __future__ import annotations

import os

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import ember as L
from compile_backends import BACKENDS
from ember.compile import strip_compile_prefix, uncompile_step


class Net(L.LightningModule):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self(x), y)
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=True)
        self.log_dict({"scaled": loss * 2, "const": 1.0})
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", torch.nn.functional.mse_loss(self(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


def loader(n=32, batch_size=8):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 4, generator=g)
    return DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=batch_size)


def trainer(tmp_path, **kw):
    args = dict(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                default_root_dir=str(tmp_path), max_epochs=2)
    args.update(kw)
    return L.Trainer(**args)


def fit(tmp_path, model, **kw):
    t = trainer(tmp_path, **kw)
    t.fit(model, train_dataloaders=loader(), val_dataloaders=loader(16))
    return t


def params(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("backend", BACKENDS)
def test_compile_step_trains_and_logs_like_the_eager_step_without_a_graph_break(tmp_path, backend):
    torch._dynamo.reset()
    plain = Net()
    t_plain = fit(tmp_path / "plain", plain, enable_checkpointing=False)
    model = L.compile_step(Net(), steps=("training_step", "validation_step"), backend=backend, fullgraph=True)
    # fullgraph=True raises on any graph break: self.log inside the step would be one if it were traced for real
    t = fit(tmp_path / "compiled", model, enable_checkpointing=False)
    exact = backend != "inductor"
    for k, v in params(plain).items():
        if exact:
            assert torch.equal(params(model)[k], v), k
        else:
            torch.testing.assert_close(params(model)[k], v, rtol=1e-6, atol=1e-7)
    got, want = t.callback_metrics, t_plain.callback_metrics
    assert set(got) == set(want) == {"train_loss", "train_loss_step", "train_loss_epoch", "scaled", "const", "val_loss"}
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=0 if exact else 1e-6, atol=0 if exact else 1e-7)
    assert float(got["const"]) == 1.0
    assert t.global_step == 8
    assert type(model.__dict__["training_step"]).__name__ == "CompiledStep"
    uncompile_step(model)
    assert "training_step" not in model.__dict__ and "log" not in model.__dict__


def test_compile_step_refuses_bad_arguments():
    with pytest.raises(ValueError, match=r"compile_step\(steps=\('train_step',\)\) is not valid; allowed"):
        L.compile_step(Net(), steps=["train_step"])
    with pytest.raises(TypeError, match="needs an ember.LightningModule; got Linear"):
        L.compile_step(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match=r"got \['fullgrph'\]; allowed keywords"):
        L.compile_step(Net(), fullgrph=True)


def test_stub_steps_stay_stubs_so_the_trainer_still_says_what_is_missing(tmp_path):
    model = L.compile_step(Net(), steps=("training_step", "test_step"), backend="eager")
    assert "test_step" not in model.__dict__  # Net has no test_step: nothing compiled in its place
    with pytest.raises(NotImplementedError, match="test_step"):
        trainer(tmp_path).test(model, dataloaders=loader())


def test_checkpoint_of_a_compiled_fit_loads_into_an_uncompiled_model_and_back(tmp_path):
    torch._dynamo.reset()
    # straight: 2 epochs uncompiled
    straight = Net()
    fit(tmp_path / "straight", straight, enable_checkpointing=False)
    # compiled for the first epoch, checkpoint, then resumed uncompiled for the second
    first = Net()
    t1 = fit(tmp_path / "a", torch.compile(first, backend="aot_eager"), max_epochs=1)
    path = t1.checkpoint_callback.best_model_path
    ckpt = torch.load(path, weights_only=True)
    assert sorted(ckpt["state_dict"]) == ["net.0.bias", "net.0.weight", "net.2.bias", "net.2.weight"]
    loaded = Net.load_from_checkpoint(path)
    for k, v in params(first).items():
        assert torch.equal(params(loaded)[k], v), k
    resumed = Net()
    t2 = trainer(tmp_path / "b")
    t2.fit(resumed, train_dataloaders=loader(), val_dataloaders=loader(16), ckpt_path=path)
    for k, v in params(straight).items():
        assert torch.equal(params(resumed)[k], v), k
    # uncompiled first epoch, resumed compiled
    again = Net()
    t3 = trainer(tmp_path / "c")
    t3.fit(torch.compile(again, backend="eager"), train_dataloaders=loader(), val_dataloaders=loader(16),
           ckpt_path=path)
    for k, v in params(straight).items():
        assert torch.equal(params(again)[k], v), k
    assert t3.lightning_module is again and t3.global_step == 8


def test_state_dict_of_the_compiled_wrapper_loads_into_the_module(tmp_path):
    model = Net()
    compiled = torch.compile(model, backend="eager")
    wrapped = compiled.state_dict()
    assert all(k.startswith("_orig_mod.") for k in wrapped)
    path = os.path.join(tmp_path, "m.ckpt")
    t = trainer(tmp_path)
    t.validate(Net(), dataloaders=loader(16), verbose=False)  # attach something so save_checkpoint works
    t.save_checkpoint(path)
    ckpt = torch.load(path, weights_only=True)
    ckpt["state_dict"] = wrapped
    torch.save(ckpt, path)
    loaded = Net.load_from_checkpoint(path)
    for k, v in params(model).items():
        assert torch.equal(params(loaded)[k], v), k
    assert strip_compile_prefix({"a": 1}, ["a"]) == {"a": 1}
    assert strip_compile_prefix({"_orig_mod.a": 1}, ["_orig_mod.a"]) == {"_orig_mod.a": 1}


def test_a_compiled_plain_module_is_refused_with_a_clear_error(tmp_path):
    with pytest.raises(TypeError, match="wraps a Linear, not an ember.LightningModule"):
        trainer(tmp_path).fit(torch.compile(torch.nn.Linear(2, 2), backend="eager"), train_dataloaders=loader())
