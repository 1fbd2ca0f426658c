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
