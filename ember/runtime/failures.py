"""When a rank raises, the last lines of the job's stderr name that rank's own error.

One rank's exception makes the others fail too: their next collective loses its peer ("Connection
closed by peer" under gloo). Those errors are consequences. So every rank's uncaught exception goes
through ``excepthook``:

- a consequence (``is_peer_gone``) prints one line, ``ember: rank N stopped: ...``;
- an error of its own prints its traceback (torch prefixes each line with ``[rankN]:``), then the
  one-line summary ``ember: rank N failed: Type: message``;
- each rank also writes a small record of its error to ``$EMBER_ERROR_DIR`` (set by ember's
  launchers), so the launching process can end the job with the failing rank's error, whichever rank
  noticed first; under torchrun, to ``$TORCHELASTIC_ERROR_FILE``, which torchrun's own summary reads.

``report_lines`` is that ending: the failing rank's last frame, its exception, and the summary line.
"""
from __future__ import annotations

import json
import os
import sys
import time
import traceback
from typing import Any, Callable

ERROR_DIR_VAR = "EMBER_ERROR_DIR"
# What a collective says when another rank went away (gloo, nccl): a consequence of that rank's failure.
_PEER_GONE = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "Connection refused",
              "remote worker crashing", "communicator was aborted", "Socket closed", "collective operation timeout")


class RankFailedError(RuntimeError):
    """Raised where the job was launched when another rank failed first; the message ends with its error."""

    def __init__(self, message: str, rank: int, summary: str) -> None:
        super().__init__(message)
        self.rank = rank
        self.summary = summary


def _log(message: str) -> None:
    print(f"ember: {message}", file=sys.stderr, flush=True)


def is_peer_gone(exc: BaseException) -> bool:
    """True for a collective that failed because another rank stopped (not an error of this rank's own)."""
    return isinstance(exc, RuntimeError) and not isinstance(exc, RankFailedError) and \
        any(text in str(exc) for text in _PEER_GONE)


def summarize(kind: Any, value: BaseException) -> str:
    """``Type: first line of the message``, as the last line of a Python traceback spells it."""
    text = "".join(traceback.format_exception_only(kind, value)).strip()
    first = text.splitlines()[0] if text else getattr(kind, "__name__", str(kind))
    return first if len(first) <= 500 else first[:497] + "..."


def current_rank() -> int:
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


# --------------------------------------------------------------------------- records
def record(rank: int, kind: Any, value: BaseException, tb: Any) -> dict[str, Any]:
    """Write what this rank's error was where the launcher (or torchrun's agent) will look for it."""
    frames = traceback.extract_tb(tb)
    entry = {
        "rank": rank, "time": time.time(), "peer_gone": is_peer_gone(value), "summary": summarize(kind, value),
        "last_frame": "".join(traceback.format_list(_users_last_frame(frames))),
        "exception": "".join(traceback.format_exception_only(kind, value)),
        "traceback": "".join(traceback.format_exception(kind, value, tb)),
    }
    directory = os.environ.get(ERROR_DIR_VAR)
    if directory and os.path.isdir(directory):
        path = os.path.join(directory, f"rank{rank}.json")
        try:
            with open(path + ".tmp", "w") as fh:
                json.dump(entry, fh)
            os.replace(path + ".tmp", path)
        except OSError:
            pass  # the report is a courtesy; the exit code still says the job failed
    elastic = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if elastic and not entry["peer_gone"] and not os.path.exists(elastic):
        # torchrun's agent prints this file's message as the job's "Root Cause (first observed failure)".
        try:
            with open(elastic, "w") as fh:
                json.dump({"message": {"message": entry["summary"], "extraInfo": {
                    "py_callstack": entry["traceback"], "timestamp": str(int(entry["time"]))}}}, fh)
        except OSError:
            pass
    return entry


def _users_last_frame(frames: Any) -> list[Any]:
    """The innermost frame of the user's code (not torch's, not ember's); else the innermost frame."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the ember package
    mine = [f for f in frames if not f.filename.startswith(here) and f"{os.sep}site-packages{os.sep}" not in f.filename
            and not f.filename.startswith("<")]
    return (mine or list(frames))[-1:]


def read_records(directory: str | None, exclude: int | None = None) -> list[dict[str, Any]]:
    """Every rank's error record in ``directory``, oldest first."""
    if not directory or not os.path.isdir(directory):
        return []
    found = []
    for name in os.listdir(directory):
        if name.startswith("rank") and name.endswith(".json"):
            try:
                with open(os.path.join(directory, name)) as fh:
                    entry = json.load(fh)
            except (OSError, ValueError):
                continue
            if entry.get("rank") != exclude:
                found.append(entry)
    return sorted(found, key=lambda e: e["time"])


def root_cause(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The first error that was not a consequence of another rank's (else the first error)."""
    own = [e for e in records if not e["peer_gone"]]
    return (own or records or [None])[0]


def report_lines(root: dict[str, Any], full: bool = False) -> list[str]:
    """The ending of a failed job: the failing rank's error and the ``ember: rank N failed`` summary."""
    rank = root["rank"]
    if full:
        body = root["traceback"]
    else:
        body = root["last_frame"] + root["exception"]
        body = f"(rank {rank}'s whole traceback is above, its lines marked [rank{rank}])\n" + body
    return [*body.rstrip("\n").splitlines(), f"ember: rank {rank} failed: {root['summary']}"]


def peer_gone_line(rank: int, summary: str, hint: str = "") -> str:
    return f"ember: rank {rank} stopped: {summary} (a consequence: another rank failed first{hint})"


def later_line(rank: int, summary: str, peer_gone: bool) -> str:
    """This rank's error, in one line, when another rank's error came first and ends the report."""
    if peer_gone:
        return peer_gone_line(rank, summary)
    return f"ember: rank {rank} failed too, after another rank had failed: {summary}"


def rank_failed(root: dict[str, Any] | None, consequences: list[str], full: bool = False,
                died: tuple[int, str] | None = None) -> RankFailedError:
    """The error the launching process raises: the consequences one line each, then the failing rank's error.

    ``root``: the failing rank's record; without one (it died without a Python error, e.g. SIGKILL),
    ``died`` = (rank, how it ended).
    """
    if root is not None:
        rank, summary, ending = root["rank"], root["summary"], report_lines(root, full)
    else:
        rank, how = died if died is not None else (-1, "ended without a Python error")
        summary = f"it exited with {how}, without a Python error (killed, or out of memory?)"
        ending = [f"ember: rank {rank} failed: {summary}"]
    return RankFailedError("\n".join([f"rank {rank} failed, so the job stopped.", *consequences, *ending]), rank, summary)


# --------------------------------------------------------------------------- the hook
_installed_top: Any = None
_reporting = False
# Set by the launching process: stops the other ranks and returns the report's ending when another rank
# failed first (None when this rank's error is the cause). Called as before_report(exc, rank, record).
_before_report: Callable[[BaseException, int, dict[str, Any]], list[str] | None] | None = None


def install_excepthook(before_report: Callable[[BaseException, int, dict[str, Any]], list[str] | None] | None = None
                       ) -> None:
    """Put ember's report on top of ``sys.excepthook`` (again after ``init_process_group`` wrapped it)."""
    global _installed_top, _before_report
    if before_report is not None:
        _before_report = before_report
    if sys.excepthook is _installed_top:
        return
    previous = sys.excepthook

    def excepthook(kind: Any, value: BaseException, tb: Any) -> None:
        global _reporting
        if _reporting:  # an earlier copy of this hook, reached through torch's wrapper: just print
            return previous(kind, value, tb)
        _reporting = True
        try:
            _report(previous, kind, value, tb)
        finally:
            _reporting = False

    sys.excepthook = _installed_top = excepthook


def _report(previous: Any, kind: Any, value: BaseException, tb: Any) -> None:
    rank = current_rank()
    if not isinstance(value, Exception) or isinstance(value, RankFailedError):
        # KeyboardInterrupt; or a report already composed, whose message ends with the summary line.
        if _before_report is not None:
            _before_report(value, rank, {})
        traceback.print_exception(kind, value, tb)
        return
    entry = record(rank, kind, value, tb)
    ending = _before_report(value, rank, entry) if _before_report is not None else None
    if entry["peer_gone"] or ending:
        first = later_line(rank, entry["summary"], entry["peer_gone"]) if ending else \
            peer_gone_line(rank, entry["summary"], "; its 'ember: rank N failed' line names the error")
        for line in [first, *(ending or [])]:
            print(line, file=sys.stderr)
        sys.stderr.flush()
        return
    previous(kind, value, tb)  # this rank's own error, whole
    _log(f"rank {rank} failed: {entry['summary']}")
