"""How the model is placed and how processes cooperate.

``Strategy`` is the laptop case: one process, one device, identity
collectives. The distributed strategies (``ember.runtime.ddp``,
``ember.runtime.fsdp``) override the few methods that differ: starting and
joining processes, wrapping the module, skipping gradient sync inside an
accumulation window, sharding the data, the collectives and checkpoint IO.
The loop and the Trainer only ever call these methods; they never ask which
strategy they have.
"""
from __future__ import annotations

import contextlib
import os
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
    num_nodes = 1
    launcher: Any = None  # starts the other processes (ember.runtime.launcher); None for one process

    @property
    def is_global_zero(self) -> bool:
        return self.global_rank == 0

    # ---- set-up ---------------------------------------------------------
    def setup_environment(self) -> None:
        """Join the process group (after the launcher has run). One process has nothing to join."""
        return None

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
    def step_method(self, module: torch.nn.Module, name: str) -> Any:
        """The callable the loop runs for ``name`` ("training_step", "validation_step", ...).

        Looked up once per epoch. Wrapping strategies route the step through their
        wrapper (DDP's forward prepares the gradient all-reduce); here it is the bound method.
        """
        return getattr(module, name)

    # True when backward inside an accumulation window must skip a gradient sync;
    # the loop then goes through no_backward_sync() instead of a bare loss.backward().
    needs_no_sync = False

    # True when the ranks must vote each step on stopping (see DDPStrategy.vote_on_stop); the loop then calls
    # vote_on_stop(signal) after every batch and stops when it returns a signal. One process never needs it.
    votes_on_stop = False

    def vote_on_stop(self, preempt_signal: int | None) -> int | None:
        return None

    @property
    def moves_batches(self) -> bool:
        """Whether a batch must go through ``batch_to_device`` and the precision's cast before the step."""
        return self.root_device.type != "cpu" or (self.precision is not None and self.precision.param_dtype is not None)

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

    def all_gather_object(self, obj: Any) -> list[Any]:
        return [obj]

    # ---- data -------------------------------------------------------------
    def distribute_loader(self, loader: Any, stage: str, use_distributed_sampler: bool, overfit: bool = False) -> Any:
        """This rank's share of ``loader``; with one process, all of it.

        One process keeps the loader's sampler; only Lightning's single-process rules apply (see
        ``ember.runtime.samplers``): predict keeps its last short batch, and ``overfit`` reads in order.
        """
        from .samplers import prepare_loader

        return prepare_loader(loader, stage, shard=None, overfit=overfit)

    # ---- checkpoint IO (sharded strategies gather or scatter here) ----------
    def lightning_module_state_dict(self, module: torch.nn.Module) -> dict[str, Any]:
        return module.state_dict()

    def load_module_state_dict(self, module: torch.nn.Module, state: dict[str, Any]) -> Any:
        """Load ``state`` into ``module`` (strict=False); returns the missing/unexpected keys result."""
        return module.load_state_dict(state, strict=False)

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        return optimizer.state_dict()

    def load_optimizer_state(self, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        optimizer.load_state_dict(state)

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: str) -> None:
        """Write ``checkpoint`` atomically; only global rank 0 writes."""
        if self.is_global_zero:
            from ..checkpoint import save_atomic

            save_atomic(checkpoint, filepath)

    def load_checkpoint(self, path: str) -> dict[str, Any]:
        """A checkpoint that is a directory (a sharded save); single files go through ember.checkpoint.load_file."""
        from ..checkpoint import CheckpointError

        raise CheckpointError(f"Checkpoint {path!r} is a directory: a sharded checkpoint, which only "
                              "FSDPStrategy(state_dict_type='sharded') can read.")

    def remove_checkpoint(self, filepath: str) -> None:
        if self.is_global_zero and os.path.isfile(filepath):
            os.remove(filepath)

    def teardown(self) -> None:
        return None

    # ---- hooks (Lightning's Strategy hooks; ember.hooks calls them after the callbacks and the module) ----
    # Nothing to do for the strategies ember ships; a subclass that overrides one is called at that point.
    def on_train_start(self) -> None: ...

    def on_train_end(self) -> None: ...

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None: ...

    def on_validation_start(self) -> None: ...

    def on_validation_end(self) -> None: ...

    def on_test_start(self) -> None: ...

    def on_test_end(self) -> None: ...

    def on_predict_start(self) -> None: ...

    def on_predict_end(self) -> None: ...


class SingleDeviceStrategy(Strategy):
    def __init__(self, device: Any = None) -> None:
        super().__init__()
        self._requested_device = torch.device(device) if device is not None else None

    def connect(self, accelerator: Accelerator, precision: Precision) -> None:
        super().connect(accelerator, precision)
        if self._requested_device is not None:
            self.root_device = self._requested_device


STRATEGIES = ("auto", "single_device", "ddp", "ddp_spawn", "ddp_fork", "ddp_notebook",
              "ddp_find_unused_parameters_true", "ddp_find_unused_parameters_false", "fsdp")


def choose(strategy: Any, accelerator: Accelerator, num_nodes: int = 1) -> Strategy:
    """Resolve ``Trainer(strategy=...)``: a name from ``STRATEGIES`` or a ``Strategy`` object.

    "auto" is one device in one process, or DDP when the Trainer asks for more
    than one process in all (devices x num_nodes) or a launcher (torchrun,
    SLURM) started several.
    """
    from .launcher import ClusterEnvironment

    if not isinstance(strategy, (Strategy, str)) or isinstance(strategy, str) and strategy not in STRATEGIES:
        raise ValueError(
            f"Trainer(strategy={strategy!r}) is not known; allowed: {', '.join(repr(s) for s in STRATEGIES)}, "
            "or a Strategy object such as DDPStrategy(...)."
        )
    if accelerator.name == "xla":
        from .xla import choose_strategy

        return choose_strategy(strategy, accelerator, num_nodes)
    processes = accelerator.num_devices
    many = processes * num_nodes > 1 or ClusterEnvironment.detect().world_size > 1
    if strategy in ("auto", "single_device") and not many:
        return strategy if isinstance(strategy, Strategy) else SingleDeviceStrategy()
    if strategy == "single_device" or isinstance(strategy, SingleDeviceStrategy) or type(strategy) is Strategy:
        if many:
            raise ValueError(f"Trainer(strategy='single_device') runs one process, but devices={processes} and "
                             f"num_nodes={num_nodes} ask for {processes * num_nodes}. Use strategy='ddp'.")
        return strategy if isinstance(strategy, Strategy) else SingleDeviceStrategy()
    if isinstance(strategy, str):
        strategy = _from_name(strategy)
    configure = getattr(strategy, "configure", None)
    if configure is None:
        raise TypeError(f"Trainer(strategy={type(strategy).__name__}(...)) needs a multi-process strategy here "
                        f"(devices={processes}, num_nodes={num_nodes}).")
    configure(processes, num_nodes)
    return strategy


def _from_name(name: str) -> Strategy:
    from .ddp import DDPStrategy

    if name in ("auto", "ddp"):
        return DDPStrategy()
    if name in ("ddp_spawn", "ddp_fork"):
        return DDPStrategy(start_method=name[len("ddp_"):])
    if name == "ddp_notebook":
        return DDPStrategy(start_method="fork")
    if name == "ddp_find_unused_parameters_true":
        return DDPStrategy(find_unused_parameters=True)
    if name == "ddp_find_unused_parameters_false":
        return DDPStrategy(find_unused_parameters=False)
    from .fsdp import FSDPStrategy

    return FSDPStrategy()
