"""Where the processes of a distributed run come from, and how they die together.

Three sources, one per class below:

- ``ClusterEnvironment.detect()`` reads who started this process: torchrun
  (``RANK``/``LOCAL_RANK``/``WORLD_SIZE``/``MASTER_*``), SLURM's ``srun``
  (``SLURM_PROCID``/``SLURM_LOCALID``/``SLURM_NODEID``/``SLURM_NTASKS``), or an
  ember launcher (the same variables plus ``EMBER_LAUNCHER_PID``). Nothing set
  means ember starts the processes itself.
- ``ScriptLauncher`` (``strategy="ddp"``): the running process becomes local
  rank 0 and starts ranks 1..N-1 by running the same command line again with
  the rank variables set, as ``torchrun`` would.
- ``SpawnLauncher`` (``strategy="ddp_spawn"``): ``torch.multiprocessing``
  starts N fresh workers that receive the pickled Trainer; rank 0 sends the
  trained weights and results back to the calling process.

Failure handling (the bounds are documented in the README's Scaling out section):

- a rank that raises exits non-zero with its traceback on stderr; the launching
  process notices within ``POLL_S`` seconds, kills the other ranks and exits
  with that code, its last lines naming that rank's error (``ember.runtime.failures``);
- a rank killed by a signal is noticed the same way;
- if the launching process itself dies, every child notices within
  ``POLL_S`` seconds that its parent is gone and exits.
"""
from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from . import failures

POLL_S = 0.2  # how often parents look at children and children at their parent
# The documented bound (the README's Scaling out section): after any rank dies, by an exception or SIGKILL, the whole job
# has exited non-zero within this many seconds. Detection takes POLL_S or less; the rest is process exit.
FAILURE_EXIT_BOUND_S = 10.0
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _log(message: str) -> None:
    print(f"ember: {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- who started us
@dataclass(frozen=True)
class ClusterEnvironment:
    """This process's place in the job, as told by whoever started it."""

    source: str  # "local" (nobody yet), "ember", "torchrun" or "slurm"
    world_size: int = 1
    global_rank: int = 0
    local_rank: int = 0
    node_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 0

    @property
    def launched(self) -> bool:
        """True when the processes already exist (ember must not start any)."""
        return self.source != "local"

    @staticmethod
    def detect(env: dict[str, str] | None = None) -> "ClusterEnvironment":
        env = os.environ if env is None else env
        world_text = env.get("WORLD_SIZE") or _live_world_size()  # (Lightning's teardown deletes WORLD_SIZE)
        if "RANK" in env and "LOCAL_RANK" in env and world_text:
            source = "ember" if "EMBER_LAUNCHER_PID" in env else "torchrun"
            world = int(world_text)
            local_world = int(env.get("LOCAL_WORLD_SIZE", 0)) or None
            rank = int(env["RANK"])
            node = env.get("NODE_RANK", env.get("GROUP_RANK"))
            if node is None:
                node = str(rank // local_world) if local_world else "0"
            return ClusterEnvironment(source, world, rank, int(env["LOCAL_RANK"]), int(node),
                                      env.get("MASTER_ADDR", "127.0.0.1"), int(env.get("MASTER_PORT", 0)))
        if _slurm_manages_tasks(env):
            return ClusterEnvironment(
                "slurm", int(env["SLURM_NTASKS"]), int(env["SLURM_PROCID"]), int(env.get("SLURM_LOCALID", 0)),
                int(env.get("SLURM_NODEID", 0)), env.get("MASTER_ADDR") or _first_slurm_host(env),
                int(env.get("MASTER_PORT") or 20000 + int(env.get("SLURM_JOB_ID", "0")) % 10000))
        return ClusterEnvironment("local", node_rank=int(env.get("NODE_RANK", 0)),
                                  master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
                                  master_port=int(env.get("MASTER_PORT", 0)))


def _live_world_size() -> str | None:
    """The size of an already initialised default process group, if any (without importing torch.distributed)."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        return str(dist.get_world_size())
    return None


def _slurm_manages_tasks(env: Any) -> bool:
    # One SLURM task is a batch script or an interactive shell: ember then launches the local processes itself.
    # Several tasks mean `srun` already started one process per device.
    if "SLURM_NTASKS" not in env or "SLURM_PROCID" not in env:
        return False
    if env.get("SLURM_JOB_NAME") in ("bash", "interactive"):
        return False
    return int(env["SLURM_NTASKS"]) > 1


def _first_slurm_host(env: Any) -> str:
    """The first host of ``SLURM_NODELIST`` ("node[03-05,7],gpu1" -> "node03"), where rank 0 runs."""
    nodes = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST") or "127.0.0.1"
    first, depth = "", 0
    for ch in nodes:
        if ch == "," and depth == 0:
            break
        depth += ch == "["
        depth -= ch == "]"
        first += ch
    if "[" not in first:
        return first
    prefix, rest = first.split("[", 1)
    head = rest.rstrip("]").split(",")[0].split("-")[0]
    return prefix + head


def is_loopback(addr: str) -> bool:
    return addr in LOOPBACK or addr.startswith("127.")


def loopback_interface() -> str | None:
    """Name of the loopback network interface ("lo" on Linux, "lo0" on macOS)."""
    try:
        names = [name for _, name in socket.if_nameindex()]
    except (OSError, AttributeError):
        return None
    for name in ("lo", "lo0"):
        if name in names:
            return name
    return None


def listen_socket(addr: str, port: int = 0) -> socket.socket:
    """A listening TCP socket for the rendezvous store; port 0 picks a free one."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1" if is_loopback(addr) else "", port))
    sock.listen(512)
    return sock


# --------------------------------------------------------------------------- children watch their parent
_watching_parent = False


def watch_parent(parent_pid: int, rank: int) -> None:
    """Exit this process soon after ``parent_pid`` dies (it would otherwise hang in a collective)."""
    global _watching_parent
    if _watching_parent or parent_pid <= 1:
        return
    _watching_parent = True

    def run() -> None:
        while True:
            time.sleep(POLL_S)
            if os.getppid() != parent_pid:
                _log(f"rank {rank}: the launching process (pid {parent_pid}) is gone; exiting.")
                os._exit(1)

    if os.getppid() != parent_pid:
        _log(f"rank {rank}: the launching process (pid {parent_pid}) is already gone; exiting.")
        os._exit(1)
    threading.Thread(target=run, name="ember-parent-watch", daemon=True).start()


# --------------------------------------------------------------------------- ddp: re-run the script
def script_command() -> list[str]:
    """The command line that started this process, to be run again for the other ranks."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name and spec.name != "__main__":
        name = spec.name[: -len(".__main__")] if spec.name.endswith(".__main__") else spec.name
        return [sys.executable, "-m", name, *sys.argv[1:]]
    script = sys.argv[0] if sys.argv else ""
    if not script or script == "-c" or not os.path.isfile(script):
        raise RuntimeError(
            "Trainer(strategy='ddp') starts the other processes by running this program's command line again, but "
            f"this process was not started from a script file (sys.argv[0]={script!r}, e.g. `python -c` or an "
            "interactive session). Run a script, launch it with torchrun, or use strategy='ddp_spawn'."
        )
    return [sys.executable, os.path.abspath(script), *sys.argv[1:]]


class ScriptLauncher:
    """Rank 0 is this process; ranks 1..N-1 run the same command line with their rank in the environment."""

    start_method = "popen"

    def __init__(self, num_processes: int, num_nodes: int) -> None:
        self.num_processes = num_processes
        self.num_nodes = num_nodes
        self.children: list[subprocess.Popen] = []
        self.listener: socket.socket | None = None  # the store's socket, bound before any child starts
        self._launched = False
        self._lock = threading.Lock()
        self._done = False
        self.first_failure: tuple[int, int] | None = None  # (local rank, exit code) of the first child that failed
        self.node_rank = 0
        self.error_dir: str | None = None  # where each rank records its uncaught error (failures.ERROR_DIR_VAR)

    def should_launch(self) -> bool:
        return not self._launched and not ClusterEnvironment.detect().launched

    def launch(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        self._start_children()
        try:
            return fn(*args, **kwargs)
        except BaseException as exc:
            failed_at = time.time()
            try:
                exc._ember_failed_at = failed_at  # type: ignore[attr-defined]  # (for the excepthook, later)
            except AttributeError:
                pass
            # The other ranks wait for this one in their next collective: stop them now, not at the timeout.
            self.stop_children(grace=1.0)
            report = self.failure_report(exc, failed_at) if isinstance(exc, Exception) else None
            if report is not None:
                raise report from None  # another rank failed first: end with its error, not this consequence
            raise

    # ---- what to say when a rank failed -------------------------------------
    def _global_rank(self, local_rank: int) -> int:
        return self.node_rank * self.num_processes + local_rank

    def _child_root(self, before: float) -> dict[str, Any] | None:
        """The error of the child that failed first, if it failed before ``before`` (a time.time())."""
        root = failures.root_cause(failures.read_records(self.error_dir, exclude=self._global_rank(0)))
        return root if root is not None and root["time"] <= before else None

    def failure_report(self, exc: BaseException, failed_at: float) -> failures.RankFailedError | None:
        """A ``RankFailedError`` ending with the child's error when this process's ``exc`` followed a child's failure.

        None when ``exc`` is this process's own error (it then ends the report itself).
        """
        peer_gone = failures.is_peer_gone(exc)
        # A lost peer follows another rank's failure whenever that was; an error of this rank's own is the
        # cause unless a child's own error was recorded before it.
        root = self._child_root(float("inf") if peer_gone else failed_at)
        if root is None and not (peer_gone and self.first_failure is not None):
            return None
        if root is not None and root["peer_gone"] and not peer_gone:
            return None  # the child only saw this process go away
        others = failures.read_records(self.error_dir, exclude=self._global_rank(0))
        lines = [failures.peer_gone_line(e["rank"], e["summary"]) for e in others if e is not root and e["peer_gone"]]
        lines.append(failures.later_line(self._global_rank(0), failures.summarize(type(exc), exc), peer_gone))
        died = None
        if root is None and self.first_failure is not None:
            died = (self._global_rank(self.first_failure[0]), _describe_code(self.first_failure[1]))
        return failures.rank_failed(root, lines, died=died)

    def _ending_for_hook(self, exc: BaseException, rank: int, entry: dict[str, Any]) -> list[str] | None:
        """The excepthook's question on this process: stop the children; did one fail first? Then its error ends."""
        failed_at = getattr(exc, "_ember_failed_at", None) or time.time()
        self.stop_children(grace=1.0)
        if not entry or isinstance(exc, failures.RankFailedError):
            return None
        root = self._child_root(float("inf") if entry["peer_gone"] else failed_at)
        if root is not None and (entry["peer_gone"] or not root["peer_gone"]):
            return failures.report_lines(root)
        if entry["peer_gone"] and self.first_failure is not None:
            local, code = self.first_failure
            return [f"ember: rank {self._global_rank(local)} failed: it exited with {_describe_code(code)}, without "
                    "a Python error (killed, or out of memory?)"]
        return None

    def _ending_after_child_exit(self, local_rank: int, code: int) -> list[str]:
        root = failures.root_cause(failures.read_records(self.error_dir))
        if root is not None:
            return failures.report_lines(root)
        return [f"ember: rank {self._global_rank(local_rank)} failed: it exited with {_describe_code(code)}, without "
                "a Python error (killed, or out of memory?)"]

    def remove_error_dir(self) -> None:
        if self.error_dir is not None:
            import shutil

            shutil.rmtree(self.error_dir, ignore_errors=True)

    def _start_children(self) -> None:
        env = ClusterEnvironment.detect()
        node_rank = env.node_rank
        addr = env.master_addr
        if self.num_nodes > 1 and ("MASTER_ADDR" not in os.environ or "MASTER_PORT" not in os.environ):
            raise RuntimeError(
                f"Trainer(num_nodes={self.num_nodes}) without torchrun or SLURM needs MASTER_ADDR, MASTER_PORT and "
                "NODE_RANK set on every node before the script starts (see the README's Scaling out section); or launch with torchrun."
            )
        self.node_rank = node_rank
        self.error_dir = tempfile.mkdtemp(prefix="ember-errors-")
        os.environ[failures.ERROR_DIR_VAR] = self.error_dir  # the children inherit it
        port = env.master_port
        if node_rank == 0:
            self.listener = listen_socket(addr, port)
            port = self.listener.getsockname()[1]
        world = self.num_processes * self.num_nodes
        command = script_command()
        shared = {
            "MASTER_ADDR": addr, "MASTER_PORT": str(port), "WORLD_SIZE": str(world), "NODE_RANK": str(node_rank),
            "LOCAL_WORLD_SIZE": str(self.num_processes), "EMBER_LAUNCHER_PID": str(os.getpid()),
        }
        if is_loopback(addr) and "GLOO_SOCKET_IFNAME" not in os.environ and loopback_interface():
            shared["GLOO_SOCKET_IFNAME"] = loopback_interface()  # keep gloo's sockets on 127.0.0.1 too
        os.environ.update(shared)
        os.environ.update(RANK=str(node_rank * self.num_processes), LOCAL_RANK="0")
        for local_rank in range(1, self.num_processes):
            child_env = dict(os.environ, LOCAL_RANK=str(local_rank),
                             RANK=str(node_rank * self.num_processes + local_rank))
            self.children.append(subprocess.Popen(command, env=child_env, cwd=os.getcwd()))
        self._launched = True
        threading.Thread(target=self._watch_children, name="ember-child-watch", daemon=True).start()
        _install_exit_handlers(self)

    # ---- failure handling -------------------------------------------------
    def failed_child(self) -> tuple[int, int] | None:
        """(local rank, exit code) of the first child that exited with an error, if any."""
        for i, proc in enumerate(self.children, start=1):
            code = proc.poll()
            if code not in (None, 0):
                return i, code
        return None

    def _watch_children(self) -> None:
        while not self._done:
            time.sleep(POLL_S)
            failed = self.failed_child()
            if failed is None:
                if all(p.poll() is not None for p in self.children):
                    return
                continue
            with self._lock:
                if self._done:
                    return
                local_rank, code = failed
                _log(f"local rank {local_rank} (pid {self.children[local_rank - 1].pid}) exited with "
                     f"{_describe_code(code)}; stopping the other ranks.")
                self.kill_children()
                _finish_pending_writes()
                sys.stdout.flush()
                for line in self._ending_after_child_exit(local_rank, code):
                    print(line, file=sys.stderr)
                sys.stderr.flush()
                self.remove_error_dir()
                os._exit(_exit_code(code))

    def stop_children(self, grace: float = 0.0) -> None:
        """Kill the other ranks on purpose (rank 0 failed); the watcher must not treat that as their failure.

        ``grace``: seconds to let a child that is already dying (whose crash broke rank 0's collective)
        finish printing its traceback and exit, so its exit code can be reported.
        """
        with self._lock:
            deadline = time.monotonic() + grace
            while not self._done and self.failed_child() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            if not self._done:  # what failed before our own kill, not the kill itself
                self.first_failure = self.failed_child()
            self._done = True
        self.kill_children()

    def kill_children(self) -> None:
        for proc in self.children:
            if proc.poll() is None:
                try:
                    proc.kill()  # SIGKILL: a rank blocked in a collective ignores gentler signals
                except OSError:
                    pass
        for proc in self.children:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass

    def wait_children(self, timeout: float) -> int:
        """At a clean exit of rank 0: let the other ranks finish; return the worst exit code."""
        deadline = time.monotonic() + timeout
        worst = 0
        for proc in self.children:
            try:
                code = proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                _log(f"pid {proc.pid} did not finish {timeout:.0f} s after rank 0; killing it.")
                proc.kill()
                code = proc.wait()
            if code != 0 and worst == 0:
                worst = _exit_code(code)
        return worst


def _finish_pending_writes(timeout: float = 5.0) -> None:
    """Before a forced exit: let checkpoints already serialised land under their names (bounded wait)."""
    module = sys.modules.get("ember.checkpoint")
    wait = getattr(module, "wait_for_writes", None)
    if wait is None:
        return

    def run() -> None:
        try:
            wait()
        except Exception:  # a failed write is reported by its own file being absent; we are exiting anyway
            pass

    flusher = threading.Thread(target=run, name="ember-final-writes", daemon=True)
    flusher.start()
    flusher.join(timeout)


def _describe_code(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


def _exit_code(code: int) -> int:
    return 128 - code if code < 0 else code


def _install_exit_handlers(launcher: ScriptLauncher) -> None:
    """Uncaught error on rank 0: kill the children first, and end with the error of the rank that failed first.
    Clean exit: wait for the children and keep their exit code."""
    failures.install_excepthook(launcher._ending_for_hook)
    atexit.register(launcher.remove_error_dir)  # (atexit runs this last)

    def at_exit() -> None:
        with launcher._lock:
            if launcher._done:
                return
            launcher._done = True
        timeout = float(os.environ.get("EMBER_CHILD_EXIT_TIMEOUT", "60"))
        code = launcher.wait_children(timeout)
        if code:
            _log(f"another rank failed (exit status {code}); so does this job.")
            _finish_pending_writes()
            sys.stdout.flush()
            failed = launcher.failed_child()
            for line in launcher._ending_after_child_exit(*(failed or (1, code))):
                print(line, file=sys.stderr)
            sys.stderr.flush()
            launcher.remove_error_dir()
            os._exit(code)

    atexit.register(at_exit)


# --------------------------------------------------------------------------- ddp_spawn
class SpawnLauncher:
    """N fresh processes via ``torch.multiprocessing``; rank 0's results come back to the caller."""

    def __init__(self, num_processes: int, num_nodes: int, start_method: str = "spawn") -> None:
        if num_nodes > 1:
            raise ValueError(f"Trainer(strategy='ddp_{start_method}', num_nodes={num_nodes}): processes started "
                             "this way stay on one machine; use strategy='ddp' with torchrun or SLURM for several.")
        self.num_processes = num_processes
        self.num_nodes = num_nodes
        self.start_method = start_method
        self.in_worker = False

    def __getstate__(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def should_launch(self) -> bool:
        return not self.in_worker and not ClusterEnvironment.detect().launched

    def launch(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        import torch.multiprocessing as mp

        trainer = fn.__self__  # fn is Trainer._run: the whole trainer travels to every worker
        listener = listen_socket("127.0.0.1")
        port = listener.getsockname()[1]
        # The caller hosts the rendezvous store, so it outlives any single worker and binds to 127.0.0.1 only.
        from datetime import timedelta

        import torch.distributed as dist

        store = dist.TCPStore("127.0.0.1", port, None, True, timedelta(seconds=300), wait_for_workers=False,
                              master_listen_fd=listener.detach())  # the store owns (and closes) the socket now
        with tempfile.TemporaryDirectory(prefix="ember-spawn-") as tmp:
            result_path = os.path.join(tmp, "rank0.pt")
            try:
                mp.start_processes(_spawned_worker, args=(trainer, fn.__name__, args, kwargs, port, result_path,
                                                          os.getpid(), tmp),
                                   nprocs=self.num_processes, join=True, start_method=self.start_method)
            except (mp.ProcessRaisedException, mp.ProcessExitedException) as exc:
                raise _spawn_failure(exc, tmp) from None
            del store
            import torch

            payload = torch.load(result_path, weights_only=False)
        return _apply_rank0_payload(trainer, payload)


def _spawn_failure(exc: Exception, error_dir: str) -> Exception:
    """What the caller raises when a ddp_spawn worker failed: the consequences one line each, the cause whole."""
    records = failures.read_records(error_dir)
    root = failures.root_cause(records)
    if root is None and not isinstance(exc, getattr(sys.modules.get("torch.multiprocessing"),
                                                    "ProcessExitedException", ())):
        return exc  # (nothing recorded: torch's own report, which carries the worker's traceback)
    lines = [failures.peer_gone_line(e["rank"], e["summary"]) for e in records if e is not root]
    died = None if root is not None else (exc.error_index, str(exc).replace(f"process {exc.error_index} ", "", 1))
    return failures.rank_failed(root, lines, full=True, died=died)


def _spawned_worker(local_rank: int, trainer: Any, method: str, args: tuple, kwargs: dict, port: int,
                    result_path: str, parent_pid: int, error_dir: str) -> None:
    try:
        _spawned_run(local_rank, trainer, method, args, kwargs, port, result_path, parent_pid, error_dir)
    except Exception as exc:  # torch sends the traceback to the caller; the record lets it name the cause
        failures.record(local_rank, type(exc), exc, exc.__traceback__)
        raise


def _spawned_run(local_rank: int, trainer: Any, method: str, args: tuple, kwargs: dict, port: int,
                 result_path: str, parent_pid: int, error_dir: str) -> None:
    n = trainer.strategy.launcher.num_processes
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(n), RANK=str(local_rank),
                      LOCAL_RANK=str(local_rank), NODE_RANK="0", LOCAL_WORLD_SIZE=str(n),
                      EMBER_LAUNCHER_PID=str(parent_pid), **{failures.ERROR_DIR_VAR: error_dir})
    if "GLOO_SOCKET_IFNAME" not in os.environ and loopback_interface():
        os.environ["GLOO_SOCKET_IFNAME"] = loopback_interface()
    watch_parent(parent_pid, local_rank)
    _unshare_weights((trainer, args, kwargs))
    trainer.strategy.launcher.in_worker = True
    trainer.strategy._spawned_store_port = port
    result = getattr(trainer, method)(*args, **kwargs)
    if local_rank == 0:
        import torch

        torch.save(_rank0_payload(trainer, result), result_path)
    trainer.strategy.barrier("spawn-end")
    trainer.strategy.destroy_process_group()


def _unshare_weights(obj: Any) -> None:
    """Give this worker its own copy of every module's parameters and buffers.

    ``torch.multiprocessing`` passes tensors to the workers in shared memory, so on the CPU every worker
    would otherwise step the same weights (each rank applying its averaged gradient to one copy: twice the
    update, and a race). Found by the DDP parity suite; Lightning copies them the same way.
    """
    import torch

    seen: set[int] = set()

    def visit(item: Any) -> None:
        if id(item) in seen:
            return
        seen.add(id(item))
        if isinstance(item, torch.nn.Module):
            with torch.no_grad():
                for tensor in [*item.parameters(), *item.buffers()]:
                    if tensor.is_shared():
                        tensor.data = tensor.data.clone()
        elif isinstance(item, (list, tuple)):
            for x in item:
                visit(x)
        elif isinstance(item, dict):
            for x in item.values():
                visit(x)
        elif hasattr(item, "lightning_module"):  # the Trainer
            visit(getattr(item, "lightning_module", None))

    visit(obj)


def _to_cpu(obj: Any) -> Any:
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def _rank0_payload(trainer: Any, result: Any) -> dict[str, Any]:
    """What the caller's Trainer and model need to look as if they had trained themselves."""
    module = trainer.lightning_module
    return {
        "result": _to_cpu(result),
        "state_dict": _to_cpu(trainer.strategy.lightning_module_state_dict(module)),
        "counters": trainer.state.counters(),
        "metrics": {k: _to_cpu(getattr(trainer.metric_store, k)) for k in ("callback_metrics", "logged_metrics",
                                                                            "progress_bar_metrics")},
        "callbacks": {cb.state_key: cb.state_dict() for cb in trainer.callbacks if cb.state_dict()},
    }


def _apply_rank0_payload(trainer: Any, payload: dict[str, Any]) -> Any:
    module = trainer.lightning_module
    if module is not None:
        module.load_state_dict(payload["state_dict"])
    trainer.state.set_counters(payload["counters"])
    for key, value in payload["metrics"].items():
        target = getattr(trainer.metric_store, key)
        target.clear()
        target.update(value)
    states = payload["callbacks"]
    for cb in trainer.callbacks:
        if cb.state_key in states:
            cb.load_state_dict(states[cb.state_key])
            for attr in ("best_model_path", "last_model_path"):  # ModelCheckpoint: the files rank 0 wrote
                if attr in states[cb.state_key]:
                    setattr(cb, attr, states[cb.state_key][attr])
    return payload["result"]
