"""Run the job scripts in tests/distributed/jobs as subprocesses, with a bounded time and a clean environment."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
JOBS = os.path.join(HERE, "jobs")
REPO = os.path.dirname(os.path.dirname(HERE))


def clean_env(**extra: str) -> dict[str, str]:
    """This environment minus anything that would make a job think it was launched by torchrun or SLURM."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "TORCHELASTIC_", "PL_", "EMBER_", "GROUP_"))
           and k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "NODE_RANK", "MASTER_ADDR",
                         "MASTER_PORT")}
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def run(script: str, *args: str, timeout: float, cwd: str, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """Run jobs/<script> to completion (or kill it at ``timeout`` seconds) and capture its output."""
    cmd = [*prefix, sys.executable, os.path.join(JOBS, script), *args]
    return subprocess.run(cmd, cwd=cwd, env=clean_env(), capture_output=True, text=True, timeout=timeout)


def start(script: str, *args: str, cwd: str, log: str, **env: str) -> subprocess.Popen:
    out = open(log, "w")
    return subprocess.Popen([sys.executable, os.path.join(JOBS, script), *args], cwd=cwd, env=clean_env(**env),
                            stdout=out, stderr=subprocess.STDOUT)


def results(out: str, rank: int) -> dict:
    with open(os.path.join(out, f"rank{rank}.json")) as fh:
        return json.load(fh)


def weights(out: str, name: str, rank: int) -> dict[str, torch.Tensor]:
    return torch.load(os.path.join(out, f"{name}_rank{rank}.pt"), map_location="cpu")


# The correctness jobs train in float64, so 2 ranks x batch B and 1 rank x batch 2B differ only by the order of
# the float64 sums (the all-reduce averages two half-batch means). Measured: at most 3e-15 relative after 2 epochs
# (SGD, Adam, with and without accumulation, DDP and FSDP). 1e-12 keeps a margin of ~300x for other CPUs' kernels
# while still failing on any float32 rounding (~1e-7) or a real arithmetic difference.
FLOAT64_REL_TOL = 1e-12


def max_relative_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """max over tensors of max|a - b| / max|a| (0 for identical weights)."""
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max() / a[k].double().abs().max().clamp_min(1e-30))
               for k in a)


def check(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, f"job failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"


def netns_prefix(loopback_up: bool = True) -> tuple[str, ...]:
    """A command prefix that runs inside a private network namespace, when this machine allows one.

    torchrun's agent store listens on every interface, so its tests keep it in a namespace of their own;
    ``loopback_up`` brings up its ``lo`` first (a job that does it itself passes False). ``()`` otherwise.
    """
    import shutil

    unshare = shutil.which("unshare")
    if unshare and shutil.which("ip"):
        try:
            if subprocess.run([unshare, "-n", "true"], capture_output=True, timeout=10).returncode == 0:
                return (unshare, "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh") if loopback_up \
                    else (unshare, "-n")
        except (OSError, subprocess.TimeoutExpired):
            pass
    return ()

