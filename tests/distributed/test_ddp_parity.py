"""DDP parity with Lightning 2.6.6: the same 2-process program (jobs/ddp_parity.py), launched once per framework.

Every case of the program runs in one launch per framework (process start dominates the cost). For each
case, stage and rank the tests compare: the dataset indices read (per epoch and per evaluation), global_step,
the batches per epoch, callback_metrics (sync_dist), the final weights (1e-6 relative) and the state of
the global RNG. ember runs the program under strategy="ddp" (every case), ddp_spawn (fit, validate, test
and predict) and torchrun (every case); Lightning under strategy="ddp".
"""
import glob
import json
import math
import os
import subprocess
import sys

import pytest
import torch

import _djobs as J

CASES = ("unshuffled", "shuffled", "uneven", "drop_last", "accumulate", "val_sync", "evaluate", "evaluate_shuffled",
         "custom_sampler", "batch_sampler", "overfit", "own_sampler", "dropout", "two_loaders")
SPAWN_CASES = ("evaluate",)  # ddp_spawn starts fresh workers for every entry point: one case covers all four


def _launch(out: str, framework: str, *extra: str) -> str:
    J.check(J.run("ddp_parity.py", framework, out, *extra, timeout=300, cwd=out))
    return out


@pytest.fixture(scope="module")
def lightning_run(tmp_path_factory):
    pytest.importorskip("lightning")
    return _launch(str(tmp_path_factory.mktemp("parity_lightning")), "lightning")


@pytest.fixture(scope="module")
def ember_run(tmp_path_factory):
    return _launch(str(tmp_path_factory.mktemp("parity_ember")), "ember")


@pytest.fixture(scope="module")
def spawn_run(tmp_path_factory):
    return _launch(str(tmp_path_factory.mktemp("parity_spawn")), "ember", "--strategy", "ddp_spawn",
                   "--only", ",".join(SPAWN_CASES))




@pytest.fixture(scope="module")
def torchrun_run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("parity_torchrun"))
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    cmd = [*J.netns_prefix(), torchrun, "--standalone", "--nproc_per_node=2", os.path.join(J.JOBS, "ddp_parity.py"), "ember",
           out]
    proc = subprocess.run(cmd, cwd=out, env=J.clean_env(), capture_output=True, text=True, timeout=300)
    J.check(proc)
    return out


def _records(out: str, case: str) -> dict[str, dict]:
    found = {}
    for path in sorted(glob.glob(os.path.join(out, f"{case}.*.json"))):
        name = os.path.basename(path)[: -len(".json")]
        with open(path) as fh:
            found[name] = json.load(fh)
        found[name]["weights"] = torch.load(path[: -len(".json")] + ".pt")
    return found


def _assert_same_run(reference: str, candidate: str, case: str) -> None:
    want, got = _records(reference, case), _records(candidate, case)
    assert want and sorted(want) == sorted(got), f"{case}: stages x ranks differ: {sorted(want)} vs {sorted(got)}"
    for name, a in want.items():
        b = got[name]
        assert b["world_size"] == a["world_size"] == 2
        for key in ("global_step", "current_epoch", "num_training_batches", "seen", "eval_seen", "predicted", "rng"):
            assert b[key] == a[key], f"{name}: {key}: Lightning {a[key]} != ember {b[key]}"
        assert sorted(b["metrics"]) == sorted(a["metrics"]), name
        for metric, value in a["metrics"].items():
            assert math.isclose(b["metrics"][metric], value, rel_tol=1e-6, abs_tol=1e-9), \
                f"{name}: {metric}: Lightning {value} != ember {b['metrics'][metric]}"
        assert J.max_relative_difference(a["weights"], b["weights"]) <= 1e-6, name


@pytest.mark.parametrize("case", CASES)
def test_ddp_reads_and_trains_like_lightning(lightning_run, ember_run, case):
    _assert_same_run(lightning_run, ember_run, case)


@pytest.mark.parametrize("case", SPAWN_CASES)
def test_ddp_spawn_reads_and_trains_like_lightning(lightning_run, spawn_run, case):
    _assert_same_run(lightning_run, spawn_run, case)


@pytest.mark.parametrize("case", CASES)
def test_torchrun_reads_and_trains_like_lightning(lightning_run, torchrun_run, case):
    _assert_same_run(lightning_run, torchrun_run, case)


def test_both_warn_about_the_same_shuffled_evaluation_loaders(lightning_run, ember_run):
    for rank in (0, 1):
        with open(os.path.join(lightning_run, f"warnings.rank{rank}.json")) as a, \
                open(os.path.join(ember_run, f"warnings.rank{rank}.json")) as b:
            assert json.load(b) == json.load(a)
    with open(os.path.join(lightning_run, "warnings.rank0.json")) as fh:
        assert json.load(fh)["evaluate_shuffled"] == ["predict", "val"]  # rank 0 only, as rank_zero_warn


def test_the_unshuffled_train_loader_is_read_shuffled_as_lightning_documents(lightning_run):
    """A guard on the program itself: Lightning's train sampler shuffles (seed 0 + epoch) an unshuffled loader."""
    for rank in (0, 1):
        seen = _records(lightning_run, "unshuffled")[f"unshuffled.fit.rank{rank}"]["seen"]
        for epoch in ("0", "1", "2"):
            order = torch.randperm(48, generator=torch.Generator().manual_seed(int(epoch))).tolist()
            assert seen[epoch] == order[rank::2]


def test_two_train_loaders_are_each_sharded_across_the_ranks(ember_run):
    records = _records(ember_run, "two_loaders")
    r0, r1 = records["two_loaders.fit.rank0"], records["two_loaders.fit.rank1"]
    # loader a: 48 samples, 24 a rank, 6 batches of 4; loader b: 20 samples, 10 a rank, 3 batches, read twice
    assert r0["num_training_batches"] == r1["num_training_batches"] == 6
    assert r0["global_step"] == 12
    for epoch in ("0", "1"):
        a0, a1 = r0["seen"][f"{epoch}a"], r1["seen"][f"{epoch}a"]
        assert len(a0) == len(a1) == 24 and sorted(a0 + a1) == list(range(48))  # disjoint halves of a
        b0, b1 = r0["seen"][f"{epoch}b"], r1["seen"][f"{epoch}b"]
        assert len(b0) == 20 and b0[:10] == b0[10:]  # batches of 4, 4, 2: its half of b, then the same again
        assert sorted(set(b0) | set(b1)) == list(range(20)) and not set(b0) & set(b1)
