"""The shape of the core, checked on the source (docs/architecture.md describes it).

- nothing outside ``trainer.py`` reaches into the Trainer's private attributes;
- callbacks, the tuner and the loggers read no private attribute of another object;
- the loop never calls back into the Trainer (it receives a ``loop.Run``);
- the core stays small: module/trainer/loop/hooks/state within 1,500 lines, the Trainer class within
  450, no function longer than 60 lines.
"""
from __future__ import annotations

import ast
import pathlib

EMBER = pathlib.Path(__file__).resolve().parents[1] / "ember"
CORE = ("module.py", "trainer.py", "loop.py", "hooks.py", "state.py")
# Private attributes of third-party objects that have no public equivalent, with the reason.
THIRD_PARTY_PRIVATE = {
    ("loggers/tensorboard.py", "_get_file_writer"): "torch's SummaryWriter writes hparams records only through it",
}


def _sources() -> list[tuple[str, ast.Module]]:
    return [(str(p.relative_to(EMBER)), ast.parse(p.read_text())) for p in sorted(EMBER.rglob("*.py"))]


def _private_reads(tree: ast.Module) -> list[tuple[int, str, str]]:
    """(line, owner, attribute) for every ``owner._name`` whose owner is not ``self``/``cls``."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            value = node.value
            owner = value.id if isinstance(value, ast.Name) else value.attr if isinstance(value, ast.Attribute) \
                else type(value).__name__
            if owner not in ("self", "cls") and not (isinstance(value, ast.Call) and getattr(value.func, "id", "")
                                                      == "super"):
                found.append((node.lineno, owner, node.attr))
    return found


def test_nothing_outside_trainer_py_reads_a_private_trainer_attribute():
    offenders = [f"{path}:{line} {owner}.{attr}" for path, tree in _sources() if path != "trainer.py"
                 for line, owner, attr in _private_reads(tree) if owner in ("trainer", "_trainer")]
    assert offenders == []


def test_callbacks_tuner_and_loggers_read_no_private_attribute_of_another_object():
    offenders = [f"{path}:{line} {owner}.{attr}" for path, tree in _sources()
                 if path.startswith(("callbacks/", "tuner/", "loggers/"))
                 for line, owner, attr in _private_reads(tree) if (path, attr) not in THIRD_PARTY_PRIVATE]
    assert offenders == []


def test_the_loop_never_calls_back_into_the_trainer():
    tree = ast.parse((EMBER / "loop.py").read_text())
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    attrs = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    imported = {a.name for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names}
    assert "trainer" not in names | attrs and "Trainer" not in imported
    modules = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert "trainer" not in modules


def test_one_function_ends_a_training_batch():
    """The straight run, the mid-epoch resume and the loader without len all go through end_of_batch."""
    tree = ast.parse((EMBER / "loop.py").read_text())
    callers = sorted({fn.name for fn in ast.walk(tree) if isinstance(fn, ast.FunctionDef)
                      for call in ast.walk(fn) if isinstance(call, ast.Call)
                      and getattr(call.func, "id", "") == "end_of_batch"})
    assert callers == ["open_epoch", "train_epoch"]  # open_epoch: resume; train_epoch: body and for-else
    body_calls = [call for fn in ast.walk(tree) if isinstance(fn, ast.FunctionDef) and fn.name == "train_epoch"
                  for call in ast.walk(fn) if isinstance(call, ast.Call) and getattr(call.func, "id", "") == "end_of_batch"]
    assert len(body_calls) == 2


def test_the_core_stays_small():
    lines = {name: len((EMBER / name).read_text().splitlines()) for name in CORE}
    assert sum(lines.values()) <= 1500, lines
    tree = ast.parse((EMBER / "trainer.py").read_text())
    trainer = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Trainer")
    assert trainer.end_lineno - trainer.lineno + 1 <= 450
    long = [f"{name}:{fn.name} ({fn.end_lineno - fn.lineno + 1} lines)" for name in CORE
            for fn in ast.walk(ast.parse((EMBER / name).read_text()))
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)) and fn.end_lineno - fn.lineno + 1 > 60]
    assert long == []
