"""Lightning's names and behaviours that a program relies on after `import ember as L`."""
import re
import subprocess
import sys

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import ember as L
from boring import BoringLinear, boring_class


class Linear(BoringLinear):
    """The boring model, recording what it sees and logging its loss."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        self.seen.append((self.current_epoch, self.global_step, batch_idx, self.device.type))
        self.log("train_loss", loss, prog_bar=True)
        return loss


def _loader(n=20, batch_size=2):
    x = torch.randn(n, 2, generator=torch.Generator().manual_seed(0))
    return DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=batch_size)


QUIET = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)


def test_lightning_import_paths_map_one_to_one():
    import ember.pytorch
    from ember.pytorch.callbacks import Callback as AliasCallback
    from ember.pytorch.tuner import Tuner as AliasTuner
    from ember.utilities import rank_zero_only

    assert ember.pytorch is L and L.pytorch is L
    assert AliasCallback is L.Callback and AliasTuner is L.tuner.Tuner and L.pytorch.tuner.Tuner is L.tuner.Tuner
    assert L.seed_everything(7, verbose=False) == 7
    assert rank_zero_only(lambda: 5)() == 5


def test_import_ember_pulls_in_neither_tqdm_nor_matplotlib_nor_lightning():
    code = ("import sys, ember; heavy = [m for m in ('tqdm', 'matplotlib', 'lightning', 'tensorboard', 'seaborn') "
            "if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr


def test_module_properties_follow_the_trainer():
    model = Linear()
    with pytest.raises(RuntimeError, match="not attached to a Trainer"):
        model.trainer
    trainer = L.Trainer(max_epochs=2, **QUIET)
    trainer.fit(model, _loader())
    assert model.trainer is trainer
    assert model.seen[0] == (0, 0, 0, "cpu") and model.seen[-1] == (1, 19, 9, "cpu")
    assert (model.current_epoch, model.global_step) == (2, 20)


def test_logged_training_metric_reaches_callback_and_progress_bar_metrics():
    model = Linear()
    trainer = L.Trainer(max_epochs=1, **QUIET)
    trainer.fit(model, _loader())
    x, y = _loader().dataset.tensors
    assert set(trainer.callback_metrics) == {"train_loss"}
    assert set(trainer.progress_bar_metrics) == {"train_loss"}
    assert isinstance(trainer.progress_bar_metrics["train_loss"], float)


def test_log_every_n_steps_controls_what_reaches_the_logger(tmp_path):
    from ember.loggers import CSVLogger

    trainer = L.Trainer(max_epochs=1, logger=CSVLogger(tmp_path), log_every_n_steps=3, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(Linear(), _loader())
    import csv

    with open(trainer.logger.log_dir + "/metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["step"]) for r in rows if r["train_loss"]] == [2, 5, 8]


@pytest.mark.parametrize("kwargs, steps, epochs", [
    (dict(max_epochs=3), 30, 3),
    (dict(max_steps=7), 7, 1),  # Lightning also counts the cut-short epoch
    (dict(max_epochs=2, limit_train_batches=4), 8, 2),
    (dict(max_epochs=2, limit_train_batches=0.5), 10, 2),
    (dict(fast_dev_run=True), 1, 1),
    (dict(fast_dev_run=3), 3, 1),
    (dict(max_epochs=2, overfit_batches=2), 4, 2),
])
def test_stopping_limits(kwargs, steps, epochs):
    trainer = L.Trainer(**{**QUIET, **kwargs})
    trainer.fit(Linear(), _loader())
    assert (trainer.global_step, trainer.current_epoch) == (steps, epochs)
    lightning = pytest.importorskip("lightning", reason="the Lightning half of this check needs lightning installed")
    theirs = lightning.Trainer(**{**QUIET, **kwargs})
    theirs.fit(_as_lightning(), _loader())
    assert (theirs.global_step, theirs.current_epoch) == (steps, epochs)


def _as_lightning():
    import lightning

    return boring_class(lightning)()


def test_min_epochs_wins_over_an_early_should_stop():
    class StopAtOnce(Linear):
        def on_train_epoch_end(self):
            self.trainer.should_stop = True

    trainer = L.Trainer(max_epochs=10, min_epochs=3, **QUIET)
    trainer.fit(StopAtOnce(), _loader())
    assert trainer.current_epoch == 3


def test_deterministic_turns_on_torch_deterministic_algorithms():
    before = torch.are_deterministic_algorithms_enabled()
    try:
        L.Trainer(deterministic=True, **QUIET)
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(before)


def test_model_summary_counts_trainable_and_frozen(capsys):
    class Net(Linear):
        def __init__(self):
            super().__init__()
            self.frozen = torch.nn.Linear(10, 10)
            self.frozen.requires_grad_(False)

    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.fit(Net(), _loader())
    out = capsys.readouterr().out
    assert "3          Trainable params" in out
    assert "110        Non-trainable params" in out
    assert "113        Total params" in out
    assert "layer" in out and "frozen" in out


def test_progress_bar_redraws_at_most_about_ten_times_a_second(monkeypatch):
    from ember.callbacks.progress import TQDMProgressBar

    draws = []
    original = TQDMProgressBar._draw

    def counting(self, trainer, pl_module, now):
        draws.append(now)
        return original(self, trainer, pl_module, now)

    monkeypatch.setattr(TQDMProgressBar, "_draw", counting)

    class Slow(Linear):
        def training_step(self, batch, batch_idx):
            import time

            time.sleep(0.002)
            return super().training_step(batch, batch_idx)

    x = torch.randn(400, 2)
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_model_summary=False)
    import time

    start = time.monotonic()
    trainer.fit(Slow(), DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=1))
    elapsed = time.monotonic() - start
    assert 400 * 0.002 <= elapsed
    assert 2 <= len(draws) <= elapsed * 10 + 2  # ~10 per second, plus the first and the last batch
    gaps = [b - a for a, b in zip(draws, draws[1:-1])]
    assert all(g >= 0.099 for g in gaps)


def test_the_progress_bar_hears_few_batch_ends_yet_shows_every_batch(monkeypatch, capsys):
    """The bar's on_train_batch_end is paced (Callback.paced_events): on fast batches the loop calls it a few
    times per redraw, not after every batch. Every draw shows the count trained so far, and the last one, when
    training ends, the whole of the last epoch."""
    from ember.callbacks.progress import TQDMProgressBar

    calls, drawn = [], []
    original_hook, original_draw = TQDMProgressBar.on_train_batch_end, TQDMProgressBar._draw

    def counting(self, trainer, pl_module, outputs, batch, batch_idx):
        calls.append(batch_idx)
        return original_hook(self, trainer, pl_module, outputs, batch, batch_idx)

    def drawing(self, trainer, pl_module, now):
        drawn.append((int(self._bar.desc.split()[1].rstrip(":")), trainer.state.batches_seen_in_epoch))
        return original_draw(self, trainer, pl_module, now)

    monkeypatch.setattr(TQDMProgressBar, "on_train_batch_end", counting)
    monkeypatch.setattr(counting, "__module__", "ember.callbacks.progress")  # still ember's own hook
    monkeypatch.setattr(TQDMProgressBar, "_draw", drawing)
    trainer = L.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_model_summary=False)
    trainer.fit(Linear(), _loader(n=2000, batch_size=1))  # 2 x 2,000 batches in well under a second each
    second = calls.index(0, 1)  # each epoch starts again with a call on its first batch
    for epoch in (calls[:second], calls[second:]):
        assert epoch[0] == 0 and epoch == sorted(set(epoch))
        # Each wait is at most twice the span since the previous call (the epoch's start, for the first), plus one.
        for before, now, after in zip([-1] + epoch, epoch, epoch[1:]):
            assert after - now <= 2 * (now - before) + 1, (before, now, after)
    assert 10 <= len(calls) < 400, len(calls)
    text = capsys.readouterr().err.replace("\r", "\n")
    shown = {(int(e), int(n)) for e, n in re.findall(r"Epoch (\d+):.*?(\d+)/2000", text)}
    assert len(drawn) >= 2 and set(drawn) <= shown  # each draw printed the count it was asked to show
    assert drawn[-1] == (1, 2000)
    last = [line for line in text.splitlines() if line.startswith("Epoch")][-1]
    assert "Epoch 1: 100%" in last and "2000/2000" in last and "train_loss=" in last


def test_a_progress_bar_subclass_that_overrides_the_batch_end_hears_every_batch():
    from ember.callbacks.progress import TQDMProgressBar

    class Counting(TQDMProgressBar):
        def __init__(self):
            super().__init__()
            self.seen = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.seen.append(batch_idx)
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    bar = Counting()
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_model_summary=False,
                        callbacks=[bar])
    trainer.fit(Linear(), _loader(n=600, batch_size=1))
    assert bar.seen == list(range(600))


class _CountedBars:
    """Records every tqdm the progress bar builds: (desc, leave) and the count each one shows when closed."""

    def __init__(self, monkeypatch):
        from ember.callbacks.progress import TQDMProgressBar

        self.built, self.shown_before_val = [], []
        original = TQDMProgressBar._tqdm
        bars = self

        def counting(self, **kwargs):
            if kwargs.get("desc") == "Validation" and self._bar is not None:
                bars.shown_before_val.append(self._bar.n)  # what the training bar shows above the val bar
            bar = original(self, **kwargs)
            bars.built.append((kwargs.get("desc"), kwargs.get("leave")))
            return bar

        monkeypatch.setattr(TQDMProgressBar, "_tqdm", counting)


class _WithValidation(Linear):
    def __init__(self, sleep=0.0):
        super().__init__()
        self.sleep = sleep

    def validation_step(self, batch, batch_idx):
        import time

        time.sleep(self.sleep)
        self.log("val_loss", torch.nn.functional.mse_loss(self.layer(batch[0]), batch[1]), prog_bar=True)


def test_a_short_validation_builds_no_bar_and_the_epoch_end_shows_every_batch(monkeypatch, capsys):
    bars = _CountedBars(monkeypatch)
    trainer = L.Trainer(max_epochs=3, logger=False, enable_checkpointing=False, enable_model_summary=False,
                        num_sanity_val_steps=0)
    trainer.fit(_WithValidation(), _loader(20), _loader(8))
    assert bars.built == [("Epoch 0", True)]  # one training bar, reset each epoch; no validation bar
    err = capsys.readouterr().err
    last_line = err.replace("\r", "\n").strip().splitlines()[-1]
    assert last_line.startswith("Epoch 2: 100%") and "10/10" in last_line and "val_loss=" in last_line


def test_a_long_validation_gets_its_bar_with_the_training_count_drawn_above_it(monkeypatch, capsys):
    bars = _CountedBars(monkeypatch)
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_model_summary=False,
                        num_sanity_val_steps=0)
    trainer.fit(_WithValidation(sleep=0.03), _loader(20), _loader(16))  # 8 batches x 30 ms: past 0.1 s
    assert bars.built == [("Epoch 0", True), ("Validation", False)]
    assert bars.shown_before_val == [10]  # every training batch, drawn before the validation bar appears
    err = capsys.readouterr().err
    shown = [int(n) for n in re.findall(r"Validation: (\d+)it", err)]
    assert shown and shown[0] >= 3 and shown == sorted(shown)  # first drawn once ~0.1 s of it had run


def test_from_datasets_passes_init_arguments_and_builds_loaders_like_lightning():
    class DM(L.LightningDataModule):
        def __init__(self, batch_size, tag="none"):
            super().__init__()
            self.batch_size, self.tag = batch_size, tag

    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            return iter(torch.arange(6.0).unsqueeze(1))

    rows = TensorDataset(torch.arange(10.0).unsqueeze(1))
    dm = DM.from_datasets(train_dataset=Stream(), val_dataset={"a": rows, "b": rows}, test_dataset=(rows,),
                          batch_size=4, num_workers=0, tag="given")
    assert (dm.batch_size, dm.tag) == (4, "given")  # batch_size goes to __init__ because it takes one
    train = dm.train_dataloader()
    assert [b.flatten().tolist() for b in train] == [[0.0, 1.0, 2.0, 3.0], [4.0, 5.0]]  # a stream is not shuffled
    val = dm.val_dataloader()
    assert sorted(val) == ["a", "b"] and all(type(v.sampler).__name__ == "SequentialSampler" for v in val.values())
    test = dm.test_dataloader()
    assert isinstance(test, tuple) and len(test) == 1 and test[0].batch_size == 4
    with pytest.raises(NotImplementedError, match="predict_dataloader"):
        dm.predict_dataloader()  # no predict dataset given: the base class's method stays
    plain = L.LightningDataModule.from_datasets(train_dataset=rows, batch_size=5)
    assert type(plain.train_dataloader().sampler).__name__ == "RandomSampler"
    assert plain.train_dataloader().batch_size == 5
