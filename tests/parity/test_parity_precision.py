"""Precision parity on the CPU: every precision setting and its short aliases, and the real fp16 scaler path."""
from __future__ import annotations

import pytest
import torch
from parity_harness import assert_same_run, run_both, run_program

import ember
from ember.runtime.precision import CPU_FP16_SCALER_ENV


def _plateau(m):
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    return {"optimizer": opt, "lr_scheduler": {
        "scheduler": torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=0, factor=0.5), "monitor": "val_loss"}}


@pytest.mark.parametrize("precision", ["32-true", 32, "64-true", 64, "bf16-mixed", "bf16", "bf16-true", "16-mixed",
                                       16, "16-true"])
def test_precision_settings(tmp_path, precision):
    a, b = run_both(run_program, tmp_path=tmp_path, trainer=dict(precision=precision, max_epochs=2))
    assert_same_run(a, b)
    dtype = {"64-true": torch.float64, 64: torch.float64, "bf16-true": torch.bfloat16, "16-true": torch.float16}
    assert b["weights"]["layer.weight"].dtype == dtype.get(precision, torch.float32)


def test_bf16_mixed_with_plateau_scheduler(tmp_path):
    a, b = run_both(run_program, tmp_path=tmp_path, model=dict(configure=_plateau),
                    trainer=dict(precision="bf16-mixed", max_epochs=4))
    assert_same_run(a, b)
    lrs = [r["trainer"].optimizers[0].param_groups[0]["lr"] for r in (a, b)]
    assert lrs[0] == lrs[1]


def _fp16_program(L, tmp_path, trainer, model=None):
    """The same program on the real fp16 path: Lightning through its MixedPrecision plugin on the CPU, ember
    through its test switch (env EMBER_TEST_CPU_FP16_SCALER=1); both use float16 autocast and GradScaler("cpu")."""
    scales = []

    def capture(L):
        class Scale(L.Callback):
            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                scaler = trainer.precision.scaler if L is ember else trainer.precision_plugin.scaler
                scales.append(scaler.get_scale())

        return [Scale()]

    if L is ember:
        fp16 = dict(precision="16-mixed")
    else:
        from lightning.pytorch.plugins import MixedPrecision

        fp16 = dict(plugins=[MixedPrecision("16-mixed", "cpu")])
    out = run_program(L, tmp_path, model=model, trainer={**trainer, **fp16}, callbacks=capture)
    out["scales"] = scales
    return out


def test_fp16_with_clipping_and_accumulation(tmp_path, monkeypatch):
    # The loss scaler unscales before on_before_optimizer_step and clipping, as in Lightning; steps whose
    # gradients overflow are skipped and the scale backs off, the same steps in both.
    monkeypatch.setenv(CPU_FP16_SCALER_ENV, "1")
    a, b = run_both(_fp16_program, tmp_path=tmp_path,
                    trainer=dict(gradient_clip_val=0.1, accumulate_grad_batches=3, max_epochs=3))
    assert_same_run(a, b)
    assert a["scales"] == b["scales"] and len(b["scales"]) == 12
    assert min(b["scales"]) < 2.0 ** 16  # the real scaler ran, and backed off on overflowing steps


def test_fp16_without_clipping_skips_the_same_steps(tmp_path, monkeypatch):
    monkeypatch.setenv(CPU_FP16_SCALER_ENV, "1")
    a, b = run_both(_fp16_program, tmp_path=tmp_path, trainer=dict(max_epochs=4), model=dict(lr=0.05))
    assert_same_run(a, b)
    assert a["scales"] == b["scales"] and len(set(b["scales"])) > 1
