"""Optimization parity: every configure_optimizers form, schedulers, accumulation, clipping, manual optimization."""
from __future__ import annotations

import pytest
import torch
from parity_harness import assert_same_run, run_both, run_program


def _lr_spy(L):
    class LrSpy(L.Callback):
        lrs: list = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.lrs.append([g["lr"] for o in trainer.optimizers for g in o.param_groups])

        def on_train_epoch_end(self, trainer, pl_module):
            self.lrs.append(("epoch_end", [g["lr"] for o in trainer.optimizers for g in o.param_groups]))

    spy = LrSpy()
    spy.lrs = []
    return [spy]


def _same(tmp_path, exact=True, **kw):
    a, b = run_both(run_program, tmp_path=tmp_path, callbacks=_lr_spy, **kw)
    assert_same_run(a, b, exact=exact)
    lrs = [cb.lrs for r in (a, b) for cb in r["trainer"].callbacks if hasattr(cb, "lrs")]
    assert lrs[0] == lrs[1]  # the scheduler lrs, batch by batch
    return a, b


def _sgd(m, lr=0.1):
    return torch.optim.SGD(m.parameters(), lr=lr, momentum=0.9)


FORMS = {
    "optimizer": lambda m: _sgd(m),
    "list": lambda m: [_sgd(m)],
    "tuple-of-lists": lambda m: ([o := _sgd(m)], [torch.optim.lr_scheduler.StepLR(o, 1, gamma=0.5)]),
    "dict": lambda m: {"optimizer": (o := _sgd(m)), "lr_scheduler": torch.optim.lr_scheduler.ExponentialLR(o, 0.7)},
    "dict-step-frequency": lambda m: {"optimizer": (o := _sgd(m)), "lr_scheduler": {
        "scheduler": torch.optim.lr_scheduler.StepLR(o, 1, gamma=0.8), "interval": "step", "frequency": 3}},
    "dict-epoch-frequency": lambda m: {"optimizer": (o := _sgd(m)), "lr_scheduler": {
        "scheduler": torch.optim.lr_scheduler.StepLR(o, 1, gamma=0.5), "interval": "epoch", "frequency": 2}},
    "plateau-val": lambda m: {"optimizer": (o := _sgd(m)), "lr_scheduler": {
        "scheduler": torch.optim.lr_scheduler.ReduceLROnPlateau(o, patience=0, factor=0.5), "monitor": "val_loss"}},
    "plateau-top-level-monitor": lambda m: {"optimizer": (o := _sgd(m)), "monitor": "train_loss_epoch",
                                            "lr_scheduler": torch.optim.lr_scheduler.ReduceLROnPlateau(o, patience=0)},
    "plateau-step": lambda m: {"optimizer": (o := _sgd(m)), "lr_scheduler": {
        "scheduler": torch.optim.lr_scheduler.ReduceLROnPlateau(o, patience=1, factor=0.5), "monitor": "train_loss_step",
        "interval": "step", "frequency": 2}},
    "named-groups-adam": lambda m: torch.optim.Adam([{"params": [m.layer.weight], "lr": 0.05, "name": "w"},
                                                     {"params": [m.layer.bias], "lr": 0.01, "name": "b"}]),
}


@pytest.mark.parametrize("form", list(FORMS))
def test_configure_optimizers_forms(tmp_path, form):
    _same(tmp_path, model=dict(configure=FORMS[form]), trainer=dict(max_epochs=4))


@pytest.mark.parametrize("trainer", [
    dict(accumulate_grad_batches=3),  # 4 batches: the last window has 1 batch and steps anyway
    dict(accumulate_grad_batches=2, gradient_clip_val=0.05),
    dict(accumulate_grad_batches=3, gradient_clip_val=0.01, gradient_clip_algorithm="value"),
    dict(gradient_clip_val=0.1, gradient_clip_algorithm="norm"),
], ids=["accumulate", "accumulate+clip-norm", "accumulate+clip-value", "clip-norm"])
def test_accumulation_and_clipping(tmp_path, trainer):
    sched = FORMS["dict-step-frequency"]
    _same(tmp_path, model=dict(configure=sched), trainer=dict(max_epochs=2, **trainer))


def test_custom_optimizer_step_and_zero_grad(tmp_path):
    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None):
        # lr warm-up over the first 3 steps, the documented Lightning pattern
        scale = min(1.0, (self.trainer.global_step + 1) / 3)
        for g in optimizer.param_groups:
            g["lr"] = scale * 0.1
        optimizer.step(closure=optimizer_closure)

    def optimizer_zero_grad(self, epoch, batch_idx, optimizer):
        optimizer.zero_grad(set_to_none=False)

    _same(tmp_path, model=dict(optimizer_step=optimizer_step, optimizer_zero_grad=optimizer_zero_grad))


def test_lbfgs_closure(tmp_path):
    _same(tmp_path, model=dict(configure=lambda m: torch.optim.LBFGS(m.parameters(), lr=0.1, max_iter=3)),
          trainer=dict(max_epochs=1))


def _gan_like_training_step(self, batch, batch_idx):
    # Two optimizers, stepped by hand: the documented manual-optimization pattern.
    x, y = batch
    opt_a, opt_b = self.optimizers()
    self.toggle_optimizer(opt_a)
    loss_a = torch.nn.functional.mse_loss(self.layer(x), y)
    self.manual_backward(loss_a)
    self.clip_gradients(opt_a, gradient_clip_val=0.5, gradient_clip_algorithm="norm")
    opt_a.step()
    opt_a.zero_grad()
    self.untoggle_optimizer(opt_a)
    if batch_idx % 2 == 1:
        with self.toggled_optimizer(opt_b):
            loss_b = (self.head(self.layer(x)) - y).pow(2).mean()
            self.manual_backward(loss_b)
            opt_b.step()
            opt_b.zero_grad()
    sched_a, _ = self.lr_schedulers()
    if self.trainer.is_last_batch:
        sched_a.step()
    self.log("loss_a", loss_a, prog_bar=True)


@pytest.mark.parametrize("form", ["lists", "dicts"])
def test_manual_optimization_two_optimizers(tmp_path, form):
    def init_head(L):
        def configure(m):
            a = torch.optim.SGD(m.layer.parameters(), lr=0.1)
            b = torch.optim.Adam(m.head.parameters(), lr=0.01)
            sa, sb = torch.optim.lr_scheduler.StepLR(a, 1, 0.5), torch.optim.lr_scheduler.StepLR(b, 1, 0.5)
            if form == "dicts":
                return [{"optimizer": a, "lr_scheduler": sa}, {"optimizer": b, "lr_scheduler": {"scheduler": sb}}]
            return [a, b], [sa, sb]
        return configure

    def program(L, tmp_path):
        from parity_harness import boring_class, quiet, recording, recording_callback, weights

        calls = []
        cls = boring_class(L, configure=init_head(L), training_step=_gan_like_training_step)
        orig_init = cls.__init__

        def __init__(self):
            orig_init(self)
            self.automatic_optimization = False
            torch.manual_seed(1)
            self.head = torch.nn.Linear(1, 1)

        cls.__init__ = __init__
        m = recording(cls, calls)()
        t = L.Trainer(**quiet(tmp_path, max_epochs=2, callbacks=[recording_callback(L, calls)]))
        t.fit(m)
        lrs = [g["lr"] for o in t.optimizers for g in o.param_groups]
        return calls, weights(m), t.global_step, lrs, dict(t.callback_metrics)

    a, b = run_both(program, tmp_path=tmp_path)
    from parity_harness import assert_same_metrics, assert_same_weights, first_difference

    assert a[0] == b[0], first_difference(a[0], b[0])
    assert_same_weights(a[1], b[1])
    assert a[2:4] == b[2:4]  # global_step counts every optimizer.step(); the lrs
    assert a[2] == 2 * 4 + 4  # 2 epochs x (4 steps of A + 2 of B)
    assert_same_metrics(a[4], b[4])
