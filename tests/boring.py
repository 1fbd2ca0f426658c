"""The smallest real model the unit tests train: y = sum(x) learned by one linear layer."""
import torch
from torch.utils.data import DataLoader, TensorDataset

import ember as L


def boring_class(framework):
    """The boring model built on ``framework`` (ember or lightning), for tests that run both."""

    class BoringLinear(framework.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(2, 1)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return torch.nn.functional.mse_loss(self.layer(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    return BoringLinear


BoringLinear = boring_class(L)


class BoringWithEval(L.LightningModule):
    """The boring model with a validation, test and predict step (the losses logged as val_loss/test_loss)."""

    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        return torch.nn.functional.mse_loss(self.layer(batch[0]), batch[1])

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", torch.nn.functional.mse_loss(self.layer(batch[0]), batch[1]))

    def test_step(self, batch, batch_idx):
        self.log("test_loss", torch.nn.functional.mse_loss(self.layer(batch[0]), batch[1]))

    def predict_step(self, batch, batch_idx):
        return self.layer(batch[0])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def sum_dataset(n: int = 8) -> TensorDataset:
    x = torch.randn(n, 2, generator=torch.Generator().manual_seed(0))
    return TensorDataset(x, x.sum(1, keepdim=True))


def sum_loader(n: int = 8, batch_size: int = 2) -> DataLoader:
    return DataLoader(sum_dataset(n), batch_size=batch_size)
