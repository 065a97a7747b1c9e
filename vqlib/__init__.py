"""vqlib: a VQ-VAE that learns a discrete code for FashionMNIST, and a classifier that reads it."""

__version__ = "0.1.0"
