"""Framework overhead in instructions: ember and Lightning vs the hand-written loop, counted by callgrind.

On these shared machines a wall-clock ratio moves by several points from one run to the next
(bench/overhead.py). Valgrind's callgrind counts the instructions a program executes, which is the
same on every run of the same code whatever else the machine does, so a change of a fraction of a
percent shows. It counts work, not time: cache misses and branch mispredictions are left out unless
``--cache-sim`` asks callgrind to simulate them, and then the table adds KCachegrind's cycle estimate
(Ir + 10 x branch mispredictions + 10 x L1 misses + 100 x last-level misses).

Each (scenario, framework) runs in its own Python process under valgrind, the same program as
bench/overhead.py (same model, data, seed and module source). The process runs it once untimed
(warm-up, with valgrind's instrumentation still off), then once more through a ctypes trampoline;
``--toggle-collect=_ctypes_callproc`` makes callgrind count only what runs inside it: Trainer construction + fit for the frameworks, optimizer
construction + loop for the hand loop (the region bench/overhead.py times).

Progress bars are off by default: ember redraws on the wall clock, which valgrind slows ~50x, so it
would draw far more often than it really does (Lightning redraws on every batch either way).
``--progress-bar`` turns them on for both.

    python bench/instructions.py          # tiny, small, tiny+val, tiny+5 metrics: about 45 min on 1 core
    python bench/instructions.py --sizes tiny --frameworks hand,ember --split
    python bench/instructions.py --sizes small --cache-sim --out bench/out/instructions.md

``--split`` also runs each scenario at a third of its steps, to split the count into a fixed cost and
a per-step cost.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

# medium is left out by default: its big matrix products take ~15 min a run under valgrind, and its wall-clock
# ratio (bench/overhead.py) is already at 1.00.
DEFAULT_SIZES = "tiny,small,tiny+val,tiny+5 metrics"
EVENTS_SIM = ("Ir", "I1mr", "D1mr", "D1mw", "ILmr", "DLmr", "DLmw", "Bcm", "Bim")


# ----------------------------------------------------------------------------- inside valgrind
def child(fw: str, size: str, steps: int, progress_bar: bool) -> None:
    """Warm up once, then run the measured region through the trampoline that callgrind collects."""
    import overhead as O
    import torch

    torch.set_num_threads(1)
    frameworks, notes = O.load_frameworks([fw]) if fw != "hand" else ({}, [])
    if notes:
        raise SystemExit("; ".join(notes))
    O.silence_frameworks()
    sc = dict(O.SCENARIOS[size], steps=steps)
    errors: list[BaseException] = []

    def collected(timed):
        def body():
            try:
                timed()
            except BaseException as exc:  # a ctypes callback cannot raise: hand it back
                errors.append(exc)

        return body

    for measured in (False, True):
        timed, _ = O.prepare_run(fw, frameworks, sc, progress_bar)
        with C.quiet():
            if measured:
                # Valgrind runs the imports and the warm-up uninstrumented (--instr-atstart=no, ~10x faster);
                # callgrind_control returns once instrumentation is on.
                subprocess.run(["callgrind_control", "--instr=on", str(os.getpid())], check=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                ctypes.CFUNCTYPE(None)(collected(timed))()  # the only _ctypes_callproc call while collecting
            else:
                timed()
        if errors:
            raise errors[0]


# ----------------------------------------------------------------------------- driver
def count(fw: str, size: str, steps: int, args) -> dict[str, int]:
    """Run one child under callgrind; returns its event totals."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "callgrind.out")
        cmd = ["valgrind", "--tool=callgrind", "--instr-atstart=no", "--collect-atstart=no",
               "--toggle-collect=_ctypes_callproc",
               f"--callgrind-out-file={out}"]
        if args.cache_sim:
            cmd += ["--cache-sim=yes", "--branch-sim=yes"]
        cmd += [sys.executable, os.path.abspath(__file__), "--child", fw, size, str(steps),
                "1" if args.progress_bar else "0"]
        env = dict(os.environ, PYTHONHASHSEED="0")  # the same dict layouts, so the same counts, every run
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0 or not os.path.exists(out):
            raise RuntimeError(f"{fw}/{size} failed under valgrind (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
        return read_totals(out)


def read_totals(path: str) -> dict[str, int]:
    """The ``events:`` and ``summary:``/``totals:`` lines of a callgrind output file."""
    events, totals = None, None
    with open(path) as fh:
        for line in fh:
            if line.startswith("events:"):
                events = line.split()[1:]
            elif line.startswith(("summary:", "totals:")):
                totals = [int(v) for v in line.split()[1:]]
    if events is None or totals is None:
        raise RuntimeError(f"no totals in {path}")
    return dict(zip(events, totals + [0] * (len(events) - len(totals))))


def cycle_estimate(t: dict[str, int]) -> int:
    """KCachegrind's estimate: Ir + 10 Bm + 10 L1m + 100 LLm."""
    l1 = t.get("I1mr", 0) + t.get("D1mr", 0) + t.get("D1mw", 0)
    ll = t.get("ILmr", 0) + t.get("DLmr", 0) + t.get("DLmw", 0)
    return t["Ir"] + 10 * (t.get("Bcm", 0) + t.get("Bim", 0)) + 10 * l1 + 100 * ll


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default=DEFAULT_SIZES, help="comma list of bench/overhead.py's scenarios")
    p.add_argument("--frameworks", default="hand,ember,lightning")
    p.add_argument("--split", action="store_true", help="also run at 1/3 of the steps: fixed vs per-step cost")
    p.add_argument("--cache-sim", action="store_true", help="simulate caches and branches (about 2x slower)")
    p.add_argument("--progress-bar", action="store_true", help="progress bars on (see above: ember's draw count "
                                                                  "under valgrind is not its real one)")
    p.add_argument("--out", default=None, help="also write the markdown here")
    p.add_argument("--child", nargs=4, metavar=("FW", "SIZE", "STEPS", "BAR"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        return a
    import overhead as O

    a.sizes = [O.SIZE_ALIASES.get(s.strip(), s.strip()) for s in a.sizes.split(",") if s.strip()]
    bad = [s for s in a.sizes if s not in O.SCENARIOS]
    if bad:
        p.error(f"--sizes: unknown scenario(s) {bad}; choose from {list(O.SCENARIOS)}")
    fws = [f.strip() for f in a.frameworks.split(",") if f.strip()]
    if "hand" not in fws or any(f not in O.ALL_FRAMEWORKS for f in fws):
        p.error(f"--frameworks={a.frameworks!r}: must include hand and be a subset of {O.ALL_FRAMEWORKS}")
    a.frameworks = [f for f in O.ALL_FRAMEWORKS if f in fws]
    if shutil.which("valgrind") is None:
        p.error("valgrind is not installed (Debian/Ubuntu: apt install valgrind)")
    return a


def main(argv=None):
    args = parse_args(argv)
    if args.child:
        fw, size, steps, bar = args.child
        child(fw, size, int(steps), bar == "1")
        return 0
    import overhead as O

    others = [f for f in args.frameworks if f != "hand"]
    rows, split_rows = [], []
    for size in args.sizes:
        steps = O.SCENARIOS[size]["steps"]
        full = {}
        for fw in args.frameworks:
            print(f"[{size}] {fw}, {steps} steps under callgrind ...", file=sys.stderr, flush=True)
            full[fw] = count(fw, size, steps, args)
        hand = full["hand"]
        row = [size, steps, f"{hand['Ir'] / 1e6:,.1f}"]
        row += [f"{full[f]['Ir'] / hand['Ir']:.4f}" for f in others]
        if args.cache_sim:
            row += [f"{cycle_estimate(full[f]) / cycle_estimate(hand):.4f}" for f in others]
        rows.append(row)
        if args.split:
            few = max(O.SCENARIOS[size]["epochs"], steps // 3)
            for fw in args.frameworks:
                print(f"[{size}] {fw}, {few} steps under callgrind ...", file=sys.stderr, flush=True)
                part = count(fw, size, few, args)["Ir"]
                per_step = (full[fw]["Ir"] - part) / (steps - few)
                split_rows.append([size, fw, f"{per_step / 1e3:,.1f}", f"{(part - per_step * few) / 1e6:,.2f}"])

    extra = {"torch": C.package_version("torch"), "ember": C.package_version("ember"),
             "lightning": C.package_version("lightning") if "lightning" in args.frameworks else "not used",
             "valgrind": subprocess.run(["valgrind", "--version"], capture_output=True, text=True).stdout.strip(),
             "progress bars": "on" if args.progress_bar else "off",
             "measured": "Trainer construction + fit (hand: optimizer construction + loop), after one warm-up run"}
    lines = C.header_lines("Framework overhead in instructions (callgrind)", extra)
    headers = ["scenario", "steps", "hand Ir (M)"] + [f"{f}/hand Ir" for f in others]
    if args.cache_sim:
        headers += [f"{f}/hand est. cycles" for f in others]
    lines += [C.md_table(headers, rows), ""]
    if split_rows:
        lines += ["Fixed and per-step cost (from the full run and a run at 1/3 of the steps):", "",
                  C.md_table(["scenario", "framework", "k instr / step", "fixed M instr"], split_rows), ""]
    C.emit("\n".join(lines), args.out)
    return 0


if __name__ == "__main__":
    C.ensure_repo_on_path()
    sys.exit(main())
