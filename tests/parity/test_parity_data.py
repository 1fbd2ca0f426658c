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
