"""DeviceStatsMonitor against Lightning 2.6.6 on the CPU: the same keys at the same steps after the same
events (the values are the machine's, so only their range is checked)."""
from __future__ import annotations

import pytest
from parity_harness import boring_class, quiet, run_both
from test_parity_throughput import _Rows


def _device_stats_program(L, tmp_path, cpu_stats=None, every=2, accumulate=1):
    rows = _Rows.make(L)
    trainer = L.Trainer(**quiet(tmp_path, max_epochs=2, limit_val_batches=2, log_every_n_steps=every,
                                accumulate_grad_batches=accumulate, logger=rows,
                                callbacks=[L.pytorch.callbacks.DeviceStatsMonitor(cpu_stats=cpu_stats)]))
    model = boring_class(L)()
    trainer.fit(model)
    trainer.test(model)
    return [(step, sorted(m), m) for step, m in rows.rows if any(k.startswith("DeviceStatsMonitor") for k in m)]


@pytest.mark.parametrize("every,accumulate", [(2, 1), (1, 2)])
def test_device_stats_monitor_logs_cpu_stats_like_lightning(tmp_path, every, accumulate):
    a, b = run_both(_device_stats_program, tmp_path=tmp_path, every=every, accumulate=accumulate)
    assert [(s, k) for s, k, _ in a] == [(s, k) for s, k, _ in b]
    events = {k.split("/")[0] for _, keys, _ in b for k in keys}
    assert events == {f"DeviceStatsMonitor.on_{e}" for e in ("train_batch_start", "train_batch_end",
                                                           "validation_batch_start", "validation_batch_end",
                                                           "test_batch_start", "test_batch_end")}
    assert {k.split("/")[1] for _, keys, _ in b for k in keys} == {"cpu_percent", "cpu_vm_percent",
                                                                  "cpu_swap_percent"}
    assert all(0 <= v <= 100 for _, _, m in b for v in m.values())
    if every == 2:  # 4 batches an epoch: the 2nd and 4th train batches of each epoch, at steps 1, 3, 5, 7
        train_end = [s for s, keys, _ in b if keys[0].startswith("DeviceStatsMonitor.on_train_batch_end")]
        assert train_end == [1, 3, 5, 7]


def test_device_stats_monitor_off_on_the_cpu_and_needs_a_logger(tmp_path):
    a, b = run_both(_device_stats_program, tmp_path=tmp_path, cpu_stats=False)
    assert a == b == []
    import ember

    trainer = ember.Trainer(**quiet(tmp_path, max_epochs=1, callbacks=[ember.pytorch.callbacks.DeviceStatsMonitor()]))
    with pytest.raises(ValueError, match=r"DeviceStatsMonitor needs a logger"):
        trainer.fit(boring_class(ember)())
    with pytest.raises(ValueError, match=r"cpu_stats='yes'"):
        ember.pytorch.callbacks.DeviceStatsMonitor(cpu_stats="yes")
