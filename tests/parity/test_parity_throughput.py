"""ThroughputMonitor, Throughput and measure_flops against Lightning 2.6.6: the logged keys, the steps they are
logged at and the exact counts (batches, samples, lengths); the rates are timings, so only their sign is
compared. Throughput itself is compared exactly on given times."""
from __future__ import annotations

import pytest
import torch
from parity_harness import boring_class, lightning, quiet, run_both


class _Rows:
    """A logger for either framework that keeps every log_metrics call."""

    @staticmethod
    def make(L):
        class Rows(L.pytorch.loggers.Logger):
            def __init__(self):
                super().__init__()
                self.rows = []

            name = "rows"
            version = 0

            def log_metrics(self, metrics, step=None):
                self.rows.append((step, dict(metrics)))

            def log_hyperparams(self, *args, **kwargs):
                pass

        return Rows()


def _flops_of_linear(L):
    measure = lightning.pytorch.utilities.measure_flops if L is lightning else L.utilities.measure_flops
    with torch.device("meta"):
        net, x = torch.nn.Linear(3, 1), torch.randn(4, 3)
    return measure(net, lambda: net(x), lambda y: y.sum())


def _throughput_program(L, tmp_path, accumulate=1, every=1):
    rows = _Rows.make(L)
    model = boring_class(L)()
    model.flops_per_batch = _flops_of_linear(L)
    monitor = L.pytorch.callbacks.ThroughputMonitor(batch_size_fn=lambda b: b[0].shape[0],
                                                    length_fn=lambda b: 3 * b[0].shape[0], window_size=2)
    trainer = L.Trainer(**quiet(tmp_path, max_epochs=2, limit_val_batches=2, log_every_n_steps=every, callbacks=[monitor],
                                logger=rows, accumulate_grad_batches=accumulate))
    trainer.fit(model)
    trainer.validate(model)
    trainer.test(model)
    kept = [(step, m) for step, m in rows.rows if any("/" in k for k in m)]
    return {"rows": kept, "logged": sorted(trainer.logged_metrics), "flops": model.flops_per_batch}


def _counts(row):
    step, metrics = row
    return step, sorted(metrics), {k: v for k, v in metrics.items() if not k.endswith(("per_sec", "time"))}


@pytest.mark.parametrize("accumulate", [1, 2])
def test_throughput_monitor_logs_lightnings_keys_and_counts(tmp_path, accumulate):
    a, b = run_both(_throughput_program, tmp_path=tmp_path, accumulate=accumulate)
    assert len(a["rows"]) == len(b["rows"])
    assert [_counts(r) for r in a["rows"]] == [_counts(r) for r in b["rows"]]
    assert a["logged"] == b["logged"]
    assert b["flops"] == 48  # Linear(3, 1) on 4 rows: 2*4*3 forward, as much again for the weight's gradient
    train = [m for _, m in b["rows"] if "train/batches" in m]
    assert len(train) == 8 // accumulate  # one row per optimizer step (16 samples / 4 per batch, 2 epochs)
    assert [m["train/samples"] for m in train] == [4 * accumulate * (i + 1) for i in range(len(train))]
    assert [m["train/lengths"] for m in train] == [3 * s for s in (m["train/samples"] for m in train)]
    assert train[-1]["train/batches"] == 8 and train[-1]["epoch"] == 1
    rates = [v for _, m in b["rows"] for k, v in m.items() if k.endswith("per_sec")]
    assert rates and all(v > 0 for v in rates)
    full = train[-1]
    assert set(full) == {"epoch", "train/time", "train/batches", "train/samples", "train/lengths",
                         "train/device/batches_per_sec", "train/device/samples_per_sec",
                         "train/device/items_per_sec", "train/device/flops_per_sec"}
    # per second, the flops are 12x the samples (48 flops a batch of 4) in the same window
    assert full["train/device/flops_per_sec"] == pytest.approx(12 * full["train/device/samples_per_sec"])
    # validate() continues the counts of the validation inside fit's last epoch; test() starts its own
    val = [m for _, m in b["rows"] if "validate/batches" in m]
    assert [m["validate/batches"] for m in val] == [1, 2, 1, 2, 3, 4]
    assert [m["test/samples"] for _, m in b["rows"] if "test/samples" in m] == [4, 8]


def test_throughput_monitor_follows_log_every_n_steps_like_lightning(tmp_path):
    a, b = run_both(_throughput_program, tmp_path=tmp_path, every=2)
    assert [_counts(r) for r in a["rows"]] == [_counts(r) for r in b["rows"]]
    # training rows every 2nd step; evaluation rows at every 2nd batch of each run
    assert [m["train/batches"] for _, m in b["rows"] if "train/batches" in m] == [2, 4, 6, 8]
    assert [(s, m["validate/batches"]) for s, m in b["rows"] if "validate/batches" in m] == [(2, 2), (2, 2), (2, 4)]


def test_throughput_rates_match_lightning_on_given_times():
    from lightning.fabric.utilities.throughput import Throughput as LightningThroughput

    from ember.utilities import Throughput

    for world_size, available in ((1, None), (2, 1e3)):
        ours, theirs = (cls(available_flops=available, world_size=world_size, window_size=3)
                        for cls in (Throughput, LightningThroughput))
        got, expected = [], []
        for i, t in enumerate((0.5, 1.0, 2.0, 4.0)):
            for th, out in ((ours, got), (theirs, expected)):
                th.update(time=t, batches=i + 1, samples=4 * (i + 1), lengths=12 * (i + 1), flops=100)
                out.append(th.compute())
        assert got == expected
    last = got[-1]  # world_size 2: window (1.0, 2.0, 4.0), 3 seconds for 2 batches
    assert last["device/batches_per_sec"] == pytest.approx(2 / 3) and last["batches_per_sec"] == pytest.approx(4 / 3)
    assert last["device/flops_per_sec"] == pytest.approx(200 / 3) and last["device/mfu"] == pytest.approx(0.2 / 3)
    with pytest.raises(ValueError, match=r"samples=1, batches=2"):
        Throughput().update(time=1.0, batches=2, samples=1)
    with pytest.raises(ValueError, match=r"window_size=1"):
        Throughput(window_size=1)


def test_measure_flops_counts_a_linear_exactly():
    from ember.utilities import measure_flops

    net, x = torch.nn.Linear(16, 8), torch.randn(5, 16)
    assert measure_flops(net, lambda: net(x)) == 2 * 5 * 16 * 8
    x.requires_grad_(True)  # the backward now also computes the input's gradient: two more matmuls
    assert measure_flops(net, lambda: net(x), lambda y: y.sum()) == 3 * 2 * 5 * 16 * 8
    assert measure_flops(net, lambda: net(x), lambda y: y.sum()) == \
        lightning.pytorch.utilities.measure_flops(net, lambda: net(x), lambda y: y.sum())
