"""Inference with a trained VQ-VAE: reconstructions of test images and their metrics."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import torch

from .checkpoints import load_vqvae
from .data import CLASS_NAMES, FashionMNIST, load_fashion_mnist, to_float
from .device import resolve_device
from .errors import ConfigError
from .files import save_figure, write_json
from .plots import reconstruction_figure
from .train import evaluate_vqvae


@torch.inference_mode()
def reconstruct(model, images: torch.Tensor, *, batch_size: int = 1000) -> torch.Tensor:
    """uint8 images (N, 28, 28) -> reconstructions (N, 1, 28, 28) in [0, 1], on the CPU."""
    device = next(model.parameters()).device
    model.eval()
    return torch.cat([model(to_float(images[i:i + batch_size], device)).reconstruction.cpu()
                      for i in range(0, len(images), batch_size)])


def infer_vqvae(checkpoint: str | os.PathLike, output: str | os.PathLike, *, num_images: int = 20,
                data: Optional[FashionMNIST] = None, device: str = "auto") -> dict:
    """Reconstruct the first `num_images` test images into a PNG grid; return test metrics.

    Writes `output` (the PNG) and, beside it, the metrics as JSON.
    """
    if num_images < 1:
        raise ConfigError(f"num_images must be at least 1, not {num_images}")
    data = data or load_fashion_mnist()
    model, _ = load_vqvae(checkpoint, device=resolve_device(device))
    images, labels = data.test_images[:num_images], data.test_labels[:num_images]
    fig = reconstruction_figure(images, reconstruct(model, images),
                                labels=[CLASS_NAMES[int(c)] for c in labels],
                                title=f"VQ-VAE K={model.config.num_embeddings}, D={model.config.embedding_dim}: test images")
    output = save_figure(fig, output)
    metrics = evaluate_vqvae(model, data.test_images, data.test_labels)
    write_json(Path(output).with_suffix(".json"), {"checkpoint": str(checkpoint), "split": "test", **metrics})
    return metrics
