"""The README's example for several loaders and time-based validation runs as printed."""
from __future__ import annotations

import contextlib
import io
import pathlib
import re

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def _example() -> str:
    text = README.read_text()
    section = text.split("### Several dataloaders, `dataloader_iter`, validation by the clock", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_several_loaders_example_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        exec(compile(_example(), "README.md", "exec"), namespace)  # its own asserts check the numbers
    assert namespace["trainer"].global_step == 16
    assert len(namespace["results"]) == 2
