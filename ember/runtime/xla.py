"""TPUs through torch_xla: ``Trainer(accelerator="tpu")``.

The accelerator object is the same ``Accelerator`` as for the other devices, with the torch device
type ``"xla"``; its device comes from torch_xla. XLA tensors are lazy: each step only records a graph,
which runs when it is cut. ``XLAStrategy`` cuts it once per batch, before each step (where torch_xla's
``MpDeviceLoader`` would, at every batch), and at the end of a run.

What is implemented is one TPU core in one process. Several cores need XLA's own multi-process
launch (``torch_xla.launch``), which ember does not have yet; asking for them is an error that says so.
Nothing here was run on a TPU: the tests fake torch_xla (tests/test_devices.py).
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
from typing import Any

import torch

from .strategy import SingleDeviceStrategy


def _install_hint() -> str:
    version = torch.__version__.split("+")[0]
    return (f"Install it on the TPU machine with pip install torch=={version} 'torch_xla[tpu]=={version}' "
            "(torch_xla's version must match torch's; see https://github.com/pytorch/xla#installation).")


def is_installed() -> bool:
    if "torch_xla" in sys.modules:
        return sys.modules["torch_xla"] is not None
    return importlib.util.find_spec("torch_xla") is not None


def torch_xla(accelerator: Any = "tpu") -> Any:
    """The torch_xla module, or an error that says TPUs need it and how to install it."""
    try:
        return importlib.import_module("torch_xla")
    except ImportError as err:
        raise RuntimeError(f"Trainer(accelerator={accelerator!r}) runs on TPUs through torch_xla, which is not "
                           f"installed ({err}). {_install_hint()}") from None


def device_count(accelerator: Any = "tpu") -> int:
    """How many TPU cores this machine offers (without starting XLA's runtime where torch_xla allows it)."""
    xla = torch_xla(accelerator)
    try:
        from torch_xla._internal import tpu  # what Lightning asks: reads the TPU's metadata, starts nothing

        return int(tpu.num_available_devices())
    except (ImportError, AttributeError):
        runtime = importlib.import_module("torch_xla.runtime")
        return int(runtime.global_runtime_device_count())
    finally:
        del xla


def device(index: int | None = None) -> torch.device:
    """The XLA device of TPU core ``index`` (torch_xla >= 2.5: ``torch_xla.device``; older: ``xla_model``)."""
    xla = torch_xla()
    if hasattr(xla, "device"):
        return xla.device(index) if index is not None else xla.device()
    xm = importlib.import_module("torch_xla.core.xla_model")
    return xm.xla_device(index) if index is not None else xm.xla_device()


def sync() -> None:
    """Cut the lazy graph recorded so far and run it (``torch_xla.sync``, formerly ``xm.mark_step``)."""
    xla = torch_xla()
    if hasattr(xla, "sync"):
        xla.sync()
    else:
        importlib.import_module("torch_xla.core.xla_model").mark_step()


def parse_devices(devices: Any, available: int) -> tuple[int, ...]:
    """Lightning's TPU forms: 1 (one core), every core (an int equal to the count, or "auto"), or [i] (core i)."""
    allowed = f"1, {available} (every core), 'auto', or a one-element list [i] with 0 <= i < {available}"
    value = devices
    if isinstance(value, str):
        text = value.strip()
        value = "auto" if text == "auto" else int(text) if text.isdigit() else \
            [int(p) for p in text.split(",") if p.strip()] if "," in text else value
    if value == "auto":
        value = available
    if isinstance(value, bool) or not (isinstance(value, int) and value in {1, available} or isinstance(
            value, (list, tuple)) and len(value) == 1 and isinstance(value[0], int) and 0 <= value[0] < available):
        raise ValueError(f"Trainer(accelerator='tpu', devices={devices!r}) is not valid; allowed: {allowed}.")
    ids = tuple(value) if isinstance(value, (list, tuple)) else tuple(range(value))
    if len(ids) > 1:
        raise NotImplementedError(
            f"Trainer(accelerator='tpu', devices={devices!r}) asks for {len(ids)} TPU cores; training on several "
            "cores (XLA's multi-process launch) is not implemented in ember yet. Use devices=1 (one core), or "
            "devices=[i] for core i.")
    return ids


class XLAStrategy(SingleDeviceStrategy):
    """One TPU core: the module and batches on the XLA device; the lazy graph cut once per batch."""

    strategy_name = "single_xla"

    def step_method(self, module: torch.nn.Module, name: str) -> Any:
        step = getattr(module, name)

        def xla_step(*args: Any, **kwargs: Any) -> Any:
            # The previous step (forward, backward, optimizer) is recorded but not run yet: run it now, once,
            # before this batch's step joins a new graph. (Reading a value, a logged .item(), also cuts it.)
            sync()
            return step(*args, **kwargs)

        return xla_step

    def teardown(self) -> None:
        sync()  # the last step's graph
        super().teardown()


def choose_strategy(strategy: Any, accelerator: Any, num_nodes: int) -> XLAStrategy:
    """``Trainer(strategy=...)`` on a TPU: one core in one process (see the module docstring)."""
    if strategy not in ("auto", "single_device", "single_xla", "xla") and not isinstance(strategy, XLAStrategy):
        name = strategy if isinstance(strategy, str) else type(strategy).__name__
        raise NotImplementedError(f"Trainer(accelerator='tpu', strategy={name!r}) is not implemented in ember; on a "
                                  "TPU ember runs one core in one process: leave strategy='auto'.")
    if num_nodes != 1:
        raise NotImplementedError(f"Trainer(accelerator='tpu', num_nodes={num_nodes}) is not implemented in ember; "
                                  "use num_nodes=1.")
    return strategy if isinstance(strategy, XLAStrategy) else XLAStrategy()
