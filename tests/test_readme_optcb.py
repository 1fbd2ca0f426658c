"""The README's example for the optimisation callbacks runs as written."""
from __future__ import annotations

import os
import re

import torch

README = os.path.join(os.path.dirname(__file__), os.pardir, "README.md")


def test_the_readme_optimisation_example_runs(tmp_path, monkeypatch):
    text = open(README, encoding="utf-8").read()
    section = text[text.index("## Optimisation callbacks and the batch-size finder"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    model, trainer, size = scope["model"], scope["trainer"], scope["size"]
    # 256 rows never run out of memory: binsearch doubles to max_val, runs it, and takes the 5% margin (60)
    assert size == model.batch_size == 60
    assert trainer.accumulate_grad_batches == 4 and trainer.current_epoch == 4
    steps_per_epoch = -(-256 // 60)  # 5 batches
    assert trainer.global_step == 2 * steps_per_epoch + 2 * 2  # epochs 2, 3: windows of 4, the last one short
    assert not os.path.exists(tmp_path / "checkpoints" / "on_exception.ckpt")
