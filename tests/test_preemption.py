"""Training survives kill -9 at any moment and stops cleanly on SIGTERM, resuming to the exact same weights.

The runs happen in child processes of a small fork server (one Python that
imported torch and ember once), so each of the many runs starts in
milliseconds; every run is a separate process that the test kills for real.
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from ember.checkpoint import TMP_SUFFIX, load_file

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork and POSIX signals")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TRAINING = r'''
import os, sys
import torch
from torch.utils.data import DataLoader, TensorDataset
import ember as L
from ember.callbacks import Callback, ModelCheckpoint

torch.set_num_threads(1)


class Net(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(32, 256), torch.nn.ReLU(), torch.nn.Dropout(0.2),
                                       torch.nn.Linear(256, 256), torch.nn.ReLU(), torch.nn.Linear(256, 1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.net(x), y)
        self.log("train_loss", loss, on_epoch=True)
        return loss

    def configure_optimizers(self):
        opt = torch.optim.Adam(self.parameters(), lr=1e-3)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": torch.optim.lr_scheduler.StepLR(opt, 7, 0.9),
                                                   "interval": "step"}}


class Progress(Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        print(f"step {trainer.global_step}", flush=True)
        if trainer.global_step == int(os.environ.get("EMBER_TEST_SELF_SIGTERM", "-1")):
            os.kill(os.getpid(), 15)


def die_in_save(n, stage):
    """SIGKILL this process from inside its n-th checkpoint save, at ``stage`` ("written": the temp file is
    complete but not fsync'ed; "synced": fsync'ed but not renamed), through ember's save test hook."""
    import signal
    import ember.checkpoint

    count = [0]

    def hook(where, tmp):
        count[0] += where == "written"
        if count[0] == n and where == stage:
            print(f"dying in save {n} at {stage}: {os.path.basename(tmp)}", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)

    ember.checkpoint.save_test_hook = hook


def train(root, every_step=True, epochs=6, final=None, die_in=None):
    if die_in is not None:
        die_in_save(*die_in)
    L.seed_everything(3)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16 * 8, 32, generator=g)
    loader = DataLoader(TensorDataset(x, x[:, :1] * 2 - x[:, 1:2]), batch_size=8, shuffle=True)
    ckpt = ModelCheckpoint(dirpath=os.path.join(root, "ckpt"), every_n_train_steps=1 if every_step else None,
                           save_last=True)
    trainer = L.Trainer(max_epochs=epochs, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[Progress(), ckpt], default_root_dir=root)
    model = Net()
    trainer.fit(model, loader, ckpt_path="last")
    print("fit done", flush=True)
    if final:
        torch.save({"model": model.state_dict(), "optimizer": trainer.optimizers[0].state_dict(),
                    "step": trainer.global_step, "epoch": trainer.current_epoch}, final)
'''

SERVER = r'''
import json, os, sys, traceback, warnings
warnings.filterwarnings("ignore")
sys.path.insert(0, sys.argv[1])
exec(open(sys.argv[2]).read())
# One short run here, so that every forked child starts with the lazy imports and first-call set-up done.
import tempfile
with tempfile.TemporaryDirectory() as warm:
    _out, _err = os.dup(1), os.dup(2)
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
    os.dup2(1, 2)
    train(warm, epochs=1)
    os.dup2(_out, 1)
    os.dup2(_err, 2)
for line in sys.stdin:
    cmd = json.loads(line)
    pid = os.fork()
    if pid == 0:
        fd = os.open(cmd["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        code = 0
        try:
            train(**cmd["args"])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            traceback.print_exc()
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    print(json.dumps({"pid": pid}), flush=True)
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"exit": os.waitstatus_to_exitcode(status)}), flush=True)
'''


class ForkServer:
    def __init__(self, tmp_path):
        (tmp_path / "training.py").write_text(TRAINING)
        (tmp_path / "server.py").write_text(SERVER)
        self.proc = subprocess.Popen([sys.executable, str(tmp_path / "server.py"), REPO, str(tmp_path / "training.py")],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)

    def start(self, log, **args) -> int:
        self.proc.stdin.write(json.dumps({"log": str(log), "args": args}) + "\n")
        self.proc.stdin.flush()
        return json.loads(self._line())["pid"]

    def wait(self) -> int:
        return json.loads(self._line())["exit"]

    def run(self, log, **args) -> int:
        self.start(log, **args)
        return self.wait()

    def _line(self) -> str:
        line = self.proc.stdout.readline()
        assert line, "the fork server died"
        return line

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


@pytest.fixture
def server(tmp_path):
    srv = ForkServer(tmp_path)
    yield srv
    srv.close()


def final_state(path):
    return torch.load(path, weights_only=True)


def assert_same_final(a, b):
    assert (a["step"], a["epoch"]) == (b["step"], b["epoch"])
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    for idx, state in a["optimizer"]["state"].items():
        for key, value in state.items():
            assert torch.equal(value, b["optimizer"]["state"][idx][key]), (idx, key)


def text_after(path, offset: int) -> str:
    """What a child wrote to its log after ``offset`` ("" while the file does not exist yet)."""
    try:
        with open(path) as fh:
            fh.seek(offset)
            return fh.read()
    except FileNotFoundError:
        return ""


def wait_for(predicate, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.0005)
    return False


def test_training_survives_kill_9_at_random_moments(server, tmp_path):
    # How often a run saves does not change its weights: the reference saves once per epoch only.
    assert server.run(tmp_path / "ref.log", root=str(tmp_path / "ref"), every_step=False,
                      final=str(tmp_path / "ref.pt")) == 0
    reference = final_state(tmp_path / "ref.pt")

    root, ckpt_dir = tmp_path / "run", tmp_path / "run" / "ckpt"
    rng = random.Random(1234)
    kills = in_save = 0
    last_step = 0
    log = tmp_path / "run.log"
    for round_ in range(40):
        size = log.stat().st_size if log.exists() else 0
        if round_ % 2:
            # Die inside a save: the child kills itself from ember's save test hook, in its 1st to 4th save,
            # with the temp file complete but not yet fsync'ed, or fsync'ed but not yet renamed.
            n, stage = rng.randint(1, 4), rng.choice(["written", "synced"])
            pid = server.start(log, root=str(root), die_in=[n, stage])
            code = server.wait()
            text = text_after(log, size)
            assert code == -signal.SIGKILL and f"dying in save {n} at {stage}" in text, (code, text[-2000:])
            names = os.listdir(ckpt_dir)
            assert any(n.endswith(TMP_SUFFIX) and f"-{pid}-" in n for n in names), names  # its own temp file
            in_save += 1
        else:
            # Kill after 0-8 more steps (counted in the child's output, so the pace of the machine does not
            # matter), at a random moment of the step that follows: compute, on_train_batch_end, a save...
            pid = server.start(log, root=str(root))
            steps = rng.randint(0, 8)
            assert wait_for(lambda: text_after(log, size).count("step ") >= steps
                            or "fit done" in text_after(log, size), timeout=60), text_after(log, size)[-2000:]
            time.sleep(rng.uniform(0, 0.01))
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            code = server.wait()
            if code == 0:
                break  # it finished before the kill
            assert code == -signal.SIGKILL
        kills += 1
        names = os.listdir(ckpt_dir) if os.path.isdir(ckpt_dir) else []
        ckpts = [os.path.join(ckpt_dir, n) for n in names if n.endswith(".ckpt")]
        for path in ckpts:  # never a truncated file
            load_file(path)
        if ckpts:
            newest = max(ckpts, key=os.path.getmtime)
            step = load_file(newest)["global_step"]
            assert step >= last_step, "the newest checkpoint went back in time"
            last_step = step
        if kills >= 24:
            break
    print(f"{kills} kills, {in_save} inside a save, newest checkpoint at step {last_step}")
    assert kills == 24 and in_save == 12, (kills, in_save)
    assert 0 < last_step < reference["step"]
    # Resume (again from "last") until the end: the same weights as the run that was never interrupted.
    assert server.run(tmp_path / "run.log", root=str(root), final=str(tmp_path / "run.pt")) == 0
    assert_same_final(final_state(tmp_path / "run.pt"), reference)
    assert not any(n.endswith(TMP_SUFFIX) for n in os.listdir(ckpt_dir))  # leftovers of dead saves cleaned up


def test_sigterm_finishes_the_step_saves_and_resumes_exactly(server, tmp_path):
    assert server.run(tmp_path / "ref.log", root=str(tmp_path / "ref"), every_step=False,
                      final=str(tmp_path / "ref.pt")) == 0
    reference = final_state(tmp_path / "ref.pt")
    root, log = tmp_path / "run", tmp_path / "run.log"
    rng = random.Random(7)
    for attempt in range(2):
        size = log.stat().st_size if log.exists() else 0
        pid = server.start(log, root=str(root), every_step=False)
        assert wait_for(lambda: "step " in text_after(log, size), timeout=60)
        time.sleep(rng.uniform(0, 0.05))
        os.kill(pid, signal.SIGTERM)
        assert server.wait() == 128 + signal.SIGTERM
        text = text_after(log, size)
        assert "saved a resumable checkpoint" in text and "Traceback" not in text
        ckpt = load_file(root / "ckpt" / "last.ckpt")
        # The step it had begun was completed: the checkpoint holds a whole number of steps, in the log too.
        assert f"step {ckpt['global_step']}" in text
    assert server.run(log, root=str(root), every_step=False, final=str(tmp_path / "run.pt")) == 0
    assert_same_final(final_state(tmp_path / "run.pt"), reference)


def test_sigterm_in_a_plain_python_program_exits_143_with_a_message(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(TRAINING + "\ntrain(sys.argv[1], every_step=False)\nprint('after fit')\n")
    env = dict(os.environ, EMBER_TEST_SELF_SIGTERM="5", PYTHONPATH=REPO)
    proc = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=120,
                          env=env)
    assert proc.returncode == 143, proc.stderr
    assert "received SIGTERM" in proc.stderr and "saved a resumable checkpoint" in proc.stderr
    assert "Traceback" not in proc.stderr and "after fit" not in proc.stdout
    ckpt = load_file(tmp_path / "ckpt" / "last.ckpt")
    assert ckpt["global_step"] == 5 and ckpt["ember"]["mid_epoch"] and ckpt["ember"]["left_of_batch"] == "stop_check"


# ---------------------------------------------------------------------------- in this process
class _SignalAt:
    """A callback that sends this process SIGTERM at a chosen hook (the signal arrives between two bytecodes)."""

    def __new__(cls, hook: str, when):
        import ember as L

        class Sender(L.Callback):
            pass

        def send(self, trainer, *args):
            if when(trainer):
                os.kill(os.getpid(), signal.SIGTERM)

        setattr(Sender, hook, send)
        return Sender()


def _fit(root, epochs=3, ckpt_path=None, callbacks=()):
    import ember as L
    from torch.utils.data import DataLoader, TensorDataset

    L.seed_everything(11)
    model = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Dropout(0.3), torch.nn.Linear(8, 1))

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = model

        def training_step(self, batch, batch_idx):
            return torch.nn.functional.mse_loss(self.net(batch[0]), batch[1])

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=0.01)

    x = torch.randn(32, 3, generator=torch.Generator().manual_seed(0))
    trainer = L.Trainer(max_epochs=epochs, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=root, callbacks=list(callbacks))
    trainer.fit(Module(), DataLoader(TensorDataset(x, x[:, :1]), batch_size=4, shuffle=True), ckpt_path=ckpt_path)
    return model, trainer


@pytest.mark.parametrize("hook,when", [
    ("on_train_batch_end", lambda t: t.global_step == 11),  # inside an epoch
    ("on_train_epoch_end", lambda t: t.current_epoch == 0),  # after the batches: stops between epochs
])
def test_sigterm_in_process_chains_the_previous_handler_and_resumes_exactly(tmp_path, hook, when):
    reference, _ = _fit(tmp_path / "ref", callbacks=[])
    seen = []

    def handler(signum, frame):
        seen.append(signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        with pytest.raises(SystemExit) as exit_info:
            _fit(tmp_path / "run", callbacks=[_SignalAt(hook, when)])
        assert seen == [signal.SIGTERM]  # the program's own handler still ran
        assert signal.getsignal(signal.SIGTERM) is handler  # and is back in place after fit
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert exit_info.value.code == 143
    path = exit_info.value.checkpoint_path
    info = load_file(path)
    assert info["global_step"] == (11 if hook == "on_train_batch_end" else 8)
    resumed, trainer = _fit(tmp_path / "resumed", ckpt_path=path)
    assert trainer.global_step == 24
    for p, q in zip(reference.parameters(), resumed.parameters()):
        assert torch.equal(p, q)
