"""A classification head on the quantized latents of a trained VQ-VAE.

`VQVAEClassifier` reads images through the VQ-VAE's encoder and quantizer and
classifies the D x 12 x 12 quantized latents with `ClassificationHead`. By
default the encoder and codebook are frozen: no gradients, eval mode whatever
`.train()` says (batch-norm statistics and the EMA codebook never move). With
``finetune=True`` the encoder learns too; the codebook stays fixed even then,
so the head still reads code vectors of the pretrained codebook.
"""

from __future__ import annotations

import torch
from torch import nn

from ..data import NUM_CLASSES
from .quantizer import VectorQuantizer
from .vqvae import VQVAE, Encoder

LATENT_SIZE = 12  # the encoder maps 28x28 to 12x12 (vqvae.Encoder)


class ClassificationHead(nn.Module):
    """(B, D, 12, 12) latents -> (B, 10) logits.

    A stride-2 conv (12 -> 6), a conv, each with batch norm and ReLU, a max
    pool (6 -> 3), then two linear layers. Small on purpose: measured with one
    thread, a 3x3 conv at the full 12x12 resolution first (and its batch norm)
    made a training step 2.2x slower (2,850 against 6,400 images per CPU
    second for D=32), and the head must train on 55,000 cached codes in well
    under a minute on two cores.
    """

    def __init__(
        self,
        embedding_dim: int,
        *,
        conv_channels: int = 32,
        hidden_units: int = 128,
        dropout: float = 0.3,
        num_classes: int = NUM_CLASSES,
    ):
        super().__init__()
        c = conv_channels
        self.features = nn.Sequential(
            nn.Conv2d(embedding_dim, c, 3, stride=2, padding=1, bias=False),  # 12 -> 6
            nn.BatchNorm2d(c),
            nn.ReLU(inplace=True),
            nn.Conv2d(c, 2 * c, 3, padding=1, bias=False),
            nn.BatchNorm2d(2 * c),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),  # 6 -> 3
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(2 * c * (LATENT_SIZE // 4) ** 2, hidden_units),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden_units, num_classes),
        )

    @classmethod
    def from_config(cls, config, embedding_dim: int) -> "ClassificationHead":
        """Build from a `ClassifierConfig` (sizes) and the VQ-VAE's D."""
        return cls(
            embedding_dim, conv_channels=config.conv_channels, hidden_units=config.hidden_units, dropout=config.dropout
        )

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(latents))


class VQVAEClassifier(nn.Module):
    """A VQ-VAE's encoder and quantizer (frozen unless `finetune`), then a `ClassificationHead`."""

    def __init__(self, vqvae: VQVAE, head: ClassificationHead, *, finetune: bool = False):
        super().__init__()
        self.vqvae_config = vqvae.config
        self.encoder: Encoder = vqvae.encoder
        self.quantizer: VectorQuantizer = vqvae.quantizer
        self.head = head
        self.finetune = finetune
        self.encoder.requires_grad_(finetune)
        # The codebook is the code the head reads: it never changes here.
        self.quantizer.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> "VQVAEClassifier":
        """Only the head (and the encoder when fine-tuning) ever leaves eval mode.

        In train mode the encoder's batch norm would update its running
        statistics, and the quantizer its EMA codebook and dead-code restarts:
        that would change the frozen code under the head.
        """
        self.training = mode
        self.head.train(mode)
        self.encoder.train(mode and self.finetune)
        self.quantizer.train(False)
        return self

    def quantize(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder output (B, D, 12, 12) -> (indices (B, 12, 12), quantized latents (B, D, 12, 12))."""
        b, d, h, w = z.shape
        indices = self.quantizer.nearest(z.detach().permute(0, 2, 3, 1).reshape(-1, d)).view(b, h, w)
        quantized = self.quantizer.lookup(indices)
        if self.finetune and torch.is_grad_enabled():
            # Straight-through, as in the VQ-VAE: the head sees code vectors, the encoder gets their gradient.
            quantized = z + (quantized - z).detach()
        return indices, quantized

    def codes(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 1, 28, 28) -> code indices (B, 12, 12)."""
        return self.quantize(self.encoder(images))[0]

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 1, 28, 28) -> quantized latents (B, D, 12, 12), the head's input."""
        return self.quantize(self.encoder(images))[1]

    def classify_codes(self, indices: torch.Tensor) -> torch.Tensor:
        """Code indices (B, 12, 12) -> logits, without running the encoder (the code-index cache)."""
        return self.head(self.quantizer.lookup(indices.long()))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


class PixelConvNet(nn.Module):
    """The from-scratch baseline: an encoder of the VQ-VAE's shape and the same head, on pixels, no codebook.

    A discriminative ConvNet, not the generative PixelCNN (van den Oord et al. 2016): hence the name.
    """

    def __init__(self, vqvae_config, head: ClassificationHead):
        super().__init__()
        self.encoder = Encoder(vqvae_config)
        self.head = head

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(images))
