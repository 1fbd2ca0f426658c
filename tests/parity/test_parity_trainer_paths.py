"""Parity for Trainer paths the other parity files do not reach: eval/predict limits, the step estimate,
barebones, anomaly detection, deterministic="warn", freeze/unfreeze, LightningDataModule.from_datasets,
DataLoader workers and a KeyboardInterrupt during fit."""
from __future__ import annotations

import pytest
import torch
from parity_harness import (assert_same_metrics, assert_same_run, assert_same_weights, boring_class, data, quiet,
                            run_both, run_program, weights)
from torch.utils.data import DataLoader, Dataset


# --------------------------------------------------------------------------- limits and the step estimate
@pytest.mark.parametrize("limit", [1, 0.5, 0])
def test_limit_test_batches(tmp_path, limit):
    a, b = run_both(run_program, tmp_path=tmp_path, stage="test", model=dict(test_loaders=2),
                    trainer=dict(limit_test_batches=limit), stage_kw=dict(verbose=False))
    assert_same_run(a, b)
    test_batches = [c for c in b["calls"] if c[0] == "m.test_step"]
    # Loaders of 8 and 12 rows in batches of 4: 2 and 3 batches; limit 1 -> 1 + 1, 0.5 -> 1 + 1, 0 -> none.
    assert len(test_batches) == {1: 2, 0.5: 2, 0: 0}[limit]
    assert len(a["returned"]) == len(b["returned"])
    for x, y in zip(a["returned"], b["returned"]):
        assert_same_metrics(x, y)


@pytest.mark.parametrize("limit", [1, 0.5, 0])
def test_limit_predict_batches(tmp_path, limit):
    a, b = run_both(run_program, tmp_path=tmp_path, stage="predict", trainer=dict(limit_predict_batches=limit))
    assert_same_run(a, b)
    expected = {1: 1, 0.5: 1, 0: 0}[limit]  # the predict loader has 2 batches
    assert len([c for c in b["calls"] if c[0] == "m.predict_step"]) == expected
    if expected:
        assert len(a["returned"]) == len(b["returned"]) == expected
        assert all(torch.equal(x, y) for x, y in zip(a["returned"], b["returned"]))


@pytest.mark.parametrize("given,expected", [
    (dict(), [1.0, 1.0, 1.0, 1.0, 0.0]),  # an unset limit reads 1.0, not None
    (dict(overfit_batches=3), [3, 3, 1.0, 1.0, 3]),
    (dict(fast_dev_run=2), [2, 2, 2, 2, 0.0]),
    (dict(limit_train_batches=None, limit_val_batches=0.25), [1.0, 0.25, 1.0, 1.0, 0.0]),
], ids=["unset", "overfit", "fast-dev-run", "none-and-fraction"])
def test_the_limit_settings_read_as_in_lightning(given, expected):
    def program(L):
        t = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, **given)
        return [getattr(t, f"limit_{s}_batches") for s in ("train", "val", "test", "predict")] + [t.overfit_batches]

    a, b = run_both(program)
    assert a == b == expected


@pytest.mark.parametrize("trainer,expected", [
    (dict(max_epochs=3), 12),  # 16 rows in batches of 4: 4 batches an epoch
    (dict(max_epochs=3, accumulate_grad_batches=3), 6),  # ceil(4 / 3) = 2 steps an epoch
    (dict(max_epochs=5, max_steps=7), 7),
    (dict(max_epochs=2, limit_train_batches=0.5), 4),
    (dict(max_epochs=-1, max_steps=9), 9),
], ids=["epochs", "accumulate", "max-steps", "limit", "steps-only"])
def test_estimated_stepping_batches(tmp_path, trainer, expected):
    def program(L, tmp_path):
        seen = []

        class Spy(L.Callback):
            def on_train_start(self, trainer, pl_module):
                seen.append(trainer.estimated_stepping_batches)

        r = run_program(L, tmp_path, record=False, callbacks=lambda L: [Spy()], trainer=trainer)
        return seen, r["global_step"]

    a, b = run_both(program, tmp_path=tmp_path)
    assert a == b == ([expected], expected)  # the estimate is the number of steps the fit then takes


# --------------------------------------------------------------------------- flags
def _barebones_program(L, tmp_path):
    import os

    calls = []
    root = os.path.join(str(tmp_path), L.__name__)
    from parity_harness import recording

    m = recording(boring_class(L), calls, with_state=False)()
    t = L.Trainer(barebones=True, max_epochs=2, accelerator="cpu", devices=1, default_root_dir=root)
    t.fit(m)
    files = sorted(os.listdir(root)) if os.path.isdir(root) else []
    return dict(weights=weights(m), step=t.global_step, loggers=t.loggers, ckpt=t.checkpoint_callback,
                bar=t.progress_bar_callback, callbacks=[type(c).__name__ for c in t.callbacks],
                log_every=t.log_every_n_steps, files=files, sanity=t.num_sanity_val_steps,
                val_steps=sum(c[0] == "m.validation_step" for c in calls), metrics=sorted(t.callback_metrics))


def test_barebones_trains_the_same_and_turns_off_the_extras(tmp_path):
    a, b = run_both(_barebones_program, tmp_path=tmp_path)
    assert_same_weights(a["weights"], b["weights"])
    for key in ("step", "loggers", "ckpt", "bar", "callbacks", "log_every", "files"):
        assert a[key] == b[key], key
    assert (b["step"], b["loggers"], b["ckpt"], b["bar"], b["callbacks"], b["log_every"], b["files"]) == \
        (8, [], None, None, [], 0, [])


def test_barebones_skips_the_sanity_check_and_logging_like_lightning(tmp_path):
    a, b = run_both(_barebones_program, tmp_path=tmp_path)
    assert a["sanity"] == 0 and a["metrics"] == [] and a["val_steps"] == 2 * 2  # Lightning: 2 epochs x 2 batches
    assert (b["sanity"], b["val_steps"], b["metrics"]) == (a["sanity"], a["val_steps"], a["metrics"])


def test_detect_anomaly_is_on_inside_the_steps_only(tmp_path):
    def program(L, tmp_path, detect):
        seen = []

        def training_step(self, batch, batch_idx):
            seen.append(torch.is_anomaly_enabled())
            x, y = batch
            return torch.nn.functional.mse_loss(self(x), y)

        r = run_program(L, tmp_path, record=False, model=dict(training_step=training_step),
                        trainer=dict(detect_anomaly=detect, max_epochs=1, limit_val_batches=0))
        return seen, torch.is_anomaly_enabled(), r["weights"]

    for detect in (True, False):
        a, b = run_both(program, tmp_path=tmp_path, detect=detect)
        assert a[:2] == b[:2] == ([detect] * 4, False)
        assert_same_weights(a[2], b[2])


@pytest.mark.parametrize("deterministic,flags", [("warn", (True, True)), (True, (True, False)), (False, (False, False))])
def test_deterministic_sets_torch_flags(deterministic, flags):
    def program(L):
        before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
        try:
            L.Trainer(deterministic=deterministic, logger=False, enable_checkpointing=False)
            return torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
        finally:
            torch.use_deterministic_algorithms(before[0], warn_only=before[1])

    a, b = run_both(program)
    assert a == b == flags


def test_freeze_and_unfreeze(tmp_path):
    def program(L, tmp_path):
        m = boring_class(L)()
        m.freeze()
        frozen = (m.training, [p.requires_grad for p in m.parameters()])
        m.unfreeze()
        thawed = (m.training, [p.requires_grad for p in m.parameters()])
        m.freeze()
        m.unfreeze()
        t = L.Trainer(**quiet(tmp_path, max_epochs=1))
        t.fit(m)
        return frozen, thawed, weights(m)

    a, b = run_both(program, tmp_path=tmp_path)
    assert a[:2] == b[:2] == ((False, [False, False]), (True, [True, True]))
    assert_same_weights(a[2], b[2])


# --------------------------------------------------------------------------- data
def test_from_datasets_builds_the_same_loaders(tmp_path):
    def program(L, tmp_path):
        cls = boring_class(L)
        for name in ("train_dataloader", "val_dataloader", "test_dataloader", "predict_dataloader"):
            delattr(cls, name)
        torch.manual_seed(3)  # the train loader shuffles from the global RNG
        dm = L.LightningDataModule.from_datasets(train_dataset=data(16), val_dataset=[data(8, seed=1), data(4, seed=2)],
                                                 test_dataset=data(8, seed=5), predict_dataset=data(8, seed=9),
                                                 batch_size=4)
        loaders = {name: getattr(dm, f"{name}_dataloader")() for name in ("train", "val", "test", "predict")}
        shapes = {k: (type(v).__name__, [(dl.batch_size, type(dl.sampler).__name__) for dl in
                                         (v if isinstance(v, list) else [v])]) for k, v in loaders.items()}
        m = cls()
        t = L.Trainer(**quiet(tmp_path, max_epochs=2))
        t.fit(m, datamodule=dm)
        tested = t.test(m, datamodule=dm, verbose=False)
        predicted = t.predict(m, datamodule=dm)
        return shapes, weights(m), tested, predicted

    a, b = run_both(program, tmp_path=tmp_path)
    assert a[0] == b[0]
    assert b[0]["train"] == ("DataLoader", [(4, "RandomSampler")])
    assert b[0]["val"] == ("list", [(4, "SequentialSampler"), (4, "SequentialSampler")])
    assert_same_weights(a[1], b[1])
    assert len(a[2]) == len(b[2]) == 1
    assert_same_metrics(a[2][0], b[2][0])
    assert len(a[3]) == len(b[3]) == 2 and all(torch.equal(x, y) for x, y in zip(a[3], b[3]))


class NoisyRows(Dataset):
    """Rows of a fixed table plus noise drawn in __getitem__: the worker's RNG decides the batch."""

    def __init__(self, n=32):
        self.x, self.y = data(n).tensors

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i] + 0.1 * torch.randn(self.x.shape[1]), self.y[i]


def _workers_program(L, tmp_path, dataset):
    L.seed_everything(42, workers=True)
    cls = boring_class(L)
    cls.train_dataloader = lambda self: DataLoader(dataset, batch_size=4, shuffle=True, num_workers=2)
    m = cls()
    t = L.Trainer(**quiet(tmp_path, max_epochs=2, limit_val_batches=0))
    t.fit(m)
    return weights(m), t.global_step


def test_two_dataloader_workers_give_the_same_batches(tmp_path):
    # The same shuffle, sharding of batches between the 2 workers and collation as Lightning.
    a, b = run_both(_workers_program, tmp_path=tmp_path, dataset=data(32))
    assert a[1] == b[1] == 16
    assert_same_weights(a[0], b[0])


def test_two_dataloader_workers_with_seeded_augmentation(tmp_path):
    a, b = run_both(_workers_program, tmp_path=tmp_path, dataset=NoisyRows())
    assert a[1] == b[1] == 16
    assert_same_weights(a[0], b[0])


# --------------------------------------------------------------------------- an interrupted fit
def test_keyboard_interrupt_during_fit(tmp_path):
    import signal

    def program(L, tmp_path):
        heard = []

        class Interrupt(L.Callback):
            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                if trainer.global_step == 3:
                    raise KeyboardInterrupt

            def on_exception(self, trainer, pl_module, exception):
                heard.append((type(exception).__name__, trainer.global_step, trainer.interrupted))

        m = boring_class(L)()
        t = L.Trainer(**quiet(tmp_path, max_epochs=2, callbacks=[Interrupt()]))
        handler = signal.getsignal(signal.SIGINT)
        try:
            t.fit(m)
        except BaseException as exc:  # noqa: BLE001 - which one is part of the comparison
            raised = (type(exc).__name__, getattr(exc, "code", None))
        finally:
            signal.signal(signal.SIGINT, handler)  # Lightning ignores SIGINT from then on
        return heard, raised, t.interrupted, t.global_step, weights(m)

    a, b = run_both(program, tmp_path=tmp_path)
    assert a[0] == b[0] == [("KeyboardInterrupt", 3, True)]  # on_exception heard it, the trainer is interrupted
    assert a[2:4] == b[2:4] == (True, 3)
    assert_same_weights(a[4], b[4])
    # Known difference (reported in issue 12): Lightning turns Ctrl+C into sys.exit(1) and leaves SIGINT ignored for the
    # rest of the process; ember re-raises the KeyboardInterrupt and leaves the handler alone.
    assert a[1] == ("SystemExit", 1) and b[1] == ("KeyboardInterrupt", None)


# --------------------------------------------------------------------------- BasePredictionWriter, one process
def _writer_program(L, tmp_path, shuffle):
    class Rows(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(1, 1)

        def predict_step(self, batch, batch_idx, dataloader_idx=0):
            return batch[0].flatten()  # each row holds its own index

    class Writer(L.pytorch.callbacks.BasePredictionWriter):
        def __init__(self):
            super().__init__(write_interval="batch")
            self.rows = []

        def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx):
            self.rows.append((dataloader_idx, batch_idx, prediction.tolist(), list(batch_indices)))

    x = torch.arange(8.0).unsqueeze(1)
    writer = Writer()
    torch.manual_seed(0)
    t = L.Trainer(**quiet(tmp_path, callbacks=[writer]))
    out = t.predict(Rows(), [DataLoader(torch.utils.data.TensorDataset(x), batch_size=3, shuffle=shuffle),
                             DataLoader(torch.utils.data.TensorDataset(x[:4]), batch_size=2)])
    return writer.rows, [[p.tolist() for p in loader] for loader in out]


@pytest.mark.parametrize("shuffle", [False, True])
def test_prediction_writer_batch_interval_gets_each_batch_and_its_rows(tmp_path, shuffle):
    a, b = run_both(_writer_program, tmp_path=tmp_path, shuffle=shuffle)
    for rows, _ in (a, b):
        assert [(d, i) for d, i, _, _ in rows] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]
        assert all(pred == indices for _, _, pred, indices in rows)  # the indices name the rows predicted
    assert a == b
