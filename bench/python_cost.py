"""What extra Python costs inside a training step: the hand loop with known work added, beside ember.

Callgrind counts ember's per-step work at +23k instructions on small's 3.1M-instruction step (~1 %), yet the
wall clock puts ember 4-5 points over the hand loop. This script calibrates that gap on the machine at hand.
It runs bench/overhead.py's model and data through the hand loop with one known piece added per variant, in a
shuffled order every round, beside ember with and without its finite-loss check:

- ``hand+finite``: ember's finite-loss check (``math.isfinite(loss.item())`` before the backward);
- ``hand+hot``: ``--hot`` iterations of plain interpreter work on two objects (20 iterations ≈ 20k instructions,
  about what ember adds to a small step);
- ``hand+scattered``: one attribute read from each of ``--objects`` objects allocated apart from each other
  (memory the step's tensor work has likely pushed out of the caches);
- ``hand+module``: the hand loop driving bench/overhead.py's own LightningModule (ember's class) with
  ``self.log`` made a no-op: ``loss = module.training_step(batch, batch_idx)`` over ``enumerate(loader)``. This
  is the user's code that every Lightning-API framework runs on this benchmark (``self.net`` through
  ``nn.Module.__getattr__``, the ``self.log`` call), at no cost of its own: a floor for any such framework;
- ``hand+module+finite``: the same plus ember's finite-loss check, the floor for a framework that checks;
- ``ember`` and ``ember-nocheck`` (the same Trainer with ``check_finite_loss`` off, patched as in bench/ab.py);
- ``ember-fused``: ember with its training epoch replaced, for this run only, by one function that does the plain
  step and the end of the batch inline (``fused_train_epoch`` below): the same calls into torch, the user's module
  and the bar, the same counters written, but no ``plain_step``, ``_step_outputs``, ``optimizer_stepped`` or
  ``end_of_batch`` frame. It is what merging the step path into one function, undoing the single end-of-batch
  path, would buy at most. ember's code is not changed.

    python bench/python_cost.py --size small --rounds 150
    python bench/python_cost.py --count hand+hot        # one untimed run, for callgrind:
    valgrind --tool=callgrind python bench/python_cost.py --count hand+hot   # minus the same with --count hand

Every variant trains the same weights except the ember ones' module (same arithmetic: the final weights are
compared bitwise with the hand loop's after every run).
"""
from __future__ import annotations

import argparse
import gc
import math
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

C.ensure_repo_on_path()

VARIANTS = ("hand", "hand+finite", "hand+hot", "hand+scattered", "hand+module", "hand+module+finite", "ember",
            "ember-nocheck", "ember-fused")


class _Slot:
    __slots__ = ("value", "other")


def scattered_objects(n: int) -> tuple[list, list]:
    """``n`` small objects with ~1 kB of other allocations between each two, so no two share a cache line."""
    spacers, objects = [], []
    for i in range(n):
        spacers.append([bytearray(200) for _ in range(5)])
        obj = _Slot()
        obj.value = i
        objects.append(obj)
    return objects, spacers


def hand_variant(name: str, sc: dict, hot_iterations: int, objects: list):
    import torch
    import torch.nn.functional as F
    import overhead as O

    net = O.make_net(sc["widths"])
    loader = O.make_loader(O.make_data(sc["widths"], sc["batch"], sc["steps"], 0), sc["batch"])
    isfinite, box, table = math.isfinite, _Slot(), {}
    box.value = box.other = 0

    def extra_hot() -> None:
        for i in range(hot_iterations):
            box.value = i
            table["k"] = i
            if box.other == i:
                box.other += 1

    def extra_scattered() -> None:
        total = 0
        for obj in objects:
            total += obj.value

    extra = {"hand+hot": extra_hot, "hand+scattered": extra_scattered}.get(name)
    check = name.endswith("+finite")
    if name.startswith("hand+module"):
        return module_loop(net, loader, check), net

    def timed() -> None:
        opt = torch.optim.SGD(net.parameters(), lr=O.LR, momentum=O.MOMENTUM)
        for x, y in loader:
            loss = F.mse_loss(net(x), y)
            if check and not isfinite(loss.item()):
                raise FloatingPointError("non-finite loss")
            opt.zero_grad()
            loss.backward()
            opt.step()
            if extra is not None:
                extra()

    return timed, net


def module_loop(net, loader, check: bool):
    """The hand loop around the benchmark's LightningModule, its ``self.log`` a no-op (see ``hand+module``)."""
    import torch
    import ember
    import overhead as O

    Regressor, _ = O.make_module_classes(ember)

    class UnloggedRegressor(Regressor):
        def log(self, *args, **kwargs) -> None:
            pass

    module, isfinite = UnloggedRegressor(net, 1), math.isfinite

    def timed() -> None:
        opt = torch.optim.SGD(module.parameters(), lr=O.LR, momentum=O.MOMENTUM)
        for batch_idx, batch in enumerate(loader):
            loss = module.training_step(batch, batch_idx)
            if check and not isfinite(loss.item()):
                raise FloatingPointError("non-finite loss")
            opt.zero_grad()
            loss.backward()
            opt.step()

    return timed


def fused_train_epoch(run) -> None:
    """ember.loop.train_epoch for a plain epoch, with the step and the end of each batch written inline.

    Only for bench/overhead.py's one-epoch scenarios without validation, loggers or batch hooks (it refuses
    anything else): the same torch calls, hooks and counter writes as ember's path, in one frame.
    """
    from ember import loop, step
    from ember.state import Position

    state, hooks, metrics, data = run.state, run.hooks, run.metrics, run.data
    metrics.enter("train", "epoch")
    hooks.call("on_train_epoch_start")
    metrics.enter("train", "batch")
    plan = run.plan = step.EpochPlan(run)
    if (plan.run_step is not step.plain_step or plan.on_batch_start or plan.on_batch_end or plan.later_phases
            or plan.move_batches or plan.wants_outputs or plan.accumulate != 1 or plan.step_schedulers
            or plan.epoch_schedulers or data.num_training_batches == math.inf):
        raise SystemExit("ember-fused: this scenario is not a plain epoch")
    training_step, zero_grad, backward, step_optimizer = (plan.training_step, plan.zero_grad, plan.backward,
                                                           plan.step_optimizer)
    check, paced_due, step_cap = plan.check_finite, plan.paced_due, plan.step_cap
    last_idx = data.num_training_batches - 1
    state.is_last_batch = state.epoch_reached_end = False
    isfinite = math.isfinite
    for batch_idx, batch in loop.open_epoch(run, plan):
        state.batch_idx = batch_idx
        is_last = state.is_last_batch = batch_idx == last_idx
        metrics.current_batch = batch
        loss = training_step(batch, batch_idx)
        if check and not isfinite(loss.item()):
            raise FloatingPointError("non-finite loss")
        zero_grad()
        backward(loss)
        step_optimizer()
        state.accumulated = 0
        state.global_step += 1
        plan.last_loss = loss
        if is_last:
            state.epoch_reached_end = True
        state.batches_seen_in_epoch = batch_idx + 1
        state.total_batches_run += 1
        state.batches_that_stepped += 1
        if batch_idx >= paced_due:
            plan.call_paced(None, batch, batch_idx)
            paced_due = plan.paced_due
        if (state.should_stop or state.global_step >= step_cap) and loop.stop_within_epoch(run):
            break
    state.position = Position.EPOCH_ENDED
    metrics.enter("train", "epoch")
    hooks.call("on_train_epoch_end")
    loop.write_train_epoch(run)


def ember_variant(name: str, sc: dict, frameworks: dict):
    import ab
    import overhead as O
    from ember import loop

    restore = None
    if name == "ember-nocheck":
        restore = ab.without("finite")
    elif name == "ember-fused":
        original = loop.train_epoch
        loop.train_epoch = fused_train_epoch

        def restore() -> None:
            loop.train_epoch = original
    timed, net = O.prepare_run("ember", frameworks, sc)

    def run() -> None:
        try:
            timed()
        finally:
            if restore is not None:
                restore()

    return run, net


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", default="small", help="a bench/overhead.py scenario without validation")
    p.add_argument("--rounds", type=int, default=100)
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma list of " + ", ".join(VARIANTS))
    p.add_argument("--hot", type=int, default=20, help="iterations of hand+hot's interpreter work per step")
    p.add_argument("--objects", type=int, default=300, help="objects hand+scattered reads per step")
    p.add_argument("--count", metavar="VARIANT", help="run VARIANT once, untimed (to count it under callgrind)")
    p.add_argument("--out", default=None, help="also write the markdown here")
    args = p.parse_args(argv)

    import torch
    import overhead as O

    torch.set_num_threads(1)
    sc = O.SCENARIOS[args.size]
    if sc["val_batches"] or sc["epochs"] != 1 or sc["metrics"] != 1:
        p.error(f"--size {args.size!r}: pick a one-epoch scenario without validation or extra metrics")
    variants = [args.count] if args.count else [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or "hand" not in variants and not args.count:
        p.error(f"variants must include hand and come from {VARIANTS}; got {variants}")
    objects, _spacers = scattered_objects(args.objects)
    frameworks = {}
    if any(v.startswith("ember") for v in variants):
        frameworks, notes = O.load_frameworks(["ember"])
        if notes:
            p.error("; ".join(notes))
    O.silence_frameworks()

    def build(name: str):
        if name.startswith("ember"):
            return ember_variant(name, sc, frameworks)
        return hand_variant(name, sc, args.hot, objects)

    if args.count:
        run, _ = build(args.count)
        run()  # warm-up: the count includes it, and the baseline run with --count hand does the same
        run, _ = build(args.count)
        run()
        return 0

    times = {v: [] for v in variants}
    reference = None
    rng = random.Random(0)
    for rnd in range(args.rounds + 1):  # round 0: untimed warm-up
        order = list(variants)
        rng.shuffle(order)
        for name in order:
            run, net = build(name)
            gc.collect()
            with C.quiet():
                t0 = time.perf_counter()
                run()
                elapsed = time.perf_counter() - t0
            weights = O.checksum(net)
            if reference is None:
                reference = weights
            elif not torch.equal(weights, reference):
                raise SystemExit(f"{name} trained different weights from the hand loop")
            if rnd:
                times[name].append(elapsed)
        print(f"round {rnd}/{args.rounds}", file=sys.stderr)

    steps = sc["steps"]
    hand = times["hand"]
    rows = []
    for name in variants:
        ratios = [t / h for t, h in zip(times[name], hand)]
        lo, hi = C.median_interval(ratios)
        extra_us = (C.median(times[name]) - C.median(hand)) / steps * 1e6
        rows.append([name, f"{C.median(ratios):.4f}", f"{lo:.4f}–{hi:.4f}", f"{C.median(times[name]) * 1e3:.1f}",
                     f"{extra_us:+.1f}"])
    lines = C.header_lines("Extra Python in a training step, against the hand loop",
                           {"scenario": f"{args.size} ({steps} steps)", "rounds": args.rounds,
                            "hand+hot": f"{args.hot} iterations", "hand+scattered": f"{args.objects} objects"})
    lines.append(C.md_table(["variant", "/ hand (median)", "95 % interval", "median ms", "µs a step over hand"],
                            rows))
    C.emit("\n".join(lines), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
