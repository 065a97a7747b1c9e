"""One config dataclass per stage, serialised as JSON next to every checkpoint.

A checkpoint stores ``asdict(config)``; `from_dict` rebuilds the dataclass, so
any script can rebuild a model from the file alone. Every field carries a
``help`` string: the CLI turns fields into options with it, and the notebooks'
parameters cells use exactly these names.

Validation happens in ``__post_init__``: an impossible value raises
`ConfigError` with one sentence, before any work starts.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional, TypeVar

from .errors import ConfigError

T = TypeVar("T")


def _opt(default: Any, help: str, **kw: Any) -> Any:
    return field(default=default, metadata={"help": help, **kw})


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    _check(value in choices, f"{name} must be one of {', '.join(choices)}, not {value!r}")


DEVICES = ("auto", "cpu", "cuda")


@dataclass
class VQVAEConfig:
    """Architecture and quantizer of one VQ-VAE."""

    num_embeddings: int = _opt(50, "codebook size K (number of code vectors)")
    embedding_dim: int = _opt(32, "code vector dimension D (channels of the 12x12 latent)")
    hidden_channels: int = _opt(64, "channels of the encoder/decoder trunk")
    residual_channels: int = _opt(32, "bottleneck channels inside each residual block")
    num_residual_blocks: int = _opt(2, "residual blocks in the encoder and in the decoder")
    beta: float = _opt(0.25, "commitment weight (van den Oord et al. 2017, eq. 3)")
    codebook_update: str = _opt("ema", "codebook learning: 'loss' (the paper's codebook term) or 'ema'",
                                choices=("loss", "ema"))
    ema_decay: float = _opt(0.99, "EMA decay of code counts and sums (codebook_update='ema')")
    init: str = _opt("kmeans", "codebook init: 'uniform' (the paper's) or 'kmeans' (on the first batch)",
                     choices=("uniform", "kmeans"))
    dead_code_threshold: float = _opt(1.0, "restart codes whose EMA count per batch falls below this; 0 turns restarts off")

    def __post_init__(self) -> None:
        _check(isinstance(self.num_embeddings, int) and 1 <= self.num_embeddings <= 65536,
               f"num_embeddings must be an integer between 1 and 65536, not {self.num_embeddings!r}")
        for name in ("embedding_dim", "hidden_channels", "residual_channels"):
            value = getattr(self, name)
            _check(isinstance(value, int) and value >= 1, f"{name} must be a positive integer, not {value!r}")
        _check(self.hidden_channels % 2 == 0, f"hidden_channels must be even, not {self.hidden_channels}")
        _check(isinstance(self.num_residual_blocks, int) and self.num_residual_blocks >= 0,
               f"num_residual_blocks must be 0 or more, not {self.num_residual_blocks!r}")
        _check(self.beta >= 0, f"beta must be 0 or more, not {self.beta}")
        _check(0.0 < self.ema_decay < 1.0, f"ema_decay must lie strictly between 0 and 1, not {self.ema_decay}")
        _check(self.dead_code_threshold >= 0, f"dead_code_threshold must be 0 or more, not {self.dead_code_threshold}")
        _check_choice("codebook_update", self.codebook_update, ("loss", "ema"))
        _check_choice("init", self.init, ("uniform", "kmeans"))


@dataclass
class TrainConfig:
    """How one VQ-VAE is trained, and where its files go."""

    epochs: int = _opt(10, "passes over the training split")
    batch_size: int = _opt(128, "images per optimiser step")
    learning_rate: float = _opt(2e-3, "Adam learning rate")
    seed: int = _opt(0, "seed of weights, shuffling and codebook restarts")
    train_subset: Optional[int] = _opt(None, "train on this many images of the training split (stratified); None uses all 55,000")
    device: str = _opt("auto", "'auto' (CUDA when available), 'cpu' or 'cuda'", choices=DEVICES)
    checkpoint_dir: Optional[str] = _opt(None, "folder of best.pt/last.pt; None means checkpoints/vqvae/K{K}_D{D}")
    results_dir: Optional[str] = _opt(None, "folder of metrics and figures; None means results/vqvae/K{K}_D{D}")

    def __post_init__(self) -> None:
        _check(isinstance(self.epochs, int) and self.epochs >= 1, f"epochs must be a positive integer, not {self.epochs!r}")
        _check(isinstance(self.batch_size, int) and self.batch_size >= 1,
               f"batch_size must be a positive integer, not {self.batch_size!r}")
        _check(self.learning_rate > 0, f"learning_rate must be positive, not {self.learning_rate}")
        _check(self.train_subset is None or (isinstance(self.train_subset, int) and self.train_subset >= 1),
               f"train_subset must be a positive integer or None, not {self.train_subset!r}")
        _check_choice("device", self.device, DEVICES)


def from_dict(cls: type[T], values: dict[str, Any]) -> T:
    """Build `cls` from a dict, refusing unknown keys with a clear message."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} option(s): {', '.join(unknown)}")
    return cls(**values)


def split_fields(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """The entries of `values` that are fields of `cls`."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in values.items() if k in names}
