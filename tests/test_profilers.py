"""Profilers on their own: the tables, the files, cProfile and torch.profiler output, the errors, and that a
profiler that is off leaves the per-batch code untouched."""
from __future__ import annotations

import json
import os
import re

import pytest
import torch

import ember as L
from ember.profilers import AdvancedProfiler, PassThroughProfiler, Profiler, PyTorchProfiler, SimpleProfiler
from boring import BoringWithEval, sum_loader

QUIET = dict(logger=False, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
TRAIN_STEP = "[Strategy]SingleDeviceStrategy.training_step"


class Model(BoringWithEval):
    pass  # its name is in the action names below ([LightningModule]Model.x)


def _fit(tmp_path, profiler, epochs=2, **kw):
    trainer = L.Trainer(max_epochs=epochs, profiler=profiler, default_root_dir=str(tmp_path), **QUIET, **kw)
    model = Model()
    trainer.fit(model, sum_loader(8, 2), sum_loader(6, 2))  # 4 training batches, 3 validation batches
    return trainer, model


def _row(summary: str, action: str) -> list[str]:
    line = next(line for line in summary.splitlines() if line.startswith(f"|  {action}") and
                line.split("|")[1].strip() == action)
    return [cell.strip() for cell in line.split("|")[1:-1]]


def test_simple_profiler_counts_every_action_and_prints_the_table_at_the_end_of_fit(tmp_path, capsys):
    profiler = SimpleProfiler()
    trainer, _ = _fit(tmp_path, profiler, num_sanity_val_steps=2)
    assert trainer.profiler is profiler
    counts = {action: len(d) for action, d in profiler.recorded_durations.items()}
    assert counts["run_training_epoch"] == 2
    assert counts["run_training_batch"] == counts[TRAIN_STEP] == 8
    assert counts["[_TrainingEpochLoop].train_dataloader_next"] == 8  # no extra fetch for the end of a sized loader
    assert counts["[Strategy]SingleDeviceStrategy.validation_step"] == 2 + 2 * 3  # sanity check + 2 epochs
    assert counts["[LightningModule]Model.optimizer_step"] == 8
    assert counts["[LightningModule]Model.on_train_epoch_start"] == 2
    assert all(d > 0 for durations in profiler.recorded_durations.values() for d in durations)
    out = capsys.readouterr().out
    assert "FIT Profiler Report" in out
    mean, calls, total, percent = _row(out, "run_training_batch")[1:]
    assert int(calls) == 8 and float(total) > 0 and float(mean) == pytest.approx(float(total) / 8, rel=1e-3)
    assert 0 < float(percent) < 100
    assert _row(out, "Total")[2] == str(sum(counts.values()))
    # The epoch contains its batches, so it takes at least as long as all of them.
    assert sum(profiler.recorded_durations["run_training_epoch"]) >= sum(profiler.recorded_durations["run_training_batch"])


def test_simple_profiler_short_table_has_mean_and_total_only(tmp_path, capsys):
    _fit(tmp_path, SimpleProfiler(extended=False), epochs=1)
    out = capsys.readouterr().out
    assert "Mean duration (s)" in out and "Num calls" not in out and "Percentage" not in out
    assert len(_row(out, "run_training_epoch")) == 3


def test_summary_goes_to_dirpath_stage_filename_for_each_stage(tmp_path, capsys):
    profiler = SimpleProfiler(dirpath=tmp_path / "prof", filename="perf")
    trainer, model = _fit(tmp_path, profiler, epochs=1)
    trainer.test(model, sum_loader(4, 2), verbose=False)
    assert sorted(os.listdir(tmp_path / "prof")) == ["fit-perf.txt", "test-perf.txt"]
    fit_text = (tmp_path / "prof" / "fit-perf.txt").read_text()
    test_text = (tmp_path / "prof" / "test-perf.txt").read_text()
    assert fit_text.startswith("FIT Profiler Report") and int(_row(fit_text, "run_training_batch")[2]) == 4
    assert test_text.startswith("TEST Profiler Report")
    assert int(_row(test_text, "[Strategy]SingleDeviceStrategy.test_step")[2]) == 2
    assert "Profiler Report" not in capsys.readouterr().out  # written, not printed


def test_without_dirpath_the_file_goes_to_the_log_dir(tmp_path):
    trainer, _ = _fit(tmp_path, SimpleProfiler(filename="perf"), epochs=1)
    assert trainer.log_dir == str(tmp_path)
    assert (tmp_path / "fit-perf.txt").read_text().startswith("FIT Profiler Report")


def test_trainer_profiler_names_and_the_default(tmp_path):
    assert isinstance(L.Trainer(**QUIET).profiler, PassThroughProfiler)
    assert isinstance(L.Trainer(profiler="simple", **QUIET).profiler, SimpleProfiler)
    assert isinstance(L.Trainer(profiler="Advanced", **QUIET).profiler, AdvancedProfiler)  # any case, as Lightning
    assert isinstance(L.Trainer(profiler="pytorch", **QUIET).profiler, PyTorchProfiler)
    assert L.pytorch.profilers.SimpleProfiler is SimpleProfiler


@pytest.mark.parametrize("value", ["fancy", 3, True])
def test_a_bad_profiler_is_refused_naming_the_value_and_the_allowed_ones(value):
    with pytest.raises(ValueError) as info:
        L.Trainer(profiler=value, **QUIET)
    message = str(info.value)
    assert f"profiler={value!r}" in message
    assert all(name in message for name in ("'simple'", "'advanced'", "'pytorch'", "Profiler"))


def test_barebones_refuses_a_profiler():
    with pytest.raises(ValueError, match=r"barebones=True, profiler='simple'"):
        L.Trainer(barebones=True, profiler="simple")


def test_simple_profiler_refuses_unbalanced_start_and_stop():
    profiler = SimpleProfiler()
    profiler.start("a")
    with pytest.raises(ValueError, match="'a'.*already running"):
        profiler.start("a")
    profiler.stop("a")
    with pytest.raises(ValueError, match="'b'.*never started"):
        profiler.stop("b")
    with profiler.profile("c"):
        pass
    assert len(profiler.recorded_durations["a"]) == len(profiler.recorded_durations["c"]) == 1


def test_a_custom_profiler_receives_lightnings_action_names(tmp_path):
    class Recording(Profiler):
        def __init__(self):
            super().__init__()
            self.events = []

        def start(self, action_name):
            self.events.append(("start", action_name))

        def stop(self, action_name):
            self.events.append(("stop", action_name))

    profiler = Recording()
    _fit(tmp_path, profiler, epochs=1, num_sanity_val_steps=0)
    starts = [a for kind, a in profiler.events if kind == "start"]
    assert starts.count("run_training_batch") == 4 and starts.count(TRAIN_STEP) == 4
    assert len(starts) == len(profiler.events) // 2  # every start has its stop
    # The batch's step runs inside run_training_batch, which runs inside run_training_epoch.
    i = profiler.events.index(("start", TRAIN_STEP))
    assert profiler.events.index(("start", "run_training_epoch")) < profiler.events.index(("start", "run_training_batch")) < i
    assert profiler.events.index(("stop", "run_training_batch")) > i


def test_advanced_profiler_reports_cprofile_stats_per_action(tmp_path):
    profiler = AdvancedProfiler(dirpath=tmp_path, filename="adv", line_count_restriction=4)
    _fit(tmp_path, profiler, epochs=1)
    text = (tmp_path / "fit-adv.txt").read_text()
    assert text.startswith("FIT Profiler Report")
    block = text.split(f"Profile stats for: {TRAIN_STEP}")[1].split("Profile stats for:")[0]
    assert "function calls" in block and "Ordered by: cumulative time" in block
    assert "due to restriction <4>" in block
    assert re.search(r"^\s+4\s.*boring\.py:\d+\(training_step\)$", block, re.M)  # 4 calls of the user's step


def test_advanced_profiler_dumps_raw_stats_and_refuses_a_bad_restriction(tmp_path):
    import pstats

    profiler = AdvancedProfiler(dirpath=tmp_path, filename="adv", dump_stats=True)
    _fit(tmp_path, profiler, epochs=1)
    dumped = tmp_path / f"fit-adv-{TRAIN_STEP}.prof".replace("/", "_")
    assert dumped.is_file()
    stats = pstats.Stats(str(dumped))
    assert any(func[2] == "training_step" and stat[0] == 4 for func, stat in stats.stats.items())
    with pytest.raises(ValueError, match=r"line_count_restriction=1.5"):
        AdvancedProfiler(line_count_restriction=1.5)


def test_advanced_profiler_nested_actions_do_not_collide():
    profiler = AdvancedProfiler()
    with profiler.profile("outer"):
        with profiler.profile("inner"):
            sum(range(1000))
        sorted(range(1000))
    text = profiler.summary()
    outer = text.split("Profile stats for: outer")[1].split("Profile stats for:")[0]
    inner = text.split("Profile stats for: inner")[1]
    assert "sorted" in outer and "sorted" not in inner  # the outer action picked up again after the inner one


def test_pytorch_profiler_writes_a_chrome_trace_and_an_operator_table(tmp_path):
    profiler = PyTorchProfiler(dirpath=tmp_path, filename="torch", row_limit=5, sort_by_key="cpu_time_total")
    _fit(tmp_path, profiler, epochs=1, num_sanity_val_steps=0)
    assert len(profiler.trace_paths) == 1
    trace_file = profiler.trace_paths[0]
    assert os.path.basename(trace_file).startswith("fit-torch") and trace_file.endswith(".pt.trace.json")
    with open(trace_file) as f:
        trace = json.load(f)
    events = trace["traceEvents"]
    ranges = [e for e in events if e.get("ph") == "X" and e.get("name") == f"[pl][profile]{TRAIN_STEP}"]
    assert len(ranges) == 4 and all(e["dur"] > 0 for e in ranges)
    assert any(e.get("name", "").startswith("[pl][module]torch.nn.modules.linear.Linear: layer") for e in events)
    assert any(e.get("name") == "aten::addmm" for e in events)  # the operators themselves
    table = (tmp_path / "fit-torch.txt").read_text()
    assert "Profile stats for: records" in table and "Self CPU" in table
    assert not torch.autograd._profiler_enabled()  # stopped at the end of the run


def test_pytorch_profiler_follows_a_schedule(tmp_path):
    schedule = torch.profiler.schedule(wait=1, warmup=1, active=2, repeat=1)
    profiler = PyTorchProfiler(dirpath=tmp_path, filename="sched", schedule=schedule)
    _fit(tmp_path, profiler, epochs=2, num_sanity_val_steps=0)
    assert len(profiler.trace_paths) == 1
    with open(profiler.trace_paths[0]) as f:
        steps = sorted({e["name"] for e in json.load(f)["traceEvents"] if e.get("name", "").startswith("ProfilerStep#")})
    assert steps == ["ProfilerStep#2", "ProfilerStep#3"]  # wait 1 step, warm up 1, record 2


def test_pytorch_profiler_refuses_bad_arguments():
    with pytest.raises(ValueError, match=r"sort_by_key='wall'.*'cpu_time_total'"):
        PyTorchProfiler(sort_by_key="wall")
    with pytest.raises(ValueError, match=r"schedule=3"):
        PyTorchProfiler(schedule=3)
    with pytest.raises(ValueError, match=r"row_limit"):
        PyTorchProfiler(table_kwargs={"row_limit": 3})


def test_a_failing_run_stops_the_torch_profiler(tmp_path):
    class Failing(Model):
        def training_step(self, batch, batch_idx):
            if batch_idx == 1:
                raise RuntimeError("boom")
            return super().training_step(batch, batch_idx)

    trainer = L.Trainer(max_epochs=1, profiler=PyTorchProfiler(dirpath=tmp_path), default_root_dir=str(tmp_path),
                        **QUIET)
    with pytest.raises(RuntimeError, match="boom"):
        trainer.fit(Failing(), sum_loader(8, 2))
    assert not torch.autograd._profiler_enabled()


def test_a_profiler_that_is_off_leaves_the_plain_callables_in_place(tmp_path):
    from ember.step import EpochPlan, plain_step, prepare_batch

    trainer, model = _fit(tmp_path, None, epochs=1)
    run = trainer.run_context
    assert run.profiler is None
    plan = EpochPlan(run)
    assert plan.training_step == model.training_step and plan.run_step is plain_step
    assert plan.prepare_batch is prepare_batch and plan.move_batches is False  # CPU: no batch transfer at all
    assert run.hooks.listeners("on_train_batch_start") == ()  # nobody overrides it: nothing is called per batch

    profiled, _ = _fit(tmp_path, "simple", epochs=1)
    plan = EpochPlan(profiled.run_context)
    assert plan.training_step != profiled.lightning_module.training_step and plan.move_batches is True
    assert len(profiled.hooks.listeners("on_train_batch_start")) == 2  # the module's and the strategy's, timed


def test_the_readme_profiling_example_runs(tmp_path, monkeypatch, capsys):
    readme = (__import__("pathlib").Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Profiling\n", 1)[1].split("\n## ", 1)[0]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md#profiling", "exec"), {"__name__": "readme_example"})
    out = capsys.readouterr().out
    assert "16 training steps" in out  # 2 epochs x 8 batches
    assert (tmp_path / "profiles" / "fit-perf.txt").read_text().startswith("FIT Profiler Report")
    assert (tmp_path / "profiles" / "fit-torch.txt").is_file()
    events = int(re.search(r"^(\d+) trace events in ", out, re.M).group(1))
    assert events > 100


def test_the_learning_rate_range_test_stops_the_torch_profiler_it_ran_under(tmp_path):
    from ember.tuner import Tuner

    trainer = L.Trainer(max_epochs=1, profiler=PyTorchProfiler(dirpath=tmp_path), default_root_dir=str(tmp_path),
                        **QUIET)
    finder = Tuner(trainer).lr_find(Model(), train_dataloaders=sum_loader(32, 2), num_training=5, update_attr=False)
    assert len(finder.results["lr"]) == 5
    assert not torch.autograd._profiler_enabled()


def test_pytorch_profiler_without_chrome_export_writes_no_trace(tmp_path):
    profiler = PyTorchProfiler(dirpath=tmp_path, filename="nochrome", export_to_chrome=False)
    _fit(tmp_path, profiler, epochs=1, num_sanity_val_steps=0)
    assert profiler.trace_paths == [] and not list(tmp_path.glob("*.json"))
    assert "Self CPU" in (tmp_path / "fit-nochrome.txt").read_text()


def test_an_action_that_never_ran_reads_as_empty_and_stays_out_of_the_table():
    profiler = SimpleProfiler()
    assert profiler.recorded_durations["never"] == [] and profiler.summary() == ""
    with profiler.profile("once"):
        pass
    assert "never" not in profiler.summary() and "once" in profiler.summary()
