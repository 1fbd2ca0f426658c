"""configure_optimizers: bad input gets a clear error; the scheduler clock; the optimizer wrapper."""
from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import ember as L
from ember import optim

QUIET = dict(logger=False, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)


def _params():
    return [torch.nn.Parameter(torch.zeros(2))]


def _loader(n=8):
    x = torch.randn(n, 2, generator=torch.Generator().manual_seed(0))
    return DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=2)


class Net(L.LightningModule):
    def __init__(self, configure):
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)
        self._configure = configure

    def training_step(self, batch, batch_idx):
        loss = torch.nn.functional.mse_loss(self.layer(batch[0]), batch[1])
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return self._configure(self)


def test_bad_scheduler_interval_is_named():
    opt = torch.optim.SGD(_params(), lr=0.1)
    with pytest.raises(ValueError, match="'interval' is 'batch'; allowed: 'epoch', 'step'"):
        optim.parse({"optimizer": opt, "lr_scheduler": {"scheduler": torch.optim.lr_scheduler.StepLR(opt, 1),
                                                        "interval": "batch"}})


def test_bad_frequency_and_unknown_keys_are_named():
    opt = torch.optim.SGD(_params(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, 1)
    with pytest.raises(ValueError, match="'frequency' is 0"):
        optim.parse({"optimizer": opt, "lr_scheduler": {"scheduler": sched, "frequency": 0}})
    with pytest.raises(ValueError, match="unknown lr_scheduler keys"):
        optim.parse({"optimizer": opt, "lr_scheduler": {"scheduler": sched, "every": 2}})


def test_plateau_without_monitor_is_an_error():
    opt = torch.optim.SGD(_params(), lr=0.1)
    with pytest.raises(ValueError, match="needs a metric to watch"):
        optim.parse({"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.ReduceLROnPlateau(opt)})


def test_plateau_monitoring_a_metric_never_logged_is_an_error():
    def configure(m):
        opt = torch.optim.SGD(m.parameters(), lr=0.1)
        return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.ReduceLROnPlateau(opt), "monitor": "val_acc"}

    with pytest.raises(ValueError, match="watches 'val_acc', which was never logged.*train_loss"):
        L.Trainer(max_epochs=1, **QUIET).fit(Net(configure), _loader())


def test_plateau_not_strict_warns_and_skips():
    def configure(m):
        opt = torch.optim.SGD(m.parameters(), lr=0.1)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": torch.optim.lr_scheduler.ReduceLROnPlateau(opt),
                                                   "monitor": "val_acc", "strict": False}}

    with pytest.warns(RuntimeWarning, match="strict=False"):
        L.Trainer(max_epochs=1, **QUIET).fit(Net(configure), _loader())


def test_two_optimizers_need_manual_optimization():
    with pytest.raises(ValueError, match="automatic optimization steps one"):
        L.Trainer(max_epochs=1, **QUIET).fit(Net(lambda m: [torch.optim.SGD(m.parameters(), lr=0.1),
                                                              torch.optim.Adam(m.parameters())]), _loader())


def test_step_scheduler_frequency_counts_batches_of_the_epoch():
    # Lightning's clock: batch_idx + 1 within the epoch (4 batches: steps at batches 2 and 4, each epoch).
    def configure(m):
        opt = torch.optim.SGD(m.parameters(), lr=1.0)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": torch.optim.lr_scheduler.StepLR(opt, 1, 0.5),
                                                   "interval": "step", "frequency": 2}}

    trainer = L.Trainer(max_epochs=2, **QUIET)
    trainer.fit(Net(configure), _loader())
    assert trainer.optimizers[0].param_groups[0]["lr"] == 0.5 ** 4


def test_optimizers_returns_the_same_wrapper_that_counts_manual_steps():
    class Manual(Net):
        def __init__(self):
            super().__init__(lambda m: torch.optim.SGD(m.parameters(), lr=0.1))
            self.automatic_optimization = False

        def training_step(self, batch, batch_idx):
            opt = self.optimizers()
            assert opt is self.optimizers()
            assert isinstance(opt, optim.LightningOptimizer) and opt.optimizer is self.trainer.optimizers[0]
            self.manual_backward(torch.nn.functional.mse_loss(self.layer(batch[0]), batch[1]))
            opt.step()
            opt.step()  # each step counts, as in Lightning
            opt.zero_grad()

    trainer = L.Trainer(max_epochs=1, **QUIET)
    trainer.fit(Manual(), _loader())
    assert trainer.global_step == 8
