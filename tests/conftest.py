import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Run the test with tmp_path as the working directory, so default log/checkpoint dirs land there."""
    monkeypatch.chdir(tmp_path)
    return tmp_path
