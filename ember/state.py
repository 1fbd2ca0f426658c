"""``FitState``: where training is, in one object.

The counters, the position inside an epoch, the stop flags and what a
mid-epoch resume still has to redo live here and nowhere else. The Trainer
exposes them as read-only properties (``trainer.global_step``, ...);
checkpoints, the launcher (``ddp_spawn`` sends rank 0's state back) and the
learning-rate finder (snapshot, range test, restore) go through
``state_dict()``/``load_state_dict()`` and ``snapshot()``/``restore()``, so
there is no second list of counters to keep in step.
"""
from __future__ import annotations

import copy
import dataclasses
import enum
from typing import Any


class Position(enum.Enum):
    """Where the fit loop is, as a checkpoint taken now must record it."""

    BETWEEN_EPOCHS = "between_epochs"  # a resume starts epoch ``current_epoch`` afresh
    IN_BATCHES = "in_batches"  # the epoch's iterator is open (on_train_batch_* or a validation inside the epoch)
    AFTER_BATCH = "after_batch"  # a whole batch is done and the loop is leaving (the SIGTERM save)
    EPOCH_ENDED = "epoch_ended"  # the batch loop is over: closing validation or on_train_epoch_end


class BatchPhase(enum.IntEnum):
    """What is left of a training batch once its step has run, in order (``loop.end_of_batch``).

    A checkpoint taken inside a batch records the phase a resume continues from.
    """

    HOOKS = 0  # the counters move on, on_train_batch_end
    PUBLISH = 1  # step metrics reach the loggers (a save from on_train_batch_end resumes here)
    VALIDATION = 2  # a validation due at this batch
    AFTER_VALIDATION = 3  # back to training metrics, plateau schedulers (a save from that validation resumes here)
    STOP_CHECK = 4  # the stop vote and the stop rules (the SIGTERM save resumes here)


# How checkpoints name the phase a mid-epoch resume continues from (the file format predates the enum).
SAVED_PHASE_NAMES = {BatchPhase.PUBLISH: "batch_end", BatchPhase.AFTER_VALIDATION: "after_validation",
                     BatchPhase.STOP_CHECK: "stop_check"}
_PHASE_OF_NAME = {name: phase for phase, name in SAVED_PHASE_NAMES.items()}


@dataclasses.dataclass
class ResumePoint:
    """What ``checkpoint.open_train_batches`` must redo when a checkpoint was taken inside an epoch."""

    batches_done: int
    accumulated: int
    phase: BatchPhase
    epoch_start_rng: dict[str, Any] | None
    rng: dict[str, Any] | None
    metrics: dict[str, Any] | None
    loader_restored: bool
    epoch_reached_end: bool


@dataclasses.dataclass
class FitState:
    # ---- counters (saved in every checkpoint) ----
    current_epoch: int = 0
    global_step: int = 0  # optimizer steps; changes only in optimizer_stepped()
    batches_that_stepped: int = 0  # batches after which an optimizer stepped: the x-axis of step-level logs
    total_batches_run: int = 0
    # ---- position inside the current epoch ----
    position: Position = Position.BETWEEN_EPOCHS
    batch_idx: int = 0
    batches_seen_in_epoch: int = 0
    accumulated: int = 0  # batches in the open gradient-accumulation window
    is_last_batch: bool = False
    epoch_reached_end: bool = False  # the loader ran out (epoch schedulers stepped with its last batch)
    eval_steps_seen: dict[int, int] = dataclasses.field(default_factory=dict)  # x-axis of eval step logs
    # ---- what is running ----
    fn: str | None = None  # "fit", "validate", "test" or "predict" (Lightning's trainer.state.fn)
    training: bool = False
    evaluating: str | None = None  # "validate" or "test" while an evaluation runs
    sanity_checking: bool = False
    sanity_checked: bool = False
    # ---- stopping ----
    should_stop: bool = False
    interrupted: bool = False
    preempt_signal: int | None = None  # SIGTERM seen: finish the step, save, exit
    # ---- exact resume ----
    epoch_start_rng: dict[str, Any] | None = None  # the RNG the epoch's iterator was opened with
    resume: ResumePoint | None = None  # set by a mid-epoch checkpoint, consumed when the epoch reopens
    microbatch_rows: int | None = None  # Trainer(microbatch_on_oom=True): rows per microbatch since an OOM

    COUNTERS = ("current_epoch", "global_step", "batches_that_stepped", "total_batches_run")

    def optimizer_stepped(self) -> None:
        """One optimizer step was taken (automatic optimization, or a manual ``optimizer.step()``)."""
        self.global_step += 1

    @property
    def stage(self) -> str | None:
        """Lightning's ``trainer.state.stage``: "sanity_check", "train", "validate", "test" or "predict"."""
        if self.sanity_checking:
            return "sanity_check"
        return self.evaluating or ("train" if self.fn == "fit" else self.fn)

    @property
    def in_fit(self) -> bool:
        return self.fn == "fit" and not self.sanity_checking

    # ---- snapshot: the learning-rate finder trains, then puts everything back ----
    def snapshot(self) -> "FitState":
        return copy.copy(self)

    def restore(self, snapshot: "FitState") -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(snapshot, f.name))

    # ---- checkpoints ----
    def state_dict(self) -> dict[str, Any]:
        """The counters and the position, in the keys of the checkpoint's ``ember`` section."""
        out: dict[str, Any] = {"batches_that_stepped": self.batches_that_stepped,
                               "total_batches_run": self.total_batches_run, "sanity_checked": True}
        where = self.position if self.in_fit else Position.BETWEEN_EPOCHS
        inside = where in (Position.IN_BATCHES, Position.AFTER_BATCH)
        if inside and self.batches_seen_in_epoch > 0:
            if where is Position.AFTER_BATCH or self.batch_idx == self.batches_seen_in_epoch:
                phase = BatchPhase.STOP_CHECK  # also: saved before this batch ended (on_train_batch_start, an error)
            elif self.evaluating == "validate":
                phase = BatchPhase.AFTER_VALIDATION  # saved by a validation inside the epoch, once it had run
            else:
                phase = BatchPhase.PUBLISH  # saved from on_train_batch_end: the rest of the batch is to come
            out.update(mid_epoch=True, epoch_completed=False, batches_done_in_epoch=self.batches_seen_in_epoch,
                       accumulated=self.accumulated, left_of_batch=SAVED_PHASE_NAMES[phase])
        else:
            # Saved before the first batch of an open epoch (on_train_batch_start): restart the epoch, from the
            # RNG it was opened with so that it shuffles the same way.
            out.update(mid_epoch=False, epoch_completed=where is Position.EPOCH_ENDED, batches_done_in_epoch=0,
                       accumulated=0, restart_epoch=inside)
        out["epoch_reached_end"] = self.epoch_reached_end
        return out

    def load_state_dict(self, info: dict[str, Any], epoch: int, global_step: int) -> None:
        """Counters from a checkpoint (``info`` is its ``ember`` section; Lightning's has fewer keys)."""
        self.current_epoch, self.global_step = epoch, global_step
        self.batches_that_stepped = info.get("batches_that_stepped", global_step)
        self.total_batches_run = info.get("total_batches_run", self.batches_that_stepped)
        if info.get("sanity_checked"):
            self.sanity_checked = True

    @staticmethod
    def saved_phase(info: dict[str, Any]) -> BatchPhase:
        return _PHASE_OF_NAME[info.get("left_of_batch", "batch_end")]

    def counters(self) -> dict[str, Any]:
        """What ddp_spawn's workers send back to the calling process."""
        return {name: getattr(self, name) for name in (*self.COUNTERS, "should_stop", "interrupted")}

    def set_counters(self, values: dict[str, Any]) -> None:
        for name, value in values.items():
            setattr(self, name, value)
