"""Codebook-health ablation: what EMA updates, k-means init and dead-code restarts each buy.

Every variant is the same VQ-VAE, trained with the same seed, data and epochs
through `vqlib.train.train_vqvae`; only the quantizer options differ. The table
holds the last epoch of each run (a fixed budget, not early stopping), with the
code histogram of the whole validation split, so the numbers do not depend on
the batch size. `codes_restarted` is the total over all epochs.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Mapping, Optional, Sequence

import matplotlib.pyplot as plt
import pandas as pd

from . import paths
from .config import ABLATION_CONFIGS as SEED_GRID_EXTREMES
from .config import ABLATION_VARIANTS as VARIANTS
from .config import TrainConfig, VQVAEConfig
from .data import FashionMNIST, load_fashion_mnist
from .errors import ConfigError
from .files import ensure_dir, save_figure, write_csv, write_json
from .plots import ablation_figure
from .train import train_vqvae

# From the paper's quantizer to the full set of codebook-health options, one option added at a time.
# The variants and configurations live in config.py, so that `vqlib --help` need not import torch.

COLUMNS = [
    "K",
    "D",
    "variant",
    "codebook_update",
    "init",
    "dead_code_threshold",
    "val_mse",
    "val_perplexity",
    "val_usage",
    "val_codes_used",
    "train_perplexity",
    "codes_restarted",
    "epochs",
    "train_subset",
    "seed",
    "seconds",
]


def resolve_variants(variants: Sequence[str] | Mapping[str, Mapping] | None) -> dict[str, dict]:
    """Names of `VARIANTS`, or a mapping name -> quantizer options (fields of `VQVAEConfig`)."""
    if variants is None:
        return dict(VARIANTS)
    if isinstance(variants, Mapping):
        known = {f.name for f in dataclasses.fields(VQVAEConfig)}
        for name, options in variants.items():
            unknown = sorted(set(options) - known)
            if unknown:
                raise ConfigError(f"variant {name!r} sets unknown VQVAEConfig option(s): {', '.join(unknown)}")
        return {name: dict(options) for name, options in variants.items()}
    unknown = [name for name in variants if name not in VARIANTS]
    if unknown:
        raise ConfigError(
            f"unknown ablation variant(s) {', '.join(map(repr, unknown))}; choose from {', '.join(VARIANTS)}"
        )
    if not variants:
        raise ConfigError("the ablation needs at least one variant")
    return {name: dict(VARIANTS[name]) for name in variants}


def with_thresholds(variants: Mapping[str, Mapping], thresholds: Sequence[float]) -> dict[str, dict]:
    """Each variant with restarts once per dead-code threshold, named ``variant@T``; the others unchanged."""
    if any(t <= 0 for t in thresholds):
        raise ConfigError(f"restart thresholds must be positive, not {list(thresholds)}")
    result: dict[str, dict] = {}
    for name, options in variants.items():
        if options.get("dead_code_threshold", 0.0) > 0:
            result.update({f"{name}@{t:g}": {**options, "dead_code_threshold": float(t)} for t in thresholds})
        else:
            result[name] = dict(options)
    return result


def codebook_ablation(
    configs: Sequence[tuple[int, int]] = SEED_GRID_EXTREMES,
    variants: Sequence[str] | Mapping[str, Mapping] | None = None,
    *,
    epochs: int = 2,
    train_subset: Optional[int] = 6400,
    seed: int = 0,
    data: Optional[FashionMNIST] = None,
    results_dir: Optional[str | Path] = None,
    checkpoints_dir: Optional[str | Path] = None,
    device: str = "auto",
    base_config: Optional[VQVAEConfig] = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Train every (K, D) of `configs` with every variant; write ablation.csv and ablation.png.

    `base_config` gives the architecture (default: `VQVAEConfig()`); each
    variant overrides its quantizer options and each config its K and D.
    Checkpoints go to `checkpoints_dir`/<variant>/K{K}_D{D} (default
    checkpoints/ablation), the table and the figure to `results_dir` (default
    results/ablation), both written atomically. Returns the table.
    """
    variants = resolve_variants(variants)
    configs = [(int(k), int(d)) for k, d in configs]
    if not configs:
        raise ConfigError("the ablation needs at least one (K, D) configuration")
    base_config = base_config or VQVAEConfig()
    data = data or load_fashion_mnist()
    results_dir = ensure_dir(results_dir or paths.results_dir() / "ablation")
    checkpoints_dir = Path(checkpoints_dir or paths.checkpoints_dir() / "ablation")
    # Validated before the first run, so a typo does not surface after an hour of training.
    train_configs = {
        name: TrainConfig(
            epochs=epochs,
            train_subset=train_subset,
            seed=seed,
            device=device,
            checkpoint_dir=str(checkpoints_dir / name.replace("+", "_")),
        )
        for name in variants
    }
    model_configs = {
        (name, k, d): dataclasses.replace(base_config, num_embeddings=k, embedding_dim=d, **options)
        for name, options in variants.items()
        for k, d in configs
    }
    write_json(
        results_dir / "ablation_settings.json",
        {
            "configs": configs,
            "variants": variants,
            "epochs": epochs,
            "train_subset": train_subset,
            "seed": seed,
            "base_config": dataclasses.asdict(base_config),
        },
    )

    rows = []
    for k, d in configs:
        for name in variants:
            model_config = model_configs[(name, k, d)]
            train_config = dataclasses.replace(
                train_configs[name],
                checkpoint_dir=str(Path(train_configs[name].checkpoint_dir) / paths.vqvae_run_name(k, d)),
            )
            run = train_vqvae(model_config, train_config, data, progress=progress)
            last = run.history[-1]
            rows.append(
                {
                    "K": k,
                    "D": d,
                    "variant": name,
                    "codebook_update": model_config.codebook_update,
                    "init": model_config.init,
                    "dead_code_threshold": model_config.dead_code_threshold,
                    "val_mse": last["val_mse"],
                    "val_perplexity": last["val_perplexity"],
                    "val_usage": last["val_usage"],
                    "val_codes_used": round(last["val_usage"] * k),
                    "train_perplexity": last["train_perplexity"],
                    "codes_restarted": sum(row["codes_restarted"] for row in run.history),
                    "epochs": epochs,
                    "train_subset": train_subset,
                    "seed": seed,
                    "seconds": sum(row["epoch_seconds"] for row in run.history),
                }
            )
            # Written after every run: an interrupted ablation keeps what it measured.
            table = pd.DataFrame(rows, columns=COLUMNS)
            write_csv(results_dir / "ablation.csv", table)

    fig = ablation_figure(
        table,
        title=f"Codebook ablation: {epochs} epoch{'s' * (epochs != 1)} on "
        f"{train_subset or 55_000} training images, seed {seed}",
    )
    save_figure(fig, results_dir / "ablation.png")
    plt.close(fig)
    return table
