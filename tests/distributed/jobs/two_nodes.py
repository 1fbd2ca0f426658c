"""Start a 2-"node" job on this machine, one process per node, the way a cluster would.

    python two_nodes.py OUT torchrun   # two `torchrun --nnodes=2 --node_rank={0,1}` agents
    python two_nodes.py OUT slurm      # two processes with the variables `srun --nodes=2 --ntasks-per-node=1` sets

Both "nodes" run tests/distributed/jobs/features.py with devices=1, num_nodes=2 and talk over
127.0.0.1 only. With --netns (the tests use it when `unshare -n` works) the whole job runs in a
private network namespace, because the torchrun agent's store listens on every interface.
Writes OUT/commands.txt (the exact commands) and OUT/returncodes.json.
"""
import json
import os
import socket
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    out, kind = sys.argv[1], sys.argv[2]
    if "--netns" in sys.argv:
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True, timeout=10)
    os.makedirs(out, exist_ok=True)
    port = free_port()
    script = [os.path.join(HERE, "features.py"), out, "--devices", "1", "--num-nodes", "2", "--only", "correctness",
              "--configs", "sgd:1"]
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    launcher = [torchrun] if os.path.exists(torchrun) else [sys.executable, "-m", "torch.distributed.run"]
    commands, envs = [], []
    for node in (0, 1):
        env = dict(os.environ)
        if kind == "torchrun":
            commands.append(launcher + ["--nnodes=2", "--nproc_per_node=1", f"--node_rank={node}",
                                        "--master_addr=127.0.0.1", f"--master_port={port}"] + script)
        else:
            env.update(SLURM_NTASKS="2", SLURM_PROCID=str(node), SLURM_LOCALID="0", SLURM_NODEID=str(node),
                       SLURM_JOB_NODELIST="localhost", SLURM_JOB_NAME="features", SLURM_JOB_ID="4242",
                       MASTER_PORT=str(port))
            commands.append([sys.executable] + script)
        envs.append(env)
    with open(os.path.join(out, "commands.txt"), "w") as fh:
        fh.write("\n".join(" ".join(c) for c in commands) + "\n")
    logs = [open(os.path.join(out, f"node{n}.log"), "w") for n in (0, 1)]
    procs = [subprocess.Popen(c, env=e, stdout=log, stderr=subprocess.STDOUT) for c, e, log in zip(commands, envs, logs)]
    codes = []
    for p in procs:
        try:
            codes.append(p.wait(timeout=150))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            codes.append("timeout")
    with open(os.path.join(out, "returncodes.json"), "w") as fh:
        json.dump(codes, fh)


if __name__ == "__main__":
    main()
