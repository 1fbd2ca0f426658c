"""``Profiler``: the interface every profiler implements, and the one that records nothing."""
from __future__ import annotations

import contextlib
import os
import re
from typing import Any, Iterator


class Profiler:
    """Times named actions: ``start(action)``/``stop(action)``, or ``with profiler.profile(action):``.

    A subclass implements ``start``, ``stop`` and ``summary``. The Trainer calls ``setup`` when a run
    begins and ``describe`` when it ends: the summary is printed (local rank 0), or, with ``filename``,
    appended to ``dirpath/<stage>-<filename>.txt`` (``dirpath`` defaults to the Trainer's ``log_dir``).
    """

    def __init__(self, dirpath: str | os.PathLike | None = None, filename: str | None = None) -> None:
        self.dirpath = dirpath
        self.filename = filename
        self.lightning_module: Any = None  # the module of the current run (set by the Trainer)
        self._stage: str | None = None
        self._local_rank: int | None = None

    # ---- what a subclass implements ----
    def start(self, action_name: str) -> None:
        raise NotImplementedError(f"{type(self).__name__}.start(action_name) is not implemented.")

    def stop(self, action_name: str) -> None:
        raise NotImplementedError(f"{type(self).__name__}.stop(action_name) is not implemented.")

    def summary(self) -> str:
        return ""

    # ---- using it ----
    @contextlib.contextmanager
    def profile(self, action_name: str) -> Iterator[str]:
        """Time the body of the ``with`` block as ``action_name`` (stopped even when the body raises)."""
        self.start(action_name)
        try:
            yield action_name
        finally:
            self.stop(action_name)

    @property
    def local_rank(self) -> int:
        return self._local_rank or 0

    def setup(self, stage: str, local_rank: int | None = None, log_dir: str | None = None) -> None:
        """A run begins: ``stage`` is "fit", "validate", "test" or "predict"; ``local_rank`` is None for one process."""
        self._stage, self._local_rank = stage, local_rank
        self.dirpath = self.dirpath or log_dir

    def teardown(self, stage: str | None) -> None:
        """A run ended (or failed): release what the profiler holds open."""

    def describe(self) -> None:
        """Report the summary (printed, or written to the file) and tear down."""
        text = self.summary()
        if text:
            path = self.output_path()
            if path is not None:
                os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
                with open(path, "a") as out:
                    out.write(text)
            elif self.local_rank == 0:
                print(text)
        self.teardown(self._stage)

    def output_path(self, action_name: str | None = None, extension: str = ".txt") -> str | None:
        """Where the report (or, with ``action_name``, one action's file) goes; None: printed instead."""
        if not (self.filename and self.dirpath) and action_name is None:
            return None
        parts = [self._stage, self.filename, None if self._local_rank is None else str(self._local_rank),
                 action_name]
        name = "-".join(p for p in parts if p)
        # Action names hold characters no file system likes ("[Strategy]X.backward", "a/b").
        name = re.sub(r"_+", "_", re.sub(r"[\\/:*?\"<>|\s]", "_", name)).strip() or "profile"
        return os.path.join(os.fspath(self.dirpath or "."), name + extension)

    def _report(self, sections: dict[str, str]) -> str:
        """The report of profilers with one text block per action: a title line, then each block."""
        stage = f"{self._stage.upper()} " if self._stage else ""
        rank = f" rank: {self._local_rank}" if self._local_rank is not None else ""
        lines = [f"{stage}Profiler Report"]
        for action, text in sections.items():
            lines += [f"Profile stats for: {action}{rank}", text]
        return os.linesep.join(lines)


class PassThroughProfiler(Profiler):
    """The profiler of a Trainer without one: it records nothing (and the loop never calls it per batch)."""

    def start(self, action_name: str) -> None:
        pass

    def stop(self, action_name: str) -> None:
        pass

    @contextlib.contextmanager
    def profile(self, action_name: str) -> Iterator[str]:
        yield action_name

    def describe(self) -> None:
        pass
