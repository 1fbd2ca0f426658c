"""MLFlowLogger and WandbLogger together on 2 CPU processes: only global rank 0 may write a run.

    python tracking_loggers.py OUT STRATEGY

Rank 0 writes OUT/result.json after fit: what the MLflow store and the W&B folder hold, read back with
their own tools. Both stores live in OUT; W&B runs offline, so nothing reaches a server.
"""
from __future__ import annotations

import glob
import json
import os
import sys

os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
os.environ.update(WANDB_MODE="offline", WANDB_SILENT="true")

import torch  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

import ember as L  # noqa: E402
from ember.callbacks import LearningRateMonitor  # noqa: E402
from ember.loggers import MLFlowLogger, WandbLogger  # noqa: E402


class Model(L.LightningModule):
    def __init__(self, lr: float = 0.05) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.layer = torch.nn.Linear(3, 1)

    def training_step(self, batch, batch_idx):
        loss = torch.nn.functional.mse_loss(self.layer(batch[0]), batch[1])
        self.log("loss", loss, sync_dist=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


def main() -> None:
    out, strategy = sys.argv[1], sys.argv[2]
    store = f"file:{os.path.join(out, 'mlruns')}"
    loggers = [MLFlowLogger(tracking_uri=store), WandbLogger(save_dir=out, offline=True, project="ddp")]
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(32, 3, generator=g), torch.randn(32, 1, generator=g))
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", devices=2, strategy=strategy, logger=loggers,
                        log_every_n_steps=1, callbacks=[LearningRateMonitor()], enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False)
    trainer.fit(Model(), DataLoader(data, batch_size=4))
    if not trainer.is_global_zero:
        return
    import wandb
    from mlflow.tracking import MlflowClient

    wandb.finish()
    client = MlflowClient(store)
    runs = [run for exp in client.search_experiments() for run in client.search_runs([exp.experiment_id])]
    result = {
        "mlflow_runs": [{"status": r.info.status, "params": r.data.params,
                         "loss_steps": [m.step for m in client.get_metric_history(r.info.run_id, "loss")]}
                        for r in runs],
        "wandb_runs": sorted(os.path.basename(p) for p in glob.glob(os.path.join(out, "wandb", "offline-run-*"))),
        "global_step": trainer.global_step,
    }
    with open(os.path.join(out, "result.json"), "w") as fh:
        json.dump(result, fh)


if __name__ == "__main__":
    main()
