"""Per-step overhead against model size: the slope of (framework - hand) between a short and a long run.

bench/overhead.py's ratios mix a fixed cost (Trainer construction, fit's set-up, the progress bar's tqdm) with
the cost of every step. Timing each framework and the hand loop at two run lengths, interleaved in shuffled
order, separates them: the per-step overhead is the difference of the medians' differences over the difference
in steps, and the fixed cost what is left at the short length. Run over models of growing size, it shows
whether a framework's per-step cost depends on the model although its own per-step code does not.

    python bench/per_step.py                                   # tiny, small, wide; hand, ember, lightning
    python bench/per_step.py --frameworks hand,ember --rounds 60
    python bench/per_step.py --out bench/out/per_step.md

Same model, data, optimizer and LightningModule as bench/overhead.py (progress bar on, one metric logged).
"""
from __future__ import annotations

import argparse
import gc
import os
import random
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

C.ensure_repo_on_path()

# name -> layer widths, batch size
MODELS = {"tiny": ((1, 2, 2, 1), 1), "small": ((32, 64, 64, 1), 64), "wide": ((64, 256, 256, 1), 128)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default=",".join(MODELS), help="comma list of " + ", ".join(MODELS))
    p.add_argument("--frameworks", default="hand,ember,lightning")
    p.add_argument("--steps", default="40,240", help="the short and the long run length")
    p.add_argument("--rounds", type=int, default=40)
    p.add_argument("--out", default=None, help="also write the markdown here")
    args = p.parse_args(argv)
    import overhead as O
    import torch

    torch.set_num_threads(1)
    names = [f.strip() for f in args.frameworks.split(",") if f.strip()]
    if "hand" not in names:
        p.error("--frameworks must include hand")
    frameworks, notes = O.load_frameworks([n for n in names if n != "hand"])
    O.silence_frameworks()
    names = ["hand"] + [n for n in names if n in frameworks]
    short, long_ = (int(s) for s in args.steps.split(","))
    rng = random.Random(0)
    rows = []
    for model in (m.strip() for m in args.models.split(",")):
        widths, batch = MODELS[model]
        median = {}  # (framework, steps) -> median seconds
        diffs = {}  # (framework, steps) -> median of the per-round (framework - hand)
        for steps in (short, long_):
            sc = dict(O.SCENARIOS["tiny"], widths=widths, batch=batch, steps=steps)
            times = {n: [] for n in names}
            for rnd in range(args.rounds + 1):  # round 0: warm-up
                order = list(names)
                rng.shuffle(order)
                for name in order:
                    timed, _ = O.prepare_run(name, frameworks, sc)
                    gc.collect()
                    with C.quiet():
                        t0 = time.perf_counter()
                        timed()
                        dt = time.perf_counter() - t0
                    if rnd:
                        times[name].append(dt)
            for name in names:
                median[name, steps] = statistics.median(times[name])
                diffs[name, steps] = statistics.median([f - h for h, f in zip(times["hand"], times[name])])
            print(f"[{model}] {steps} steps: " + ", ".join(f"{n} {median[n, steps] * 1e3:.1f} ms" for n in names),
                  file=sys.stderr)
        span = long_ - short
        hand_step = (median["hand", long_] - median["hand", short]) / span
        row = [model, f"{hand_step * 1e6:.0f}"]
        for name in names[1:]:
            per_step = (diffs[name, long_] - diffs[name, short]) / span
            fixed = diffs[name, short] - short * per_step
            row += [f"{per_step * 1e6:.1f}", f"{1 + per_step / hand_step:.3f}", f"{fixed * 1e3:.2f}"]
        rows.append(row)
    headers = ["model", "hand µs/step"]
    for name in names[1:]:
        headers += [f"{name} µs/step over hand", f"{name} per-step ratio", f"{name} fixed ms"]
    extra = {"torch": torch.__version__, "rounds": f"{args.rounds} (+1 warm-up) at {short} and {long_} steps",
             "models": ", ".join(f"{m}: {'→'.join(map(str, MODELS[m][0]))}, batch {MODELS[m][1]}"
                                 for m in args.models.split(","))}
    lines = C.header_lines("Per-step overhead against model size", extra) + [f"- note: {n}" for n in notes]
    lines += ["", C.md_table(headers, rows), ""]
    C.emit("\n".join(lines), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
