"""Training on real data: the loss falls, metrics are sane, and the same seed gives the same run."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from vqlib.config import TrainConfig, VQVAEConfig
from vqlib.models import VQVAE
from vqlib.train import evaluate_vqvae, train_vqvae

SMALL = dict(hidden_channels=32, residual_channels=16, num_residual_blocks=1)


def test_a_few_hundred_steps_lower_the_reconstruction_loss(data, tmp_path):
    model_config = VQVAEConfig(num_embeddings=25, embedding_dim=16, **SMALL)
    torch.manual_seed(0)
    before = evaluate_vqvae(VQVAE(model_config), data.val_images[:1000])["mse"]
    # 2 epochs of 3,200 images in batches of 32: 200 optimiser steps
    run = train_vqvae(
        model_config,
        TrainConfig(epochs=2, batch_size=32, train_subset=3200, checkpoint_dir=str(tmp_path)),
        data,
        progress=False,
    )
    after = evaluate_vqvae(run.model, data.val_images[:1000], data.val_labels[:1000])
    assert after["mse"] < 0.5 * before
    assert after["mse"] < 0.05
    assert after["psnr"] > 13
    assert 1 <= after["perplexity"] <= 25 and 0 < after["codebook_usage"] <= 1
    assert set(after["per_class_mse"]) == {
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    }
    history = pd.DataFrame(run.history)
    assert list(history["epoch"]) == [1, 2]
    for column in (
        "train_mse",
        "train_vq_loss",
        "train_perplexity",
        "train_usage",
        "val_mse",
        "val_perplexity",
        "val_usage",
        "images_per_s",
    ):
        assert history[column].notna().all(), column
    assert {"best.pt", "last.pt", "history.json", "config.json"} <= {p.name for p in tmp_path.iterdir()}


def test_same_seed_same_metrics(data, tmp_path):
    model_config = VQVAEConfig(num_embeddings=25, embedding_dim=16, **SMALL)
    runs = [
        train_vqvae(
            model_config,
            TrainConfig(epochs=1, batch_size=64, train_subset=640, seed=3, checkpoint_dir=str(tmp_path / str(i))),
            data,
            progress=False,
        )
        for i in range(2)
    ]
    keys = ("train_mse", "train_vq_loss", "val_mse", "val_perplexity", "val_usage")
    assert [runs[0].history[0][k] for k in keys] == [runs[1].history[0][k] for k in keys]
    other = train_vqvae(
        model_config,
        TrainConfig(epochs=1, batch_size=64, train_subset=640, seed=4, checkpoint_dir=str(tmp_path / "other")),
        data,
        progress=False,
    )
    assert other.history[0]["val_mse"] != runs[0].history[0]["val_mse"]


def test_train_subset_larger_than_the_data_is_refused(data, tmp_path):
    from vqlib.errors import ConfigError

    with pytest.raises(ConfigError, match="train_subset is 60000, but the split has only 55000"):
        train_vqvae(VQVAEConfig(), TrainConfig(train_subset=60000, checkpoint_dir=str(tmp_path)), data, progress=False)


def test_evaluate_vqvae_names_both_psnr_definitions(data):
    """psnr is the PSNR of the split's mean MSE; psnr_mean_per_image averages each image's PSNR (never lower)."""
    import math

    import numpy as np

    from vqlib.analysis import per_image_mse

    torch.manual_seed(0)
    model = VQVAE(VQVAEConfig(num_embeddings=8, embedding_dim=4, hidden_channels=16, residual_channels=8)).eval()
    images = data.test_images[:60]
    metrics = evaluate_vqvae(model, images, batch_size=25)
    errors = per_image_mse(model, images).astype(np.float64)
    assert metrics["psnr"] == pytest.approx(10 * math.log10(1 / errors.mean()), rel=1e-5)
    assert metrics["psnr_mean_per_image"] == pytest.approx(np.mean(10 * np.log10(1 / errors)), rel=1e-5)
    assert metrics["psnr_mean_per_image"] >= metrics["psnr"]  # Jensen: the mean of -log is >= -log of the mean
