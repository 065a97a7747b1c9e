"""Shared fixtures: the real FashionMNIST, and a project root in a temporary folder."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def data():
    """The real data set (55,000 / 5,000 / 10,000), loaded once per test session."""
    from vqlib.data import load_fashion_mnist

    return load_fashion_mnist(allow_download=False)


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A fresh project root: checkpoints/ and results/ of the test land under tmp_path."""
    monkeypatch.setenv("VQLIB_ROOT", str(tmp_path))
    return tmp_path


@pytest.fixture
def cli_env(tmp_path):
    """Environment for running the `vqlib` console script in a subprocess."""
    env = dict(os.environ, VQLIB_ROOT=str(tmp_path), TQDM_DISABLE="1", PYTHONUNBUFFERED="1")
    return env


VQLIB = [sys.executable, "-m", "vqlib"]
