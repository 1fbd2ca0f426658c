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
                      predict_dataset: Any = None, batch_size: int = 1, num_workers: int = 0,
                      **datamodule_kwargs: Any) -> "LightningDataModule":
        """A datamodule whose ``*_dataloader`` methods wrap the given datasets (Lightning's signature).

        Each argument is a dataset or a list/tuple/dict of datasets (one loader each, same structure). The
        train loaders shuffle (except over an ``IterableDataset``), the others do not. ``batch_size`` and
        ``num_workers`` go to every loader, and also to ``cls.__init__`` when it takes arguments of those
        names (or ``**kwargs``); ``datamodule_kwargs`` go to ``cls.__init__``.
        """
        import inspect

        def loaders(datasets: Any, shuffle: bool) -> Any:
            return _map_datasets(datasets, lambda ds: _loader(ds, batch_size, num_workers, shuffle))

        params = inspect.signature(cls.__init__).parameters
        takes_any = any(p.kind == p.VAR_KEYWORD for p in params.values())
        special = {k: v for k, v in (("batch_size", batch_size), ("num_workers", num_workers))
                   if takes_any or k in params}
        dm = cls(**datamodule_kwargs, **special)
        for name, datasets, shuffle in (("train", train_dataset, True), ("val", val_dataset, False),
                                        ("test", test_dataset, False), ("predict", predict_dataset, False)):
            if datasets is not None:
                setattr(dm, f"{name}_dataloader", lambda d=datasets, s=shuffle: loaders(d, s))
        return dm


def _loader(dataset: Any, batch_size: int, num_workers: int, shuffle: bool) -> Any:
    import torch
    from torch.utils.data import DataLoader, IterableDataset

    # Pinned memory only helps copies to an accelerator (and warns without one).
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle and not isinstance(dataset, IterableDataset),
                      num_workers=num_workers, pin_memory=torch.cuda.is_available())


def _map_datasets(datasets: Any, fn: Any) -> Any:
    """``fn`` applied to a dataset, or to each dataset of a list, tuple or dict (keeping the structure)."""
    if isinstance(datasets, dict):
        return {k: _map_datasets(v, fn) for k, v in datasets.items()}
    if isinstance(datasets, (list, tuple)):
        return type(datasets)(_map_datasets(v, fn) for v in datasets)
    return fn(datasets)


def split_datamodule(datamodule: Any, loaders: Any) -> tuple[Any, Any]:
    """Lightning accepts a datamodule in the loaders' place."""
    return (loaders, None) if isinstance(loaders, LightningDataModule) else (datamodule, loaders)
