"""Loop behaviour that needs no Lightning to check (the parity suite covers the rest)."""
from __future__ import annotations

import warnings

import pytest
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

import ember as L
from boring import BoringLinear, sum_dataset

QUIET = dict(logger=False, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)


_data = sum_dataset
Net = BoringLinear


class WithVal(Net):
    def validation_step(self, batch, batch_idx):
        self.log("val_loss", torch.nn.functional.mse_loss(self.layer(batch[0]), batch[1]))


def test_validation_step_without_val_loader_warns_and_trains():
    with pytest.warns(UserWarning, match="defines validation_step but no val dataloader"):
        trainer = L.Trainer(max_epochs=1, **QUIET)
        trainer.fit(WithVal(), DataLoader(_data(), batch_size=4))
    assert trainer.global_step == 2


def test_val_loader_without_validation_step_warns_and_skips_it():
    called = []

    class Loaders(Net):
        def val_dataloader(self):
            called.append(True)
            return DataLoader(_data(), batch_size=4)

    with pytest.warns(UserWarning, match="no validation_step"):
        L.Trainer(max_epochs=1, **QUIET).fit(Loaders(), DataLoader(_data(), batch_size=4))
    assert not called  # the hook is not even called, as in Lightning


class _Slow(Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        return torch.ones(2), torch.ones(1)


def test_few_workers_is_a_warning_never_an_error(monkeypatch):
    import ember.data

    monkeypatch.setattr(ember.data, "_warned_workers", set())  # the hint is given once per process
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = L.Trainer(max_epochs=1, **QUIET)
        trainer.fit(Net(), DataLoader(_Slow(), batch_size=2, num_workers=0))
    assert trainer.global_step == 2
    assert any("num_workers=0" in str(w.message) for w in caught)


def test_fit_with_no_training_data_names_the_ways_to_give_it():
    with pytest.raises(ValueError, match="found no training data"):
        L.Trainer(max_epochs=1, **QUIET).fit(Net())


def test_fit_in_eval_mode_warns_and_keeps_the_mode():
    model = Net()
    model.eval()
    with pytest.warns(UserWarning, match="eval mode"):
        L.Trainer(max_epochs=1, **QUIET).fit(model, DataLoader(_data(), batch_size=4))
    assert not model.training  # Lightning does not call .train() either


def test_manual_optimization_refuses_accumulation_and_trainer_clipping():
    class Manual(Net):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = False

        def training_step(self, batch, batch_idx):
            opt = self.optimizers()
            self.manual_backward(super().training_step(batch, batch_idx))
            opt.step()
            opt.zero_grad()

    with pytest.raises(ValueError, match="accumulate_grad_batches"):
        L.Trainer(max_epochs=1, accumulate_grad_batches=2, **QUIET).fit(Manual(), DataLoader(_data(), batch_size=4))
    with pytest.raises(ValueError, match="gradient_clip_val"):
        L.Trainer(max_epochs=1, gradient_clip_val=1.0, **QUIET).fit(Manual(), DataLoader(_data(), batch_size=4))
    trainer = L.Trainer(max_epochs=1, **QUIET)
    trainer.fit(Manual(), DataLoader(_data(), batch_size=4))
    assert trainer.global_step == 2  # every opt.step() counts


def test_manual_backward_under_automatic_optimization_is_an_error():
    class Wrong(Net):
        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            self.manual_backward(loss)
            return loss

    with pytest.raises(RuntimeError, match="manual_backward.*manual optimization"):
        L.Trainer(max_epochs=1, **QUIET).fit(Wrong(), DataLoader(_data(), batch_size=4))


def test_clipping_arguments_must_agree_with_the_trainer():
    class Clips(Net):
        def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
            self.clip_gradients(optimizer, gradient_clip_val=0.5, gradient_clip_algorithm="norm")

    with pytest.raises(ValueError, match="disagree"):
        L.Trainer(max_epochs=1, gradient_clip_val=1.0, **QUIET).fit(Clips(), DataLoader(_data(), batch_size=4))


def test_sanity_check_does_not_change_the_training_rng():
    # Shuffled training data must come in the same order with and without a sanity check (Lightning isolates it).
    def order(sanity):
        seen = []

        class Spy(WithVal):
            def training_step(self, batch, batch_idx):
                seen.append(batch[0][:, 0].tolist())
                return super().training_step(batch, batch_idx)

            def validation_step(self, batch, batch_idx):
                torch.rand(3)  # consumes random numbers

        L.seed_everything(3)
        trainer = L.Trainer(max_epochs=1, num_sanity_val_steps=sanity, **QUIET)
        trainer.fit(Spy(), DataLoader(_data(), batch_size=2, shuffle=True), DataLoader(_data(), batch_size=2))
        return seen

    assert order(0) == order(2)


def test_several_train_loaders_train_on_zipped_batches():
    # (Replaces the test that several loaders are refused: they are supported now.)
    seen = []

    class Two(Net):
        def training_step(self, batch, batch_idx):
            seen.append((sorted(batch), batch_idx, len(batch["a"][0]), len(batch["b"][0])))
            return super().training_step(batch["a"], batch_idx) + super().training_step(batch["b"], batch_idx)

    loaders = {"a": DataLoader(_data(), batch_size=4), "b": DataLoader(_data(), batch_size=8)}
    trainer = L.Trainer(max_epochs=1, **QUIET)
    trainer.fit(Two(), loaders)
    assert trainer.global_step == 2 and trainer.num_training_batches == 2
    assert seen == [(["a", "b"], 0, 4, 8), (["a", "b"], 1, 4, 8)]
    assert trainer.train_dataloader is not loaders and sorted(trainer.train_dataloader) == ["a", "b"]


def test_fit_refuses_a_sequential_combined_loader():
    from ember.utilities import CombinedLoader

    loaders = CombinedLoader([DataLoader(_data(), batch_size=4)] * 2, "sequential")
    with pytest.raises(ValueError, match="mode='sequential'"):
        L.Trainer(max_epochs=1, **QUIET).fit(Net(), loaders)


def test_the_plain_step_trains_exactly_like_the_full_step():
    """An epoch where nothing hooks into the step takes step.plain_step; a no-op on_before_backward hook forces
    automatic_step. Both must give bitwise the same weights, losses and step counts, a skipped step (None) too."""
    from ember.step import automatic_step, plain_step

    class SkipsOne(BoringLinear):
        def training_step(self, batch, batch_idx):
            return None if batch_idx == 3 else super().training_step(batch, batch_idx)

    class Listens(L.Callback):
        def on_before_backward(self, trainer, pl_module, loss):
            pass

    class RecordsStep(L.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            from ember.step import EpochPlan
            self.step = EpochPlan(trainer.run_context).run_step

    results = {}
    for name, extra in (("plain", []), ("full", [Listens()])):
        torch.manual_seed(0)
        model, recorder = SkipsOne(), RecordsStep()
        trainer = L.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False, callbacks=[recorder, *extra])
        trainer.fit(model, DataLoader(sum_dataset(32), batch_size=4))
        results[name] = ([p.detach().clone() for p in model.parameters()], trainer.global_step, recorder.step)
    assert results["plain"][2] is plain_step and results["full"][2] is automatic_step
    assert results["plain"][1] == results["full"][1] == 16  # 2 epochs x 8 batches, the skipped ones counted
    for a, b in zip(results["plain"][0], results["full"][0]):
        assert torch.equal(a, b)
