"""The VQ-VAE: encoder 28x28x1 -> 12x12xD, vector quantizer, mirrored decoder 12x12xD -> 28x28x1."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..config import VQVAEConfig
from .quantizer import QuantizerOutput, VectorQuantizer


class ResidualBlock(nn.Module):
    """x + Conv1x1(ReLU(BN(Conv3x3(ReLU(BN(x)))))), the pre-activation residual of van den Oord et al. 2017."""

    def __init__(self, channels: int, residual_channels: int):
        super().__init__()
        self.block = nn.Sequential(
            # In place is safe: it overwrites the BN output, never x, which the skip path still needs.
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, residual_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(residual_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(residual_channels, channels, 1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


class Encoder(nn.Module):
    """28x28x1 -> 14x14 (4x4 conv, stride 2) -> 12x12 (3x3 conv, no padding) -> residual blocks -> 1x1 to D."""

    def __init__(self, config: VQVAEConfig):
        super().__init__()
        h = config.hidden_channels
        self.net = nn.Sequential(
            nn.Conv2d(1, h // 2, 4, stride=2, padding=1, bias=False),  # 28 -> 14
            nn.BatchNorm2d(h // 2),
            nn.ReLU(inplace=True),
            nn.Conv2d(h // 2, h, 3, bias=False),  # 14 -> 12
            *[ResidualBlock(h, config.residual_channels) for _ in range(config.num_residual_blocks)],
            nn.BatchNorm2d(h),
            nn.ReLU(inplace=True),
            nn.Conv2d(h, config.embedding_dim, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Decoder(nn.Module):
    """The encoder mirrored: 1x1 from D -> residual blocks -> 12 -> 14 -> 28 by transposed convs."""

    def __init__(self, config: VQVAEConfig):
        super().__init__()
        h = config.hidden_channels
        self.net = nn.Sequential(
            nn.Conv2d(config.embedding_dim, h, 1, bias=False),
            *[ResidualBlock(h, config.residual_channels) for _ in range(config.num_residual_blocks)],
            nn.BatchNorm2d(h),
            nn.ReLU(inplace=True),
            nn.ConvTranspose2d(h, h // 2, 3, bias=False),  # 12 -> 14
            nn.BatchNorm2d(h // 2),
            nn.ReLU(inplace=True),
            nn.ConvTranspose2d(h // 2, 1, 4, stride=2, padding=1),  # 14 -> 28
            # Pixels live in [0, 1]; a sigmoid keeps reconstructions there, so PSNR
            # and image grids need no clipping.
            nn.Sigmoid(),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


@dataclass
class VQVAEOutput:
    reconstruction: torch.Tensor  # (B, 1, 28, 28) in [0, 1]
    vq: QuantizerOutput


class VQVAE(nn.Module):
    """Encoder, quantizer and decoder, built from a `VQVAEConfig` alone."""

    def __init__(self, config: VQVAEConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.quantizer = VectorQuantizer(
            config.num_embeddings,
            config.embedding_dim,
            beta=config.beta,
            codebook_update=config.codebook_update,
            ema_decay=config.ema_decay,
            init=config.init,
            dead_code_threshold=config.dead_code_threshold,
        )
        self.decoder = Decoder(config)
        # Channels-last (NHWC) weights make every convolution run NHWC whatever the layout
        # of its input, and the quantizer's (B, D, H, W) -> (B*H*W, D) flattening a view:
        # measured faster training and encoding on the project's CPU (benchmarks/bench.py).
        # Every model gets it, loaded ones included; TrainConfig.channels_last=False undoes it.
        self.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> VQVAEOutput:
        vq = self.quantizer(self.encoder(x))
        return VQVAEOutput(self.decoder(vq.quantized), vq)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (B, 1, 28, 28) -> code indices (B, 12, 12) and quantized latents (B, D, 12, 12)."""
        vq = self.quantizer(self.encoder(x))
        return vq.indices, vq.quantized

    def decode(self, quantized: torch.Tensor) -> torch.Tensor:
        """Latents (B, D, 12, 12), quantized or not -> images (B, 1, 28, 28)."""
        return self.decoder(quantized)

    def decode_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """Code indices (B, 12, 12) -> images (B, 1, 28, 28)."""
        return self.decoder(self.quantizer.lookup(indices))
