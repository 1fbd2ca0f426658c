"""SLURM auto-requeue: SIGUSR1 saves a resumable checkpoint, runs `scontrol requeue $SLURM_JOB_ID`, exits; the
requeued job resumes with ckpt_path="last" to the very weights of a run that was never stopped.

The job is a real child process; `scontrol` is a fake on PATH that records its arguments; the signal is sent
once the child says it reached the step (a line on its stdout), and the child waits for it on an event.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import torch

import ember as L
from ember.plugins.environments import SLURMEnvironment

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="needs POSIX signals")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

JOB = r'''
import os, signal, sys, time
import torch
from torch.utils.data import DataLoader, TensorDataset
import ember as L
from ember.callbacks import Callback, ModelCheckpoint
from ember.plugins.environments import SLURMEnvironment

torch.set_num_threads(1)
root, mode, out = sys.argv[1], sys.argv[2], sys.argv[3]


class Net(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Dropout(0.1),
                                       torch.nn.Linear(32, 1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.net(x), y)
        self.log("train_loss", loss, on_epoch=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)


class WaitForSignalAt(Callback):
    """At global step 7 (inside epoch 1), say so and wait until the requeue signal has been handled."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if mode == "signalled" and trainer.global_step == 7:
            print("ready", flush=True)
            deadline = time.monotonic() + 120
            while not trainer.should_stop and time.monotonic() < deadline:
                time.sleep(0.001)  # woken by the signal: the handler sets should_stop


L.seed_everything(5)
g = torch.Generator().manual_seed(0)
x = torch.randn(48, 8, generator=g)
loader = DataLoader(TensorDataset(x, x[:, :1] - x[:, 1:2]), batch_size=8, shuffle=True)
trainer = L.Trainer(max_epochs=3, logger=False, enable_progress_bar=False, enable_model_summary=False,
                    default_root_dir=root, callbacks=[WaitForSignalAt(), ModelCheckpoint(dirpath=root + "/ckpt", save_last=True)],
                    plugins=[SLURMEnvironment(auto_requeue=True, requeue_signal=signal.SIGUSR1)])
model = Net()
trainer.fit(model, loader, ckpt_path="last")
torch.save({"model": model.state_dict(), "optimizer": trainer.optimizers[0].state_dict(),
            "step": trainer.global_step, "epoch": trainer.current_epoch,
            "loss": float(trainer.callback_metrics["train_loss_epoch"])}, out)
print("fit done", flush=True)
'''


def job_env(tmp_path):
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    scontrol = fake_bin / "scontrol"
    scontrol.write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$SCONTROL_RECORD"\n')
    scontrol.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(PATH=f"{fake_bin}{os.pathsep}{env.get('PATH', '')}", SLURM_JOB_ID="4242",
               SCONTROL_RECORD=str(tmp_path / "scontrol.txt"), PYTHONPATH=REPO, PYTHONWARNINGS="ignore")
    return env


def run_job(tmp_path, root, mode, out, env):
    return subprocess.Popen([sys.executable, str(tmp_path / "job.py"), str(root), mode, str(out)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_sigusr1_saves_requeues_exits_and_the_requeued_job_resumes_exactly(tmp_path):
    (tmp_path / "job.py").write_text(JOB)
    env = job_env(tmp_path)
    straight = run_job(tmp_path, tmp_path / "straight", "straight", tmp_path / "straight.pt", env)
    out, err = straight.communicate(timeout=600)
    assert straight.returncode == 0, err
    assert not (tmp_path / "scontrol.txt").exists()  # no signal, no requeue

    job = run_job(tmp_path, tmp_path / "job", "signalled", tmp_path / "never.pt", env)
    assert job.stdout.readline().strip() == "ready"  # the event: the child is waiting at step 7
    job.send_signal(signal.SIGUSR1)
    out, err = job.communicate(timeout=600)
    assert job.returncode == 128 + signal.SIGUSR1, err
    assert "fit done" not in out and not (tmp_path / "never.pt").exists()
    assert (tmp_path / "scontrol.txt").read_text().split() == ["requeue", "4242"]
    assert "received SIGUSR1" in err and "requeued SLURM job 4242" in err
    last = torch.load(tmp_path / "job" / "ckpt" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 7 and last["epoch"] == 1  # saved at the step boundary where it stopped
    assert not [n for n in os.listdir(tmp_path / "job" / "ckpt") if n.endswith(".part")]

    # the requeued job: the same command, which passes ckpt_path="last"
    requeued = run_job(tmp_path, tmp_path / "job", "requeued", tmp_path / "resumed.pt", env)
    out, err = requeued.communicate(timeout=600)
    assert requeued.returncode == 0, err
    a, b = torch.load(tmp_path / "straight.pt", weights_only=True), torch.load(tmp_path / "resumed.pt", weights_only=True)
    assert (a["step"], a["epoch"]) == (b["step"], b["epoch"]) == (18, 3)
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    for idx, state in a["optimizer"]["state"].items():
        for key, value in state.items():
            assert torch.equal(value, b["optimizer"]["state"][idx][key]), (idx, key)
    assert a["loss"] == b["loss"]  # the logged epoch mean too: the resumed epoch kept its accumulators


def test_slurm_environment_arguments_and_job_ids(monkeypatch):
    env = SLURMEnvironment()
    assert env.auto_requeue is True and env.requeue_signal == signal.SIGUSR1
    assert SLURMEnvironment(requeue_signal=signal.SIGUSR2).requeue_signal == signal.SIGUSR2
    with pytest.raises(ValueError, match=r"SLURMEnvironment\(requeue_signal=SIGTERM\) is not valid"):
        SLURMEnvironment(requeue_signal=signal.SIGTERM)
    with pytest.raises(ValueError, match=r"SLURMEnvironment\(auto_requeue='yes'\) is not valid"):
        SLURMEnvironment(auto_requeue="yes")
    for key in [k for k in os.environ if k.startswith("SLURM_")]:
        monkeypatch.delenv(key)
    assert env.job_id() is None and env.requeue() is False
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    assert env.job_id() == "77"
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "70")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    assert env.job_id() == "70_3"
    monkeypatch.setenv("SLURM_NTASKS", "4")
    monkeypatch.setenv("SLURM_PROCID", "2")
    assert (env.world_size(), env.global_rank()) == (4, 2)


def test_lightnings_import_path_and_the_plugin_argument():
    import ember.pytorch.plugins.environments as lightning_path

    assert lightning_path.SLURMEnvironment is SLURMEnvironment
    assert L.pytorch.plugins.environments.SLURMEnvironment is SLURMEnvironment  # attribute access, no import
    trainer = L.Trainer(plugins=[SLURMEnvironment(auto_requeue=False)], logger=False)
    assert trainer.cluster_environment.auto_requeue is False
    assert L.Trainer(plugins=SLURMEnvironment(), logger=False).cluster_environment.requeue_signal == signal.SIGUSR1
    with pytest.raises(NotImplementedError, match=r"Trainer\(plugins=\[MixedPrecision\]\) is not implemented in ember; "
                                                  r"the only plugin it accepts is .*SLURMEnvironment"):
        class MixedPrecision:
            pass
        L.Trainer(plugins=[MixedPrecision()])
    with pytest.raises(ValueError, match="got 2 SLURMEnvironment objects"):
        L.Trainer(plugins=[SLURMEnvironment(), SLURMEnvironment()])
