"""Neural network modules: the vector quantizer, the VQ-VAE and the classifier."""

from .quantizer import QuantizerOutput, VectorQuantizer
from .vqvae import VQVAE, Decoder, Encoder, VQVAEOutput
from .classifier import ClassificationHead, PixelCNN, VQVAEClassifier

__all__ = ["QuantizerOutput", "VectorQuantizer", "VQVAE", "Encoder", "Decoder", "VQVAEOutput",
           "ClassificationHead", "VQVAEClassifier", "PixelCNN"]
