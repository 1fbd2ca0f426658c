"""Data-parallel training over ``torch.distributed``: one process per device.

``ParallelStrategy`` holds what every multi-process strategy shares: joining
the process group, the collectives (``barrier``, ``broadcast``,
``all_gather``, ``reduce``), and giving each rank its share of the data.
``DDPStrategy`` adds ``DistributedDataParallel``, which averages gradients
across ranks during backward.

The loop calls ``strategy.step_method(module, "training_step")`` once per
epoch. Under DDP that returns a function that runs the step through the DDP
wrapper, because DDP prepares its gradient all-reduce in the wrapper's
forward; on one device it is the module's own bound method, at no cost.
"""
from __future__ import annotations

import atexit
import contextlib
import os
from datetime import timedelta
from typing import Any, ContextManager

import torch
import torch.distributed as dist

from .launcher import (ClusterEnvironment, ScriptLauncher, SpawnLauncher, is_loopback, listen_socket,
                       loopback_interface, watch_parent)
from ..utilities.apply import apply_to_tensors
from .strategy import Strategy

DEFAULT_TIMEOUT = timedelta(minutes=30)  # how long a collective waits for a missing rank (torch's default)
VOTE_EVERY_S = 0.5  # how often, roughly, the ranks compare notes on a SIGTERM (see vote_on_stop)
_OPS = {"sum": "SUM", "mean": "SUM", "avg": "SUM", "max": "MAX", "min": "MIN", "prod": "PRODUCT"}


class ParallelStrategy(Strategy):
    """Several processes, one device each, in one ``torch.distributed`` process group."""

    strategy_name = "parallel"

    def __init__(self, process_group_backend: str | None = None, timeout: timedelta | None = DEFAULT_TIMEOUT,
                 start_method: str = "popen") -> None:
        super().__init__()
        if start_method not in ("popen", "spawn", "fork", "forkserver"):
            raise ValueError(f"start_method={start_method!r} is not valid; allowed: 'popen', 'spawn', 'fork', "
                             "'forkserver'.")
        self.process_group_backend = process_group_backend
        self.timeout = timeout if timeout is not None else DEFAULT_TIMEOUT
        self.start_method = start_method
        self.num_nodes = 1
        self.num_processes = 1
        self.launcher: Any = None
        self.cluster = ClusterEnvironment.detect()
        self._set_ranks(self.cluster)
        self._vote: Any = None  # the stop vote in flight: (work, tensor)
        self._batches_to_vote = 1
        self._batches_since_vote = 1
        self._last_vote_time = 0.0
        self._local_signal: int | None = None
        self._deferred_to: Any = None
        self._module: Any = None  # the LightningModule being run (set by setup_module)

    # ---- who am I --------------------------------------------------------
    def _set_ranks(self, env: ClusterEnvironment) -> None:
        self.global_rank = env.global_rank
        self.local_rank = env.local_rank
        self.node_rank = env.node_rank

    @property
    def world_size(self) -> int:  # type: ignore[override]
        return self.num_processes * self.num_nodes

    def configure(self, num_processes: int, num_nodes: int) -> None:
        """Called by ``choose()`` once the device count and node count are known."""
        self.num_processes = num_processes
        self.num_nodes = num_nodes
        env = self.cluster
        if env.launched and env.world_size != self.world_size:
            raise ValueError(
                f"This process was started by {env.source} with WORLD_SIZE={env.world_size}, but the Trainer asks for "
                f"devices={num_processes} x num_nodes={num_nodes} = {self.world_size} processes. Make them agree: "
                "devices must equal the processes per node (torchrun --nproc_per_node, SLURM --ntasks-per-node) "
                "and num_nodes the number of nodes."
            )
        if env.launched:
            self.launcher = None
        elif self.start_method == "popen":
            self.launcher = ScriptLauncher(num_processes, num_nodes)
        else:
            self.launcher = SpawnLauncher(num_processes, num_nodes, self.start_method)

    @property
    def distributed_sampler_kwargs(self) -> dict[str, int]:
        return {"num_replicas": self.world_size, "rank": self.global_rank}

    # ---- joining the process group ---------------------------------------
    def setup_environment(self) -> None:
        env = ClusterEnvironment.detect()
        if not env.launched:
            return  # the launcher has not run (yet): nothing to join
        self.cluster = env
        self._set_ranks(env)
        # As Lightning's DDP does at every fit/validate/test/predict: every rank starts from the seed that
        # seed_everything set (when it was called), whatever the model's construction drew from the RNG.
        seed = os.environ.get("PL_GLOBAL_SEED")
        if seed is not None:
            from ..utilities.seed import seed_everything

            seed_everything(int(seed), workers=bool(int(os.environ.get("PL_SEED_WORKERS", "0"))), verbose=False)
        from ..utilities.rank_zero import rank_zero_only

        rank_zero_only.rank = self.global_rank
        assert self.accelerator is not None
        self.root_device = self.accelerator.root_device(self.local_rank)
        if self.root_device.type == "cuda":
            torch.cuda.set_device(self.root_device)
        if dist.is_available() and dist.is_initialized():
            if dist.get_world_size() != self.world_size:
                raise RuntimeError(f"A process group of {dist.get_world_size()} processes already exists; this "
                                   f"Trainer needs {self.world_size}.")
            return
        launcher_pid = int(os.environ.get("EMBER_LAUNCHER_PID", 0))
        if env.source == "ember" and launcher_pid != os.getpid():
            watch_parent(launcher_pid, self.global_rank)  # a child of ember's launcher dies with it
        backend = self.process_group_backend = self.backend()
        if is_loopback(env.master_addr) and "GLOO_SOCKET_IFNAME" not in os.environ and loopback_interface():
            os.environ["GLOO_SOCKET_IFNAME"] = loopback_interface()  # a single machine never leaves 127.0.0.1
        kwargs: dict[str, Any] = {"backend": backend, "rank": self.global_rank, "world_size": self.world_size,
                                  "timeout": self.timeout}
        if backend == "nccl":
            kwargs["device_id"] = self.root_device
        if env.source == "torchrun":
            kwargs["init_method"] = "env://"  # the torchrun agent's store (TORCHELASTIC_USE_AGENT_STORE)
        else:
            # ember's launchers and SLURM: global rank 0 hosts the rendezvous store on a socket it binds itself
            # (127.0.0.1 only when the master address is a loopback one); the others connect to it.
            listener = getattr(self.launcher, "listener", None)
            if listener is None and self.global_rank == 0 and env.source == "slurm":
                listener = listen_socket(env.master_addr, env.master_port)
            master = listener is not None
            kwargs["store"] = dist.TCPStore(
                env.master_addr, env.master_port, self.world_size if master else None, master, self.timeout,
                wait_for_workers=False, **({"master_listen_fd": listener.detach()} if master else {}))
            if self.launcher is not None:
                self.launcher.listener = None  # the store owns the socket now
        from .failures import install_excepthook

        install_excepthook()  # an uncaught error on this rank ends with a one-line summary (see failures.py)
        dist.init_process_group(**kwargs)
        install_excepthook()  # on top again: init_process_group wraps sys.excepthook to prefix "[rankN]:"
        # Leave the group in order while the interpreter is still whole: a gloo thread that drops the last
        # reference to a finished collective during interpreter shutdown needs the GIL and aborts the
        # process ("terminate called without an active exception"); destroying the group joins those threads.
        atexit.register(self.destroy_process_group)

    def backend(self) -> str:
        """``process_group_backend`` if given; otherwise nccl on CUDA, gloo on the CPU."""
        return self.process_group_backend or ("nccl" if self.root_device.type == "cuda" else "gloo")

    def destroy_process_group(self) -> None:
        global _CONTROL
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()  # every group, the control group included
        _CONTROL = None

    # ---- collectives ------------------------------------------------------
    def _live(self) -> bool:
        return dist.is_available() and dist.is_initialized()

    def barrier(self, name: str | None = None) -> None:
        if not self._live():
            return
        if self.process_group_backend == "nccl":
            dist.barrier(device_ids=[self.root_device.index])
        else:
            dist.barrier()

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        if not self._live():
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src, device=self.root_device if self.root_device.type == "cuda" else None)
        return box[0]

    def all_gather_object(self, obj: Any) -> list[Any]:
        if not self._live():
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def all_gather(self, tensor: Any, group: Any = None, sync_grads: bool = False) -> Any:
        """Each tensor in ``tensor`` (a tensor or a collection) becomes a stack of every rank's copy: shape (W, ...)."""
        if not self._live():
            return tensor
        return apply_to_tensors(tensor, lambda t: _gather(t, group, sync_grads))

    def reduce(self, tensor: Any, group: Any = None, reduce_op: Any = "mean") -> Any:
        """All-reduce a tensor across ranks ("mean", "sum", "max", "min" or a ``ReduceOp``); other values pass."""
        if not isinstance(tensor, torch.Tensor) or not self._live():
            return tensor
        mean = False
        if reduce_op is None or isinstance(reduce_op, str):
            name = (reduce_op or "mean").lower()
            if name not in _OPS:
                raise ValueError(f"reduce_op={reduce_op!r} is not supported; allowed: {', '.join(_OPS)}.")
            mean = name in ("mean", "avg")
            op = getattr(dist.ReduceOp, _OPS[name])
        else:
            op = reduce_op
        out = tensor.detach().clone()
        if mean and not out.is_floating_point():
            out = out.float()
        dist.all_reduce(out, op=op, group=group)
        if mean:
            out = out / (dist.get_world_size(group) if group is not None else self.world_size)
        return out

    def reduce_boolean_decision(self, decision: bool, all: bool = True) -> bool:
        if not self._live():
            return decision
        votes = torch.tensor(int(bool(decision)), device=self.root_device)
        dist.all_reduce(votes, op=dist.ReduceOp.SUM)
        return bool(votes == self.world_size) if all else bool(votes > 0)

    # ---- stopping together --------------------------------------------------
    @property
    def votes_on_stop(self) -> bool:  # type: ignore[override]
        return self.world_size > 1

    def vote_on_stop(self, preempt_signal: int | None) -> int | None:
        """Make a SIGTERM seen by any rank stop every rank after the same batch.

        Called by the loop after every training batch with the signal this rank has acted on (None so
        far); returns the signal every rank agreed to stop for once a vote says so (the loop then stops),
        None otherwise. While this strategy votes, SIGTERM only records the signal. About every ``VOTE_EVERY_S`` seconds (a number of batches all ranks agreed on in the
        previous vote) the ranks exchange what they recorded in an asynchronous all-reduce on a separate
        gloo group, and apply the previous vote's result: every rank at the same batch, by running the
        handler the fit installed (ember's preemption guard: finish the step, save a checkpoint, exit).
        The stop comes one or two vote intervals after the signal; the cost is one tiny message per
        interval, overlapped with training.
        """
        self._batches_to_vote -= 1
        if self._batches_to_vote > 0:
            return None
        import time

        self._defer_sigterm()
        now = time.perf_counter()
        if self._vote is not None:
            work, box = self._vote
            work.wait()
            self._vote = None
            agreed, interval = int(box[0]), -int(box[1])
            if agreed and preempt_signal is None:
                self._local_signal = None
                if self._deferred_to is not None:
                    self._deferred_to(agreed, None)  # the fit's SIGTERM handler: it says so, and chains the program's
                return agreed  # every rank stops after this batch: no vote left in flight
            seconds_per_batch = (now - self._last_vote_time) / max(self._batches_since_vote, 1)
        else:
            interval, seconds_per_batch = 1, 0.0
        # Each rank proposes how many batches make VOTE_EVERY_S; the smallest proposal wins (MAX of negatives).
        proposal = max(1, min(1000, int(VOTE_EVERY_S / seconds_per_batch))) if seconds_per_batch else 1
        local = self._local_signal or preempt_signal or 0
        box = torch.tensor([local, -proposal], dtype=torch.int64)
        self._vote = (dist.all_reduce(box, op=dist.ReduceOp.MAX, group=_control_group(), async_op=True), box)
        self._batches_to_vote = self._batches_since_vote = interval
        self._last_vote_time = now
        return None

    def _defer_sigterm(self) -> None:
        """Route the fit's preemption signals (SIGTERM, and a SLURM requeue signal) through the vote."""
        import signal
        import threading

        if threading.current_thread() is not threading.main_thread():
            return
        # The fit's guard marks its handler (ember.checkpoint.preemption_guard); it may handle several signals.
        guarded = [s for s in signal.valid_signals() - {signal.SIGKILL, signal.SIGSTOP}
                   if getattr(signal.getsignal(s), "ember_preemption", False)]
        if not guarded:
            return  # none, or already deferred (the handlers are then this strategy's _record_signal)
        self._deferred_to = signal.getsignal(guarded[0])  # runs later, inside a vote, on every rank at the same batch
        for signum in guarded:
            signal.signal(signum, self._record_signal)  # the fit's guard restores its own at the end

    def _record_signal(self, signum: int, frame: Any) -> None:
        self._local_signal = signum

    # ---- data -------------------------------------------------------------
    def distribute_loader(self, loader: Any, stage: str, use_distributed_sampler: bool, overfit: bool = False) -> Any:
        """Give this rank its share of ``loader``, by Lightning's rules (the table in ``ember.runtime.samplers``).

        ``use_distributed_sampler=False`` keeps the loader's sampler: every rank then reads all of it
        unless the sampler itself shards by rank.
        """
        from .samplers import prepare_loader

        shard = self.distributed_sampler_kwargs if use_distributed_sampler else None
        return prepare_loader(loader, stage, shard=shard, overfit=overfit, epoch_source=self._current_epoch)

    def _current_epoch(self) -> int:
        """The trainer's epoch, which samplers made for evaluation take before each pass (as in Lightning)."""
        module = self._module
        return int(getattr(module, "current_epoch", 0) or 0) if module is not None else 0

    def setup_module(self, module: torch.nn.Module) -> torch.nn.Module:
        self._module = module
        return super().setup_module(module)

    def teardown(self) -> None:
        # The process group stays up between fit/validate/test/predict; it ends with the process. The last
        # stop vote is awaited here, on every rank, so no rank can exit while another's share is in flight.
        if self._vote is not None:
            self._vote[0].wait()
            self._vote = None


_CONTROL: Any = None


def _control_group() -> Any:
    """A small gloo group for control messages (the stop vote), created once, at the first vote.

    Its own connections and threads keep the vote off the queue of DDP's gradient all-reduces (on the
    default group it sat in front of them: about 2% of a step on CPU), and off the GPU under nccl.
    Every rank reaches its first vote at the same batch, so every rank creates it at the same point.
    """
    global _CONTROL
    if _CONTROL is None:
        _CONTROL = dist.new_group(backend="gloo")
    return _CONTROL


def _gather(tensor: torch.Tensor, group: Any, sync_grads: bool) -> torch.Tensor:
    tensor = tensor.contiguous()
    if sync_grads:
        from torch.distributed.nn.functional import all_gather

        return torch.stack(all_gather(tensor, group=group or dist.group.WORLD))
    size = dist.get_world_size(group)
    out = [torch.empty_like(tensor) for _ in range(size)]
    dist.all_gather(out, tensor, group=group)
    return torch.stack(out)


class _StepRouter(torch.nn.Module):
    """The module DDP/FSDP wraps: its forward runs one of the LightningModule's step methods.

    DDP sets up the gradient all-reduce (and FSDP gathers parameters) in the
    wrapper's forward, so the step must run through it.
    """

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return getattr(self.module, method)(*args, **kwargs)


_UNSUPPORTED = ("accelerator", "parallel_devices", "cluster_environment", "checkpoint_io", "precision_plugin",
                "model_averaging_period", "ddp_comm_wrapper")


class DDPStrategy(ParallelStrategy):
    """``DistributedDataParallel`` on every rank. Extra keyword arguments go to ``DistributedDataParallel``
    (``find_unused_parameters``, ``static_graph``, ``gradient_as_bucket_view``, ``bucket_cap_mb``, ...)."""

    strategy_name = "ddp"
    needs_no_sync = True

    def __init__(self, accelerator: Any = None, parallel_devices: Any = None, cluster_environment: Any = None,
                 checkpoint_io: Any = None, precision_plugin: Any = None, ddp_comm_state: Any = None,
                 ddp_comm_hook: Any = None, ddp_comm_wrapper: Any = None, model_averaging_period: Any = None,
                 process_group_backend: str | None = None, timeout: timedelta | None = DEFAULT_TIMEOUT,
                 start_method: str = "popen", **kwargs: Any) -> None:
        given = dict(accelerator=accelerator, parallel_devices=parallel_devices,
                     cluster_environment=cluster_environment, checkpoint_io=checkpoint_io,
                     precision_plugin=precision_plugin, model_averaging_period=model_averaging_period,
                     ddp_comm_wrapper=ddp_comm_wrapper)
        for name in _UNSUPPORTED:
            if given[name] is not None:
                raise NotImplementedError(f"DDPStrategy({name}=...) is not implemented in ember; leave it None "
                                          "(ember picks the devices and the cluster environment itself).")
        super().__init__(process_group_backend, timeout, start_method)
        self._ddp_kwargs = kwargs
        self._comm_hook = ddp_comm_hook
        self._comm_state = ddp_comm_state
        self._router: _StepRouter | None = None
        if start_method != "popen":
            self.strategy_name = f"ddp_{start_method}"

    def setup_module(self, module: torch.nn.Module) -> torch.nn.Module:
        from torch.nn.parallel import DistributedDataParallel

        super().setup_module(module)  # device, dtype; self.model = module
        if not self._live():
            return module  # not launched yet (Trainer built, fit() not called)
        self._router = _StepRouter(module)
        device_ids = [self.root_device.index] if self.root_device.type == "cuda" else None
        # DDP broadcasts rank 0's parameters and buffers here, so every rank starts from the same weights.
        self.model = DistributedDataParallel(self._router, device_ids=device_ids, **self._ddp_kwargs)
        if self._comm_hook is not None:
            self.model.register_comm_hook(state=self._comm_state, hook=self._comm_hook)
        return module

    def step_method(self, module: torch.nn.Module, name: str) -> Any:
        if name != "training_step" or self._router is None:
            return getattr(module, name)  # evaluation needs no gradient sync
        ddp = self.model

        def training_step(*args: Any, **kwargs: Any) -> Any:
            return ddp("training_step", *args, **kwargs)

        return training_step

    def no_backward_sync(self, enabled: bool) -> ContextManager[Any]:
        # DDP decides at forward time whether the next backward all-reduces, so the loop enters this
        # context around the forward as well as the backward of every step that does not step the optimizer.
        if enabled and self._router is not None:
            return self.model.no_sync()
        return contextlib.nullcontext()

    def teardown(self) -> None:
        super().teardown()
        # Unwrap: the next fit/validate/test wraps again (and re-broadcasts rank 0's weights).
        if self._router is not None:
            self.model = self._router.module
        self._router = None
