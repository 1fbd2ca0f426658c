"""How many Python-level calls a training step makes: the hand loop, the hand loop around the module, and ember.

Callgrind counts instructions; this counts calls, which is what a reader can act on. Each variant runs
bench/overhead.py's scenario once untimed (lazy imports, first-call set-up), then once more under
``sys.setprofile``, which sees every Python function entered and every C function called from Python. The
report is calls per training step, and the functions whose count differs from the hand loop's by at least
``--min`` a step (a bar's draw every 0.1 s shows up as a fraction).

    python bench/call_count.py --size small
    python bench/call_count.py --size tiny+val --variants hand,ember

The counts are exact and do not depend on the machine's load, so one run is enough. What a call costs does
depend on it: see docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import collections
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

C.ensure_repo_on_path()

VARIANTS = ("hand", "hand+module", "ember")


def count_calls(run) -> collections.Counter:
    calls: collections.Counter = collections.Counter()

    def profile(frame, event, arg) -> None:
        if event == "call":
            code = frame.f_code
            calls[f"{os.path.basename(code.co_filename)}:{code.co_name}"] += 1
        elif event == "c_call":
            calls["C:" + getattr(arg, "__qualname__", repr(arg))] += 1

    with C.quiet():
        sys.setprofile(profile)
        try:
            run()
        finally:
            sys.setprofile(None)
    return calls


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", default="small", help="a bench/overhead.py scenario")
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma list of " + ", ".join(VARIANTS))
    p.add_argument("--min", type=float, default=0.3, help="smallest per-step difference to list")
    args = p.parse_args(argv)

    import torch
    import overhead as O
    import python_cost as P

    torch.set_num_threads(1)
    if args.size not in O.SCENARIOS:
        p.error(f"--size: unknown scenario {args.size!r}; choose from {list(O.SCENARIOS)}")
    sc = O.SCENARIOS[args.size]
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if "hand" not in variants or any(v not in VARIANTS for v in variants):
        p.error(f"--variants must include hand and come from {VARIANTS}; got {variants}")
    if "hand+module" in variants and (sc["val_batches"] or sc["epochs"] != 1 or sc["metrics"] != 1
                                      or sc.get("loaders", 1) != 1):
        p.error(f"--size {args.size!r}: hand+module needs a one-epoch, one-loader scenario without validation "
                "or extra metrics")
    frameworks, notes = O.load_frameworks(["ember"])
    if notes:
        p.error("; ".join(notes))
    O.silence_frameworks()

    def build(name: str):
        if name == "hand+module":
            return P.hand_variant(name, sc, 0, [])[0]
        return O.prepare_run(name, frameworks, sc)[0]

    counts = {}
    for name in variants:
        with C.quiet():
            build(name)()  # warm-up, not counted
        counts[name] = count_calls(build(name))

    steps = sc["steps"]
    print(f"# Python-level calls a training step, scenario {args.size!r} ({steps} steps)\n")
    print(f"- command: `{C.command_line()}`")
    print(f"- torch: {C.package_version('torch')}, python {sys.version.split()[0]}\n")
    print(C.md_table(["variant", "calls a step", "over hand"],
                     [[v, f"{sum(counts[v].values()) / steps:.1f}",
                       f"{(sum(counts[v].values()) - sum(counts['hand'].values())) / steps:+.1f}"] for v in variants]))
    hand = counts["hand"]
    for name in variants:
        if name == "hand":
            continue
        diff = sorted(((counts[name][k] - hand[k]) / steps, k) for k in set(counts[name]) | set(hand))
        rows = [[k, f"{d:+.2f}"] for d, k in diff if abs(d) >= args.min]
        print(f"\n{name} against hand, functions whose calls a step differ by at least {args.min}:\n")
        print(C.md_table(["function", "calls a step"], rows) if rows else "(none)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
