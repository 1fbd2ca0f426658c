"""Precision settings: names, aliases, errors, the CPU fallback and the "true" precisions' default dtype."""
from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import ember as L
from ember.runtime import precision as P

QUIET = dict(logger=False, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)


@pytest.mark.parametrize("given,name", [(32, "32-true"), ("32", "32-true"), (64, "64-true"), (16, "16-mixed"),
                                        ("16", "16-mixed"), ("bf16", "bf16-mixed"), ("bf16-true", "bf16-true")])
def test_aliases(given, name):
    assert P.canonical(given) == name


@pytest.mark.parametrize("bad", ["fp16", "8-true", 33, None, "mixed"])
def test_unknown_precision_lists_the_allowed_values(bad):
    with pytest.raises(ValueError, match=r"is not known; allowed: '32-true'"):
        L.Trainer(precision=bad if bad is not None else "none", **QUIET)


def test_fp16_mixed_on_cpu_runs_as_bf16_mixed_like_lightning():
    with pytest.warns(UserWarning, match="runs as 'bf16-mixed'"):
        trainer = L.Trainer(precision="16-mixed", accelerator="cpu", **QUIET)
    assert trainer.precision.name == "bf16-mixed" and trainer.precision.scaler is None


def test_mixed_precision_without_cpu_autocast_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(P, "_autocast_supported", lambda device, name: False)
    with pytest.raises(RuntimeError, match="needs torch.autocast.*Use precision='32-true'"):
        L.Trainer(precision="bf16-mixed", accelerator="cpu", **QUIET)


def test_true_precision_sets_the_default_dtype_inside_steps_only():
    seen = []

    class Net(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(2, 1)

        def training_step(self, batch, batch_idx):
            seen.append((torch.get_default_dtype(), batch[0].dtype, self.layer.weight.dtype))
            return self.layer(batch[0]).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    x = torch.randn(4, 2)
    L.Trainer(max_epochs=1, precision="64-true", **QUIET).fit(Net(), DataLoader(TensorDataset(x), batch_size=2))
    assert seen == [(torch.float64, torch.float64, torch.float64)] * 2
    assert torch.get_default_dtype() == torch.float32


def test_bf16_mixed_autocasts_the_step_on_cpu():
    dtypes = []

    class Net(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(2, 1)

        def training_step(self, batch, batch_idx):
            out = self.layer(batch[0])
            dtypes.append(out.dtype)
            return out.float().pow(2).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    x = torch.randn(4, 2)
    L.Trainer(max_epochs=1, precision="bf16-mixed", **QUIET).fit(Net(), DataLoader(TensorDataset(x), batch_size=2))
    assert dtypes == [torch.bfloat16, torch.bfloat16]


def test_trainer_precision_compares_and_prints_as_its_name():
    trainer = L.Trainer(precision="bf16", **QUIET)
    assert trainer.precision == "bf16-mixed" and str(trainer.precision) == "bf16-mixed"
    assert trainer.precision != "32-true"


# ---------------------------------------------------------------------------- the real fp16 GradScaler path
# On the CPU, "16-mixed" normally runs as bf16-mixed without a scaler (as in Lightning). The ember-only switch
# EMBER_TEST_CPU_FP16_SCALER=1 runs the real fp16 path instead (float16 autocast + GradScaler("cpu")), so the
# scaler code runs in CI. GradScaler starts at 2**16 and doubles after 2000 clean steps (torch's defaults).
INIT_SCALE, GROWTH_INTERVAL = 2.0 ** 16, 2000


@pytest.fixture
def cpu_fp16(monkeypatch):
    monkeypatch.setenv(P.CPU_FP16_SCALER_ENV, "1")
    # One intra-op thread: these tiny steps gain nothing from two, and on a loaded 2-core machine two
    # threads make the 2000-step test 5x slower (measured 1.4 s vs 6-8 s).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Fp16Net(L.LightningModule):
    """A linear regression that records, per batch, the scale, the weights and the gradients its hooks saw."""

    def __init__(self, lr=1.0, momentum=0.0, blow_up_at=()):
        super().__init__()
        torch.manual_seed(0)
        self.layer = torch.nn.Linear(3, 1)
        with torch.no_grad():
            self.layer.bias.zero_()  # small errors: the scaled fp16 gradients stay below fp16's max (65504)
        self.lr, self.momentum, self.blow_up_at = lr, momentum, set(blow_up_at)
        self.scales, self.weights, self.hook_grads, self.step_dtypes = [], [], [], []

    def training_step(self, batch, batch_idx):
        x, y = batch
        if batch_idx in self.blow_up_at:
            x = x * 1e4  # finite fp32 loss, but the fp16 backward overflows once the loss is scaled
        out = self.layer(x)
        self.step_dtypes.append(out.dtype)
        return torch.nn.functional.mse_loss(out.float(), y)

    def on_before_optimizer_step(self, optimizer):
        self.hook_grads.append(torch.cat([p.grad.flatten().clone() for p in self.parameters()]))

    def on_train_batch_start(self, batch, batch_idx):
        self.weights.append(self._flat())

    def on_train_batch_end(self, outputs, batch, batch_idx):
        self.scales.append(self.trainer.precision.scaler.get_scale())

    def _flat(self):
        return torch.cat([p.detach().flatten().clone() for p in self.parameters()])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=self.momentum)


def _fp16_data(n_batches, scale=0.1, batch_size=4):
    g = torch.Generator().manual_seed(1)
    x = scale * torch.randn(n_batches * batch_size, 3, generator=g)
    return DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=batch_size)


def _fp16_fit(model, n_batches, root=None, ckpt_path=None, callbacks=None, **kw):
    trainer = L.Trainer(max_epochs=1, precision="16-mixed", accelerator="cpu", default_root_dir=root,
                        callbacks=callbacks, **{**QUIET, **kw})
    trainer.fit(model, _fp16_data(n_batches), ckpt_path=ckpt_path)
    return trainer


def _true_grad(weights, batch):
    """The fp32 gradient of the batch loss at ``weights`` (what the unscaled fp16 gradient approximates)."""
    layer = torch.nn.Linear(3, 1)
    with torch.no_grad():
        layer.weight.copy_(weights[:3].view(1, 3))
        layer.bias.copy_(weights[3:])
    x, y = batch
    torch.nn.functional.mse_loss(layer(x), y).backward()
    return torch.cat([layer.weight.grad.flatten(), layer.bias.grad.flatten()])


def test_the_test_switch_runs_fp16_autocast_with_a_cpu_grad_scaler(cpu_fp16):
    trainer = L.Trainer(precision="16-mixed", accelerator="cpu", **QUIET)
    assert trainer.precision.name == "16-mixed"
    assert isinstance(trainer.precision.scaler, torch.amp.GradScaler) and trainer.precision.scaler.is_enabled()
    model = Fp16Net()
    _fp16_fit(model, 3)
    assert model.step_dtypes == [torch.float16] * 3


def test_fp16_gradients_are_unscaled_before_the_hooks_and_clipping(cpu_fp16):
    clip = 1e-3
    model = Fp16Net(lr=1.0)
    _fp16_fit(model, 6, gradient_clip_val=clip)
    assert model.scales == [INIT_SCALE] * 6  # no overflow on this data: every step was taken, at scale 2**16
    loader = list(_fp16_data(6))
    assert len(model.weights) == len(model.hook_grads) == len(loader) == 6
    for i, (before, seen) in enumerate(zip(model.weights, model.hook_grads)):
        true = _true_grad(before, loader[i])
        # on_before_optimizer_step saw the true gradient, not 65536 times it (fp16 forward: ~1e-3 relative)
        torch.testing.assert_close(seen, true, rtol=2e-2, atol=1e-4)
        assert true.norm() > 10 * clip
        after = model.weights[i + 1] if i + 1 < len(model.weights) else model._flat()
        # SGD(lr=1): the update is the clipped gradient, of norm `clip`. Clipping the still-scaled gradient
        # would have moved the weights by clip / 65536.
        assert float((before - after).norm()) == pytest.approx(clip, rel=1e-3)


def test_an_inf_gradient_skips_the_step_and_halves_the_scale(cpu_fp16):
    model = Fp16Net(lr=0.1, momentum=0.9, blow_up_at={3})
    trainer = _fp16_fit(model, 6)
    assert model.scales == [INIT_SCALE] * 3 + [INIT_SCALE / 2] * 3  # backed off once, at batch 3
    assert not torch.isfinite(model.hook_grads[3]).all()  # the hooks saw the overflow
    final = model._flat()
    weights = model.weights + [final]
    assert torch.equal(weights[4], weights[3])  # batch 3's step was skipped: no update, no momentum
    for i in (0, 1, 2, 4, 5):
        assert not torch.equal(weights[i + 1], weights[i])
    assert trainer.global_step == 6  # a skipped step still counts, as in Lightning
    assert torch.isfinite(final).all()


def test_the_scale_grows_after_2000_clean_steps_and_backs_off_on_overflow(cpu_fp16):
    n = GROWTH_INTERVAL + 60
    model = Fp16Net(lr=0.01, blow_up_at={GROWTH_INTERVAL + 30})
    _fp16_fit(model, n)
    expected = ([INIT_SCALE] * (GROWTH_INTERVAL - 1) + [2 * INIT_SCALE] * 31 + [INIT_SCALE] * 30)
    assert model.scales == expected


class _SaveAt(L.Callback):
    def __init__(self, step, path):
        self.step, self.path = step, path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            trainer.save_checkpoint(self.path)


def test_the_scaler_state_survives_an_exact_resume(cpu_fp16, tmp_path):
    from ember.checkpoint import load_file

    blow_ups = {2, 4}
    straight = Fp16Net(lr=0.1, momentum=0.9, blow_up_at=blow_ups)
    path = str(tmp_path / "mid.ckpt")
    _fp16_fit(straight, 10, root=tmp_path, callbacks=[_SaveAt(6, path)])
    saved = load_file(path)["native_amp_scaling_state"]
    assert saved["scale"] == INIT_SCALE / 4 and saved["_growth_tracker"] == 1  # two back-offs, one clean step since

    resumed = Fp16Net(lr=0.1, momentum=0.9, blow_up_at=blow_ups)
    trainer = _fp16_fit(resumed, 10, root=tmp_path / "r", ckpt_path=path)
    assert resumed.scales == straight.scales[6:]
    assert torch.equal(resumed._flat(), straight._flat())
    assert trainer.precision.scaler.state_dict() == {**saved, "_growth_tracker": 5}

    # Negative control: without the scaler's state the resumed run starts again at 2**16 and ends elsewhere.
    ckpt = load_file(path)
    del ckpt["native_amp_scaling_state"]
    torch.save(ckpt, tmp_path / "no_scaler.ckpt")
    control = Fp16Net(lr=0.1, momentum=0.9, blow_up_at=blow_ups)
    _fp16_fit(control, 10, root=tmp_path / "c", ckpt_path=str(tmp_path / "no_scaler.ckpt"))
    assert control.scales[0] == INIT_SCALE and control.scales != straight.scales[6:]
