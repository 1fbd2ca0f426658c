"""Profilers: the same program under Lightning 2.6.6 and ember records the same actions, each the same number of
times (names and counts; durations differ by nature)."""
from __future__ import annotations

from typing import Any

import torch

from parity_harness import boring_class, data, loader, quiet, run_both


def _counts(profiler: Any) -> dict[str, int]:
    return {action: len(durations) for action, durations in profiler.recorded_durations.items()}


def fit_then_evaluate(L: Any, tmp_path: Any) -> dict[str, dict[str, int]]:
    """A fit with validation, stock callbacks, accumulation and clipping; then validate, test and predict."""

    class Listening(L.Callback):  # one user callback that overrides two hooks (the others stay no-ops)
        def on_train_batch_end(self, *args: Any) -> None:
            pass

        def on_validation_epoch_end(self, *args: Any) -> None:
            pass

    cbs = L.pytorch.callbacks
    model = boring_class(L)()
    profiler = L.pytorch.profilers.SimpleProfiler()
    callbacks = [Listening(), cbs.ModelCheckpoint(dirpath=str(tmp_path / "ckpt")), cbs.TQDMProgressBar(),
                 cbs.ModelSummary(), cbs.EarlyStopping(monitor="val_loss")]
    trainer = L.Trainer(**quiet(tmp_path, max_epochs=2, profiler=profiler, callbacks=callbacks,
                                enable_checkpointing=True, enable_progress_bar=True, enable_model_summary=True),
                        accumulate_grad_batches=2, gradient_clip_val=0.5, limit_val_batches=2)
    trainer.fit(model)
    out = {"fit": _counts(profiler)}
    for stage in ("validate", "test", "predict"):
        profiler = L.pytorch.profilers.SimpleProfiler()
        getattr(L.Trainer(**quiet(tmp_path, profiler=profiler)), stage)(model)
        out[stage] = _counts(profiler)
    return out


def datamodule_and_manual(L: Any, tmp_path: Any) -> dict[str, dict[str, int]]:
    """A LightningDataModule's hooks, prepare_data/configure_model (timed only when overridden, in both), and
    manual optimization (its bare ``optimizer_step`` action)."""

    class Data(L.LightningDataModule):
        def train_dataloader(self) -> Any:
            return loader()

        def val_dataloader(self) -> Any:
            return loader(8)

    def manual_step(self: Any, batch: Any, batch_idx: int) -> None:
        opt = self.optimizers()
        opt.zero_grad()
        self.manual_backward(torch.nn.functional.mse_loss(self(batch[0]), batch[1]))
        opt.step()

    Boring = boring_class(L)

    class Manual(Boring):
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False

        training_step = manual_step

    class Preparing(Boring):
        def prepare_data(self) -> None:
            pass

        def configure_model(self) -> None:
            pass

    class PreparingData(Data):
        def prepare_data(self) -> None:
            pass

    out = {}
    for name, model, data in (("datamodule", Boring(), Data()), ("manual", Manual(), Data()),
                              ("overrides", Preparing(), PreparingData())):
        profiler = L.pytorch.profilers.SimpleProfiler()
        L.Trainer(**quiet(tmp_path, max_epochs=1, profiler=profiler)).fit(model, datamodule=data)
        out[name] = _counts(profiler)
    return out


class _Stream(torch.utils.data.IterableDataset):
    """8 samples with no length: the loop learns that an epoch is over only when the loader runs out."""

    def __iter__(self) -> Any:
        samples = data(8)
        return iter([samples[i] for i in range(len(samples))])


def loaders_without_length_and_schedules(L: Any, tmp_path: Any) -> dict[str, dict[str, int]]:
    """Loaders without len (fit, test, predict), two validation loaders checked every 2 batches, accumulation of 3."""
    Boring, TwoVal = boring_class(L), boring_class(L, val_loaders=2)
    stream = lambda: torch.utils.data.DataLoader(_Stream(), batch_size=2)  # noqa: E731
    out = {}
    for name, model, trainer_kw, call in (
            ("stream", Boring(), {}, lambda t, m: t.fit(m, train_dataloaders=stream(), val_dataloaders=stream())),
            ("stream_test", Boring(), {}, lambda t, m: t.test(m, dataloaders=stream(), verbose=False)),
            ("stream_predict", Boring(), {}, lambda t, m: t.predict(m, dataloaders=stream())),
            ("two_val_loaders", TwoVal(), dict(val_check_interval=2), lambda t, m: t.fit(m)),
            ("accumulate_3", Boring(), dict(accumulate_grad_batches=3), lambda t, m: t.fit(m))):
        profiler = L.pytorch.profilers.SimpleProfiler()
        call(L.Trainer(**quiet(tmp_path, max_epochs=1, profiler=profiler, **trainer_kw)), model)
        out[name] = _counts(profiler)
    return out


def _assert_same_counts(a: dict[str, dict[str, int]], b: dict[str, dict[str, int]]) -> None:
    assert a.keys() == b.keys()
    for stage in a:
        only_l, only_e = sorted(set(a[stage]) - set(b[stage])), sorted(set(b[stage]) - set(a[stage]))
        assert not only_l and not only_e, f"{stage}: only lightning {only_l}; only ember {only_e}"
        wrong = {k: (a[stage][k], b[stage][k]) for k in a[stage] if a[stage][k] != b[stage][k]}
        assert wrong == {}, f"{stage}: (lightning, ember) counts differ: {wrong}"


def test_profiled_actions_and_counts_match_lightning_for_fit_validate_test_predict(tmp_path):
    a, b = run_both(fit_then_evaluate, tmp_path=tmp_path)
    _assert_same_counts(a, b)
    fit = b["fit"]
    # 2 epochs x 4 batches, an optimizer step every 2 batches; the sanity check + 2 validations of 2 batches.
    assert fit["run_training_epoch"] == 2 and fit["run_training_batch"] == 8
    assert fit["[_TrainingEpochLoop].train_dataloader_next"] == 8
    assert fit["[Strategy]SingleDeviceStrategy.training_step"] == 8
    assert fit["[LightningModule]Boring.optimizer_step"] == 4
    assert fit["[Strategy]SingleDeviceStrategy.validation_step"] == 6
    assert fit["[_EvaluationLoop].val_next"] == 6
    assert fit["save_checkpoint"] == 2
    # A callback's name is its state_key: the class's qualified name (and its settings, for ModelCheckpoint).
    assert fit["[Callback]fit_then_evaluate.<locals>.Listening.on_train_batch_end"] == 8
    assert fit["[Callback]TQDMProgressBar.on_before_zero_grad"] == 4  # hooks a callback does not override count too
    assert len(fit) > 100
    assert b["test"]["[Strategy]SingleDeviceStrategy.test_step"] == 2  # the test loader has 2 batches
    assert b["predict"]["[_PredictionLoop].predict_next"] == 2


def test_profiled_datamodule_hooks_and_manual_optimization_match_lightning(tmp_path):
    a, b = run_both(datamodule_and_manual, tmp_path=tmp_path)
    _assert_same_counts(a, b)
    assert b["datamodule"]["[LightningDataModule]Data.train_dataloader"] == 1
    assert b["datamodule"]["[LightningDataModule]Data.setup"] == 1
    assert b["manual"]["optimizer_step"] == 4
    assert "[LightningModule]Boring.prepare_data" not in b["datamodule"]  # not overridden: not timed
    assert b["overrides"]["[LightningModule]Preparing.prepare_data"] == 1
    assert b["overrides"]["[LightningModule]Preparing.configure_model"] == 1
    assert b["overrides"]["[LightningDataModule]PreparingData.prepare_data"] == 1


def test_profiled_fetches_of_loaders_without_length_and_validation_schedules_match_lightning(tmp_path):
    a, b = run_both(loaders_without_length_and_schedules, tmp_path=tmp_path)
    _assert_same_counts(a, b)
    # One timed fetch per batch, also where only the fetch that finds nothing more ends the epoch.
    assert b["stream"]["[_TrainingEpochLoop].train_dataloader_next"] == 4
    assert b["stream"]["[_EvaluationLoop].val_next"] == 2 + 4  # sanity check (2 batches), then the epoch's 4
    assert b["stream_test"]["[_EvaluationLoop].test_next"] == 4
    assert b["stream_predict"]["[_PredictionLoop].predict_next"] == 4
    # Loaders of 2 and 3 batches: the sanity check takes 2 of each, the validations after batches 2 and 4 all 5.
    assert b["two_val_loaders"]["[Strategy]SingleDeviceStrategy.validation_step"] == 2 * 2 + 2 * 5
    assert b["two_val_loaders"]["[LightningModule]Boring.on_validation_model_zero_grad"] == 2
    assert b["accumulate_3"]["[LightningModule]Boring.optimizer_step"] == 2  # 4 batches: after 3, and the last
