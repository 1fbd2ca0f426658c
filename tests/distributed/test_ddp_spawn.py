"""strategy="ddp_spawn" trains like strategy="ddp", and the calling process ends with the trained weights."""
import torch

import _djobs as J


def test_ddp_spawn_ends_with_the_weights_of_ddp(two_rank_job, tmp_path):
    out = str(tmp_path)
    J.check(J.run("features.py", out, "--strategy", "ddp_spawn", "--only", "correctness", "--configs", "sgd:1",
                  timeout=240, cwd=out))
    spawned = J.weights(out, "correct_sgd_acc1", 0)  # saved by the calling process after fit() returned
    ddp = J.weights(two_rank_job, "correct_sgd_acc1", 0)
    # The calling process's model keeps its own dtype (float32; the job trains in float64), as in Lightning.
    assert all(torch.equal(spawned[k], ddp[k].to(spawned[k].dtype)) for k in ddp)
    assert J.results(out, 0)["steps_sgd_acc1"] == J.results(two_rank_job, 0)["steps_sgd_acc1"]
