"""LightningDataModule: the data side of a project in one class."""
from __future__ import annotations

from typing import Any


class LightningDataModule:
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

    # save_hyperparameters/hparams work exactly as on the module.
    def save_hyperparameters(self, *args: Any, ignore: Any = None, frame: Any = None, logger: bool = True) -> None:
        import inspect

        from .module import AttributeDict, _collect_init_args

        frame = frame or inspect.currentframe().f_back  # type: ignore[union-attr]
        args_found = _collect_init_args(frame, type(self))
        ignored = {ignore} if isinstance(ignore, str) else set(ignore or ())
        chosen = {k: v for k, v in args_found.items() if (not args or k in args) and k not in ignored}
        self._hparams = AttributeDict(chosen)
        import copy

        self._hparams_initial = AttributeDict(copy.deepcopy(chosen))
        self._log_hyperparams = logger  # the Trainer sends them to the loggers (merged with the module's)

    @property
    def hparams_initial(self) -> Any:
        from .module import AttributeDict

        return AttributeDict(getattr(self, "_hparams_initial", {}))

    @property
    def hparams(self) -> Any:
        from .module import AttributeDict

        if not hasattr(self, "_hparams"):
            self._hparams = AttributeDict()
        return self._hparams

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
