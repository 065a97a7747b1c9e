"""A grid trained with the cosine learning rate publishes apart from the study whose run names it shares
(`vqlib publish --lr-schedule`), restores into its own grid, and is compared with the constant-rate runs."""

from __future__ import annotations

import dataclasses
import math
import shutil
from pathlib import Path

import pandas as pd
import pytest

from vqlib import grid as vqgrid
from vqlib.cli import main
from vqlib.config import GridConfig, TrainConfig, VQVAEConfig
from vqlib.files import read_json, write_json
from vqlib.train import METRICS_FILE

from .conftest import REPO

TINY_MODEL = VQVAEConfig(
    num_embeddings=8, embedding_dim=4, hidden_channels=16, residual_channels=8, num_residual_blocks=1
)
COSINE = TrainConfig(epochs=1, train_subset=300, batch_size=64, lr_schedule="cosine")
CONSTANT_MSE = {0: 0.031, 1: 0.029}  # the constant-rate runs' validation MSE, by seed


def cosine_grid(root: Path, seeds: str) -> GridConfig:
    return GridConfig(
        num_embeddings_values="8",
        embedding_dim_values="4",
        seeds=seeds,
        grid_dir=str(root / "results" / "lr_schedule" / "grid"),
        checkpoint_root=str(root / "checkpoints" / "lr_schedule"),
    )


def publish(root: Path, capsys, *extra: str) -> tuple[int, list[str], str]:
    grid = cosine_grid(root, "0")
    capsys.readouterr()  # what the grid printed before
    code = main(["publish", "--lr-schedule", grid.grid_dir, "--checkpoint-root", grid.checkpoint_root, *extra])
    out, err = capsys.readouterr()
    return code, out.splitlines(), err


def constant_runs(root: Path) -> dict[Path, bytes]:
    """The study's published constant-rate K8_D4 (seed 0) and its protocol seed K8_D4_s1: metrics, and
    checkpoint files whose bytes must stay as they are."""
    files = {}
    for seed, folder, name in ((0, "grid", "K8_D4"), (1, "protocol_seeds", "K8_D4_s1")):
        write_json(
            root / "results" / "published" / folder / name / METRICS_FILE,
            {"status": "success", "val_mse": CONSTANT_MSE[seed], "val_perplexity": 5.0 + seed, "val_usage": 0.75,
             "best_epoch": 1, "train_config": {"epochs": 1, "seed": seed}, "checkpoint": f"pretrained:{name}"},
        )  # fmt: skip
        for file in ("best.pt", "config.json", "history.json"):
            path = root / "checkpoints" / "pretrained" / name / file
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(f"the constant-rate {name}'s {file}".encode())
            files[path] = path.read_bytes()
    return files


def portable_files(root: Path) -> list[Path]:
    """Every file the cosine grid publishes or snapshots, checkpoints aside."""
    folders = [
        root / "results" / "published" / "lr_schedule",
        root / "checkpoints" / "inprogress" / "lr_schedule",
        *(root / "checkpoints" / "pretrained").glob("*_cosine"),
    ]
    return [f for folder in folders for f in folder.rglob("*") if f.is_file() and f.suffix != ".pt"]


def test_cosine_runs_publish_apart_from_the_study_and_restore_into_their_own_grid(
    project, data, capsys, tmp_path_factory, monkeypatch
):
    from vqlib.checkpoints import load_checkpoint, load_vqvae
    from vqlib.publish import inprogress_dir, published_protocol_seeds_dir, restore_runs
    from vqlib.train import train_vqvae

    shutil.copytree(REPO / "notebooks", project / "notebooks")
    constant = constant_runs(project)
    grid = cosine_grid(project, "0")
    checkpoints = Path(grid.checkpoint_root)
    vqgrid.run_grid(grid, TINY_MODEL, COSINE, progress=False)
    # Seed 1 still training: its epoch's last.pt, no metrics yet.
    train_vqvae(TINY_MODEL, dataclasses.replace(COSINE, seed=1, checkpoint_dir=str(checkpoints / "K8_D4_s1")), data,
                progress=False)  # fmt: skip

    code, lines, err = publish(project, capsys)
    assert code == 0, err
    assert lines[0] == "published 1 new or updated cosine run(s): K8_D4 as pretrained:K8_D4_cosine"
    assert lines[1].startswith("lr schedule comparison: published: 1 cosine run(s) beside 1 constant-rate run(s)")
    assert (
        lines[2] == "snapshot of K8_D4_s1, still training: 1 epochs done (checkpoints/inprogress/lr_schedule/K8_D4_s1)"
    )
    published = project / "results" / "published" / "lr_schedule"
    metrics = read_json(published / "K8_D4" / METRICS_FILE)
    assert metrics["checkpoint"] == "pretrained:K8_D4_cosine" and metrics["train_config"]["lr_schedule"] == "cosine"
    assert (published / "K8_D4" / "run.json").is_file() and (published / "K8_D4" / "01_train_vqvae.ipynb").is_file()
    _, ckpt = load_vqvae("pretrained:K8_D4_cosine")
    assert ckpt["train_config"]["lr_schedule"] == "cosine" and ckpt["train_config"]["checkpoint_dir"] is None
    # The study's constant-rate models of the same names are left as they were, and nothing is added beside them.
    assert {path: path.read_bytes() for path in constant} == constant
    assert sorted(p.name for p in (project / "checkpoints" / "pretrained" / "K8_D4").iterdir()) == [
        "best.pt", "config.json", "history.json"]  # fmt: skip
    snapshot = inprogress_dir() / "lr_schedule" / "K8_D4_s1"
    assert load_checkpoint(snapshot / "last.pt")["train_config"]["checkpoint_dir"] is None
    assert not (inprogress_dir() / "K8_D4_s1").exists() and not (published / "K8_D4_s1").exists()
    summary = pd.read_csv(published / "summary.csv")
    assert list(zip(summary["schedule"], summary["seed"], strict=True)) == [("constant", 0), ("cosine", 0)]
    comparison = pd.read_csv(published / "comparison.csv")
    assert list(comparison["metric"]) == ["val_mse", "val_perplexity"]
    assert set(comparison["verdict"]) == {"not measured (fewer than 2 paired seeds)"}
    # No path of this machine in anything published: metrics, run record, notebook, configs, tables.
    files = portable_files(project)
    assert {f.name for f in files} >= {"metrics.json", "run.json", "01_train_vqvae.ipynb", "config.json",
                                       "history.json", "summary.csv", "comparison.csv"}  # fmt: skip
    for file in files:
        assert str(project) not in file.read_text(), file
    # Publishing again writes nothing new.
    code, lines, _ = publish(project, capsys)
    assert lines[0] == "published 0 new or updated cosine run(s): all up to date" and lines[1].endswith("(up to date)")

    # A fresh machine: the study's restores (its seed 0, the protocol's other seeds) do not see the cosine snapshot.
    fresh = tmp_path_factory.mktemp("fresh")
    monkeypatch.setenv("VQLIB_ROOT", str(fresh))
    shutil.copytree(project / "checkpoints" / "inprogress", fresh / "checkpoints" / "inprogress")
    assert sorted(p.name for p in inprogress_dir().glob("K*_D*")) == []
    assert restore_runs(fresh / "results" / "grid", fresh / "checkpoints" / "grid") == []
    assert restore_runs(fresh / "results" / "seeds", fresh / "checkpoints" / "seeds",
                        published=published_protocol_seeds_dir()) == []  # fmt: skip
    for folder in ("checkpoints/pretrained", "results/published", "notebooks"):
        shutil.copytree(project / folder, fresh / folder)
    code, lines, err = publish(fresh, capsys, "--restore")
    fresh_grid, fresh_checkpoints = fresh / "results" / "lr_schedule" / "grid", fresh / "checkpoints" / "lr_schedule"
    assert code == 0 and lines == [f"restored 2 run(s) into {fresh_grid}: K8_D4, K8_D4_s1"], err
    restored = read_json(fresh_grid / "K8_D4" / METRICS_FILE)
    assert restored["checkpoint"] == str((fresh_checkpoints / "K8_D4" / "best.pt").resolve())
    assert load_checkpoint(fresh_checkpoints / "K8_D4" / "best.pt")["train_config"]["lr_schedule"] == "cosine"
    assert (fresh_checkpoints / "K8_D4_s1" / "last.pt").is_file()
    assert all(fresh.joinpath(path.relative_to(project)).read_bytes() == content for path, content in constant.items())
    # The same grid command reuses the finished run and continues the unfinished one.
    frame = vqgrid.run_grid(cosine_grid(fresh, "0,1"), TINY_MODEL, COSINE, progress=False).set_index("name")
    assert bool(frame.loc["K8_D4", "reused"]) and not bool(frame.loc["K8_D4_s1", "reused"])
    assert frame.loc["K8_D4", "val_mse"] == pytest.approx(metrics["val_mse"])
    assert frame.loc["K8_D4_s1", "status"] == "success"
    assert read_json(fresh_grid / "K8_D4_s1" / "run.json")["resumed"] is True

    # Published again: the resumed run joins, its snapshot goes, and both seeds are paired.
    code, lines, err = publish(fresh, capsys)
    assert code == 0 and lines[0] == "published 1 new or updated cosine run(s): K8_D4_s1 as pretrained:K8_D4_s1_cosine"
    assert not (inprogress_dir() / "lr_schedule" / "K8_D4_s1").exists() and len(lines) == 2
    summary = pd.read_csv(fresh / "results" / "published" / "lr_schedule" / "summary.csv")
    assert list(summary["checkpoint"]) == ["pretrained:K8_D4", "pretrained:K8_D4_cosine", "pretrained:K8_D4_s1",
                                           "pretrained:K8_D4_s1_cosine"]  # fmt: skip
    row = pd.read_csv(fresh / "results" / "published" / "lr_schedule" / "comparison.csv").iloc[0]
    cosine_mse = summary[summary["schedule"] == "cosine"]["val_mse"].to_numpy()
    assert row["seeds"] == 2 and row["constant_mean"] == pytest.approx(0.030)
    assert row["mean_difference"] == pytest.approx((cosine_mse - [CONSTANT_MSE[0], CONSTANT_MSE[1]]).mean())
    assert not row["verdict"].startswith("not measured")
    assert all(str(fresh) not in f.read_text() for f in portable_files(fresh))


def test_publish_lr_schedule_refuses_bad_input_in_one_sentence(project, capsys):
    grid_dir, checkpoints = project / "results" / "lr_schedule" / "grid", project / "checkpoints" / "lr_schedule"
    checkpoints.mkdir(parents=True)
    assert main(["publish", "--lr-schedule", str(grid_dir), "--checkpoint-root", str(checkpoints)]) == 2
    err = capsys.readouterr().err
    assert "results/lr_schedule/grid does not exist" in err and len(err.strip().splitlines()) == 1
    grid_dir.mkdir(parents=True)
    assert main(["publish", "--lr-schedule", str(grid_dir)]) == 2
    err = capsys.readouterr().err
    assert "--lr-schedule needs --checkpoint-root" in err and len(err.strip().splitlines()) == 1
    assert main(["publish", "--lr-schedule", str(grid_dir), "--checkpoint-root", str(project / "nowhere")]) == 2
    assert "nowhere does not exist" in capsys.readouterr().err
    # A constant-rate run in the grid would pass for a cosine one: refused, nothing published.
    write_json(grid_dir / "K8_D4" / METRICS_FILE, {"status": "success", "train_config": {"epochs": 1}})
    assert main(["publish", "--lr-schedule", str(grid_dir), "--checkpoint-root", str(checkpoints)]) == 2
    err = capsys.readouterr().err
    assert "K8_D4 in results/lr_schedule/grid was trained with the constant learning-rate schedule" in err
    assert not (project / "results" / "published").exists() and not (project / "checkpoints" / "pretrained").exists()


def comparison_frame(constant: list[float], cosine: list[float], seeds=(0, 1, 2), cosine_seeds=None) -> pd.DataFrame:
    rows = [{"schedule": "constant", "seed": s, "m": v} for s, v in zip(seeds, constant, strict=True)]
    rows += [{"schedule": "cosine", "seed": s, "m": v} for s, v in zip(cosine_seeds or seeds, cosine, strict=True)]
    return pd.DataFrame(rows)


@pytest.mark.parametrize(
    ("constant", "cosine", "verdict"),
    [
        # The seeds move both schedules alike: a steady shift smaller than the spread between seeds.
        ([1.0, 2.0, 3.0], [1.1, 2.1, 3.1], "cosine higher, within the seed spread"),
        ([1.0, 2.0, 3.0], [0.9, 1.9, 2.9], "cosine lower, within the seed spread"),
        ([1.0, 2.0, 3.0], [1.2, 1.9, 3.0], "no difference shown"),
        ([1.0, 1.1, 1.2], [0.5, 0.6, 0.7], "cosine lower, beyond the seed spread"),
        ([1.0, 1.1, 1.2], [3.0, 3.1, 3.3], "cosine higher, beyond the seed spread"),
    ],
)
def test_schedule_comparison_verdicts(constant, cosine, verdict):
    row = vqgrid.paired_comparison(comparison_frame(constant, cosine), "m", by="schedule", a="constant", b="cosine")
    assert row["verdict"] == verdict and row["seeds"] == 3
    assert row["mean_difference"] == pytest.approx(sum(cosine) / 3 - sum(constant) / 3)
    assert row["ci_low"] <= row["mean_difference"] <= row["ci_high"]
    assert row["constant_mean"] == pytest.approx(sum(constant) / 3)
    assert row["cosine_std"] == pytest.approx(pd.Series(cosine).std())


def test_schedule_comparison_needs_two_paired_seeds():
    """Seeds 0 and 1 of cosine against 1 and 2 of the constant rate: one pair, nothing claimed."""
    frame = comparison_frame([1.0, 2.0], [1.5, 2.5], seeds=(1, 2), cosine_seeds=(0, 1))
    row = vqgrid.paired_comparison(frame, "m", by="schedule", a="constant", b="cosine")
    assert row["seeds"] == 1 and row["verdict"] == "not measured (fewer than 2 paired seeds)"
    assert row["mean_difference"] == pytest.approx(1.5) and math.isnan(row["ci_low"]) and math.isnan(row["cosine_std"])
    alone = vqgrid.paired_comparison(frame[frame["schedule"] == "cosine"], "m", by="schedule", a="constant", b="cosine")
    assert alone["seeds"] == 0 and alone["verdict"] == "not measured (fewer than 2 paired seeds)"
