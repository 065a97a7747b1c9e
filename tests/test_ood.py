"""The out-of-distribution detector (vqlib.ood) on a real, small VQ-VAE, and its place in `vqlib infer-cls`."""

from __future__ import annotations

import struct
import subprocess

import numpy as np
import pandas as pd
import pytest
import torch

from vqlib import classify, ood
from vqlib.checkpoints import load_vqvae, save_checkpoint
from vqlib.config import ClassifierConfig
from vqlib.errors import CheckpointError
from vqlib.models import VQVAE

from .conftest import VQLIB, train_tiny_vqvae


@pytest.fixture(scope="module")
def vqvae_checkpoint(data, tmp_path_factory):
    """A real VQ-VAE trained for one epoch on 1,000 images."""
    return train_tiny_vqvae(data, tmp_path_factory.mktemp("ood"), train_subset=1000)


@pytest.fixture(scope="module")
def fitted(data, vqvae_checkpoint):
    vqvae, _ = load_vqvae(vqvae_checkpoint)
    return vqvae, ood.fit_detector(vqvae, data, fit_images=2000, synthetic_per_set=500)


@pytest.fixture(scope="module")
def classifier(data, vqvae_checkpoint, tmp_path_factory):
    folder = tmp_path_factory.mktemp("cls")
    return classify.train_classifier(
        ClassifierConfig(
            vqvae_checkpoint=str(vqvae_checkpoint),
            labels_per_class=20,
            epochs=1,
            min_steps_per_epoch=3,
            batch_size=64,
            device="cpu",
            checkpoint_dir=str(folder / "cls"),
            results_dir=str(folder / "results"),
        ),
        data,
        progress=False,
    ).best_checkpoint


def test_detector_is_calibrated_on_validation_and_flags_what_is_not_fashion(data, fitted):
    vqvae, detector = fitted
    config = detector["model_config"]
    assert config["combination"] in ood.CANDIDATES and config["threshold_percentile"] == 99.0
    score, flag = ood.score_images(detector, vqvae, data.val_images)
    assert score.min() >= 0 and score.max() <= 100
    assert flag.mean() <= 0.011  # the validation split defines the threshold: at most 1% above it
    test_score, test_flag = ood.score_images(detector, vqvae, data.test_images[:2000])
    assert test_flag.mean() < 0.05  # unseen FashionMNIST: close to the 1% target
    for kind in ("noise", "blank", "inverted"):
        images = ood.synthetic_images(kind, data.test_images, 200, seed=5)
        assert ood.score_images(detector, vqvae, images)[1].mean() > 0.9, kind
    # The selection table is a record of every candidate on the synthetic sets.
    assert {row["combination"] for row in detector["selection"]} == set(ood.CANDIDATES)


def test_signals_have_their_documented_direction(data, fitted):
    """Reconstruction error is low for blank images (the failure the issue describes); the complexity-corrected
    score is not."""
    vqvae, detector = fitted
    blank = ood.synthetic_images("blank", data.test_images, 10)
    fashion = ood.score_signals(detector, vqvae, data.test_images[:500])
    empty = ood.score_signals(detector, vqvae, blank)
    assert empty["mse"].max() < np.median(fashion["mse"])
    assert empty["serra"].min() > np.percentile(fashion["serra"], 99)


def test_detector_round_trips_weights_only_and_belongs_to_one_vqvae(fitted, tmp_path):
    vqvae, detector = fitted
    path = ood.save_detector(tmp_path / "ood.pt", detector)
    torch.load(path, weights_only=True)
    loaded = ood.load_detector(path, vqvae)
    images = torch.randint(0, 256, (8, 28, 28), dtype=torch.uint8)
    assert np.array_equal(ood.score_images(loaded, vqvae, images)[0], ood.score_images(detector, vqvae, images)[0])
    other = VQVAE(vqvae.config)
    with pytest.raises(CheckpointError, match="another VQ-VAE"):
        ood.load_detector(path, other)
    damaged = {**detector["state_dict"], "precision": torch.zeros(3, 3, dtype=torch.float64)}
    ood.save_detector(tmp_path / "damaged.pt", {**detector, "state_dict": damaged})
    with pytest.raises(CheckpointError, match="does not fit this VQ-VAE .precision"):
        ood.load_detector(tmp_path / "damaged.pt", vqvae)
    save_checkpoint(tmp_path / "broken.pt", "ood", {"model_config": {}, "state_dict": {}})
    with pytest.raises(CheckpointError, match="not a complete OOD detector"):
        ood.load_detector(tmp_path / "broken.pt", vqvae)


def test_digits_are_made_mnist_like():
    digits = ood.digits_images()
    assert digits.shape == (1797, 28, 28) and digits.dtype == torch.uint8
    assert digits[:, :4].max() == 0 and digits[:, :, -4:].max() == 0  # 20 x 20 centred in 28 x 28
    assert digits.max() == 255


def test_infer_cls_reports_the_score_the_flag_and_a_plain_sentence(data, fitted, classifier, tmp_path, cli_env):
    from PIL import Image

    vqvae, detector = fitted
    # The detector is cached where infer-cls (VQLIB_ROOT=tmp_path) looks for it: no refit in the subprocess.
    ood.save_detector(tmp_path / "checkpoints" / "ood-detectors" / ood.detector_path(vqvae).name, detector)
    candidates = data.test_images[:50]
    typical = int(np.argmin(ood.score_images(detector, vqvae, candidates)[0]))
    Image.fromarray(candidates[typical].numpy()).save(tmp_path / "garment.png")
    # Uniform noise as an IDX file (taken as it is; a noise photo is cropped and rescaled first).
    noise = ood.synthetic_images("noise", data.test_images, 2, seed=3).numpy()
    (tmp_path / "noise-idx3-ubyte").write_bytes(struct.pack(">IIII", 0x803, 2, 28, 28) + noise.tobytes())
    Image.new("L", (1, 1), 255).save(tmp_path / "blank.png")  # once called "Sandal" with probability 0.84
    inputs = [str(tmp_path / n) for n in ("garment.png", "noise-idx3-ubyte", "blank.png")]
    result = subprocess.run(
        [*VQLIB, "infer-cls", "--checkpoint", str(classifier), *inputs, "--output", str(tmp_path / "p.csv")],
        capture_output=True,
        text=True,
        env=cli_env,
    )
    assert result.returncode == 0, result.stderr
    frame = pd.read_csv(tmp_path / "p.csv")
    assert {"ood_score", "ood_flag"} <= set(frame.columns)
    assert frame["ood_flag"].tolist() == [False, True, True, True]
    assert frame["ood_score"].iloc[1] > 99 and frame["ood_score"].iloc[0] <= 99
    assert "3 of 4 images do not look like FashionMNIST" in result.stdout
    assert f"unreliable: {inputs[1]}[0], {inputs[1]}[1], {inputs[2]}" in result.stdout


def test_infer_cls_without_its_vqvae_still_predicts_and_says_why(data, classifier, tmp_path):
    from PIL import Image

    from vqlib.infer import infer_images, unreliable_sentence

    Image.fromarray(data.test_images[0].numpy()).save(tmp_path / "garment.png")
    frame = infer_images(classifier, [tmp_path / "garment.png"], device="cpu", vqvae_checkpoint=tmp_path / "gone.pt")
    assert frame["predicted"].iloc[0] and np.isnan(frame["ood_score"].iloc[0]) and not frame["ood_flag"].iloc[0]
    assert unreliable_sentence(frame).startswith("no out-of-distribution score: no checkpoint at")
