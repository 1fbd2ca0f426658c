"""Optimisation callbacks on ember alone: the accumulation schedule by step, OnExceptionCheckpoint,
weight averaging and the batch-size finder (the Lightning comparisons are in parity/test_parity_optcb.py)."""
from __future__ import annotations

import torch

import ember as L
from ember.callbacks import Callback, GradientAccumulationScheduler
from boring import BoringLinear, sum_loader

QUIET = dict(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
             enable_checkpointing=False)


class StepsSeen(Callback):
    """For every batch: the accumulation it ran with and the global_step after it."""

    def __init__(self):
        self.seen = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.seen.append((trainer.current_epoch, batch_idx, trainer.accumulate_grad_batches, trainer.global_step))


def test_accumulation_by_step_changes_the_window_after_an_optimizer_step(tmp_path):
    seen = StepsSeen()
    trainer = L.Trainer(max_epochs=2, default_root_dir=tmp_path, **QUIET,
                        callbacks=[GradientAccumulationScheduler({2: 2, 4: 3}, interval="step"), seen])
    trainer.fit(BoringLinear(), sum_loader(n=20, batch_size=2))  # 10 batches an epoch
    accum = [a for _, _, a, _ in seen.seen]
    steps = [s for *_, s in seen.seen]
    # steps 0, 1 alone; steps 2, 3 from windows of 2; then windows of 3, the epoch's end closing one early
    assert accum == [1, 1, 2, 2, 2, 2, 3, 3, 3, 3] + [3] * 10
    assert steps == [1, 2, 2, 3, 3, 4, 4, 4, 5, 6] + [6, 6, 7, 7, 7, 8, 8, 8, 9, 10]
    assert trainer.global_step == 10


def test_accumulation_by_step_refuses_bad_intervals():
    import pytest

    with pytest.raises(ValueError, match="interval='batch'.*allowed: 'epoch'"):
        GradientAccumulationScheduler({0: 2}, interval="batch")
    with pytest.raises(ValueError, match=r"Step should be an int greater than or equal to 0. Got \[-3\]"):
        GradientAccumulationScheduler({-3: 2}, interval="step")


def test_a_second_fit_on_the_same_trainer_keeps_its_schedule(tmp_path):
    # Lightning refuses the second fit (the trainer's accumulate_grad_batches is left at the schedule's value).
    trainer = L.Trainer(max_epochs=2, default_root_dir=tmp_path, **QUIET,
                        callbacks=[GradientAccumulationScheduler({1: 2})])
    model = BoringLinear()
    trainer.fit(model, sum_loader(n=8, batch_size=2))
    assert trainer.global_step == 4 + 2
    trainer.max_epochs = 3
    trainer.fit(model, sum_loader(n=8, batch_size=2))
    assert trainer.global_step == 4 + 2 + 2


class SaveAtBatchStart(Callback):
    def __init__(self, path, at):
        self.path, self.at, self.validations = path, at, 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if (trainer.current_epoch, batch_idx) == self.at:
            trainer.save_checkpoint(self.path)

    def on_validation_end(self, trainer, pl_module):
        self.validations += not trainer.sanity_checking


class Validating(BoringLinear):
    def validation_step(self, batch, batch_idx):
        self.log("val_loss", torch.nn.functional.mse_loss(self.layer(batch[0]), batch[1]))


def test_a_save_before_a_batch_resumes_without_redoing_the_previous_batchs_validation(tmp_path):
    """A checkpoint from on_train_batch_start (or from an error inside the step) has the previous batch done
    to its end: the resume neither validates again nor publishes its metrics again."""
    path = str(tmp_path / "start.ckpt")
    saver = SaveAtBatchStart(path, at=(0, 3))
    trainer = L.Trainer(max_epochs=1, default_root_dir=tmp_path, val_check_interval=3, num_sanity_val_steps=0,
                        **QUIET, callbacks=[saver])
    straight = Validating()
    trainer.fit(straight, sum_loader(n=12, batch_size=2), sum_loader(n=4))  # validations after batches 3 and 6
    assert saver.validations == 2
    counter = SaveAtBatchStart(str(tmp_path / "unused.ckpt"), at=None)
    resumed = Validating()
    L.Trainer(max_epochs=1, default_root_dir=tmp_path, val_check_interval=3, num_sanity_val_steps=0, **QUIET,
              callbacks=[counter]).fit(resumed, sum_loader(n=12, batch_size=2), sum_loader(n=4), ckpt_path=path)
    assert counter.validations == 1  # only the one after batch 6
    assert all(torch.equal(p, q) for p, q in zip(straight.parameters(), resumed.parameters()))


# --------------------------------------------------------------------------- batch-size finder
import pytest  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from ember.callbacks import BatchSizeFinder  # noqa: E402
from ember.tuner import Tuner  # noqa: E402
from ember.tuner.batch_size import search_sizes  # noqa: E402
from boring import sum_dataset  # noqa: E402


def _limit(n):
    return lambda size: size <= n


@pytest.mark.parametrize("mode,limit,kw,tried,found", [
    ("power", 100, {}, [2, 4, 8, 16, 32, 64, 128], 64),
    ("binsearch", 100, dict(margin=0.0), [2, 4, 8, 16, 32, 64, 128, 96, 112, 104, 100, 102, 101], 100),
    ("power", 10 ** 9, dict(max_val=50), [2, 4, 8, 16, 32, 50], 50),  # the cap itself is run
    ("binsearch", 3, dict(init_val=8, margin=0.0), [8, 4, 2, 3], 3),  # from above: down, then bisect
    ("binsearch", 100, dict(margin=0.1), [2, 4, 8, 16, 32, 64, 128, 96, 112, 104, 100, 102, 101, 90], 90),
])
def test_search_sizes_runs_every_size_it_returns(mode, limit, kw, tried, found):
    kw = {"init_val": 2, "max_trials": 25, "max_val": 8192, **kw}
    best, trials = search_sizes(_limit(limit), mode, **kw)
    assert [s for s, _ in trials] == tried and best == found
    assert (best, True) in trials


def test_search_sizes_stops_once_a_batch_holds_the_whole_dataset():
    best, trials = search_sizes(_limit(10 ** 6), "power", 2, 25, 8192, covers_dataset=lambda s: s >= 20)
    assert [s for s, _ in trials] == [2, 4, 8, 16, 32] and best == 32


def test_search_sizes_says_when_nothing_fits():
    with pytest.raises(torch.OutOfMemoryError, match="even a batch of 1"):
        search_sizes(_limit(0), "power", 4, 25, 8192)
    with pytest.raises(torch.OutOfMemoryError, match=r"max_trials=2 trials \(tried \[16, 8\]\)"):
        search_sizes(_limit(3), "power", 16, 2, 8192)


class SizedModel(BoringLinear):
    def __init__(self, limit=24):
        super().__init__()
        self.save_hyperparameters()
        self.batch_size = 2
        self.sizes_trained = []

    def training_step(self, batch, batch_idx):
        if batch[0].shape[0] > self.hparams.limit:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        self.sizes_trained.append(batch[0].shape[0])
        return super().training_step(batch, batch_idx)

    def train_dataloader(self):
        return DataLoader(sum_dataset(200), batch_size=self.batch_size)


def test_the_callback_finds_the_size_then_the_fit_trains_with_it(tmp_path):
    finder = BatchSizeFinder(mode="binsearch", margin=0.0, steps_per_trial=2)
    model = SizedModel(limit=24)
    trainer = L.Trainer(max_epochs=1, default_root_dir=tmp_path, callbacks=[finder], **QUIET)
    trainer.fit(model)
    assert finder.optimal_batch_size == model.batch_size == 24
    assert [s for s, _ in finder.trials] == [2, 4, 8, 16, 32, 24, 28, 26, 25]
    # the real fit: from step 0, every batch of 24 (the last one holds the rest of the 200 rows)
    trained = model.sizes_trained[-9:]
    assert trained == [24] * 8 + [200 - 8 * 24] and trainer.global_step == 9


def test_the_batch_size_may_live_in_hparams_or_the_datamodule(tmp_path):
    class FromHparams(SizedModel):
        def __init__(self):
            super().__init__()
            del self.batch_size
            self.hparams["batch_size"] = 2

        def train_dataloader(self):
            return DataLoader(sum_dataset(64), batch_size=self.hparams.batch_size)

    model = FromHparams()
    found = Tuner(L.Trainer(max_epochs=1, default_root_dir=tmp_path, **QUIET)).scale_batch_size(model, max_trials=4)
    assert found == model.hparams.batch_size == 16

    class Data(L.LightningDataModule):
        def __init__(self):
            super().__init__()
            self.batch_size = 2

        def train_dataloader(self):
            return DataLoader(sum_dataset(64), batch_size=self.batch_size)

    dm = Data()
    plain = SizedModel(limit=10)
    del plain.batch_size
    found = Tuner(L.Trainer(max_epochs=1, default_root_dir=tmp_path, **QUIET)).scale_batch_size(plain, datamodule=dm)
    assert found == dm.batch_size == 8


def test_scale_batch_size_refuses_what_it_cannot_do(tmp_path):
    tuner = Tuner(L.Trainer(max_epochs=1, default_root_dir=tmp_path, **QUIET))
    with pytest.raises(ValueError, match="mode='linear'.*allowed: 'power', 'binsearch'"):
        tuner.scale_batch_size(SizedModel(), mode="linear")
    with pytest.raises(ValueError, match=r"max_val=0\) is not valid; allowed: an int >= 1"):
        tuner.scale_batch_size(SizedModel(), max_val=0)
    with pytest.raises(ValueError, match="margin=1.0"):
        BatchSizeFinder(margin=1.0)
    with pytest.raises(ValueError, match="cannot resize dataloaders passed in directly"):
        tuner.scale_batch_size(SizedModel(), train_dataloaders=sum_loader())
    with pytest.raises(AttributeError, match="batch_arg_name='bs'"):
        tuner.scale_batch_size(SizedModel(), batch_arg_name="bs")
    with pytest.raises(NotImplementedError, match="method='test'"):
        tuner.scale_batch_size(SizedModel(), method="test")
    with pytest.raises(ValueError, match="passed to fit\\(\\) directly"):
        L.Trainer(max_epochs=1, default_root_dir=tmp_path, callbacks=[BatchSizeFinder()], **QUIET).fit(
            SizedModel(), sum_loader())


# --------------------------------------------------------------------------- weight averaging
from ember.callbacks import EMAWeightAveraging, StochasticWeightAveraging, WeightAveraging  # noqa: E402


class WithBatchNorm(BoringLinear):
    def __init__(self):
        super().__init__()
        self.norm = torch.nn.BatchNorm1d(2)

    def forward(self, x):
        return self.layer(self.norm(x))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.mse_loss(self(x), y)


def test_swa_recomputes_batch_norm_statistics_for_the_average_with_update_bn(tmp_path):
    import copy

    torch.manual_seed(0)
    model = WithBatchNorm()
    swa = StochasticWeightAveraging(swa_lrs=0.05, swa_epoch_start=2)
    trainer = L.Trainer(max_epochs=3, default_root_dir=tmp_path, callbacks=[swa], **QUIET)
    loader = sum_loader(n=16, batch_size=4)
    trainer.fit(model, loader)
    assert int(swa.n_averaged) == 2 and trainer.current_epoch == 3  # no extra epoch (Lightning adds one)
    for p, q in zip(model.parameters(), swa.average_model.module.parameters()):
        assert torch.equal(p, q)
    # the statistics are update_bn's over the train loader, for these (averaged) weights
    model.trainer = None  # a deep copy of the module alone
    expected = copy.deepcopy(model)
    expected.norm.reset_running_stats()
    torch.optim.swa_utils.update_bn(loader, expected)
    assert torch.equal(model.norm.running_mean, expected.norm.running_mean)
    assert torch.equal(model.norm.running_var, expected.norm.running_var)


def test_weight_averaging_refuses_bad_arguments():
    with pytest.raises(ValueError, match=r"swa_epoch_start=0\) is not valid"):
        StochasticWeightAveraging(swa_lrs=0.1, swa_epoch_start=0)
    with pytest.raises(ValueError, match=r"swa_lrs=-0.1\) is not valid"):
        StochasticWeightAveraging(swa_lrs=-0.1)
    with pytest.raises(ValueError, match="annealing_strategy='step'"):
        StochasticWeightAveraging(swa_lrs=0.1, annealing_strategy="step")
    with pytest.raises(ValueError, match=r"decay=1.5\) is not valid"):
        EMAWeightAveraging(decay=1.5)


def test_a_weight_averaging_checkpoint_loads_as_the_averaged_model(tmp_path):
    model = BoringLinear()
    averaging = WeightAveraging()
    trainer = L.Trainer(max_epochs=2, default_root_dir=tmp_path, callbacks=[averaging], **QUIET)
    trainer.fit(model, sum_loader())
    path = tmp_path / "avg.ckpt"
    trainer.save_checkpoint(path)
    loaded = BoringLinear.load_from_checkpoint(path)
    for p, q in zip(loaded.parameters(), averaging.average_model.module.parameters()):
        assert torch.equal(p, q)
    assert int(averaging.average_model.n_averaged) == trainer.global_step == 8
