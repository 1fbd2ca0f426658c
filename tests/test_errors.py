"""Bad input gets a clear error, raised before any work is lost."""
import math

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import ember as L
from boring import BoringLinear, sum_loader
from statquest_model import QUIET, dataloader, make_class


Linear = BoringLinear
_loader = sum_loader


def test_module_without_training_step_fails_at_fit_start():
    class NoStep(L.LightningModule):
        def configure_optimizers(self):
            return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)

    with pytest.raises(NotImplementedError, match=r"NoStep has no training_step\(batch, batch_idx\)"):
        L.Trainer(max_epochs=1, **QUIET).fit(NoStep(), _loader())


def test_module_without_configure_optimizers_fails_at_fit_start():
    class NoOpt(Linear):
        configure_optimizers = L.LightningModule.configure_optimizers

    with pytest.raises(NotImplementedError, match=r"NoOpt has no configure_optimizers\(\)"):
        L.Trainer(max_epochs=1, **QUIET).fit(NoOpt(), _loader())


@pytest.mark.parametrize("returned, fragment", [
    (None, "configure_optimizers() returned None"),
    ("sgd", "returned str"),
    ([], "returned an empty list"),
    ({"lr_scheduler": None}, "dict without 'optimizer'"),
    ({"optimizer": 3}, "'optimizer' holds int"),
])
def test_unusable_configure_optimizers_return_is_named(returned, fragment):
    class Bad(Linear):
        def configure_optimizers(self):
            return returned

    model = Bad()
    before = model.layer.weight.detach().clone()
    with pytest.raises(ValueError) as info:
        L.Trainer(max_epochs=1, **QUIET).fit(model, _loader())
    assert fragment in str(info.value)
    assert "it must return" in str(info.value) or "not an optimizer" in str(info.value) or "'optimizer'" in str(info.value)
    assert torch.equal(model.layer.weight, before)


@pytest.mark.parametrize("form", ["optimizer", "list", "tuple_of_lists", "dict", "dict_with_scheduler_dict"])
def test_every_configure_optimizers_form_trains(form):
    class Forms(Linear):
        def configure_optimizers(self):
            opt = torch.optim.SGD(self.parameters(), lr=0.1)
            sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
            return {
                "optimizer": opt,
                "list": [opt],
                "tuple_of_lists": ([opt], [sched]),
                "dict": {"optimizer": opt, "lr_scheduler": sched},
                "dict_with_scheduler_dict": {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}},
            }[form]

    model = Forms()
    trainer = L.Trainer(max_epochs=2, **QUIET)
    trainer.fit(model, _loader())
    assert trainer.global_step == 8
    lr = trainer.optimizers[0].param_groups[0]["lr"]
    expected = {"optimizer": 0.1, "list": 0.1, "tuple_of_lists": 0.1 * 0.5**2, "dict": 0.1 * 0.5**2,
                "dict_with_scheduler_dict": 0.1 * 0.5**8}[form]
    assert lr == pytest.approx(expected)


def test_empty_dataloader_fails_before_training():
    empty = DataLoader(TensorDataset(torch.zeros(0, 2), torch.zeros(0, 1)), batch_size=2)
    with pytest.raises(ValueError, match="training dataloader is empty"):
        L.Trainer(max_epochs=1, **QUIET).fit(Linear(), empty)


def test_non_scalar_loss_is_named_with_its_shape():
    class Vector(Linear):
        def training_step(self, batch, batch_idx):
            x, y = batch
            return (self.layer(x) - y) ** 2  # shape (2, 1): forgot .mean()

    with pytest.raises(ValueError, match=r"loss of shape \(2, 1\); the loss must be a scalar"):
        L.Trainer(max_epochs=1, **QUIET).fit(Vector(), _loader())


def test_loss_without_grad_is_explained():
    class Detached(Linear):
        def training_step(self, batch, batch_idx):
            return super().training_step(batch, batch_idx).detach()

    with pytest.raises(ValueError, match="does not require grad"):
        L.Trainer(max_epochs=1, **QUIET).fit(Detached(), _loader())


def test_training_step_may_return_a_dict_or_none():
    class Mixed(Linear):
        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            if batch_idx == 1:
                return None  # skipped: no backward, no change to the weights
            return {"loss": loss, "extra": 1}

    model = Mixed()
    trainer = L.Trainer(max_epochs=1, **QUIET)
    seen = []

    class Spy(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            seen.append((batch_idx, None if outputs is None else sorted(outputs)))

    trainer.callbacks.append(Spy())
    trainer.fit(model, _loader())
    # A skipped step hands {} to on_train_batch_end, as Lightning does (tests/parity checks it live).
    assert seen == [(0, ["extra", "loss"]), (1, []), (2, ["extra", "loss"]), (3, ["extra", "loss"])]


def test_nan_loss_names_epoch_and_step_and_keeps_last_good_weights():
    class GoesNan(Linear):
        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            if self.trainer.global_step == 5:
                self.good_weight = self.layer.weight.detach().clone()
                return loss * float("nan")
            return loss

    model = GoesNan()
    trainer = L.Trainer(max_epochs=3, **QUIET)
    with pytest.raises(FloatingPointError) as info:
        trainer.fit(model, _loader())
    message = str(info.value)
    assert "nan" in message and "epoch 1, step 5" in message
    assert torch.equal(model.layer.weight, model.good_weight)
    assert all(math.isfinite(v) for v in model.layer.weight.flatten().tolist())


def test_inf_loss_is_caught_too():
    class GoesInf(Linear):
        def training_step(self, batch, batch_idx):
            return super().training_step(batch, batch_idx) * float("inf")

    with pytest.raises(FloatingPointError, match="inf at epoch 0, step 0"):
        L.Trainer(max_epochs=1, **QUIET).fit(GoesInf(), _loader())


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(max_epochs=-5), "max_epochs=-5"),
    (dict(max_epochs=2.5), "max_epochs=2.5"),
    (dict(max_steps=-3), "max_steps=-3"),
    (dict(min_epochs=-1), "min_epochs=-1"),
    (dict(limit_train_batches=1.5), "limit_train_batches=1.5"),
    (dict(limit_val_batches=-2), "limit_val_batches=-2"),
    (dict(log_every_n_steps=-1), "log_every_n_steps=-1"),
    (dict(accumulate_grad_batches=0), "accumulate_grad_batches=0"),
    (dict(gradient_clip_val=-1.0), "gradient_clip_val=-1.0"),
    (dict(gradient_clip_algorithm="l3"), "gradient_clip_algorithm='l3'"),
    (dict(val_check_interval=1.5), "val_check_interval=1.5"),
    (dict(check_val_every_n_epoch=0), "check_val_every_n_epoch=0"),
    (dict(num_sanity_val_steps=-2), "num_sanity_val_steps=-2"),
    (dict(max_time="soon"), "max_time='soon'"),
    (dict(deterministic="yes"), "deterministic='yes'"),
    (dict(precision="8-bit"), "precision='8-bit'"),
    (dict(devices=0), "devices=0"),
    (dict(devices="abc"), "devices='abc'"),
])
def test_impossible_trainer_arguments_are_rejected_with_name_value_and_allowed(kwargs, fragment):
    with pytest.raises(ValueError) as info:
        L.Trainer(**kwargs)
    message = str(info.value)
    assert fragment in message and "allowed" in message


def test_unknown_accelerator_lists_the_known_ones():
    with pytest.raises(ValueError) as info:
        L.Trainer(accelerator="tpu9000")
    assert "accelerator='tpu9000'" in str(info.value) and "'cuda'" in str(info.value) and "'cpu'" in str(info.value)


@pytest.mark.parametrize("flag, value", [("plugins", ["x"]), ("model_registry", "m"), ("sync_batchnorm", True)])
def test_flags_ember_does_not_implement_are_refused_by_name(flag, value):
    with pytest.raises(NotImplementedError, match=f"Trainer\\({flag}="):
        L.Trainer(**{flag: value})


def test_fit_with_a_plain_nn_module_explains_what_is_needed():
    with pytest.raises(TypeError, match="needs an ember.LightningModule; got Linear"):
        L.Trainer(max_epochs=1, **QUIET).fit(torch.nn.Linear(2, 1), _loader())


@pytest.mark.parametrize("flag, value", [("enable_checkpointing", True), ("enable_progress_bar", True),
                                         ("enable_model_summary", True), ("log_every_n_steps", 10),
                                         ("num_sanity_val_steps", 2), ("fast_dev_run", 1), ("detect_anomaly", True)])
def test_barebones_refuses_a_feature_it_switches_off(flag, value):
    with pytest.raises(ValueError, match=rf"Trainer\(barebones=True, {flag}={value!r}\) is not valid"):
        L.Trainer(barebones=True, **{flag: value})


def test_barebones_refuses_a_logger():
    from ember.loggers import CSVLogger

    with pytest.raises(ValueError, match=r"Trainer\(barebones=True, logger=<.*CSVLogger.*\) is not valid"):
        L.Trainer(barebones=True, logger=CSVLogger("unused"))
    assert L.Trainer(barebones=True, logger=False, num_sanity_val_steps=0).num_sanity_val_steps == 0
