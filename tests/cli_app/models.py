"""A model and a datamodule with type-hinted arguments, built on either framework (the CLI tests).

``classes(L)`` defines them on ``L`` and registers them here as ``Regressor_<framework>`` /
``Numbers_<framework>``, so a config can name them by import path (subclass mode needs that).
"""
from __future__ import annotations

import sys
from typing import Any, Literal

import torch
from torch.utils.data import DataLoader, TensorDataset

_BUILT: dict[str, tuple[type, type]] = {}


def classes(L: Any) -> tuple[type, type]:
    name = L.__name__
    if name in _BUILT:
        return _BUILT[name]

    class Regressor(L.LightningModule):
        def __init__(self, hidden: int = 8, activation: Literal["relu", "tanh"] = "relu", lr: float = 0.1) -> None:
            super().__init__()
            self.save_hyperparameters()
            act = torch.nn.ReLU() if activation == "relu" else torch.nn.Tanh()
            self.net = torch.nn.Sequential(torch.nn.Linear(3, hidden), act, torch.nn.Linear(hidden, 1))

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            loss = torch.nn.functional.mse_loss(self.net(x), y)
            self.log("train_loss", loss)
            return loss

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            x, y = batch
            self.log("val_loss", torch.nn.functional.mse_loss(self.net(x), y))

        def test_step(self, batch: Any, batch_idx: int) -> None:
            x, y = batch
            self.log("test_loss", torch.nn.functional.mse_loss(self.net(x), y))

        def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return self.net(batch[0])

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)

    class Numbers(L.LightningDataModule):
        def __init__(self, batch_size: int = 4, samples: int = 16) -> None:
            super().__init__()
            self.save_hyperparameters()

        def _loader(self, seed: int) -> DataLoader:
            g = torch.Generator().manual_seed(seed)
            x = torch.randn(self.hparams.samples, 3, generator=g)
            return DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=self.hparams.batch_size)

        def train_dataloader(self) -> DataLoader:
            return self._loader(0)

        def val_dataloader(self) -> DataLoader:
            return self._loader(1)

        def test_dataloader(self) -> DataLoader:
            return self._loader(2)

        def predict_dataloader(self) -> DataLoader:
            return self._loader(3)

    module = sys.modules[__name__]
    for cls, kind in ((Regressor, "Regressor"), (Numbers, "Numbers")):
        cls.__name__ = cls.__qualname__ = f"{kind}_{name}"
        cls.__module__ = __name__
        setattr(module, cls.__name__, cls)
    _BUILT[name] = (Regressor, Numbers)
    return Regressor, Numbers
