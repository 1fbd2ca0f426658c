"""The loggers a Trainer gets from ``Trainer(logger=...)``."""
from __future__ import annotations

from typing import Any, Iterable


def default_loggers(logger: Any, root: str) -> list[Any]:
    """``logger``: False (none), None/True (Lightning's default), one logger or several."""
    if logger is False:
        return []
    if logger is None or logger is True:
        import importlib.util

        from . import CSVLogger, TensorBoardLogger

        # Lightning's default: TensorBoard when it is installed, otherwise CSV.
        if importlib.util.find_spec("tensorboard") is not None:
            return [TensorBoardLogger(save_dir=root)]
        return [CSVLogger(save_dir=root)]
    if isinstance(logger, Iterable) and not isinstance(logger, (str, bytes)):
        return list(logger)
    return [logger]
