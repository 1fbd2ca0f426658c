"""The fine-tuning, pruning and monitor callbacks on their own: the README example, and bad input that must
fail clearly before training (tests/parity/ compares their behaviour with Lightning)."""
from __future__ import annotations

import csv
import pathlib
import re

import pytest
import torch

import ember as L
from ember.callbacks import BackboneFinetuning, BaseFinetuning, ThroughputMonitor

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _readme_example() -> str:
    text = README.read_text()
    section = text[text.index("## Fine-tuning, pruning and monitors"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_example_runs_every_new_callback(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(_readme_example(), "README.md", "exec"), namespace)  # noqa: S102 - our own README
    trainer, out = namespace["trainer"], capsys.readouterr().out
    assert out.strip().endswith("96")
    assert "backbone.0" in out and "Trainable params" in out  # the rich summary, depth 2
    groups = trainer.optimizers[0].param_groups
    assert len(groups) == 2 and groups[1]["lr"] == pytest.approx(0.05 * 0.1 * 1.5)  # unfrozen at 1, x1.5 at 2
    # pruned after each epoch by 20% of what was left, globally over the two weights (128 + 16), then folded
    # into them: 29 of 144, 23 of the 115 left, 18 of the 92 left
    weights = [trainer.lightning_module.backbone[0].weight, trainer.lightning_module.head.weight]
    assert [w.numel() for w in weights] == [128, 16]
    assert sum(int((w == 0).sum()) for w in weights) == 29 + 23 + 18
    with open(pathlib.Path(trainer.log_dir) / "metrics.csv") as f:
        columns = next(csv.reader(f))
    assert "DeviceStatsMonitor.on_train_batch_start/cpu_percent" in columns
    assert "train/device/samples_per_sec" in columns and "train/device/flops_per_sec" in columns


def test_backbone_finetuning_refuses_bad_arguments_and_a_module_without_backbone(tmp_path):
    with pytest.raises(ValueError, match=r"unfreeze_backbone_at_epoch=-1\): expected an epoch number"):
        BackboneFinetuning(unfreeze_backbone_at_epoch=-1)
    with pytest.raises(TypeError, match=r"lambda_func=2"):
        BackboneFinetuning(lambda_func=2)

    class NoBackbone(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(2, 1)

        def training_step(self, batch, batch_idx):
            return self.layer(batch[0]).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    class Freezer(BackboneFinetuning):
        def freeze_before_training(self, pl_module):  # the module has nothing to freeze: fail in on_fit_start
            pass

    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[Freezer()], default_root_dir=str(tmp_path))
    with pytest.raises(ValueError, match=r"BackboneFinetuning needs NoBackbone.backbone, an nn.Module; got NoneType"):
        trainer.fit(NoBackbone(), train_dataloaders=[(torch.zeros(1, 2), torch.zeros(1, 1))])

    class Unfinished(BaseFinetuning):
        pass

    with pytest.raises(NotImplementedError, match=r"Unfinished must override freeze_before_training"):
        Unfinished().freeze_before_training(NoBackbone())


def test_throughput_monitor_refuses_bad_arguments():
    with pytest.raises(TypeError, match=r"batch_size_fn=4"):
        ThroughputMonitor(batch_size_fn=4)
    with pytest.raises(ValueError, match=r"window_size=1"):
        ThroughputMonitor(batch_size_fn=len, window_size=1)
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'windows'"):
        ThroughputMonitor(batch_size_fn=len, windows=3)


def test_new_callbacks_load_lazily():
    import subprocess
    import sys

    code = ("import sys, ember.callbacks as c; c.ModelPruning; c.SpikeDetection; "
            "print(sorted(m for m in ('psutil', 'rich', 'torch.utils.flop_counter') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"  # psutil, rich and the flop counter load only when a callback needs them
