"""One distributed job that exercises many features, so the test suite pays process start-up once.

    python features.py OUT [--devices N] [--num-nodes M] [--batch B] [--only a,b] [--strategy S]

Every rank writes OUT/rank{r}.json (plain results) and OUT/*.pt (weights). The tests in
tests/distributed/ read them. The program is the same for devices=1 and devices=2: only
the command line differs (the tutorial's promise).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import warnings

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, TensorDataset

from job_samplers import EveryOther

import ember as L
from ember.loggers import CSVLogger
from ember.callbacks import BasePredictionWriter, ModelCheckpoint

N_SAMPLES = 64


def data() -> TensorDataset:
    g = torch.Generator().manual_seed(7)
    x = torch.randn(N_SAMPLES, 6, generator=g)
    y = (x @ torch.linspace(-1, 1, 6)).unsqueeze(1) + 0.1 * torch.randn(N_SAMPLES, 1, generator=g)
    return TensorDataset(x, y)


class Regressor(L.LightningModule):
    def __init__(self, opt: str = "sgd", lr: float = 0.05) -> None:
        super().__init__()
        self.opt, self.lr = opt, lr
        self.net = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.mse_loss(self(x), y)

    def configure_optimizers(self):
        if self.opt == "adam":
            return torch.optim.Adam(self.parameters(), lr=self.lr)
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


class InOrder(Regressor):
    """Reads the data in order on any number of processes (the reference the correctness tests compare with).

    Under DDP an injected train sampler always shuffles (Lightning's rule), so the model brings its own
    DistributedSampler(shuffle=False), made in train_dataloader once the processes exist; ember and
    Lightning keep a DistributedSampler as it is. Rank r then reads samples r, r+W, ...
    """

    def __init__(self, opt: str = "sgd", lr: float = 0.05, batch: int = 4) -> None:
        super().__init__(opt, lr)
        self.batch = batch

    def train_dataloader(self) -> DataLoader:
        ds = data()
        sampler = DistributedSampler(ds, num_replicas=self.trainer.world_size, rank=self.trainer.global_rank,
                                     shuffle=False)
        return DataLoader(ds, batch_size=self.batch, sampler=sampler)


def trainer(args, **kwargs) -> L.Trainer:
    base = dict(accelerator="cpu", devices=args.devices, num_nodes=args.num_nodes, strategy=args.strategy,
                logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    base.update(kwargs)
    return L.Trainer(**base)


def save(out: str, name: str, obj, rank: int) -> None:
    torch.save(obj, os.path.join(out, f"{name}_rank{rank}.pt"))


# --------------------------------------------------------------------------- scenarios
def correctness(args, results) -> None:
    """Final weights for SGD/Adam, with and without accumulation (the tests compare 2 x B with 1 x 2B)."""
    for config in args.configs.split(","):
        opt, acc = config.split(":")[0], int(config.split(":")[1])
        if True:
            L.seed_everything(0, verbose=False)
            model = InOrder(opt, batch=args.batch)
            # float64, so the comparison measures the algorithm (2 x B == 1 x 2B), not float32 summation order.
            t = trainer(args, max_epochs=2, accumulate_grad_batches=acc, precision="64-true")
            t.fit(model)
            save(args.out, f"correct_{opt}_acc{acc}", model.state_dict(), t.global_rank)
            results[f"steps_{opt}_acc{acc}"] = t.global_step
    results["identity"] = dict(global_rank=t.global_rank, local_rank=t.local_rank, node_rank=t.node_rank,
                               world_size=t.world_size, is_global_zero=t.is_global_zero, num_nodes=t.num_nodes,
                               num_devices=t.num_devices, strategy=type(t.strategy).__name__)


class RankLogger(Regressor):
    def training_step(self, batch, batch_idx):
        r = float(self.global_rank)
        self.log("rank_mean", r, sync_dist=True, on_step=True, on_epoch=True)
        self.log("rank_sum", r, sync_dist=True, reduce_fx="sum", on_step=False, on_epoch=True)
        self.log("rank_max", r, sync_dist=True, reduce_fx="max", on_step=False, on_epoch=True)
        self.log("rank_unsynced", r, on_step=False, on_epoch=True)
        return super().training_step(batch, batch_idx)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self(x), y)
        self.log("val_loss", loss, sync_dist=True)
        self.log("val_rank", float(self.global_rank), sync_dist=True)


def io(args, results) -> None:
    """sync_dist logging, one metrics.csv, one checkpoint set, one progress bar."""
    L.seed_everything(0, verbose=False)
    root = os.path.join(args.out, "io")
    model = RankLogger()
    t = trainer(args, max_epochs=3, logger=CSVLogger(root, name="run"), enable_checkpointing=True,
                enable_progress_bar=True, log_every_n_steps=1, default_root_dir=root,
                callbacks=[ModelCheckpoint(monitor="val_loss", save_top_k=2, save_last=True)])
    t.fit(model, DataLoader(data(), batch_size=8), DataLoader(data(), batch_size=8))
    results["io"] = {k: float(v) for k, v in t.callback_metrics.items()}
    results["io_bar_enabled"] = t.progress_bar_callback.is_enabled
    cb = t.checkpoint_callback
    results["io_ckpt"] = dict(dirpath=cb.dirpath, best=cb.best_model_path, last=cb.last_model_path)
    results["io_validate"] = t.validate(model, DataLoader(data(), batch_size=8), verbose=False)


class IndexSet(Dataset):
    def __len__(self) -> int:
        return 20

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.tensor([float(i)])


class Recorder(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.seen: dict[int, list[int]] = {}

    def training_step(self, batch, batch_idx):
        self.seen.setdefault(self.current_epoch, []).extend(int(v) for v in batch.flatten())
        return (self.w * batch).sum() * 0.0 + (self.w ** 2).sum()

    def predict_step(self, batch, batch_idx):
        return batch.flatten().long()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)



def sampler(args, results) -> None:
    """DistributedSampler injection (shuffled, set_epoch every epoch) and a custom sampler wrapped and sharded."""
    L.seed_everything(0, verbose=False)
    model = Recorder()
    t = trainer(args, max_epochs=3)
    t.fit(model, DataLoader(IndexSet(), batch_size=2, shuffle=True))
    s = t.train_dataloader.sampler
    results["sampler"] = dict(kind=type(s).__name__, shuffle=getattr(s, "shuffle", None), epoch=getattr(s, "epoch", None),
                              seen={str(k): v for k, v in model.seen.items()})
    model = Recorder()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t = trainer(args, max_epochs=1)
        t.fit(model, DataLoader(IndexSet(), batch_size=2, sampler=EveryOther(20)))
    results["custom_sampler"] = dict(seen=model.seen.get(0, []),
                                     warnings=[str(w.message) for w in caught if "custom sampler" in str(w.message)])
    writer = PerRankWriter(os.path.join(args.out, "predictions"))
    t = trainer(args, callbacks=[writer])
    preds = t.predict(model, DataLoader(IndexSet(), batch_size=3))
    results["predict"] = [int(v) for batch in preds for v in batch]


class PerRankWriter(BasePredictionWriter):
    """Lightning's documented way to keep predictions of several processes: one file per rank."""

    def __init__(self, folder: str) -> None:
        super().__init__(write_interval="epoch")
        self.folder = folder

    def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices):
        os.makedirs(self.folder, exist_ok=True)
        torch.save({"predictions": predictions, "batch_indices": batch_indices},
                   os.path.join(self.folder, f"rank{trainer.global_rank}.pt"))


def collectives(args, results) -> None:
    """barrier, broadcast, all_gather, reduce, reduce_boolean_decision through trainer.strategy and the module."""
    t = trainer(args, max_epochs=1)
    model = Recorder()
    t.fit(model, DataLoader(IndexSet(), batch_size=2))
    s = t.strategy
    r = t.global_rank
    s.barrier("test")
    results["collectives"] = dict(
        broadcast=s.broadcast({"from": r, "list": [r, r]}, src=0),
        all_gather=s.all_gather(torch.tensor([float(r), 10.0 + r])).tolist(),
        all_gather_dict={k: v.tolist() for k, v in model.all_gather({"a": torch.tensor(r)}).items()},
        reduce_mean=s.reduce(torch.tensor(float(r))).item(),
        reduce_sum=s.reduce(torch.tensor(float(r)), reduce_op="sum").item(),
        reduce_max=s.reduce(torch.tensor(float(r)), reduce_op="max").item(),
        any_rank_one=s.reduce_boolean_decision(r == 1, all=False),
        all_rank_one=s.reduce_boolean_decision(r == 1, all=True),
    )


def lr_find(args, results) -> None:
    """The range test runs on every rank; every rank ends with rank 0's suggestion."""
    from ember.tuner import Tuner

    L.seed_everything(0, verbose=False)  # each rank still sees its own shard, so its own loss curve
    model = Regressor("sgd", lr=1e-3)
    t = trainer(args, max_epochs=1)
    result = Tuner(t).lr_find(model, DataLoader(data(), batch_size=4, shuffle=True), num_training=20,
                             early_stop_threshold=None)
    results["lr_find"] = dict(suggestion=result.suggestion(), model_lr=model.lr, lrs=list(result.results["lr"]),
                              losses=[float(v) for v in result.results["loss"]])


SCENARIOS = {"correctness": correctness, "io": io, "sampler": sampler, "collectives": collectives, "lr_find": lr_find}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--devices", type=int, default=2)
    p.add_argument("--num-nodes", type=int, default=1)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--strategy", default="auto")
    p.add_argument("--only", default=",".join(SCENARIOS))
    p.add_argument("--configs", default="sgd:1,sgd:2,adam:1,adam:2", help="optimizer:accumulation pairs")
    args = p.parse_args()
    torch.set_num_threads(1)
    os.makedirs(args.out, exist_ok=True)
    results: dict = {"argv": sys.argv[1:]}
    for name in args.only.split(","):
        SCENARIOS[name](args, results)
    from ember.utilities.rank_zero import rank_zero_only

    rank = rank_zero_only.rank or 0  # set by the strategy when it joins the process group
    with open(os.path.join(args.out, f"rank{rank}.json"), "w") as fh:
        json.dump(results, fh, indent=1, default=str)


if __name__ == "__main__":
    main()
