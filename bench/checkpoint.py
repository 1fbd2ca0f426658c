"""Checkpoint costs: save time and size, resume time, and the price of the default checkpointing.

Three measurements, each a median over interleaved rounds:

1. save (a 100M-parameter MLP, SGD without momentum so the optimizer holds
   no extra tensors): ember's ``trainer.save_checkpoint`` against plain
   ``torch.save(model.state_dict(), path)`` of the same tensors. ember's save
   is durable (fsync of the file and the directory, then an atomic rename),
   plain torch.save is not, so the table also shows torch.save followed by an
   fsync, and the ModelCheckpoint path (the training thread serialises; fsync
   and rename follow on ember's writer thread).
2. resume: wall time from starting ``python`` to the first training step of
   a run that resumes from a checkpoint (the small MLP), ember vs Lightning,
   each reading its own checkpoint written at an epoch end; ember also from a
   mid-epoch checkpoint (it skips the batches already trained on).
3. default checkpointing: the small benchmark model of bench/overhead.py
   (32-64-64-1 MLP, batch 64, 600 steps per epoch) trained with the default
   ModelCheckpoint (the latest checkpoint, every epoch) and without; the time
   spent inside the callback's hooks per epoch, as a share of the epoch.

    python bench/checkpoint.py                       # everything
    python bench/checkpoint.py --only save --rounds 3
    python bench/checkpoint.py --out bench/out/checkpoint.md
"""
from __future__ import annotations

import argparse
import gc
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

C.ensure_repo_on_path()

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

QUIET = dict(logger=False, enable_progress_bar=False, enable_model_summary=False)


def fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def user_cpu() -> float:
    """User-mode CPU seconds of the calling thread (kernel I/O time excluded)."""
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_THREAD).ru_utime
    except (ImportError, AttributeError, OSError):
        return time.thread_time()


# ------------------------------------------------------------------------------------- 1. save
def bench_save(rounds: int, workdir: str, params_m: int) -> tuple[list[list[str]], list[str]]:
    import ember as L
    from ember.checkpoint import durable_in_background, wait_for_writes

    width = 3162  # 10 layers of 3162 x 3162 (+ bias) = 100.0M parameters
    layers = max(1, round(params_m * 1e6 / (width * width + width)))

    class Big(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(*[nn.Linear(width, width) for _ in range(layers)])

        def training_step(self, batch, batch_idx):
            return self.body(batch[0]).pow(2).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.0)

    torch.manual_seed(0)
    model = Big()
    n_params = sum(p.numel() for p in model.parameters())
    trainer = L.Trainer(max_epochs=1, limit_train_batches=1, enable_checkpointing=False, default_root_dir=workdir,
                        **QUIET)
    with C.quiet():
        trainer.fit(model, DataLoader(TensorDataset(torch.randn(1, width)), batch_size=1))
    state = model.state_dict()

    variants = {
        "torch.save(model.state_dict())": lambda p: torch.save(state, p),
        "torch.save + fsync": lambda p: (torch.save(state, p), fsync_file(p)),
        "ember trainer.save_checkpoint (durable)": lambda p: trainer.save_checkpoint(p),
        "ember ModelCheckpoint (training thread)": None,  # filled below
    }

    def background(p):
        with durable_in_background():
            trainer.save_checkpoint(p)

    variants["ember ModelCheckpoint (training thread)"] = background
    # Paired measure: ember's save calls torch.save once; timing that call inside each ember save gives
    # ember's own overhead (dict, temp file, fsync, rename) free of the round-to-round noise of the write.
    inner: list[float] = []
    real_save = torch.save

    def timed_save(*args, **kwargs):
        start = time.perf_counter()
        try:
            return real_save(*args, **kwargs)
        finally:
            inner.append(time.perf_counter() - start)

    torch.save = timed_save  # restored below
    times: dict[str, list[tuple[float, float, float]]] = {k: [] for k in variants}  # (wall, user CPU, paired)
    sizes = {}
    names = list(variants)
    for rnd in range(rounds + 1):  # round 0: warm-up, untimed
        for name in names[rnd % len(names):] + names[:rnd % len(names)]:  # a different order each round
            path = os.path.join(workdir, f"save-{rnd}-{len(times[name])}.ckpt")
            os.sync()  # every variant starts with no dirty pages left by the previous one
            gc.collect()
            inner.clear()
            wall, cpu = time.perf_counter(), user_cpu()
            variants[name](path)
            wall, cpu = time.perf_counter() - wall, user_cpu() - cpu
            wait_for_writes()
            sizes[name] = os.path.getsize(path)
            os.remove(path)
            if rnd:
                times[name].append((wall, cpu, wall / inner[0] if inner else float("nan")))
    torch.save = real_save
    plain = "torch.save(model.state_dict())"

    def stat(name, i, fn):
        return fn([t[i] for t in times[name]])

    rows = []
    for name in variants:
        rows.append([name, f"{stat(name, 0, min):.3f}", f"{stat(name, 0, C.median):.3f}",
                     f"**{stat(name, 0, min) / stat(plain, 0, min):.2f}**",
                     f"{stat(name, 0, min) / stat('torch.save + fsync', 0, min):.2f}",
                     f"{stat(name, 1, C.median):.3f}", f"{stat(name, 1, C.median) / stat(plain, 1, C.median):.2f}",
                     f"**{stat(name, 2, C.median):.3f}**" if name.startswith("ember") else "",
                     f"{sizes[name] / 1e6:.1f}", f"{sizes[name] / sizes[plain]:.4f}"])
    notes = [f"model: {layers} x Linear({width}, {width}) = {n_params / 1e6:.1f}M parameters (fp32), SGD without "
             "momentum (no optimizer tensors), so every variant writes the same tensors",
             "paired: each ember save timed against the torch.save call inside it (same round, same disk state): "
             "what ember adds (checkpoint dict, temp file, fsync, rename) without the write's noise",
             "wall ratios use the fastest round of each (on a shared machine the kernel's page-cache work varies "
             "several-fold between rounds); user CPU is the saving thread's own work (serialising, CRC-32), "
             "which the kernel's I/O time does not blur",
             f"wall-time spread of plain torch.save over the rounds: {stat(plain, 0, min):.3f}-"
             f"{stat(plain, 0, max):.3f} s"]
    return rows, notes


# ------------------------------------------------------------------------------------- 2. resume
SMALL = r'''
import os, sys, time, warnings
warnings.filterwarnings("ignore")
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
framework = sys.argv[1]
if framework == "ember":
    import ember as L
else:
    import lightning as L
    import logging
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
torch.set_num_threads(1)


class Small(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))

    def training_step(self, batch, batch_idx):
        if os.environ.get("FIRST_STEP_EXIT"):
            print(f"FIRST_STEP {time.time():.6f}", flush=True)
            os._exit(0)
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        self.log("loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01, momentum=0.9)


g = torch.Generator().manual_seed(0)
x = torch.randn(600 * 64, 32, generator=g)
loader = DataLoader(TensorDataset(x, x[:, :1]), batch_size=64, shuffle=True)
mode, path = sys.argv[2], sys.argv[3]
if mode == "write":  # one epoch, then a checkpoint at its end and one in the middle of the next
    cb = L.pytorch.callbacks.ModelCheckpoint(dirpath=os.path.dirname(path), every_n_train_steps=900,
                                             save_top_k=-1, filename="mid")
    trainer = L.Trainer(max_epochs=2, limit_train_batches=600, callbacks=[cb], logger=False,
                        enable_progress_bar=False, enable_model_summary=False)
    model = Small()
    trainer.fit(model, loader)
    os.replace(os.path.join(os.path.dirname(path), "mid.ckpt"), path + ".mid")
    trainer = L.Trainer(max_epochs=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False)
    trainer.fit(Small(), loader)
    trainer.save_checkpoint(path)
else:
    trainer = L.Trainer(max_epochs=3, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False)
    trainer.fit(Small(), loader, ckpt_path=path)
'''


def bench_resume(rounds: int, workdir: str, frameworks: list[str]) -> tuple[list[list[str]], list[str]]:
    script = os.path.join(workdir, "small.py")
    with open(script, "w") as fh:
        fh.write(SMALL)
    env = dict(os.environ, PYTHONPATH=C.REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    ckpts = {}
    for fw in frameworks:
        ckpts[fw] = os.path.join(workdir, fw, "epoch_end.ckpt")
        os.makedirs(os.path.dirname(ckpts[fw]), exist_ok=True)
        subprocess.run([sys.executable, script, fw, "write", ckpts[fw]], check=True, env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600)
    cases = [("(floor)", "python -c 'import torch'", "")] + [(fw, "epoch end", ckpts[fw]) for fw in frameworks]
    if "ember" in frameworks:
        cases.append(("ember", "mid-epoch (skips 300 batches)", ckpts["ember"] + ".mid"))
    times: dict[tuple[str, str], list[float]] = {(fw, where): [] for fw, where, _ in cases}
    run_env = dict(env, FIRST_STEP_EXIT="1")
    for rnd in range(rounds + 1):
        for fw, where, path in cases:
            cmd = [sys.executable, script, fw, "resume", path] if path else \
                [sys.executable, "-c", "import time, torch; print('FIRST_STEP', time.time())"]
            start = time.time()
            out = subprocess.run(cmd, env=run_env, capture_output=True, text=True, timeout=600)
            line = [x for x in out.stdout.splitlines() if x.startswith("FIRST_STEP")]
            if not line:
                raise RuntimeError(f"{fw} resume run printed no first step:\n{out.stdout}\n{out.stderr}")
            if rnd:
                times[(fw, where)].append(float(line[0].split()[1]) - start)
    rows = []
    lightning_med = C.median(times[("lightning", "epoch end")]) if "lightning" in frameworks else None
    for fw, where, path in cases:
        med = C.median(times[(fw, where)])
        ratio = f"**{med / lightning_med:.2f}**" if lightning_med and path else ""
        rows.append([fw, where, f"{med:.2f}", ratio])
    import_note = ("start-up = python interpreter + imports + model, data and Trainer construction + loading the "
                   "checkpoint + the first batch")
    return rows, [import_note]


# ------------------------------------------------------------------------------------- 3. default checkpointing
def bench_default(rounds: int, workdir: str, epochs: int) -> tuple[list[list[str]], list[str]]:
    import ember as L
    from ember.callbacks import ModelCheckpoint

    class Small(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = nn.functional.mse_loss(self.net(x), y)
            self.log("loss", loss)
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01, momentum=0.9)

    spent: dict[str, list[float]] = {}  # hook -> [wall s, training-thread CPU s]

    class Timed(ModelCheckpoint):
        """The default callback, with a stopwatch around every hook that can write or wait."""

    for hook in ("setup", "on_fit_start", "on_train_start", "on_train_batch_end", "on_train_epoch_end",
                 "on_validation_end", "on_train_end", "teardown"):
        def make(name):
            inner = getattr(ModelCheckpoint, name)

            def wrapper(self, *args, **kwargs):
                wall, cpu = time.perf_counter(), time.thread_time()
                try:
                    return inner(self, *args, **kwargs)
                finally:
                    acc = spent.setdefault(name, [0.0, 0.0])
                    acc[0] += time.perf_counter() - wall
                    acc[1] += time.thread_time() - cpu
            return wrapper
        setattr(Timed, hook, make(hook))

    g = torch.Generator().manual_seed(0)
    x = torch.randn(600 * 64, 32, generator=g)
    loader = DataLoader(TensorDataset(x, torch.randn(600 * 64, 1, generator=g)), batch_size=64)
    fits = {"without checkpointing": [], "default checkpointing": []}  # [wall, training-thread CPU]
    per_epoch_hooks, end_waits = [], []
    for rnd in range(rounds + 1):
        for name in fits:
            root = tempfile.mkdtemp(dir=workdir)
            spent.clear()
            torch.manual_seed(0)
            model = Small()
            callbacks = [Timed()] if name == "default checkpointing" else None
            trainer = L.Trainer(max_epochs=epochs, default_root_dir=root, callbacks=callbacks,
                                enable_checkpointing=bool(callbacks), **QUIET)
            gc.collect()
            with C.quiet():
                wall, cpu = time.perf_counter(), time.thread_time()
                trainer.fit(model, loader)
                wall, cpu = time.perf_counter() - wall, time.thread_time() - cpu
            shutil.rmtree(root)
            if rnd:
                fits[name].append((wall, cpu))
                if callbacks:
                    end = [spent.get("on_train_end", [0, 0])[i] + spent.get("teardown", [0, 0])[i] for i in (0, 1)]
                    end_waits.append(end[0])
                    per_epoch_hooks.append([(sum(v[i] for v in spent.values()) - end[i]) / epochs for i in (0, 1)])
    rows = []
    for i, clock in enumerate(("wall clock", "training-thread CPU time")):
        epoch = C.median([f[i] for f in fits["without checkpointing"]]) / epochs
        hooks = C.median([h[i] for h in per_epoch_hooks])
        rows.append([clock, f"{epoch * 1e3:.1f} ms", f"{hooks * 1e3:.2f} ms", f"**{hooks / epoch * 100:.2f} %**"])
    base = C.median([f[0] for f in fits["without checkpointing"]])
    with_ckpt = C.median([f[0] for f in fits["default checkpointing"]])
    notes = [f"{epochs} epochs x 600 steps, batch 64, SGD momentum 0.9, logger and progress bar off, "
             f"{rounds} rounds; hooks = everything ModelCheckpoint does during the epochs (dump, serialise, "
             "bookkeeping); the fsync and rename of each file run on ember's writer thread meanwhile",
             f"once per fit, at its end: waiting for the last file to be on disk, {C.median(end_waits) * 1e3:.2f} ms",
             f"wall-clock difference of the fit medians (noisy on a shared machine): "
             f"{(with_ckpt - base) / base * 100:+.2f} %",
             "CPU time is immune to other processes on the machine; wall time is what a user waits"]
    return rows, notes


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", default="save,resume,default", help="comma list of: save, resume, default")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--params-m", type=int, default=100, help="size of the save benchmark model, in millions")
    p.add_argument("--epochs", type=int, default=5, help="epochs of the default-checkpointing run")
    p.add_argument("--frameworks", default="ember,lightning")
    p.add_argument("--out", default=None, help="also write the markdown here")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    only = {s.strip() for s in args.only.split(",")}
    frameworks = [f.strip() for f in args.frameworks.split(",") if f.strip()]
    if "lightning" in frameworks and "not importable" in C.package_version("lightning"):
        frameworks.remove("lightning")
    lines = C.header_lines("Checkpoint costs", {
        "torch": C.package_version("torch"), "ember": C.package_version("ember"),
        "lightning": C.package_version("lightning"), "rounds": f"{args.rounds} timed (+1 untimed warm-up)",
        "torch threads": "1"})
    workdir = tempfile.mkdtemp(prefix="ember-bench-ckpt-", dir=os.environ.get("EMBER_BENCH_DIR"))
    try:
        if "save" in only:
            print("save ...", file=sys.stderr)
            rows, notes = bench_save(args.rounds, workdir, args.params_m)
            lines += ["## 1. Save time and size (target: ember / torch.save <= 1.1)", ""]
            lines.append(C.md_table(["how", "min s", "median s", "min / torch.save", "min / torch.save+fsync",
                                     "user CPU s", "CPU / torch.save", "paired: total / its torch.save", "MB",
                                     "size / torch.save"], rows))
            lines += [""] + [f"- {n}" for n in notes] + [""]
        if "resume" in only:
            print("resume ...", file=sys.stderr)
            rows, notes = bench_resume(args.rounds, workdir, frameworks)
            lines += ["## 2. Resume: start-up to the first training step", ""]
            lines.append(C.md_table(["framework", "checkpoint", "median s", "/ lightning"], rows))
            lines += [""] + [f"- {n}" for n in notes] + [""]
        if "default" in only:
            print("default checkpointing ...", file=sys.stderr)
            rows, notes = bench_default(args.rounds, workdir, args.epochs)
            lines += ["## 3. Default checkpointing on the small model (target: < 1 % of the epoch)", ""]
            lines.append(C.md_table(["clock", "epoch, no checkpointing", "ModelCheckpoint per epoch", "cost"], rows))
            lines += [""] + [f"- {n}" for n in notes] + [""]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    C.emit("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
