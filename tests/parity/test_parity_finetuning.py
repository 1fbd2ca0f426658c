"""BaseFinetuning / BackboneFinetuning against Lightning 2.6.6: which parameters train at each epoch, the
optimizer's groups and their lrs per epoch, the weights after training, and a resume after the unfreeze."""
from __future__ import annotations

import contextlib
import io
import warnings

import pytest
import torch
from parity_harness import assert_same_weights, lightning, loader, quiet, run_both, weights

import ember


def _finetune_module(L):
    class Finetuned(L.LightningModule):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.backbone = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.ReLU(),
                                                torch.nn.Linear(4, 4))
            self.head = torch.nn.Linear(4, 1)

        def forward(self, x):
            return self.head(self.backbone(x))

        def training_step(self, batch, batch_idx):
            x, y = batch
            return torch.nn.functional.mse_loss(self(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(filter(lambda p: p.requires_grad, self.parameters()), lr=0.05, momentum=0.9)

    return Finetuned


def _epoch_recorder(L, seen):
    def record(trainer, pl_module):
        opt = trainer.optimizers[0]
        seen.append({"epoch": trainer.current_epoch,
                     "trainable": sorted(n for n, p in pl_module.named_parameters() if p.requires_grad),
                     "groups": [(len(g["params"]), g["lr"]) for g in opt.param_groups],
                     "bn_tracks": pl_module.backbone[1].track_running_stats})

    return L.pytorch.callbacks.LambdaCallback(on_train_epoch_start=record)


def _backbone_program(L, tmp_path, epochs=4, resume_at=None, **finetune_kw):
    seen = []

    def fit(max_epochs, ckpt_path=None):
        cb = L.pytorch.callbacks.BackboneFinetuning(**finetune_kw)
        model = _finetune_module(L)()
        trainer = L.Trainer(max_epochs=max_epochs, callbacks=[cb, _epoch_recorder(L, seen)],
                            **quiet(tmp_path, limit_val_batches=0))
        trainer.fit(model, train_dataloaders=loader(n=16, batch_size=4), ckpt_path=ckpt_path)
        return trainer, model, cb

    if resume_at is None:
        trainer, model, cb = fit(epochs)
    else:
        trainer, _, _ = fit(resume_at)
        path = str(tmp_path / f"{L.__name__}-finetune.ckpt")
        trainer.save_checkpoint(path)
        trainer, model, cb = fit(epochs, ckpt_path=path)
    return {"seen": seen, "weights": weights(model), "previous_backbone_lr": cb.previous_backbone_lr,
            "final_groups": [(len(g["params"]), g["lr"]) for g in trainer.optimizers[0].param_groups],
            "momentum_buffers": [trainer.optimizers[0].state[p]["momentum_buffer"].clone()
                                 for g in trainer.optimizers[0].param_groups for p in g["params"]]}


FINETUNE = dict(unfreeze_backbone_at_epoch=1, lambda_func=lambda epoch: 1.5, backbone_initial_ratio_lr=0.1,
                should_align=True)


def _assert_same(a, b):
    assert a["seen"] == b["seen"]
    assert_same_weights(a["weights"], b["weights"])
    assert a["previous_backbone_lr"] == b["previous_backbone_lr"]
    assert a["final_groups"] == b["final_groups"]
    assert len(a["momentum_buffers"]) == len(b["momentum_buffers"])
    for x, y in zip(a["momentum_buffers"], b["momentum_buffers"]):
        assert torch.equal(x, y)


def test_backbone_finetuning_unfreezes_on_schedule_like_lightning(tmp_path):
    a, b = run_both(_backbone_program, tmp_path=tmp_path, **FINETUNE)
    _assert_same(a, b)
    # the numbers themselves: epoch 0 trains the head and the batch norm (train_bn keeps it trainable), the
    # backbone joins at epoch 1 as a second group at 0.05 * 0.1, then grows by 1.5 per epoch
    head_and_bn = ["backbone.1.bias", "backbone.1.weight", "head.bias", "head.weight"]
    assert b["seen"][0] == {"epoch": 0, "trainable": head_and_bn, "groups": [(4, 0.05)], "bn_tracks": True}
    assert b["seen"][1]["trainable"] == sorted(head_and_bn + ["backbone.0.bias", "backbone.0.weight",
                                                              "backbone.3.bias", "backbone.3.weight"])
    lrs = [s["groups"][-1][1] for s in b["seen"]]
    assert [s["groups"][-1][0] for s in b["seen"][1:]] == [4, 4, 4]
    assert lrs[1:] == pytest.approx([0.005, 0.0075, 0.01125], rel=1e-12)
    assert b["weights"]["backbone.0.weight"].ne(_finetune_module(ember)().backbone[0].weight).all()  # it trained


def test_backbone_finetuning_aligns_with_the_head_lr_and_freezes_batch_norm(tmp_path):
    kw = dict(unfreeze_backbone_at_epoch=0, lambda_func=lambda epoch: 4.0, backbone_initial_lr=0.02,
              should_align=True, train_bn=False)
    a, b = run_both(_backbone_program, tmp_path=tmp_path, epochs=3, **kw)
    _assert_same(a, b)
    assert [s["groups"] for s in b["seen"]] == [[(4, 0.05), (4, 0.02)], [(4, 0.05), (4, 0.05)],
                                                [(4, 0.05), (4, 0.05)]]  # 0.02 * 4 > 0.05: aligned


def test_backbone_finetuning_resumes_with_the_unfrozen_groups(tmp_path):
    straight_l, straight_e = run_both(_backbone_program, tmp_path=tmp_path / "straight", **FINETUNE)
    resumed_l, resumed_e = run_both(_backbone_program, tmp_path=tmp_path / "resumed", resume_at=2, **FINETUNE)
    _assert_same(straight_l, straight_e)
    # ember: the fit resumed at epoch 2 (after the unfreeze) continues the straight one exactly: the groups
    # and their lrs, which parameters train, the momentum buffers and the weights, bitwise.
    assert len(resumed_e["seen"]) == 4
    assert resumed_e["seen"] == straight_e["seen"]
    assert resumed_e["seen"][2]["groups"] == [(4, 0.05), pytest.approx((4, 0.0075), rel=1e-12)]
    _assert_same(resumed_e, straight_e)
    # On purpose unlike Lightning 2.6.6: it rebuilds the groups too, but setup() has frozen the backbone again
    # (freeze_before_training) and nothing unfreezes it, so after a resume the backbone sits in the optimizer
    # without gradients and stops training. ember makes the rebuilt groups trainable again.
    assert resumed_l["seen"][:2] == straight_l["seen"][:2]
    assert [s["groups"] for s in resumed_l["seen"]] == [s["groups"] for s in straight_l["seen"]]
    assert "backbone.0.weight" not in resumed_l["seen"][2]["trainable"]
    assert "backbone.0.weight" in resumed_e["seen"][2]["trainable"]
    assert not torch.equal(resumed_l["weights"]["backbone.0.weight"], straight_l["weights"]["backbone.0.weight"])


def _base_program(L, tmp_path):
    seen = []

    class FreezeFirstLayer(L.pytorch.callbacks.BaseFinetuning):
        def freeze_before_training(self, pl_module):
            self.freeze(pl_module.backbone[0])

        def finetune_function(self, pl_module, epoch, optimizer):
            if epoch == 1:
                self.unfreeze_and_add_param_group(pl_module.backbone[0], optimizer, initial_denom_lr=5.0)

    model = _finetune_module(L)()
    trainer = L.Trainer(max_epochs=3, callbacks=[FreezeFirstLayer(), _epoch_recorder(L, seen)],
                        **quiet(tmp_path, limit_val_batches=0))
    trainer.fit(model, train_dataloaders=loader(n=16, batch_size=4))
    flat = [type(m).__name__ for m in L.pytorch.callbacks.BaseFinetuning.flatten_modules([model.backbone, model.head])]
    frozen_bn = torch.nn.BatchNorm1d(2)
    L.pytorch.callbacks.BaseFinetuning.freeze(frozen_bn, train_bn=False)
    return {"seen": seen, "weights": weights(model), "flat": flat,
            "bn": (frozen_bn.weight.requires_grad, frozen_bn.track_running_stats),
            "trainable_bn": len(list(L.pytorch.callbacks.BaseFinetuning.filter_params(model.backbone, train_bn=False)))}


def test_base_finetuning_subclass_and_tools_match_lightning(tmp_path):
    a, b = run_both(_base_program, tmp_path=tmp_path)
    assert a["seen"] == b["seen"] and a["flat"] == b["flat"] and a["bn"] == b["bn"]
    assert a["trainable_bn"] == b["trainable_bn"] == 4  # backbone.0 and backbone.3 (batch norm left out)
    assert_same_weights(a["weights"], b["weights"])
    assert b["seen"][1]["groups"] == [(6, 0.05), (2, 0.01)]  # 0.05 / initial_denom_lr
    assert b["flat"] == ["Linear", "BatchNorm1d", "ReLU", "Linear", "Linear"]
    assert b["bn"] == (False, False)


def test_ember_resumes_lightnings_finetuning_checkpoint(tmp_path):
    """A checkpoint Lightning wrote after the unfreeze: ember rebuilds its groups and goes on exactly."""
    seen = []
    cb = lightning.pytorch.callbacks.BackboneFinetuning(**FINETUNE)
    trainer = lightning.Trainer(max_epochs=2, callbacks=[cb], **quiet(tmp_path, limit_val_batches=0))
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        trainer.fit(_finetune_module(lightning)(), train_dataloaders=loader(n=16, batch_size=4))
        path = str(tmp_path / "lightning.ckpt")
        trainer.save_checkpoint(path)
        model = _finetune_module(ember)()
        resumed = ember.Trainer(max_epochs=4, callbacks=[ember.callbacks.BackboneFinetuning(**FINETUNE),
                                                         _epoch_recorder(ember, seen)],
                                **quiet(tmp_path, limit_val_batches=0))
        resumed.fit(model, train_dataloaders=loader(n=16, batch_size=4), ckpt_path=path)
    straight = _backbone_program(ember, tmp_path / "straight", **FINETUNE)
    assert seen == straight["seen"][2:]  # the groups, lrs and trainable parameters of epochs 2 and 3
    assert_same_weights(weights(model), straight["weights"])
