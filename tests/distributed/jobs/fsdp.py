"""FSDP (FSDP2 fully_shard) on 2 CPU processes over gloo.

    python fsdp.py OUT

Trains features.InOrder (the data in order, per-rank batch 4) with strategy=FSDPStrategy(auto_wrap_policy={Linear}) on the correctness data
(per-rank batch 4, float64, SGD without and Adam with accumulation), then:
  - saves a full checkpoint (one file, plain tensors, written by rank 0) and validates through the shards;
  - with state_dict_type="sharded", saves a directory of per-rank shards mid-epoch and resumes from it.
  - trains once more with precision="bf16-mixed" (float32 weights, bf16 autocast) and saves a full checkpoint.
Each rank writes OUT/rank{r}.json; rank 0 writes the weights it gathered.
"""
import json
import os
import sys

import torch
from torch.utils.data import DataLoader

import ember as L
from ember.runtime.fsdp import FSDPStrategy
from features import InOrder, Regressor, data


class Evaluated(InOrder):
    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", torch.nn.functional.mse_loss(self(x), y), sync_dist=True)


class DtypeProbe(Evaluated):
    """Records the dtype the training step computes in and the dtype of the (sharded) parameters."""

    def training_step(self, batch, batch_idx):
        x, y = batch
        out = self(x)
        self.seen = (str(out.dtype), sorted({str(p.dtype) for p in self.parameters()}))
        return torch.nn.functional.mse_loss(out.float(), y)


def trainer(strategy, precision="64-true", **kwargs):
    return L.Trainer(accelerator="cpu", devices=2, strategy=strategy, precision=precision, logger=False,
                     enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, **kwargs)


def main() -> None:
    out = sys.argv[1]
    torch.set_num_threads(1)
    results = {}
    for opt, acc in (("sgd", 1), ("adam", 2)):
        L.seed_everything(0, verbose=False)
        model = Evaluated(opt)
        t = trainer(FSDPStrategy(auto_wrap_policy={torch.nn.Linear}), max_epochs=2, accumulate_grad_batches=acc)
        t.fit(model)  # its own DistributedSampler(shuffle=False): the data in order, as in the 1-process reference
        path = os.path.join(out, f"full_{opt}_acc{acc}.ckpt")
        t.save_checkpoint(path)
        results[f"val_{opt}_acc{acc}"] = t.validate(model, DataLoader(data(), batch_size=8), verbose=False)[0]
        results[f"sharded_params_{opt}"] = sorted(type(p).__name__ for p in model.parameters())[0]
    # bf16-mixed: the steps autocast to bfloat16, the sharded master weights stay float32.
    L.seed_everything(0, verbose=False)
    model = DtypeProbe("sgd")
    t = trainer(FSDPStrategy(auto_wrap_policy={torch.nn.Linear}), precision="bf16-mixed", max_epochs=2)
    t.fit(model)  # InOrder's own DistributedSampler(shuffle=False), like the 1-process reference's order
    t.save_checkpoint(os.path.join(out, "full_bf16.ckpt"))
    results["bf16_seen"] = model.seen
    results["bf16_sharded_params"] = sorted({type(p).__name__ for p in model.parameters()})
    results["bf16_val"] = t.validate(model, DataLoader(data(), batch_size=8), verbose=False)[0]
    # Sharded: a straight run saves every rank's shards at step 10 (mid-epoch); a new run resumes from them.
    rank = t.global_rank
    sharded = os.path.join(out, "sharded_step10")

    class SaveAtStep10(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step == 10:
                trainer.save_checkpoint(sharded)

    L.seed_everything(0, verbose=False)
    straight = Regressor("adam")
    t = trainer(FSDPStrategy(auto_wrap_policy={torch.nn.Linear}, state_dict_type="sharded"), max_epochs=2,
                callbacks=[SaveAtStep10()])
    t.fit(straight, DataLoader(data(), batch_size=4, shuffle=True))
    results["sharded_files"] = sorted(os.listdir(sharded))
    L.seed_everything(0, verbose=False)  # the DistributedSampler's order derives from this seed
    torch.manual_seed(1)  # a different initialisation: the checkpoint must overwrite it
    resumed = Regressor("adam")
    t = trainer(FSDPStrategy(auto_wrap_policy={torch.nn.Linear}, state_dict_type="sharded"), max_epochs=2)
    t.fit(resumed, DataLoader(data(), batch_size=4, shuffle=True), ckpt_path=sharded)
    results["resumed_step"] = t.global_step
    results["sharded_resume_identical"] = all(torch.equal(a.full_tensor(), b.full_tensor())
                                              for a, b in zip(straight.parameters(), resumed.parameters()))
    with open(os.path.join(out, f"rank{rank}.json"), "w") as fh:
        json.dump(results, fh, indent=1)


if __name__ == "__main__":
    main()
