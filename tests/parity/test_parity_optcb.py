"""Optimisation callbacks against Lightning 2.6.6: accumulation schedules, weight averaging, the batch-size
finder and OnExceptionCheckpoint."""
from __future__ import annotations

import os

import pytest
import torch
from parity_harness import assert_same_run, boring_class, quiet, run_both, run_program


def _step_lr(module):
    opt = torch.optim.SGD(module.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


@pytest.mark.parametrize("scheduling,n_train,expected_steps", [
    ({1: 2, 2: 4}, 24, 6 + 3 + 2 + 2),  # 6 batches an epoch; the 4-window closes early at each epoch's end
    ({0: 3}, 20, 4 * 2),  # 5 batches: a window of 3, then the epoch's last 2
], ids=["growing", "from-epoch-0"])
def test_accumulation_schedule_trains_like_lightning(tmp_path, scheduling, n_train, expected_steps):
    def callbacks(L):
        return [L.pytorch.callbacks.GradientAccumulationScheduler(scheduling=dict(scheduling))]

    a, b = run_both(run_program, tmp_path=tmp_path, model=dict(configure=_step_lr, n_train=n_train),
                    callbacks=callbacks, trainer=dict(max_epochs=4))
    assert_same_run(a, b)
    assert b["global_step"] == expected_steps
    # The step scheduler stepped once per optimizer step in both.
    lrs = [r["trainer"].optimizers[0].param_groups[0]["lr"] for r in (a, b)]
    assert lrs[0] == lrs[1] == 0.1 * 0.5 ** (expected_steps // 2)
    assert [r["trainer"].accumulate_grad_batches for r in (a, b)] == [max(scheduling.values())] * 2


@pytest.mark.parametrize("scheduling,error", [
    ({}, TypeError), ({-1: 2}, Exception), ({0: 0}, Exception), ({"1": 2}, Exception)])
def test_accumulation_schedule_refuses_what_lightning_refuses(scheduling, error):
    import lightning
    import ember

    for L in (lightning, ember):
        with pytest.raises(error):
            L.pytorch.callbacks.GradientAccumulationScheduler(scheduling=scheduling)


@pytest.mark.parametrize("case", ["trainer-accumulates", "manual"])
def test_accumulation_schedule_conflicts_fail_in_both(tmp_path, case):
    def program(L, tmp_path):
        hooks = {}
        kw = {}
        if case == "manual":
            def __init__(self):
                L.LightningModule.__init__(self)
                torch.manual_seed(0)
                self.layer = torch.nn.Linear(3, 1)
                self.automatic_optimization = False
            hooks["__init__"] = __init__
        else:
            kw["accumulate_grad_batches"] = 2
        m = boring_class(L, **hooks)()
        t = L.Trainer(**quiet(tmp_path, max_epochs=1, callbacks=[
            L.pytorch.callbacks.GradientAccumulationScheduler({1: 2})], **kw))
        try:
            t.fit(m)
        except (RuntimeError, ValueError) as exc:
            return type(exc).__name__
        return None

    a, b = run_both(program, tmp_path=tmp_path)
    assert a == b == ("RuntimeError" if case == "manual" else "ValueError")


class Boom(RuntimeError):
    pass


def _failing_program(L, tmp_path, fail_at=(1, 2), interrupt=False):
    """Fit 3 epochs of 4 batches; training_step raises at (epoch, batch_idx). Returns what the file holds."""
    def training_step(self, batch, batch_idx):
        if (self.current_epoch, batch_idx) == fail_at:
            raise KeyboardInterrupt if interrupt else Boom("data went bad")
        x, y = batch
        return torch.nn.functional.mse_loss(self(x), y)

    m = boring_class(L, training_step=training_step)()
    cb = L.pytorch.callbacks.OnExceptionCheckpoint(dirpath=str(tmp_path / L.__name__))
    t = L.Trainer(**quiet(tmp_path, max_epochs=3, callbacks=[cb], enable_checkpointing=True))
    assert t.checkpoint_callbacks == [cb]  # a Checkpoint: the default ModelCheckpoint is not added (Lightning)
    try:
        t.fit(m)
    except (Boom, KeyboardInterrupt, SystemExit):
        pass
    ckpt = torch.load(cb.ckpt_path, weights_only=False)
    return {"path": cb.ckpt_path, "epoch": ckpt["epoch"], "global_step": ckpt["global_step"],
            "weights": {k: v.clone() for k, v in ckpt["state_dict"].items()}, "callbacks": sorted(ckpt["callbacks"])}


@pytest.mark.parametrize("interrupt", [False, True], ids=["error", "ctrl-c"])
def test_on_exception_checkpoint_holds_what_lightnings_holds(tmp_path, interrupt):
    a, b = run_both(_failing_program, tmp_path=tmp_path, interrupt=interrupt)
    assert (a["epoch"], a["global_step"]) == (b["epoch"], b["global_step"]) == (1, 6)
    assert a["weights"].keys() == b["weights"].keys()
    for k in a["weights"]:
        assert torch.equal(a["weights"][k], b["weights"][k]), k
    assert a["path"].endswith("lightning/on_exception.ckpt") and b["path"].endswith("ember/on_exception.ckpt")


def test_the_exception_checkpoint_resumes_to_the_straight_result(tmp_path):
    import ember

    failed = _failing_program(ember, tmp_path)
    straight = run_program(ember, tmp_path, trainer=dict(max_epochs=3), record=False)
    # The fixed program resumes from the file: the failed batch runs again, and the end is the straight run's.
    resumed = run_program(ember, tmp_path, trainer=dict(max_epochs=3), record=False,
                          stage_kw=dict(ckpt_path=failed["path"]))
    assert resumed["global_step"] == straight["global_step"] == 12
    for k, v in straight["weights"].items():
        assert torch.equal(v, resumed["weights"][k]), k


def test_running_the_failed_script_again_resumes_from_the_exception_checkpoint(tmp_path):
    """fit(ckpt_path=None) with an OnExceptionCheckpoint means "last", and its file is a candidate (Lightning's
    rule); the run that then ends well removes the file."""
    def program(L, tmp_path):
        failed = _failing_program(L, tmp_path)
        cb = L.pytorch.callbacks.OnExceptionCheckpoint(dirpath=str(tmp_path / L.__name__))
        seen = []

        def on_train_batch_start(self, batch, batch_idx):
            seen.append((self.current_epoch, batch_idx, self.global_step, batch[0][0, 0].item()))

        m = boring_class(L, on_train_batch_start=on_train_batch_start)()
        t = L.Trainer(**quiet(tmp_path, max_epochs=3, callbacks=[cb], enable_checkpointing=True))
        t.fit(m)
        return {"seen": seen, "ckpt_path": t.ckpt_path == failed["path"], "global_step": t.global_step,
                "weights": {k: v.clone() for k, v in m.state_dict().items()}, "left": os.path.exists(cb.ckpt_path)}

    import ember

    a, b = run_both(program, tmp_path=tmp_path)
    assert [s[:3] for s in a["seen"]] == [s[:3] for s in b["seen"]] == [
        (1, 2, 6), (1, 3, 7), (2, 0, 8), (2, 1, 9), (2, 2, 10), (2, 3, 11)]
    assert a["ckpt_path"] and b["ckpt_path"]
    assert a["global_step"] == b["global_step"] == 12
    assert not a["left"] and not b["left"]
    # Where they part, on purpose: Lightning restarts a plain DataLoader from its first batch and trains it in
    # the place of batch 2 (its mid-epoch resume is exact only with a stateful loader); ember skips the batches
    # already trained, so the resumed run ends where the run that never failed ends.
    first_rows = [x[0, 0].item() for x, _ in boring_class(ember)().train_dataloader()]
    assert a["seen"][0][3] == first_rows[0] and b["seen"][0][3] == first_rows[2]
    straight = run_program(ember, tmp_path, trainer=dict(max_epochs=3), record=False)
    assert all(torch.equal(straight["weights"][k], b["weights"][k]) for k in b["weights"])
    assert not all(torch.equal(a["weights"][k], b["weights"][k]) for k in b["weights"])


def test_on_exception_checkpoint_refuses_an_empty_filename():
    import lightning
    import ember

    for L in (lightning, ember):
        with pytest.raises(ValueError):
            L.pytorch.callbacks.OnExceptionCheckpoint(".", filename="")


# --------------------------------------------------------------------------- batch-size finder
def _oom_program(L, tmp_path, limit, call="tuner", **search):
    """A model that "runs out of memory" (torch.OutOfMemoryError, as CUDA raises it) above ``limit`` rows."""
    from torch.utils.data import DataLoader
    from parity_harness import data

    tried = []

    class Sized(boring_class(L)):
        def __init__(self):
            super().__init__()
            self.batch_size = 2

        def training_step(self, batch, batch_idx):
            if batch_idx == 0:
                tried.append(batch[0].shape[0])  # the size that really ran
            if batch[0].shape[0] > limit:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
            return super().training_step(batch, batch_idx)

        def train_dataloader(self):
            return DataLoader(data(256), batch_size=self.batch_size)

    model = Sized()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    t = L.Trainer(**quiet(tmp_path, max_epochs=1))
    found = L.pytorch.tuner.Tuner(t).scale_batch_size(model, **search)
    return {"found": found, "tried": tried, "attr": model.batch_size, "global_step": t.global_step,
            "restored": all(torch.equal(before[k], v) for k, v in model.state_dict().items()),
            "fits": found is not None and found <= limit}


@pytest.mark.parametrize("mode,limit,search,tried,found", [
    ("power", 40, {}, [2, 4, 8, 16, 32, 64], 32),
    ("binsearch", 40, dict(margin=0.0), [2, 4, 8, 16, 32, 64, 48, 40, 44, 42, 41], 40),
    ("power", 40, dict(max_trials=3), [2, 4, 8], 8),
], ids=["power", "binsearch", "max-trials"])
def test_batch_size_search_tries_and_finds_what_lightning_does(tmp_path, mode, limit, search, tried, found):
    a, b = run_both(_oom_program, tmp_path=tmp_path, limit=limit, mode=mode, **search)
    assert a["tried"] == b["tried"] == tried
    assert a["found"] == b["found"] == a["attr"] == b["attr"] == found
    assert a["restored"] and b["restored"] and a["global_step"] == b["global_step"] == 0


@pytest.mark.parametrize("mode,search,lightning_tried,lightning_found,ember_tried,ember_found", [
    # At max_val Lightning stops before running it and returns it: here a size that runs out of memory.
    ("power", dict(max_val=16), [2, 4, 8], 16, [2, 4, 8, 16], 8),
    ("binsearch", dict(max_val=16, margin=0.0), [2, 4, 8], 16, [2, 4, 8, 16, 12, 14, 13], 12),
    # The binsearch margin shrinks 12 to 11, which Lightning returns without running; ember runs it.
    ("binsearch", dict(), [2, 4, 8, 16, 12, 14, 13], 11, [2, 4, 8, 16, 12, 14, 13, 11], 11),
], ids=["power-max-val", "binsearch-max-val", "binsearch-margin"])
def test_batch_size_search_never_returns_a_size_it_did_not_run(tmp_path, mode, search, lightning_tried,
                                                                lightning_found, ember_tried, ember_found):
    """Lightning #18426: Lightning 2.6.6 can hand back a size it never trained; ember only returns one it ran."""
    a, b = run_both(_oom_program, tmp_path=tmp_path, limit=12, mode=mode, **search)
    assert (a["tried"], a["found"]) == (lightning_tried, lightning_found)
    assert (b["tried"], b["found"]) == (ember_tried, ember_found)
    assert b["found"] in b["tried"] and b["fits"]
    assert a["found"] not in a["tried"]
    assert b["restored"] and b["global_step"] == 0


def test_starting_above_the_limit_goes_down_to_a_size_that_fits(tmp_path):
    """Lightning runs its first trial on the loader built before init_val was set (batches of 2, the model's
    own size), counts init_val=64 as fitted and returns 64, which runs out of memory. ember runs 64, sees it
    fail, and halves to a size that fits."""
    a, b = run_both(_oom_program, tmp_path=tmp_path, limit=40, mode="power", init_val=64)
    assert (a["tried"], a["found"], a["fits"]) == ([2, 128], 64, False)
    assert (b["tried"], b["found"], b["fits"]) == ([64, 32], 32, True)


# --------------------------------------------------------------------------- weight averaging
def _averaging_program(L, tmp_path, make, max_epochs=3, **trainer_kw):
    """Boring model + averaging callback; returns weights, metrics per validation and the saved checkpoint."""
    vals = []

    def on_validation_epoch_end(self):
        vals.append((self.global_step, {k: v.clone() for k, v in self.state_dict().items()}))

    m = boring_class(L, on_validation_epoch_end=on_validation_epoch_end, optimizer="adam", lr=0.05)()
    cb = make(L)
    t = L.Trainer(**quiet(tmp_path, max_epochs=max_epochs, callbacks=[cb], **trainer_kw))
    t.fit(m)
    path = str(tmp_path / f"{L.__name__}.ckpt")
    t.save_checkpoint(path)
    ckpt = torch.load(path, weights_only=False)
    return {"weights": {k: v.clone() for k, v in m.state_dict().items()}, "vals": vals,
            "callback_metrics": {k: float(v) for k, v in t.callback_metrics.items()}, "ckpt": ckpt,
            "global_step": t.global_step}


AVERAGERS = {
    "weight-averaging": lambda L: L.pytorch.callbacks.WeightAveraging(),
    "ema": lambda L: L.pytorch.callbacks.EMAWeightAveraging(decay=0.9),
    "ema-every-2-from-3": lambda L: L.pytorch.callbacks.EMAWeightAveraging(decay=0.8, update_every_n_steps=2,
                                                                         update_starting_at_step=3),
    "ema-epochs": lambda L: L.pytorch.callbacks.EMAWeightAveraging(decay=0.5, update_every_n_steps=0,
                                                                 update_starting_at_epoch=1),
}


@pytest.mark.parametrize("name", AVERAGERS)
def test_weight_averaging_matches_lightning(tmp_path, name):
    a, b = run_both(_averaging_program, tmp_path=tmp_path, make=AVERAGERS[name], val_check_interval=0.5)
    assert a["global_step"] == b["global_step"] == 12
    for k in a["weights"]:  # after fit the model holds the average
        assert torch.equal(a["weights"][k], b["weights"][k]), k
    # Validation ran on the averaged weights, at the same steps, and logged the same numbers.
    assert [s for s, _ in a["vals"]] == [s for s, _ in b["vals"]] == [0, 2, 4, 6, 8, 10, 12]  # 0: the sanity check
    for (_, wa), (_, wb) in zip(a["vals"], b["vals"]):
        for k in wa:
            assert torch.equal(wa[k], wb[k]), k
    assert a["callback_metrics"].keys() == b["callback_metrics"].keys()
    for k in a["callback_metrics"]:
        assert b["callback_metrics"][k] == pytest.approx(a["callback_metrics"][k], rel=1e-6, abs=1e-7), k
    # The checkpoint layout is Lightning's: the average is state_dict, the training weights beside it.
    for key in ("state_dict", "current_model_state", "averaging_state"):
        assert a["ckpt"].keys() >= {key} and b["ckpt"].keys() >= {key}
    assert int(a["ckpt"]["averaging_state"]["n_averaged"]) == int(b["ckpt"]["averaging_state"]["n_averaged"])
    # and the average differs from what plain training ends with (a no-op average would pass the rest)
    import ember

    plain = run_program(ember, tmp_path, model=dict(optimizer="adam", lr=0.05), record=False,
                        trainer=dict(max_epochs=3, val_check_interval=0.5))
    assert not all(torch.equal(plain["weights"][k], b["weights"][k]) for k in b["weights"])


@pytest.mark.parametrize("kw,configure", [
    (dict(swa_lrs=0.02, swa_epoch_start=2, annealing_epochs=2), None),
    (dict(swa_lrs=0.05, swa_epoch_start=0.5, annealing_epochs=1, annealing_strategy="linear"), _step_lr),
], ids=["cos-from-epoch-2", "linear-half-replacing-a-scheduler"])
def test_stochastic_weight_averaging_matches_lightning(tmp_path, kw, configure):
    def program(L, tmp_path):
        lrs = []

        def on_train_epoch_start(self):
            lrs.append(self.trainer.optimizers[0].param_groups[0]["lr"])

        m = boring_class(L, configure=configure, on_train_epoch_start=on_train_epoch_start)()
        cb = L.pytorch.callbacks.StochasticWeightAveraging(**kw)
        t = L.Trainer(**quiet(tmp_path, max_epochs=4, callbacks=[cb]))
        t.fit(m)
        return {"weights": {k: v.clone() for k, v in m.state_dict().items()}, "lrs": lrs,
                "n_averaged": int(cb.n_averaged), "state": cb.state_dict(), "epoch": t.current_epoch,
                "val_loss": float(t.callback_metrics["val_loss"])}

    a, b = run_both(program, tmp_path=tmp_path)
    assert (a["n_averaged"], a["epoch"]) == (b["n_averaged"], b["epoch"])
    assert a["n_averaged"] == 3 if kw["swa_epoch_start"] == 2 else 2
    assert a["lrs"] == pytest.approx(b["lrs"], rel=1e-12)
    assert a["lrs"][0] == 0.1 and a["lrs"][-1] != 0.1  # SWALR took over
    for k in a["weights"]:
        assert torch.equal(a["weights"][k], b["weights"][k]), k
    assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-6)
    assert a["state"]["latest_update_epoch"] == b["state"]["latest_update_epoch"] == 3
    for k, v in a["state"]["average_model_state"].items():
        assert torch.equal(v, b["state"]["average_model_state"][k]), k
