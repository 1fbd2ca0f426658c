"""``AdvancedProfiler``: Python's ``cProfile`` per action, reported with ``pstats``."""
from __future__ import annotations

import cProfile
import io
import os
import pstats

from .profiler import Profiler


class AdvancedProfiler(Profiler):
    """One ``cProfile.Profile`` per action: which functions each action spent its time in.

    ``line_count_restriction`` limits each action's table: an int (that many functions) or a float in
    [0, 1] (that fraction of them), as ``pstats.Stats.print_stats`` takes it. ``dump_stats=True`` also
    writes each action's raw stats to ``dirpath/<stage>-<filename>-<action>.prof`` (for snakeviz & co).
    """

    def __init__(self, dirpath: str | os.PathLike | None = None, filename: str | None = None,
                 line_count_restriction: float = 1.0, dump_stats: bool = False) -> None:
        super().__init__(dirpath=dirpath, filename=filename)
        if isinstance(line_count_restriction, bool) or not isinstance(line_count_restriction, (int, float)) or (
                isinstance(line_count_restriction, float) and not 0.0 <= line_count_restriction <= 1.0) or \
                line_count_restriction < 0:
            raise ValueError(f"AdvancedProfiler(line_count_restriction={line_count_restriction!r}) is not valid; "
                             "allowed: an int >= 0 (functions) or a float in [0.0, 1.0] (fraction of them).")
        self.line_count_restriction = line_count_restriction
        self.dump_stats = dump_stats
        self.profiled_actions: dict[str, cProfile.Profile] = {}
        # Only one cProfile can collect at a time, so a nested action pauses the one around it and
        # hands it back when it stops.
        self._running: list[str] = []

    def start(self, action_name: str) -> None:
        if self._running:
            self.profiled_actions[self._running[-1]].disable()
        self._running.append(action_name)
        self.profiled_actions.setdefault(action_name, cProfile.Profile()).enable()

    def stop(self, action_name: str) -> None:
        if action_name not in self._running:
            raise ValueError(f"AdvancedProfiler.stop({action_name!r}): that action was never started.")
        self.profiled_actions[action_name].disable()
        self._running.remove(action_name)
        if self._running:
            self.profiled_actions[self._running[-1]].enable()

    def summary(self) -> str:
        sections = {}
        for action, prof in self.profiled_actions.items():
            if self.dump_stats:
                path = self.output_path(action, ".prof")
                os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
                prof.dump_stats(path)
            text = io.StringIO()
            pstats.Stats(prof, stream=text).strip_dirs().sort_stats("cumulative").print_stats(
                self.line_count_restriction)
            sections[action] = text.getvalue()
        return self._report(sections) if sections else ""

    def teardown(self, stage: str | None) -> None:
        for action in reversed(self._running):
            self.profiled_actions[action].disable()
        self._running.clear()
        self.profiled_actions.clear()
