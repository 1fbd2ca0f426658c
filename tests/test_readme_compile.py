"""The README's examples for torch.compile, OOM microbatching and SLURM auto-requeue run as written."""
from __future__ import annotations

import pathlib
import re

import torch

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
SECTIONS = ("### torch.compile\n", "### Out of memory: microbatches\n", "### SLURM auto-requeue: SIGUSR1\n")


def example(heading: str) -> str:
    text = README.read_text()
    start = text.index(heading)
    block = re.search(r"```python\n(.*?)```", text[start:], re.S)
    assert block is not None, heading
    return block.group(1)


def test_readme_examples_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # default_root_dir is the working directory
    namespace: dict = {}
    for heading in SECTIONS:  # the later examples reuse the first one's Regressor and loader
        exec(compile(example(heading), f"README.md {heading.strip()}", "exec"), namespace)
        trainer = namespace["trainer"]
        assert trainer.global_step == 8, heading  # 64 rows / 16 per batch, 2 epochs
        assert torch.isfinite(trainer.callback_metrics["train_loss"]), heading
    assert namespace["trainer"].cluster_environment.auto_requeue is True
