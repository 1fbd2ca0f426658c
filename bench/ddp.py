"""Data-parallel scaling on CPU: ember vs a hand-written DDP loop vs Lightning's strategy="ddp".

The same compute-heavy MLP (float32, MSE, SGD with momentum) trains on in-memory data with a
per-process batch of --batch (weak scaling: 2 processes see twice the samples per step), three
ways, inside the same processes, interleaved round by round (the order rotates every round):

    hand       the idiomatic hand-written loop; with 2 processes DistributedDataParallel plus a
               DistributedSampler(shuffle=True, seed=0), set_epoch every epoch: the sampler ember and
               Lightning inject into the frameworks' shuffled loader (seed_everything is not called, so
               their seed is 0 too), so all programs read the same batches;
    hand-late-zero-grad
               the same loop with zero_grad after the forward, in Lightning's hook order;
    ember      Trainer(accelerator="cpu", devices=N).fit(...);
    lightning  Trainer(accelerator="cpu", devices=N, strategy="ddp" if N > 1).fit(...).

One job has 1 process, the other 2 (gloo over 127.0.0.1, one thread per process). The 2
processes are started by this script like torchrun would (RANK, WORLD_SIZE, ...) and join one
process group before the first round, so all three reuse it: process start-up, imports and the
rendezvous are outside every timed window (ember's own launcher is tested in tests/distributed).

Timed: rank 0's wall time from the start of step --warmup to the end of the last step, per step
(every step ends in DDP's all-reduce, so rank 0's clock covers both ranks); also its CPU time
(all threads), which other jobs on a shared machine disturb less. Reported: the median over
rounds of each per-round ratio.

    python bench/ddp.py                               # 5 rounds
    python bench/ddp.py --rounds 7 --out bench/out/ddp.md

The GPU section (one GPU, AMP bf16, a ResNet-style convnet, ember vs a hand loop, images/s)
runs only when torch.cuda.is_available().
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

C.ensure_repo_on_path()

WIDTHS = (512, 2048, 2048, 512)
# "hand-late-zero-grad" is the hand loop with zero_grad after the forward, the order Lightning and ember
# use (their hook order): it separates the cost of that order from framework overhead.
PROGRAMS = ("hand", "hand-late-zero-grad", "ember", "lightning")
SEED = 0
LR = 0.01


# --------------------------------------------------------------------------- the worker side
def _mlp():
    import torch

    layers = []
    for i in range(len(WIDTHS) - 1):
        layers += [torch.nn.Linear(WIDTHS[i], WIDTHS[i + 1]), torch.nn.ReLU()]
    return torch.nn.Sequential(*layers[:-1])


def _data(n: int):
    import torch

    g = torch.Generator().manual_seed(SEED)
    x = torch.randn(n, WIDTHS[0], generator=g)
    return torch.utils.data.TensorDataset(x, x[:, : WIDTHS[-1]] * 0.5)


class _Clock:
    """Wall and CPU stamps at the start of a run and the end of every step."""

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def stamp(self) -> None:
        self.wall.append(time.perf_counter())
        self.cpu.append(time.process_time())

    def per_step(self, warmup: int) -> tuple[float, float]:
        n = len(self.wall) - 1 - warmup
        return (self.wall[-1] - self.wall[warmup]) / n, (self.cpu[-1] - self.cpu[warmup]) / n


def run_hand(data, args, world: int, clock: _Clock, zero_grad_after_forward: bool = False) -> None:
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader, DistributedSampler

    torch.manual_seed(SEED)
    model = _mlp()
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(model)
        sampler = DistributedSampler(data, shuffle=True, seed=SEED)
        loader = DataLoader(data, batch_size=args.batch, sampler=sampler)
    else:
        sampler = None
        loader = DataLoader(data, batch_size=args.batch, shuffle=True)
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)
    clock.stamp()
    for epoch in range(1):
        if sampler is not None:
            sampler.set_epoch(epoch)
        for x, y in loader:
            if not zero_grad_after_forward:
                opt.zero_grad()
            loss = F.mse_loss(model(x), y)
            if zero_grad_after_forward:  # Lightning's (and ember's) order: training_step, then zero_grad
                opt.zero_grad()
            loss.backward()
            opt.step()
            clock.stamp()


def _framework_module(L, clock: _Clock):
    import torch
    import torch.nn.functional as F

    class MLP(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = _mlp()

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return F.mse_loss(self(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=LR, momentum=0.9)

    class Clock(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if batch_idx == 0:
                clock.stamp()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            clock.stamp()

    return MLP, Clock


def run_framework(name: str, data, args, world: int, clock: _Clock) -> None:
    import torch
    from torch.utils.data import DataLoader

    if name == "ember":
        import ember as L
    else:
        import lightning as L
    MLP, Clock = _framework_module(L, clock)
    torch.manual_seed(SEED)
    model = MLP()
    kwargs = dict(accelerator="cpu", devices=world, max_epochs=1, logger=False, enable_checkpointing=False,
                  enable_progress_bar=False, enable_model_summary=False, callbacks=[Clock()])
    if name == "lightning" and world > 1:
        kwargs["strategy"] = "ddp"
    L.Trainer(**kwargs).fit(model, DataLoader(data, batch_size=args.batch, shuffle=True))


def worker(args) -> None:
    """One process of a 1- or 2-process job: every round runs the three programs, in a rotating order."""
    import contextlib
    import io
    import logging
    import warnings

    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    world, rank = int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0))
    if world > 1:
        from datetime import timedelta

        listener = None
        if rank == 0:  # the store listens on 127.0.0.1 only
            listener = socket.socket()
            listener.bind(("127.0.0.1", int(os.environ["MASTER_PORT"])))
            listener.listen(16)
        store = dist.TCPStore("127.0.0.1", int(os.environ["MASTER_PORT"]), world if rank == 0 else None, rank == 0,
                              timedelta(seconds=120), wait_for_workers=False,
                              **({"master_listen_fd": listener.detach()} if listener else {}))
        dist.init_process_group("gloo", store=store, rank=rank, world_size=world)
    data = _data(args.steps * args.batch * world)
    programs = [p for p in PROGRAMS if p in args.frameworks.split(",")]
    rounds = []
    for r in range(args.rounds + 1):  # round 0 warms up (allocator, caches, lazy imports); not reported
        times = {}
        for name in programs[r % len(programs):] + programs[: r % len(programs)]:
            clock = _Clock()
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                if name.startswith("hand"):
                    run_hand(data, args, world, clock, zero_grad_after_forward=name == "hand-late-zero-grad")
                else:
                    run_framework(name, data, args, world, clock)
            times[name] = clock.per_step(args.warmup)
        if r:
            rounds.append(times)
        if rank == 0:
            print(f"{world} proc round {r}: " + ", ".join(f"{k} {v[0] * 1e3:.1f} ms" for k, v in times.items()),
                  file=sys.__stderr__, flush=True)
    if rank == 0:
        with open(args.result, "w") as fh:
            json.dump(rounds, fh)
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()


# --------------------------------------------------------------------------- the driver side
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_job(world: int, args, tmp: str) -> list[dict]:
    """Start a 1- or 2-process job (as torchrun would: rank variables in the environment); rank 0's rounds."""
    result = os.path.join(tmp, f"rounds-{world}.json")
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--rounds", str(args.rounds), "--steps",
           str(args.steps), "--batch", str(args.batch), "--warmup", str(args.warmup), "--frameworks",
           args.frameworks, "--result", result]
    port = _free_port()
    base = dict(os.environ, OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME=os.environ.get("GLOO_SOCKET_IFNAME", "lo"),
                PYTHONPATH=C.REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), MASTER_ADDR="127.0.0.1",
                MASTER_PORT=str(port), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world), NODE_RANK="0")
    logs = [open(os.path.join(tmp, f"rank{r}-of-{world}.log"), "w") for r in range(world)]
    procs = [subprocess.Popen(cmd, env=dict(base, RANK=str(r), LOCAL_RANK=str(r)), stdout=logs[r],
                              stderr=subprocess.STDOUT if r else None) for r in range(world)]
    try:
        codes = [p.wait(timeout=args.timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    if any(codes) or not os.path.exists(result):
        raise RuntimeError(f"the {world}-process job failed (exit codes {codes}):\n"
                           + "".join(open(os.path.join(tmp, f"rank{r}-of-{world}.log")).read()[-3000:]
                                     for r in range(world)))
    with open(result) as fh:
        return json.load(fh)


def cpu_section(args) -> list[str]:
    programs = [p for p in PROGRAMS if p in args.frameworks.split(",")]
    with tempfile.TemporaryDirectory(prefix="ember-bench-ddp-") as tmp:
        jobs = {world: run_job(world, args, tmp) for world in (1, 2)}

    def med(world: int, fn) -> float:
        return C.median([fn(t) for t in jobs[world]])

    b = args.batch
    rows = []
    for p in programs:
        one, two = med(1, lambda t: t[p][0]), med(2, lambda t: t[p][0])
        row = [p, f"{one * 1e3:.1f}", f"{two * 1e3:.1f}", f"{b / one:.0f}", f"{2 * b / two:.0f}", f"{(2 * b / two) / (b / one):.2f}"]
        if p != "hand" and "hand" in programs:
            row += [f"{med(1, lambda t: t[p][0] / t['hand'][0]):.3f}", f"{med(2, lambda t: t[p][0] / t['hand'][0]):.3f}",
                    f"{med(2, lambda t: t[p][1] / t['hand'][1]):.3f}",
                    f"{med(2, lambda t: t[p][0] - t['hand'][0]) * 1e6:+.0f}"]
        else:
            row += ["1", "1", "1", "0"]
        rows.append(row)
    headers = ["program", "ms/step 1 proc", "ms/step 2 procs", "samples/s 1 proc", "samples/s 2 procs",
               "scaling 1→2", "/hand 1 proc", "/hand 2 procs (target ≤ 1.03)", "/hand 2 procs, CPU time",
               "µs/step vs hand (2 procs)"]
    spread = [f"{p}: " + ", ".join(f"{t[p][0] / t['hand'][0]:.3f}" for t in jobs[2])
              for p in programs if p != "hand" and "hand" in programs]
    params = sum(WIDTHS[i] * WIDTHS[i + 1] + WIDTHS[i + 1] for i in range(len(WIDTHS) - 1)) / 1e6
    return ["## CPU: 1 → 2 processes (gloo)", "",
            f"MLP {'-'.join(map(str, WIDTHS))} ({params:.1f} M parameters), per-process batch {args.batch}, "
            f"{args.steps} steps per run, the first {args.warmup} untimed; median of {args.rounds} interleaved rounds "
            "(plus one warm-up round).", "",
            C.md_table(headers, rows), "",
            "Per-round wall-time ratio to hand at 2 processes: " + "; ".join(spread), ""]


# --------------------------------------------------------------------------- GPU (only with CUDA)
def gpu_section(args) -> list[str]:
    import torch

    if not torch.cuda.is_available():
        return ["## GPU", "",
                "Skipped: torch.cuda.is_available() is False on this machine (no GPU was available when this "
                "file was written), so there are no GPU rows. On a CUDA machine this section times a ResNet-style "
                "convnet with AMP bf16, ember vs a hand-written loop, in images/s.", ""]
    import torch.nn.functional as F

    import ember as L

    def convnet():
        def block(cin, cout):
            return torch.nn.Sequential(torch.nn.Conv2d(cin, cout, 3, padding=1, bias=False), torch.nn.BatchNorm2d(cout),
                                       torch.nn.ReLU(inplace=True))

        return torch.nn.Sequential(block(3, 64), block(64, 128), torch.nn.MaxPool2d(2), block(128, 256),
                                   torch.nn.MaxPool2d(2), block(256, 512), torch.nn.AdaptiveAvgPool2d(1),
                                   torch.nn.Flatten(), torch.nn.Linear(512, 10))

    n, batch, steps = 64 * 60, 64, 60
    g = torch.Generator().manual_seed(SEED)
    data = torch.utils.data.TensorDataset(torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g))

    def loader():
        return torch.utils.data.DataLoader(data, batch_size=batch, shuffle=True, pin_memory=True, num_workers=2)

    def hand() -> float:
        torch.manual_seed(SEED)
        model = convnet().cuda()
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        torch.cuda.synchronize()
        start = time.perf_counter()
        for x, y in loader():
            x, y = x.cuda(non_blocking=True), y.cuda(non_blocking=True)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        torch.cuda.synchronize()
        return n / (time.perf_counter() - start)

    class Net(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = convnet()

        def training_step(self, b, i):
            return F.cross_entropy(self.net(b[0]), b[1])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)

    def ember() -> float:
        torch.manual_seed(SEED)
        model = Net()
        trainer = L.Trainer(accelerator="cuda", devices=1, precision="bf16-mixed", max_epochs=1, logger=False,
                            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
        torch.cuda.synchronize()
        start = time.perf_counter()
        trainer.fit(model, loader())
        torch.cuda.synchronize()
        return n / (time.perf_counter() - start)

    hand(), ember()  # warm-up: cuDNN autotuning, CUDA context, allocator
    pairs = [(hand(), ember()) for _ in range(args.rounds)]
    h, e = C.median([p[0] for p in pairs]), C.median([p[1] for p in pairs])
    ratio = C.median([p[1] / p[0] for p in pairs])
    return ["## GPU: one device, AMP bf16", "", f"Device: {torch.cuda.get_device_name(0)}; {steps} steps of {batch} "
            "images 3x32x32 per run (whole fit timed, including ember's Trainer set-up).", "",
            C.md_table(["program", "images/s", "ember/hand (target ≥ 0.99)"],
                       [["hand", f"{h:.0f}", "1"], ["ember", f"{e:.0f}", f"{ratio:.3f}"]]), ""]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--warmup", type=int, default=8)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--frameworks", default="hand,hand-late-zero-grad,ember,lightning")
    p.add_argument("--timeout", type=float, default=1200)
    p.add_argument("--out")
    p.add_argument("--skip-gpu", action="store_true")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    import torch

    lines = C.header_lines("DDP scaling: ember vs hand-written DDP vs Lightning", {
        "torch": torch.__version__, "ember": C.package_version("ember"), "lightning": C.package_version("lightning"),
        "threads": "1 per process (torch.set_num_threads(1), OMP_NUM_THREADS=1)",
        "note": "a shared machine: other jobs may run at the same time; compare the ratios, which are per round"})
    lines += cpu_section(args)
    lines += gpu_section(args) if not args.skip_gpu else ["## GPU", "", "Skipped (--skip-gpu).", ""]
    C.emit("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
