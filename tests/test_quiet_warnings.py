"""The quiet switch: ember's advisory warnings go away with quiet_advisories() or EMBER_QUIET=1; real ones stay.

The program runs in a fresh interpreter each time: some advisories are given once per process, so an
earlier test in this one could hide them.
"""
import json
import re
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest

import ember
from ember.utilities import rank_zero_warn
from ember.utilities import warnings as ember_warnings
from ember.utilities.warnings import AdvisoryWarning, PossibleUserWarning, advise, quiet_advisories

REPO_ROOT = Path(__file__).resolve().parents[1]

PROGRAM = textwrap.dedent('''
    import json, os, sys, warnings
    import torch
    from torch.utils.data import DataLoader, Dataset
    import ember as L
    from ember.callbacks import ModelCheckpoint

    class Points(Dataset):  # not a TensorDataset, so the num_workers hint applies
        def __len__(self):
            return 8
        def __getitem__(self, i):
            g = torch.Generator().manual_seed(i)
            return torch.randn(3, generator=g), torch.randn(1, generator=g)

    class Model(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(3, 1)
            self.norm = torch.nn.BatchNorm1d(1).eval()  # eval mode at fit start: an advisory
        def training_step(self, batch, i):
            return torch.nn.functional.mse_loss(self.norm(self.layer(batch[0])), batch[1])
        def validation_step(self, batch, i):
            pass
        def test_step(self, batch, i):
            pass
        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    root = sys.argv[1]
    if sys.argv[2] == "call":
        from ember.utilities import quiet_advisories
        quiet_advisories()
    os.makedirs(os.path.join(root, "ckpts"))
    open(os.path.join(root, "ckpts", "old.ckpt"), "w").close()  # a folder that is not empty: an advisory
    kw = dict(max_epochs=1, logger=False, enable_progress_bar=False, enable_model_summary=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = L.Trainer(default_root_dir=root, callbacks=[ModelCheckpoint(dirpath=os.path.join(root, "ckpts"))],
                            **kw)
        trainer.fit(Model(), DataLoader(Points(), batch_size=4))  # validation_step, no val loader: an advisory
        trainer.test(Model(), DataLoader(Points(), batch_size=4, shuffle=True))  # shuffled test loader: an advisory
        # a real problem: resuming from "last" finds nothing, so training starts over
        L.Trainer(default_root_dir=os.path.join(root, "fresh"), **kw).fit(
            Model(), DataLoader(Points(), batch_size=4), ckpt_path="last")
    print(json.dumps([[w.category.__name__, str(w.message)] for w in caught]))
''')

ADVISORIES = ["num_workers=0", "in eval mode", "no val dataloader", "exists and is not empty", "DataLoader shuffles"]
REAL = 'ckpt_path="last" found no checkpoint'


def _run(tmp_path, mode, env_value=None):
    script = tmp_path / "program.py"
    script.write_text(PROGRAM)
    env = {k: v for k, v in os.environ.items() if k != ember_warnings.QUIET_ENV}
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    if env_value is not None:
        env[ember_warnings.QUIET_ENV] = env_value
    root = tmp_path / mode / str(env_value)
    result = subprocess.run([sys.executable, str(script), str(root), mode], capture_output=True, text=True, env=env,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def _matching(caught, text):
    return [category for category, message in caught if text in message]


def test_advisories_show_by_default_as_advisory_warnings(tmp_path):
    caught = _run(tmp_path, "plain")
    for text in ADVISORIES:
        assert _matching(caught, text) and set(_matching(caught, text)) == {"AdvisoryWarning"}, (text, caught)
    assert _matching(caught, REAL) == ["UserWarning"]


@pytest.mark.parametrize("mode, env_value", [("plain", "1"), ("plain", "true"), ("call", None)])
def test_the_switch_silences_advisories_and_keeps_real_warnings(tmp_path, mode, env_value):
    caught = _run(tmp_path, mode, env_value)
    assert [c for c in caught if c[0] == "AdvisoryWarning"] == []
    for text in ADVISORIES:
        assert _matching(caught, text) == [], (text, caught)
    assert _matching(caught, REAL) == ["UserWarning"]  # real problems stay


@pytest.fixture
def follow_env(monkeypatch):
    """quiet_advisories() state as at import: follow $EMBER_QUIET (monkeypatch restores the module after)."""
    monkeypatch.setattr(ember_warnings, "_quiet", None)
    monkeypatch.delenv(ember_warnings.QUIET_ENV, raising=False)
    return monkeypatch


def test_switch_is_read_when_warning_and_call_wins_over_env(follow_env):
    with pytest.warns(AdvisoryWarning, match="hint one"):
        advise("hint one")
    follow_env.setenv(ember_warnings.QUIET_ENV, "1")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        advise("hint two")
        rank_zero_warn("hint three", AdvisoryWarning)
        rank_zero_warn("a real problem")  # UserWarning: never silenced
    assert [str(w.message) for w in caught] == ["a real problem"]
    quiet_advisories(False)  # the call wins over the environment
    with pytest.warns(UserWarning, match="hint four"):  # an AdvisoryWarning is a UserWarning
        advise("hint four")
    quiet_advisories()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        advise("hint five")
    assert caught == []


def test_bad_switch_values_are_refused_with_what_is_allowed(follow_env):
    follow_env.setenv(ember_warnings.QUIET_ENV, "maybe")
    with pytest.raises(ValueError, match=r"EMBER_QUIET='maybe' is not valid; allowed: one of 1, true, yes, on"):
        advise("hint")
    with pytest.raises(TypeError, match=r"quiet_advisories\(quiet='yes'\) needs a bool"):
        quiet_advisories("yes")


def test_lightnings_names_for_the_category_and_its_switch(follow_env):
    assert PossibleUserWarning is AdvisoryWarning and issubclass(AdvisoryWarning, UserWarning)
    assert ember.pytorch.utilities.warnings.PossibleUserWarning is AdvisoryWarning
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ember.pytorch.utilities.disable_possible_user_warnings()
        advise("hint")
        warnings.warn("kept", UserWarning)
    assert [str(w.message) for w in caught] == ["kept"]


def test_readme_quiet_example_silences_what_it_says(follow_env, capsys):
    text = (REPO_ROOT / "README.md").read_text()
    start = text.index("\n## Quiet advisories\n")
    (block,) = re.findall(r"```python\n(.*?)```", text[start:text.index("\n## ", start + 1)], flags=re.S)
    exec(compile(block, "README.md", "exec"), {})
    assert capsys.readouterr().out.strip().splitlines()[-1] == "[]"
    # the same program without the switch: the advisories it mentions do show
    quiet_advisories(False)
    exec(compile(block.replace("quiet_advisories()  #", "#"), "README.md", "exec"), {})
    shown = capsys.readouterr().out.strip().splitlines()[-1]
    assert "in eval mode (dropout)" in shown and "no val dataloader" in shown
