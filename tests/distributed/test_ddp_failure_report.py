"""When one DDP rank raises, the job ends non-zero soon, and its last stderr line names that rank's own error.

The job (jobs/failure_report.py) is the issue's: a label only one rank sees makes its cross_entropy raise
``IndexError: Target 7 is out of bounds.``; the other rank's next collective then loses its peer
("Connection closed by peer"), which must be reported as a consequence, in one line.
"""
import json
import os
import subprocess
import sys
import time

import pytest

import _djobs as J
from ember.runtime import failures

ERROR = "IndexError: Target 7 is out of bounds."


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def _run(tmp_path, *args, prefix=()):
    out = str(tmp_path)
    start = time.time()
    if prefix:
        proc = subprocess.run([*prefix, os.path.join(J.JOBS, "failure_report.py"), out, *args], cwd=out,
                              env=J.clean_env(), capture_output=True, text=True, timeout=120)
    else:
        proc = J.run("failure_report.py", out, *args, timeout=120, cwd=out)
    ended = time.time()
    with open(os.path.join(out, "failed_at")) as fh:
        failed_at = float(fh.read())
    assert start < failed_at < ended
    return proc, ended - failed_at


def _assert_consequences_take_one_line(stderr: str, failing: int) -> None:
    """The other rank's 'Connection closed by peer' is one 'ember: rank N stopped' line, not a traceback."""
    other = 1 - failing
    gone = [line for line in stderr.splitlines() if "Connection closed by peer" in line]
    assert gone, stderr[-3000:]
    assert all(line.startswith(f"ember: rank {other} stopped: RuntimeError:") for line in gone), gone
    assert f"[rank{other}]: Traceback" not in stderr


@pytest.mark.parametrize("failing", [1, 0])
def test_the_last_line_is_the_failing_ranks_own_error_under_ddp(tmp_path, failing):
    proc, seconds = _run(tmp_path, str(failing))
    assert proc.returncode != 0
    assert seconds < 30, f"{seconds:.1f} s from the failure to the job's exit"
    last = _lines(proc.stderr)[-1]
    assert last == f"ember: rank {failing} failed: {ERROR}", proc.stderr[-3000:]
    assert f"[rank{failing}]: {ERROR}" in proc.stderr  # its whole traceback, once, marked with its rank
    if failing == 1:
        _assert_consequences_take_one_line(proc.stderr, failing)
        # ... and the end repeats where it happened: the user's failing frame, then the exception
        tail = _lines(proc.stderr)[-6:]
        assert any(line.strip().startswith('File "') and "failure_report.py" in line and "training_step" in line
                   for line in tail), tail
        assert tail[-2] == ERROR


def test_when_both_ranks_fail_the_job_still_ends_with_one_of_their_own_errors(tmp_path):
    proc, seconds = _run(tmp_path, "-1")
    assert proc.returncode != 0 and seconds < 30
    last = _lines(proc.stderr)[-1]
    assert last in (f"ember: rank 0 failed: {ERROR}", f"ember: rank 1 failed: {ERROR}"), proc.stderr[-3000:]
    assert "a consequence" not in proc.stderr  # neither error is called a consequence of the other


def test_the_last_line_is_the_failing_ranks_own_error_under_ddp_spawn(tmp_path):
    proc, seconds = _run(tmp_path, "1", "--strategy", "ddp_spawn")
    assert proc.returncode != 0 and seconds < 30
    assert _lines(proc.stderr)[-1] == f"ember: rank 1 failed: {ERROR}", proc.stderr[-3000:]
    assert "RankFailedError: rank 1 failed, so the job stopped." in proc.stderr
    assert proc.stderr.count(ERROR) == 2  # the traceback's last line, then the summary




def test_under_torchrun_each_rank_prints_a_one_line_cause_and_torchrun_names_the_root(tmp_path):
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    proc, seconds = _run(tmp_path, "1", prefix=(*J.netns_prefix(), torchrun, "--standalone", "--nproc_per_node=2"))
    assert proc.returncode != 0 and seconds < 30
    lines = proc.stderr.splitlines()
    assert f"ember: rank 1 failed: {ERROR}" in lines
    _assert_consequences_take_one_line(proc.stderr, 1)
    # torchrun's own summary (its last lines) reads the error file rank 1 wrote: the root cause is named.
    root = proc.stderr[proc.stderr.index("Root Cause (first observed failure)"):]
    assert "rank      : 1 (local_rank: 1)" in root and ERROR in root


# --------------------------------------------------------------------------- the pieces, in process
def test_a_lost_peer_is_a_consequence_and_an_error_of_the_rank_is_not():
    gone = RuntimeError("[../gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:4711")
    assert failures.is_peer_gone(gone)
    assert not failures.is_peer_gone(IndexError("Target 7 is out of bounds."))
    assert not failures.is_peer_gone(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert failures.summarize(IndexError, IndexError("Target 7 is out of bounds.\nmore")) == ERROR


def _raised(exc):
    try:
        raise exc
    except Exception as caught:
        return type(caught), caught, caught.__traceback__


def test_records_name_the_first_error_of_its_own_as_the_root(tmp_path, monkeypatch):
    monkeypatch.setenv(failures.ERROR_DIR_VAR, str(tmp_path))
    monkeypatch.delenv("TORCHELASTIC_ERROR_FILE", raising=False)
    failures.record(1, *_raised(IndexError("Target 7 is out of bounds.")))
    failures.record(0, *_raised(RuntimeError("Connection closed by peer")))
    records = failures.read_records(str(tmp_path))
    assert [r["rank"] for r in records] == [1, 0] and records[1]["peer_gone"]
    root = failures.root_cause(records)
    assert root["rank"] == 1
    lines = failures.report_lines(root)
    assert lines[-2:] == [ERROR, f"ember: rank 1 failed: {ERROR}"] and "_raised" in lines[-4]
    error = failures.rank_failed(root, [failures.peer_gone_line(0, records[1]["summary"])])
    assert str(error).splitlines()[-1] == f"ember: rank 1 failed: {ERROR}" and error.rank == 1


def test_under_torchrun_the_root_error_goes_to_torchelastics_error_file(tmp_path, monkeypatch):
    monkeypatch.delenv(failures.ERROR_DIR_VAR, raising=False)
    path = tmp_path / "error.json"
    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(path))
    failures.record(0, *_raised(RuntimeError("Connection closed by peer")))
    assert not path.exists()  # a consequence is not the job's root cause
    failures.record(1, *_raised(IndexError("Target 7 is out of bounds.")))
    message = json.loads(path.read_text())["message"]
    assert message["message"] == ERROR and "Traceback" in message["extraInfo"]["py_callstack"]
