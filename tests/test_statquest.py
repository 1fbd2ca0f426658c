"""The tutorial's numbers: the default suggestion trains, 'steepest' matches Lightning, fit matches Lightning."""
import os
import subprocess
import sys

import pytest
import torch

import ember as L
from statquest_model import LEAST_SQUARES_FINAL_BIAS, QUIET, dataloader, make_class


def _lr_find(framework, **trainer_kwargs):
    model = make_class(framework)()
    trainer = framework.Trainer(max_epochs=34, **{**QUIET, **trainer_kwargs})
    tuner = framework.pytorch.tuner.Tuner(trainer)
    result = tuner.lr_find(model, train_dataloaders=dataloader(), min_lr=0.001, max_lr=1.0, early_stop_threshold=None)
    return model, trainer, result


def test_default_suggestion_trains_final_bias_to_the_least_squares_optimum(in_tmp):
    model, trainer, result = _lr_find(L)
    new_lr = result.suggestion()
    model.learning_rate = new_lr
    trainer.fit(model, train_dataloaders=dataloader())
    assert abs(model.final_bias.item() - LEAST_SQUARES_FINAL_BIAS) < 0.01, (new_lr, model.final_bias.item())
    assert trainer.global_step == 102 and trainer.current_epoch == 34


def test_steepest_suggestion_is_lightnings_0_00214(in_tmp):
    _, _, result = _lr_find(L)
    assert round(result.suggestion(method="steepest"), 5) == 0.00214
    assert len(result.results["lr"]) == 100 and len(result.results["loss"]) == 100


def test_lr_find_records_the_same_candidates_and_smoothed_losses_as_lightning(in_tmp):
    lightning = pytest.importorskip("lightning")
    _, _, ours = _lr_find(L)
    _, _, theirs = _lr_find(lightning)
    assert ours.results["lr"] == theirs.results["lr"]  # exact float equality, all 100
    assert ours.results["loss"] == theirs.results["loss"]
    assert ours.suggestion(method="steepest") == theirs.suggestion()


@pytest.mark.parametrize("lr", [0.1, 0.00214])
def test_fit_gives_the_same_final_bias_as_lightning_for_a_fixed_lr(in_tmp, lr):
    lightning = pytest.importorskip("lightning")
    results = {}
    for name, framework in (("ember", L), ("lightning", lightning)):
        model = make_class(framework)()
        model.learning_rate = lr
        trainer = framework.Trainer(max_epochs=34, **QUIET)
        trainer.fit(model, train_dataloaders=dataloader())
        results[name] = (model.final_bias.detach().clone(), trainer.global_step, trainer.current_epoch)
    assert torch.equal(results["ember"][0], results["lightning"][0])
    assert results["ember"][1:] == results["lightning"][1:] == (102, 34)
    if lr == 0.00214:  # the point: Lightning's own suggestion barely moves the bias in 34 epochs
        assert abs(results["ember"][0].item() - (-2.17)) < 0.01


def test_statquest_demo_prints_both_suggestions_and_writes_four_plots(tmp_path):
    pytest.importorskip("seaborn")
    script = os.path.join(os.path.dirname(__file__), "..", "examples", "statquest.py")
    out = tmp_path / "plots"
    proc = subprocess.run([sys.executable, script, "--out", str(out)], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "lr_find() suggests" in proc.stdout and "'steepest' rule would suggest 0.00214" in proc.stdout
    final = [line for line in proc.stdout.splitlines() if line.startswith("final_bias = ")]
    assert final and abs(float(final[0].split()[2]) - LEAST_SQUARES_FINAL_BIAS) < 0.01
    pngs = sorted(p.name for p in out.iterdir())
    assert pngs == ["1_pretrained_fit.png", "2_untrained_fit.png", "3_lr_find.png", "4_trained_fit.png"]
    for name in pngs:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
