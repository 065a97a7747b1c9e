"""VQ-VAE shapes, encode/decode contracts, and checkpoint round trips."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from vqlib.checkpoints import load_checkpoint, load_vqvae, save_checkpoint
from vqlib.config import VQVAEConfig
from vqlib.models import VQVAE


@pytest.mark.parametrize("k", [25, 50, 100])
@pytest.mark.parametrize("d", [16, 32, 64])
def test_shapes_28_to_12_to_28(k, d):
    model = VQVAE(VQVAEConfig(num_embeddings=k, embedding_dim=d)).eval()
    x = torch.rand(3, 1, 28, 28)
    out = model(x)
    assert model.encoder(x).shape == (3, d, 12, 12)
    assert out.vq.quantized.shape == (3, d, 12, 12)
    assert out.vq.indices.shape == (3, 12, 12) and out.vq.indices.max() < k
    assert out.reconstruction.shape == (3, 1, 28, 28)
    assert 0 <= out.reconstruction.min() and out.reconstruction.max() <= 1


def test_encode_decode_contract():
    torch.manual_seed(0)
    model = VQVAE(VQVAEConfig()).eval()
    x = torch.rand(4, 1, 28, 28)
    indices, quantized = model.encode(x)
    assert torch.allclose(model.decode_indices(indices), model.decode(quantized))
    assert torch.allclose(model.decode(quantized), model(x).reconstruction)


def test_checkpoint_round_trip_gives_identical_outputs(tmp_path):
    torch.manual_seed(1)
    config = VQVAEConfig(num_embeddings=25, embedding_dim=16)
    model = VQVAE(config)
    model.train()
    model(torch.rand(8, 1, 28, 28))  # move batch-norm statistics and the EMA codebook away from init
    model.eval()
    path = save_checkpoint(
        tmp_path / "m.pt", "vqvae", {"model_config": dataclasses.asdict(config), "state_dict": model.state_dict()}
    )
    loaded, ckpt = load_vqvae(path)
    assert ckpt["model_config"] == dataclasses.asdict(config)
    x = torch.rand(5, 1, 28, 28)
    assert torch.equal(loaded(x).reconstruction, model(x).reconstruction)
    assert torch.equal(loaded.encode(x)[0], model.encode(x)[0])
    # torch.load(weights_only=True) reads it directly, too
    assert set(torch.load(path, weights_only=True)) >= {"kind", "model_config", "state_dict"}
    assert load_checkpoint(path, kind="vqvae", expect={"num_embeddings": 25})["kind"] == "vqvae"
