"""What a 2-process DDP run looks like from the outside: synced metrics, rank-0-only files, data sharding,
collectives, predict and lr_find. All read from one job (see conftest.two_rank_job)."""
import csv
import glob
import math
import os

import _djobs as J


def both(job):
    return [J.results(job, r) for r in (0, 1)]


def test_sync_dist_reduces_logged_values_across_ranks(two_rank_job):
    for rank, res in enumerate(both(two_rank_job)):
        io = res["io"]
        assert io["rank_mean_epoch"] == 0.5 and io["rank_mean_step"] == 0.5  # mean of ranks 0 and 1
        assert io["rank_max"] == 1.0
        assert io["rank_sum"] == 4.0  # (0 + 1) summed over the 4 steps of the last epoch
        assert io["rank_unsynced"] == float(rank)  # without sync_dist every rank keeps its own value
        assert io["val_rank"] == 0.5
    r0, r1 = both(two_rank_job)
    assert r0["io_validate"] == r1["io_validate"] and r0["io_validate"][0]["val_rank"] == 0.5


def test_only_rank_zero_writes_one_metrics_csv_and_one_checkpoint_set(two_rank_job):
    root = os.path.join(two_rank_job, "io")
    csvs = glob.glob(os.path.join(root, "**", "metrics.csv"), recursive=True)
    assert len(csvs) == 1, csvs
    assert sorted(os.listdir(os.path.join(root, "run"))) == ["version_0"]
    with open(csvs[0]) as fh:
        rows = list(csv.DictReader(fh))
    assert {r["rank_unsynced"] for r in rows if r["rank_unsynced"]} == {"0.0"}  # rank 0's values only
    ckpt_dirs = {os.path.dirname(p) for p in glob.glob(os.path.join(root, "**", "*.ckpt"), recursive=True)}
    assert len(ckpt_dirs) == 1
    files = sorted(os.listdir(ckpt_dirs.pop()))
    assert len(files) == 3 and "last.ckpt" in files, files  # top-2 by val_loss, plus last
    r0, r1 = both(two_rank_job)
    assert r0["io_ckpt"] == r1["io_ckpt"]  # every rank knows the same paths
    assert os.path.isfile(r0["io_ckpt"]["best"]) and os.path.isfile(r0["io_ckpt"]["last"])


def test_the_progress_bar_draws_on_rank_zero_only(two_rank_job):
    assert [res["io_bar_enabled"] for res in both(two_rank_job)] == [True, False]


def test_a_distributed_sampler_is_injected_keeps_shuffle_and_gets_set_epoch(two_rank_job):
    r0, r1 = (res["sampler"] for res in both(two_rank_job))
    for s in (r0, r1):
        assert s["kind"] == "DistributedSampler" and s["shuffle"] is True
        assert s["epoch"] == 2  # set_epoch ran for the last of the 3 epochs
    orders = []
    for epoch in ("0", "1", "2"):
        a, b = r0["seen"][epoch], r1["seen"][epoch]
        assert len(a) == len(b) == 10 and not set(a) & set(b) and set(a) | set(b) == set(range(20))
        orders.append(a)
    assert orders[0] != orders[1] != orders[2]  # a new permutation every epoch
    assert orders[0] != sorted(orders[0])  # shuffled


def test_a_custom_sampler_is_wrapped_shuffled_and_split_between_ranks(two_rank_job):
    """Lightning's DistributedSamplerWrapper: the custom sampler's output is sharded as a dataset would be."""
    import torch

    r0, r1 = (res["custom_sampler"] for res in both(two_rank_job))
    assert r0["warnings"] == []
    order = list(range(0, 20, 2)) + list(range(1, 20, 2))  # what the custom sampler yields
    positions = torch.randperm(20, generator=torch.Generator().manual_seed(0)).tolist()  # seed 0 + epoch 0
    assert r0["seen"] == [order[p] for p in positions[0::2]] and r1["seen"] == [order[p] for p in positions[1::2]]


def test_strategy_collectives_barrier_broadcast_all_gather_reduce(two_rank_job):
    for rank, res in enumerate(both(two_rank_job)):
        c = res["collectives"]
        assert c["broadcast"] == {"from": 0, "list": [0, 0]}
        assert c["all_gather"] == [[0.0, 10.0], [1.0, 11.0]]
        assert c["all_gather_dict"] == {"a": [0, 1]}
        assert (c["reduce_mean"], c["reduce_sum"], c["reduce_max"]) == (0.5, 1.0, 1.0)
        assert c["any_rank_one"] is True and c["all_rank_one"] is False


def test_predict_returns_each_ranks_share_and_every_sample_once(two_rank_job):
    p0, p1 = (res["predict"] for res in both(two_rank_job))
    assert sorted(p0 + p1) == list(range(20)) and not set(p0) & set(p1)


def test_a_prediction_writer_writes_each_ranks_share_with_its_dataset_indices(two_rank_job):
    import torch

    rows = {}
    for rank in (0, 1):
        saved = torch.load(os.path.join(two_rank_job, "predictions", f"rank{rank}.pt"))
        for batch, indices in zip(saved["predictions"], saved["batch_indices"]):
            rows.update(zip(indices, batch.tolist()))
    assert rows == {i: i for i in range(20)}  # every row once, and the indices say which row it is


def test_lr_find_runs_on_every_rank_and_every_rank_gets_rank_zeros_suggestion(two_rank_job):
    from ember.tuner import suggest

    l0, l1 = (res["lr_find"] for res in both(two_rank_job))
    assert l0 == l1  # rank 0's curve and suggestion, on both ranks
    # 20 steps were asked for; the one epoch of 8 batches per rank ends the test first.
    assert len(l0["lrs"]) == len(l0["losses"]) == 8 and all(math.isfinite(v) for v in l0["losses"])
    assert l0["lrs"] == sorted(l0["lrs"]) and l0["lrs"][0] == 1e-8  # the exponential ramp from min_lr
    # The suggestion is the one the default rule reads off that curve (Tuner's skip_begin=10, skip_end=1),
    # and the model got it.
    index, lr = suggest.suggest(l0["lrs"], l0["losses"], skip_begin=10, skip_end=1)
    assert l0["suggestion"] == lr == l0["lrs"][index] and l0["model_lr"] == lr
