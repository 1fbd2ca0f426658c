"""A module compiled by the user (``torch.compile(model)``) trains under fit as in Lightning 2.6.6.

Both frameworks unwrap the ``OptimizedModule`` and train the LightningModule inside it, so the weights
after fit equal an uncompiled run's, and the checkpoints carry no ``_orig_mod.`` prefix.
"""
from __future__ import annotations

import pytest
import torch

from compile_backends import BACKENDS
from parity_harness import assert_same_metrics, assert_same_weights, boring_class, loader, quiet, run_both, weights


def step_without_log(self, batch, batch_idx):
    x, y = batch
    return torch.nn.functional.mse_loss(self(x), y)


def compiled_fit(L, tmp_path, backend, compile_it=True, log_in_training_step=False):
    torch._dynamo.reset()
    hooks = {} if log_in_training_step else {"training_step": step_without_log}
    model = boring_class(L, lr=0.05, **hooks)()
    fitted = torch.compile(model, backend=backend) if compile_it else model
    trainer = L.Trainer(**quiet(tmp_path, max_epochs=2, enable_checkpointing=True))
    trainer.fit(fitted, train_dataloaders=loader(), val_dataloaders=loader(n=8))
    ckpt = torch.load(trainer.checkpoint_callback.best_model_path, weights_only=False)
    return {"weights": weights(model), "global_step": trainer.global_step,
            "metrics": dict(trainer.callback_metrics), "ckpt_keys": sorted(ckpt["state_dict"]),
            "same_module": trainer.lightning_module is model}


@pytest.mark.parametrize("backend", BACKENDS)
def test_compiled_model_trains_like_lightnings_and_like_an_uncompiled_run(tmp_path, backend):
    lit, emb = run_both(compiled_fit, tmp_path=tmp_path, backend=backend)
    import ember

    plain = compiled_fit(ember, tmp_path / "plain", backend, compile_it=False)
    exact = backend != "inductor"  # inductor fuses the arithmetic differently: 1e-6
    assert_same_weights(lit["weights"], emb["weights"], exact=exact)
    assert_same_weights(plain["weights"], emb["weights"], exact=exact)
    assert emb["global_step"] == lit["global_step"] == 8
    assert emb["same_module"] and lit["same_module"]  # both train the LightningModule inside the wrapper
    assert emb["ckpt_keys"] == lit["ckpt_keys"] == ["layer.bias", "layer.weight"]  # no _orig_mod.
    assert_same_metrics(lit["metrics"], emb["metrics"], rel=1e-6)
    assert set(emb["metrics"]) == {"val_loss"}
    assert emb["metrics"]["val_loss"] == plain["metrics"]["val_loss"] or not exact


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_self_log_in_a_compiled_training_step_logs_in_ember_where_lightning_fails(tmp_path, backend):
    """Lightning 2.6.6 compiles training_step itself, and dynamo fails inside its self.log (it inspects
    self.training_step's signature there). ember records self.log in the graph and logs after the step
    (ember.compile), so the same program trains and logs, with the weights of an uncompiled run."""
    import lightning
    import ember

    with pytest.raises(torch._dynamo.exc.InternalTorchDynamoError, match="has no attribute '__dict__'"):
        compiled_fit(lightning, tmp_path / "lightning", backend, log_in_training_step=True)
    emb = compiled_fit(ember, tmp_path / "ember", backend, log_in_training_step=True)
    plain = compiled_fit(ember, tmp_path / "plain", backend, compile_it=False, log_in_training_step=True)
    assert_same_weights(plain["weights"], emb["weights"])
    assert emb["metrics"].keys() == {"train_loss", "train_loss_step", "train_loss_epoch", "val_loss"}
    assert_same_metrics(plain["metrics"], emb["metrics"], rel=0)
    assert emb["ckpt_keys"] == ["layer.bias", "layer.weight"]


def compiled_with_recorded_hooks(L, tmp_path):
    from parity_harness import recording_callback

    torch._dynamo.reset()
    calls: list = []
    model = boring_class(L, lr=0.05, training_step=step_without_log)()
    trainer = L.Trainer(**quiet(tmp_path, max_epochs=2, callbacks=[recording_callback(L, calls)]))
    trainer.fit(torch.compile(model, backend="aot_eager"), train_dataloaders=loader(), val_dataloaders=loader(n=8))
    return {"calls": calls, "weights": weights(model)}


def test_compiled_fit_calls_the_callbacks_as_lightning_does(tmp_path):
    lit, emb = run_both(compiled_with_recorded_hooks, tmp_path=tmp_path)
    from parity_harness import first_difference

    assert lit["calls"] == emb["calls"], first_difference(lit["calls"], emb["calls"])
    assert sum(1 for c in emb["calls"] if c[0] == "cb.on_train_batch_end") == 8
    assert_same_weights(lit["weights"], emb["weights"])
