"""Small helpers shared by the benchmarks in bench/ (no third-party imports)."""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import shlex
import statistics
import sys

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(BENCH_DIR)


def ensure_repo_on_path() -> None:
    """Make `import ember` resolve to this checkout when run as `python bench/x.py`."""
    if REPO_ROOT not in sys.path:
        sys.path.insert(0, REPO_ROOT)


def command_line() -> str:
    return " ".join(shlex.quote(a) for a in [os.path.basename(sys.executable)] + sys.argv)


def package_version(name: str) -> str:
    """Version of an installed distribution, or of the module's __version__."""
    try:
        from importlib import metadata

        return metadata.version(name)
    except Exception:
        pass
    try:
        mod = __import__(name)
        return str(getattr(mod, "__version__", "unknown"))
    except Exception as exc:  # not importable
        return f"not importable ({type(exc).__name__})"


def median(values):
    return statistics.median(values) if values else float("nan")


def median_interval(values, level: float = 0.95, resamples: int = 2000) -> tuple[float, float]:
    """Percentile-bootstrap interval of the median (seeded, so a report is reproducible from its data)."""
    import random

    rng = random.Random(0)
    meds = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(resamples))
    cut = int((1 - level) / 2 * resamples)
    return meds[cut], meds[resamples - 1 - cut]


def md_table(headers, rows) -> str:
    """Render a list of rows (lists of str) as a markdown table with aligned columns."""
    cells = [list(map(str, headers))] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(r):
        return "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"

    out = [line(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(r) for r in cells[1:]]
    return "\n".join(out)


def header_lines(title: str, extra: dict | None = None) -> list[str]:
    info = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": f"`{command_line()}`",
        "python": f"{platform.python_version()} ({sys.executable})",
        "platform": f"{platform.platform()}, {os.cpu_count()} CPUs",
    }
    info.update(extra or {})
    return [f"# {title}", ""] + [f"- {k}: {v}" for k, v in info.items()] + [""]


@contextlib.contextmanager
def quiet():
    """Send Python-level stdout/stderr to os.devnull (progress bars keep running)."""
    with open(os.devnull, "w") as devnull:
        with contextlib.redirect_stdout(devnull), contextlib.redirect_stderr(devnull):
            yield


def emit(text: str, out_path: str | None) -> None:
    print(text)
    if out_path:
        d = os.path.dirname(out_path)
        if d:
            os.makedirs(d, exist_ok=True)
        with open(out_path, "w") as f:
            f.write(text + "\n")
        print(f"\n(wrote {out_path})", file=sys.stderr)
