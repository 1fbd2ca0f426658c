"""strategy="fsdp" (FSDP2 fully_shard) on CPU with gloo: same arithmetic as one process, full and sharded checkpoints."""
import os
import sys

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


def _one_process_bf16_reference():
    """The same program on one process with twice the batch, bf16-mixed: what FSDP's 2 x 4 should track."""
    import importlib.util

    import ember as L

    if J.JOBS not in sys.path:
        sys.path.insert(0, J.JOBS)  # features.py imports its neighbours (job_samplers), as when run as a script
    spec = importlib.util.spec_from_file_location("features_job", os.path.join(J.JOBS, "features.py"))
    features = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(features)
    L.seed_everything(0, verbose=False)
    model = features.Regressor("sgd")
    t = L.Trainer(accelerator="cpu", devices=1, precision="bf16-mixed", max_epochs=2, logger=False,
                  enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    t.fit(model, torch.utils.data.DataLoader(features.data(), batch_size=8))
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_fsdp_bf16_mixed_autocasts_keeps_float32_shards_and_tracks_one_process(fsdp_job):
    r0, r1 = J.results(fsdp_job, 0), J.results(fsdp_job, 1)
    for res in (r0, r1):
        assert res["bf16_seen"] == ["torch.bfloat16", ["torch.float32"]]  # bf16 compute, float32 master weights
        assert res["bf16_sharded_params"] == ["DTensor"]
    assert r0["bf16_val"] == r1["bf16_val"]
    state = torch.load(os.path.join(fsdp_job, "full_bf16.ckpt"), map_location="cpu", weights_only=False)["state_dict"]
    assert all(type(v) is torch.Tensor and v.dtype == torch.float32 for v in state.values())
    reference = _one_process_bf16_reference()
    # bf16 keeps 8 bits of mantissa (relative rounding 4e-3), and 2 x 4 rows are summed in another order than
    # 1 x 8 in the bf16 matmuls of the backward; after 32 SGD steps the weights (of size 0.1 to 0.8) agree to
    # a few 1e-3 (measured: 3.7e-3 at most, absolute).
    difference = max(float((reference[k] - state[k]).abs().max()) for k in reference)
    assert difference <= 1e-2, difference
    # And it trained like the float64 run of the same program (measured: 0.868 vs 0.873).
    assert r0["bf16_val"]["val_loss"] == pytest.approx(r0["val_sgd_acc1"]["val_loss"], rel=3e-2)
