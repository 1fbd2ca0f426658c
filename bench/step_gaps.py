"""Where a framework's extra time goes within a step: torch's work against the Python between it.

bench/overhead.py says how much slower a framework's run is than the hand loop; this says where. It runs
the same programs (same scenario, model, data, seed and module source as bench/overhead.py) with six calls
timed the same way in every framework: the DataLoader's ``__next__`` (fetch), the model's ``forward``,
``F.mse_loss`` (loss), ``Optimizer.zero_grad``, ``Tensor.backward`` and ``SGD.step``. Each run's time is
then split into what those calls take and the gaps between one call's end and the next call's start,
which is where the loop's own Python runs (the hand loop's few lines; ember's step, its ``self.log``,
its finite-loss check and its end-of-batch bookkeeping). Nothing in ember is edited or patched.

    python bench/step_gaps.py                         # small, 30 rounds
    python bench/step_gaps.py --size tiny --rounds 50 --out bench/out/step_gaps.md
    python bench/step_gaps.py --rounds 150 --frameworks hand,ember,hand+hot,hand+scattered,hand+finite

The hand loops with known work added after each step (bench/python_cost.py's ``hand+hot``, ``hand+scattered``
and ``hand+finite``) calibrate the split: they show what a given amount of extra Python does to torch's calls.

Reading it:
- A row is microseconds per training step, the median over rounds; "X - hand" is the median of the
  per-round differences, with its bootstrap interval. The rows of torch's calls run the same kernels on the
  same data; where they read above 0, the code between the calls made them slower (compare the hand+ rows).
- The wrappers cost every framework the same (about 0.5 µs per timed call, measured warm), so they cancel in the
  difference but inflate the gaps of both.
- "start → fetch" holds what runs before the first batch (a framework's set-up, spread over the steps);
  "end" what runs after the last timed call (the end of fit, the progress bar's last draw).
- When the previous step's autograd graph is freed differs: the hand loop frees it when ``loss`` is
  rebound (the gap after "loss"), ember when its step ends (the gap after "step"). Compare the sum of
  those rows, not each one.
- Lightning steps its optimizers through a closure that runs the forward and backward inside
  ``SGD.step``, so its calls nest and its split would mislead: only its ratio is shown.
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

C.ensure_repo_on_path()

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils.data.dataloader import _BaseDataLoaderIter  # noqa: E402

import overhead as O  # noqa: E402

CALLS = ("fetch", "forward", "loss", "zero_grad", "backward", "step")
_clock = time.perf_counter_ns
_totals: dict[str, int] = {}  # interval name -> summed ns in the current run
_last = ["start", 0]  # the timed call that ended last, and when


def _timed_call(owner: object, attr: str, name: str) -> None:
    """Replace ``owner.attr`` by a wrapper that books its own duration and the gap since the previous call."""
    inner = getattr(owner, attr)

    def wrapper(*args, **kwargs):
        begin = _clock()
        gap = f"{_last[0]} → {name}"
        _totals[gap] = _totals.get(gap, 0) + begin - _last[1]
        try:
            return inner(*args, **kwargs)
        finally:
            end = _clock()
            _totals[name] = _totals.get(name, 0) + end - begin
            _last[0], _last[1] = name, end

    setattr(owner, attr, wrapper)


def install_timers() -> None:
    _timed_call(_BaseDataLoaderIter, "__next__", "fetch")
    _timed_call(torch.nn.Sequential, "forward", "forward")  # the bench's model is an nn.Sequential
    _timed_call(F, "mse_loss", "loss")  # bench/overhead.py and its modules call F.mse_loss at call time
    _timed_call(torch.optim.Optimizer, "zero_grad", "zero_grad")
    _timed_call(torch.Tensor, "backward", "backward")
    _timed_call(torch.optim.SGD, "step", "step")


HAND_VARIANTS = ("hand+finite", "hand+hot", "hand+scattered")  # bench/python_cost.py's, with its defaults
SPLIT = ("ember",) + HAND_VARIANTS  # runners whose calls do not nest (Lightning's do), so their split is shown
_scattered: list = []  # hand+scattered's objects, allocated once


def prepare(fw: str, frameworks: dict, sc: dict):
    if fw in HAND_VARIANTS:
        import python_cost as PC

        if fw == "hand+scattered" and not _scattered:
            _scattered.append(PC.scattered_objects(300))
        return PC.hand_variant(fw, sc, 20, _scattered[0][0] if _scattered else [])[0]
    return O.prepare_run(fw, frameworks, sc)[0]


def one_run(fw: str, frameworks: dict, sc: dict) -> tuple[int, dict[str, int]]:
    timed = prepare(fw, frameworks, sc)
    gc.collect()
    _totals.clear()
    with C.quiet():
        _last[0], _last[1] = "start", _clock()
        begin = _clock()
        timed()
        total = _clock() - begin
    return total, dict(_totals)


def interval_order(names: set[str]) -> list[str]:
    """Calls in the step's order, each followed by the gaps that start after it."""
    ordered = []
    for call in ("start",) + CALLS:
        if call in names:
            ordered.append(call)
        ordered += sorted(n for n in names if n.startswith(f"{call} → "))
    return ordered + sorted(names - set(ordered))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", default="small", help="a bench/overhead.py scenario: " + ", ".join(O.SCENARIOS))
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--frameworks", default="hand,ember,lightning",
                   help="hand and at least one of ember, lightning and bench/python_cost.py's " + ", ".join(HAND_VARIANTS))
    p.add_argument("--out", default=None, help="also write the markdown here")
    args = p.parse_args(argv)
    size = O.SIZE_ALIASES.get(args.size, args.size)
    if size not in O.SCENARIOS or O.SCENARIOS[size].get("compile") or O.SCENARIOS[size].get("loaders", 1) != 1:
        p.error(f"--size must be a scenario with one loader and no torch.compile; got {args.size!r}")
    fws = [f.strip() for f in args.frameworks.split(",") if f.strip()]
    allowed = O.ALL_FRAMEWORKS + HAND_VARIANTS
    if "hand" not in fws or len(fws) < 2 or not set(fws) <= set(allowed):
        p.error(f"--frameworks must include hand and another of {allowed}; got {args.frameworks!r}")
    if args.rounds < 3:
        p.error(f"--rounds must be at least 3 to take a median; got {args.rounds}")

    torch.set_num_threads(1)
    frameworks, notes = O.load_frameworks([f for f in fws if f in O.ALL_FRAMEWORKS])
    if notes:
        print("; ".join(notes), file=sys.stderr)
        fws = [f for f in fws if f in frameworks or f == "hand" or f in HAND_VARIANTS]
    O.silence_frameworks()
    install_timers()
    sc = O.SCENARIOS[size]
    steps = sc["steps"]
    totals: dict[str, list[int]] = {f: [] for f in fws}
    split: dict[str, list[dict[str, int]]] = {f: [] for f in fws}
    for rnd in range(args.rounds + 1):  # round 0: untimed warm-up
        order = list(fws)
        random.Random(rnd).shuffle(order)  # no framework always runs right after another
        for fw in order:
            total, parts = one_run(fw, frameworks, sc)
            if rnd:
                totals[fw].append(total)
                split[fw].append(parts)
        print(f"[{size}] round {rnd}/{args.rounds}", file=sys.stderr)

    def us(ns: float) -> str:
        return f"{ns / steps / 1e3:.2f}"

    shown = [f for f in fws if f in SPLIT]
    names = interval_order(set().union(*(p for f in ["hand"] + shown for p in split[f])))
    torch_calls = "torch's calls, all six"
    gaps = "the gaps and the rest (total minus torch's calls)"

    def series(fw: str, name: str) -> list[float]:
        if name == "total":
            return totals[fw]
        if name.startswith("end ("):
            return [t - sum(parts.values()) for t, parts in zip(totals[fw], split[fw])]
        if name == torch_calls:
            return [sum(parts.get(c, 0) for c in CALLS) for parts in split[fw]]
        if name == gaps:
            return [t - sum(parts.get(c, 0) for c in CALLS) for t, parts in zip(totals[fw], split[fw])]
        return [parts.get(name, 0) for parts in split[fw]]

    rows = []
    for name in names + ["end (after the last timed call: the end of the run)", torch_calls, gaps, "total"]:
        hand = series("hand", name)
        row = [name, us(C.median(hand))]
        for fw in shown:
            diffs = [b - a for a, b in zip(hand, series(fw, name))]
            low, high = C.median_interval(diffs)
            row.append(f"{us(C.median(diffs))} ({us(low)} to {us(high)})")
        rows.append(row)
    ratio = {f: C.median([b / a for a, b in zip(totals["hand"], totals[f])]) for f in fws}
    lines = C.header_lines("Where the time of a step goes", {
        "scenario": f"{size} ({steps} steps, batch {sc['batch']}, widths {sc['widths']})",
        "torch": torch.__version__, "rounds": f"{args.rounds} (+1 warm-up), order shuffled each round",
        "ratios to hand (median of per-round ratios, timers on)":
            ", ".join(f"{f} {ratio[f]:.3f}" for f in fws if f != "hand"),
    })
    lines += ["µs per step. \"hand\": the median over rounds; \"X - hand\": the median of the per-round differences, "
              "with a bootstrap 95 % interval of that median.", ""]
    lines.append(C.md_table(["interval", "hand"] + [f"{f} - hand" for f in shown], rows))
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
