"""Priors as grid points through the local pool: run folders, a failed point recorded, reuse, resume, the CLI.

Real data and the published VQ-VAEs; the priors are tiny (one layer, 160
training codes), so a point trains in seconds. The same points on a real
Ray cluster: tests/test_ray.py.
"""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest
import torch

from tests.conftest import REPO, TINY_PRIOR
from vqlib import prior_grid
from vqlib.config import GridConfig, PriorConfig
from vqlib.errors import CheckpointError, ConfigError
from vqlib.files import read_json

K25 = str(REPO / "checkpoints" / "pretrained" / "K25_D64" / "best.pt")
TINY = PriorConfig(**TINY_PRIOR, device="cpu")


@pytest.fixture(scope="module")
def grid_run(tmp_path_factory):
    """Two points in a pool of two processes: a real VQ-VAE, and a file that is no checkpoint; then run again."""
    root = tmp_path_factory.mktemp("priors")
    broken = root / "vqvae" / "K7_D7" / "best.pt"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"not a checkpoint")
    grid = GridConfig(jobs=2, grid_dir=str(root / "results"), checkpoint_root=str(root / "checkpoints"))
    first = prior_grid.run_prior_grid([K25, str(broken)], TINY, grid, progress=False)
    metrics = root / "results" / "prior" / "K25_D64_transformer_uncond" / "metrics.json"
    mtime = metrics.stat().st_mtime_ns
    second = prior_grid.run_prior_grid([K25, str(broken)], TINY, grid, progress=False)
    return {"root": root, "grid": grid, "first": first, "second": second, "mtime": mtime, "broken": broken}


def test_a_point_writes_its_run_folder_and_a_bad_one_is_recorded(grid_run):
    from vqlib.prior import load_pair

    root = grid_run["root"]
    frame = grid_run["first"].set_index("name")
    assert list(frame.index) == ["K25_D64_transformer_uncond", "K7_D7_transformer_uncond"]
    ok = frame.loc["K25_D64_transformer_uncond"]
    assert ok["status"] == "success" and ok["num_embeddings"] == 25 and ok["executor"] == "local"
    assert 0 < ok["val_bits_per_image"] < 1.2 * ok["uniform_bits_per_image"]
    folder = root / "results" / "prior" / "K25_D64_transformer_uncond"
    metrics, record = read_json(folder / "metrics.json"), read_json(folder / "run.json")
    assert metrics["prior_config"]["train_subset"] == 160 and metrics["vqvae_checkpoint"] == K25
    assert record["stage"] == "prior" and record["status"] == "success" and record["threads"] == 1
    assert metrics["precision"] in ("fp32", "bf16") and ok["precision"] == metrics["precision"]
    assert (folder / "samples.png").stat().st_size > 5000
    best = root / "checkpoints" / "prior" / "K25_D64_transformer_uncond" / "best.pt"
    assert metrics["checkpoint"] == str(best)
    prior, vqvae, _ = load_pair(best)  # the checkpoint finds its VQ-VAE by the name it recorded
    assert prior.num_codes == vqvae.config.num_embeddings == 25
    bad = frame.loc["K7_D7_transformer_uncond"]
    assert bad["status"] == "failed" and "not a readable checkpoint" in bad["error"]
    summary = pd.read_csv(root / "results" / "prior" / "summary.csv")
    assert list(summary["status"]) == ["success", "failed"]


def test_a_rerun_reuses_finished_points_and_retries_failed_ones(grid_run):
    second = grid_run["second"].set_index("name")
    assert bool(second.loc["K25_D64_transformer_uncond", "reused"])
    assert not bool(second.loc["K7_D7_transformer_uncond", "reused"])
    assert second.loc["K7_D7_transformer_uncond", "status"] == "failed"
    metrics = grid_run["root"] / "results" / "prior" / "K25_D64_transformer_uncond" / "metrics.json"
    assert metrics.stat().st_mtime_ns == grid_run["mtime"]


def test_other_settings_or_other_weights_make_a_point_incomplete(grid_run):
    folder = grid_run["root"] / "results" / "prior" / "K25_D64_transformer_uncond"
    name, same = prior_grid.prior_parameters(K25, TINY, grid_run["grid"])
    digest = prior_grid.vqvae_digest(K25)
    assert name == "K25_D64_transformer_uncond" and prior_grid.is_complete(folder, same, digest)
    _, wider = prior_grid.prior_parameters(K25, dataclasses.replace(TINY, width=64), grid_run["grid"])
    assert not prior_grid.is_complete(folder, wider, digest)
    # Where and in what it ran does not make another result.
    _, placed = prior_grid.prior_parameters(K25, dataclasses.replace(TINY, precision="fp32"), grid_run["grid"])
    assert prior_grid.is_complete(folder, placed, digest)
    assert not prior_grid.is_complete(folder, same, prior_grid.vqvae_digest(K25.replace("K25_D64", "K25_D32")))
    assert prior_grid.vqvae_digest(str(grid_run["broken"])) is None


def test_more_epochs_continue_from_last_pt(grid_run):
    """Asked for two epochs, the finished one-epoch point continues from its last.pt (in this process: one point)."""
    longer = dataclasses.replace(TINY, epochs=2)
    frame = prior_grid.run_prior_grid([K25], longer, grid_run["grid"], progress=False).set_index("name")
    row = frame.loc["K25_D64_transformer_uncond"]
    assert row["status"] == "success" and not row["reused"] and row["epochs_run"] == 2
    record = read_json(grid_run["root"] / "results" / "prior" / "K25_D64_transformer_uncond" / "run.json")
    assert record["resumed"] is True
    last = torch.load(
        grid_run["root"] / "checkpoints" / "prior" / "K25_D64_transformer_uncond" / "last.pt", weights_only=True
    )
    assert [row["epoch"] for row in last["history"]] == [1, 2]


def test_bad_input_is_one_sentence_before_anything_runs(tmp_path, capsys):
    from vqlib.cli import main

    grid = GridConfig(grid_dir=str(tmp_path / "results"))
    with pytest.raises(CheckpointError, match="no VQ-VAE checkpoint at"):
        prior_grid.run_prior_grid([str(tmp_path / "missing.pt")], TINY, grid)
    copy = tmp_path / "other" / "K25_D64" / "best.pt"
    copy.parent.mkdir(parents=True)
    copy.write_bytes((REPO / "checkpoints" / "pretrained" / "K25_D64" / "best.pt").read_bytes())
    with pytest.raises(ConfigError, match="give the run name K25_D64_transformer_uncond"):
        prior_grid.run_prior_grid([K25, str(copy)], TINY, grid)
    assert not (tmp_path / "results").exists()
    args = ["prior-grid", "--vqvae-checkpoints", "pretrained:K999_D1", "--grid-dir", str(tmp_path / "results")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no pretrained VQ-VAE checkpoint 'K999_D1'" in err[0]
    assert not (tmp_path / "results").exists()
