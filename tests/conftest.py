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
PROTOCOL = "pretrained:K100_D64"

TINY_PRIOR = dict(
    layers=1, heads=2, width=32, dropout=0.1, batch_size=32, warmup_steps=3, epochs=1, train_subset=160, val_subset=40
)


def tiny_prior_config(folder: Path, vqvae_checkpoint=PROTOCOL, **overrides):
    """A PriorConfig of one layer for one epoch on 160 real codes, checkpoints in `folder`: seconds to train."""
    from vqlib.config import PriorConfig

    values = dict(TINY_PRIOR, vqvae_checkpoint=str(vqvae_checkpoint), device="cpu", checkpoint_dir=str(folder))
    return PriorConfig(**{**values, **overrides})


def train_tiny_prior(data, folder: Path, vqvae_checkpoint=PROTOCOL, **overrides):
    """A tiny prior (`tiny_prior_config`) trained on real codes of the VQ-VAE; its TrainedPrior run."""
    from vqlib.prior import train_prior

    return train_prior(tiny_prior_config(folder, vqvae_checkpoint, **overrides), data, progress=False)


def train_tiny_vqvae(data, folder: Path, *, train_subset: int = 500) -> Path:
    """A real VQ-VAE (K=32, D=16, small trunk) trained for one epoch on `train_subset` images; its best.pt."""
    from vqlib.config import TrainConfig, VQVAEConfig
    from vqlib.train import train_vqvae

    folder = folder / "K32_D16"
    run = train_vqvae(
        VQVAEConfig(
            num_embeddings=32, embedding_dim=16, hidden_channels=32, residual_channels=16, num_residual_blocks=1
        ),
        TrainConfig(
            epochs=1,
            batch_size=64,
            train_subset=train_subset,
            device="cpu",
            checkpoint_dir=str(folder),
            results_dir=str(folder / "results"),
        ),
        data,
        progress=False,
    )
    return run.best_checkpoint


@pytest.fixture(scope="session")
def vqvae_checkpoint(data, tmp_path_factory):
    """A real VQ-VAE trained for one epoch on 500 images: a real code, in seconds; shared by the test modules
    that only read it (the classifier's and the explorer's)."""
    return train_tiny_vqvae(data, tmp_path_factory.mktemp("vqvae"))
