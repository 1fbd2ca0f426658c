"""``SLURMEnvironment``: where this process sits in a SLURM job, and SLURM auto-requeue.

With ``auto_requeue=True`` (the default, as in Lightning) the requeue signal (``SIGUSR1`` unless told
otherwise; ``#SBATCH --signal=SIGUSR1@90`` asks SLURM to send it 90 s before the time limit) takes
the SIGTERM preemption path of ``ember.checkpoint.preemption_guard``: the current step finishes, a
resumable checkpoint is saved (the ModelCheckpoint's "last" file, else
``default_root_dir/last.ckpt``), rank 0 runs ``scontrol requeue $SLURM_JOB_ID``, and the process
exits (status 128 + the signal number). The requeued job resumes exactly with
``trainer.fit(..., ckpt_path="last")``.

ember differs from Lightning 2.6.6 here on purpose: Lightning saves an ``hpc_ckpt_N.ckpt`` from inside
the signal handler, in the middle of whatever step is running, and keeps training until SLURM kills
it; ember saves at a step boundary, so the resume is exact, and exits. Lightning also switches
auto-requeue on by itself when it detects SLURM; ember only with the plugin.
"""
from __future__ import annotations

import os
import re
import signal
import sys


class SLURMEnvironment:
    """``Trainer(plugins=[SLURMEnvironment(auto_requeue=True, requeue_signal=signal.SIGUSR1)])``."""

    def __init__(self, auto_requeue: bool = True, requeue_signal: signal.Signals | None = None) -> None:
        if not isinstance(auto_requeue, bool):
            raise ValueError(f"SLURMEnvironment(auto_requeue={auto_requeue!r}) is not valid; allowed: True, False.")
        if requeue_signal is None:
            requeue_signal = signal.SIGUSR1
        try:
            requeue_signal = signal.Signals(requeue_signal)
        except ValueError:
            raise ValueError(f"SLURMEnvironment(requeue_signal={requeue_signal!r}) is not valid; allowed: a signal "
                             "such as signal.SIGUSR1.") from None
        if requeue_signal in (signal.SIGKILL, signal.SIGSTOP, signal.SIGTERM):
            raise ValueError(f"SLURMEnvironment(requeue_signal={requeue_signal.name}) is not valid: SIGKILL and "
                             "SIGSTOP cannot be caught, and SIGTERM already means 'save and stop' (without "
                             "requeue). Use e.g. signal.SIGUSR1.")
        self.auto_requeue = auto_requeue
        self.requeue_signal = requeue_signal

    def __repr__(self) -> str:
        return f"SLURMEnvironment(auto_requeue={self.auto_requeue}, requeue_signal={self.requeue_signal.name})"

    # ---- where this process is (SLURM's variables; ember's launcher reads the same ones) ----
    @staticmethod
    def detect() -> bool:
        """True inside a SLURM job that SLURM itself started the processes of (``srun``, not a shell)."""
        return "SLURM_NTASKS" in os.environ and SLURMEnvironment.job_name() not in ("bash", "interactive")

    @staticmethod
    def job_name() -> str | None:
        return os.environ.get("SLURM_JOB_NAME")

    @staticmethod
    def job_id() -> str | None:
        """The id ``scontrol requeue`` takes: ``ARRAYJOB_TASK`` for an array task, else ``SLURM_JOB_ID``."""
        array_job, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
        if array_job is not None and task is not None:
            return f"{array_job}_{task}"
        return os.environ.get("SLURM_JOB_ID")

    def world_size(self) -> int:
        return int(os.environ.get("SLURM_NTASKS", 1))

    def global_rank(self) -> int:
        return int(os.environ.get("SLURM_PROCID", 0))

    def local_rank(self) -> int:
        return int(os.environ.get("SLURM_LOCALID", 0))

    def node_rank(self) -> int:
        return int(os.environ.get("SLURM_NODEID", 0))

    # ---- requeue ----
    def requeue(self) -> bool:
        """Run ``scontrol requeue <job id>``; True when it succeeded. Failures are reported, not raised: the
        checkpoint is already saved, and the job can be resubmitted by hand."""
        import subprocess

        job = self.job_id()
        if job is None or not re.fullmatch(r"[0-9]+(_[0-9]+)?", job):
            _say(f"no SLURM job to requeue (SLURM_JOB_ID={job!r}); resubmit the job by hand to resume.")
            return False
        try:
            result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.SubprocessError) as exc:
            _say(f"`scontrol requeue {job}` could not run ({exc}); resubmit the job by hand to resume.")
            return False
        if result.returncode != 0:
            _say(f"`scontrol requeue {job}` failed with status {result.returncode}: {result.stderr.strip()}")
            return False
        _say(f"requeued SLURM job {job}; it resumes from the saved checkpoint with ckpt_path=\"last\".")
        return True


def _say(message: str) -> None:
    print(f"ember: {message}", file=sys.stderr, flush=True)
