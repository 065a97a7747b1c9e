"""The classifier stage on real FashionMNIST: head, frozen encoder, code cache, evaluation, inference, notebook."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from vqlib import checkpoints, classify, infer
from vqlib.checkpoints import load_checkpoint, load_vqvae, save_checkpoint
from vqlib.config import ClassifierConfig, ClassifierStudyConfig, LabelEfficiencyConfig, VQVAEConfig
from vqlib.data import CLASS_NAMES, to_float
from vqlib.errors import CheckpointError, ConfigError, DataError
from vqlib.models import VQVAE, ClassificationHead, VQVAEClassifier

from .conftest import REPO, VQLIB

GRID_DIMS = (16, 32, 64)


def small_config(vqvae_checkpoint, tmp_path, **kw) -> ClassifierConfig:
    values = dict(
        vqvae_checkpoint=str(vqvae_checkpoint),
        labels_per_class=20,
        epochs=2,
        min_steps_per_epoch=3,
        batch_size=64,
        device="cpu",
        checkpoint_dir=str(tmp_path / "cls"),
        results_dir=str(tmp_path / "results"),
    )
    return ClassifierConfig(**{**values, **kw})


@pytest.fixture(scope="module")
def trained(data, vqvae_checkpoint, tmp_path_factory):
    """A classifier trained on the frozen code of 200 labelled images per class."""
    tmp = tmp_path_factory.mktemp("trained")
    return classify.train_classifier(
        small_config(vqvae_checkpoint, tmp, labels_per_class=200, epochs=3), data, progress=False
    )


# ----------------------------------------------------------------------------- models


@pytest.mark.parametrize("dim", GRID_DIMS)
def test_head_and_classifier_shapes_for_every_grid_dim(dim):
    head = ClassificationHead(dim, conv_channels=8, hidden_units=16)
    assert head(torch.randn(5, dim, 12, 12)).shape == (5, 10)
    model = VQVAEClassifier(
        VQVAE(
            VQVAEConfig(
                num_embeddings=25, embedding_dim=dim, hidden_channels=16, residual_channels=8, num_residual_blocks=1
            )
        ),
        head,
    )
    images = torch.rand(3, 1, 28, 28)
    assert model.features(images).shape == (3, dim, 12, 12)
    assert model.codes(images).shape == (3, 12, 12)
    assert model(images).shape == (3, 10)


@pytest.mark.parametrize("cache_codes", [True, False])
def test_frozen_encoder_and_codebook_do_not_change(data, vqvae_checkpoint, tmp_path, cache_codes):
    before = load_checkpoint(vqvae_checkpoint, kind="vqvae")["state_dict"]
    run = classify.train_classifier(
        small_config(vqvae_checkpoint, tmp_path, cache_codes=cache_codes), data, progress=False
    )
    after = run.model.state_dict()
    frozen = [k for k in before if k.startswith(("encoder.", "quantizer."))]
    assert any("running_mean" in k for k in frozen) and "quantizer.codebook" in frozen
    for key in frozen:  # weights, batch-norm running statistics, codebook and its EMA buffers
        assert torch.equal(before[key], after[key]), key
    assert not any(p.requires_grad for p in run.model.encoder.parameters())
    run.model.train()
    assert run.model.head.training and not run.model.encoder.training and not run.model.quantizer.training


def test_finetune_moves_the_encoder_but_not_the_codebook(data, vqvae_checkpoint, tmp_path):
    before = load_checkpoint(vqvae_checkpoint, kind="vqvae")["state_dict"]
    run = classify.train_classifier(
        small_config(vqvae_checkpoint, tmp_path, finetune=True, epochs=1), data, progress=False
    )
    after = run.model.state_dict()
    assert not torch.equal(before["encoder.net.0.weight"], after["encoder.net.0.weight"])
    assert torch.equal(before["quantizer.codebook"], after["quantizer.codebook"])


def test_code_cache_gives_exactly_the_encoder_features(data, vqvae_checkpoint):
    vqvae, _ = load_vqvae(vqvae_checkpoint)
    model = VQVAEClassifier(vqvae, ClassificationHead(16)).eval()
    images = data.val_images[:300]
    codes = classify.encode_codes(model, images, batch_size=128)
    assert codes.dtype == torch.uint8 and codes.shape == (300, 12, 12)
    with torch.no_grad():
        direct = model.features(to_float(images))
        assert torch.equal(model.quantizer.lookup(codes.long()), direct)
        assert torch.equal(model.classify_codes(codes), model(to_float(images)))
        assert torch.equal(codes.long(), vqvae.encode(to_float(images))[0])
    assert classify.code_dtype(300) == torch.int16


# ----------------------------------------------------------------------------- training and evaluation


def test_short_real_run_beats_chance_and_writes_its_files(data, trained):
    assert trained.best_val_acc > 0.55  # chance is 0.10
    assert trained.train_images == 2000 and len(trained.history) <= 3
    assert (trained.checkpoint_dir / "best.pt").is_file() and (trained.checkpoint_dir / "history.json").is_file()
    ckpt = load_checkpoint(trained.best_checkpoint, kind="classifier")
    assert ckpt["vqvae_config"]["embedding_dim"] == 16 and ckpt["vqvae_checkpoint"].endswith("best.pt")
    assert ckpt["model_config"]["labels_per_class"] == 200
    metrics = classify.evaluate_classifier(trained.best_checkpoint, data, results_dir=trained.results_dir)
    assert metrics["accuracy"] > 0.55 and metrics["images"] == 10_000
    matrix = pd.read_csv(trained.results_dir / "confusion_matrix_test.csv")
    assert list(matrix.columns) == ["true class", *CLASS_NAMES]
    np.testing.assert_array_equal(matrix[list(CLASS_NAMES)].to_numpy(), metrics["confusion_matrix"])
    assert (trained.results_dir / "confusion_matrix_test.png").stat().st_size > 10_000
    saved = json.loads((trained.results_dir / "metrics_test.json").read_text())
    assert saved["accuracy"] == pytest.approx(metrics["accuracy"])


def test_metrics_agree_with_scikit_learn_on_a_hand_made_case():
    from sklearn.metrics import classification_report

    labels = np.array([0, 0, 0, 0, 1, 1, 2, 2, 2, 3] + list(range(4, 10)))
    predicted = np.array([0, 0, 0, 1, 1, 0, 2, 2, 3, 3] + list(range(4, 10)))
    metrics = classify.classification_metrics(labels, predicted)
    assert metrics["accuracy"] == pytest.approx(13 / 16)
    report = metrics["report"].set_index("class")
    # class 0: 3 of 4 found, 3 of 4 predicted right; class 3: 1 of 1 found, 1 of 2 right
    assert report.loc[CLASS_NAMES[0], "recall"] == pytest.approx(0.75)
    assert report.loc[CLASS_NAMES[0], "precision"] == pytest.approx(0.75)
    assert report.loc[CLASS_NAMES[3], "precision"] == pytest.approx(0.5)
    assert report.loc[CLASS_NAMES[3], "f1"] == pytest.approx(2 / 3)
    sk = classification_report(labels, predicted, output_dict=True, zero_division=0)
    for c in range(10):
        for ours, theirs in (
            ("precision", "precision"),
            ("recall", "recall"),
            ("f1", "f1-score"),
            ("support", "support"),
        ):
            assert report.loc[CLASS_NAMES[c], ours] == pytest.approx(sk[str(c)][theirs])
    assert metrics["macro_f1"] == pytest.approx(sk["macro avg"]["f1-score"])
    assert metrics["confusion_matrix"][0].tolist() == [3, 1] + [0] * 8


# ----------------------------------------------------------------------------- inference


def test_infer_on_png_written_here(data, trained, tmp_path, project, cli_env):
    """(`project` and `cli_env` share tmp_path as VQLIB_ROOT. No prior exists for this VQ-VAE's code, so the
    out-of-distribution score is left empty and the terminal says why: tests/test_ood.py has the score.)"""
    from PIL import Image

    # A dark-on-light photo of a test image, 5x larger: auto inversion must bring back the FashionMNIST look.
    original = data.test_images[0].numpy()
    photo = Image.fromarray(255 - original).resize((140, 140), Image.Resampling.BICUBIC).convert("RGB")
    photo.save(tmp_path / "photo.png")
    Image.fromarray(original).save(tmp_path / "plain.png")
    restored, names = infer.load_images([tmp_path / "photo.png", tmp_path / "plain.png"])
    assert restored.shape == (2, 28, 28) and restored.dtype == torch.uint8
    for image in restored.numpy():  # cropping and rescaling move edges by a pixel: close, not equal
        assert np.corrcoef(image.ravel(), original.ravel().astype(float))[0, 1] > 0.8
        assert image[0].mean() < 40 and image.max() > 200  # dark background, light garment
    frame = infer.infer_images(
        trained.best_checkpoint, [tmp_path / "photo.png"], output=tmp_path / "pred.csv", device="cpu"
    )
    assert frame.loc[0, "predicted"] in CLASS_NAMES
    assert frame[list(CLASS_NAMES)].sum(axis=1).iloc[0] == pytest.approx(1.0, abs=1e-5)
    assert pd.read_csv(tmp_path / "pred.csv")["predicted"].iloc[0] == frame.loc[0, "predicted"]

    result = subprocess.run(
        [
            *VQLIB,
            "infer-cls",
            "--checkpoint",
            str(trained.best_checkpoint),
            str(tmp_path / "plain.png"),
            "--output",
            str(tmp_path / "pred.json"),
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=cli_env,
    )
    assert result.returncode == 0, result.stderr
    written = json.loads((tmp_path / "pred.json").read_text())
    assert {"ood_score", "ood_flag"} <= set(written[0]) and "no out-of-distribution score" in result.stdout
    assert written[0]["predicted"] in result.stdout and set(CLASS_NAMES) <= set(written[0])


def test_infer_refuses_what_is_not_an_image(trained, tmp_path):
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(DataError, match="neither an IDX file nor an image"):
        infer.infer_images(trained.best_checkpoint, [tmp_path / "notes.txt"])
    with pytest.raises(ConfigError, match=".csv or .json"):
        infer.infer_images(trained.best_checkpoint, [tmp_path / "notes.txt"], output=tmp_path / "out.xlsx")


# ----------------------------------------------------------------------------- refusals


def test_classifier_paired_with_another_vqvae_config_is_refused(trained, tmp_path, cli_env):
    other = VQVAE(
        VQVAEConfig(
            num_embeddings=64, embedding_dim=16, hidden_channels=32, residual_channels=16, num_residual_blocks=1
        )
    )
    save_checkpoint(
        tmp_path / "other.pt",
        "vqvae",
        {"model_config": dataclasses.asdict(other.config), "state_dict": other.state_dict()},
    )
    with pytest.raises(CheckpointError, match="num_embeddings=32 .not 64."):
        classify.load_classifier(trained.best_checkpoint, vqvae_checkpoint=tmp_path / "other.pt")
    # Same configuration, other weights: another code, refused too.
    same = VQVAE(VQVAEConfig(**load_checkpoint(trained.vqvae_checkpoint, kind="vqvae")["model_config"]))
    save_checkpoint(
        tmp_path / "same.pt",
        "vqvae",
        {"model_config": dataclasses.asdict(same.config), "state_dict": same.state_dict()},
    )
    with pytest.raises(CheckpointError, match="another VQ-VAE run"):
        classify.load_classifier(trained.best_checkpoint, vqvae_checkpoint=tmp_path / "same.pt")
    model, _ = classify.load_classifier(trained.best_checkpoint, vqvae_checkpoint=trained.vqvae_checkpoint)
    assert isinstance(model, VQVAEClassifier)

    result = subprocess.run(
        [
            *VQLIB,
            "eval-cls",
            "--checkpoint",
            str(trained.best_checkpoint),
            "--vqvae-checkpoint",
            str(tmp_path / "other.pt"),
        ],
        capture_output=True,
        text=True,
        env=cli_env,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1 and "cannot be paired" in result.stderr


def test_config_errors_are_one_sentence():
    with pytest.raises(ConfigError, match="only 5500 labelled images of each class"):
        ClassifierConfig(labels_per_class=6000)
    with pytest.raises(ConfigError, match="label_counts"):
        LabelEfficiencyConfig(label_counts="10,lots")
    with pytest.raises(ConfigError, match="methods"):
        LabelEfficiencyConfig(methods="vq_head,resnet")


def test_vqvae_checkpoint_defaults_to_the_grid_best(project):
    with pytest.raises(CheckpointError, match="best.json does not exist"):
        checkpoints.resolve_vqvae_checkpoint(None)
    (project / "results" / "grid").mkdir(parents=True)
    (project / "results" / "grid" / "best.json").write_text(
        json.dumps({"checkpoint": "checkpoints/vqvae/K50_D32/best.pt"})
    )
    assert checkpoints.resolve_vqvae_checkpoint("") == project / "checkpoints/vqvae/K50_D32/best.pt"


# ----------------------------------------------------------------------------- notebook


def test_notebook_03_runs_and_records_its_results(vqvae_checkpoint, tmp_path):
    import papermill as pm

    notebook = REPO / "notebooks" / "03_classifier.ipynb"
    declared = pm.inspect_notebook(str(notebook))
    expected = {
        f.name
        for cls in (ClassifierConfig, LabelEfficiencyConfig, ClassifierStudyConfig)
        for f in dataclasses.fields(cls)
    }
    assert set(declared) == expected
    raw = json.loads(notebook.read_text())
    assert all(
        not c.get("outputs") and c.get("execution_count") is None for c in raw["cells"] if c["cell_type"] == "code"
    )

    results = tmp_path / "results"
    pm.execute_notebook(
        str(notebook),
        str(tmp_path / "out.ipynb"),
        kernel_name="python3",
        cwd=str(REPO / "notebooks"),
        progress_bar=False,
        parameters=dict(
            vqvae_checkpoint=str(vqvae_checkpoint),
            labels_per_class=30,
            epochs=2,
            min_steps_per_epoch=3,
            device="cpu",
            checkpoint_dir=str(tmp_path / "cls"),
            results_dir=str(results),
            label_counts="5,10",
            num_seeds=2,
            max_seeded_labels=5,
            linear_c="0.1",
            linear_max_iter=30,
            compare_finetune=True,
        ),
    )
    metrics = json.loads((results / "metrics.json").read_text())
    assert 0.3 < metrics["test_accuracy"] <= 1.0 and metrics["train_images"] == 300
    for name in (
        "confusion_matrix_test.csv",
        "confusion_matrix_test.png",
        "per_class_test.csv",
        "label_efficiency.csv",
        "label_efficiency.png",
    ):
        assert (results / name).stat().st_size > 0, name
    frame = pd.read_csv(results / "label_efficiency.csv")
    assert list(frame.columns[:5]) == ["method", "labels_per_class", "seed", "val_acc", "test_acc"]
    # 5 per class: two seeds; 10 per class: one seed (above max_seeded_labels); five methods each.
    assert len(frame) == 5 * 3
    assert set(frame["method"]) == {"vq_head", "vq_linear", "z_linear", "pixel_convnet", "pixel_linear"}
    # Six steps are too few for the CNN from scratch (it may stay at chance); the logistic regressions must learn.
    assert frame["test_acc"].between(0, 1).all()
    assert (frame.loc[frame["method"].isin(["vq_linear", "z_linear", "pixel_linear"]), "test_acc"] > 0.3).all()
    # The default protocol selects on as many validation labels as there are training labels.
    assert (frame["selection"] == "matched").all()
    assert (frame["selection_images"] == 10 * frame["labels_per_class"]).all()
    assert (tmp_path / "cls" / "best.pt").is_file() and (tmp_path / "cls_finetune" / "best.pt").is_file()
    comparison = pd.DataFrame(metrics["comparison"])
    assert comparison["classifier"].tolist()[:2] == ["head on the frozen code", "fine-tuned encoder + head"]
    # Both trained classifiers are published with their test macro F1, the frozen one's that of its own record.
    assert comparison["test_macro_f1"].iloc[0] == pytest.approx(metrics["test_macro_f1"])
    assert 0 < comparison["test_macro_f1"].iloc[1] <= 1
    # Every network records where it stopped and why; the regressions record no such thing.
    reasons = ("early stopping: no validation improvement", "cap of 2 epochs reached")
    assert metrics["stop_reason"].startswith(reasons) and 1 <= metrics["stopped_epoch"] <= 2
    assert all(r.startswith(reasons) for r in comparison["stop_reason"].iloc[:2])
    networks = frame["method"].isin(["vq_head", "pixel_convnet"])
    assert frame.loc[networks, "stop_reason"].str.startswith(reasons).all()
    assert frame.loc[~networks, "stop_reason"].isna().all()
    # Each method against the head, paired by seed: an interval at 5 per class (two seeds), none at 10 (one).
    paired = pd.DataFrame(metrics["label_efficiency_paired_differences"])
    assert set(paired["method"]) == {"vq_linear", "z_linear", "pixel_convnet", "pixel_linear"}
    assert (paired["reference"] == "vq_head").all() and len(paired) == 2 * 4
    assert paired.set_index("labels_per_class").loc[5, "seeds"].eq(2).all()
    assert (
        comparison["test_accuracy"].iloc[-1] == pytest.approx(0.934)
        and metrics["label_efficiency_selection"] == "matched"
    )


def test_label_efficiency_command(vqvae_checkpoint, tmp_path, capsys):
    from vqlib.cli import main

    results = tmp_path / "le"
    assert (
        main(
            [
                "label-efficiency",
                "--vqvae-checkpoint",
                str(vqvae_checkpoint),
                "--label-counts",
                "5,10",
                "--num-seeds",
                "1",
                "--methods",
                "vq_linear,pixel_linear",
                "--linear-c",
                "0.1",
                "--linear-max-iter",
                "30",
                "--device",
                "cpu",
                "--results-dir",
                str(results),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "vq_linear" in out and "pixel_linear" in out
    frame = pd.read_csv(results / "label_efficiency.csv")
    assert sorted(frame["labels_per_class"].unique()) == [5, 10] and len(frame) == 4
    assert (results / "label_efficiency.png").stat().st_size > 5000


def test_label_efficiency_resumes_from_its_runs_file(vqvae_checkpoint, data, tmp_path):
    """A finished row is measured once: a second call reuses it, and runs only what is new."""
    from vqlib.config import LabelEfficiencyConfig
    from vqlib.label_efficiency import RUNS_FILE, label_efficiency

    def run(methods, linear_c="0.1"):
        config = LabelEfficiencyConfig(
            vqvae_checkpoint=str(vqvae_checkpoint),
            label_counts="5",
            num_seeds=1,
            methods=methods,
            linear_c=linear_c,
            linear_max_iter=30,
            device="cpu",
            results_dir=str(tmp_path),
        )
        return label_efficiency(config, data, progress=False)

    def lines():
        """The runs file's complete rows."""
        rows = []
        for line in (tmp_path / RUNS_FILE).read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                pass
        return rows

    first = run("pixel_linear")
    assert len(lines()) == 1
    # An interruption can leave a line cut short: it is ignored.
    with open(tmp_path / RUNS_FILE, "a") as f:
        f.write('{"fingerprint": {"label_eff')
    second = run("pixel_linear,vq_linear")
    assert len(lines()) == 2  # vq_linear's row, on a line of its own after the cut one
    assert second.set_index("method").loc["pixel_linear", "seconds"] == first["seconds"].iloc[0]
    assert list(pd.read_csv(tmp_path / "label_efficiency.csv")["method"]) == ["pixel_linear", "vq_linear"]
    # Other settings measure again.
    run("pixel_linear", linear_c="0.01")
    assert len(lines()) == 3 and lines()[-1]["row"]["selected"] == "C=0.01"


def test_a_regression_keeps_each_finished_fit_and_a_rerun_fits_only_the_others(data, tmp_path):
    """logistic_regression(cache=...): one file per value of C; a rerun reads them (a kept fit whose score was
    raised is the one chosen) and fits only the C whose file is missing, to the same result, and returns the seconds
    the kept fits took (elapsed.json) as earlier_seconds."""
    from vqlib.label_efficiency import logistic_regression

    def scores(result):
        return {k: v for k, v in result.items() if k != "earlier_seconds"}

    train = data.train_images[:300].reshape(300, -1).numpy() / 255.0
    val, test = (
        data.val_images[:200].reshape(200, -1).numpy() / 255.0,
        data.test_images[:200].reshape(200, -1).numpy() / 255.0,
    )
    args = (
        train,
        data.train_labels[:300].numpy(),
        val,
        data.val_labels[:200].numpy(),
        test,
        data.test_labels[:200].numpy(),
    )
    cs = [0.01, 0.1, 1.0]
    cache = tmp_path / "fits"
    full = logistic_regression(*args, cs, 50, 0, jobs=1, cache=cache)
    assert scores(full) == scores(logistic_regression(*args, cs, 50, 0, jobs=1))  # keeping the fits changes nothing
    assert full["earlier_seconds"] == 0.0
    assert sorted(p.name for p in cache.iterdir()) == ["C=0.01.npz", "C=0.1.npz", "C=1.0.npz", "elapsed.json"]
    took = json.loads((cache / "elapsed.json").read_text())["seconds"]
    assert 0 < took < 300

    (cache / "C=1.0.npz").unlink()  # the fit under way when the run was killed
    kept = cache / "C=0.01.npz"
    before = kept.stat().st_mtime_ns
    again = logistic_regression(*args, cs, 50, 0, jobs=1, cache=cache)
    assert scores(again) == scores(full) and again["earlier_seconds"] == took
    assert json.loads((cache / "elapsed.json").read_text())["seconds"] > took  # the refit's time added
    assert (cache / "C=1.0.npz").is_file() and kept.stat().st_mtime_ns == before  # fitted again, and only it

    with np.load(kept) as f:
        raised = {k: f[k] for k in f.files}
    raised["val_acc"] = np.asarray(1.0)
    with open(kept, "wb") as f:
        np.savez(f, **raised)
    chosen = logistic_regression(*args, cs, 50, 0, jobs=1, cache=cache)
    assert chosen["chosen"] == "C=0.01" and chosen["val_acc"] == 1.0
    kept.write_bytes(b"cut short")  # unreadable: fitted again
    assert scores(logistic_regression(*args, cs, 50, 0, jobs=1, cache=cache)) == scores(full)


def plant_fit(data, folder: Path) -> Path:
    """Keep in `folder` a fit of C = 1 on 50 training images with a validation accuracy no fit reaches (1.5), as a
    regression row cut short would have kept it; returns `folder`."""
    from vqlib.label_efficiency import _fit

    x = data.train_images[:50].reshape(50, -1).numpy() / 255.0
    _fit(x, data.train_labels[:50].numpy(), x, data.train_labels[:50].numpy(), 1.0, 30, 0, cache=folder)
    with np.load(folder / "C=1.0.npz") as f:
        planted = {k: f[k] for k in f.files}
    with open(folder / "C=1.0.npz", "wb") as f:
        np.savez(f, **{**planted, "val_acc": np.asarray(1.5)})
    return folder


def test_label_efficiency_keeps_a_regression_rows_fits_until_it_is_recorded(vqvae_checkpoint, data, tmp_path):
    """A regression row's finished fits sit in RESULTS/.unfinished/METHOD_Npc_sSEED/ with its fingerprint while it
    runs, are reused by a rerun of the same settings (a planted fit is chosen) but not by one of other settings,
    and go once the row is recorded."""
    from vqlib.config import LabelEfficiencyConfig
    from vqlib.label_efficiency import RUNS_FILE, _fits_folder, label_efficiency, method_fingerprint

    def run(linear_max_iter=30):
        config = LabelEfficiencyConfig(
            vqvae_checkpoint=str(vqvae_checkpoint), label_counts="5", num_seeds=1, methods="pixel_linear",
            linear_c="0.1,1", linear_max_iter=linear_max_iter, device="cpu", results_dir=str(tmp_path),
        )  # fmt: skip
        return label_efficiency(config, data, progress=False).iloc[0]

    first = run()
    assert not (tmp_path / ".unfinished").exists()
    (line,) = (tmp_path / RUNS_FILE).read_text().splitlines()
    fingerprint = json.loads(line)["fingerprint"]

    def plant(fingerprint):
        plant_fit(data, _fits_folder(tmp_path / ".unfinished" / "pixel_linear_5pc_s0", fingerprint))

    (tmp_path / RUNS_FILE).unlink()
    plant(method_fingerprint(fingerprint, "pixel_linear"))
    again = run()
    assert again["selected"] == "C=1" and again["val_acc"] == 1.5  # the kept fit, reused
    assert not (tmp_path / ".unfinished").exists()

    plant(method_fingerprint(fingerprint, "pixel_linear"))
    other = run(linear_max_iter=31)  # other settings: the planted fit is not theirs
    assert other["val_acc"] <= 1 and other["selected"] == first["selected"]
    assert not (tmp_path / ".unfinished").exists()


def test_unfinished_label_efficiency_travels_to_a_fresh_clone(vqvae_checkpoint, data, tmp_path, monkeypatch):
    """vqlib publish snapshots the finished rows of an unpublished study; --restore brings them back and they are reused."""
    from vqlib import paths
    from vqlib.config import LabelEfficiencyConfig
    from vqlib.label_efficiency import RUNS_FILE, label_efficiency
    from vqlib.publish import restore_label_efficiency, snapshot_label_efficiency

    def study(root, linear_max_iter=30):
        monkeypatch.setenv("VQLIB_ROOT", str(root))
        config = LabelEfficiencyConfig(
            vqvae_checkpoint=str(vqvae_checkpoint),
            label_counts="5",
            num_seeds=1,
            methods="pixel_linear",
            linear_c="0.1",
            linear_max_iter=linear_max_iter,
            device="cpu",
            results_dir=str(paths.classifier_dir() / "K8_D4_all_frozen"),
        )
        return label_efficiency(config, data, progress=False)

    first = study(tmp_path / "machine")
    assert snapshot_label_efficiency() == {"K8_D4_all_frozen": (1, ())}
    snapshot = tmp_path / "machine" / "checkpoints" / "inprogress" / "label_efficiency" / "K8_D4_all_frozen" / RUNS_FILE
    assert snapshot.read_text() == (paths.classifier_dir() / "K8_D4_all_frozen" / RUNS_FILE).read_text()

    # A fresh clone holds the tracked snapshot only.
    fresh = tmp_path / "fresh"
    shutil.copytree(tmp_path / "machine" / "checkpoints" / "inprogress", fresh / "checkpoints" / "inprogress")
    monkeypatch.setenv("VQLIB_ROOT", str(fresh))
    assert restore_label_efficiency() == ["K8_D4_all_frozen"]
    assert restore_label_efficiency() == []  # its own rows now: never overwritten
    again = study(fresh)
    assert again["seconds"].iloc[0] == first["seconds"].iloc[0]  # reused, not measured again
    assert len((fresh / "results" / "classifier" / "K8_D4_all_frozen" / RUNS_FILE).read_text().splitlines()) == 1

    # Once that classifier is published with its rows, its snapshot goes.
    published = fresh / "results" / "published" / "classifier" / "K8_D4_all_frozen"
    published.mkdir(parents=True)
    assert snapshot_label_efficiency() == {"K8_D4_all_frozen": (1, ())}  # published without its rows: kept
    shutil.copy(fresh / "results" / "classifier" / "K8_D4_all_frozen" / RUNS_FILE, published / RUNS_FILE)
    assert snapshot_label_efficiency() == {}
    assert not (fresh / "checkpoints" / "inprogress" / "label_efficiency" / "K8_D4_all_frozen").exists()

    # Run again with another setting on a clone of the published study: the published rows come back, the new row
    # is measured and snapshotted although the classifier is published, and a clone gets both rows.
    rerun = tmp_path / "rerun"
    shutil.copytree(fresh / "results" / "published", rerun / "results" / "published")
    monkeypatch.setenv("VQLIB_ROOT", str(rerun))
    assert restore_label_efficiency() == ["K8_D4_all_frozen"]
    assert study(rerun)["seconds"].iloc[0] == first["seconds"].iloc[0]  # the published row, reused
    study(rerun, linear_max_iter=31)  # another setting: measured, appended
    assert snapshot_label_efficiency() == {"K8_D4_all_frozen": (2, ())}
    clone = tmp_path / "clone"
    shutil.copytree(rerun / "results" / "published", clone / "results" / "published")
    shutil.copytree(rerun / "checkpoints" / "inprogress", clone / "checkpoints" / "inprogress")
    monkeypatch.setenv("VQLIB_ROOT", str(clone))
    assert restore_label_efficiency() == ["K8_D4_all_frozen"]
    runs = clone / "results" / "classifier" / "K8_D4_all_frozen" / RUNS_FILE
    assert runs.read_text() == (rerun / "results" / "classifier" / "K8_D4_all_frozen" / RUNS_FILE).read_text()


def test_a_regression_rows_kept_fits_travel_to_a_fresh_clone(vqvae_checkpoint, data, tmp_path, monkeypatch):
    """vqlib publish snapshots the fits a regression row under way has finished (.unfinished/METHOD_Npc_sSEED/);
    --restore on a fresh clone puts them back, and the row run there reuses them (a planted fit is chosen)."""
    from vqlib import paths
    from vqlib.config import LabelEfficiencyConfig
    from vqlib.label_efficiency import ELAPSED_FILE, RUNS_FILE, _fits_folder, label_efficiency, method_fingerprint
    from vqlib.publish import restore_label_efficiency, snapshot_label_efficiency

    def study():
        config = LabelEfficiencyConfig(
            vqvae_checkpoint=str(vqvae_checkpoint), label_counts="5", num_seeds=1, methods="pixel_linear",
            linear_c="0.1,1", linear_max_iter=30, device="cpu",
            results_dir=str(paths.classifier_dir() / "K8_D4_all_frozen"),
        )  # fmt: skip
        return label_efficiency(config, data, progress=False).iloc[0]

    monkeypatch.setenv("VQLIB_ROOT", str(tmp_path / "machine"))
    results = paths.classifier_dir() / "K8_D4_all_frozen"
    study()
    (line,) = (results / RUNS_FILE).read_text().splitlines()
    (results / RUNS_FILE).unlink()
    # The row cut short after its fit of C = 1, planted with a validation accuracy no fit reaches.
    fingerprint = method_fingerprint(json.loads(line)["fingerprint"], "pixel_linear")
    fits = plant_fit(data, _fits_folder(results / ".unfinished" / "pixel_linear_5pc_s0", fingerprint))
    (fits / ELAPSED_FILE).write_text('{"seconds": 1234.5}')  # what that fit took, as logistic_regression writes it
    assert snapshot_label_efficiency() == {"K8_D4_all_frozen": (0, ("pixel_linear_5pc_s0",))}

    fresh = tmp_path / "fresh"  # a clone: the tracked snapshot only
    shutil.copytree(tmp_path / "machine" / "checkpoints" / "inprogress", fresh / "checkpoints" / "inprogress")
    monkeypatch.setenv("VQLIB_ROOT", str(fresh))
    assert restore_label_efficiency() == ["K8_D4_all_frozen"]
    restored = paths.classifier_dir() / "K8_D4_all_frozen" / ".unfinished" / "pixel_linear_5pc_s0"
    assert sorted(p.name for p in restored.iterdir()) == ["C=1.0.npz", "about.json", "elapsed.json"]
    row = study()
    assert row["selected"] == "C=1" and row["val_acc"] == 1.5  # the fit that travelled, reused
    assert 1234.5 < row["seconds"] < 1234.5 + 300  # its seconds counted with those of the fit made here
    assert not restored.exists()


def test_selection_subset_matches_the_training_budget(data):
    from vqlib.label_efficiency import selection_subset

    matched = selection_subset(data, 10, "matched", seed=0)
    assert len(matched) == 100 and np.bincount(data.val_labels[matched].numpy(), minlength=10).tolist() == [10] * 10
    assert torch.equal(matched, selection_subset(data, 10, "matched", seed=0))
    assert not torch.equal(matched, selection_subset(data, 10, "matched", seed=1))
    # Capped at the 500 per class the validation split holds; 'all' labels select on all of it.
    assert len(selection_subset(data, 1000, "matched", seed=0)) == 5000
    assert len(selection_subset(data, None, "matched", seed=0)) == 5000
    assert len(selection_subset(data, 10, "full_val", seed=0)) == 5000
    with pytest.raises(ConfigError, match="selection"):
        LabelEfficiencyConfig(selection="test")


def test_logistic_regression_records_convergence_and_the_grids_edge(data):
    from vqlib.label_efficiency import logistic_regression

    x = data.train_images[:300].reshape(300, -1).numpy().astype(np.float32) / 255
    y = data.train_labels[:300].numpy()
    vx = data.val_images[:200].reshape(200, -1).numpy().astype(np.float32) / 255
    vy = data.val_labels[:200].numpy()
    capped = logistic_regression(x, y, vx, vy, vx, vy, [0.01, 1.0], max_iter=3, seed=0)
    assert not capped["converged"] and capped["fits_not_converged"] == 2 and capped["iterations"] == 3
    assert capped["c_at_edge"]  # two values: both are edges
    free = logistic_regression(x, y, vx, vy, vx, vy, [0.0001, 0.01, 100.0], max_iter=2000, seed=0)
    assert free["converged"] and free["iterations"] < 2000
    assert free["c"] in (0.0001, 0.01, 100.0) and free["c_at_edge"] == (free["c"] != 0.01)
    assert 0.5 < free["val_acc"] <= 1


def test_continuous_features_are_the_encoder_output(data, vqvae_checkpoint):
    from vqlib.label_efficiency import continuous_features

    model, _ = load_vqvae(vqvae_checkpoint)
    features = continuous_features(model, data.test_images[:7], batch_size=3)
    with torch.no_grad():
        z = model.encoder(to_float(data.test_images[:7], "cpu"))
    assert features.shape == (7, 16 * 144)
    np.testing.assert_allclose(features, z.flatten(1).numpy(), rtol=1e-5, atol=1e-6)


def test_label_efficiency_summary_counts_the_regressions_only():
    from vqlib.label_efficiency import label_efficiency_summary

    rows = [
        {"method": "vq_head", "labels_per_class": 10, "seed": s, "test_acc": 0.6 + s / 100, "selection_images": 100}
        | {"converged": None, "c_at_edge": None}
        for s in range(2)
    ] + [
        {"method": "vq_linear", "labels_per_class": 10, "seed": s, "test_acc": 0.7, "selection_images": 100}
        | {"converged": s == 0, "c_at_edge": True}
        for s in range(2)
    ]
    table = label_efficiency_summary(pd.DataFrame(rows)).set_index("method")
    assert table.loc["vq_head", "mean"] == pytest.approx(0.605) and table.loc["vq_head", "count"] == 2
    assert np.isnan(table.loc["vq_head", "not_converged"]) and np.isnan(table.loc["vq_head", "c_at_edge"])
    assert table.loc["vq_linear", "not_converged"] == 1 and table.loc["vq_linear", "c_at_edge"] == 2
    assert table.loc["vq_linear", "selection_images"] == 100


def test_the_former_name_of_the_convnet_on_pixels_is_still_read(tmp_path):
    """pixel_cnn became pixel_convnet: configs, the runs file and label_efficiency.csv (the published one too) still read."""
    from vqlib.config import parse_methods
    from vqlib.label_efficiency import RUNS_FILE, finished_runs, read_label_efficiency

    assert parse_methods("vq_head,pixel_cnn") == ["vq_head", "pixel_convnet"]
    published = read_label_efficiency(
        REPO / "results" / "published" / "classifier" / "K100_D64_all_frozen" / "label_efficiency.csv"
    )
    assert "pixel_convnet" in set(published["method"]) and "pixel_cnn" not in set(published["method"])
    fingerprint = {"vqvae_sha256": "x"}
    row = {"method": "pixel_cnn", "labels_per_class": 10, "seed": 0, "test_acc": 0.5}
    (tmp_path / RUNS_FILE).write_text(json.dumps({"fingerprint": fingerprint, "row": row}) + "\n")
    done = finished_runs(tmp_path, fingerprint)
    assert list(done) == [("pixel_convnet", 10, 0)] and done[("pixel_convnet", 10, 0)]["method"] == "pixel_convnet"
    with pytest.raises(ConfigError, match="pixel_convnet"):
        parse_methods("pixel_rnn")


def _efficiency_row(method: str, labels_per_class: int, seed: int, test_acc: float) -> dict:
    """One row as label_efficiency writes it (the regressions' columns left empty where a network would)."""
    return {
        "method": method,
        "labels_per_class": labels_per_class,
        "seed": seed,
        "val_acc": test_acc + 0.01,
        "test_acc": test_acc,
        "train_images": 10 * labels_per_class,
        "selected": "epoch 3 of 8" if method == "vq_head" else "C=0.01",
        "selection": "matched",
        "selection_images": 10 * min(labels_per_class, 500),
        "converged": None if method == "vq_head" else True,
        "fits_not_converged": None if method == "vq_head" else 0,
        "iterations": None if method == "vq_head" else 120,
        "c_at_edge": None if method == "vq_head" else False,
        "seconds": 1.0,
    }


def test_paired_differences_see_a_consistent_gap_that_unpaired_spreads_hide():
    from scipy import stats

    from vqlib.label_efficiency import label_efficiency_summary, paired_differences

    # The seeds' subsets differ in difficulty (0.70 to 0.78), and the code's regression beats the head on each
    # by 0.010 to 0.014: the unpaired standard deviations (0.04) swamp the 0.012 gap; the paired ones do not.
    head = [0.70, 0.78, 0.74]
    gap = [0.010, 0.014, 0.012]
    rows = [_efficiency_row("vq_head", 10, s, head[s]) for s in range(3)]
    rows += [_efficiency_row("vq_linear", 10, s, head[s] + gap[s]) for s in range(3)]
    rows += [_efficiency_row("pixel_linear", 10, s, head[s] - 0.1 + 0.05 * (s - 1)) for s in range(3)]
    rows += [_efficiency_row(m, 5500, 0, 0.9) for m in ("vq_head", "vq_linear", "pixel_linear")]
    frame = pd.DataFrame(rows)

    summary = label_efficiency_summary(frame).set_index(["method", "labels_per_class"])
    unpaired_gap = summary.loc[("vq_linear", 10), "mean"] - summary.loc[("vq_head", 10), "mean"]
    assert unpaired_gap == pytest.approx(0.012)
    # Unpaired: one standard deviation around each mean overlaps the other mean; Welch's test agrees.
    assert summary.loc[("vq_head", 10), "std"] > unpaired_gap
    assert stats.ttest_ind([h + g for h, g in zip(head, gap, strict=True)], head, equal_var=False).pvalue > 0.5

    paired = paired_differences(frame).set_index(["labels_per_class", "method"])
    row = paired.loc[(10, "vq_linear")]
    half = stats.t.ppf(0.975, df=2) * np.std(gap, ddof=1) / np.sqrt(3)
    assert row["reference"] == "vq_head" and row["seeds"] == 3
    assert row["mean_difference"] == pytest.approx(0.012)
    assert (row["low"], row["high"]) == (pytest.approx(0.012 - half), pytest.approx(0.012 + half))
    assert row["low"] > 0 and row["excludes_zero"]  # paired: the gap is real on these seeds
    # A gap that moves with the seed more than its mean: no conclusion, either way.
    assert not paired.loc[(10, "pixel_linear"), "excludes_zero"]
    # One seed on all labels: a difference without an interval.
    single = paired.loc[(5500, "vq_linear")]
    assert single["seeds"] == 1 and np.isnan(single["low"]) and not single["excludes_zero"]

    every_pair = paired_differences(frame, reference=None)
    assert len(every_pair) == 2 * 3  # two label counts x three pairs of methods
    with pytest.raises(ConfigError, match="reference"):
        paired_differences(frame, reference="pixel_convnet")
    with pytest.raises(ConfigError, match="more than once"):
        paired_differences(pd.concat([frame, frame.iloc[:1]]))


def test_the_paired_differences_figure_draws_each_interval_and_marks_a_single_seed():
    """A panel per label count; a line from low to high (in points) where the seeds give an interval, a hollow dot
    where one seed gives none; each method in its colour of the label-efficiency figure."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_hex

    from vqlib.label_efficiency import paired_differences
    from vqlib.plots import paired_differences_figure

    rows = [_efficiency_row("vq_head", 10, s, 0.70 + 0.04 * s) for s in range(3)]
    rows += [_efficiency_row("pixel_linear", 10, s, 0.66 + 0.05 * s) for s in range(3)]
    rows += [_efficiency_row(m, 5500, 0, a) for m, a in (("vq_head", 0.9), ("pixel_linear", 0.85))]
    differences = paired_differences(pd.DataFrame(rows))
    fig = paired_differences_figure(differences)
    few, all_labels = fig.axes
    assert [ax.get_title() for ax in fig.axes] == ["10 per class (3 seeds)", "all per class (1 seed)"]
    (interval,) = [line for line in few.get_lines() if len(line.get_ydata()) == 2 and list(line.get_ydata()) == [0, 0]]
    row = differences.set_index(["labels_per_class", "method"]).loc[(10, "pixel_linear")]
    assert list(interval.get_xdata()) == [pytest.approx(100 * row["low"]), pytest.approx(100 * row["high"])]
    dots = [line for line in all_labels.get_lines() if line.get_marker() == "o"]
    assert len(dots) == 1 and dots[0].get_markerfacecolor() == "none"
    assert dots[0].get_xdata()[0] == pytest.approx(-5.0)
    # pixel_linear is the fifth method of the label-efficiency figure: its fifth colour.
    assert to_hex(dots[0].get_color()) == to_hex("C4") and to_hex(interval.get_color()) == to_hex("C4")
    plt.close(fig)


def test_stopping_says_early_stopping_or_the_cap():
    history = [{"epoch": e} for e in range(1, 9)]
    assert classify.stopping(history, 3, max_epochs=20, patience=5) == {
        "stopped_epoch": 8,
        "best_epoch": 3,
        "max_epochs": 20,
        "patience": 5,
        "early_stopping": True,
        "reason": "early stopping: no validation improvement for 5 epochs",
    }
    capped = classify.stopping(history, 7, max_epochs=8, patience=5)
    assert not capped["early_stopping"] and capped["reason"] == "cap of 8 epochs reached"


def test_a_run_that_stops_early_records_it_and_one_at_the_cap_records_the_cap(data, vqvae_checkpoint, tmp_path):
    early = classify.train_classifier(
        small_config(vqvae_checkpoint, tmp_path / "early", epochs=40, patience=1), data, progress=False
    )
    assert len(early.history) < 40
    assert early.stopping["reason"] == "early stopping: no validation improvement for 1 epoch"
    assert early.stopping["stopped_epoch"] == len(early.history) == early.best_epoch + 1
    on_disk = json.loads((tmp_path / "early" / "cls" / "stopping.json").read_text())
    assert on_disk == early.stopping
    assert load_checkpoint(early.best_checkpoint, kind="classifier")["stopping"] == early.stopping

    capped = classify.train_classifier(
        small_config(vqvae_checkpoint, tmp_path / "capped", epochs=2, patience=5), data, progress=False
    )
    assert capped.stopping["stopped_epoch"] == len(capped.history) == 2
    assert capped.stopping["reason"] == "cap of 2 epochs reached" and not capped.stopping["early_stopping"]
    evaluation = classify.evaluate_classifier(capped, data, split="val", write=False)
    path = classify.record_classifier_results(tmp_path, capped, evaluation)
    recorded = json.loads(path.read_text())
    assert recorded["stopped_epoch"] == 2 and recorded["stop_reason"] == "cap of 2 epochs reached"


def test_changing_only_the_networks_settings_keeps_the_regressions_rows(vqvae_checkpoint, tmp_path):
    """The runs file's reuse: the logistic regressions never read the head's settings or the networks' cap."""
    from vqlib.label_efficiency import _record_run, finished_runs, run_fingerprint

    config = LabelEfficiencyConfig(vqvae_checkpoint=str(vqvae_checkpoint), cnn_epochs_all=3)
    head = ClassifierConfig(epochs=8, patience=3)
    fingerprint = run_fingerprint(config, head, vqvae_checkpoint)
    for method in ("vq_head", "vq_linear", "z_linear", "pixel_linear"):
        _record_run(tmp_path, fingerprint, _efficiency_row(method, 10, 0, 0.7))

    def reused(config, head):
        return sorted(m for m, _, _ in finished_runs(tmp_path, run_fingerprint(config, head, vqvae_checkpoint)))

    assert reused(config, head) == ["pixel_linear", "vq_head", "vq_linear", "z_linear"]
    longer = dataclasses.replace(head, epochs=100, patience=5, hidden_units=64)
    assert reused(dataclasses.replace(config, cnn_epochs_all=100), longer) == ["pixel_linear", "vq_linear", "z_linear"]
    # The regressions' own settings still measure them again (and leave the networks' rows alone).
    assert reused(dataclasses.replace(config, linear_c="0.1"), head) == ["vq_head"]
    assert reused(dataclasses.replace(config, selection="full_val"), head) == []


def test_a_run_of_the_same_settings_is_continued_and_one_of_others_is_not(data, vqvae_checkpoint, tmp_path):
    """Notebook 03 resumes what `resumable` accepts: a finished run comes back without training, bitwise the same."""
    config = small_config(vqvae_checkpoint, tmp_path)
    assert not classify.resumable(config)  # nothing trained yet
    first = classify.train_classifier(config, data, progress=False)
    last = Path(config.checkpoint_dir) / "last.pt"
    assert classify.resumable(config)
    assert not classify.resumable(dataclasses.replace(config, epochs=3))
    assert not classify.resumable(dataclasses.replace(config, labels_per_class=30))  # another folder, no last.pt
    written = last.stat().st_mtime_ns
    again = classify.train_classifier(config, data, resume=True, progress=False)
    assert last.stat().st_mtime_ns == written  # no epoch ran
    assert again.history == first.history and again.best_epoch == first.best_epoch
    for name, tensor in first.model.state_dict().items():
        assert torch.equal(tensor, again.model.state_dict()[name]), name
    # The time it took is the first call's, not the instant of reuse.
    assert again.train_seconds >= sum(row["epoch_seconds"] for row in first.history)

    # The fine-tuned variant of the comparison is reused the same way.
    evaluation = classify.evaluate_classifier(first, data, split="val")
    table = classify.compare_classifiers(first, evaluation, data, with_finetune=True, resume=True, progress=False)
    other_last = Path(config.checkpoint_dir + "_finetune") / "last.pt"
    written = other_last.stat().st_mtime_ns
    again_table = classify.compare_classifiers(first, evaluation, data, with_finetune=True, resume=True, progress=False)
    assert other_last.stat().st_mtime_ns == written
    assert table.equals(again_table)
