"""Progress bars. The bar reads tensors only when it redraws (about 10 times a second)."""
from __future__ import annotations

import sys
import time
from typing import Any

from .callback import Callback


class ProgressBar(Callback):
    """Base for progress bars (the Trainer adds a TQDMProgressBar unless one of these is given)."""

    ignores_batch_outputs = True  # its batch-end hooks only count batches (a subclass's override may read them)


    def __init__(self) -> None:
        self._enabled = True

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    @property
    def is_enabled(self) -> bool:
        return self._enabled

    def get_metrics(self, trainer: Any, pl_module: Any) -> dict[str, Any]:
        """What the bar shows after the counters: the logger version and every prog_bar metric.

        As in Lightning 2.x the loss is not added by itself: log it with ``prog_bar=True``.
        """
        items: dict[str, Any] = {}
        logger = trainer.logger
        version = getattr(logger, "version", None) if logger is not None else None
        if isinstance(version, str):
            version = version[-4:]  # long version strings show their last 4 characters (Lightning)
        if isinstance(version, (int, str)) and version != "":
            items["v_num"] = version
        for key, value in trainer.metric_store.progress_bar_metrics.items():  # read: brings the values up to date
            try:
                items[key] = f"{float(value):.3g}"
            except (TypeError, ValueError):
                items[key] = value
        return items


_QUIET_TQDM: Any = None


def _quiet_tqdm() -> Any:
    """tqdm (the notebook one in Jupyter), able to change without drawing: tqdm is imported on first use."""
    global _QUIET_TQDM
    if _QUIET_TQDM is None:
        from tqdm.auto import tqdm

        class QuietTqdm(tqdm):
            hold = False  # set while the bar changes without a draw (tqdm's reset() always draws)

            def display(self, *args: Any, **kwargs: Any) -> Any:
                return None if self.hold else super().display(*args, **kwargs)

        _QUIET_TQDM = QuietTqdm
    return _QUIET_TQDM


class TQDMProgressBar(ProgressBar):
    """A tqdm bar per training epoch, plus a transient one for validation.

    It draws at most once per ``0.1`` s, at the epochs' starts and ends too (short epochs would otherwise cost two
    draws each, ~0.3 ms), and once more when training ends, so the last epoch's count and metrics are shown.
    """

    paced_events = ("on_train_batch_end",)  # it only redraws ~10 times a second: no call after every batch

    def __init__(self, refresh_rate: int = 1, leave: bool = False, process_position: int = 0) -> None:
        super().__init__()
        self.refresh_rate = refresh_rate
        self.leave = leave
        self.process_position = process_position
        self._min_interval = 0.1  # seconds between redraws
        self._bar: Any = None
        self._val_bar: Any = None
        self._val_desc: str | None = None  # set while an evaluation runs
        self._next_draw = 0.0
        self._stale = False  # something changed since the last draw
        self._last_call = (0.0, 0)  # (time, batches into the epoch) of the last on_train_batch_end
        self._batches_to_next_call = 1

    def _tqdm(self, **kwargs: Any) -> Any:
        # It draws whenever it is updated: the bar decides when (tqdm's own dynamic miniters would skip the update
        # that brings an epoch to 100 %).
        return _quiet_tqdm()(file=sys.stderr, dynamic_ncols=True, position=self.process_position, mininterval=0, miniters=1,
                    disable=not self._enabled or self.refresh_rate == 0, **kwargs)

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        total = trainer.num_training_batches
        total = None if total == float("inf") else total
        desc = f"Epoch {trainer.current_epoch}"
        now = time.monotonic()
        if self._bar is None:
            self._bar = self._tqdm(total=total, leave=True, unit="it", desc=desc)  # drawn by tqdm
            self._next_draw = now + self._min_interval
        else:
            self._bar.set_description(desc, refresh=False)
            # reset() draws; an epoch that starts within a redraw interval of the last draw waits for the next one.
            self._bar.hold = self._stale = now < self._next_draw
            self._bar.reset(total=total)
            self._bar.hold = False
            if not self._stale:
                self._next_draw = now + self._min_interval
        self._last_call, self._batches_to_next_call = (now, trainer.state.batches_seen_in_epoch), 1

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        # The epoch's last batch is not drawn here: on_train_epoch_end draws the final count right after it (and
        # a validation in between draws it when its own bar appears). In situ a draw costs ~0.4 ms, cache misses
        # of the steps after it included.
        now, seen = time.monotonic(), trainer.state.batches_seen_in_epoch
        if now >= self._next_draw:
            self._draw(trainer, pl_module, now)
        else:
            self._stale = True
        # The loop calls this hook only every few batches (paced_events): as many as should take until the next
        # draw at the speed of the batches since the last call, at most twice as many as then plus one, so a
        # wrong guess (a slow first batch, a change of pace) costs a few calls or a late draw, never a stalled bar.
        then, seen_then = self._last_call
        rate = (seen - seen_then) / (now - then) if now > then else 0.0
        self._batches_to_next_call = max(1, min(int((self._next_draw - now) * rate), 2 * (seen - seen_then) + 1))
        self._last_call = (now, seen)

    def batches_to_next_call(self) -> int:
        """How many batches may end before the loop calls ``on_train_batch_end`` again (see ``paced_events``)."""
        return self._batches_to_next_call

    def _draw(self, trainer: Any, pl_module: Any, now: float) -> None:
        bar = self._bar
        if bar is None or bar.disable:
            return
        bar.set_postfix(self.get_metrics(trainer, pl_module), refresh=False)
        if not self._show_trained(trainer.state.batches_seen_in_epoch):
            bar.refresh()
        self._next_draw, self._stale = now + self._min_interval, False

    def _show_trained(self, batches: int) -> bool:
        """Brings the training bar to ``batches`` (drawing it); False when it already showed that many."""
        if batches <= self._bar.n:
            return False
        self._bar.update(batches - self._bar.n)
        return True

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        now = time.monotonic()
        if now >= self._next_draw:
            self._draw(trainer, pl_module, now)
        else:
            self._stale = True

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        if self._bar is not None:
            if self._stale:  # the last epoch's count and metrics, drawn by close() (a kept bar's last draw)
                self._bar.hold = True
                self._draw(trainer, pl_module, time.monotonic())
                self._bar.hold = False
            self._bar.close()
            self._bar = None

    def _eval_start(self, trainer: Any, desc: str) -> None:
        # The bar of an evaluation is created once it has run for one redraw interval: a shorter one is never
        # shown (leave=False would only erase it again), and a validation after every short epoch would otherwise
        # build and close a tqdm each time.
        self._val_desc = "Sanity Checking" if trainer.sanity_checking else desc
        self._trained = trainer.state.batches_seen_in_epoch  # shown by the training bar above the evaluation's
        self._val_pending = 0
        self._val_next = time.monotonic() + self._min_interval

    def _eval_batch(self) -> None:
        if self._val_desc is None:
            return
        self._val_pending += 1
        now = time.monotonic()
        if now < self._val_next:
            return
        if self._val_bar is None:
            if self._bar is not None and not self._bar.disable:
                self._show_trained(self._trained)  # the training bar above it shows every batch trained so far
            # Built showing the batches run so far (tqdm draws it once, on construction).
            self._val_bar = self._tqdm(desc=self._val_desc, leave=False, total=None, unit="it", initial=self._val_pending)
        else:
            self._val_bar.update(self._val_pending)
        self._val_pending = 0
        self._val_next = now + self._min_interval

    def _eval_end(self) -> None:
        self._val_desc = None
        if self._val_bar is not None:
            self._val_bar.close()
            self._val_bar = None

    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        self._eval_start(trainer, "Validation")

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._eval_batch()

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        self._eval_end()
        self._stale = True  # what it logged is shown by the next draw, or when training ends

    def on_test_start(self, trainer: Any, pl_module: Any) -> None:
        self._eval_start(trainer, "Testing")

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._eval_batch()

    def on_test_end(self, trainer: Any, pl_module: Any) -> None:
        self._eval_end()

    def on_predict_start(self, trainer: Any, pl_module: Any) -> None:
        self._eval_start(trainer, "Predicting")

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._eval_batch()

    def on_predict_end(self, trainer: Any, pl_module: Any) -> None:
        self._eval_end()


class RichProgressBar(ProgressBar):
    """A progress bar drawn with ``rich`` (optional dependency)."""

    def __init__(self, refresh_rate: int = 1, leave: bool = False) -> None:
        super().__init__()
        try:
            import rich.progress  # noqa: F401
        except ModuleNotFoundError as exc:
            raise ModuleNotFoundError("RichProgressBar needs the `rich` package: pip install rich") from exc
        self.refresh_rate = refresh_rate
        self.leave = leave
        self._progress: Any = None
        self._task: Any = None
        self._next_draw = 0.0
        self._pending = 0

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        self._progress = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                                  TimeRemainingColumn(), TextColumn("{task.fields[metrics]}"),
                                  disable=not self._enabled)
        self._progress.start()

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        total = trainer.num_training_batches
        if self._task is not None:
            self._progress.remove_task(self._task)
        self._task = self._progress.add_task(f"Epoch {trainer.current_epoch}",
                                             total=None if total == float("inf") else total, metrics="")
        self._pending = 0

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._pending += 1
        now = time.monotonic()
        if now < self._next_draw and not trainer.state.is_last_batch:
            return
        metrics = " ".join(f"{k}={v}" for k, v in self.get_metrics(trainer, pl_module).items())
        self._progress.update(self._task, advance=self._pending, metrics=metrics)
        self._pending = 0
        self._next_draw = now + 0.1

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
            self._task = None
