"""SpikeDetection against Lightning 2.6.6 on a synthetic loss: which batch it flags, the skip file it writes,
the exception that ends the fit, and how far training got."""
from __future__ import annotations

import json

import pytest
import torch
from parity_harness import boring_class, quiet, run_both, weights


def _spike_program(L, tmp_path, losses, **spike_kw):
    def training_step(self, batch, batch_idx):
        x, y = batch
        real = torch.nn.functional.mse_loss(self(x), y)
        # the synthetic loss keeps the graph, so the optimizer still steps on it
        return real * 0 + losses[self.trainer.global_step]

    model = boring_class(L, n_train=4 * len(losses), training_step=training_step)()
    path = tmp_path / f"{L.__name__}" / "skips.json"
    cb = L.pytorch.callbacks.SpikeDetection(exclude_batches_path=str(path), **spike_kw)
    trainer = L.Trainer(**quiet(tmp_path, max_epochs=1, limit_val_batches=0, callbacks=[cb]))
    # ember stops on a NaN loss before the optimizer step (NonFiniteLossError, README's known differences);
    # switched off here so that the NaN reaches SpikeDetection as in Lightning (which has no such attribute).
    trainer.check_finite_loss = False
    try:
        trainer.fit(model)
        raised = None
    except Exception as exc:  # noqa: BLE001 - the type is compared by name between the frameworks
        raised = (type(exc).__name__, str(exc))
    return {"raised": raised, "bad_batches": list(cb.bad_batches), "global_step": trainer.global_step,
            "file": json.loads(path.read_text()) if path.exists() else None, "weights": weights(model)}


SMOOTH = [1.0, 0.9, 0.95, 0.8, 0.85, 0.7, 0.75, 0.6, 0.65, 0.5]


@pytest.mark.parametrize("case,losses,kw,flagged", [
    ("rtol", SMOOTH[:6] + [2.7] + SMOOTH[7:], {}, 6),  # 2.7 - 0.8667 (the mean) >= 2 * 0.8667
    ("below rtol", SMOOTH[:6] + [2.5] + SMOOTH[7:], {}, None),
    ("atol too", SMOOTH[:6] + [2.7] + SMOOTH[7:], {"atol": 5.0}, None),
    ("nan", SMOOTH[:4] + [float("nan")] + SMOOTH[5:], {}, 4),
    ("nan allowed", SMOOTH[:4] + [float("nan")] + SMOOTH[5:], {"finite_only": False}, None),
    ("warmup", [1.0, 9.0] + SMOOTH[2:], {"warmup": 2}, None),
    ("window", [1.0] * 5 + [1.1, 1.2, 1.3, 1.4, 3.9], {"window": 2, "rtol": 1.0}, 9),
    ("max", [1.0, 1.1, 1.2, 1.3, 0.01, 1.4, 1.5, 1.6, 1.7, 1.8], {"mode": "max", "rtol": 0.9}, 4),
])
def test_spike_detection_flags_the_batch_lightning_flags(tmp_path, case, losses, kw, flagged):
    a, b = run_both(_spike_program, tmp_path=tmp_path, losses=losses, **kw)
    assert a["raised"] == b["raised"] and a["bad_batches"] == b["bad_batches"] and a["file"] == b["file"]
    assert a["global_step"] == b["global_step"]
    for k in a["weights"]:
        torch.testing.assert_close(a["weights"][k], b["weights"][k], rtol=0, atol=0, equal_nan=True)
    if flagged is None:
        assert b["raised"] is None and b["file"] is None and b["global_step"] == len(losses)
    else:
        assert b["raised"] == ("TrainingSpikeException", f"Training spike detected in batch {flagged}")
        assert b["bad_batches"] == b["file"] == [flagged - 1, flagged]
        assert b["global_step"] == flagged + 1  # the spiking batch stepped before on_train_batch_end


def test_spike_detection_checks_its_arguments_and_keeps_its_state():
    from ember.callbacks import SpikeDetection

    with pytest.raises(ValueError, match=r"mode='mean'"):
        SpikeDetection(mode="mean")
    with pytest.raises(ValueError, match=r"window=0"):
        SpikeDetection(window=0)
    cb = SpikeDetection(window=3)
    for v in (1.0, 2.0, 3.0, 4.0):
        cb._accept(torch.tensor(v))
    assert float(cb.running_mean()) == 3.0  # the last three
    again = SpikeDetection(window=3)
    again.load_state_dict(cb.state_dict())
    assert float(again.running_mean()) == 3.0 and again.last_val == 4.0
