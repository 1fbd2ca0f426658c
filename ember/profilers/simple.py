"""``SimpleProfiler``: wall-clock time per action, as a table of calls, mean, total and share of the run."""
from __future__ import annotations

import math
import os
import time
from collections import defaultdict

from .profiler import Profiler


class SimpleProfiler(Profiler):
    """Records each action's durations (seconds, ``time.perf_counter``) in ``recorded_durations``.

    ``extended=True`` (the default) adds the number of calls and each action's percentage of the time
    since the profiler was made; ``extended=False`` shows mean and total only.
    """

    def __init__(self, dirpath: str | os.PathLike | None = None, filename: str | None = None,
                 extended: bool = True) -> None:
        super().__init__(dirpath=dirpath, filename=filename)
        self.extended = extended
        self.current_actions: dict[str, float] = {}
        # A defaultdict, as Lightning's: reading an action that never ran gives [].
        self.recorded_durations: dict[str, list[float]] = defaultdict(list)
        self.start_time = time.perf_counter()

    def start(self, action_name: str) -> None:
        if action_name in self.current_actions:
            raise ValueError(f"SimpleProfiler.start({action_name!r}): that action is already running; stop it first.")
        self.current_actions[action_name] = time.perf_counter()

    def stop(self, action_name: str) -> None:
        end = time.perf_counter()
        began = self.current_actions.pop(action_name, None)
        if began is None:
            raise ValueError(f"SimpleProfiler.stop({action_name!r}): that action was never started.")
        self.recorded_durations[action_name].append(end - began)

    def rows(self) -> list[tuple[str, float, int, float, float]]:
        """(action, mean s, calls, total s, percent of the run) per action, the most expensive first."""
        run_time = time.perf_counter() - self.start_time
        rows = []
        for action, durations in self.recorded_durations.items():
            if not durations:
                continue  # only read, never recorded
            total = math.fsum(durations)
            rows.append((action, total / len(durations), len(durations), total, 100.0 * total / run_time))
        # The extended table ranks by share of the run, the short one by mean duration (Lightning's choice).
        rows.sort(key=(lambda r: r[4]) if self.extended else (lambda r: r[1]), reverse=True)
        return rows

    def summary(self) -> str:
        stage = f"{self._stage.upper()} " if self._stage else ""
        rows = self.rows()
        if not rows:
            return ""
        width = max(len(r[0]) for r in rows)
        if self.extended:
            header = ("Action", "Mean duration (s)", "Num calls", "Total time (s)", "Percentage %")
            total = ("Total", "-", str(sum(r[2] for r in rows)), f"{time.perf_counter() - self.start_time:.5}",
                     "100 %")
            body = [(a, f"{m:.5}", str(n), f"{t:.5}", f"{p:.5}") for a, m, n, t, p in rows]
            table = [header, None, total, None, *body]
        else:
            table = [("Action", "Mean duration (s)", "Total time (s)"), None,
                     *[(a, f"{m:.5}", f"{t:.5}") for a, m, _, t, _ in rows]]
        lines = ["|  " + "\t|  ".join([cells[0].ljust(width), *(c.ljust(15) for c in cells[1:])]) + "\t|"
                 if cells else None for cells in table]
        rule = "-" * max(len(line.expandtabs()) for line in lines if line)
        out = [f"{stage}Profiler Report", rule, *(line or rule for line in lines), rule]
        return os.linesep.join(out) + os.linesep
