"""The StatQuest network and data, built against whichever framework is passed in (ember or lightning)."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.optim import SGD
from torch.utils.data import DataLoader, TensorDataset

INPUTS = torch.tensor([0.0, 0.5, 1.0])
LABELS = torch.tensor([0.0, 1.0, 0.0])
LEAST_SQUARES_FINAL_BIAS = -16.01  # the tutorial's fitted value, rounded as the issue states it


def make_class(L):
    class BasicLightningTrain(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.w00 = nn.Parameter(torch.tensor(1.7), requires_grad=False)
            self.b00 = nn.Parameter(torch.tensor(-0.85), requires_grad=False)
            self.w01 = nn.Parameter(torch.tensor(-40.8), requires_grad=False)
            self.w10 = nn.Parameter(torch.tensor(12.6), requires_grad=False)
            self.b10 = nn.Parameter(torch.tensor(0.0), requires_grad=False)
            self.w11 = nn.Parameter(torch.tensor(2.7), requires_grad=False)
            self.final_bias = nn.Parameter(torch.tensor(0.0), requires_grad=True)
            self.learning_rate = 0.01

        def forward(self, input):
            top = F.relu(input * self.w00 + self.b00) * self.w01
            bottom = F.relu(input * self.w10 + self.b10) * self.w11
            return F.relu(top + bottom + self.final_bias)

        def configure_optimizers(self):
            return SGD(self.parameters(), lr=self.learning_rate)

        def training_step(self, batch, batch_idx):
            input_i, label_i = batch
            output_i = self.forward(input_i)
            return (output_i - label_i) ** 2

    return BasicLightningTrain


def dataloader() -> DataLoader:
    return DataLoader(TensorDataset(INPUTS, LABELS))


QUIET = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
