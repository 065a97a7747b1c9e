"""The codebook ablation on a tiny budget: real data, real training, real files."""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest

from vqlib import cli
from vqlib.ablation import COLUMNS, codebook_ablation, resolve_variants, with_thresholds
from vqlib.errors import ConfigError


@pytest.fixture(scope="module")
def small_data(data):
    # The real validation images, fewer of them: evaluation dominates a 300-image run otherwise.
    return dataclasses.replace(data, val_images=data.val_images[:500], val_labels=data.val_labels[:500])


def test_ablation_writes_the_table_and_the_figure(small_data, project):
    table = codebook_ablation(
        [(25, 16)],
        ["paper", "ema+kmeans+restarts"],
        epochs=1,
        train_subset=300,
        seed=0,
        data=small_data,
        progress=False,
    )
    csv = project / "results" / "ablation" / "ablation.csv"
    assert csv.is_file() and (project / "results" / "ablation" / "ablation.png").stat().st_size > 10_000
    assert (project / "checkpoints" / "ablation" / "paper" / "K25_D16" / "best.pt").is_file()
    saved = pd.read_csv(csv)
    assert list(saved.columns) == COLUMNS
    assert saved[["K", "D", "variant"]].values.tolist() == [[25, 16, "paper"], [25, 16, "ema+kmeans+restarts"]]
    assert saved["codebook_update"].tolist() == ["loss", "ema"]
    assert saved["val_mse"].between(0, 1).all() and (saved["val_mse"] < 0.2).all()
    assert saved["val_perplexity"].between(1, 25).all()
    assert saved["val_usage"].between(0, 1).all()
    assert (saved["val_codes_used"] == (saved["val_usage"] * 25).round()).all()
    assert (saved["seconds"] > 0).all()
    pd.testing.assert_frame_equal(saved, table, check_dtype=False)


def test_ablation_refuses_unknown_variants(small_data, project):
    with pytest.raises(ConfigError, match="unknown ablation variant"):
        codebook_ablation([(25, 16)], ["paper", "ema+magic"], data=small_data)
    with pytest.raises(ConfigError, match="unknown VQVAEConfig option"):
        codebook_ablation([(25, 16)], {"odd": {"codebook_updates": "ema"}}, data=small_data)
    assert not (project / "results" / "ablation" / "ablation.csv").exists()


def test_cli_parses_codebook_configurations():
    args = cli.build_parser().parse_args(["ablation", "--configs", "25x16", "K100xD64", "50,32", "--epochs", "2"])
    assert args.configs == [(25, 16), (100, 64), (50, 32)]
    assert args.epochs == 2
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["ablation", "--configs", "25by16"])


def test_threshold_sweep_expands_only_variants_with_restarts():
    variants = with_thresholds(resolve_variants(["paper", "ema+kmeans+restarts"]), [0.5, 4])
    assert list(variants) == ["paper", "ema+kmeans+restarts@0.5", "ema+kmeans+restarts@4"]
    assert variants["paper"]["dead_code_threshold"] == 0.0
    assert variants["ema+kmeans+restarts@4"] == {"codebook_update": "ema", "init": "kmeans", "dead_code_threshold": 4.0}
    with pytest.raises(ConfigError, match="positive"):
        with_thresholds(variants, [0.0])
