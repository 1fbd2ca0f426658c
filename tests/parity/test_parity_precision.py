"""Precision parity on the CPU: every precision setting and its short aliases."""
from __future__ import annotations

import pytest
import torch
from parity_harness import assert_same_run, run_both, run_program


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


def test_fp16_with_clipping_and_accumulation(tmp_path):
    # The loss scaler unscales before on_before_optimizer_step and clipping, as in Lightning.
    a, b = run_both(run_program, tmp_path=tmp_path,
                    trainer=dict(precision="16-mixed", gradient_clip_val=0.1, accumulate_grad_batches=3))
    assert_same_run(a, b)
