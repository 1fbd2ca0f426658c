"""The torch.compile backends the compile tests run: eager and aot_eager always, inductor where it can build."""
from __future__ import annotations

import functools
import shutil
import subprocess

import pytest


@functools.lru_cache(maxsize=None)
def inductor_skip_reason() -> str | None:
    """None when inductor can compile on this machine, else why not (its CPU code needs a C++ compiler)."""
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        return "inductor needs a C++ compiler; none on PATH"
    try:
        subprocess.run([cxx, "--version"], check=True, capture_output=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"the C++ compiler does not run: {exc}"
    return None


BACKENDS = ["eager", "aot_eager",
            pytest.param("inductor", marks=pytest.mark.skipif(inductor_skip_reason() is not None,
                                                                reason=str(inductor_skip_reason())))]
