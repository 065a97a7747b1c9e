"""The out-of-distribution detector (vqlib.ood) on the real protocol VQ-VAE with tiny real priors, its evaluation
(vqlib.ood_eval), the photo path's premises (vqlib.photos) on real photos, and `vqlib infer-cls` as a user meets it.

The priors are trained here on a few hundred real codes, so their scores separate
little; the tests check the detector's contract (the form, the calibration, the
cache, the refusals, the table) and the photo checks, whose verdicts do not depend
on the priors' quality.
"""

from __future__ import annotations

import shutil
import struct
import subprocess

import numpy as np
import pandas as pd
import pytest
import torch

from vqlib import ood, ood_eval, photos
from vqlib.device import NO_BF16_UNITS, native_bf16_cpu
from vqlib.errors import CheckpointError

from .conftest import REPO, VQLIB, train_tiny_prior

PUBLISHED = ("K100_D64", "K100_D64_all_frozen")


def _project(folder):
    """A project root holding copies of the protocol VQ-VAE and its classifier, as `pretrained:NAME`."""
    for name in PUBLISHED:
        shutil.copytree(REPO / "checkpoints" / "pretrained" / name, folder / "checkpoints" / "pretrained" / name)
    return folder


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """The project root of this module: the protocol VQ-VAE, its classifier, and tiny priors published beside them
    under the names the detector looks for by default."""
    with pytest.MonkeyPatch.context() as patch:
        folder = _project(tmp_path_factory.mktemp("project"))
        patch.setenv("VQLIB_ROOT", str(folder))
        yield folder


def _train_tiny_prior(data, folder, perturbation: float):
    return train_tiny_prior(data, folder, class_conditional=True, perturbation=perturbation, train_subset=320)


@pytest.fixture(scope="module")
def priors(root, data):
    """(prior, background) trained for one epoch on 320 real codes, published as pretrained:K100_D64_prior and
    pretrained:K100_D64_prior_background."""
    pretrained = root / "checkpoints" / "pretrained"
    prior = _train_tiny_prior(data, pretrained / "K100_D64_prior", 0.0)
    background = _train_tiny_prior(data, pretrained / "K100_D64_prior_background", 0.1)
    return prior, background


@pytest.fixture(scope="module")
def detector(priors, data):
    """The detector by its defaults: the published prior of pretrained:K100_D64 and the background beside it."""
    return ood.detector_for("pretrained:K100_D64", data=data, progress=False, say=lambda message: None)


# ----------------------------------------------------------------------------- the detector


def test_the_score_is_the_likelihood_ratio_of_the_prior_and_its_background(detector, priors, data):
    from vqlib.classify import encode_codes
    from vqlib.prior import bits_per_image, load_prior

    prior, background = priors
    assert background.checkpoint_dir.name == "K100_D64_prior_background"
    assert torch.load(background.best_checkpoint, weights_only=True)["model_config"]["perturbation"] == 0.1
    images = data.test_images[:40]
    codes = encode_codes(detector.models.vqvae, images)
    expected = (
        bits_per_image(load_prior(prior.best_checkpoint)[0], codes)
        - bits_per_image(load_prior(background.best_checkpoint)[0], codes)
    ).numpy()
    bits = detector.bits(images)
    np.testing.assert_allclose(bits["likelihood_ratio"], expected, rtol=1e-9, atol=1e-6)
    np.testing.assert_allclose(bits["likelihood_ratio"], bits["prior_bits"] - bits["background_bits"])
    score, flag = detector.score(images)
    order = np.argsort(bits["likelihood_ratio"])
    assert np.all(np.diff(score[order]) >= 0)  # the percentile is monotone in the ratio
    assert np.array_equal(flag, score > 99.0)
    assert detector.info["prior"] == "pretrained:K100_D64_prior"
    assert detector.info["background"] == "pretrained:K100_D64_prior_background"


def test_the_threshold_is_the_validation_99th_percentile(detector, data):
    assert detector.info["form"] == "likelihood_ratio" and detector.threshold_percentile == 99.0
    assert len(detector.val_scores) == 5000 and np.all(np.diff(detector.val_scores) >= 0)
    score, flag = detector.score(data.val_images)
    assert flag.mean() <= 0.01  # the validation split defines the threshold: at most 1% above it
    assert score.min() >= 0 and score.max() <= 100
    _, test_flag = detector.score(data.test_images[:1000])
    assert test_flag.mean() < 0.05  # unseen FashionMNIST: near the 1% target, even for priors this small


def test_the_calibration_is_cached_weights_only_and_belongs_to_its_three_models(
    detector, data, tmp_path, capsys, monkeypatch
):
    assert detector.path is not None and detector.path.parent.name == "ood-detectors"
    raw = torch.load(detector.path, weights_only=True)
    assert raw["kind"] == "ood" and raw["state_dict"]["val_scores"].dtype == torch.float64
    said = []
    again = ood.detector_for("pretrained:K100_D64", data=data, say=said.append)
    assert not said and np.array_equal(again.val_scores, detector.val_scores)  # from the cache, silently
    swapped = ood.Models(detector.models.vqvae, detector.models.background, detector.models.prior)
    with pytest.raises(CheckpointError, match="fitted on other models"):
        ood.load_detector(detector.path, swapped)
    damaged = ood.Detector(detector.models, detector.val_scores[::-1].copy(), detector.info)
    ood.save_detector(tmp_path / "damaged.pt", damaged)
    with pytest.raises(CheckpointError, match="no usable validation scores"):
        ood.load_detector(tmp_path / "damaged.pt", detector.models)
    # A refit says what it does, where it caches, with a progress bar.
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    refitted = ood.detector_for("pretrained:K100_D64", data=data, refit=True, progress=True, say=said.append)
    assert len(said) == 1 and "validation images" in said[0] and "checkpoints/ood-detectors/" in said[0]
    assert "%|" in capsys.readouterr().err
    assert np.array_equal(refitted.val_scores, detector.val_scores)


def test_a_prior_and_a_background_are_not_interchangeable(priors, tmp_path):
    prior, background = priors
    with pytest.raises(CheckpointError, match="trained on perturbed codes .* background model") as refused:
        ood.load_models(None, background.best_checkpoint, background.best_checkpoint)
    assert "\n" not in str(refused.value)
    with pytest.raises(CheckpointError, match="trained on plain codes, so it cannot be the background"):
        ood.load_models(None, prior.best_checkpoint, prior.best_checkpoint)
    # Given only the prior, the VQ-VAE is the one it records and the background the one beside it.
    models = ood.load_models(None, prior.best_checkpoint)
    assert models.names["vqvae"] == "pretrained:K100_D64"
    assert models.names["background"] == "pretrained:K100_D64_prior_background"  # found beside the prior's file
    (tmp_path / "lonely").mkdir()
    shutil.copy(prior.best_checkpoint, tmp_path / "lonely" / "best.pt")
    with pytest.raises(CheckpointError, match="background model .*lonely_background/best.pt, which does not exist"):
        ood.load_models(None, tmp_path / "lonely" / "best.pt")


def test_a_missing_default_prior_says_how_to_make_it(tmp_path, monkeypatch):
    monkeypatch.setenv("VQLIB_ROOT", str(_project(tmp_path)))
    with pytest.raises(CheckpointError, match="needs the prior pretrained:K100_D64_prior, which is not published"):
        ood.load_models("pretrained:K100_D64")
    assert ood.default_background("pretrained:K100_D64_prior") == "pretrained:K100_D64_prior_background"
    assert ood.default_background("checkpoints/prior/K100_D64_transformer_cond/best.pt") == (
        "checkpoints/prior/K100_D64_transformer_cond_background/best.pt"
    )


# ----------------------------------------------------------------------------- the photo path's premises


def test_photos_that_are_not_a_product_on_a_plain_background_are_flagged(data):
    """Real photos shipped by scikit-learn and matplotlib, and a page of text: the photo checks flag them; the same
    checks pass FashionMNIST test images rendered as product photos and the images FashionMNIST itself holds."""
    from PIL import Image

    shipped = ood_eval.sample_photos()
    judged = {name: photos.prepare_photo(photo) for name, photo in shipped.items()}
    judged["text page"] = photos.prepare_photo(ood_eval.text_pages(1)[0])
    assert "no plain background" in photos.photo_problem(judged["landscape (scikit-learn china.jpg)"])
    assert "no plain background" in photos.photo_problem(judged["face (matplotlib grace_hopper.jpg)"])
    assert judged["text page"].plain_background and not judged["text page"].detail_survives
    assert "keep only" in photos.photo_problem(judged["text page"])
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8))
    assert photos.prepare_photo(noise).detail_kept < 0.25  # smoothing would have made it a grey "bag"
    products = [photos.prepare_photo(p) for p in ood_eval.product_photos(data.test_images[:100])]
    assert not any(photos.photo_problem(p) for p in products)
    plain = [photos.prepare_photo(Image.fromarray(image.numpy())) for image in data.test_images[:100]]
    assert sum(bool(photos.photo_problem(p)) for p in plain) <= 2
    # The checks leave the image alone: a dark-on-light copy comes back light on black, cropped and scaled.
    again = photos.fashion_mnist_like(Image.fromarray(255 - data.test_images[0].numpy()))
    assert np.corrcoef(again.ravel(), data.test_images[0].numpy().ravel().astype(float))[0, 1] > 0.8


def test_the_real_evaluation_sets_are_made_from_installed_packages(data):
    digits = ood_eval.digits_images()
    assert digits.shape == (1797, 28, 28) and digits.dtype == torch.uint8
    assert digits[:, :4].max() == 0 and digits[:, :, -4:].max() == 0  # 20 x 20 centred in 28 x 28
    cards = ood_eval.glyph_cards(fonts=("DejaVuSans.ttf", "cmr10.ttf"), glyphs="Ag7")
    assert len(cards) == 6 and all(np.asarray(c).min() < 128 for c in cards)
    crops = ood_eval.photo_crops(per_photo=4, seed=0)
    assert len(crops) == 12 and all(min(c.size) >= 0.2 * 427 for c in crops)
    assert [c.size for c in crops] == [c.size for c in ood_eval.photo_crops(per_photo=4, seed=0)]  # seeded


# ----------------------------------------------------------------------------- the evaluation table


def test_ood_eval_writes_the_whole_table(detector, root, capsys):
    from vqlib.cli import main

    code = main(["ood-eval", "--vqvae-checkpoint", "pretrained:K100_D64", "--limit", "30"])
    assert code == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    folder = root / "results" / "ood"
    table = pd.read_csv(folder / "ood_eval.csv")
    assert table["set"].tolist() == [
        "FashionMNIST test",
        "FashionMNIST test as product photos",
        "digits (scikit-learn, MNIST-like)",
        "glyphs (matplotlib's fonts, printed)",
        "photo crops (scikit-learn, matplotlib)",
        "text pages (Python's documentation)",
        "uniform noise",
        "blank",
        "inverted FashionMNIST test",
    ]
    assert table["images"].tolist() == [30, 30, 30, 30, 30, 24, 30, 30, 30]
    outliers = table.iloc[2:]
    for column in ("reconstruction_mse", "mahalanobis", "prior_bits", "complexity_corrected", "detector"):
        assert outliers[f"auroc_{column}"].between(0, 1).all(), column
    photo_rows = table[table["path"] == "photo"]
    assert photo_rows["flagged"].ge(photo_rows["flagged_detector"]).all()
    text_pages = table.set_index("set").loc["text pages (Python's documentation)"]
    assert text_pages["flagged_photo_checks"] == 1.0 and text_pages["auroc_with_photo_checks"] == 1.0
    photos_table = pd.read_csv(folder / "ood_photos.csv").set_index("photo")
    assert photos_table.loc["landscape (scikit-learn china.jpg)", "flagged"]
    assert photos_table.loc["text page (rendered)", "flagged"]
    assert "likelihood ratio of pretrained:K100_D64_prior against pretrained:K100_D64_prior_background" in out


# ----------------------------------------------------------------------------- infer-cls as a user meets it


def test_infer_cls_summarises_many_images_and_flags_photos(detector, data, root, tmp_path):
    """The real console script: 25 IDX images and three photos. Beyond 20 images the table goes to a file and the
    terminal shows a summary with the expected rate beside the observed one."""
    ood_eval.product_photos(data.test_images[:1])[0].save(tmp_path / "boot.jpg")
    ood_eval.sample_photos()["landscape (scikit-learn china.jpg)"].save(tmp_path / "landscape.jpg")
    ood_eval.text_pages(1)[0].save(tmp_path / "page.png")
    idx = tmp_path / "few-idx3-ubyte"
    idx.write_bytes(struct.pack(">IIII", 0x803, 25, 28, 28) + data.test_images[:25].numpy().tobytes())
    inputs = [str(idx), str(tmp_path / "boot.jpg"), str(tmp_path / "landscape.jpg"), str(tmp_path / "page.png")]
    env = {**_env(root), "TQDM_DISABLE": "1"}
    result = subprocess.run(
        [*VQLIB, "infer-cls", "--checkpoint", "pretrained:K100_D64_all_frozen", *inputs, "--device", "cpu"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    # A CPU without bf16 units says once that it falls back to fp32 (vqlib.device), before what the command reports.
    if not native_bf16_cpu():
        assert lines.pop(0) == f"precision: fp32 ({NO_BF16_UNITS})", result.stdout
    assert len(lines) == 3, result.stdout  # the class counts, the sentence, where the table is
    assert lines[0].startswith("28 images, predicted: ")
    assert "do not look like FashionMNIST" in lines[1] and "2 of them photos that fail a premise" in lines[1]
    written = root / "results" / "infer-cls" / "few-idx3-ubyte_predictions.csv"
    assert lines[2] == "predictions: results/infer-cls/few-idx3-ubyte_predictions.csv"
    frame = pd.read_csv(written, keep_default_na=False).set_index("input")
    assert len(frame) == 28 and {"ood_score", "ood_flag", "ood_reason"} <= set(frame.columns)
    assert frame.loc[inputs[2], "ood_flag"] and "no plain background" in frame.loc[inputs[2], "ood_reason"]
    assert frame.loc[inputs[3], "ood_flag"] and "detail" in frame.loc[inputs[3], "ood_reason"]
    assert "no plain background" not in frame.loc[inputs[1], "ood_reason"]


def _env(root):
    import os

    return dict(os.environ, VQLIB_ROOT=str(root), PYTHONUNBUFFERED="1")


def test_the_summary_states_the_expected_rate_beside_the_observed():
    from vqlib.infer import ood_summary

    def frame(n, flagged, reason="score above the validation 99th percentile", note=""):
        table = pd.DataFrame(
            {"input": [f"x[{i}]" for i in range(n)], "ood_flag": [i < flagged for i in range(n)]}
        ).assign(ood_reason=lambda f: np.where(f["ood_flag"], reason, ""))
        table.attrs.update(ood_threshold_percentile=99.0, ood_note=note)
        return table

    usual = ood_summary(frame(10_000, 88), table="p.csv")
    assert usual.startswith("88 of 10000 images (0.9%) score above the validation 99th percentile")
    assert "about 1% of FashionMNIST images (100 of 10000)" in usual and "no sign of images from elsewhere" in usual
    assert "column ood_flag of p.csv" in usual
    alarm = ood_summary(frame(1797, 1500))
    assert alarm.startswith("1500 of 1797 images (83.5%) do not look like FashionMNIST")
    assert "about 1% of FashionMNIST images (18 of 1797)" in alarm and "unreliable" in alarm
    assert ood_summary(frame(3, 0)).startswith("none of the 3 images is flagged")
    photo = ood_summary(frame(3, 1, reason="no plain background", note="no out-of-distribution score: x"))
    assert photo.startswith("no out-of-distribution score: x; 1 of 3 images are photos that fail a premise")
    assert photo.endswith("their predictions are unreliable: x[0]")


def test_infer_cls_without_a_prior_still_predicts_and_says_why(data, tmp_path, monkeypatch, capsys):
    from PIL import Image

    from vqlib.cli import main
    from vqlib.infer import infer_images, ood_summary

    monkeypatch.setenv("VQLIB_ROOT", str(_project(tmp_path)))
    Image.fromarray(data.test_images[0].numpy()).save(tmp_path / "garment.png")
    frame = infer_images("pretrained:K100_D64_all_frozen", [tmp_path / "garment.png"], device="cpu")
    assert frame["predicted"].iloc[0] and np.isnan(frame["ood_score"].iloc[0]) and not frame["ood_flag"].iloc[0]
    assert ood_summary(frame).startswith(
        "no out-of-distribution score: the out-of-distribution detector needs the prior pretrained:K100_D64_prior"
    )
    # A prior asked for by name that is not there is an error: one sentence, exit code 2.
    code = main(
        ["infer-cls", "--checkpoint", "pretrained:K100_D64_all_frozen", str(tmp_path / "garment.png")]
        + ["--prior", str(tmp_path / "gone.pt")]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "gone.pt, which does not exist" in err
