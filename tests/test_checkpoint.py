"""ModelCheckpoint options, trainer.save_checkpoint, ckpt_path resolution, atomic writes and loading errors."""
from __future__ import annotations

import os
import socket
import struct
import zipfile
from datetime import timedelta

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import ember as L
from ember.callbacks import ModelCheckpoint
from ember.checkpoint import CheckpointError, load_file, remove_stale_temp_files, save_atomic

QUIET = dict(enable_progress_bar=False, enable_model_summary=False)
N_BATCHES = 4


class Scored(L.LightningModule):
    """Logs ``score`` at each validation from a fixed list, so the ranking of checkpoints is known in advance."""

    def __init__(self, scores=(5.0, 3.0, 4.0, 1.0, 2.0), hidden: int = 8):
        super().__init__()
        self.save_hyperparameters()
        self.layer = torch.nn.Linear(2, hidden)
        self.head = torch.nn.Linear(hidden, 1)
        self.validations = 0

    def training_step(self, batch, batch_idx):
        loss = self.head(self.layer(batch[0])).pow(2).mean()
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        if batch_idx == 0:
            self.log("score", self.hparams.scores[self.validations % len(self.hparams.scores)])
            self.validations += 1

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01, momentum=0.9)


def data():
    x = torch.randn(N_BATCHES * 2, 2, generator=torch.Generator().manual_seed(0))
    return DataLoader(TensorDataset(x), batch_size=2), DataLoader(TensorDataset(x[:2]), batch_size=2)


def fit(root, callbacks=None, epochs=5, ckpt_path=None, model=None, val=True, weights_only=None, **kw):
    model = model or Scored()
    train, val_loader = data()
    options = dict(logger=False, num_sanity_val_steps=0, default_root_dir=root, **QUIET)
    options.update(kw)
    trainer = L.Trainer(max_epochs=epochs, callbacks=callbacks, **options)
    trainer.fit(model, train, val_loader if val else None, ckpt_path=ckpt_path, weights_only=weights_only)
    return model, trainer


def ckpts(directory):
    return sorted(n for n in os.listdir(directory) if n.endswith(".ckpt"))


# ---------------------------------------------------------------------------- default checkpointing
def test_default_checkpointing_keeps_the_latest_epoch_under_the_logger_version(in_tmp):
    model, trainer = fit(in_tmp, epochs=3, val=False, logger=None)
    directory = os.path.join(trainer.logger.save_dir, trainer.logger.name, "version_0", "checkpoints")
    assert ckpts(directory) == [f"epoch=2-step={3 * N_BATCHES}.ckpt"]
    assert trainer.checkpoint_callback.best_model_path == os.path.join(os.path.realpath(directory), ckpts(directory)[0])
    ckpt = load_file(trainer.checkpoint_callback.best_model_path)
    assert (ckpt["epoch"], ckpt["global_step"]) == (2, 3 * N_BATCHES)
    assert ckpt["ember"]["epoch_completed"]


# ---------------------------------------------------------------------------- names
def test_filename_templates_fill_metrics_like_lightning(tmp_path):
    cb = ModelCheckpoint(dirpath=tmp_path, filename="{epoch}-{step}-{val_loss:.2f}")
    metrics = {"epoch": torch.tensor(3), "step": torch.tensor(120), "val_loss": torch.tensor(0.12345)}
    assert os.path.basename(cb.format_checkpoint_name(metrics)) == "epoch=3-step=120-val_loss=0.12.ckpt"
    assert os.path.basename(cb.format_checkpoint_name(metrics, ver=2)) == "epoch=3-step=120-val_loss=0.12-v2.ckpt"
    cb = ModelCheckpoint(dirpath=tmp_path, filename="e{epoch:03d}_loss={val_loss:.1f}", auto_insert_metric_name=False)
    assert os.path.basename(cb.format_checkpoint_name(metrics)) == "e003_loss=0.1.ckpt"
    assert os.path.basename(ModelCheckpoint(filename="{missing}").format_checkpoint_name({})) == "missing=0.ckpt"


@pytest.mark.parametrize("kwargs,match", [
    (dict(mode="avg"), "mode"), (dict(save_top_k=-2), "save_top_k"), (dict(save_last="yes"), "save_last"),
    (dict(save_top_k=3), "monitor"), (dict(every_n_train_steps=2, every_n_epochs=2), "mutually exclusive"),
    (dict(every_n_epochs=-1), "every_n_epochs"),
])
def test_invalid_options_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ModelCheckpoint(**kwargs)


# ---------------------------------------------------------------------------- top-k, last
@pytest.mark.parametrize("mode,kept,best", [("min", [1.0, 2.0], 1.0), ("max", [5.0, 4.0], 5.0)])
def test_save_top_k_keeps_the_k_best_by_the_monitor(tmp_path, mode, kept, best):
    cb = ModelCheckpoint(dirpath=tmp_path, monitor="score", mode=mode, save_top_k=2, filename="{epoch}-{score:.0f}")
    fit(tmp_path, [cb])  # scores by epoch: 5, 3, 4, 1, 2
    assert sorted(float(v) for v in cb.best_k_models.values()) == sorted(kept)
    assert ckpts(tmp_path) == sorted(os.path.basename(p) for p in cb.best_k_models)
    assert float(cb.best_model_score) == best and f"score={best:.0f}" in cb.best_model_path
    assert float(cb.kth_value) == kept[1] and cb.kth_best_model_path in cb.best_k_models


def test_save_top_k_minus_one_keeps_all_and_zero_keeps_none_but_last(tmp_path):
    every = ModelCheckpoint(dirpath=tmp_path / "all", monitor="score", save_top_k=-1)
    none = ModelCheckpoint(dirpath=tmp_path / "none", monitor="score", save_top_k=0, save_last=True)
    fit(tmp_path, [every, none])
    assert len(ckpts(tmp_path / "all")) == 5 and len(every.best_k_models) == 5
    assert ckpts(tmp_path / "none") == ["last.ckpt"] and none.best_model_path == ""
    assert none.last_model_path == str(tmp_path / "none" / "last.ckpt")


def test_save_last_true_and_link(tmp_path):
    plain = ModelCheckpoint(dirpath=tmp_path / "plain", monitor="score", save_last=True)
    link = ModelCheckpoint(dirpath=tmp_path / "link", monitor="score", save_last="link", filename="best-{epoch}")
    fit(tmp_path, [plain, link])  # scores 5, 3, 4, 1, 2: top-1 saves at epochs 0, 1 and 3
    # As in Lightning, "last" follows each save (not each epoch): here the epoch-3 one.
    assert load_file(plain.last_model_path)["global_step"] == 4 * N_BATCHES
    last = tmp_path / "link" / "last.ckpt"
    assert last.is_symlink() and os.path.realpath(last) == os.path.realpath(link.best_model_path)
    assert load_file(str(last))["global_step"] == 4 * N_BATCHES


def test_every_n_train_steps_every_n_epochs_and_time_interval(tmp_path):
    steps = ModelCheckpoint(dirpath=tmp_path / "steps", every_n_train_steps=3, save_top_k=-1, filename="{step}")
    epochs = ModelCheckpoint(dirpath=tmp_path / "epochs", every_n_epochs=2, save_top_k=-1, filename="{epoch}")
    timed = ModelCheckpoint(dirpath=tmp_path / "timed", train_time_interval=timedelta(0), save_top_k=-1,
                            filename="{step}")
    fit(tmp_path, [steps, epochs, timed], epochs=3)
    assert ckpts(tmp_path / "steps") == sorted(f"step={s}.ckpt" for s in (3, 6, 9, 12))
    assert ckpts(tmp_path / "epochs") == ["epoch=1.ckpt"]
    assert len(ckpts(tmp_path / "timed")) == 3 * N_BATCHES  # an interval of 0 saves after every step


def test_save_on_train_epoch_end_false_saves_after_validation(tmp_path):
    order = []

    class Spy(L.Callback):
        def on_validation_end(self, trainer, pl_module):
            order.append(("validation_end", trainer.global_step))

    class Recording(ModelCheckpoint):
        def _save_file(self, trainer, path, drop=None):
            order.append(("save", trainer.global_step, trainer.evaluating))
            super()._save_file(trainer, path, drop)

    cb = Recording(dirpath=tmp_path, monitor="score", save_on_train_epoch_end=False)
    fit(tmp_path, [Spy(), cb], epochs=1)
    assert order == [("validation_end", N_BATCHES), ("save", N_BATCHES, "validate")]


def test_save_weights_only_cannot_resume_and_says_so(tmp_path):
    cb = ModelCheckpoint(dirpath=tmp_path, save_weights_only=True)
    _, trainer = fit(tmp_path, [cb], epochs=1)
    ckpt = load_file(cb.best_model_path)
    assert "optimizer_states" not in ckpt and "state_dict" in ckpt and "callbacks" not in ckpt
    with pytest.raises(CheckpointError, match="only the model weights"):
        fit(tmp_path / "again", epochs=2, ckpt_path=cb.best_model_path, enable_checkpointing=False)


def test_trainer_save_checkpoint_full_and_weights_only(tmp_path):
    model, trainer = fit(tmp_path, epochs=1, enable_checkpointing=False)
    trainer.save_checkpoint(tmp_path / "full.ckpt")
    trainer.save_checkpoint(tmp_path / "weights.ckpt", weights_only=True)
    full, weights = load_file(tmp_path / "full.ckpt"), load_file(tmp_path / "weights.ckpt")
    for key in ("state_dict", "epoch", "global_step", "hyper_parameters", "pytorch-lightning_version", "ember"):
        assert key in full and key in weights
    for key in ("optimizer_states", "lr_schedulers", "callbacks"):
        assert key in full and key not in weights
    assert full["ember"]["version"] == L.__version__ and full["hyper_parameters"]["hidden"] == 8
    assert {"python", "torch"} <= set(full["ember"]["rng"])
    for name, value in model.state_dict().items():
        assert torch.equal(full["state_dict"][name], value)


# ---------------------------------------------------------------------------- ckpt_path
class StartSpy(L.Callback):
    def __init__(self):
        self.starts = []

    def on_train_start(self, trainer, pl_module):
        self.starts.append((os.path.basename(trainer.ckpt_path or ""), trainer.current_epoch, trainer.global_step))


def test_ckpt_path_last_and_best_resolve_through_the_callback(tmp_path):
    spy = StartSpy()
    cb = ModelCheckpoint(dirpath=tmp_path, monitor="score", save_last=True)
    model, first = fit(tmp_path, [spy, cb], epochs=5)
    assert os.path.basename(cb.best_model_path) == "epoch=3-step=16.ckpt"  # score 1 at epoch 3
    first.max_epochs = 6
    first.fit(model, *data(), ckpt_path="best")  # same trainer: its callback knows the best file
    assert spy.starts[-1] == ("epoch=3-step=16.ckpt", 4, 4 * N_BATCHES)

    spy = StartSpy()
    _, trainer = fit(tmp_path, [spy, ModelCheckpoint(dirpath=tmp_path, monitor="score", save_last=True)], epochs=7,
                     ckpt_path="last")  # a new trainer finds last.ckpt (written with the epoch-3 save)
    assert spy.starts == [("last.ckpt", 4, 4 * N_BATCHES)] and trainer.global_step == 7 * N_BATCHES


def test_ckpt_path_last_without_any_checkpoint_warns_and_starts_fresh(tmp_path):
    cb = ModelCheckpoint(dirpath=tmp_path / "empty")
    with pytest.warns(UserWarning, match="found no checkpoint"):
        _, trainer = fit(tmp_path, [cb], epochs=1, ckpt_path="last")
    assert trainer.global_step == N_BATCHES and trainer.ckpt_path is None


# ---------------------------------------------------------------------------- atomic writes, crash safety
def test_a_failed_save_leaves_the_previous_file_and_no_temp_file(tmp_path):
    path = str(tmp_path / "a.ckpt")
    save_atomic({"state_dict": {"w": torch.ones(3)}}, path)
    with pytest.raises(AttributeError, match=r"Can't pickle local object .*<lambda>"):
        save_atomic({"state_dict": {"w": torch.zeros(3)}, "bad": lambda: None}, path)  # lambdas do not pickle
    assert os.listdir(tmp_path) == ["a.ckpt"]
    assert torch.equal(load_file(path)["state_dict"]["w"], torch.ones(3))


def test_stale_temp_files_of_dead_processes_are_removed(tmp_path):
    host = socket.gethostname()
    dead = tmp_path / f".tmp-{host}-999999999-abc.ckpt.part"
    alive = tmp_path / f".tmp-{host}-{os.getpid()}-abc.ckpt.part"
    other_host = tmp_path / ".tmp-elsewhere-1-abc.ckpt.part"
    for f in (dead, alive, other_host):
        f.write_bytes(b"partial")
    assert remove_stale_temp_files(str(tmp_path)) == [dead.name]
    assert sorted(os.listdir(tmp_path)) == sorted([alive.name, other_host.name])


def test_top_k_survives_a_crash_between_saving_the_new_file_and_deleting_the_old(tmp_path):
    class Crash(Exception):
        pass

    class CrashOnDelete(ModelCheckpoint):  # the state key holds the class name: resume with the same class
        crash = True

        def _remove(self, trainer, path):
            if self.crash:
                raise Crash(path)  # the process "dies" right after the new file is complete
            super()._remove(trainer, path)

    cb = CrashOnDelete(dirpath=tmp_path, monitor="score", save_top_k=1, filename="{epoch}")
    with pytest.raises(Crash):
        fit(tmp_path, [cb], epochs=5)  # scores 5 then 3: epoch=1 replaces epoch=0
    assert ckpts(tmp_path) == ["epoch=0.ckpt", "epoch=1.ckpt"]  # the old file outlived the crash
    resumed = CrashOnDelete(dirpath=tmp_path, monitor="score", save_top_k=1, filename="{epoch}")
    resumed.crash = False
    fit(tmp_path, [resumed], epochs=2, ckpt_path=str(tmp_path / "epoch=1.ckpt"))
    assert ckpts(tmp_path) == ["epoch=1.ckpt"]  # the resumed run finished the deletion
    assert resumed.best_model_path == str(tmp_path / "epoch=1.ckpt") and float(resumed.best_model_score) == 3.0


# ---------------------------------------------------------------------------- loading errors
@pytest.fixture
def saved(tmp_path):
    model, trainer = fit(tmp_path, epochs=1, enable_checkpointing=False)
    path = str(tmp_path / "model.ckpt")
    trainer.save_checkpoint(path)
    return path


def test_truncated_and_corrupt_files_get_a_clear_error_naming_the_file(saved, tmp_path):
    data = open(saved, "rb").read()
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"truncated\.ckpt.*truncated"):
        load_file(truncated)
    # Flip bytes in the middle of the largest tensor's data: torch.load alone would load the wrong numbers.
    with zipfile.ZipFile(saved) as archive:
        info = max(archive.infolist(), key=lambda i: i.file_size)
    name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26:info.header_offset + 30])
    middle = info.header_offset + 30 + name_len + extra_len + info.file_size // 2
    corrupt = bytearray(data)
    corrupt[middle:middle + 8] = bytes(b ^ 0xFF for b in corrupt[middle:middle + 8])
    damaged = tmp_path / "damaged.ckpt"
    damaged.write_bytes(bytes(corrupt))
    with pytest.raises(CheckpointError, match=r"damaged\.ckpt.*CRC-32"):
        Scored.load_from_checkpoint(damaged)
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_file(empty)
    torch.save(torch.ones(2), tmp_path / "tensor.ckpt")
    with pytest.raises(CheckpointError, match="not a training checkpoint"):
        load_file(tmp_path / "tensor.ckpt")


def test_mismatched_keys_list_missing_and_unexpected_and_strict_false_loads(saved):
    class Other(L.LightningModule):
        def __init__(self, **kwargs):
            super().__init__()
            self.layer = torch.nn.Linear(2, 8)
            self.extra = torch.nn.Linear(8, 1)

    with pytest.raises(CheckpointError) as info:
        Other.load_from_checkpoint(saved)
    text = str(info.value)
    assert "model.ckpt" in text and "extra.weight" in text and "head.weight" in text and "strict=False" in text
    model = Other.load_from_checkpoint(saved, strict=False)
    assert torch.equal(model.layer.weight, load_file(saved)["state_dict"]["layer.weight"])
    with pytest.raises(CheckpointError, match="shape"):
        Scored.load_from_checkpoint(saved, hidden=4)


def test_checkpoint_from_a_future_ember_is_refused(saved, tmp_path):
    ckpt = load_file(saved)
    ckpt["ember"].update(version="99.0.0", format=ckpt["ember"]["format"] + 1)
    torch.save(ckpt, tmp_path / "future.ckpt")
    with pytest.raises(CheckpointError, match=r"ember 99\.0\.0.*Upgrade ember"):
        Scored.load_from_checkpoint(tmp_path / "future.ckpt")


class Opaque:
    """Not a tensor or a plain value: torch.load(weights_only=True) refuses it."""

    def __init__(self, n):
        self.n = n


def test_unsafe_content_needs_weights_only_false_and_says_so(tmp_path):
    model, trainer = fit(tmp_path, epochs=1, enable_checkpointing=False, model=Scored(hidden=8))
    model.hparams["opaque"] = Opaque(3)
    path = tmp_path / "unsafe.ckpt"
    trainer.save_checkpoint(path)
    with pytest.raises(CheckpointError, match=r"(?s)unsafe\.ckpt.*Opaque.*weights_only=False"):
        Scored.load_from_checkpoint(path)
    loaded = Scored.load_from_checkpoint(path, weights_only=False)
    assert torch.equal(loaded.head.weight, model.head.weight)
    with pytest.raises(CheckpointError, match="weights_only=False"):
        fit(tmp_path / "r", epochs=2, ckpt_path=str(path), enable_checkpointing=False)
    _, resumed = fit(tmp_path / "r", epochs=2, ckpt_path=str(path), enable_checkpointing=False, weights_only=False)
    assert resumed.global_step == 2 * N_BATCHES
    evaluator = L.Trainer(logger=False, default_root_dir=tmp_path, **QUIET)
    with pytest.raises(CheckpointError, match="weights_only=False"):
        evaluator.validate(Scored(), data()[1], ckpt_path=str(path), verbose=False)
    evaluated = Scored()
    results = evaluator.validate(evaluated, data()[1], ckpt_path=str(path), weights_only=False, verbose=False)
    assert results == [{"score": 5.0}]  # the first of the scores, logged by the one validation
    for name, value in model.state_dict().items():  # and it ran with the checkpoint's weights
        assert torch.equal(evaluated.state_dict()[name], value), name


def test_load_from_checkpoint_rebuilds_from_hparams_with_overrides(saved):
    model = Scored.load_from_checkpoint(saved)
    assert model.hparams.hidden == 8 and model.training  # train mode, as Lightning returns it
    assert torch.equal(model.layer.weight, load_file(saved)["state_dict"]["layer.weight"])
    assert Scored.load_from_checkpoint(saved, scores=(9.0,)).hparams.scores == (9.0,)


# ---------------------------------------------------------------------------- test / predict from a checkpoint
class Evaluated(Scored):
    def test_step(self, batch, batch_idx):
        self.log("test_out", self.head(self.layer(batch[0])).mean())

    def predict_step(self, batch, batch_idx):
        return self.head(self.layer(batch[0]))


def _outputs_of(path, loader):
    """What the checkpoint's weights compute on ``loader``, without any Trainer."""
    reference = Evaluated()
    reference.load_state_dict(load_file(path)["state_dict"])
    with torch.no_grad():
        return [reference.head(reference.layer(batch[0])) for batch in loader]


def _same_weights(model, path):
    saved = load_file(path)["state_dict"]
    return all(torch.equal(saved[k], v) for k, v in model.state_dict().items())


def test_test_and_predict_load_the_checkpoint_they_are_given(tmp_path):
    cb = ModelCheckpoint(dirpath=tmp_path, monitor="score", save_last=True, filename="{epoch}")
    model, trainer = fit(tmp_path, [cb], model=Evaluated())  # scores 5, 3, 4, 1, 2: best is epoch 3
    assert os.path.basename(cb.best_model_path) == "epoch=3.ckpt"
    assert not _same_weights(model, cb.best_model_path)  # the model ended at epoch 4
    trainer.save_checkpoint(tmp_path / "end.ckpt")
    test_loader = data()[0]

    results = trainer.test(model, test_loader, ckpt_path="best", verbose=False)
    assert _same_weights(model, cb.best_model_path)
    expected = torch.cat(_outputs_of(cb.best_model_path, test_loader)).view(N_BATCHES, 2).mean(1)
    assert results == [{"test_out": pytest.approx(float(expected.mean()), rel=1e-6)}]

    predictions = trainer.predict(model, test_loader, ckpt_path="last")
    assert _same_weights(model, cb.last_model_path) and cb.last_model_path.endswith("last.ckpt")
    reference = _outputs_of(cb.last_model_path, test_loader)
    assert len(predictions) == len(reference) == N_BATCHES
    assert all(torch.equal(p, r) for p, r in zip(predictions, reference))

    # An explicit path, in a new Trainer, into a freshly initialised model.
    fresh = Evaluated()
    path = str(tmp_path / "end.ckpt")
    assert not _same_weights(fresh, path)
    again = L.Trainer(logger=False, default_root_dir=tmp_path / "eval", **QUIET).test(fresh, test_loader,
                                                                                      ckpt_path=path, verbose=False)
    assert _same_weights(fresh, path)
    expected = torch.cat(_outputs_of(path, test_loader)).view(N_BATCHES, 2).mean(1)
    assert again == [{"test_out": pytest.approx(float(expected.mean()), rel=1e-6)}]
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        L.Trainer(logger=False, **QUIET).predict(Evaluated(), test_loader, ckpt_path=str(tmp_path / "missing.ckpt"))
