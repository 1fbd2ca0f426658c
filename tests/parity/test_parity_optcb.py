"""Optimisation callbacks against Lightning 2.6.6: accumulation schedules, weight averaging, the batch-size
finder and OnExceptionCheckpoint."""
from __future__ import annotations

import pytest
import torch
from parity_harness import assert_same_run, boring_class, quiet, run_both, run_program


def _step_lr(module):
    opt = torch.optim.SGD(module.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


@pytest.mark.parametrize("scheduling,n_train,expected_steps", [
    ({1: 2, 2: 4}, 24, 6 + 3 + 2 + 2),  # 6 batches an epoch; the 4-window closes early at each epoch's end
    ({0: 3}, 20, 4 * 2),  # 5 batches: a window of 3, then the epoch's last 2
], ids=["growing", "from-epoch-0"])
def test_accumulation_schedule_trains_like_lightning(tmp_path, scheduling, n_train, expected_steps):
    def callbacks(L):
        return [L.pytorch.callbacks.GradientAccumulationScheduler(scheduling=dict(scheduling))]

    a, b = run_both(run_program, tmp_path=tmp_path, model=dict(configure=_step_lr, n_train=n_train),
                    callbacks=callbacks, trainer=dict(max_epochs=4))
    assert_same_run(a, b)
    assert b["global_step"] == expected_steps
    # The step scheduler stepped once per optimizer step in both.
    lrs = [r["trainer"].optimizers[0].param_groups[0]["lr"] for r in (a, b)]
    assert lrs[0] == lrs[1] == 0.1 * 0.5 ** (expected_steps // 2)
    assert [r["trainer"].accumulate_grad_batches for r in (a, b)] == [max(scheduling.values())] * 2


@pytest.mark.parametrize("scheduling,error", [
    ({}, TypeError), ({-1: 2}, Exception), ({0: 0}, Exception), ({"1": 2}, Exception)])
def test_accumulation_schedule_refuses_what_lightning_refuses(scheduling, error):
    import lightning
    import ember

    for L in (lightning, ember):
        with pytest.raises(error):
            L.pytorch.callbacks.GradientAccumulationScheduler(scheduling=scheduling)


@pytest.mark.parametrize("case", ["trainer-accumulates", "manual"])
def test_accumulation_schedule_conflicts_fail_in_both(tmp_path, case):
    def program(L, tmp_path):
        hooks = {}
        kw = {}
        if case == "manual":
            def __init__(self):
                L.LightningModule.__init__(self)
                torch.manual_seed(0)
                self.layer = torch.nn.Linear(3, 1)
                self.automatic_optimization = False
            hooks["__init__"] = __init__
        else:
            kw["accumulate_grad_batches"] = 2
        m = boring_class(L, **hooks)()
        t = L.Trainer(**quiet(tmp_path, max_epochs=1, callbacks=[
            L.pytorch.callbacks.GradientAccumulationScheduler({1: 2})], **kw))
        try:
            t.fit(m)
        except (RuntimeError, ValueError) as exc:
            return type(exc).__name__
        return None

    a, b = run_both(program, tmp_path=tmp_path)
    assert a == b == ("RuntimeError" if case == "manual" else "ValueError")
