"""ember against an earlier ember, in one process: short interleaved runs that resolve a fraction of a point.

bench/overhead.py answers "how far is ember from a hand loop" and needs ~200 rounds of full-length runs
(half an hour) to resolve one point on these machines. A code change is easier to judge against the code
before it: this script exports a git revision of ``ember/`` into a temporary package ``ember_base`` and
runs hand, the base and the working tree side by side in one process, on the same model, data and seed
as bench/overhead.py, in a shuffled order every round. The runs are short (``--steps``, 200 by default), so
many rounds fit in a few minutes, and the ratio between two versions of ember is read from the same rounds.

    python bench/ab.py                                 # tiny, 120 rounds of 200 steps, base = HEAD
    python bench/ab.py --base HEAD~3 --size tiny+val --steps 0 --rounds 50   # --steps 0: the scenario's own
    python bench/ab.py --no-bar                        # progress bars off in both
    python bench/ab.py --without log,finite,bar-hook   # also the working tree with one piece taken out

``--without`` is a diagnosis, not a comparison of versions: each name adds a variant of the working tree with
one piece of the per-step work switched off by a patch (none of them changes the arithmetic):
``log`` (MetricStore.log returns at once), ``finite`` (no finite-loss check), ``bar-hook`` (the progress bar's
per-batch hook is not called) and ``bar`` (no progress bar).

A short run carries ember's fixed cost (Trainer construction and fit's set-up, about 1 ms) over fewer steps
than bench/overhead.py does, so its ratios to the hand loop read higher; the base/working-tree ratio is the
figure this script is for. The final weights are compared bitwise after every run, as in bench/overhead.py.
"""
from __future__ import annotations

import argparse
import gc
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

C.ensure_repo_on_path()
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE = "ember_base"


def export_base(rev: str, into: str) -> None:
    """``ember/`` at ``rev`` as the package ``ember_base`` under ``into``, its absolute imports renamed."""
    archive = subprocess.run(["git", "-C", REPO, "archive", rev, "ember"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", into], input=archive, check=True)
    os.rename(os.path.join(into, "ember"), os.path.join(into, BASE))
    # "ember." in strings too (module-name tests such as hooks.reads_outputs' "ember." prefix must keep working).
    pattern = re.compile(r"\bember(?=\.)|(?<=import )ember\b|(?<=from )ember(?= )")
    for root, _, files in os.walk(os.path.join(into, BASE)):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(root, name)
                with open(path) as fh:
                    text = fh.read()
                with open(path, "w") as fh:
                    fh.write(pattern.sub(BASE, text))


def without(name: str):
    """Switch one piece of the working tree's per-step work off; returns the function that switches it back."""
    import ember
    from ember import step
    from ember.callbacks import progress
    from ember.logging import MetricStore

    def patch(owner, attr, value):
        original = owner.__dict__[attr]
        setattr(owner, attr, value)
        return lambda: setattr(owner, attr, original)

    if name == "log":
        return patch(MetricStore, "log", lambda self, *args: None)
    if name == "finite":
        plan_init = step.EpochPlan.__init__

        def unchecked(self, run):
            plan_init(self, run)
            self.check_finite = False

        return patch(step.EpochPlan, "__init__", unchecked)
    if name == "bar-hook":  # the hook table leaves out a hook that is the Callback's own no-op
        return patch(progress.TQDMProgressBar, "on_train_batch_end", ember.Callback.on_train_batch_end)
    raise SystemExit(f"--without: unknown piece {name!r}; choose from log, finite, bar-hook, bar")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--base", default="HEAD", help="the git revision to compare the working tree with")
    p.add_argument("--size", default="tiny", help="a bench/overhead.py scenario")
    p.add_argument("--steps", type=int, default=200, help="steps per epoch (0: the scenario's own)")
    p.add_argument("--rounds", type=int, default=120)
    p.add_argument("--no-bar", dest="bar", action="store_false", help="progress bars off")
    p.add_argument("--without", default="", help="comma list of log, finite, bar-hook, bar (see above)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    import overhead as O
    import torch

    torch.set_num_threads(1)
    tmp = tempfile.mkdtemp(prefix="ember-ab-")
    export_base(args.base, tmp)
    sys.path.insert(0, tmp)
    import ember
    base = __import__(BASE)
    frameworks = {"ember": (ember, O.make_module_classes(ember)), BASE: (base, O.make_module_classes(base))}
    O.silence_frameworks()
    size = O.SIZE_ALIASES.get(args.size, args.size)
    sc = dict(O.SCENARIOS[size])
    if args.steps:
        sc["steps"] = args.steps * sc["epochs"]
    pieces = [w.strip() for w in args.without.split(",") if w.strip()]
    names = ["hand", BASE, "ember"] + [f"ember without {w}" for w in pieces]
    times = {n: [] for n in names}
    mismatches = 0
    rng = random.Random(0)
    for rnd in range(args.rounds + 1):  # round 0: warm-up
        order = list(names)
        rng.shuffle(order)
        got, ref = {}, None
        for name in order:
            piece = name[len("ember without "):] if name.startswith("ember without ") else None
            undo = without(piece) if piece not in (None, "bar") else (lambda: None)
            timed, net = O.prepare_run("ember" if piece else name, frameworks, sc,
                                       progress_bar=args.bar and piece != "bar")
            gc.collect()
            try:
                with C.quiet():
                    t0 = time.perf_counter()
                    timed()
                    got[name] = time.perf_counter() - t0
            finally:
                undo()
            weights = O.checksum(net)  # none of the pieces changes the arithmetic: same weights in every run
            if ref is None:
                ref = weights
            elif not torch.equal(weights, ref):
                mismatches += 1
        if rnd:
            for name in names:
                times[name].append(got[name])
    print(f"{size}, {sc['steps']} steps, {args.rounds} rounds, base {args.base}, bar {'on' if args.bar else 'off'}: "
          + ", ".join(f"{n} {statistics.median(v) * 1e3:.1f} ms" for n, v in times.items()))
    pairs = [(BASE, "hand"), ("ember", "hand"), ("ember", BASE)] + [(n, "hand") for n in names[3:]]
    for a, b in pairs:
        ratios = [x / y for x, y in zip(times[a], times[b])]
        lo, hi = C.median_interval(ratios)
        print(f"  {a:>22} / {b:<10} {statistics.median(ratios):.4f}  (95 % interval {lo:.4f}-{hi:.4f})")
    if mismatches:
        print(f"  WARNING: {mismatches} runs ended with weights that differ from the first run of their round")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
