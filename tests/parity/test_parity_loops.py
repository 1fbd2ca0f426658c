"""Loop parity: the same small Lightning program under lightning 2.6.6 and under ember (imports changed).

Each run records every hook call (with mode/grad/counters at the call), the final weights (bitwise),
global_step/current_epoch and the three metric views; all must be equal.
"""
from __future__ import annotations

import pytest
import torch
from parity_harness import (assert_same_metrics, assert_same_run, assert_same_weights, boring_class, data, quiet,
                            run_both, run_program, weights)
from torch.utils.data import DataLoader, IterableDataset


def _same(tmp_path, **kw):
    a, b = run_both(run_program, tmp_path=tmp_path, **kw)
    assert_same_run(a, b)
    return a, b


# --------------------------------------------------------------------------- validation knobs
@pytest.mark.parametrize("trainer", [
    dict(val_check_interval=0.25, num_sanity_val_steps=2),  # fractional interval + sanity steps
    dict(val_check_interval=0.3, num_sanity_val_steps=1),  # does not divide the epoch: no epoch-end run
    dict(val_check_interval=3, num_sanity_val_steps=0),
    dict(val_check_interval=5, check_val_every_n_epoch=None, max_epochs=3),  # counts across epochs
    dict(check_val_every_n_epoch=2, max_epochs=3),
    dict(num_sanity_val_steps=-1, limit_val_batches=0.5),
    dict(limit_val_batches=1, limit_train_batches=0.5),
    dict(limit_val_batches=0),
], ids=["frac-sanity", "frac-uneven", "int", "int-across-epochs", "every-2", "sanity-all", "limits", "no-val"])
def test_validation_schedule(tmp_path, trainer):
    _same(tmp_path, trainer=trainer)


def test_two_val_loaders_with_dataloader_idx(tmp_path):
    _same(tmp_path, model=dict(val_loaders=2), trainer=dict(num_sanity_val_steps=1))


# --------------------------------------------------------------------------- validate / test / predict
@pytest.mark.parametrize("stage", ["validate", "test"])
@pytest.mark.parametrize("loaders", [1, 2])
def test_validate_and_test_return_one_dict_per_loader(tmp_path, stage, loaders):
    a, b = _same(tmp_path, stage=stage, model=dict(val_loaders=loaders, test_loaders=loaders),
                 stage_kw=dict(verbose=False))
    assert len(a["returned"]) == len(b["returned"]) == loaders
    for x, y in zip(a["returned"], b["returned"]):
        assert_same_metrics(x, y)


@pytest.mark.parametrize("return_predictions", [True, False])
def test_predict(tmp_path, return_predictions):
    a, b = _same(tmp_path, stage="predict", stage_kw=dict(return_predictions=return_predictions))
    if return_predictions:
        assert len(a["returned"]) == len(b["returned"]) == 2
        for x, y in zip(a["returned"], b["returned"]):
            assert torch.equal(x, y)
    else:
        assert a["returned"] is None and b["returned"] is None


def test_predict_with_two_loaders(tmp_path):
    loaders = [DataLoader(data(8, seed=3), batch_size=4), DataLoader(data(4, seed=4), batch_size=2)]
    a, b = _same(tmp_path, stage="predict", stage_kw=dict(dataloaders=loaders))
    assert [len(p) for p in a["returned"]] == [len(p) for p in b["returned"]] == [2, 2]
    for preds_a, preds_b in zip(a["returned"], b["returned"]):  # every batch of every loader, bitwise
        for x, y in zip(preds_a, preds_b):
            assert x.shape == y.shape and torch.equal(x, y)


def _frozen_eval_program(L, tmp_path, stage):
    cls = boring_class(L)
    model = cls()
    model.extra = torch.nn.Dropout(0.5)
    model.extra.eval()  # a frozen, eval-mode part must stay in eval mode after validation
    modes = []

    class Spy(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            modes.append((pl_module.training, pl_module.extra.training))

    t = L.Trainer(**quiet(tmp_path, max_epochs=2, callbacks=[Spy()], num_sanity_val_steps=1))
    if stage == "fit":
        t.fit(model)
    else:
        model.eval()
        getattr(t, stage)(model, verbose=False) if stage != "predict" else t.predict(model)
    return modes, model.training, model.extra.training


@pytest.mark.parametrize("stage", ["fit", "validate", "predict"])
def test_train_eval_modes_are_restored_per_submodule(tmp_path, stage):
    a, b = run_both(_frozen_eval_program, tmp_path=tmp_path, stage=stage)
    assert a == b


def test_grad_and_inference_mode_inside_steps(tmp_path):
    def program(L, tmp_path, inference_mode):
        seen = []

        def validation_step(self, batch, batch_idx):
            seen.append(("val", torch.is_grad_enabled(), torch.is_inference_mode_enabled()))

        def test_step(self, batch, batch_idx):
            seen.append(("test", torch.is_grad_enabled(), torch.is_inference_mode_enabled()))

        cls = boring_class(L, validation_step=validation_step, test_step=test_step)
        t = L.Trainer(**quiet(tmp_path, max_epochs=1, limit_train_batches=1, inference_mode=inference_mode))
        m = cls()
        t.fit(m)
        t.validate(m, verbose=False)
        t.test(m, verbose=False)
        return seen

    for mode in (True, False):
        a, b = run_both(program, tmp_path=tmp_path, inference_mode=mode)
        assert a == b


# --------------------------------------------------------------------------- stopping
@pytest.mark.parametrize("trainer", [
    dict(max_steps=5, max_epochs=-1),
    dict(max_steps=6, max_epochs=5),  # ends exactly at an epoch boundary
    dict(max_epochs=1, min_steps=3),
    dict(max_epochs=3, limit_train_batches=2),
], ids=["max-steps-mid-epoch", "max-steps-boundary", "min-steps", "limit-train"])
def test_stopping_limits(tmp_path, trainer):
    _same(tmp_path, trainer=trainer)


def _stopper(where, when):
    def make(L):
        class Stop(L.Callback):
            pass

        def hook(self, trainer, *args):
            if trainer.global_step >= when:
                trainer.should_stop = True

        setattr(Stop, where, hook)
        return [Stop()]

    return make


@pytest.mark.parametrize("where,when,trainer", [
    ("on_train_batch_end", 2, {}),
    ("on_train_epoch_end", 0, dict(max_epochs=4)),
    ("on_train_batch_end", 1, dict(min_epochs=2, max_epochs=4)),
    ("on_validation_end", 0, dict(min_steps=6, max_epochs=5)),
], ids=["mid-epoch", "epoch-end", "min-epochs-wins", "min-steps-mid-epoch"])
def test_should_stop_set_by_callback(tmp_path, where, when, trainer):
    _same(tmp_path, trainer=trainer, callbacks=_stopper(where, when))


def test_on_train_batch_start_returning_minus_one_skips_rest_of_epoch(tmp_path):
    def on_train_batch_start(self, batch, batch_idx):
        return -1 if batch_idx == 2 else None

    sched = lambda m: {"optimizer": (o := torch.optim.SGD(m.parameters(), lr=0.1)),  # noqa: E731
                       "lr_scheduler": torch.optim.lr_scheduler.StepLR(o, 1, gamma=0.5)}
    _same(tmp_path, model=dict(on_train_batch_start=on_train_batch_start, configure=sched))


def test_training_step_returning_none_skips_the_update(tmp_path):
    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self(x), y)
        return None if batch_idx == 1 else loss

    _same(tmp_path, model=dict(training_step=training_step))


# --------------------------------------------------------------------------- data
def test_limit_and_overfit_batches(tmp_path):
    _same(tmp_path, trainer=dict(overfit_batches=2, num_sanity_val_steps=0))
    _same(tmp_path, trainer=dict(limit_train_batches=3, limit_val_batches=0.5))


class _Stream(IterableDataset):
    def __init__(self, n):
        self.x, self.y = data(n).tensors

    def __iter__(self):
        return iter(zip(self.x, self.y))


def test_iterable_dataset_without_len(tmp_path):
    # The end of an unsized epoch is found by running out of data (Lightning looks one batch ahead, so
    # the scheduler step and the validation sit inside the last batch there; ember's hook order matches).
    def program(L, tmp_path, limit):
        cls = boring_class(L)
        m = cls()
        t = L.Trainer(**quiet(tmp_path, max_epochs=2, num_sanity_val_steps=0, limit_train_batches=limit))
        t.fit(m, DataLoader(_Stream(16), batch_size=4), DataLoader(_Stream(8), batch_size=4))
        return weights(m), t.global_step, t.current_epoch, dict(t.callback_metrics)

    for limit in (None, 3):
        a, b = run_both(program, tmp_path=tmp_path, limit=limit)
        assert_same_weights(a[0], b[0])
        assert a[1:3] == b[1:3]
        assert_same_metrics(a[3], b[3])


def test_reload_dataloaders_every_n_epochs(tmp_path):
    _same(tmp_path, trainer=dict(reload_dataloaders_every_n_epochs=2, max_epochs=4))


def test_datamodule_hooks_and_data(tmp_path):
    def program(L, tmp_path):
        calls = []

        class DM(L.LightningDataModule):
            def __init__(self):
                super().__init__()

            def prepare_data(self):
                calls.append("prepare_data")

            def setup(self, stage):
                calls.append(f"setup:{getattr(stage, 'value', stage)}")

            def train_dataloader(self):
                calls.append("train_dataloader")
                return DataLoader(data(12), batch_size=4)

            def val_dataloader(self):
                calls.append("val_dataloader")
                return DataLoader(data(8, seed=1), batch_size=4)

            def test_dataloader(self):
                calls.append("test_dataloader")
                return DataLoader(data(8, seed=2), batch_size=4)

            def teardown(self, stage):
                calls.append(f"teardown:{getattr(stage, 'value', stage)}")

        cls = boring_class(L)
        for name in ("train_dataloader", "val_dataloader", "test_dataloader", "predict_dataloader"):
            delattr(cls, name)
        m, dm = cls(), DM()
        t = L.Trainer(**quiet(tmp_path, max_epochs=2))
        t.fit(m, datamodule=dm)
        res = t.test(m, datamodule=dm, verbose=False)
        return calls, weights(m), res

    a, b = run_both(program, tmp_path=tmp_path)
    assert a[0] == b[0]
    assert_same_weights(a[1], b[1])
    assert_same_metrics(a[2][0], b[2][0])


def test_default_trainer_same_numbers_and_files(tmp_path):
    # Everything at its default: progress bar, model summary, TensorBoard logger, ModelCheckpoint.
    import contextlib
    import io
    import os

    from parity_harness import as_plain

    def program(L, tmp_path):
        root = os.path.join(str(tmp_path), L.__name__)
        m = boring_class(L)()
        t = L.Trainer(default_root_dir=root, max_epochs=2)
        with contextlib.redirect_stderr(io.StringIO()):
            t.fit(m)
        files = sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs
                       if not f.startswith("events."))
        return weights(m), as_plain(t.callback_metrics), as_plain(t.logged_metrics), files

    a, b = run_both(program, tmp_path=tmp_path)
    assert_same_weights(a[0], b[0])
    assert_same_metrics(a[1], b[1])
    assert_same_metrics(a[2], b[2])
    assert a[3] == b[3] == ["lightning_logs/version_0/checkpoints/epoch=1-step=8.ckpt",
                            "lightning_logs/version_0/hparams.yaml"]


def _stages_program(L, tmp_path):
    from parity_harness import loader
    """trainer.state.fn and trainer.state.stage as callbacks see them, in fit, validate, test and predict."""
    seen = []

    class Watch(L.pytorch.callbacks.Callback):
        def _note(self, trainer, hook):
            stage = trainer.state.stage
            seen.append((hook, str(getattr(trainer.state.fn, "value", trainer.state.fn)),
                         None if stage is None else str(getattr(stage, "value", stage))))

    for hook in ("on_fit_start", "on_sanity_check_start", "on_train_batch_start", "on_validation_batch_start",
                 "on_train_epoch_end", "on_test_batch_start", "on_predict_batch_start"):
        setattr(Watch, hook, lambda self, trainer, *a, _h=hook: self._note(trainer, _h))

    class Model(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(3, 1)

        def training_step(self, batch, batch_idx):
            return torch.nn.functional.mse_loss(self.layer(batch[0]), batch[1])

        def validation_step(self, batch, batch_idx):
            pass

        def test_step(self, batch, batch_idx):
            pass

        def predict_step(self, batch, batch_idx):
            return self.layer(batch[0])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    trainer = L.Trainer(max_epochs=1, callbacks=[Watch()], **quiet(tmp_path, limit_train_batches=2, limit_val_batches=1))
    model = Model()
    trainer.fit(model, loader(8, 4), loader(4, 4))
    trainer.test(model, loader(4, 4), verbose=False)
    trainer.predict(model, loader(4, 4))
    return seen


def test_trainer_state_fn_and_stage_match_lightning(tmp_path):
    expected, got = run_both(_stages_program, tmp_path=tmp_path)
    assert len(got) == 9 and got == expected
