"""strategy="fsdp" (FSDP2 fully_shard) on CPU with gloo: same arithmetic as one process, full and sharded checkpoints."""
import os

import pytest
import torch

import _djobs as J


@pytest.fixture(scope="module")
def fsdp_job(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("fsdp"))
    J.check(J.run("fsdp.py", out, timeout=300, cwd=out))
    return out


@pytest.mark.parametrize("opt, acc", [("sgd", 1), ("adam", 2)])
def test_fsdp_trains_like_one_process_and_saves_a_full_plain_checkpoint(fsdp_job, one_rank_job, opt, acc):
    ckpt = torch.load(os.path.join(fsdp_job, f"full_{opt}_acc{acc}.ckpt"), map_location="cpu", weights_only=False)
    state = ckpt["state_dict"]
    assert all(type(v) is torch.Tensor for v in state.values())  # gathered: plain tensors, loadable anywhere
    reference = J.weights(one_rank_job, f"correct_{opt}_acc{acc}", 0)
    assert J.max_relative_difference(reference, state) <= J.FLOAT64_REL_TOL
    r0, r1 = J.results(fsdp_job, 0), J.results(fsdp_job, 1)
    assert r0[f"sharded_params_{opt}"] == "DTensor"  # the parameters really were sharded
    assert r0[f"val_{opt}_acc{acc}"] == r1[f"val_{opt}_acc{acc}"]  # validation runs through the shards


def test_fsdp_sharded_checkpoint_is_one_file_per_rank_and_resumes_exactly(fsdp_job):
    res = J.results(fsdp_job, 0)
    assert res["sharded_files"] == [".metadata", "__0_0.distcp", "__1_0.distcp", "meta.pt"]
    assert res["resumed_step"] == 16
    assert res["sharded_resume_identical"] and J.results(fsdp_job, 1)["sharded_resume_identical"]
