"""How the model is placed and how processes cooperate.

``SingleDeviceStrategy`` is the laptop case. Distributed strategies subclass
it and override the few methods that differ (wrapping the module, backward
without gradient sync during accumulation, and the collectives).
"""
from __future__ import annotations

import contextlib
from typing import Any, ContextManager

import torch

from .accelerator import Accelerator, move_to_device
from .precision import Precision


class Strategy:
    """Single process, single device. The base every strategy builds on."""

    strategy_name = "single_device"

    def __init__(self) -> None:
        self.accelerator: Accelerator | None = None
        self.precision: Precision | None = None
        self.root_device = torch.device("cpu")
        self.model: torch.nn.Module | None = None  # what forward runs through (a wrapper under DDP)

    # ---- identity -------------------------------------------------------
    global_rank = 0
    local_rank = 0
    node_rank = 0
    world_size = 1

    @property
    def is_global_zero(self) -> bool:
        return self.global_rank == 0

    # ---- set-up ---------------------------------------------------------
    def connect(self, accelerator: Accelerator, precision: Precision) -> None:
        self.accelerator = accelerator
        self.precision = precision
        self.root_device = accelerator.root_device(self.local_rank)

    def setup_module(self, module: torch.nn.Module) -> torch.nn.Module:
        module.to(self.root_device)
        assert self.precision is not None
        self.precision.convert_module(module)
        self.model = module
        return module

    def batch_to_device(self, batch: Any) -> Any:
        # A DataLoader yields CPU tensors, so on the CPU there is nothing to move.
        if self.root_device.type == "cpu":
            return batch
        return move_to_device(batch, self.root_device, non_blocking=True)

    # ---- step pieces ----------------------------------------------------
    def no_backward_sync(self, enabled: bool) -> ContextManager[Any]:
        """Skip gradient all-reduce for backward passes inside an accumulation window."""
        return contextlib.nullcontext()

    # ---- collectives (identity for one process) -------------------------
    def barrier(self, name: str | None = None) -> None:
        return None

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        return obj

    def all_gather(self, tensor: Any, group: Any = None, sync_grads: bool = False) -> Any:
        return tensor

    def reduce(self, tensor: Any, group: Any = None, reduce_op: str | None = "mean") -> Any:
        return tensor

    def reduce_boolean_decision(self, decision: bool, all: bool = True) -> bool:
        return decision

    def teardown(self) -> None:
        return None


class SingleDeviceStrategy(Strategy):
    def __init__(self, device: Any = None) -> None:
        super().__init__()
        self._requested_device = torch.device(device) if device is not None else None

    def connect(self, accelerator: Accelerator, precision: Precision) -> None:
        super().connect(accelerator, precision)
        if self._requested_device is not None:
            self.root_device = self._requested_device


STRATEGIES = ("auto", "single_device")


def choose(strategy: Any, accelerator: Accelerator) -> Strategy:
    if isinstance(strategy, Strategy):
        return strategy
    if not isinstance(strategy, str) or strategy not in STRATEGIES + ("ddp", "ddp_spawn", "fsdp", "ddp_find_unused_parameters_true"):
        raise ValueError(
            f"Trainer(strategy={strategy!r}) is not known; allowed: 'auto', 'single_device', 'ddp', 'ddp_spawn', "
            "'fsdp', or a Strategy object."
        )
    if accelerator.num_devices > 1 or strategy not in STRATEGIES:
        raise NotImplementedError(
            f"Trainer(strategy={strategy!r}, devices={accelerator.num_devices}) needs more than one process; "
            "multi-device training is not yet supported in this version of ember. Use devices=1."
        )
    return SingleDeviceStrategy()
