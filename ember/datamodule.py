"""LightningDataModule: the data side of a project in one class."""
from __future__ import annotations

from typing import Any

from .hparams import HyperparametersMixin


class LightningDataModule(HyperparametersMixin):
    """Groups ``prepare_data``, ``setup(stage)`` and the ``*_dataloader`` methods."""

    def __init__(self) -> None:
        self.trainer: Any = None

    def prepare_data(self) -> None: ...
    def setup(self, stage: str) -> None: ...
    def teardown(self, stage: str) -> None: ...

    def train_dataloader(self) -> Any:
        raise NotImplementedError(f"{type(self).__name__} has no train_dataloader()")

    def val_dataloader(self) -> Any:
        raise NotImplementedError(f"{type(self).__name__} has no val_dataloader()")

    def test_dataloader(self) -> Any:
        raise NotImplementedError(f"{type(self).__name__} has no test_dataloader()")

    def predict_dataloader(self) -> Any:
        raise NotImplementedError(f"{type(self).__name__} has no predict_dataloader()")

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        pass

    def on_exception(self, exception: BaseException) -> None: ...

    # save_hyperparameters/hparams/hparams_initial work exactly as on the module (ember.hparams).

    @classmethod
    def from_datasets(cls, train_dataset: Any = None, val_dataset: Any = None, test_dataset: Any = None,
                      predict_dataset: Any = None, batch_size: int = 1, num_workers: int = 0, **loader_kwargs: Any
                      ) -> "LightningDataModule":
        from torch.utils.data import DataLoader

        dm = cls()

        def make(ds: Any, shuffle: bool) -> Any:
            return lambda: DataLoader(ds, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers,
                                      **loader_kwargs)

        if train_dataset is not None:
            dm.train_dataloader = make(train_dataset, True)  # type: ignore[method-assign]
        if val_dataset is not None:
            dm.val_dataloader = make(val_dataset, False)  # type: ignore[method-assign]
        if test_dataset is not None:
            dm.test_dataloader = make(test_dataset, False)  # type: ignore[method-assign]
        if predict_dataset is not None:
            dm.predict_dataloader = make(predict_dataset, False)  # type: ignore[method-assign]
        return dm
