"""One rank failing takes the whole job down, quickly and loudly, instead of hanging in a collective."""
import os
import signal
import subprocess
import time

import pytest

import _djobs as J
from ember.runtime.launcher import FAILURE_EXIT_BOUND_S


def _seconds_since_the_failure(out: str, exited: float) -> float:
    """From the moment the failing rank raised (it writes OUT/failed_at) to the job's exit: start-up excluded,
    so a slow, loaded machine does not eat into the bound."""
    with open(os.path.join(out, "failed_at")) as fh:
        return exited - float(fh.read())


def test_a_rank_that_raises_takes_the_job_down_with_its_traceback(crashed_job):
    out, proc, _ = crashed_job
    assert proc.returncode != 0
    with open(os.path.join(out, "exited_at")) as fh:
        seconds = _seconds_since_the_failure(out, float(fh.read()))
    assert 0 < seconds < FAILURE_EXIT_BOUND_S, f"{seconds:.1f} s"
    assert "Traceback" in proc.stderr and "ValueError: rank 1 fails on purpose at step 8" in proc.stderr


def test_rank_zero_raising_stops_the_other_ranks(tmp_path):
    proc = J.run("failure.py", str(tmp_path), "raise", "0", "3", timeout=120, cwd=str(tmp_path))
    seconds = _seconds_since_the_failure(str(tmp_path), time.monotonic())
    assert proc.returncode != 0 and 0 < seconds < FAILURE_EXIT_BOUND_S, f"{seconds:.1f} s"
    assert "ValueError: rank 0 fails on purpose at step 3" in proc.stderr


def _wait_for_pids(out: str, job: subprocess.Popen) -> list[int]:
    deadline = time.monotonic() + 120
    paths = [os.path.join(out, f"pid{r}") for r in (0, 1)]
    while not all(os.path.exists(p) and open(p).read() for p in paths):
        if job.poll() is not None or time.monotonic() > deadline:
            job.kill()
            pytest.fail(f"the job never started training (exit {job.poll()}):\n" + open(os.path.join(out, "log")).read())
        time.sleep(0.1)
    time.sleep(0.3)  # both ranks are inside the training loop now
    return [int(open(p).read()) for p in paths]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie has exited; it only waits to be reaped
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def test_a_sigkilled_rank_makes_the_job_exit_nonzero_within_the_documented_bound(tmp_path):
    out = str(tmp_path)
    job = J.start("failure.py", out, "hang", cwd=out, log=os.path.join(out, "log"))
    try:
        _, child = _wait_for_pids(out, job)
        killed = time.monotonic()
        os.kill(child, signal.SIGKILL)
        code = job.wait(timeout=FAILURE_EXIT_BOUND_S + 20)
        seconds = time.monotonic() - killed
    finally:
        job.kill()
    assert code != 0
    assert seconds < FAILURE_EXIT_BOUND_S, f"{seconds:.1f} s"


def test_killing_the_launching_process_stops_the_other_ranks_within_the_bound(tmp_path):
    out = str(tmp_path)
    job = J.start("failure.py", out, "hang", cwd=out, log=os.path.join(out, "log"))
    try:
        launcher, child = _wait_for_pids(out, job)
        assert launcher == job.pid
        killed = time.monotonic()
        os.kill(launcher, signal.SIGKILL)
        assert job.wait(timeout=10) == -signal.SIGKILL
        while _alive(child) and time.monotonic() - killed < FAILURE_EXIT_BOUND_S + 20:
            time.sleep(0.05)
        seconds = time.monotonic() - killed
    finally:
        job.kill()
    assert not _alive(child)
    assert seconds < FAILURE_EXIT_BOUND_S, f"{seconds:.1f} s"


def test_sigterm_to_the_launching_process_stops_every_rank_after_the_same_step_with_a_checkpoint(tmp_path):
    """Preemption under DDP: the ranks vote after each batch, so all of them stop, save and exit together."""
    out = str(tmp_path)
    code, seconds, log = _signal_the_launcher(out, signal.SIGTERM, "hang")
    assert code == 128 + signal.SIGTERM, log[-3000:]
    assert seconds < FAILURE_EXIT_BOUND_S
    assert os.path.isfile(os.path.join(out, "last.ckpt")) and "saved a resumable checkpoint" in log


def test_sigusr1_under_slurm_auto_requeue_stops_every_rank_saves_and_requeues_once(tmp_path):
    """SLURMEnvironment(auto_requeue=True) under DDP: SIGUSR1 takes the SIGTERM vote, every rank stops after the
    same step, the checkpoint is saved, and rank 0 alone runs (a fake) `scontrol requeue`."""
    out = str(tmp_path)
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "scontrol").write_text('#!/bin/sh\nprintf "%s\\n" "$@" >> "$SCONTROL_RECORD"\n')
    (fake_bin / "scontrol").chmod(0o755)
    record = tmp_path / "scontrol.txt"
    code, seconds, log = _signal_the_launcher(out, signal.SIGUSR1, "requeue", SLURM_JOB_ID="31",
                                              SCONTROL_RECORD=str(record),
                                              PATH=f"{fake_bin}{os.pathsep}{os.environ.get('PATH', '')}")
    assert code == 128 + signal.SIGUSR1, log[-3000:]
    assert seconds < FAILURE_EXIT_BOUND_S
    assert os.path.isfile(os.path.join(out, "last.ckpt")) and "stopped by SIGUSR1" in log
    assert record.read_text().split() == ["requeue", "31"]  # once, from rank 0


def _signal_the_launcher(out: str, signum: int, mode: str, **env: str) -> tuple[int, float, str]:
    """Start failure.py in ``mode``, send ``signum`` to rank 0 once both ranks train; (exit code, seconds, log)."""
    job = J.start("failure.py", out, mode, cwd=out, log=os.path.join(out, "log"), **env)
    try:
        launcher, _ = _wait_for_pids(out, job)
        sent = time.monotonic()
        os.kill(launcher, signum)
        code = job.wait(timeout=FAILURE_EXIT_BOUND_S + 20)
        seconds = time.monotonic() - sent
    finally:
        job.kill()
    return code, seconds, open(os.path.join(out, "log")).read()
