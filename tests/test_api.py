"""The Python API (vqlib.api) on the published models and the real test images, and the README's quickstart."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

import vqlib
from vqlib import paths
from vqlib.errors import CheckpointError, ConfigError, InputError

from .conftest import REPO

QUICKSTART_HEADING = "## Python quickstart"


@pytest.fixture(autouse=True)
def repo_paths(monkeypatch):
    """The published models of the repository itself, whatever VQLIB_ROOT the session has."""
    monkeypatch.delenv("VQLIB_ROOT", raising=False)
    assert paths.project_root() == REPO


@pytest.fixture(scope="module")
def vqvae():
    return vqlib.load_pretrained("K100_D64", device="cpu")


@pytest.fixture(scope="module")
def classifier():
    return vqlib.load_pretrained("K100_D64_all_frozen", device="cpu")


@pytest.fixture(scope="module")
def test_images():
    images, labels = vqlib.load_split("test")
    return images[:16], labels[:16]


def test_load_pretrained_gives_models_in_eval_mode(vqvae, classifier):
    assert isinstance(vqvae, vqlib.PretrainedVQVAE) and not vqvae.model.training
    assert (vqvae.num_embeddings, vqvae.embedding_dim) == (100, 64) == (vqvae.config.num_embeddings, 64)
    assert isinstance(classifier, vqlib.PretrainedClassifier) and not classifier.model.training
    assert classifier.vqvae.checkpoint == "pretrained:K100_D64"
    # The same name with its prefix, and the file itself, load the same weights.
    by_path = vqlib.load_pretrained(REPO / "checkpoints" / "pretrained" / "K100_D64" / "best.pt", device="cpu")
    prefixed = vqlib.load_pretrained("pretrained:K100_D64", device="cpu")
    for other in (by_path, prefixed):
        assert torch.equal(other.model.quantizer.codebook, vqvae.model.quantizer.codebook)


def test_shapes_dtypes_and_ranges(vqvae, classifier, test_images):
    images, labels = test_images
    assert images.dtype == torch.uint8 and images.shape == (16, 28, 28)
    assert labels.dtype == torch.int64 and labels.shape == (16,)
    codes = vqvae.encode(images)
    assert codes.dtype == torch.int64 and codes.shape == (16, 12, 12)
    assert 0 <= codes.min() and codes.max() < 100
    recon = vqvae.decode(codes)
    assert recon.dtype == torch.float32 and recon.shape == (16, 1, 28, 28)
    assert 0 <= recon.min() and recon.max() <= 1
    # Decoding the code is what the VQ-VAE's forward pass reconstructs.
    torch.testing.assert_close(vqvae.reconstruct(images), recon, atol=1e-5, rtol=0)
    assert vqvae.quantized(images).shape == vqvae.latents(images).shape == (16, 64, 12, 12)
    torch.testing.assert_close(vqvae.quantized(images), vqvae.lookup(codes))
    proba = classifier.predict_proba(images)
    assert proba.dtype == torch.float32 and proba.shape == (16, 10)
    torch.testing.assert_close(proba.sum(1), torch.ones(16))
    predicted = classifier.predict(images)
    assert predicted.dtype == torch.int64 and predicted.shape == (16,)
    names = classifier.classify(images)
    assert names == [vqlib.CLASSES[i] for i in predicted] and all(isinstance(n, str) for n in names)
    # Results are ordinary tensors: a user may scale them in place.
    recon *= 255


def test_every_input_form_agrees(vqvae, classifier, test_images):
    images = test_images[0][:4]
    as_float = images.float() / 255
    forms = {
        "uint8 torch (N, 28, 28)": images,
        "uint8 numpy (N, 28, 28)": images.numpy(),
        "uint8 torch (N, 1, 28, 28)": images[:, None],
        "float32 torch (N, 28, 28)": as_float,
        "float64 numpy (N, 1, 28, 28)": images.numpy()[:, None] / 255.0,
        "float16 torch (N, 28, 28)": as_float.half(),
    }
    codes = vqvae.encode(images)
    proba = classifier.predict_proba(images)
    for form, value in forms.items():
        assert torch.equal(vqvae.encode(value), codes) or form.startswith("float16"), form
        torch.testing.assert_close(classifier.predict_proba(value), proba, atol=2e-3, rtol=0, msg=form)
    # One image without the batch axis is a batch of one.
    assert torch.equal(vqvae.encode(images[0]), codes[:1])
    assert torch.equal(vqvae.encode(images.numpy()[0] / 255.0), codes[:1])
    assert vqvae.decode(codes[0]).shape == (1, 1, 28, 28)
    assert classifier.classify(images[0]) == classifier.classify(images)[:1]


@pytest.mark.parametrize(
    "bad, message",
    [
        (
            np.zeros((4, 32, 32), np.uint8),
            r"must have shape \(28, 28\), \(N, 28, 28\) or \(N, 1, 28, 28\), not \(4, 32, 32\)",
        ),
        (np.zeros((2, 3, 28, 28), np.uint8), r"not \(2, 3, 28, 28\)"),
        (np.zeros((0, 28, 28), np.uint8), "holds no image"),
        (np.zeros((1, 28, 28), np.int64), "must be uint8 in \\[0, 255\\] or float in \\[0, 1\\], not int64"),
        (np.full((1, 28, 28), 255.0, np.float32), r"range from 255 to 255 \(uint8 pixels stored as float\?"),
        (np.full((1, 28, 28), -0.5), "must lie in \\[0, 1\\]"),
        (np.full((1, 28, 28), np.nan), "NaN or infinite"),
        ([[0] * 28] * 28, "must be a numpy array or a torch tensor, not list"),
        (np.array(["a"] * 784).reshape(28, 28), "must be numbers"),
    ],
)
def test_bad_images_end_in_one_sentence(vqvae, classifier, bad, message):
    for method in (vqvae.encode, vqvae.reconstruct, classifier.classify, classifier.predict_proba):
        with pytest.raises(InputError, match=message) as raised:
            method(bad)
        assert "\n" not in str(raised.value)


@pytest.mark.parametrize(
    "codes, message",
    [
        (torch.full((1, 12, 12), 100), r"must lie in \[0, 99\] .* range from 100 to 100"),
        (torch.full((1, 12, 12), -1), "range from -1"),
        (torch.zeros((1, 12, 12)), "must be integers"),
        (torch.zeros((1, 14, 14), dtype=torch.long), r"must have shape \(12, 12\) or \(N, 12, 12\)"),
    ],
)
def test_bad_codes_end_in_one_sentence(vqvae, codes, message):
    with pytest.raises(InputError, match=message):
        vqvae.decode(codes)


def test_unknown_names_list_the_published_ones():
    with pytest.raises(
        CheckpointError,
        match="no published model 'NOPE'; the published VQ-VAEs are K100_D16.*"
        "the published classifiers are K100_D64_all_frozen",
    ):
        vqlib.load_pretrained("NOPE")
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        vqlib.load_pretrained("missing/best.pt")
    with pytest.raises(ConfigError, match="split must be 'train', 'val' or 'test'"):
        vqlib.load_split("validation")


def test_classify_agrees_with_the_predict_path(classifier, data):
    """The API's answer is the CLI's: classify.predict on the same checkpoint, 200 test images."""
    from vqlib.classify import load_classifier, predict

    model, _ = load_classifier("pretrained:K100_D64_all_frozen")
    images = data.test_images[:200]
    expected = predict(model, images).argmax(1)
    assert torch.equal(classifier.predict(images), expected)
    assert torch.equal(classifier.predict(images, batch_size=7), expected)  # batching changes nothing
    assert (expected == data.test_labels[:200]).float().mean() > 0.85


def test_psnr_of_the_published_vqvae_is_about_28_db(vqvae, data):
    images = data.test_images[:500]
    value = vqlib.psnr(images, vqvae.reconstruct(images))
    assert 27 < value < 29
    # The PSNR of the mean MSE: what train.evaluate_vqvae reports.
    from vqlib.train import evaluate_vqvae

    assert value == pytest.approx(evaluate_vqvae(vqvae.model, images)["psnr"], abs=1e-3)
    assert vqlib.psnr(images, images) == pytest.approx(120.0)
    with pytest.raises(InputError, match="same number of images, not 500 and 2"):
        vqlib.psnr(images, images[:2])


def test_list_pretrained_reads_the_published_files():
    table = vqlib.list_pretrained()
    assert list(table.columns[:7]) == ["name", "kind", "K", "D", "val_mse", "val_psnr", "test_accuracy"]
    assert set(table["name"]) == {p.parent.name for p in (REPO / "checkpoints" / "pretrained").glob("*/best.pt")}
    row = table.set_index("name").loc["K100_D64"]
    assert (row["kind"], row["K"], row["D"]) == ("vqvae", 100, 64)
    assert 27.5 < row["val_psnr"] < 28.5 and 0 < row["size_mb"] < 5
    frozen = table.set_index("name").loc["K100_D64_all_frozen"]
    assert frozen["kind"] == "classifier" and frozen["vqvae"] == "K100_D64" and frozen["test_accuracy"] > 0.85


def test_list_pretrained_reads_the_protocol_seeds_metrics_too():
    """The protocol's seeds 1 and 2 are published beside the study's grid: their validation metrics are listed."""
    table = vqlib.list_pretrained().set_index("name")
    for name in ("K100_D64_s1", "K100_D64_s2"):
        assert table.loc[name, "kind"] == "vqvae" and 27.0 < table.loc[name, "val_psnr"] < 28.5, name


def test_a_published_prior_samples_and_scores_images(tmp_path, monkeypatch, data):
    """load_pretrained("K100_D64_prior"): a PretrainedPrior with its VQ-VAE; seeded samples of a class; bits of
    images equal to the exact log-likelihood of their codes; one sentence for a class it does not know."""
    import dataclasses
    import shutil

    from vqlib.prior import bits_per_image, train_prior

    from .test_prior import tiny_config

    monkeypatch.setenv("VQLIB_ROOT", str(tmp_path))
    pretrained = tmp_path / "checkpoints" / "pretrained"
    shutil.copytree(REPO / "checkpoints" / "pretrained" / "K100_D64", pretrained / "K100_D64")
    config = tiny_config(tmp_path, vqvae_checkpoint="pretrained:K100_D64", class_conditional=True)
    train_prior(dataclasses.replace(config, checkpoint_dir=str(pretrained / "K100_D64_prior")), data, progress=False)

    prior = vqlib.load_pretrained("K100_D64_prior", device="cpu")
    assert isinstance(prior, vqlib.PretrainedPrior) and prior.num_codes == 100 and prior.class_conditional
    assert prior.vqvae.num_embeddings == 100 and "K=100, class-conditional" in repr(prior)
    images, codes = prior.sample(6, classes="Trouser", seed=3)
    assert images.shape == (6, 1, 28, 28) and images.dtype == torch.float32 and 0 <= images.min() <= images.max() <= 1
    assert codes.shape == (6, 12, 12) and codes.dtype == torch.int64
    again, same = prior.sample(6, classes="Trouser", seed=3)
    assert torch.equal(same, codes) and torch.equal(again, images)
    test_images, labels = vqlib.load_split("test")
    bits = prior.bits(test_images[:5], classes=labels[:5])
    expected = bits_per_image(prior.model, prior.vqvae.encode(test_images[:5]), labels[:5])
    assert bits.dtype == torch.float64 and torch.allclose(bits, expected)
    with torch.no_grad():
        direct = prior.model.log_prob(codes, torch.full((6,), vqlib.CLASSES.index("Trouser"))).double()
    assert torch.allclose(prior.log_prob(codes, classes="Trouser"), direct)
    assert (prior.bits(test_images[:5]) > 0).all()
    with pytest.raises(ConfigError):
        prior.sample(2, classes="Spaceship")
    row = vqlib.list_pretrained().set_index("name").loc["K100_D64_prior"]
    assert (row["kind"], row["K"], row["D"], row["vqvae"]) == ("prior", 100, 64, "K100_D64")


# ----------------------------------------------------------------------------- the README's quickstart


def quickstart_code(readme: Path) -> str:
    """The first ```python block after the line `## Python quickstart` of `readme`; fails the test when there is none."""
    text = readme.read_text()
    lines = text.splitlines()
    if QUICKSTART_HEADING not in (line.rstrip() for line in lines):
        pytest.fail(f"{readme.name} has no '{QUICKSTART_HEADING}' section, so its quickstart cannot be run")
    after = text[text.index(QUICKSTART_HEADING + "\n") + len(QUICKSTART_HEADING) :]
    found = re.search(r"^```python[ \t]*\n(.*?)^```", after, re.S | re.M)
    if not found:
        pytest.fail(f"the '{QUICKSTART_HEADING}' section of {readme.name} has no ```python block")
    return found.group(1)


QUICKSTART = """import vqlib

vqvae = vqlib.load_pretrained("K100_D64")                 # the chosen VQ-VAE, eval mode, on the CPU
classifier = vqlib.load_pretrained("K100_D64_all_frozen")  # the classifier on its frozen code

images, labels = vqlib.load_split("test")    # uint8 (10000, 28, 28), int64 (10000,)
batch = images[:8]
codes = vqvae.encode(batch)                  # int64 (8, 12, 12): indices into the 100-entry codebook
recon = vqvae.decode(codes)                  # float32 (8, 1, 28, 28) in [0, 1]
print(vqlib.psnr(batch, recon))              # dB, about 28
print(classifier.classify(batch))            # ['Ankle boot', 'Pullover', ...]
print([vqlib.CLASSES[i] for i in labels[:8]])
"""


def run_quickstart(readme: Path, capsys) -> str:
    exec(compile(quickstart_code(readme), f"{readme.name} quickstart", "exec"), {"__name__": "__quickstart__"})
    return capsys.readouterr().out


def test_the_readme_quickstart_runs(capsys):
    out = run_quickstart(REPO / "README.md", capsys)
    assert out.strip(), "the README's quickstart printed nothing"


def test_the_quickstart_runner_runs_a_quickstart_and_fails_without_one(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text(
        f"# vqlib\n\n```python\nraise SystemExit('not this block')\n```\n\n{QUICKSTART_HEADING}\n\n"
        f"Some words.\n\n```python\n{QUICKSTART}```\n\n```python\nraise SystemExit('nor this')\n```\n"
    )
    out = run_quickstart(readme, capsys).splitlines()
    assert 26 < float(out[0]) < 30
    assert out[1].startswith("['Ankle boot', 'Pullover'") and out[2].startswith("['Ankle boot', 'Pullover'")
    readme.write_text("# vqlib\n\n## Install\n\n```python\nimport vqlib\n```\n")
    with pytest.raises(pytest.fail.Exception, match="README.md has no '## Python quickstart' section"):
        quickstart_code(readme)
    readme.write_text(f"# vqlib\n\n{QUICKSTART_HEADING}\n\n```bash\nvqlib run\n```\n")
    with pytest.raises(pytest.fail.Exception, match="has no ```python block"):
        quickstart_code(readme)
    # A failing quickstart fails the test.
    readme.write_text(f"{QUICKSTART_HEADING}\n\n```python\nimport vqlib\nvqlib.load_pretrained('NOPE')\n```\n")
    with pytest.raises(CheckpointError):
        run_quickstart(readme, capsys)


def test_read_only_and_strided_arrays_are_taken_as_they_are(vqvae, test_images):
    import warnings

    images = test_images[0][:2].numpy()
    frozen = images.copy()
    frozen.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns when it is handed a read-only array
        assert torch.equal(vqvae.encode(frozen), vqvae.encode(images))
    flipped = images[:, :, ::-1]
    assert torch.equal(vqvae.encode(flipped), vqvae.encode(np.ascontiguousarray(flipped)))
