"""Exact resume: a run stopped at any point and resumed ends bitwise identical to a run that never stopped.

One straight run per configuration saves checkpoints at the interesting
points (first batch, mid-epoch, epoch end, inside an accumulation window,
right after a validation inside the epoch); every checkpoint is then resumed
to the end and compared with the straight run: every parameter, every
optimizer-state tensor, the scheduler, the counters, the metrics and what the
logger received after the resume point.
"""
from __future__ import annotations

import os
import time

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import ember as L
from ember.callbacks import (Callback, EMAWeightAveraging, GradientAccumulationScheduler,
                             StochasticWeightAveraging)
from ember.loggers import Logger

QUIET = dict(enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
BATCHES_PER_EPOCH = 12
EPOCHS = 3


class Net(L.LightningModule):
    """Dropout, Adam, a per-step scheduler, step and epoch metrics: every piece of state resume must carry."""

    def __init__(self, lr: float = 0.02):
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Dropout(0.25),
                                       torch.nn.Linear(16, 1))

    def training_step(self, batch, batch_idx):
        if isinstance(batch, dict):  # several train loaders (the "combined" config): one batch of each
            batch = [torch.cat(parts) for parts in zip(*batch.values())]
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.net(x), y)
        self.log("train_loss", loss, on_step=True, on_epoch=True)
        self.log("noise", torch.rand(()), on_step=False, on_epoch=True, reduce_fx="max")  # draws from the RNG too
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", torch.nn.functional.mse_loss(self.net(x), y))

    def configure_optimizers(self):
        opt = torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=5, gamma=0.7)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class Recorder(Logger):
    """Keeps every (step, metrics) the trainer logs."""

    def __init__(self):
        super().__init__()
        self.records: list[tuple[int, dict[str, float]]] = []

    @property
    def name(self):
        return "recorder"

    @property
    def version(self):
        return 0

    def log_metrics(self, metrics, step=None):
        self.records.append((step, dict(metrics)))

    def log_hyperparams(self, params, *args, **kwargs):
        pass


class SaveAt(Callback):
    """Saves a full checkpoint at chosen points of the straight run, named after the point."""

    def __init__(self, dirpath, batches=(), validations=(), epoch_ends=()):
        self.dirpath, self.batches, self.validations, self.epoch_ends = dirpath, set(batches), set(validations), set(epoch_ends)
        self.seen_batches = self.seen_validations = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.seen_batches += 1
        if self.seen_batches in self.batches:
            trainer.save_checkpoint(os.path.join(self.dirpath, f"batch{self.seen_batches}.ckpt"))

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            return
        self.seen_validations += 1
        if self.seen_validations in self.validations:
            trainer.save_checkpoint(os.path.join(self.dirpath, f"validation{self.seen_validations}.ckpt"))

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch in self.epoch_ends:
            trainer.save_checkpoint(os.path.join(self.dirpath, f"epoch_end{trainer.current_epoch}.ckpt"))


class AugmentedRows(torch.utils.data.Dataset):
    """Rows plus noise drawn inside __getitem__: in a worker process, from that worker's own RNG."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i] + 0.1 * torch.randn(self.x.shape[1]), self.y[i]


def loaders(explicit_generator):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(BATCHES_PER_EPOCH * 4, 4, generator=g)
    y = x.sum(1, keepdim=True) + 0.1 * torch.randn(len(x), 1, generator=g)
    if explicit_generator == "workers":
        # 2 worker processes, each seeded from the main process's RNG when the epoch's iterator is made.
        train = DataLoader(AugmentedRows(x, y), batch_size=4, shuffle=True, num_workers=2)
        return train, DataLoader(TensorDataset(x[:8], y[:8]), batch_size=4)
    if explicit_generator == "combined":
        # 12 batches shuffled from the global RNG, zipped with 5 shuffled by their own generator, which start
        # again twice an epoch (each restart draws a new order mid-epoch).
        short = DataLoader(TensorDataset(x[:20], y[:20]), batch_size=4, shuffle=True,
                           generator=torch.Generator().manual_seed(11))
        train = L.pytorch.utilities.CombinedLoader(
            {"long": DataLoader(TensorDataset(x, y), batch_size=4, shuffle=True), "short": short}, "max_size_cycle")
        return train, DataLoader(TensorDataset(x[:8], y[:8]), batch_size=4)
    gen = torch.Generator().manual_seed(7) if explicit_generator else None
    train = DataLoader(TensorDataset(x, y), batch_size=4, shuffle=True, generator=gen)
    val = DataLoader(TensorDataset(x[:8], y[:8]), batch_size=4)
    return train, val


# name -> Trainer options, whether the DataLoader has its own generator ("workers": 2 worker processes that
# augment in __getitem__, with seed_everything(workers=True)), and where to save
CONFIGS = {
    # epoch-end validation; saves after batch 1, mid-epoch, at the last batch of an epoch and in on_train_epoch_end
    "plain": (dict(), False, dict(batches=(1, 17, 24), epoch_ends=(0, 1))),
    # accumulate 3: batches 8 and 22 end inside a window (1 and 2 batches into it)
    "accumulate": (dict(accumulate_grad_batches=3), True, dict(batches=(8, 22, 12), epoch_ends=(0,))),
    # validation every 3 batches: save right after validations inside epochs, and mid-window with accumulation 2
    "fractional_val": (dict(val_check_interval=0.25, accumulate_grad_batches=2), False,
                       dict(batches=(5, 13), validations=(2, 5, 8))),
    # mid-epoch in the first and second epoch, and at an epoch end, with augmentation drawn in the workers
    "workers": (dict(), "workers", dict(batches=(5, 19), epoch_ends=(0,))),
    # GradientAccumulationScheduler by epoch (1, 2, then 3): batch 17 is 1 batch into a window of 2, batch 26
    # 2 batches into a window of 3
    "accumulation_schedule": (dict(callbacks=lambda: [GradientAccumulationScheduler({1: 2, 2: 3})]), False,
                              dict(batches=(17, 26), epoch_ends=(0,))),
    # ember's schedule by optimizer step: windows of 2 from step 6, of 4 from step 15; batch 7 and batch 30
    # sit inside a window, batch 26 right after the change to 4
    "accumulation_by_step": (dict(callbacks=lambda: [GradientAccumulationScheduler({6: 2, 15: 4}, interval="step")]),
                             False, dict(batches=(7, 26, 30), epoch_ends=(1,))),
    # an exponential moving average of the weights, which validation runs on: saves mid-epoch, right after a
    # validation inside an epoch and at an epoch end
    "weight_averaging": (dict(val_check_interval=0.5, callbacks=lambda: [EMAWeightAveraging(decay=0.9)]), False,
                         dict(batches=(5, 18), validations=(3,), epoch_ends=(0,))),
    "swa": (dict(callbacks=lambda: [StochasticWeightAveraging(swa_lrs=0.01, swa_epoch_start=2, annealing_epochs=3)]),
            False, dict(batches=(5, 30), epoch_ends=(1,))),
    # two train loaders in a CombinedLoader: before and after the short one restarts, inside an accumulation
    # window, in the second epoch, after a validation inside the epoch, and at an epoch end
    "combined": (dict(accumulate_grad_batches=2, val_check_interval=0.5), "combined",
                 dict(batches=(4, 7, 17), validations=(1,), epoch_ends=(0,))),
}
POINTS = [(name, point) for name, (_, _, where) in CONFIGS.items()
          for point in [f"batch{b}" for b in where.get("batches", ())]
          + [f"validation{v}" for v in where.get("validations", ())]
          + [f"epoch_end{e}" for e in where.get("epoch_ends", ())]]


def fit(config: str, root, ckpt_path=None, saver=None):
    options, explicit_generator, _ = CONFIGS[config]
    options = dict(options)
    callbacks = options.pop("callbacks", list)() + ([saver] if saver else [])
    L.seed_everything(123, workers=explicit_generator == "workers")
    model = Net()
    recorder = Recorder()
    trainer = L.Trainer(max_epochs=EPOCHS, logger=recorder, log_every_n_steps=1, default_root_dir=root,
                        callbacks=callbacks or None, **QUIET, **options)
    train, val = loaders(explicit_generator)
    trainer.fit(model, train, val, ckpt_path=ckpt_path)
    return model, trainer, recorder


_straight: dict[str, tuple] = {}


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    def get(config: str):
        if config not in _straight:
            root = tmp_path_factory.mktemp(config)
            saver = SaveAt(str(root), **CONFIGS[config][2])
            _straight[config] = (*fit(config, root, saver=saver), root)
        return _straight[config]

    yield get
    _straight.clear()


def assert_same_state(a, ta, b, tb):
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), f"parameter {name} differs"
    sa, sb = ta.optimizers[0].state_dict(), tb.optimizers[0].state_dict()
    assert sa["state"].keys() == sb["state"].keys()
    for idx in sa["state"]:
        for key, value in sa["state"][idx].items():
            assert torch.equal(value, sb["state"][idx][key]), f"optimizer state {idx}/{key} differs"
    assert ta.lr_scheduler_configs[0].scheduler.state_dict() == tb.lr_scheduler_configs[0].scheduler.state_dict()
    assert (ta.global_step, ta.current_epoch) == (tb.global_step, tb.current_epoch)
    ca, cb = ta.callback_metrics, tb.callback_metrics
    assert ca.keys() == cb.keys()
    for key in ca:
        assert torch.equal(ca[key], cb[key]), f"metric {key} differs: {ca[key]} vs {cb[key]}"


@pytest.mark.parametrize("config,point", POINTS)
def test_resume_from_any_point_is_bitwise_identical(straight, tmp_path, config, point):
    model, trainer, recorder, root = straight(config)
    path = os.path.join(root, f"{point}.ckpt")
    assert os.path.isfile(path), sorted(os.listdir(root))
    resumed, rtrainer, rrecorder = fit(config, tmp_path, ckpt_path=path)
    assert_same_state(model, trainer, resumed, rtrainer)
    # The logger of the resumed run received exactly the tail of what the straight run logged.
    assert rrecorder.records, "the resumed run logged nothing"
    assert recorder.records[-len(rrecorder.records):] == rrecorder.records


def test_the_matrix_covers_mid_window_and_after_validation_positions(straight):
    """Guard the matrix itself: its checkpoints really sit inside a window and right after a validation."""
    from ember.checkpoint import load_file

    *_, root = straight("accumulate")
    info = load_file(os.path.join(root, "batch8.ckpt"))["ember"]
    assert info["mid_epoch"] and info["accumulated"] == 2 and info["grads"]
    *_, root = straight("fractional_val")
    info = load_file(os.path.join(root, "validation2.ckpt"))["ember"]
    assert info["mid_epoch"] and info["left_of_batch"] == "after_validation" and info["batches_done_in_epoch"] == 6
    for config, point, accumulated in (("accumulation_schedule", "batch17", 1), ("accumulation_schedule", "batch26", 2),
                                       ("accumulation_by_step", "batch7", 1), ("accumulation_by_step", "batch30", 2)):
        *_, root = straight(config)
        info = load_file(os.path.join(root, f"{point}.ckpt"))["ember"]
        assert info["mid_epoch"] and info["accumulated"] == accumulated and info["grads"], (config, point)
    *_, root = straight("weight_averaging")
    ckpt = load_file(os.path.join(root, "batch18.ckpt"))
    assert ckpt["ember"]["mid_epoch"] and int(ckpt["averaging_state"]["n_averaged"]) == 18
    assert not all(torch.equal(v, ckpt["current_model_state"][k]) for k, v in ckpt["state_dict"].items())
    *_, root = straight("swa")
    swa_state = load_file(os.path.join(root, "batch30.ckpt"))["callbacks"]["StochasticWeightAveraging"]
    assert swa_state["scheduler_state"] is not None and swa_state["n_averaged"] == 2  # SWALR running, mid-epoch
    *_, root = straight("plain")
    info = load_file(os.path.join(root, "epoch_end0.ckpt"))["ember"]
    assert info["epoch_completed"] and not info["mid_epoch"]


def test_resume_without_the_saved_rng_would_differ(straight, tmp_path):
    """The comparison above can fail: dropping the saved RNG from a mid-epoch checkpoint changes the result."""
    from ember.checkpoint import load_file

    model, trainer, _, root = straight("plain")
    ckpt = load_file(os.path.join(root, "batch17.ckpt"))
    del ckpt["ember"]["rng"], ckpt["ember"]["epoch_start_rng"]
    broken = tmp_path / "no_rng.ckpt"
    torch.save(ckpt, broken)
    with pytest.warns(UserWarning, match="RNG state"):
        resumed, rtrainer, _ = fit("plain", tmp_path, ckpt_path=str(broken))
    assert not all(torch.equal(p, q) for p, q in zip(model.parameters(), resumed.parameters()))


def test_the_workers_case_runs_two_workers_and_needs_the_saved_rng(straight, tmp_path):
    """Guard the workers case: 2 workers, and without the saved RNG (which also seeds them) the resume differs."""
    from ember.checkpoint import load_file

    model, trainer, _, root = straight("workers")
    assert trainer.train_dataloader.num_workers == 2
    ckpt = load_file(os.path.join(root, "batch19.ckpt"))
    del ckpt["ember"]["rng"], ckpt["ember"]["epoch_start_rng"]
    torch.save(ckpt, tmp_path / "no_rng.ckpt")
    resumed, _, _ = fit("workers", tmp_path, ckpt_path=str(tmp_path / "no_rng.ckpt"))  # it warns (once a process)
    assert not all(torch.equal(p, q) for p, q in zip(model.parameters(), resumed.parameters()))


class NumpyNoise(Net):
    """Draws from NumPy's global RNG in every step, so a resume must put NumPy's state back too."""

    def training_step(self, batch, batch_idx):
        x, y = batch
        x = x + torch.from_numpy(np.random.normal(0.0, 0.1, size=tuple(x.shape))).float()
        return torch.nn.functional.mse_loss(self.net(x), y)


def fit_numpy(root, ckpt_path=None, saver=None):
    L.seed_everything(9)  # seeds NumPy too
    model = NumpyNoise()
    trainer = L.Trainer(max_epochs=2, logger=False, default_root_dir=root, callbacks=[saver] if saver else None,
                        **QUIET)
    trainer.fit(model, loaders(False)[0], ckpt_path=ckpt_path)
    return model


def test_resume_puts_numpys_rng_back(tmp_path):
    from ember.checkpoint import load_file

    straight = fit_numpy(tmp_path, saver=SaveAt(str(tmp_path), batches=(7,)))
    ckpt = load_file(tmp_path / "batch7.ckpt")
    assert "numpy" in ckpt["ember"]["rng"]
    resumed = fit_numpy(tmp_path / "r", ckpt_path=str(tmp_path / "batch7.ckpt"))
    for p, q in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(p, q)
    # Negative control: the same checkpoint without NumPy's state resumes to other weights.
    del ckpt["ember"]["rng"]["numpy"]
    torch.save(ckpt, tmp_path / "no_numpy.ckpt")
    control = fit_numpy(tmp_path / "c", ckpt_path=str(tmp_path / "no_numpy.ckpt"))
    assert not all(torch.equal(p, q) for p, q in zip(straight.parameters(), control.parameters()))


class Slow(Net):
    def training_step(self, batch, batch_idx):
        time.sleep(0.01)
        return super().training_step(batch, batch_idx)


def test_timer_state_survives_a_resume(tmp_path):
    from ember.callbacks import Timer
    from ember.checkpoint import load_file

    L.seed_everything(0)
    timer = Timer()
    trainer = L.Trainer(max_epochs=1, logger=False, default_root_dir=tmp_path, callbacks=[timer], **QUIET)
    trainer.fit(Slow(), loaders(False)[0])
    used = timer.time_elapsed("train")
    assert used >= BATCHES_PER_EPOCH * 0.01
    path = tmp_path / "after_one_epoch.ckpt"
    trainer.save_checkpoint(path)
    saved = load_file(path)["callbacks"][timer.state_key]["time_elapsed"]["train"]
    assert saved == pytest.approx(used, abs=1e-6)

    # Resumed with a budget just under what was already used: the new Timer counts the old time, so it stops
    # the run at once (a Timer that forgot would allow another 12 batches).
    resumed_timer = Timer(duration={"seconds": saved * 0.9}, interval="step")
    resumed = L.Trainer(max_epochs=3, logger=False, default_root_dir=tmp_path, callbacks=[resumed_timer], **QUIET)
    resumed.fit(Slow(), loaders(False)[0], ckpt_path=str(path))
    assert resumed.global_step == BATCHES_PER_EPOCH
    assert resumed_timer.time_elapsed("train") >= saved
    # With room left, it trains on and its clock carries on from the saved time.
    roomy_timer = Timer(duration={"seconds": 3600}, interval="step")
    roomy = L.Trainer(max_epochs=2, logger=False, default_root_dir=tmp_path, callbacks=[roomy_timer], **QUIET)
    roomy.fit(Slow(), loaders(False)[0], ckpt_path=str(path))
    assert roomy.global_step == 2 * BATCHES_PER_EPOCH
    assert roomy_timer.time_elapsed("train") >= saved + BATCHES_PER_EPOCH * 0.01
    assert roomy_timer.time_remaining("train") == pytest.approx(3600 - roomy_timer.time_elapsed("train"), abs=1e-6)


def test_fit_again_with_more_epochs_continues_where_it_stopped(tmp_path):
    """Lightning's behaviour: counters carry over to the next fit() of the same Trainer, nothing is redone."""
    L.seed_everything(0)
    model = Net()
    trainer = L.Trainer(max_epochs=2, logger=False, default_root_dir=tmp_path, **QUIET)
    train, val = loaders(False)
    trainer.fit(model, train, val)
    assert (trainer.current_epoch, trainer.global_step) == (2, 2 * BATCHES_PER_EPOCH)
    trainer.fit(model, train, val)  # max_epochs reached: nothing to do
    assert trainer.global_step == 2 * BATCHES_PER_EPOCH
    trainer.max_epochs = 3
    trainer.fit(model, train, val)
    assert (trainer.current_epoch, trainer.global_step) == (3, 3 * BATCHES_PER_EPOCH)


# ---------------------------------------------------------------------------- the tutorial's flow
def tutorial_flow(framework, more_epochs: int):
    """StatQuest: 34 epochs, then "add more epochs, right where we left off" from best_model_path."""
    from statquest_model import dataloader, make_class

    model = make_class(framework)()
    model.learning_rate = 0.01
    quiet = dict(enable_progress_bar=False, enable_model_summary=False)  # logger and checkpointing: the defaults
    trainer = framework.Trainer(max_epochs=34, **quiet)
    trainer.fit(model, train_dataloaders=dataloader())
    path_to_best_checkpoint = trainer.checkpoint_callback.best_model_path
    trainer = framework.Trainer(max_epochs=more_epochs, **quiet)
    trainer.fit(model, train_dataloaders=dataloader(), ckpt_path=path_to_best_checkpoint)
    return model.final_bias.detach().clone(), trainer.global_step, trainer.current_epoch


def test_tutorial_flow_continues_exactly_like_a_straight_run(in_tmp):
    from statquest_model import dataloader, make_class

    resumed = tutorial_flow(L, 100)
    model = make_class(L)()
    model.learning_rate = 0.01
    trainer = L.Trainer(max_epochs=100, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, train_dataloaders=dataloader())
    assert resumed[1:] == (trainer.global_step, trainer.current_epoch) == (300, 100)
    assert torch.equal(resumed[0], model.final_bias.detach())


def test_tutorial_flow_matches_lightning(in_tmp):
    lightning = pytest.importorskip("lightning")
    ours = tutorial_flow(L, 60)
    os.makedirs("lightning_run")
    os.chdir("lightning_run")
    theirs = tutorial_flow(lightning, 60)
    assert ours[1:] == theirs[1:] == (180, 60)
    assert torch.equal(ours[0], theirs[0])


# ---------------------------------------------------------------------------- samplers ember cannot see into
class OwnRandomSampler(torch.utils.data.Sampler):
    """Shuffles with its own random.Random and keeps no state_dict: ember cannot know where it was."""

    def __init__(self, n):
        import random

        self.n, self.rng = n, random.Random(0)

    def __iter__(self):
        order = list(range(self.n))
        self.rng.shuffle(order)
        return iter(order)

    def __len__(self):
        return self.n


class StatefulSampler(torch.utils.data.Sampler):
    """A shuffling sampler that can say where it is (what torchdata's StatefulDataLoader does for a loader)."""

    def __init__(self, n):
        self.n, self.seed, self.pos, self.order = n, 0, 0, []

    def __iter__(self):
        if self.pos >= len(self.order):  # a new epoch (not a resumed one)
            self.order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed)).tolist()
            self.seed, self.pos = self.seed + 1, 0
        while self.pos < self.n:
            self.pos += 1
            yield self.order[self.pos - 1]

    def __len__(self):
        return self.n

    def state_dict(self):
        return {"seed": self.seed, "pos": self.pos, "order": list(self.order)}

    def load_state_dict(self, state):
        self.seed, self.pos, self.order = state["seed"], state["pos"], list(state["order"])


def fit_with_sampler(sampler_cls, root, ckpt_path=None, saver=None):
    L.seed_everything(5)
    model = Net()
    x = torch.randn(BATCHES_PER_EPOCH * 4, 4, generator=torch.Generator().manual_seed(0))
    loader = DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=4, sampler=sampler_cls(len(x)))
    trainer = L.Trainer(max_epochs=2, logger=False, default_root_dir=root, callbacks=[saver] if saver else None,
                        **QUIET)
    trainer.fit(model, loader, ckpt_path=ckpt_path)
    return model


def test_a_sampler_with_state_dict_resumes_exactly_from_its_own_position(tmp_path):
    import warnings

    # Batch 19 is in the second epoch: a fresh sampler skipping 18 batches would replay the first epoch's order.
    straight = fit_with_sampler(StatefulSampler, tmp_path, saver=SaveAt(str(tmp_path), batches=(19,)))
    with warnings.catch_warnings():  # no "cannot tell the order" warning: the sampler said where it was
        warnings.filterwarnings("error", message=".*cannot tell whether.*")
        resumed = fit_with_sampler(StatefulSampler, tmp_path / "r", ckpt_path=str(tmp_path / "batch19.ckpt"))
    for p, q in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(p, q)


def test_a_sampler_of_unknown_state_gets_a_warning_naming_it(tmp_path, monkeypatch):
    import ember.checkpoint

    monkeypatch.setattr(ember.checkpoint, "_warned", set())  # "once" per process: start this test from none
    fit_with_sampler(OwnRandomSampler, tmp_path, saver=SaveAt(str(tmp_path), batches=(7,)))
    with pytest.warns(UserWarning, match=r"OwnRandomSampler.*state_dict\(\) and load_state_dict\(\)"):
        fit_with_sampler(OwnRandomSampler, tmp_path / "r", ckpt_path=str(tmp_path / "batch7.ckpt"))


def test_mid_epoch_checkpoint_of_a_dataloader_iter_step_is_refused_clearly(tmp_path):
    from ember.checkpoint import CheckpointError

    class IterNet(Net):
        def training_step(self, dataloader_iter):
            batch, _, _ = next(dataloader_iter)
            x, y = batch
            loss = torch.nn.functional.mse_loss(self.net(x), y)
            self.log("train_loss", loss, batch_size=len(x))
            return loss

    def run(ckpt_path=None, saver=None):
        L.seed_everything(1)
        trainer = L.Trainer(max_epochs=1, logger=False, default_root_dir=tmp_path, callbacks=[saver] if saver else None,
                            **QUIET)
        trainer.fit(IterNet(), loaders(False)[0], ckpt_path=ckpt_path)
        return trainer

    assert run(saver=SaveAt(str(tmp_path), batches=(3,))).global_step == BATCHES_PER_EPOCH
    with pytest.raises(CheckpointError, match="inside an epoch of a training_step\\(self, dataloader_iter\\)"):
        run(ckpt_path=os.path.join(tmp_path, "batch3.ckpt"))
