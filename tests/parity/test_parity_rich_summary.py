"""RichModelSummary against Lightning 2.6.6: the rows (name, type, params, mode) and the parameter counts it
prints. ember draws no FLOPs column (Lightning's counts need example_input_array and are 0 otherwise)."""
from __future__ import annotations

import contextlib
import io
import warnings

import pytest
import torch
from parity_harness import FRAMEWORKS, boring_class, quiet


def _summary_program(L, tmp_path, **summary_kw):
    class WithExtra(boring_class(L)):
        def __init__(self):
            super().__init__()
            self.extra = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.BatchNorm1d(5))
            self.extra[0].weight.requires_grad_(False)
            self.extra[1].eval()

    out = io.StringIO()
    trainer = L.Trainer(**quiet(tmp_path, max_epochs=1, limit_train_batches=1, limit_val_batches=0,
                                callbacks=[L.pytorch.callbacks.RichModelSummary(**summary_kw)]))
    with warnings.catch_warnings(), contextlib.redirect_stdout(out):
        warnings.simplefilter("ignore")
        trainer.fit(WithExtra())
    return out.getvalue()


def _rows(text):
    cells = [[c.strip() for c in line.strip("│┃ ").split("│")] for line in text.splitlines() if line.startswith("│")]
    return [c[:5] for c in cells]  # index, name, type, params, mode (Lightning adds FLOPs)


def _totals(text):
    return [line.strip() for line in text.splitlines() if line.split(":")[0].strip() in (
        "Trainable params", "Non-trainable params", "Total params", "Total estimated model params size (MB)",
        "Modules in train mode", "Modules in eval mode")]


@pytest.mark.parametrize("max_depth", [1, 2])
def test_rich_model_summary_prints_lightnings_rows_and_counts(tmp_path, max_depth):
    lightning_out, ember_out = (_summary_program(FRAMEWORKS[name], tmp_path, max_depth=max_depth)
                                for name in ("lightning", "ember"))
    assert _rows(ember_out) == _rows(lightning_out)
    assert _totals(ember_out) == _totals(lightning_out)
    expected = [["0", "layer", "Linear", "4", "train"], ["1", "extra", "Sequential", "30", "train"]]
    if max_depth == 2:
        expected += [["2", "extra.0", "Linear", "20", "train"], ["3", "extra.1", "BatchNorm1d", "10", "eval"]]
    assert _rows(ember_out) == expected
    assert _totals(ember_out) == ["Trainable params: 19", "Non-trainable params: 15", "Total params: 34",
                                  "Total estimated model params size (MB): 0.000", "Modules in train mode: 3",
                                  "Modules in eval mode: 1"]


def test_rich_model_summary_replaces_the_default_summary(tmp_path):
    out = _summary_program(FRAMEWORKS["ember"], tmp_path, max_depth=1)
    assert out.count("Total params") == 1  # no plain ModelSummary table next to the rich one
    assert _summary_program(FRAMEWORKS["ember"], tmp_path, max_depth=0) == ""
