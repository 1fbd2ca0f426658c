"""``PyTorchProfiler``: ``torch.profiler`` around the run, with a Chrome/TensorBoard trace and an operator table."""
from __future__ import annotations

import os
from typing import Any

import torch
from torch.profiler import ProfilerActivity, record_function, tensorboard_trace_handler

from .profiler import Profiler

_STEP_ACTIONS = ("training_step", "validation_step", "test_step", "predict_step")
SORT_KEYS = ("cpu_time", "cuda_time", "cpu_time_total", "cuda_time_total", "cpu_memory_usage", "cuda_memory_usage",
             "self_cpu_memory_usage", "self_cuda_memory_usage", "count")


class PyTorchProfiler(Profiler):
    """Runs ``torch.profiler.profile`` from the first action of a run to its end.

    Every action shows in the trace as a ``record_function`` range named ``[pl][profile]<action>``, and
    (``record_module_names``) every submodule's forward as ``[pl][module]<class>: <name>``. Each step
    action (``training_step``, ``validation_step``, ...) is one profiler step, so a ``schedule`` given in
    ``profiler_kwargs`` (``schedule=torch.profiler.schedule(wait=1, warmup=1, active=3)``) counts steps;
    without one the whole run is recorded. With ``export_to_chrome`` the trace is written by
    ``torch.profiler.tensorboard_trace_handler`` into ``dirpath`` (the Trainer's log_dir by default) as
    ``<stage>-<filename>.<timestamp>.pt.trace.json``: open it in TensorBoard's profiler plugin, or in
    Chrome at chrome://tracing or Perfetto. The summary is ``key_averages().table(...)``.

    ``profiler_kwargs`` go to ``torch.profiler.profile`` (``activities``, ``schedule``, ``record_shapes``,
    ``profile_memory``, ``with_stack``, ``on_trace_ready``, ...).
    """

    def __init__(self, dirpath: str | os.PathLike | None = None, filename: str | None = None,
                 group_by_input_shapes: bool = False, emit_nvtx: bool = False, export_to_chrome: bool = True,
                 row_limit: int = 20, sort_by_key: str | None = None, record_module_names: bool = True,
                 table_kwargs: dict[str, Any] | None = None, **profiler_kwargs: Any) -> None:
        super().__init__(dirpath=dirpath, filename=filename)
        cuda = torch.cuda.is_available() or ProfilerActivity.CUDA in profiler_kwargs.get("activities", ())
        self.sort_by_key = sort_by_key or ("cuda_time_total" if cuda else "cpu_time_total")
        if self.sort_by_key not in SORT_KEYS:
            raise ValueError(f"PyTorchProfiler(sort_by_key={sort_by_key!r}) is not valid; allowed: "
                             f"{', '.join(map(repr, SORT_KEYS))}.")
        schedule = profiler_kwargs.get("schedule")
        if schedule is not None and not callable(schedule):
            raise ValueError(f"PyTorchProfiler(schedule={schedule!r}) is not valid; allowed: a callable such as "
                             "torch.profiler.schedule(wait=1, warmup=1, active=3).")
        table_kwargs = dict(table_kwargs or {})
        for key in ("sort_by", "row_limit"):
            if key in table_kwargs:
                raise ValueError(f"PyTorchProfiler(table_kwargs={{{key!r}: ...}}) is not valid: use the "
                                 f"{'sort_by_key' if key == 'sort_by' else 'row_limit'} argument instead.")
        self.group_by_input_shapes = group_by_input_shapes and profiler_kwargs.get("record_shapes", False)
        self.emit_nvtx = emit_nvtx
        self.export_to_chrome = export_to_chrome
        self.row_limit = row_limit
        self.record_module_names = record_module_names
        self.table_kwargs = table_kwargs
        self.profiler_kwargs = profiler_kwargs
        self.profiler: Any = None  # the running torch.profiler.profile (or emit_nvtx)
        self.function_events: Any = None  # what the last run recorded
        self.trace_paths: list[str] = []  # the Chrome traces written so far
        self._ranges: dict[str, Any] = {}  # action -> its open record_function
        self._module_hooks: list[Any] = []

    # ---- the torch profiler's life: from the first action to describe()/teardown() ----
    def _open(self) -> None:
        if self.emit_nvtx:
            self.profiler = torch.autograd.profiler.emit_nvtx()
        else:
            kwargs = {"activities": [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available()
                                                              else []), **self.profiler_kwargs}
            if self.export_to_chrome and "on_trace_ready" not in kwargs:
                kwargs["on_trace_ready"] = self._write_trace
            self.profiler = torch.profiler.profile(**kwargs)
        self.profiler.__enter__()
        if self.record_module_names and self.lightning_module is not None:
            self._label_submodules(self.lightning_module)

    def _write_trace(self, prof: Any) -> None:
        name = os.path.basename(self.output_path("", "") or "") or "trace"
        before = set(os.listdir(self.dirpath)) if os.path.isdir(self.dirpath or ".") else set()
        tensorboard_trace_handler(os.fspath(self.dirpath or "."), worker_name=name)(prof)
        after = set(os.listdir(self.dirpath or "."))
        self.trace_paths += sorted(os.path.join(os.fspath(self.dirpath or "."), f) for f in after - before)

    def _label_submodules(self, module: torch.nn.Module) -> None:
        # A record_function range around each submodule's forward names it in the trace.
        for name, sub in module.named_modules():
            if not name:
                continue
            label = f"[pl][module]{type(sub).__module__}.{type(sub).__name__}: {name}"
            ranges: list[Any] = []

            def enter(_m: Any, _inputs: Any, _label: str = label, _ranges: list = ranges) -> None:
                _ranges.append(record_function(_label).__enter__())

            def leave(_m: Any, _inputs: Any, _out: Any, _ranges: list = ranges) -> None:
                if _ranges:
                    _ranges.pop().__exit__(None, None, None)

            self._module_hooks += [sub.register_forward_pre_hook(enter), sub.register_forward_hook(leave)]

    def _close(self) -> None:
        for action in list(self._ranges):
            self._ranges.pop(action).__exit__(None, None, None)
        for handle in self._module_hooks:
            handle.remove()
        self._module_hooks = []
        if self.profiler is not None:
            self.profiler.__exit__(None, None, None)
            if not self.emit_nvtx:
                self.function_events = self.profiler.events()
            self.profiler = None

    # ---- the Profiler interface ----
    def start(self, action_name: str) -> None:
        if self.profiler is None:
            self._open()
        if action_name not in self._ranges:
            self._ranges[action_name] = record_function("[pl][profile]" + action_name).__enter__()

    def stop(self, action_name: str) -> None:
        opened = self._ranges.pop(action_name, None)
        if opened is not None:
            opened.__exit__(None, None, None)
        if self.profiler is not None and not self.emit_nvtx and action_name.endswith(_STEP_ACTIONS):
            self.profiler.step()  # one step per training/validation/test/predict step: the schedule's clock

    def summary(self) -> str:
        self._close()
        if self.emit_nvtx or not self.function_events:
            return ""
        averages = self.function_events.key_averages(group_by_input_shapes=self.group_by_input_shapes)
        table = averages.table(sort_by=self.sort_by_key, row_limit=self.row_limit, **self.table_kwargs)
        return self._report({"records": table})

    def teardown(self, stage: str | None) -> None:
        self._close()
