"""Neural network modules: the vector quantizer, the VQ-VAE and the classifier."""

from .classifier import ClassificationHead, PixelConvNet, VQVAEClassifier
from .quantizer import QuantizerOutput, VectorQuantizer
from .vqvae import VQVAE, Decoder, Encoder, VQVAEOutput

__all__ = [
    "QuantizerOutput",
    "VectorQuantizer",
    "VQVAE",
    "Encoder",
    "Decoder",
    "VQVAEOutput",
    "ClassificationHead",
    "VQVAEClassifier",
    "PixelConvNet",
]
