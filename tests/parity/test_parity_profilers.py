"""Profilers: the same program under Lightning 2.6.6 and ember records the same actions, each the same number of
times (names and counts; durations differ by nature)."""
from __future__ import annotations

from typing import Any

import torch

from parity_harness import boring_class, loader, quiet, run_both


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
