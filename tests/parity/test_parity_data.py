"""Several loaders against Lightning 2.6.6: train loaders as a list, dict or CombinedLoader, eval loaders as a
list or dict, with the limits, overfit_batches and reloading that apply to each inner loader."""
from __future__ import annotations

import time
from datetime import timedelta

import pytest
import torch
from torch.utils.data import DataLoader

from parity_harness import assert_same_metrics, assert_same_run, data, first_difference, run_both, run_program


def _loss(module, batch):
    pairs = batch.values() if isinstance(batch, dict) else batch
    return sum(torch.nn.functional.mse_loss(module(p[0]), p[1]) for p in pairs if p is not None)


def _train_program(L, tmp_path, *, structure, mode=None, trainer=None, shuffle=True, val=None):
    """Two train loaders (20 and 12 samples, batches of 4: 5 and 3 batches) in ``structure``; each
    training_step records what it got, so the batches themselves are compared, not only the weights."""
    seen = []

    def train_dataloader(self):
        a = DataLoader(data(20, seed=2), batch_size=4, shuffle=shuffle)
        b = DataLoader(data(12, seed=3), batch_size=4, shuffle=shuffle)
        loaders = {"a": a, "b": b} if structure == "dict" else [a, b]
        return L.pytorch.utilities.CombinedLoader(loaders, mode) if mode else loaders

    def training_step(self, batch, batch_idx):
        flat = batch.values() if isinstance(batch, dict) else batch
        seen.append((type(batch).__name__, batch_idx,
                     tuple(None if p is None else p[0][:, 0].tolist() for p in flat)))
        loss = _loss(self, batch)
        self.log("train_loss", loss, on_step=True, on_epoch=True)
        return loss

    def on_validation_start(self):
        seen.append(("val", self.trainer.global_step))

    hooks = dict(train_dataloader=train_dataloader, training_step=training_step, on_validation_start=on_validation_start)
    if val is not None:
        hooks["val_dataloader"] = val
    out = run_program(L, tmp_path, model=hooks, trainer={"max_epochs": 2, **(trainer or {})})
    t = out.pop("trainer")
    out.update(seen=seen, num_training_batches=t.num_training_batches, train_dataloader=type(t.train_dataloader).__name__)
    return out


CASES = {
    "list": dict(structure="list"),
    "dict": dict(structure="dict"),
    "combined_min_size": dict(structure="dict", mode="min_size"),
    "combined_max_size": dict(structure="list", mode="max_size"),
    "combined_max_size_cycle": dict(structure="dict", mode="max_size_cycle"),
    "limit_int": dict(structure="dict", trainer=dict(limit_train_batches=4)),
    "limit_fraction": dict(structure="list", trainer=dict(limit_train_batches=0.5)),
    "overfit": dict(structure="dict", trainer=dict(overfit_batches=2)),
    "reload": dict(structure="list", trainer=dict(reload_dataloaders_every_n_epochs=1, max_epochs=3)),
    "val_interval": dict(structure="dict", trainer=dict(val_check_interval=2, accumulate_grad_batches=2)),
}
STEPS = {"list": 10, "dict": 10, "combined_min_size": 6, "combined_max_size": 10, "combined_max_size_cycle": 10,
         "limit_int": 8, "limit_fraction": 4, "overfit": 4, "reload": 15, "val_interval": 6}


@pytest.mark.parametrize("case", sorted(CASES))
def test_several_train_loaders_match_lightning(tmp_path, case):
    a, b = run_both(_train_program, tmp_path=tmp_path, **CASES[case])
    assert a["seen"] == b["seen"], first_difference(a["seen"], b["seen"])
    assert_same_run(a, b)
    assert b["global_step"] == STEPS[case]
    assert a["num_training_batches"] == b["num_training_batches"]
    assert a["train_dataloader"] == b["train_dataloader"]  # trainer.train_dataloader is the list/dict given


def test_max_size_cycle_starts_the_short_loader_again(tmp_path):
    _, b = run_both(_train_program, tmp_path=tmp_path, structure="list", shuffle=False)
    batches = [s for s in b["seen"] if s[0] == "list"][:5]
    # loader b has 3 batches; the 4th and 5th steps read its first two again
    assert [s[2][1] for s in batches[3:5]] == [s[2][1] for s in batches[0:2]]
    assert [s[1] for s in batches] == [0, 1, 2, 3, 4]


def _eval_program(L, tmp_path, *, structure, stage, limit=None):
    def loaders(self):
        made = [DataLoader(data(8 + 4 * i, seed=11 + i), batch_size=4) for i in range(3)]
        return dict(zip(("x", "y", "z"), made)) if structure == "dict" else made

    seen = []

    def step(self, batch, batch_idx, dataloader_idx=0):
        seen.append((batch_idx, dataloader_idx))
        self.log("loss", torch.nn.functional.mse_loss(self(batch[0]), batch[1]))

    def predict_step(self, batch, batch_idx, dataloader_idx=0):
        seen.append((batch_idx, dataloader_idx))
        return self(batch[0])

    name = {"validate": "val", "test": "test", "predict": "predict"}[stage]
    hooks = {f"{name}_dataloader": loaders, "validation_step": step, "test_step": step, "predict_step": predict_step}
    trainer = {f"limit_{name}_batches": limit} if limit is not None else {}
    out = run_program(L, tmp_path, model=hooks, stage=stage, trainer=trainer)
    t = out.pop("trainer")
    shown = getattr(t, f"{name}_dataloaders" if stage != "validate" else "val_dataloaders")
    out.update(seen=seen, shown=type(shown).__name__, shown_keys=sorted(shown) if isinstance(shown, dict) else None)
    return out


@pytest.mark.parametrize("structure", ["list", "dict"])
@pytest.mark.parametrize("stage", ["validate", "test"])
def test_several_eval_loaders_as_list_or_dict_match_lightning(tmp_path, structure, stage):
    a, b = run_both(_eval_program, tmp_path=tmp_path, structure=structure, stage=stage, limit=2)
    assert a["seen"] == b["seen"] == [(0, 0), (1, 0), (0, 1), (1, 1), (0, 2), (1, 2)]
    assert_same_run(a, b)
    # one dict per loader, each with its /dataloader_idx_N key
    assert len(a["returned"]) == len(b["returned"]) == 3
    for i, (ra, rb) in enumerate(zip(a["returned"], b["returned"])):
        assert sorted(rb) == [f"loss/dataloader_idx_{i}"]
        assert_same_metrics(ra, rb)
    assert a["shown"] == b["shown"] and a["shown_keys"] == b["shown_keys"]


@pytest.mark.parametrize("structure", ["list", "dict"])
def test_several_predict_loaders_as_list_or_dict_match_lightning(tmp_path, structure):
    a, b = run_both(_eval_program, tmp_path=tmp_path, structure=structure, stage="predict")
    assert a["seen"] == b["seen"] and len(b["seen"]) == 2 + 3 + 4
    assert [len(p) for p in a["returned"]] == [len(p) for p in b["returned"]] == [2, 3, 4]
    for pa, pb in zip(a["returned"], b["returned"]):
        for xa, xb in zip(pa, pb):
            assert torch.equal(xa, xb)
    assert a["shown"] == b["shown"]


def test_dict_of_val_loaders_inside_fit_matches_lightning(tmp_path):
    def val(self):
        return {"p": DataLoader(data(8, seed=21), batch_size=4), "q": DataLoader(data(4, seed=22), batch_size=4)}

    a, b = run_both(_train_program, tmp_path=tmp_path, structure="dict", val=val,
                    trainer=dict(val_check_interval=0.5))
    assert a["seen"] == b["seen"]
    assert_same_run(a, b)
    assert [s[1] for s in b["seen"] if s[0] == "val"] == [0, 2, 4, 7, 9]  # sanity check, then at batches 2 and 4 of each epoch
    assert "val_loss/dataloader_idx_1" in b["callback_metrics"]


# --------------------------------------------------------------------------- time-based val_check_interval
def _timed_program(L, tmp_path, *, interval, clock, trainer=None):
    """Each training step takes one second on a fake clock (both frameworks read ``time.monotonic``)."""
    val_steps = []
    clock[0] = 1000.0

    def training_step(self, batch, batch_idx):
        clock[0] += 1.0
        loss = torch.nn.functional.mse_loss(self(batch[0]), batch[1])
        self.log("train_loss", loss)
        return loss

    def on_validation_start(self):
        val_steps.append((self.trainer.global_step, self.trainer.sanity_checking))

    hooks = dict(training_step=training_step, on_validation_start=on_validation_start, n_train=20)
    out = run_program(L, tmp_path, model=hooks,
                      trainer={"max_epochs": 3, "val_check_interval": interval, **(trainer or {})})
    out.update(val_steps=val_steps, val_check_batch=out.pop("trainer").val_check_batch)
    return out


TIMED = {  # 5 batches an epoch, one second each
    "timedelta": (dict(interval=timedelta(seconds=2.5)), [3, 6, 9, 12, 15]),
    "string": (dict(interval="00:00:00:03"), [3, 6, 9, 12, 15]),
    "dict_every_2nd_epoch": (dict(interval={"seconds": 4}, trainer=dict(check_val_every_n_epoch=2)), [6, 10]),
    "dict_across_epochs": (dict(interval={"seconds": 4}, trainer=dict(check_val_every_n_epoch=None)), [4, 8, 12]),
    # the clock restarts when the train loader is reloaded
    "reload": (dict(interval=timedelta(seconds=3), trainer=dict(reload_dataloaders_every_n_epochs=1)), [3, 8, 13]),
}


@pytest.mark.parametrize("case", sorted(TIMED))
def test_time_based_val_check_interval_matches_lightning(tmp_path, monkeypatch, case):
    clock = [0.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    kw, expected = TIMED[case]
    a, b = run_both(_timed_program, tmp_path=tmp_path, clock=clock, **kw)
    assert a["val_steps"] == b["val_steps"] == [(0, True)] + [(s, False) for s in expected]
    assert a["val_check_batch"] is b["val_check_batch"] is None
    assert_same_run(a, b)
    assert b["global_step"] == 15


@pytest.mark.parametrize("bad", ["1:2:3", "aa:00:00:01", {"secs": 1}])
def test_malformed_time_interval_is_refused_with_the_value(bad):
    import ember

    with pytest.raises(ValueError, match=r"val_check_interval=.*(DD:HH:MM:SS|secs)"):
        ember.Trainer(val_check_interval=bad)


# --------------------------------------------------------------------------- training_step(self, dataloader_iter)
def _iter_program(L, tmp_path, *, take, trainer=None, plain=False):
    """A training_step that pulls ``take`` batches from ``dataloader_iter`` and trains on the last one
    (20 samples in batches of 4: 5 batches an epoch). The hooks are recorded, training_step is not (the
    recorder's ``*args`` would hide the ``dataloader_iter`` parameter that both frameworks look for)."""
    from parity_harness import boring_class, quiet, recording, recording_callback, weights

    seen, calls = [], []

    def loss_of(self, batch):
        loss = torch.nn.functional.mse_loss(self(batch[0]), batch[1])
        self.log("train_loss", loss, on_step=True, on_epoch=True, batch_size=4)
        return loss

    def training_step(self, dataloader_iter):
        for _ in range(take):
            batch, batch_idx, dataloader_idx = next(dataloader_iter)
            seen.append((batch_idx, dataloader_idx, self.trainer.global_step))
        return loss_of(self, batch)

    def plain_step(self, batch, batch_idx):
        return loss_of(self, batch)

    def configure(self):
        opt = torch.optim.SGD(self.parameters(), lr=0.1)
        return [opt], [torch.optim.lr_scheduler.StepLR(opt, 1, 0.5)]  # an epoch scheduler

    def on_validation_start(self):
        seen.append(("val", self.trainer.global_step))

    cls = recording(boring_class(L, configure=configure, n_train=20, on_validation_start=on_validation_start), calls)
    module = type("IterModule", (cls,), {"training_step": plain_step if plain else training_step})()
    t = L.Trainer(**quiet(tmp_path, max_epochs=2, callbacks=[recording_callback(L, calls)], **(trainer or {})))
    t.fit(module)
    return dict(seen=seen, calls=calls, lr=t.optimizers[0].param_groups[0]["lr"], global_step=t.global_step,
                weights=weights(module), callback_metrics={k: float(v) for k, v in t.callback_metrics.items()})


ITER_CASES = {  # take, trainer, global steps, validations (global steps), lr after 2 epochs
    "one_batch_a_step": (1, {}, 10, [0, 5, 10], 0.025),
    # 5 batches, 2 a step: the third step asks for a 6th batch, which ends the epoch inside the step:
    # no optimizer step, no on_train_batch_end, no end-of-epoch validation or epoch scheduler step.
    "two_batches_a_step": (2, {}, 4, [0], 0.1),
    "three_batches_a_step": (3, {}, 2, [0], 0.1),
    "val_every_2_steps": (2, dict(val_check_interval=2), 4, [0, 2, 4], 0.1),
}


@pytest.mark.parametrize("case", sorted(ITER_CASES))
def test_dataloader_iter_training_step_matches_lightning(tmp_path, case):
    take, trainer, steps, val_steps, lr = ITER_CASES[case]
    a, b = run_both(_iter_program, tmp_path=tmp_path, take=take, trainer=trainer)
    assert a["calls"] == b["calls"], first_difference(a["calls"], b["calls"])
    assert a["seen"] == b["seen"]
    assert a["global_step"] == b["global_step"] == steps
    assert [s[1] for s in b["seen"] if s[0] == "val"] == val_steps
    assert a["lr"] == b["lr"] == pytest.approx(lr)
    for k in a["weights"]:
        assert torch.equal(a["weights"][k], b["weights"][k]), k
    assert_same_metrics(a["callback_metrics"], b["callback_metrics"])
    # on_train_batch_start gets the batch fetched last: (None, 0) when an epoch starts
    starts = [c[1] for c in b["calls"] if c[0] == "cb.on_train_batch_start"]
    assert starts[0] == (None, 0)


def test_dataloader_iter_with_accumulation_keeps_the_window_unlike_lightning(tmp_path):
    # Lightning decides zero_grad from the index of the batch fetched *before* the step, one behind, so in
    # this form it zeroes the gradients at the second step of each window and throws the first step's away.
    # ember counts the window itself: the result is that of the plain training_step(batch, batch_idx).
    kw = dict(take=1, trainer=dict(accumulate_grad_batches=2))
    a, b = run_both(_iter_program, tmp_path=tmp_path, **kw)
    plain = _iter_program(ember_module(), tmp_path, plain=True, **kw)
    assert a["global_step"] == b["global_step"] == plain["global_step"] == 6
    for k in b["weights"]:
        assert torch.equal(b["weights"][k], plain["weights"][k]), k
    assert any(not torch.equal(a["weights"][k], b["weights"][k]) for k in a["weights"])

    def zero_grads(calls):  # (steps taken before) at each optimizer_zero_grad in the first epoch
        step, out = 0, []
        for c in calls:
            if c[0] == "cb.on_train_batch_start":
                step += 1
            if c[0] == "m.optimizer_zero_grad" and c[2][4] == 0:
                out.append(step)
        return out

    assert zero_grads(b["calls"]) == [1, 3, 5]  # the first step of each window (of 2, the last one short)
    # Lightning: steps 1 and 2 (both see batch index 0 as "the batch fetched last"), then step 4
    assert zero_grads(a["calls"]) == [1, 2, 4]


def ember_module():
    import ember

    return ember


def test_dataloader_iter_needs_batch_size_for_epoch_means(tmp_path):
    import ember as L

    class Model(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(3, 1)

        def training_step(self, dataloader_iter):
            x, y = next(dataloader_iter)[0]
            loss = torch.nn.functional.mse_loss(self.layer(x), y)
            self.log("loss", loss, on_epoch=True)
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    trainer = L.Trainer(max_epochs=1, logger=False, enable_progress_bar=False, enable_checkpointing=False,
                        enable_model_summary=False, default_root_dir=str(tmp_path))
    with pytest.raises(ValueError, match="batch_size=N"):
        trainer.fit(Model(), DataLoader(data(8), batch_size=4))


# --------------------------------------------------------------------------- CombinedLoader itself
@pytest.mark.parametrize("mode", ["min_size", "max_size_cycle", "max_size", "sequential"])
def test_combined_loader_yields_what_lightnings_does(mode):
    from parity_harness import FRAMEWORKS

    a, b = [0, 1, 2, 3, 4], [10, 11, 12]
    structures = ({"a": a, "b": b}, [a, b], (a, b), {"x": [a, b], "y": b})
    out = {}
    for name, L in FRAMEWORKS.items():
        combined_cls = L.pytorch.utilities.combined_loader.CombinedLoader
        rows = []
        for iterables in structures:
            combined = combined_cls(iterables, mode)
            iter(combined)  # Lightning's len() needs an iterator first
            rows.append((len(combined), list(combined), combined.flattened, combined.sampler))
        limited = combined_cls([a, b], mode)
        limited.limits = [2, 1]
        iter(limited)
        rows.append(len(limited))
        out[name] = rows
    assert out["lightning"] == out["ember"]
    assert out["ember"][0][0] == {"min_size": 3, "max_size_cycle": 5, "max_size": 5, "sequential": 8}[mode]


def _zipped_eval_program(L, tmp_path):
    seen = []

    def val_dataloader(self):
        return L.pytorch.utilities.CombinedLoader(
            {"p": DataLoader(data(12, seed=31), batch_size=4), "q": DataLoader(data(8, seed=32), batch_size=4)},
            "min_size")

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        seen.append((sorted(batch), batch_idx, dataloader_idx))
        self.log("val_loss", _loss(self, batch))

    out = run_program(L, tmp_path, stage="validate",
                      model=dict(val_dataloader=val_dataloader, validation_step=validation_step))
    out.pop("trainer")
    out["seen"] = seen
    return out


def test_a_zipping_combined_loader_validates_as_one_loader_like_lightning(tmp_path):
    a, b = run_both(_zipped_eval_program, tmp_path=tmp_path)
    assert a["seen"] == b["seen"] == [(["p", "q"], 0, 0), (["p", "q"], 1, 0)]
    assert_same_run(a, b)
    assert len(b["returned"]) == 1 and sorted(b["returned"][0]) == ["val_loss"]


def _timed_checkpoint_program(L, tmp_path, *, clock):
    import os

    ckpt_dir = tmp_path / ("ckpt_" + L.__name__)
    callbacks = lambda L: [L.pytorch.callbacks.ModelCheckpoint(dirpath=str(ckpt_dir), save_top_k=-1,  # noqa: E731
                                                               filename="{epoch}-{step}")]
    out = _timed_program_with(L, tmp_path, clock=clock, callbacks=callbacks)
    out["files"] = sorted(os.listdir(ckpt_dir))
    return out


def _timed_program_with(L, tmp_path, *, clock, callbacks):
    clock[0] = 1000.0

    def training_step(self, batch, batch_idx):
        clock[0] += 1.0
        return torch.nn.functional.mse_loss(self(batch[0]), batch[1])

    out = run_program(L, tmp_path, model=dict(training_step=training_step, n_train=20), callbacks=callbacks,
                      trainer=dict(max_epochs=2, val_check_interval=timedelta(seconds=4), enable_checkpointing=True))
    out.pop("trainer")
    return out


def test_time_based_validation_moves_checkpoints_to_validation_end_like_lightning(tmp_path, monkeypatch):
    # With a time-based interval ModelCheckpoint saves after each validation, not at the epoch's end.
    clock = [0.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    a, b = run_both(_timed_checkpoint_program, tmp_path=tmp_path, clock=clock)
    assert a["files"] == b["files"] == ["epoch=0-step=4.ckpt", "epoch=1-step=8.ckpt"]
    assert_same_run(a, b)


def _timed_checkpoint_no_val(L, tmp_path, *, clock):
    import os

    ckpt_dir = tmp_path / ("noval_" + L.__name__)
    clock[0] = 1000.0
    cb = L.pytorch.callbacks.ModelCheckpoint(dirpath=str(ckpt_dir), save_top_k=-1, filename="{epoch}-{step}")
    t = L.Trainer(**quiet_kw(tmp_path, max_epochs=2, val_check_interval=timedelta(seconds=4), limit_val_batches=0,
                             enable_checkpointing=True, callbacks=[cb]))
    t.fit(boring_model(L)())
    return sorted(os.listdir(ckpt_dir)) if ckpt_dir.exists() else []


def quiet_kw(tmp_path, **kw):
    from parity_harness import quiet

    return quiet(tmp_path, **kw)


def boring_model(L):
    from parity_harness import boring_class

    return boring_class(L, n_train=20)


def test_time_based_validation_without_val_data_still_checkpoints_unlike_lightning(tmp_path, monkeypatch):
    # Lightning defers every save to a validation end, which never comes without val data: no checkpoint at
    # all. ember saves at each epoch's end then, as it does for any run without validation.
    clock = [0.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    a, b = run_both(_timed_checkpoint_no_val, tmp_path=tmp_path, clock=clock)
    assert a == []
    assert b == ["epoch=0-step=5.ckpt", "epoch=1-step=10.ckpt"]


def _iter_manual_program(L, tmp_path):
    from parity_harness import boring_class, quiet, recording, recording_callback, weights

    calls = []

    class Manual(recording(boring_class(L, n_train=20), calls)):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = False

        def training_step(self, dataloader_iter):
            opt = self.optimizers()
            batch, _, _ = next(dataloader_iter)
            loss = torch.nn.functional.mse_loss(self(batch[0]), batch[1])
            opt.zero_grad()
            self.manual_backward(loss)
            opt.step()
            self.log("train_loss", loss, batch_size=4)

    module = Manual()
    t = L.Trainer(**quiet(tmp_path, max_epochs=2, callbacks=[recording_callback(L, calls)]))
    t.fit(module)
    return dict(calls=calls, global_step=t.global_step, weights=weights(module),
                callback_metrics={k: float(v) for k, v in t.callback_metrics.items()})


def test_dataloader_iter_with_manual_optimization_matches_lightning(tmp_path):
    a, b = run_both(_iter_manual_program, tmp_path=tmp_path)
    assert a["calls"] == b["calls"], first_difference(a["calls"], b["calls"])
    assert a["global_step"] == b["global_step"] == 10
    for k in a["weights"]:
        assert torch.equal(a["weights"][k], b["weights"][k]), k
    assert_same_metrics(a["callback_metrics"], b["callback_metrics"])
