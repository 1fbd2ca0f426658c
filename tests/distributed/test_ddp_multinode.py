"""Past one machine: two "nodes" on localhost, started by torchrun and by SLURM's variables.

The torchrun agent's rendezvous store listens on every interface, so when `unshare -n` works the
job runs in a private network namespace: nothing outside this machine can reach it.
"""
import json
import os

import pytest

import _djobs as J




@pytest.mark.parametrize("kind", ["torchrun", "slurm"])
def test_a_two_node_job_on_localhost_trains_like_one_process(tmp_path, one_rank_job, kind):
    out = str(tmp_path)
    prefix = J.netns_prefix(loopback_up=False) if kind == "torchrun" else ()
    args = (out, kind) + (("--netns",) if prefix else ())
    J.check(J.run("two_nodes.py", *args, timeout=200, cwd=out, prefix=prefix))
    with open(os.path.join(out, "returncodes.json")) as fh:
        codes = json.load(fh)
    logs = "".join(open(os.path.join(out, f"node{n}.log")).read()[-3000:] for n in (0, 1))
    assert codes == [0, 0], logs
    for rank in (0, 1):
        identity = J.results(out, rank)["identity"]
        assert (identity["global_rank"], identity["node_rank"], identity["world_size"], identity["num_nodes"]) == \
            (rank, rank, 2, 2)
        assert J.max_relative_difference(J.weights(one_rank_job, "correct_sgd_acc1", 0),
                                         J.weights(out, "correct_sgd_acc1", rank)) <= J.FLOAT64_REL_TOL
