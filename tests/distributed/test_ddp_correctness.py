"""DDP arithmetic: 2 processes with a per-rank batch of B train exactly like 1 process with a batch of 2B."""
import pytest
import torch

import _djobs as J


@pytest.mark.parametrize("opt, acc", [("sgd", 1), ("sgd", 2), ("adam", 1), ("adam", 2)])
def test_two_ranks_with_batch_b_end_with_the_weights_of_one_rank_with_batch_2b(two_rank_job, one_rank_job, opt, acc):
    name = f"correct_{opt}_acc{acc}"
    reference = J.weights(one_rank_job, name, 0)
    rank0, rank1 = J.weights(two_rank_job, name, 0), J.weights(two_rank_job, name, 1)
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0), "the two ranks hold different weights"
    assert J.max_relative_difference(reference, rank0) <= J.FLOAT64_REL_TOL


def test_the_same_program_runs_on_one_and_on_two_devices(two_rank_job, one_rank_job):
    one = J.results(one_rank_job, 0)
    two = [J.results(two_rank_job, r) for r in (0, 1)]
    assert one["identity"]["world_size"] == 1 and one["identity"]["strategy"] == "SingleDeviceStrategy"
    for rank, res in enumerate(two):
        assert res["identity"] == dict(global_rank=rank, local_rank=rank, node_rank=0, world_size=2,
                                       is_global_zero=rank == 0, num_nodes=1, num_devices=2, strategy="DDPStrategy")
        # Each rank sees half the data with half the batch: as many optimizer steps as the single process.
        for key in ("steps_sgd_acc1", "steps_sgd_acc2", "steps_adam_acc1", "steps_adam_acc2"):
            assert res[key] == one[key]
