"""ModelPruning against Lightning 2.6.6: sparsity per layer and the weights (with torch's _orig/_mask tensors)
after every epoch, the folded weights at the end and in a checkpoint."""
from __future__ import annotations

import pytest
import torch
from parity_harness import assert_same_weights, loader, quiet, run_both, weights


def _two_layer(L):
    class TwoLayer(L.LightningModule):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return torch.nn.functional.mse_loss(self(x), y)

        def validation_step(self, batch, batch_idx):
            x, y = batch
            self.log("val_loss", torch.nn.functional.mse_loss(self(x), y))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.05)

    return TwoLayer


def _pruning_program(L, tmp_path, epochs=3, select=None, **prune_kw):
    per_epoch = []
    model = _two_layer(L)()

    def record(trainer, pl_module):
        layers = (pl_module.net[0], pl_module.net[2])
        per_epoch.append({"sparsity": [float((getattr(m, "weight") == 0).float().mean()) for m in layers],
                          "weights": weights(pl_module)})

    params = select(model) if select is not None else ()
    pruning = L.pytorch.callbacks.ModelPruning(parameters_to_prune=params, **prune_kw)
    ckpt_path = str(tmp_path / f"{L.__name__}-pruned.ckpt")
    saver = L.pytorch.callbacks.LambdaCallback(
        on_train_epoch_end=lambda trainer, pl_module: trainer.save_checkpoint(ckpt_path)
        if trainer.current_epoch == 1 else None)
    trainer = L.Trainer(max_epochs=epochs, callbacks=[pruning, L.pytorch.callbacks.LambdaCallback(
        on_train_epoch_end=record), saver], **quiet(tmp_path, limit_val_batches=2))
    val = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 3), torch.randn(8, 1)),
                                      batch_size=4)
    trainer.fit(model, train_dataloaders=loader(n=16, batch_size=4), val_dataloaders=val)
    saved = torch.load(ckpt_path, weights_only=False)["state_dict"]
    return {"per_epoch": per_epoch, "final": weights(model), "saved": saved,
            "final_sparsity": [float((m.weight == 0).float().mean()) for m in (model.net[0], model.net[2])]}


def _assert_same(a, b):
    assert len(a["per_epoch"]) == len(b["per_epoch"])
    for x, y in zip(a["per_epoch"], b["per_epoch"]):
        assert x["sparsity"] == y["sparsity"]
        assert_same_weights(x["weights"], y["weights"])
    assert_same_weights(a["final"], b["final"])
    assert_same_weights(a["saved"], b["saved"])
    assert a["final_sparsity"] == b["final_sparsity"]


def test_global_l1_pruning_with_lottery_ticket_matches_lightning(tmp_path):
    a, b = run_both(_pruning_program, tmp_path=tmp_path, pruning_fn="l1_unstructured", amount=0.25,
                    parameter_names=["weight"])
    _assert_same(a, b)
    # 32 weights: 8 pruned after epoch 0, 8 more of the rest after each epoch (global across both layers)
    pruned = [sum(s * n for s, n in zip(e["sparsity"], (24, 8))) for e in b["per_epoch"]]
    assert pruned == pytest.approx([8, 14, 18.5], abs=0.51)  # 32 * (1 - 0.75 ** k), rounded by torch
    assert set(b["per_epoch"][0]["weights"]) == {"net.0.weight_orig", "net.0.weight_mask", "net.0.bias",
                                                 "net.2.weight_orig", "net.2.weight_mask", "net.2.bias"}
    # the checkpoint (epoch 1) and the model after training hold plain, folded weights
    assert set(b["saved"]) == set(b["final"]) == {"net.0.weight", "net.0.bias", "net.2.weight", "net.2.bias"}
    zeros = int((b["final"]["net.0.weight"] == 0).sum() + (b["final"]["net.2.weight"] == 0).sum())
    assert zeros == round(pruned[-1])


def test_local_structured_pruning_on_a_schedule_matches_lightning(tmp_path):
    a, b = run_both(_pruning_program, tmp_path=tmp_path, pruning_fn="ln_structured", pruning_dim=0, pruning_norm=2,
                    use_global_unstructured=False, amount=lambda epoch: 0.25 if epoch != 1 else 0,
                    use_lottery_ticket_hypothesis=False, prune_on_train_epoch_end=False,
                    select=lambda m: [(m.net[0], "weight")], make_pruning_permanent=False)
    _assert_same(a, b)
    # rows of the first layer: 2 of 8 after epoch 0, none at epoch 1 (amount 0), 2 of the 6 left after epoch 2;
    # pruned when the validation epoch ends, which comes before on_train_epoch_end (Lightning's order)
    assert [e["sparsity"][0] for e in b["per_epoch"]] == [0.25, 0.25, 0.5]
    assert b["final_sparsity"] == [0.5, 0.0]
    assert "net.0.weight_mask" in b["final"]  # make_pruning_permanent=False keeps torch's re-parametrisation


def test_pruning_arguments_are_checked():
    from ember.callbacks import ModelPruning

    with pytest.raises(ValueError, match=r"pruning_fn='l2_unstructured'\) is not one of torch's"):
        ModelPruning("l2_unstructured")
    with pytest.raises(ValueError, match=r"needs pruning_dim"):
        ModelPruning("random_structured", use_global_unstructured=False)
    with pytest.raises(ValueError, match=r"use_global_unstructured=True takes only 'unstructured'"):
        ModelPruning("ln_structured", pruning_dim=0, pruning_norm=1)
    with pytest.raises(ValueError, match=r"parameter_names=\['kernel'\]\): 'kernel' is not allowed"):
        ModelPruning("l1_unstructured", parameter_names=["kernel"])
    with pytest.raises(TypeError, match=r"amount='half'"):
        ModelPruning("l1_unstructured", amount="half")
    with pytest.raises(TypeError, match=r"the class, not an instance"):
        ModelPruning(torch.nn.utils.prune.L1Unstructured(0.2))
