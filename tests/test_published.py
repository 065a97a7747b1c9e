"""The published study in the repository: every pretrained checkpoint reproduces what it recorded, and the
published tree stays small and tracked."""

from __future__ import annotations

import subprocess

import pytest

from vqlib import paths
from vqlib.checkpoints import load_vqvae
from vqlib.files import read_json
from vqlib.publish import (
    LR_SCHEDULE_SUFFIX,
    PUBLISHED_LIMIT_BYTES,
    finished_runs,
    published_classifier_dir,
    published_grid_dir,
    published_lr_schedule_dir,
    published_protocol_seeds_dir,
)
from vqlib.train import METRICS_FILE, evaluate_vqvae

from .conftest import REPO

# Checked in the repository itself, whatever VQLIB_ROOT the test session has.
PUBLISHED_FOLDERS = ("checkpoints/pretrained", "checkpoints/inprogress", "results/published", "docs/figures")


def repo_paths(monkeypatch):
    monkeypatch.delenv("VQLIB_ROOT", raising=False)
    assert paths.project_root() == REPO


# The folders of published runs, and the suffix of their checkpoints' names (the cosine runs share the study's names).
PUBLISHED_RUN_FOLDERS = {
    "grid": (published_grid_dir, ""),
    "protocol_seeds": (published_protocol_seeds_dir, ""),
    "lr_schedule": (published_lr_schedule_dir, LR_SCHEDULE_SUFFIX),
}
PUBLISHED_RUNS = [
    (folder, name)
    for folder in PUBLISHED_RUN_FOLDERS
    for name in finished_runs(REPO / "results" / "published" / folder)
]


@pytest.mark.parametrize(("folder", "name"), PUBLISHED_RUNS)
def test_published_checkpoint_reproduces_its_validation_mse(folder, name, data, monkeypatch):
    """Loaded by name, the checkpoint (of the study's grid, of its protocol seeds or of the cosine-rate runs)
    measures the validation MSE its run recorded for its best epoch."""
    repo_paths(monkeypatch)
    published, suffix = PUBLISHED_RUN_FOLDERS[folder]
    metrics = read_json(published() / name / METRICS_FILE)
    assert metrics["checkpoint"] == f"pretrained:{name}{suffix}"
    model, ckpt = load_vqvae(f"pretrained:{name}{suffix}")
    assert ckpt["epoch"] == metrics["best_epoch"]
    measured = evaluate_vqvae(model, data.val_images)
    # Another thread count sums in another order: float32 agreement, not bitwise.
    assert measured["mse"] == pytest.approx(metrics["val_mse"], rel=1e-4)
    assert measured["perplexity"] == pytest.approx(metrics["val_perplexity"], rel=1e-3)


@pytest.mark.parametrize(
    "name", sorted(p.parent.name for p in (REPO / "results" / "published" / "classifier").glob("*/metrics.json"))
)
def test_published_classifier_reproduces_its_test_accuracy(name, data, monkeypatch):
    """Loaded by name and paired with the published VQ-VAE it names, the classifier measures its recorded accuracy."""
    from vqlib.classify import evaluate_classifier, load_classifier

    repo_paths(monkeypatch)
    metrics = read_json(published_classifier_dir() / name / METRICS_FILE)
    assert metrics["classifier_checkpoint"] == f"pretrained:{name}"
    assert metrics["vqvae_checkpoint"].startswith("pretrained:")
    model, _ = load_classifier(metrics["classifier_checkpoint"], vqvae_checkpoint=metrics["vqvae_checkpoint"])
    measured = evaluate_classifier(model, data, split="test", write=False)
    assert measured["accuracy"] == pytest.approx(metrics["test_accuracy"], abs=2e-4)  # two images of 10,000


def test_published_pixel_classifier_is_notebook_06s_judge_and_reproduces_its_test_accuracy(data, monkeypatch, tmp_path):
    """The judge of the published generation measures is published; asked for with its settings, notebook 06 gets it
    without training (on a clone with nothing cached), and it measures its recorded test accuracy."""
    from vqlib import generation
    from vqlib.generation import judge_images, real_pixel_classifier

    repo_paths(monkeypatch)
    monkeypatch.setattr(generation, "pixel_classifier_cache", lambda: tmp_path)  # what a fresh clone has cached

    def no_training(*args, **kwargs):
        raise AssertionError("the published pixel classifier was not used: training it takes an hour here")

    monkeypatch.setattr(generation, "train_pixel_classifier", no_training)
    record = read_json(REPO / "results" / "published" / "prior" / "generation.json")
    settings = record["settings"]
    judge = real_pixel_classifier(
        data,
        train_subset=settings["feature_train_subset"],
        epochs=settings["feature_epochs"],
        patience=settings["classifier_patience"],
        device="cpu",
        progress=False,
    )
    assert judge.checkpoint.is_relative_to(REPO / "checkpoints" / "pretrained" / "pixel-classifier")
    assert judge.summary == record["feature_classifier"]
    judged = judge_images(judge.model, {"test": (data.test_images, data.test_labels)})["test"]
    assert (judged.predicted == data.test_labels.numpy()).mean() == pytest.approx(judge.test_accuracy, abs=2e-4)


def git(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(REPO), *args], input=stdin, capture_output=True, text=True, timeout=60)


def test_published_study_in_git_holds_at_most_its_budget():
    tracked = git("ls-files", "-z", "--", *PUBLISHED_FOLDERS).stdout.split("\0")
    files = [REPO / name for name in tracked if name]
    assert files, "nothing published is tracked"
    size = sum(f.stat().st_size for f in files if f.is_file())
    assert size <= PUBLISHED_LIMIT_BYTES, f"the published study holds {size / 1e6:.1f} MB"


def test_no_published_file_is_ignored_by_git():
    """Every published file on disk, and one of every kind `vqlib publish` and `vqlib figures` write, is tracked-able."""
    on_disk = [
        p.relative_to(REPO).as_posix()
        for folder in PUBLISHED_FOLDERS
        for p in (REPO / folder).rglob("*")
        if p.is_file()
    ]
    layout = [
        "checkpoints/pretrained/K100_D64/best.pt",
        "checkpoints/pretrained/K100_D64_all_frozen/config.json",
        "checkpoints/inprogress/K50_D16/last.pt",
        "checkpoints/inprogress/label_efficiency/K100_D64_all_frozen/label_efficiency.runs.jsonl",
        "checkpoints/inprogress/lr_schedule/K100_D64_s1/last.pt",
        "checkpoints/pretrained/K100_D64_cosine/best.pt",
        "results/published/lr_schedule/K100_D64/01_train_vqvae.ipynb",
        "results/published/lr_schedule/comparison.csv",
        "results/published/grid/K100_D64/01_train_vqvae.ipynb",
        "results/published/grid/best.json",
        "results/published/grid/heatmaps.png",
        "results/published/classifier/K100_D64_all_frozen/label_efficiency.csv",
        "results/published/classifier/K100_D64_all_frozen/label_efficiency.runs.jsonl",
        "results/published/analysis/analysis.json",
        "results/published/analysis/tsne.png",
        "results/published/reports/index.html",
        "docs/figures/loss_curves.png",
    ]
    ignored = git("check-ignore", "--no-index", "--stdin", stdin="\n".join(on_disk + layout) + "\n")
    assert ignored.returncode in (0, 1), ignored.stderr
    assert ignored.stdout == "", f"ignored by .gitignore: {ignored.stdout.split()}"
    # And the check can fail: what is not published stays ignored.
    assert git("check-ignore", "--no-index", "results/grid/best.json").stdout.strip() == "results/grid/best.json"


def test_published_index_shows_each_runs_whole_training_time():
    """The index's grid table shows the training of all a run's sessions (`train_seconds`), not its last session's
    wall time (`run_seconds`: 635 s for K25_D16, which trained for 3.45 h over three sessions)."""
    import re

    import pandas as pd

    from vqlib.reports import _duration

    index_file = REPO / "results" / "published" / "reports" / "index.html"
    if not index_file.is_file():
        pytest.skip("no published reports")
    index = index_file.read_text()
    summary = pd.read_csv(REPO / "results" / "published" / "grid" / "summary.csv")
    resumed = 0
    for run in summary.itertuples():
        row = re.search(rf"<td>{run.name}</td>(.*?)</tr>", index, re.S)
        assert row, f"{run.name} is not in the index's grid table"
        assert f"<td>{_duration(run.train_seconds)}</td>" in row.group(1), run.name
        if _duration(run.run_seconds) != _duration(run.train_seconds):
            resumed += 1
            assert f"<td>{_duration(run.run_seconds)}</td>" not in row.group(1), run.name
    assert resumed, "no published run was resumed, so this test cannot tell the two times apart"
