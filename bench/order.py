"""Does the order of runs inside bench/overhead.py's rounds bias ember's ratio?

bench/overhead.py times hand (A/A), hand, ember and Lightning one after the other in each round, in one process.
If a run left the process slower or faster for the run after it (allocator state, caches, whatever Lightning
leaves behind), ember's ratio would carry that. This script measures both ways it could, on the same programs
(bench/overhead.py's scenarios, modules and data, ``torch.set_num_threads(1)``):

* ``--probe predecessor``: blocks of hand, hand, ember, ember, so each run has a known run before it. The report
  is the median time of each (run, run before it) pair and the ember/hand ratio under each pairing; overhead.py
  uses "ember after hand" over "hand after hand".
* ``--probe lightning``: rounds of hand then ember; after a seeded random half of the rounds Lightning trains
  too. The report is ember/hand in the rounds that follow a Lightning run against those that do not.

    python bench/order.py --probe predecessor --size small --blocks 40
    python bench/order.py --probe lightning --size tiny --rounds 60
"""
from __future__ import annotations

import argparse
import collections
import gc
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

C.ensure_repo_on_path()

import overhead as O  # noqa: E402
import torch  # noqa: E402


def timer(frameworks, sc):
    def run(who: str) -> float:
        timed, _ = O.prepare_run(who, frameworks, sc)
        gc.collect()
        with C.quiet():
            t0 = time.perf_counter()
            timed()
            return time.perf_counter() - t0
    return run


def predecessor(run, blocks: int) -> list[str]:
    times: dict[tuple[str, str], list[float]] = collections.defaultdict(list)
    before = "ember"
    for _ in range(blocks):
        for who in ("hand", "hand", "ember", "ember"):
            times[(who, before)].append(run(who))
            before = who
    med = {k: C.median(v) for k, v in times.items()}
    rows = [[f"{who} after {prev}", len(times[(who, prev)]), f"{med[(who, prev)] * 1e3:.1f}"]
            for who, prev in sorted(times)]
    lines = [C.md_table(["run", "n", "median ms"], rows), ""]
    for e_prev, h_prev in (("hand", "hand"), ("ember", "hand"), ("hand", "ember"), ("ember", "ember")):
        lines.append(f"- ember after {e_prev} / hand after {h_prev}: "
                     f"{med[('ember', e_prev)] / med[('hand', h_prev)]:.4f}")
    lines.append("- overhead.py's pairing is ember after hand / hand after hand.")
    return lines


def after_lightning(run, rounds: int) -> list[str]:
    plan = [True] * (rounds // 2) + [False] * (rounds - rounds // 2)
    random.Random(0).shuffle(plan)
    ratios: dict[bool, list[float]] = {True: [], False: []}
    lightning_ran = False
    for with_lightning in plan:
        h, e = run("hand"), run("ember")
        ratios[lightning_ran].append(e / h)
        lightning_ran = with_lightning
        if with_lightning:
            run("lightning")
    rows = []
    for ran in (False, True):
        lo, hi = C.median_interval(ratios[ran])
        rows.append(["after a Lightning run" if ran else "no Lightning run before", len(ratios[ran]),
                     f"{C.median(ratios[ran]):.4f}", f"{lo:.4f}-{hi:.4f}"])
    return [C.md_table(["rounds", "n", "ember / hand, median", "95 % interval"], rows)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--probe", choices=("predecessor", "lightning"), required=True)
    p.add_argument("--size", default="small", help="a bench/overhead.py scenario")
    p.add_argument("--blocks", type=int, default=40, help="predecessor: blocks of hand, hand, ember, ember")
    p.add_argument("--rounds", type=int, default=60, help="lightning: rounds of hand, ember (+ Lightning)")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    size = O.SIZE_ALIASES.get(args.size, args.size)
    if size not in O.SCENARIOS:
        p.error(f"--size: unknown scenario {args.size!r}; choose from {list(O.SCENARIOS)}")
    torch.set_num_threads(1)
    O.silence_frameworks()
    names = ["ember", "lightning"] if args.probe == "lightning" else ["ember"]
    frameworks, notes = O.load_frameworks(names)
    if len(frameworks) != len(names):
        sys.exit("; ".join(notes))
    sc = O.SCENARIOS[size]
    run = timer(frameworks, sc)
    for who in ["hand"] + names:  # untimed warm-up: lazy imports, first-call set-up
        run(who)
    body = predecessor(run, args.blocks) if args.probe == "predecessor" else after_lightning(run, args.rounds)
    C.emit("\n".join(C.header_lines(f"Run order, probe '{args.probe}', scenario '{args.size}'",
                                    {"torch": torch.__version__, "torch threads": 1}) + body) + "\n", args.out)


if __name__ == "__main__":
    main()
