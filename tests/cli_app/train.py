"""python train.py fit --config config.yaml   or   python -m cli_app.train fit ..."""
from __future__ import annotations

from typing import Any

import torch

import ember as L
from cli_app.models import classes
from ember.cli import LightningCLI, OptimizerCallable


Regressor, Numbers = classes(L)  # the same classes the parity tests build on Lightning


class InjectedRegressor(Regressor):
    """Takes its optimizer as an argument (``--model.optimizer Adam``), Lightning's dependency-injection style."""

    def __init__(self, optimizer: OptimizerCallable = torch.optim.SGD, hidden: int = 8) -> None:
        super().__init__(hidden=hidden)
        self.optimizer = optimizer

    def configure_optimizers(self) -> Any:
        return self.optimizer(self.parameters())


def cli_main() -> None:
    LightningCLI(Regressor, Numbers, trainer_defaults={"enable_progress_bar": False, "enable_model_summary": False})


if __name__ == "__main__":
    cli_main()
