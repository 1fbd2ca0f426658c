"""Exact resume under DDP, on the same number of ranks, from the checkpoint a crashed job left behind."""
import os

import torch

import _djobs as J


def test_ddp_resume_from_a_mid_epoch_checkpoint_is_bitwise_identical(crashed_job, tmp_path):
    crash_dir, proc, _ = crashed_job
    ckpt = os.path.join(crash_dir, "ckpt", "epoch=1-step=8.ckpt")  # 6 batches per epoch: batch 2 of epoch 1
    assert os.path.isfile(ckpt), proc.stderr[-3000:]
    assert not os.path.exists(os.path.join(crash_dir, "ckpt", "epoch=1-step=9.ckpt"))  # it crashed at step 8
    out = str(tmp_path)
    J.check(J.run("resume.py", out, ckpt, timeout=200, cwd=out))
    for rank in (0, 1):
        straight, resumed = J.weights(out, "straight", rank), J.weights(out, "resumed", rank)
        assert all(torch.equal(straight[k], resumed[k]) for k in straight), f"rank {rank} differs"
        assert torch.load(os.path.join(out, f"steps_rank{rank}.pt"))["global_step"] == 12
