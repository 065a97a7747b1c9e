"""The papermill grid on real data: a tiny 1 x 2 grid, one point impossible (D = 0), run twice."""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import time
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest

from vqlib import checkpoints as vqcheckpoints
from vqlib import grid as vqgrid
from vqlib import notebooks as vqnotebooks
from vqlib import reports as vqreports
from vqlib import study as vqstudy
from vqlib import train as vqtrain
from vqlib.config import GridConfig, TrainConfig, VQVAEConfig
from vqlib.errors import ConfigError, ResultFileError, TrainingError
from vqlib.files import read_json

REPO = Path(__file__).resolve().parents[1]
TINY_MODEL = VQVAEConfig(hidden_channels=16, residual_channels=8, num_residual_blocks=1)
TINY_TRAIN = TrainConfig(epochs=1, train_subset=300, batch_size=64)
TINY_GRID = GridConfig(num_embeddings_values="8", embedding_dim_values="4,0")


def tiny_root(tmp_path_factory, monkeypatch) -> Path:
    """A project root with the repository's notebooks and fresh results/ and checkpoints/."""
    root = tmp_path_factory.mktemp("project")
    shutil.copytree(REPO / "notebooks", root / "notebooks")
    monkeypatch.setenv("VQLIB_ROOT", str(root))
    return root


@pytest.fixture(scope="module")
def grid_run(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        root = tiny_root(tmp_path_factory, mp)
        first = vqgrid.run_grid(TINY_GRID, TINY_MODEL, TINY_TRAIN, progress=False)
        notebook = root / "results" / "grid" / "K8_D4" / vqnotebooks.TRAIN_NOTEBOOK
        mtime = notebook.stat().st_mtime_ns
        second = vqgrid.run_grid(TINY_GRID, TINY_MODEL, TINY_TRAIN, progress=False)
        yield {"root": root, "first": first, "second": second, "mtime": mtime, "mp": mp}


def test_failed_point_is_recorded_and_the_other_runs(grid_run):
    frame = grid_run["first"].set_index("name")
    assert list(frame.index) == ["K8_D4", "K8_D0"]
    assert frame.loc["K8_D4", "status"] == "success" and frame.loc["K8_D4", "error"] == ""
    assert frame.loc["K8_D0", "status"] == "failed"
    assert "embedding_dim must be a positive integer, not 0" in frame.loc["K8_D0", "error"]
    csv = pd.read_csv(grid_run["root"] / "results" / "grid" / vqgrid.SUMMARY_FILE).set_index("name")
    assert csv.loc["K8_D0", "status"] == "failed" and "embedding_dim" in csv.loc["K8_D0", "error"]
    assert csv.loc["K8_D4", "val_mse"] == pytest.approx(frame.loc["K8_D4", "val_mse"])
    record = read_json(grid_run["root"] / "results" / "grid" / "K8_D0" / vqgrid.RUN_FILE)
    assert record["status"] == "failed" and record["seconds"] > 0
    # The failed notebook is kept: it shows the error.
    assert (grid_run["root"] / "results" / "grid" / "K8_D0" / vqnotebooks.TRAIN_NOTEBOOK).is_file()


def test_run_folder_holds_notebook_metrics_and_figures(grid_run):
    folder = grid_run["root"] / "results" / "grid" / "K8_D4"
    metrics = read_json(folder / vqtrain.METRICS_FILE)
    assert metrics["status"] == "success" and (metrics["num_embeddings"], metrics["embedding_dim"]) == (8, 4)
    assert metrics["train_config"]["train_subset"] == 300 and len(metrics["history"]) == 1
    assert 0 < metrics["val_mse"] < 0.2 and 1 <= metrics["val_perplexity"] <= 8
    assert Path(metrics["checkpoint"]).is_absolute() and Path(metrics["checkpoint"]).is_file()
    assert Path(metrics["checkpoint"]).parent == grid_run["root"] / "checkpoints" / "grid" / "K8_D4"
    for name in ("loss_curves.png", "reconstructions.png"):
        assert (folder / name).stat().st_size > 5000
    nb = nbformat.read(folder / vqnotebooks.TRAIN_NOTEBOOK, as_version=4)
    injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1 and "embedding_dim = 4" in injected[0].source
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) == 2
    # No progress bars in the kernel the grid starts: no widgets, no carriage-return bars in the outputs.
    outputs = [o for c in nb.cells for o in c.get("outputs", [])]
    assert not any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in outputs)
    text = "".join(o.get("text", "") for o in outputs)
    assert "\r" not in text
    assert "best epoch 1" in text


def test_rerun_reuses_complete_points_and_retries_failed_ones(grid_run):
    second = grid_run["second"].set_index("name")
    assert bool(second.loc["K8_D4", "reused"]) and not bool(second.loc["K8_D0", "reused"])
    assert second.loc["K8_D0", "status"] == "failed"
    notebook = grid_run["root"] / "results" / "grid" / "K8_D4" / vqnotebooks.TRAIN_NOTEBOOK
    assert notebook.stat().st_mtime_ns == grid_run["mtime"]


def test_other_parameters_make_a_point_incomplete(grid_run):
    folder = grid_run["root"] / "results" / "grid" / "K8_D4"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VQLIB_ROOT", str(grid_run["root"]))
        same = vqgrid.grid_parameters(8, 4, TINY_MODEL, TINY_TRAIN, TINY_GRID)
        longer = vqgrid.grid_parameters(8, 4, TINY_MODEL, dataclasses.replace(TINY_TRAIN, epochs=2), TINY_GRID)
    assert vqgrid.is_complete(folder, same)
    assert not vqgrid.is_complete(folder, longer)
    assert not vqgrid.is_complete(grid_run["root"] / "results" / "grid" / "K8_D0", same)


def test_best_is_chosen_on_validation_and_measured_on_test(grid_run, data):
    folder = grid_run["root"] / "results" / "grid"
    frame = vqgrid.collect_grid(folder)
    assert set(frame["name"]) == {"K8_D4", "K8_D0"}
    losses = vqgrid.load_losses(folder)
    assert list(losses) == ["K8_D4"] and "val_mse" in losses["K8_D4"]
    best = vqgrid.write_best(frame, folder, device="cpu", data=data)
    saved = read_json(folder / vqcheckpoints.BEST_FILE)
    for key in (
        "num_embeddings",
        "embedding_dim",
        "checkpoint",
        "val_mse",
        "val_perplexity",
        "val_usage",
        "test_mse",
        "test_perplexity",
        "test_usage",
    ):
        assert key in saved, key
    assert saved["name"] == best["name"] == "K8_D4"
    assert Path(saved["checkpoint"]).is_absolute()
    assert 0 < saved["test_mse"] < 0.2 and len(saved["test_per_class_mse"]) == 10
    failed_only = frame[frame["status"] == "failed"]
    with pytest.raises(TrainingError, match="no grid configuration finished"):
        vqgrid.find_best_model_params(failed_only)


def test_find_best_picks_lowest_validation_mse():
    frame = pd.DataFrame(
        {
            "name": ["a", "b", "c"],
            "num_embeddings": [25, 50, 100],
            "embedding_dim": [16, 32, 64],
            "status": ["success", "success", "failed"],
            "val_mse": [0.02, 0.01, np.nan],
            "checkpoint": ["/a", "/b", ""],
            "val_psnr": 1.0,
            "val_perplexity": 1.0,
            "val_usage": 1.0,
            "best_epoch": 1,
            "epochs": 1,
            "train_subset": None,
        }
    )
    best = vqgrid.find_best_model_params(frame)
    assert best["name"] == "b" and isinstance(best["num_embeddings"], int) and best["val_mse"] == 0.01


def test_plain_parameters_and_bad_values():
    params = vqnotebooks.plain_parameters(
        {"a": np.int64(3), "b": np.float32(0.5), "c": Path("/x"), "d": (1, 2), "e": None, "f": True}
    )
    assert params == {"a": 3, "b": 0.5, "c": "/x", "d": [1, 2], "e": None, "f": True}
    assert type(params["a"]) is int and type(params["b"]) is float
    with pytest.raises(ConfigError, match="only numbers, strings"):
        vqnotebooks.plain_parameters({"model": object()})


def test_config_and_profile_errors_are_one_sentence():
    with pytest.raises(ConfigError, match="integers separated by commas"):
        GridConfig(num_embeddings_values="25,abc")
    with pytest.raises(ConfigError, match="jobs"):
        GridConfig(jobs=0)
    assert GridConfig().configurations()[0] == (25, 16) and len(GridConfig().configurations()) == 9
    with pytest.raises(ConfigError, match="profile must be one of"):
        vqstudy.get_profile("medium")
    with pytest.raises(ConfigError, match="unknown profile stage"):
        vqstudy.get_profile({"trian": {}})
    with pytest.raises(ConfigError, match="does not take"):
        vqstudy.classifier_parameters(REPO / "notebooks" / vqnotebooks.SUMMARY_NOTEBOOK, {"bogus": 1})
    with pytest.raises(vqnotebooks.NotebookError, match="not installed"):
        vqnotebooks.check_kernel("no-such-kernel-vqlib")


def test_profiles_build_valid_configs():
    from vqlib.config import AnalysisConfig, SummaryConfig, from_dict

    for name in vqstudy.PROFILES:
        prof = vqstudy.get_profile(name)
        from_dict(GridConfig, prof["grid"]), from_dict(VQVAEConfig, prof["vqvae"])
        from_dict(TrainConfig, prof["train"]), from_dict(SummaryConfig, prof["summary"])
        from_dict(AnalysisConfig, prof["analysis"])
        notebook = REPO / "notebooks" / vqnotebooks.CLASSIFIER_NOTEBOOK
        if notebook.is_file():
            vqstudy.classifier_parameters(notebook, prof["classifier"])
    assert vqstudy.get_profile("full")["train"] == {"epochs": 50, "train_subset": None}


def test_classifier_headline_reads_the_record_of_the_chosen_vqvae(tmp_path, monkeypatch):
    import os

    from vqlib.files import write_json

    monkeypatch.setenv("VQLIB_ROOT", str(tmp_path))
    folder = tmp_path / "results" / "classifier"
    write_json(
        folder / "K50_D32_all_frozen" / "metrics.json",
        {"vqvae_checkpoint": "/ckpt/K50_D32/best.pt", "test_accuracy": 0.88, "config": {"labels_per_class": None}},
    )
    stale = write_json(
        folder / "K25_D16_all_frozen" / "metrics.json",
        {"vqvae_checkpoint": "/ckpt/K25_D16/best.pt", "test_accuracy": 0.80, "config": {}},
    )
    os.utime(stale, (2e9, 2e9))  # newer, but of another VQ-VAE
    headline = vqreports.classifier_headline("/ckpt/K50_D32/best.pt")
    assert headline["test_accuracy"] == 0.88 and headline["labels"] == "all labels"
    assert vqreports.classifier_headline("/ckpt/K100_D64/best.pt") == {}


GRID_ARGS = [
    "grid",
    "--num-embeddings-values",
    "8",
    "--embedding-dim-values",
    "4",
    "--hidden-channels",
    "16",
    "--residual-channels",
    "8",
    "--num-residual-blocks",
    "1",
    "--batch-size",
    "32",
    "--train-subset",
    "3000",
    "--epochs",
    "3",
]


def test_an_interrupted_grid_point_continues_from_its_last_pt(tmp_path_factory, monkeypatch):
    """SIGKILL the grid and its kernel after epoch 1; the rerun continues at epoch 2 (the VQ-VAE's
    bitwise resume is tested in test_reliability)."""
    import os
    import signal
    import subprocess
    import time

    import psutil

    from vqlib.checkpoints import load_checkpoint

    from .conftest import VQLIB

    root = tiny_root(tmp_path_factory, monkeypatch)
    env = dict(os.environ, VQLIB_ROOT=str(root), TQDM_DISABLE="1", PYTHONUNBUFFERED="1")
    last = root / "checkpoints" / "grid" / "K8_D4" / "last.pt"
    proc = subprocess.Popen(VQLIB + GRID_ARGS, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    started = time.time()
    while not last.exists():
        assert proc.poll() is None and time.time() < started + 600, "the grid ended before it could be killed"
        time.sleep(0.02)
    family = [proc, *psutil.Process(proc.pid).children(recursive=True)]  # the grid and its Jupyter kernel
    for p in family:
        p.send_signal(signal.SIGKILL)
    psutil.wait_procs([psutil.Process(p.pid) for p in family if psutil.pid_exists(p.pid)], timeout=30)
    killed = load_checkpoint(last)
    assert killed["epoch"] < 3

    # The rerun with its progress bar on, which counts only the epochs still to train.
    env.pop("TQDM_DISABLE")
    rerun = subprocess.run(VQLIB + GRID_ARGS, env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert f"K8_D4 continues from its last.pt (epoch {killed['epoch']} of 3 done)" in rerun.stdout
    left = 3 - killed["epoch"]
    assert f"grid: 1/1 configs done, {left}/{left} epochs" in rerun.stderr
    final = load_checkpoint(last)
    assert final["epoch"] == 3
    # The epochs done before the kill are kept as they were, timings included: not trained again.
    assert final["history"][: killed["epoch"]] == killed["history"]
    assert read_json(root / "results" / "grid" / "K8_D4" / vqgrid.RUN_FILE)["resumed"] is True
    assert read_json(root / "results" / "grid" / "K8_D4" / vqtrain.METRICS_FILE)["status"] == "success"


def test_a_last_pt_of_other_settings_is_trained_afresh_and_said(tmp_path, monkeypatch, data):
    from vqlib.train import train_vqvae

    monkeypatch.setenv("VQLIB_ROOT", str(tmp_path))
    quick = vqgrid.grid_parameters(8, 4, TINY_MODEL, TINY_TRAIN, TINY_GRID)
    assert vqgrid.resume_decision("K8_D4", quick) == (False, "", 0)  # nothing to continue
    model_config, train_config = vqtrain.configs_from_parameters(quick)
    train_vqvae(model_config, train_config, data, progress=False)
    longer = vqgrid.grid_parameters(8, 4, TINY_MODEL, dataclasses.replace(TINY_TRAIN, epochs=3), TINY_GRID)
    assert vqgrid.resume_decision("K8_D4", longer) == (
        True,
        "K8_D4 continues from its last.pt (epoch 1 of 3 done)",
        1,
    )
    other = vqgrid.grid_parameters(8, 4, TINY_MODEL, dataclasses.replace(TINY_TRAIN, train_subset=600), TINY_GRID)
    resume, note, done = vqgrid.resume_decision("K8_D4", other)
    assert not resume and done == 0 and note.startswith("K8_D4 starts afresh and replaces its checkpoints:")
    assert "other settings ({'train_subset': 300})" in note


# ----------------------------------------------------------------------------- seeds and placement


def test_seeds_axis_runs_each_seed_one_thread_per_core(tmp_path_factory):
    """Seeds 0 and 1 of one configuration: two run folders, each trained with its own seed, placed one per core."""
    from vqlib.executors import choose_placement, cpu_cores

    grid = GridConfig(num_embeddings_values="8", embedding_dim_values="4", seeds="0,1")
    with pytest.MonkeyPatch.context() as mp:
        root = tiny_root(tmp_path_factory, mp)
        frame = vqgrid.run_grid(grid, TINY_MODEL, TINY_TRAIN, progress=False).set_index("name")
        # Published as the seed spread: the numbers without the machine's paths, and drawn as mean +- std.
        from vqlib.figures import SEED_SPREAD_FIGURE, write_figures
        from vqlib.publish import publish_seed_spread, published_seed_spread_dir

        assert publish_seed_spread(root / "results" / "grid").published
        published = pd.read_csv(published_seed_spread_dir() / vqgrid.SUMMARY_FILE)
        assert published["name"].tolist() == ["K8_D4", "K8_D4_s1"] and "checkpoint" not in published
        assert str(root) not in (published_seed_spread_dir() / vqgrid.SUMMARY_FILE).read_text()
        figures = write_figures(tmp_path_factory.mktemp("figures"))
        assert [p.name for p in figures.written] == [SEED_SPREAD_FIGURE]
        # One seed has no spread: refused in one sentence.
        single = tmp_path_factory.mktemp("single")
        frame.reset_index().query("seed == 0").to_csv(single / vqgrid.SUMMARY_FILE, index=False)
        with pytest.raises(ConfigError, match="one successful seed per configuration at most"):
            publish_seed_spread(single)
        # Not a grid summary, or not a CSV at all: one sentence naming the file.
        (single / vqgrid.SUMMARY_FILE).write_text("a,b\n1,2\n")
        with pytest.raises(ResultFileError, match="is not a grid summary: it has no column name, num_embeddings"):
            publish_seed_spread(single)
        (single / vqgrid.SUMMARY_FILE).write_text("")
        with pytest.raises(ResultFileError, match="cannot read .* as a grid summary"):
            publish_seed_spread(single)
    assert list(frame.index) == ["K8_D4", "K8_D4_s1"] and list(frame["seed"]) == [0, 1]
    assert (frame["status"] == "success").all()
    jobs, threads = choose_placement(2, device="cpu")
    assert (jobs, threads) == (min(2, cpu_cores()), max(1, cpu_cores() // min(2, cpu_cores())))
    for name in frame.index:
        record = read_json(root / "results" / "grid" / name / vqgrid.RUN_FILE)
        metrics = read_json(root / "results" / "grid" / name / vqtrain.METRICS_FILE)
        # The kernel really ran with the placement's threads, and recorded memory and code version.
        assert record["threads"] == threads and metrics["history"][0]["threads"] == threads
        assert metrics["peak_rss_mb"] > 100 and metrics["code"]
        assert metrics["train_config"]["seed"] == frame.loc[name, "seed"]
    assert frame.loc["K8_D4", "val_mse"] != frame.loc["K8_D4_s1", "val_mse"]
    mean = frame["val_mse"].mean()
    assert frame["val_mse_mean"].tolist() == pytest.approx([mean, mean])
    assert frame["val_mse_std"].iloc[0] == pytest.approx(frame["val_mse"].std())


def test_best_is_chosen_on_the_mean_over_seeds():
    """K25 has the single lowest run, but K50 the lower mean: the mean decides, and the margin is reported."""
    rows = [
        ("K25_D16", 25, 0, 0.0090), ("K25_D16_s1", 25, 1, 0.0150),
        ("K50_D16", 50, 0, 0.0100), ("K50_D16_s1", 50, 1, 0.0104),
    ]  # fmt: skip
    frame = vqgrid.with_seed_statistics(
        pd.DataFrame(
            [
                {
                    "name": n,
                    "num_embeddings": k,
                    "embedding_dim": 16,
                    "seed": s,
                    "status": "success",
                    "val_mse": v,
                    "val_psnr": 20.0,
                    "val_perplexity": 9.0,
                    "val_usage": 0.5,
                    "best_epoch": 1,
                    "epochs": 1,
                    "train_subset": None,
                    "checkpoint": f"{n}.pt",
                }  # fmt: skip
                for n, k, s, v in rows
            ]
        )
    )
    best = vqgrid.find_best_model_params(frame)
    assert (best["num_embeddings"], best["name"], best["seeds"]) == (50, "K50_D16", 2)
    assert best["val_mse_mean"] == pytest.approx(0.0102) and best["runner_up"] == "K25_D16"
    assert best["val_mse_margin"] == pytest.approx(0.0120 - 0.0102)
    # K25 spreads 0.006 over its two seeds: a 0.0018 margin is within seed noise, and the sentence says so.
    assert "within the typical seed-to-seed" in vqgrid.describe_choice(best)
    one_seed = vqgrid.find_best_model_params(frame[frame["seed"] == 0])
    assert one_seed["name"] == "K25_D16" and "not measured" in vqgrid.describe_choice(one_seed)


def test_ray_executor_without_ray_says_how_to_install_it(tmp_path):
    """With Ray absent, --executor ray ends in one sentence naming the install command (exit 2)."""
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['ray'] = None\n"  # what `import ray` meets when Ray is not installed
        "from vqlib.cli import main\n"
        "sys.exit(main(['grid', '--executor', 'ray', '--num-embeddings-values', '8', '--embedding-dim-values', '4']))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                            env={**__import__("os").environ, "VQLIB_ROOT": str(tmp_path)})  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "pip install -e '.[ray]'" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


# ----------------------------------------------------------------------------- the published study


def test_published_run_loads_by_name_and_restores_into_a_fresh_grid(grid_run, tmp_path_factory):
    """publish copies the finished run (not the failed one); pretrained:NAME loads it; restore makes a fresh grid reuse it."""
    from vqlib.checkpoints import load_vqvae
    from vqlib.errors import CheckpointError
    from vqlib.publish import publish_runs, restore_runs, snapshot_unfinished
    from vqlib.train import train_vqvae

    root = grid_run["root"]
    grid_run["mp"].setenv("VQLIB_ROOT", str(root))
    grid, checkpoints = root / "results" / "grid", root / "checkpoints" / "grid"
    # A run still training: one epoch done, no metrics yet.
    unfinished = dataclasses.replace(TINY_MODEL, num_embeddings=8, embedding_dim=2)
    train_vqvae(unfinished, dataclasses.replace(TINY_TRAIN, checkpoint_dir=str(checkpoints / "K8_D2")), progress=False)
    assert snapshot_unfinished(grid, checkpoints) == {"K8_D2": 1}
    vqgrid.write_best(vqgrid.collect_grid(grid), grid, test_metrics=False)
    assert publish_runs(grid, checkpoints) == ["K8_D4"]
    assert publish_runs(grid, checkpoints) == []  # already up to date
    # A run's record rewritten with the same content (newer, so it is compared again): no news either.
    (grid / "K8_D4" / vqtrain.METRICS_FILE).write_text((grid / "K8_D4" / vqtrain.METRICS_FILE).read_text())
    os.utime(grid / "K8_D4" / vqtrain.METRICS_FILE, (time.time() + 5, time.time() + 5))
    assert publish_runs(grid, checkpoints) == []
    published = read_json(root / "results" / "published" / "grid" / "K8_D4" / vqtrain.METRICS_FILE)
    # The grid's choice and table travel with it, naming the published checkpoint.
    assert read_json(root / "results" / "published" / "grid" / "best.json")["checkpoint"] == "pretrained:K8_D4"
    summary = pd.read_csv(root / "results" / "published" / "grid" / "summary.csv").set_index("name")
    assert summary.loc["K8_D4", "checkpoint"] == "pretrained:K8_D4" and "notebook" not in summary
    assert published["checkpoint"] == "pretrained:K8_D4"
    assert not (root / "checkpoints" / "pretrained" / "K8_D4" / "last.pt").exists()
    model, ckpt = load_vqvae("pretrained:K8_D4")
    assert (model.config.num_embeddings, model.config.embedding_dim) == (8, 4)
    # No path of the machine that trained it: not in the checkpoint's config, not in the executed notebook.
    assert ckpt["train_config"]["checkpoint_dir"] is None and ckpt["train_config"]["results_dir"] is None
    notebook = (root / "results" / "published" / "grid" / "K8_D4" / vqnotebooks.TRAIN_NOTEBOOK).read_text()
    assert str(root) not in notebook and '"checkpoints/grid/K8_D4"' in notebook
    with pytest.raises(CheckpointError, match="pretrained:K8_D4"):
        load_vqvae("pretrained:K9_D9")

    # A fresh clone: only the published folders travel (they are tracked in git).
    fresh = tiny_root(tmp_path_factory, grid_run["mp"])
    shutil.copytree(root / "checkpoints" / "pretrained", fresh / "checkpoints" / "pretrained")
    shutil.copytree(root / "results" / "published", fresh / "results" / "published")
    shutil.copytree(root / "checkpoints" / "inprogress", fresh / "checkpoints" / "inprogress")
    assert restore_runs(fresh / "results" / "grid", fresh / "checkpoints" / "grid") == ["K8_D4", "K8_D2"]
    # Restored, a run is not new: publishing again copies nothing back (no churn in the tracked files).
    assert publish_runs(fresh / "results" / "grid", fresh / "checkpoints" / "grid") == []
    # The unfinished run continues from its snapshot instead of starting again.
    resume, note, _ = vqgrid.resume_decision("K8_D2", vqgrid.grid_parameters(8, 2, TINY_MODEL, TINY_TRAIN))
    assert resume and "epoch 1 of 1 done" in note
    frame = vqgrid.run_grid(
        GridConfig(num_embeddings_values="8", embedding_dim_values="4"), TINY_MODEL, TINY_TRAIN, progress=False
    )
    assert bool(frame.set_index("name").loc["K8_D4", "reused"]) is True
    assert frame.loc[0, "val_mse"] == pytest.approx(published["val_mse"])
    grid_run["mp"].setenv("VQLIB_ROOT", str(root))


def test_publish_protocol_seeds_refuses_a_missing_folder_in_one_sentence(project, capsys):
    """A grid folder that does not exist is a mistyped path, not "nothing new to publish"."""
    from vqlib.cli import main

    grid_dir, checkpoints = project / "results" / "seeds", project / "checkpoints" / "seeds"
    checkpoints.mkdir(parents=True)
    assert main(["publish", "--protocol-seeds", str(grid_dir), "--checkpoint-root", str(checkpoints)]) == 2
    err = capsys.readouterr().err
    assert "results/seeds does not exist" in err and len(err.strip().splitlines()) == 1
    grid_dir.mkdir(parents=True)
    assert main(["publish", "--protocol-seeds", str(grid_dir), "--checkpoint-root", str(project / "nowhere")]) == 2
    assert "nowhere does not exist" in capsys.readouterr().err
    assert not (project / "results" / "published" / "protocol_seeds").exists()


def test_protocol_seeds_publish_beside_the_study_and_restore_into_their_own_grid(grid_run, tmp_path_factory):
    """Runs with other seeds publish into their own folder with a summary beside the study's seed-0 run, leave
    the study's summary alone, and restore (finished and unfinished) into their own grid, not the study's."""
    from vqlib.publish import publish_protocol_seeds, publish_runs, restore_runs, snapshot_unfinished
    from vqlib.train import train_vqvae

    root = grid_run["root"]
    grid_run["mp"].setenv("VQLIB_ROOT", str(root))
    study_grid, study_checkpoints = root / "results" / "grid", root / "checkpoints" / "grid"
    vqgrid.write_best(vqgrid.collect_grid(study_grid), study_grid, test_metrics=False)
    publish_runs(study_grid, study_checkpoints)
    study_summary = (root / "results" / "published" / "grid" / "summary.csv").read_bytes()
    seeds_grid, seeds_checkpoints = root / "results" / "seeds", root / "checkpoints" / "seeds"
    grid = GridConfig(num_embeddings_values="8", embedding_dim_values="4", seeds="1",
                      grid_dir=str(seeds_grid), checkpoint_root=str(seeds_checkpoints))  # fmt: skip
    vqgrid.run_grid(grid, TINY_MODEL, TINY_TRAIN, progress=False)
    unfinished = dataclasses.replace(TINY_MODEL, num_embeddings=8, embedding_dim=2)
    train_vqvae(unfinished, dataclasses.replace(TINY_TRAIN, seed=2, checkpoint_dir=str(seeds_checkpoints / "K8_D2_s2")),
                progress=False)  # fmt: skip
    assert publish_protocol_seeds(seeds_grid, seeds_checkpoints).published
    assert snapshot_unfinished(seeds_grid, seeds_checkpoints) == {"K8_D2_s2": 1}
    summary = pd.read_csv(root / "results" / "published" / "protocol_seeds" / "summary.csv")
    assert list(summary["name"]) == ["K8_D4", "K8_D4_s1"]
    assert list(summary["checkpoint"]) == ["pretrained:K8_D4", "pretrained:K8_D4_s1"]
    assert set(summary["seeds_done"]) == {2}
    assert (root / "results" / "published" / "grid" / "summary.csv").read_bytes() == study_summary
    assert read_json(root / "results" / "published" / "protocol_seeds" / "K8_D4_s1" / vqtrain.METRICS_FILE)[
        "checkpoint"] == "pretrained:K8_D4_s1"  # fmt: skip

    fresh = tiny_root(tmp_path_factory, grid_run["mp"])
    for folder in ("checkpoints/pretrained", "results/published", "checkpoints/inprogress"):
        shutil.copytree(root / folder, fresh / folder)
    from vqlib.publish import published_protocol_seeds_dir

    # The study's restore takes its own run only, the seeds' restore only theirs (finished, then unfinished).
    study_restored = restore_runs(fresh / "results" / "grid", fresh / "checkpoints" / "grid")
    assert "K8_D4" in study_restored and not any("_s" in name for name in study_restored)
    restored = restore_runs(fresh / "results" / "seeds", fresh / "checkpoints" / "seeds",
                            published=published_protocol_seeds_dir())  # fmt: skip
    assert restored == ["K8_D4_s1", "K8_D2_s2"]
    again = GridConfig(num_embeddings_values="8", embedding_dim_values="4", seeds="1",
                       grid_dir=str(fresh / "results" / "seeds"), checkpoint_root=str(fresh / "checkpoints" / "seeds"))  # fmt: skip
    frame = vqgrid.run_grid(again, TINY_MODEL, TINY_TRAIN, progress=False)
    assert bool(frame.set_index("name").loc["K8_D4_s1", "reused"]) is True
    grid_run["mp"].setenv("VQLIB_ROOT", str(root))


def test_paired_seed_differences_see_what_unpaired_spreads_hide():
    """D=64 is lower than D=32 by 0.0001 at every seed while the seeds move both by 0.001: the unpaired spreads
    overlap, the paired interval excludes 0; with one seed nothing is claimed."""
    rows = [
        {"name": f"K100_D{d}_s{s}", "num_embeddings": 100, "embedding_dim": d, "seed": s, "status": "success",
         "val_mse": 0.002 + 0.001 * s - (0.0001 + 0.00001 * s if d == 64 else 0.0)}
        for d in (32, 64) for s in range(3)
    ]  # fmt: skip
    frame = pd.DataFrame(rows)
    spread = vqgrid.with_seed_statistics(frame).groupby("embedding_dim")["val_mse_std"].first()
    means = frame.groupby("embedding_dim")["val_mse"].mean()
    assert means[32] - means[64] < spread.min()  # unpaired: within one standard deviation
    table = vqgrid.paired_seed_differences(frame)
    row = table.iloc[0]
    assert (row["embedding_dim_a"], row["embedding_dim_b"], row["seeds"]) == (32, 64, 3)
    assert row["mean_difference"] == pytest.approx(-0.00011)
    assert row["ci_high"] < 0 and row["verdict"] == "b lower"
    one = vqgrid.paired_seed_differences(frame[frame["seed"] == 0]).iloc[0]
    assert one["seeds"] == 1 and math.isnan(one["ci_low"]) and one["verdict"].startswith("not measured")


def test_soak_table_finds_a_leak_and_a_slowdown():
    """A history whose memory grows 5 MB per epoch and whose speed halves is reported as such; a flat one is not."""
    flat = [{"epoch": e, "rss_mb": 800.0 + (e % 2), "peak_rss_mb": 900.0, "images_per_s": 600.0, "code": "abc"}
            for e in range(1, 11)]  # fmt: skip
    leaking = [{**row, "rss_mb": 800.0 + 5 * row["epoch"], "images_per_s": 600.0 if row["epoch"] < 6 else 300.0}
               for row in flat]  # fmt: skip
    frame = pd.DataFrame({"name": ["flat", "leaking"], "history": [flat, leaking]})
    table = vqgrid.soak_table(frame).set_index("name")
    assert abs(table.loc["flat", "rss_growth_mb_per_epoch"]) < 0.2
    assert table.loc["leaking", "rss_growth_mb_per_epoch"] == pytest.approx(5.0)
    assert table.loc["flat", "speed_last_over_first"] == pytest.approx(1.0)
    assert table.loc["leaking", "speed_last_over_first"] == pytest.approx(0.5)
    assert table.loc["flat", "code"] == "abc"
