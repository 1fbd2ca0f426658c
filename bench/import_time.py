"""Import-time cost of ember (and Lightning) on top of torch, in fresh interpreters.

Each round runs, in this order and each in a fresh subprocess:
    python -c "import torch"
    python -c "import ember"
    python -c "import ember; ember.Trainer; ember.LightningModule"     ("ember, used")
    python -c "import lightning"
after one untimed warm-up round (file-system cache). Reports medians, the deltas
against torch and the target `ember − torch ≤ 0.1 s`.

ember loads its public names lazily, so a bare `import ember` does not even import
torch and is trivially fast; the verdict therefore uses the "ember, used" line, which
is what a Lightning program pays (`class M(L.LightningModule)`, `L.Trainer(...)`).
Then lists the heavy modules that ember (used) pulls in on top of `import torch`, and
the biggest non-ember imports it triggers according to `python -X importtime`.

    python bench/import_time.py                  # 15 rounds
    python bench/import_time.py --rounds 30 --out bench/out/import_time.md
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

TARGET_S = 0.1
# Modules worth knowing about if `import ember` loads them (top-level names).
USED = "import ember; ember.Trainer; ember.LightningModule"
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


def _children_cpu():
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def time_import(stmt, env):
    """(wall s, child user+sys CPU s) of a fresh `python -c stmt`."""
    c0, t0 = _children_cpu(), time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", stmt], env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
    dt, dc = time.perf_counter() - t0, _children_cpu() - c0
    if proc.returncode != 0:
        raise RuntimeError(f"`python -c {stmt!r}` failed:\n{proc.stderr}")
    return dt, dc


MODULES_PROBE = r"""
import json, sys
import torch
before = set(sys.modules)
import ember
ember.Trainer, ember.LightningModule
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

    Parses `python -X importtime -c "import torch; <USED>"`: lines are printed in
    post-order, so a line's parent is the next line with one less level of nesting.
    """
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", "import torch; " + USED],
                          env=env, capture_output=True, text=True)
    entries = []  # (depth, name, self_us, cumulative_us)
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line or "cumulative" in line:
            continue
        self_us, cum, name = line[len("import time:"):].split("|")
        depth = (len(name) - len(name.lstrip(" "))) // 2
        entries.append((depth, name.strip(), int(self_us), int(cum)))
    # everything imported after torch's top-level line is on ember's behalf
    try:
        start = max(i for i, e in enumerate(entries) if e[0] == 0 and e[1] == "torch") + 1
    except ValueError:
        return [], 0, 0
    sub = entries[start:]
    found, own_us, own_n = [], 0, 0
    for i, (depth, name, self_us, cum) in enumerate(sub):
        if name == "ember" or name.startswith("ember."):
            own_us, own_n = own_us + self_us, own_n + 1
            continue
        parent = next((p for p in sub[i + 1:] if p[0] == depth - 1), None)
        if depth == 0 or (parent is not None and (parent[1] == "ember" or parent[1].startswith("ember."))):
            found.append((cum, name, parent[1] if parent else "-"))
    found.sort(reverse=True)
    return found[:top], own_us, own_n


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--out", "--markdown", dest="out", default=None, help="also write the markdown here")
    args = p.parse_args(argv)
    env = child_env()

    stmts = {"torch": "import torch", "ember": "import ember", "ember, used": USED,
             "lightning": "import lightning"}
    notes = []
    try:
        time_import("import lightning", env)
    except RuntimeError:
        del stmts["lightning"]
        notes.append("lightning not importable: skipped")
    for s in stmts.values():  # warm-up round, untimed
        time_import(s, env)
    times = {k: [] for k in stmts}
    cpu = {k: [] for k in stmts}  # child user+sys CPU time: context, robust to contention
    for r in range(args.rounds):
        for k, s in stmts.items():
            dt, dc = time_import(s, env)
            times[k].append(dt)
            cpu[k].append(dc)
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{k} {v[-1]:.3f} s" for k, v in times.items()),
              file=sys.stderr)

    med = {k: C.median(v) for k, v in times.items()}
    # per-round paired deltas (interleaved, so drift cancels); median of those
    def delta(k, d=times):
        return C.median([a - t for a, t in zip(d[k], d["torch"])])

    def cpu_cols(k):
        return [f"{C.median(cpu[k]):.3f}", "" if k == "torch" else f"{delta(k, cpu):+.3f}"]

    d_used = delta("ember, used")
    rows = [["`import torch`", f"{med['torch']:.3f}", "", "", "", *cpu_cols("torch")],
            ["`import ember`", f"{med['ember']:.3f}", f"{delta('ember'):+.3f}", "",
             "(lazy: no torch yet)", *cpu_cols("ember")],
            [f"`{USED}`", f"{med['ember, used']:.3f}", f"{d_used:+.3f}", f"≤ {TARGET_S:.1f}",
             "PASS" if d_used <= TARGET_S else "MISS", *cpu_cols("ember, used")]]
    if "lightning" in times:
        rows.append(["`import lightning`", f"{med['lightning']:.3f}", f"{delta('lightning'):+.3f}", "", "",
                     *cpu_cols("lightning")])

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
    lines += ["Median wall time of a fresh `python -c \"import X\"` (s); Δ = median of per-round "
              "paired differences against torch. The CPU columns (child user+sys time) are context "
              "only, but much less sensitive to other processes competing for the CPU:", "",
              C.md_table(["import", "median s", "Δ vs torch s", "target", "verdict", "CPU s",
                          "CPU Δ vs torch s"], rows), ""]

    mods = modules_added(env)
    added, before = set(mods["added"]), set(mods["before"])
    heavy_added = [h for h in HEAVY if h in added]
    heavy_already = [h for h in HEAVY if h in before]
    tops = sorted({m.split(".")[0] for m in added} - {"ember"})
    lines += [f"`{USED}` after `import torch` adds {len(added)} module(s) "
              f"({sum(m == 'ember' or m.startswith('ember.') for m in added)} of them ember's own).",
              f"- heavy modules added by ember: {', '.join(heavy_added) if heavy_added else 'none'}",
              f"- heavy modules already loaded by torch itself: "
              f"{', '.join(heavy_already) if heavy_already else 'none'}",
              f"- all top-level packages added: {', '.join(tops) if tops else 'none'}"]
    kids, own_us, own_n = importtime_children(env)
    lines.append(f"- `-X importtime` (one run, context only): ember's own {own_n} modules take "
                 f"{own_us / 1e3:.1f} ms self time; non-ember imports they trigger: "
                 f"{len(kids) if kids else 'none'}")
    if kids:
        lines += ["", "Biggest non-ember imports triggered by ember (`-X importtime`, cumulative, "
                  "one run, context only):", "",
                  C.md_table(["module", "ms", "imported by"], [[n, f"{c / 1e3:.1f}", par] for c, n, par in kids])]
    C.emit("\n".join(lines), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
