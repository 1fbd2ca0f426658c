"""Import-time cost of ember (and Lightning) on top of torch, in fresh interpreters.

Each round runs, in this order and each in a fresh subprocess:
    python -c "import torch";  python -c "import ember";  python -c "import lightning"
after one untimed warm-up round (file-system cache). Reports medians, the deltas
against torch and the target `ember − torch ≤ 0.1 s`. Then lists the heavy modules
that `import ember` pulls in on top of `import torch`, and the biggest non-ember
imports triggered by ember according to `python -X importtime`.

    python bench/import_time.py                  # 15 rounds
    python bench/import_time.py --rounds 30 --out bench/out/import_time.md
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

TARGET_S = 0.1
# Modules worth knowing about if `import ember` loads them (top-level names).
HEAVY = ("tqdm", "numpy", "matplotlib", "seaborn", "pandas", "scipy", "lightning", "lightning_fabric",
         "pytorch_lightning", "lightning_utilities", "torchmetrics", "tensorboard", "tensorboardX",
         "yaml", "PIL", "rich", "fsspec", "packaging", "jsonargparse", "omegaconf", "hydra",
         "torchvision", "google.protobuf", "grpc", "sympy", "torch._dynamo", "torch._inductor",
         "torch.utils.tensorboard", "torch.distributed")


def child_env():
    env = dict(os.environ)
    # Make `import ember` resolve to this checkout, as in the other benches.
    env["PYTHONPATH"] = C.REPO_ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def time_import(stmt, env):
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", stmt], env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
    dt = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"`python -c {stmt!r}` failed:\n{proc.stderr}")
    return dt


MODULES_PROBE = r"""
import json, sys
import torch
before = set(sys.modules)
import ember
after = set(sys.modules)
print(json.dumps({"before": sorted(before), "added": sorted(after - before)}))
"""


def modules_added(env):
    proc = subprocess.run([sys.executable, "-c", MODULES_PROBE], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def importtime_children(env, top=10):
    """Biggest non-ember imports done on behalf of `import ember` (after torch is loaded).

    Parses `python -X importtime -c "import torch; import ember"`: lines are printed in
    post-order, so a line's parent is the next line with one less level of nesting.
    """
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", "import torch; import ember"],
                          env=env, capture_output=True, text=True)
    entries = []  # (depth, name, cumulative_us)
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line or "cumulative" in line:
            continue
        _, cum, name = line[len("import time:"):].split("|")
        depth = (len(name) - len(name.lstrip(" "))) // 2
        entries.append((depth, name.strip(), int(cum)))
    # the ember subtree: everything after torch's top-level line up to ember's top-level line
    try:
        end = max(i for i, e in enumerate(entries) if e[0] == 0 and e[1] == "ember")
    except ValueError:
        return []
    start = max((i for i, e in enumerate(entries[:end]) if e[0] == 0), default=-1) + 1
    sub = entries[start:end + 1]
    found = []
    for i, (depth, name, cum) in enumerate(sub):
        if name == "ember" or name.startswith("ember."):
            continue
        parent = next((p for p in sub[i + 1:] if p[0] == depth - 1), None)
        if parent is not None and (parent[1] == "ember" or parent[1].startswith("ember.")):
            found.append((cum, name, parent[1]))
    found.sort(reverse=True)
    return found[:top]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--out", "--markdown", dest="out", default=None, help="also write the markdown here")
    args = p.parse_args(argv)
    env = child_env()

    stmts = {"torch": "import torch", "ember": "import ember", "lightning": "import lightning"}
    notes = []
    try:
        time_import("import lightning", env)
    except RuntimeError:
        del stmts["lightning"]
        notes.append("lightning not importable: skipped")
    for s in stmts.values():  # warm-up round, untimed
        time_import(s, env)
    times = {k: [] for k in stmts}
    for r in range(args.rounds):
        for k, s in stmts.items():
            times[k].append(time_import(s, env))
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{k} {v[-1]:.3f} s" for k, v in times.items()),
              file=sys.stderr)

    med = {k: C.median(v) for k, v in times.items()}
    # per-round paired deltas (interleaved, so drift cancels); median of those
    d_ember = C.median([e - t for e, t in zip(times["ember"], times["torch"])])
    rows = [["torch", f"{med['torch']:.3f}", "", "", ""],
            ["ember", f"{med['ember']:.3f}", f"{d_ember:+.3f}", f"≤ {TARGET_S:.1f}",
             "PASS" if d_ember <= TARGET_S else "MISS"]]
    if "lightning" in times:
        d_l = C.median([a - t for a, t in zip(times["lightning"], times["torch"])])
        rows.append(["lightning", f"{med['lightning']:.3f}", f"{d_l:+.3f}", "", ""])

    extra = {"ember": C.package_version("ember"), "lightning": C.package_version("lightning"),
             "rounds": f"{args.rounds} timed (+1 untimed warm-up), interleaved {' → '.join(stmts)}, "
                       "each a fresh `python -c`"}
    try:
        import torch  # noqa: F401  (only for its version string)

        extra = {"torch": torch.__version__, **extra}
    except Exception:
        pass
    lines = C.header_lines("Import time", extra) + [f"- note: {n}" for n in notes]
    lines += [""] if notes else []
    lines += ["Median wall time of a fresh `python -c \"import X\"` (s); delta = median of per-round "
              "paired differences against torch:", "",
              C.md_table(["import", "median s", "Δ vs torch s", "target", "verdict"], rows), ""]

    mods = modules_added(env)
    added, before = set(mods["added"]), set(mods["before"])
    heavy_added = [h for h in HEAVY if h in added]
    heavy_already = [h for h in HEAVY if h in before]
    tops = sorted({m.split(".")[0] for m in added} - {"ember"})
    lines += [f"`import ember` after `import torch` adds {len(added)} module(s) "
              f"({sum(m == 'ember' or m.startswith('ember.') for m in added)} of them ember's own).",
              f"- heavy modules added by ember: {', '.join(heavy_added) if heavy_added else 'none'}",
              f"- heavy modules already loaded by torch itself: "
              f"{', '.join(heavy_already) if heavy_already else 'none'}",
              f"- all top-level packages added: {', '.join(tops) if tops else 'none'}"]
    kids = importtime_children(env)
    if kids:
        lines += ["", "Biggest non-ember imports triggered by ember (`-X importtime`, cumulative, "
                  "one run, context only):", "",
                  C.md_table(["module", "ms", "imported by"], [[n, f"{c / 1e3:.1f}", par] for c, n, par in kids])]
    C.emit("\n".join(lines), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
