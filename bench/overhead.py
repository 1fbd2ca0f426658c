"""Framework overhead: ember and Lightning vs an idiomatic hand-written PyTorch loop.

Every scenario trains the same model (same init, seeded before construction) on the
same data (TensorDataset + DataLoader, shuffle=False) with SGD(lr=0.01, momentum=0.9)
and MSE loss, three ways, interleaved inside one process:

    warm-up (untimed): hand (A/A), hand, ember, lightning
    round 1..N:        hand (A/A), hand, ember, lightning

The reported number is the median over rounds of the per-round ratio framework/hand.
"hand (A/A)" is the same hand loop timed once more just before the hand run; the median of
hand/hand (A/A) is what the same code "costs" over itself in this run, so its distance from 1
and its per-round spread show how finely the run can resolve a ratio (--no-aa leaves it out).
Timed region:
  * hand:       optimizer construction + the training loop (+ validation loop);
  * frameworks: Trainer construction + trainer.fit(...).
Model, LightningModule and DataLoader construction are outside the timed region for
all three. stdout/stderr are redirected to os.devnull around every timed run (all
three alike), so progress bars are still drawn (enable_progress_bar=True) but do not
hit the terminal.  After every run the final parameters are compared bitwise.

    python bench/overhead.py                       # all sizes, 5 rounds
    python bench/overhead.py --sizes tiny,small --rounds 3 --frameworks hand,lightning
    python bench/overhead.py --out bench/out/overhead.md
    python bench/overhead.py --sizes compiled --compile-backend aot_eager
    python bench/overhead.py --sizes tiny --frameworks hand,ember --rounds 20 --abba
    python bench/overhead.py --sizes tiny --no-aa

--abba runs each round forth and back (hand (A/A), hand, ember, lightning, lightning, ember, hand, hand (A/A))
and times each
framework by the sum of its two runs, so a drift of the machine's speed within a round cancels out
(it doubles the time a round takes).

"tiny compiled" trains the tiny model compiled with torch.compile (inductor unless
--compile-backend says otherwise): the hand loop and both LightningModules run the very
same compiled nn.Sequential (`torch.compile(net)` held as `self.net`), so the ratio is
the framework's overhead around a compiled model. (Passing `torch.compile(module)` to
fit is not used here: Lightning 2.6.6 then compiles training_step too and fails inside
its own self.log on this torch; see tests/parity/test_parity_compile.py.) The warm-up
round pays the compilation.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sys
import time
import traceback
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

C.ensure_repo_on_path()

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

SEED = 1234
LR = 0.01
MOMENTUM = 0.9

# name -> layer widths, batch size, total train steps, epochs, val batches/epoch, logged metrics/step
SCENARIOS = {
    "tiny": dict(widths=(1, 2, 2, 1), batch=1, steps=1200, epochs=1, val_batches=0, metrics=1, target=1.05),
    "small": dict(widths=(32, 64, 64, 1), batch=64, steps=600, epochs=1, val_batches=0, metrics=1, target=1.03),
    "medium": dict(widths=(784, 1024, 1024, 1), batch=256, steps=80, epochs=1, val_batches=0, metrics=1,
                   target=1.01),
    # 1,200 steps as 6 epochs x 200 steps, a 50-batch validation pass after every epoch.
    "tiny+val": dict(widths=(1, 2, 2, 1), batch=1, steps=1200, epochs=6, val_batches=50, metrics=1, target=1.06),
    # 5 metrics logged per step (loss + 4 more).
    "tiny+5 metrics": dict(widths=(1, 2, 2, 1), batch=1, steps=1200, epochs=1, val_batches=0, metrics=5,
                           target=1.06),
    # The tiny model through torch.compile, the same compiled module in all three (no target set yet).
    "tiny compiled": dict(widths=(1, 2, 2, 1), batch=1, steps=1200, epochs=1, val_batches=0, metrics=1,
                          target=None, compile=True),
    # Trainer(profiler=...): None must cost what "tiny" costs (an off profiler adds nothing per batch);
    # "simple" times ~30 actions per step in both frameworks (no target: it is meant to cost something).
    "tiny+profiler=None": dict(widths=(1, 2, 2, 1), batch=1, steps=1200, epochs=1, val_batches=0, metrics=1,
                               target=1.05, profiler=None),
    "tiny+profiler=simple": dict(widths=(1, 2, 2, 1), batch=1, steps=1200, epochs=1, val_batches=0, metrics=1,
                                 target=None, profiler="simple"),
    # Two train loaders of equal length, one batch of each per step: the hand loop zips them, the frameworks
    # get the list (Lightning's and ember's CombinedLoader, max_size_cycle). The target is provisional: it
    # was set before a measurement on a quiet machine.
    "tiny+2 loaders": dict(widths=(1, 2, 2, 1), batch=1, steps=1200, epochs=1, val_batches=0, metrics=1,
                           loaders=2, target=1.08),
}
SIZE_ALIASES = {"val": "tiny+val", "tiny+val": "tiny+val", "metrics": "tiny+5 metrics",
                "tiny+metrics": "tiny+5 metrics", "tiny+5metrics": "tiny+5 metrics",
                "tiny+5 metrics": "tiny+5 metrics", "tiny+5": "tiny+5 metrics", "compiled": "tiny compiled",
                "tiny+compiled": "tiny compiled", "profiler": "tiny+profiler=None", "simple": "tiny+profiler=simple",
                "loaders": "tiny+2 loaders", "tiny+2loaders": "tiny+2 loaders", "tiny+2 loaders": "tiny+2 loaders"}
ALL_FRAMEWORKS = ("hand", "ember", "lightning")
AA = "hand (A/A)"  # the hand loop again, timed just before "hand": the run's noise floor
COMPILE_BACKEND = ["inductor"]  # --compile-backend


# ----------------------------------------------------------------------------- data/model
def make_net(widths) -> nn.Module:
    torch.manual_seed(SEED)
    layers = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def make_data(widths, batch, n_batches, salt):
    g = torch.Generator().manual_seed(SEED + salt)
    n = batch * n_batches
    x = torch.randn(n, widths[0], generator=g)
    y = torch.sin(x.sum(dim=1, keepdim=True)) + 0.1 * torch.randn(n, 1, generator=g)
    return TensorDataset(x, y)


def make_loader(ds, batch):
    # shuffle=False; the explicit generator keeps the loader's per-iterator base seed
    # from drawing on the global RNG.
    return DataLoader(ds, batch_size=batch, shuffle=False, generator=torch.Generator().manual_seed(SEED))


def extra_metrics(pred, y):
    """The 4 metrics logged on top of the loss in the "5 metrics" scenario.

    Computed from the detached prediction in both the hand loop and the modules, so the
    tensor work is identical and no autograd graph is built for them.
    """
    err = pred.detach() - y
    abs_err = err.abs()
    return {"mae": abs_err.mean(), "max_abs_err": abs_err.max(), "pred_mean": pred.detach().mean(),
            "bias": err.mean()}


def checksum(net) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1).clone() for p in net.parameters()])


# ----------------------------------------------------------------------------- hand loop
def run_hand(net, train_loader, val_loader, sc):
    opt = torch.optim.SGD(net.parameters(), lr=LR, momentum=MOMENTUM)
    five = sc["metrics"] == 5
    latest = {}  # hand equivalent of self.log(...) for the 5 metrics: latest detached tensors
    val_history = []
    for _ in range(sc["epochs"]):
        net.train()
        if isinstance(train_loader, list):  # two loaders of equal length: one batch of each per step
            for (x1, y1), (x2, y2) in zip(*train_loader):
                loss = F.mse_loss(net(x1), y1) + F.mse_loss(net(x2), y2)
                opt.zero_grad()
                loss.backward()
                opt.step()
            continue
        for x, y in train_loader:
            pred = net(x)
            loss = F.mse_loss(pred, y)
            if five:
                latest["loss"] = loss.detach()
                latest.update(extra_metrics(pred, y))
            opt.zero_grad()
            loss.backward()
            opt.step()
        if val_loader is not None:
            # Hand equivalent of logging val_loss (on_epoch mean): batch-size-weighted
            # mean kept as a tensor, turned into a float once per epoch.
            net.eval()
            with torch.no_grad():
                total, count = torch.zeros(()), 0
                for x, y in val_loader:
                    total += F.mse_loss(net(x), y) * x.shape[0]
                    count += x.shape[0]
                val_history.append((total / count).item())
            net.train()
    return latest, val_history


# ----------------------------------------------------------------------------- frameworks
def make_module_classes(L):
    """The same LightningModule source for both frameworks (`L` is ember or lightning)."""

    class Regressor(L.LightningModule):
        def __init__(self, net, n_metrics):
            super().__init__()
            self.net = net
            self.n_metrics = n_metrics

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, batch_idx):
            if isinstance(batch[0], (list, tuple)):  # two train loaders: [(x1, y1), (x2, y2)]
                (x1, y1), (x2, y2) = batch
                loss = F.mse_loss(self.net(x1), y1) + F.mse_loss(self.net(x2), y2)
                self.log("loss", loss, prog_bar=True)
                return loss
            x, y = batch
            pred = self.net(x)
            loss = F.mse_loss(pred, y)
            self.log("loss", loss, prog_bar=True)
            if self.n_metrics == 5:
                for name, value in extra_metrics(pred, y).items():
                    self.log(name, value)
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=LR, momentum=MOMENTUM)

    class RegressorWithVal(Regressor):
        def validation_step(self, batch, batch_idx):
            x, y = batch
            self.log("val_loss", F.mse_loss(self.net(x), y), prog_bar=True)

    return Regressor, RegressorWithVal


def run_framework(L, classes, net, train_loader, val_loader, sc, progress_bar=True):
    Regressor, RegressorWithVal = classes
    cls = RegressorWithVal if val_loader is not None else Regressor
    module = cls(net, sc["metrics"])
    kwargs = dict(max_epochs=sc["epochs"], accelerator="cpu", devices=1, logger=False,
                  enable_checkpointing=False, enable_model_summary=False, enable_progress_bar=progress_bar)
    if "profiler" in sc:
        kwargs["profiler"] = sc["profiler"]  # a fresh SimpleProfiler per Trainer for "simple"
    if val_loader is not None:
        # The hand loop does no pre-training "sanity" validation, so neither do the frameworks.
        kwargs["num_sanity_val_steps"] = 0

    def timed():
        trainer = L.Trainer(**kwargs)
        if val_loader is None:
            trainer.fit(module, train_dataloaders=train_loader)
        else:
            trainer.fit(module, train_dataloaders=train_loader, val_dataloaders=val_loader)

    return timed


# ----------------------------------------------------------------------------- driver
def silence_frameworks():
    warnings.simplefilter("ignore")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "lightning_fabric",
                 "pytorch_lightning", "ember"):
        logging.getLogger(name).setLevel(logging.ERROR)


def load_frameworks(requested):
    """Returns ({name: (module, classes)}, notes)."""
    loaded, notes = {}, []
    for name in requested:
        if name == "hand":
            continue
        try:
            if name == "ember":
                import ember as L
            else:
                import lightning as L
            L.Trainer, L.LightningModule  # noqa: B018  (must exist)
            loaded[name] = (L, make_module_classes(L))
        except Exception as exc:
            notes.append(f"{name} skipped: not usable ({type(exc).__name__}: {exc})")
    return loaded, notes


def prepare_run(fw, frameworks, sc, progress_bar=True):
    """Build everything the run needs (untimed). Returns (timed, net): the call to time and the trained net."""
    widths, batch = sc["widths"], sc["batch"]
    steps_per_epoch = sc["steps"] // sc["epochs"]
    train_loader = make_loader(make_data(widths, batch, steps_per_epoch, salt=0), batch)
    if sc.get("loaders", 1) == 2:
        train_loader = [train_loader, make_loader(make_data(widths, batch, steps_per_epoch, salt=2), batch)]
    val_loader = (make_loader(make_data(widths, batch, sc["val_batches"], salt=1), batch)
                  if sc["val_batches"] else None)
    net = make_net(widths)
    # The compiled scenario hands everyone the same compiled module; the checksum reads net's own parameters.
    model = torch.compile(net, backend=COMPILE_BACKEND[0]) if sc.get("compile") else net
    if fw in ("hand", AA):
        def timed():
            run_hand(model, train_loader, val_loader, sc)
    else:
        L, classes = frameworks[fw]
        timed = run_framework(L, classes, model, train_loader, val_loader, sc, progress_bar)
    return timed, net


def one_run(fw, frameworks, sc):
    """Build everything untimed, then time the run. Returns (wall s, process CPU s, checksum)."""
    timed, net = prepare_run(fw, frameworks, sc)
    gc.collect()
    with C.quiet():
        c0, t0 = time.process_time(), time.perf_counter()
        timed()
        t1, c1 = time.perf_counter(), time.process_time()
    return t1 - t0, c1 - c0, checksum(net)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="tiny,small,medium,tiny+val,tiny+5 metrics,tiny compiled,tiny+profiler=None,"
                                      "tiny+profiler=simple,tiny+2 loaders",
                   help="comma list of: " + ", ".join(SCENARIOS) + " (aliases: val, metrics)")
    p.add_argument("--rounds", type=int, default=5,
                   help="timed interleaved rounds (>= 1; 1 only checks that it runs, quote numbers from >= 3)")
    p.add_argument("--frameworks", default="hand,ember,lightning")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    p.add_argument("--abba", action="store_true", help="each round forth and back; a framework's time is the sum")
    p.add_argument("--no-aa", dest="aa", action="store_false",
                   help="leave out the A/A control (the hand loop timed a second time each round)")
    p.add_argument("--compile-backend", default="inductor", help="torch.compile backend of 'tiny compiled'")
    p.add_argument("--out", "--markdown", dest="out", default=None, help="also write the markdown here")
    a = p.parse_args(argv)
    COMPILE_BACKEND[0] = a.compile_backend
    if a.rounds < 1:
        p.error("--rounds must be >= 1")
    sizes = []
    for s in (s.strip() for s in a.sizes.split(",") if s.strip()):
        s = SIZE_ALIASES.get(s, s)
        if s not in SCENARIOS:
            p.error(f"unknown size {s!r}; choose from {list(SCENARIOS)}")
        sizes.append(s)
    fws = [f.strip() for f in a.frameworks.split(",") if f.strip()]
    bad = [f for f in fws if f not in ALL_FRAMEWORKS]
    if bad or "hand" not in fws:
        p.error(f"--frameworks must include hand and be a subset of {ALL_FRAMEWORKS}")
    a.sizes, a.frameworks = sizes, [f for f in ALL_FRAMEWORKS if f in fws]
    return a


def fmt_ratio(r):
    return "n/a" if r is None else f"{r:.3f}"


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    frameworks, notes = load_frameworks(args.frameworks)
    silence_frameworks()  # after the imports: lightning sets its loggers' levels on import
    fws = ([AA] if args.aa else []) + ["hand"] + [f for f in ("ember", "lightning") if f in frameworks]
    log = sys.stderr  # progress goes to the real stderr, outside the timed regions

    times = {s: {f: [] for f in fws} for s in args.sizes}
    cpu = {s: {f: [] for f in fws} for s in args.sizes}  # process CPU time, context only
    errors = {}  # (size, fw) -> traceback text
    mismatches = []
    for size in args.sizes:
        sc = SCENARIOS[size]
        ref = None
        active = list(fws)
        for rnd in range(args.rounds + 1):  # round 0 = untimed warm-up
            half = len(active)  # --abba: positions before this are the forth half
            order = list(active) + (list(reversed(active)) if args.abba else [])
            summed = {}  # --abba: fw -> (wall, cpu) of its first run this round
            for pos, fw in enumerate(order):
                if fw not in active:
                    continue  # failed earlier in this round
                try:
                    dt, ct, cs = one_run(fw, frameworks, sc)
                except Exception:
                    tb = traceback.format_exc()
                    errors[(size, fw)] = tb
                    active.remove(fw)
                    print(f"[{size}] {fw} FAILED:\n{tb}", file=log)
                    continue
                if ref is None:
                    ref = cs
                elif not torch.equal(cs, ref):
                    diff = (cs - ref).abs().max().item() if cs.shape == ref.shape else float("nan")
                    mismatches.append(f"{size}: {fw} (round {rnd}) differs from hand, max |diff| {diff:.3g}")
                if args.abba and pos < half:
                    summed[fw] = (dt, ct)
                    continue
                if args.abba:
                    dt, ct = dt + summed[fw][0], ct + summed[fw][1]
                if rnd > 0:
                    times[size][fw].append(dt)
                    cpu[size][fw].append(ct)
            print(f"[{size}] {'warm-up' if rnd == 0 else f'round {rnd}/{args.rounds}'}: "
                  + ", ".join(f"{f} {times[size][f][-1] * 1e3:.0f} ms" for f in active
                              if rnd > 0 and times[size][f]), file=log)

    # ------------------------------------------------------------------ report
    extra = {
        "torch": torch.__version__,
        "ember": C.package_version("ember") if "ember" in frameworks else "not used",
        "lightning": C.package_version("lightning") if "lightning" in frameworks else "not used",
        "torch threads": torch.get_num_threads(),
        "rounds": f"{args.rounds} timed (+1 untimed warm-up), interleaved {' → '.join(fws)}"
                  + (f" → {' → '.join(reversed(fws))} (--abba: a framework's time is the sum of its two runs)"
                     if args.abba else ""),
        "output": "stdout/stderr → os.devnull during every timed run (progress bars still on)",
        "optimizer": f"SGD(lr={LR}, momentum={MOMENTUM}), MSE loss, seed {SEED}",
        "compiled": f"torch.compile(net, backend={COMPILE_BACKEND[0]!r}) in 'tiny compiled'",
    }
    lines = C.header_lines("Framework overhead vs hand-written PyTorch loop", extra)
    lines += [f"- note: {n}" for n in notes]
    if notes:
        lines.append("")

    def ratios(size, fw, ref="hand"):
        h, f = times[size].get(ref, []), times[size].get(fw, [])
        if not f or len(f) != len(h):
            return None
        return C.median([b / a for a, b in zip(h, f)]) if h else None

    rows = []
    for size in args.sizes:
        sc = SCENARIOS[size]
        re, rl = ratios(size, "ember"), ratios(size, "lightning")
        if "ember" not in fws:
            verdict = "n/a"
        elif (size, "ember") in errors:
            verdict = "ERROR"
        else:
            verdict = "n/a" if re is None or sc["target"] is None else ("PASS" if re <= sc["target"] else "MISS")
        target = "none yet" if sc["target"] is None else f"≤ {sc['target']:.2f}"
        row = [size, sc["steps"], fmt_ratio(re), target, verdict, fmt_ratio(rl)]
        if args.aa:
            aa = [b / a for a, b in zip(times[size][AA], times[size]["hand"])]
            row += [fmt_ratio(ratios(size, "hand", ref=AA)), f"{min(aa):.3f}–{max(aa):.3f}" if aa else "n/a"]
        rows.append(row)
    lines.append("Median over rounds of the per-round wall-time ratio framework/hand "
                 "(Trainer construction + fit vs optimizer construction + loop):")
    lines.append("")
    headers = ["scenario", "steps", "ember/hand", "target", "ember", "lightning/hand"]
    if args.aa:
        headers += ["A/A: hand/hand", "A/A min–max"]
    lines.append(C.md_table(headers, rows))
    lines.append("")
    if args.aa:
        lines.append("A/A is the same hand loop timed twice in a row in each round: on a quiet machine it reads "
                     "1.000 with a narrow min–max. How far it strays is this run's resolution; an ember/hand "
                     "ratio nearer its target than that is neither a pass nor a miss of this run.")
        lines.append("")

    ctx_rows = []
    for size in args.sizes:
        sc = SCENARIOS[size]
        med = {f: C.median(times[size][f]) for f in fws}
        row = [size]
        for f in ("hand", "ember", "lightning"):
            row.append(f"{med[f] * 1e3:.1f}" if f in med and times[size][f] else "n/a")
        for f in ("ember", "lightning"):
            if f in med and times[size][f]:
                row.append(f"{(med[f] - med['hand']) / sc['steps'] * 1e6:.0f}")
            else:
                row.append("n/a")
        rr = [b / a for a, b in zip(times[size]["hand"], times[size].get("ember", []))]
        row.append(f"{min(rr):.3f}–{max(rr):.3f}" if rr else "n/a")
        row.append("{:.3f}–{:.3f}".format(*C.median_interval(rr)) if len(rr) >= 3 else "n/a")
        # Ratio of best-of-N times, and median per-round ratio of process CPU time: both
        # less sensitive to other processes stealing the CPU than the wall-time median.
        for f in ("ember", "lightning"):
            ok = f in med and times[size][f] and len(times[size][f]) == len(times[size]["hand"])
            row.append(f"{min(times[size][f]) / min(times[size]['hand']):.3f}" if ok else "n/a")
        for f in ("ember", "lightning"):
            ok = f in med and cpu[size][f] and len(cpu[size][f]) == len(cpu[size]["hand"])
            row.append(f"{C.median([b / a for a, b in zip(cpu[size]['hand'], cpu[size][f])]):.3f}"
                       if ok else "n/a")
        ctx_rows.append(row)
    lines.append("Context only (not targets): median absolute wall times in ms, the implied "
                 "per-step overhead in µs, the spread of the per-round ember/hand ratio, a bootstrap 95 % "
                 "interval of its median, and the "
                 "ratios of the fastest runs (min/min) and the median per-round ratio of process CPU time "
                 "(both less sensitive to CPU contention from other processes):")
    lines.append("")
    lines.append(C.md_table(["scenario", "hand ms", "ember ms", "lightning ms", "ember µs/step",
                             "lightning µs/step", "ember/hand min–max", "ember/hand median, 95 % interval",
                             "ember min/min", "lightning min/min", "ember CPU ratio", "lightning CPU ratio"],
                            ctx_rows))
    lines.append("")
    if mismatches:
        lines.append("checksums: DIFFER")
        lines += [f"- {m}" for m in mismatches]
    else:
        lines.append("checksums: identical (final parameters bitwise equal across "
                     + ", ".join(fws) + " and all rounds, per scenario)")
    for (size, fw), tb in errors.items():
        lines += ["", f"ERROR in {fw} / {size}:", "```", tb.rstrip(), "```"]
    C.emit("\n".join(lines), args.out)
    return 1 if (mismatches or errors) else 0


if __name__ == "__main__":
    sys.exit(main())
