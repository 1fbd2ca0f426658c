"""The same 2-process program under Lightning 2.6.6 and under ember: only the import differs.

    python ddp_parity.py lightning|ember OUT [--strategy ddp|ddp_spawn] [--only a,b]
    torchrun --nproc_per_node=2 ddp_parity.py ember OUT

Every case trains (or validates, tests, predicts) a small MLP on 2 CPU processes (gloo). Each rank
writes, at the end of every entry point (a callback's teardown, so it runs inside the worker under
ddp_spawn too), OUT/{case}.{stage}.rank{r}.json: the dataset indices it read per epoch and per
stage, global_step, callback_metrics and predictions; and OUT/{case}.{stage}.rank{r}.pt: its weights.
tests/distributed/test_ddp_parity.py compares the two frameworks' files.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler

from job_samplers import EveryOther


class Indexed(Dataset):
    """n samples (x, y, i): the index i says which sample each rank read."""

    def __init__(self, n: int) -> None:
        g = torch.Generator().manual_seed(5)
        self.x = torch.randn(n, 4, generator=g)
        self.y = self.x @ torch.tensor([[0.5], [-1.0], [2.0], [0.25]]) + 0.1 * torch.randn(n, 1, generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], self.y[i], i



class MyBatches(BatchSampler):
    """A BatchSampler subclass: the frameworks rebuild it around their distributed sampler."""


# The framework comes from the command line, before the classes are made from it: at module level, so that
# ddp_spawn can pickle them (a spawned worker imports this file again, with the same sys.argv).
if len(sys.argv) > 1 and sys.argv[1] == "lightning":
    import lightning as L
else:
    import ember as L


class Net(L.LightningModule):
    def __init__(self, lr: float = 0.1, own_loader: int = 0, dropout: float = 0.0) -> None:
        super().__init__()
        self.lr, self.own_loader = lr, own_loader
        self.net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Dropout(dropout),
                                       torch.nn.Linear(8, 1))
        self.reset_records()

    def reset_records(self) -> None:
        self.seen: dict[str, list[int]] = {}
        self.eval_seen: dict[str, list[int]] = {}
        self.predicted: list[int] = []

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        if isinstance(batch, dict):  # several train loaders: one batch of each, recorded per loader
            for key, (_, _, i) in batch.items():
                self.seen.setdefault(f"{self.current_epoch}{key}", []).extend(int(v) for v in i)
            batch = [torch.cat(parts) for parts in zip(*batch.values())]
        x, y, i = batch
        self.seen.setdefault(str(self.current_epoch), []).extend(int(v) for v in i)
        loss = torch.nn.functional.mse_loss(self(x), y)
        self.log("train_loss", loss, sync_dist=True, on_step=False, on_epoch=True)
        self.log("train_loss_step", loss, sync_dist=True, on_step=True, on_epoch=False)
        return loss

    def _eval(self, batch, name, dataloader_idx=0):
        x, y, i = batch
        key = f"{name}{'_sanity' if self.trainer.sanity_checking else ''}_e{self.current_epoch}_{dataloader_idx}"
        self.eval_seen.setdefault(key, []).extend(int(v) for v in i)
        loss = torch.nn.functional.mse_loss(self(x), y)
        self.log(f"{name}_loss", loss, sync_dist=True)
        self.log(f"{name}_max", loss, sync_dist=True, reduce_fx="max")
        return loss

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        return self._eval(batch, "val", dataloader_idx)

    def test_step(self, batch, batch_idx, dataloader_idx=0):
        return self._eval(batch, "test", dataloader_idx)

    def predict_step(self, batch, batch_idx):
        x, _, i = batch
        self.predicted.extend(int(v) for v in i)
        return self(x)

    def train_dataloader(self):
        # A loader made in the hook, after the process group exists: a DistributedSampler of the user's own.
        ds = Indexed(self.own_loader)
        return DataLoader(ds, batch_size=4, sampler=DistributedSampler(ds, shuffle=False))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)

class Record(L.Callback):
    """Each rank writes what it saw, at the end of every entry point."""

    def __init__(self, case: str, out: str) -> None:
        self.case, self.out = case, out

    def teardown(self, trainer, pl_module, stage):
        stage = getattr(stage, "value", stage)
        name = f"{self.case}.{stage}.rank{trainer.global_rank}"
        record = dict(
            world_size=trainer.world_size, global_step=trainer.global_step,
            current_epoch=trainer.current_epoch,
            metrics={k: float(v) for k, v in trainer.callback_metrics.items()},
            seen=pl_module.seen, eval_seen=pl_module.eval_seen, predicted=pl_module.predicted,
            rng=int(torch.get_rng_state().double().sum() * 1000) % 1000003,
            num_training_batches=_plain(trainer.num_training_batches) if stage == "fit" else None,
        )
        with open(os.path.join(self.out, name + ".json"), "w") as fh:
            json.dump(record, fh, indent=1)
        torch.save({k: v.detach().cpu() for k, v in pl_module.state_dict().items()},
                   os.path.join(self.out, name + ".pt"))
        pl_module.reset_records()


def shuffle_warnings(messages) -> list[str]:
    """The stages whose evaluation loader was said to shuffle (each framework words it its own way)."""
    stages = set()
    for text in messages:
        if "shuffl" in text.lower() and "overfit" not in text.lower():
            stages.update(s for s in ("val", "test", "predict") if f"{s}_dataloader" in text or f"The {s} " in text)
    return sorted(stages)


def _plain(value):
    return value if isinstance(value, (int, float)) and value != float("inf") else str(value)


def loader(n: int, batch: int = 4, **kw) -> DataLoader:
    return DataLoader(Indexed(n), batch_size=batch, **kw)


# case name -> (Trainer kwargs, what to run). Each "what" is a list of (entry point, loader kwargs).
def cases():
    fit = "fit"
    return {
        # the program: 48 samples, no shuffle, SGD; Lightning's train sampler shuffles anyway
        "unshuffled": (dict(max_epochs=3), [(fit, dict(train=dict(n=48)))]),
        "shuffled": (dict(max_epochs=3), [(fit, dict(train=dict(n=48, shuffle=True)))]),
        "uneven": (dict(max_epochs=2), [(fit, dict(train=dict(n=47)))]),  # the sampler pads rank 1
        "drop_last": (dict(max_epochs=2), [(fit, dict(train=dict(n=50, drop_last=True)))]),
        "accumulate": (dict(max_epochs=2, accumulate_grad_batches=2), [(fit, dict(train=dict(n=48)))]),
        # fit with validation (unshuffled, uneven) and sync_dist; then validate, test and predict
        "val_sync": (dict(max_epochs=2, num_sanity_val_steps=1),
                     [(fit, dict(train=dict(n=40), val=dict(n=21)))]),
        "evaluate": (dict(max_epochs=1),
                     [(fit, dict(train=dict(n=32))),
                      ("validate", dict(loader=dict(n=23))),
                      ("test", dict(loader=dict(n=23, batch=5))),
                      ("predict", dict(loader=dict(n=23, batch=4, drop_last=True)))]),
        # shuffled evaluation loaders: Lightning warns and keeps them shuffled
        "evaluate_shuffled": (dict(max_epochs=2),
                              [(fit, dict(train=dict(n=16), val=dict(n=17, shuffle=True))),
                               ("validate", dict(loader=dict(n=17, shuffle=True))),
                               ("predict", dict(loader=dict(n=17, shuffle=True)))]),
        "custom_sampler": (dict(max_epochs=2), [(fit, dict(train=dict(n=30, sampler="every_other")))]),
        "batch_sampler": (dict(max_epochs=2), [(fit, dict(train=dict(n=30, batch_sampler="mine")))]),
        "overfit": (dict(max_epochs=2, overfit_batches=3), [(fit, dict(train=dict(n=48, shuffle=True)))]),
        "own_sampler": (dict(max_epochs=2), [(fit, dict(own=24))]),
        # dropout draws from the global RNG: both frameworks must re-seed it and draw alike
        "dropout": (dict(max_epochs=2), [(fit, dict(train=dict(n=32, shuffle=True), val=dict(n=8), dropout=0.3))]),
        # a dict of train loaders (each gets its own distributed sampler; the shorter one starts again) and a
        # dict of val loaders (each sharded, run one after the other)
        "two_loaders": (dict(max_epochs=2, num_sanity_val_steps=1),
                        [(fit, dict(train=dict(several=[dict(n=48, shuffle=True), dict(n=20)]),
                                    val=dict(several=[dict(n=21), dict(n=10)])))]),
    }


def make_loader(spec: dict) -> DataLoader:
    if "several" in spec:
        return {name: make_loader(one) for name, one in zip("ab", spec["several"])}
    spec = dict(spec)
    n = spec.pop("n")
    if "seed" in spec:  # the loader's own generator: the order then does not depend on the global RNG
        spec["generator"] = torch.Generator().manual_seed(spec.pop("seed"))
    if spec.pop("sampler", None) == "every_other":
        spec["sampler"] = EveryOther(n)
    if spec.pop("batch_sampler", None) == "mine":
        return DataLoader(Indexed(n), batch_sampler=MyBatches(torch.utils.data.SequentialSampler(range(n)), 4, False))
    return loader(n, **spec)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("framework", choices=("lightning", "ember"))
    p.add_argument("out")
    p.add_argument("--strategy", default="ddp")
    p.add_argument("--only", default="")
    args = p.parse_args()
    torch.set_num_threads(1)
    os.makedirs(args.out, exist_ok=True)
    import warnings

    chosen = cases()
    names = args.only.split(",") if args.only else list(chosen)
    caught = {}
    for name in names:
        trainer_kw, steps = chosen[name]
        L.seed_everything(0, verbose=False)
        model = Net(own_loader=steps[0][1].get("own", 0), dropout=steps[0][1].get("dropout", 0.0))
        trainer = L.Trainer(accelerator="cpu", devices=2, strategy=args.strategy, logger=False,
                            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                            callbacks=[Record(name, args.out)], default_root_dir=args.out, **trainer_kw)
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            for entry, spec in steps:
                if entry == "fit":
                    train = make_loader(spec["train"]) if "train" in spec else None
                    val = make_loader(spec["val"]) if "val" in spec else None
                    trainer.fit(model, train, val)
                else:
                    getattr(trainer, entry)(model, make_loader(spec["loader"]))
        caught[name] = shuffle_warnings(str(w.message) for w in seen)
    rank = trainer.global_rank
    with open(os.path.join(args.out, f"warnings.rank{rank}.json"), "w") as fh:
        json.dump(caught, fh, indent=1)


if __name__ == "__main__":
    main()
