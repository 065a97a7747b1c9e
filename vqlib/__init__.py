"""vqlib: a VQ-VAE that learns a discrete code for FashionMNIST, and a classifier that reads it.

The Python API (vqlib/api.py)::

    import vqlib

    vqvae = vqlib.load_pretrained("K100_D64")
    images, labels = vqlib.load_split("test")
    codes = vqvae.encode(images[:8])   # int64 (8, 12, 12)
    recon = vqvae.decode(codes)        # float32 (8, 1, 28, 28) in [0, 1]

`import vqlib` stays light (the CLI starts from it): the API's names load torch
and the models on first use.
"""

# The one place the version is written: pyproject.toml reads it (tool.setuptools.dynamic).
__version__ = "0.2.0"

_API = (
    "CLASSES",
    "PretrainedClassifier",
    "PretrainedPrior",
    "PretrainedVQVAE",
    "list_pretrained",
    "load_pretrained",
    "load_split",
    "psnr",
)
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'vqlib' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
