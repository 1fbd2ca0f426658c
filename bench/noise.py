"""How finely this machine can compare two timings: the same hand loop against itself.

bench/overhead.py compares a framework's run with the hand loop's run just before it. If the
machine ran at one speed, two runs of the same code would time alike and the ratio would
resolve a point of overhead. This script trains the "tiny" model of bench/overhead.py by hand
(no framework at all) for many epochs, timestamps every block of 50 steps, and reports, for run
lengths from 50 to 4,800 steps, how the ratio of two back-to-back runs of identical code spreads.

If the spread shrinks as runs get longer, longer rounds would sharpen the overhead benchmark; if
it does not (the machine's speed drifts on every time scale), only more rounds do, and the
standard error of a median of n per-round ratios is about 1.25 · sd / √n.

    python bench/noise.py                      # 80 epochs of 1,200 steps (about 40 s)
    python bench/noise.py --epochs 160 --out bench/out/noise.md
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

C.ensure_repo_on_path()

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import overhead as O  # noqa: E402  (the same model, data and optimizer as the overhead benchmark)

BLOCK = 50  # steps between timestamps
LENGTHS = (1, 4, 24, 96)  # run lengths in blocks: 50, 200, 1,200 and 4,800 steps


def block_times(epochs: int) -> list[float]:
    """Seconds taken by each consecutive block of BLOCK steps of the tiny hand loop."""
    sc = O.SCENARIOS["tiny"]
    net = O.make_net(sc["widths"])
    loader = O.make_loader(O.make_data(sc["widths"], sc["batch"], sc["steps"], salt=0), sc["batch"])
    opt = torch.optim.SGD(net.parameters(), lr=O.LR, momentum=O.MOMENTUM)
    stamps = [time.perf_counter()]
    for _ in range(epochs):
        for i, (x, y) in enumerate(loader, 1):
            loss = F.mse_loss(net(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if i % BLOCK == 0:
                stamps.append(time.perf_counter())
    return [b - a for a, b in zip(stamps, stamps[1:])]


def pair_ratios(blocks: list[float], k: int) -> list[float]:
    """Runs of k blocks, paired off in order: the later run's time over the earlier one's."""
    runs = [sum(blocks[i:i + k]) for i in range(0, len(blocks) - k + 1, k)]
    return [b / a for a, b in zip(runs[0::2], runs[1::2])]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=80, help="epochs of 1,200 steps (>= 8, so 4,800-step runs pair)")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1, as bench/overhead.py)")
    p.add_argument("--out", default=None, help="also write the markdown here")
    args = p.parse_args(argv)
    if args.epochs < 8:
        p.error(f"--epochs must be >= 8 (got {args.epochs}): two 4,800-step runs need 8 epochs")
    torch.set_num_threads(args.threads)
    block_times(1)  # warm-up: allocator, autograd and the loader's first iterator
    blocks = block_times(args.epochs)
    rows = []
    for k in LENGTHS:
        r = sorted(pair_ratios(blocks, k))
        sd = statistics.pstdev(r)
        rows.append([f"{k * BLOCK:,}", len(r), f"{statistics.median(r):.3f}", f"{sd:.3f}",
                     f"{r[len(r) // 10]:.3f}–{r[(9 * len(r)) // 10]:.3f}", f"{1.25 * sd / math.sqrt(9):.3f}"])
    extra = {"torch": torch.__version__, "torch threads": torch.get_num_threads(),
             "work": f"{args.epochs} epochs × 1,200 steps of the tiny hand loop, timestamped every {BLOCK} steps"}
    lines = C.header_lines("Timing noise: the same hand loop against itself", extra)
    lines += ["Ratio of two back-to-back runs of identical code, by run length (a quiet machine gives sd ≈ 0):", "",
              C.md_table(["run length, steps", "pairs", "median ratio", "sd", "p10–p90",
                          "≈ s.e. of a 9-round median"], rows), ""]
    C.emit("\n".join(lines), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
