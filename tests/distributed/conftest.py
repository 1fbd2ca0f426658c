"""Jobs shared by several tests run once per session: process start-up dominates their cost."""
import pytest

import _djobs as J


@pytest.fixture(scope="session")
def two_rank_job(tmp_path_factory):
    """features.py on 2 CPU processes (strategy="ddp", gloo), every scenario; the output directory."""
    out = str(tmp_path_factory.mktemp("ddp2"))
    J.check(J.run("features.py", out, "--devices", "2", "--batch", "4", timeout=300, cwd=out))
    return out


@pytest.fixture(scope="session")
def one_rank_job(tmp_path_factory):
    """The same program on 1 process with twice the batch: the reference for the correctness tests."""
    out = str(tmp_path_factory.mktemp("ddp1"))
    J.check(J.run("features.py", out, "--devices", "1", "--batch", "8", "--only", "correctness", timeout=300, cwd=out))
    return out


@pytest.fixture(scope="session")
def crashed_job(tmp_path_factory):
    """failure.py: rank 1 raises at global step 8 (mid-epoch 1); a checkpoint was written after every step.

    Returns (output dir, completed process, seconds from start to exit). The failing rank writes the moment
    it raised to OUT/failed_at and this fixture the moment the job had exited to OUT/exited_at (both
    time.monotonic()), so a test can time the failure itself, without the processes' start-up.
    """
    import os
    import time

    out = str(tmp_path_factory.mktemp("crash"))
    start = time.monotonic()
    proc = J.run("failure.py", out, "raise", "1", "8", timeout=120, cwd=out)
    exited = time.monotonic()
    with open(os.path.join(out, "exited_at"), "w") as fh:
        fh.write(repr(exited))
    return out, proc, exited - start
