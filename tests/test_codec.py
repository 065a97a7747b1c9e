"""The code as a lossy codec: JPEG and WebP with and without headers, the prior's bits, the CLI.

Real data throughout: small stratified subsets of the FashionMNIST test split,
the published VQ-VAEs, and a tiny prior trained here in seconds.
"""

from __future__ import annotations

import io
import math
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from tests.conftest import REPO, train_tiny_prior
from vqlib import codec
from vqlib.errors import ConfigError

PROTOCOL = str(REPO / "checkpoints" / "pretrained" / "K100_D64" / "best.pt")


@pytest.fixture(scope="module")
def images(data):
    return codec.codec_images(data, 60)[0]


@pytest.fixture(scope="module")
def conditional_prior(data, tmp_path_factory):
    """A class-conditional prior (class dropout on) trained for one epoch on 160 real codes of K100_D64."""
    return train_tiny_prior(data, tmp_path_factory.mktemp("prior"), PROTOCOL, class_conditional=True).best_checkpoint


@pytest.mark.parametrize("fmt", codec.FORMATS)
def test_higher_quality_costs_more_bits_and_distorts_less(images, fmt):
    low, high = codec.pillow_row(images, fmt, 10), codec.pillow_row(images, fmt, 95)
    assert high["psnr"] > low["psnr"] + 5 and high["mse"] < low["mse"]
    assert high["bits_per_image"] > low["bits_per_image"]
    for row in (low, high):
        assert row["bits_per_image"] > row["payload_bits_per_image"] > 0
        assert row["bits_per_image"] == pytest.approx(row["payload_bits_per_image"] + row["header_bits_per_image"])
        assert row["images"] == len(images) and 10 < row["psnr"] < 60


def test_the_header_is_what_the_image_does_not_change(images):
    """With JPEG's standard tables the header (SOI, APP0, DQT, SOF, DHT, SOS, EOI) is the same bytes for every
    image of one quality, and the payload is all that differs; WebP's header is its 30 bytes of containers."""
    files = []
    for image in images[:20].numpy():
        buffer = io.BytesIO()
        Image.fromarray(image, mode="L").save(buffer, "JPEG", quality=50)
        files.append(buffer.getvalue())
    headers = [codec.jpeg_header_bytes(f) for f in files]
    assert len(set(headers)) == 1
    scan = headers[0] - 2  # the EOI marker ends the file; the scan data starts here
    assert len({f[:scan] for f in files}) == 1 and len({f[scan:-2] for f in files}) == 20
    assert files[0][scan - 10 : scan - 8] == b"\xff\xda"  # the start-of-scan segment of one component: 10 bytes
    sizes, webp_headers, decoded = codec.pillow_round_trip(images[:5], "WEBP", 50)
    assert set(webp_headers) == {30} and decoded.dtype == torch.uint8 and decoded.shape == (5, 28, 28)
    with pytest.raises(ConfigError, match="not a whole JPEG"):
        codec.jpeg_header_bytes(files[0][:-2])
    with pytest.raises(ConfigError, match="not a WebP"):
        codec.webp_header_bytes(files[0])


def test_distortion_is_the_projects_psnr():
    a = torch.zeros(2, 28, 28, dtype=torch.uint8)
    b = a.clone()
    b[0] = 255  # the first image all wrong (MSE 1), the second exact
    measured = codec.distortion(a, b)
    assert measured["mse"] == pytest.approx(0.5) and measured["psnr"] == pytest.approx(10 * math.log10(2))
    assert measured["psnr_mean_per_image"] == pytest.approx((0 + 120) / 2)
    with pytest.raises(ConfigError):
        codec.distortion(a, b.float())


def test_the_priors_rate_is_its_unconditional_nll(data, images, conditional_prior):
    from vqlib.classify import encode_codes
    from vqlib.prior import bits_per_image, load_pair

    ours, fixed = codec.prior_rows(conditional_prior, data, test_subset=60)
    prior, vqvae, _ = load_pair(conditional_prior)
    codes = encode_codes(vqvae, images)
    unconditional = bits_per_image(prior, codes, classes=None)
    assert ours["bits_per_image"] == pytest.approx(unconditional.mean().item(), rel=1e-9)
    # A codec does not know the class: the class-conditional likelihood is another number (per image).
    conditional = bits_per_image(prior, codes, classes=codec.codec_images(data, 60)[1])
    assert not torch.allclose(conditional, unconditional, rtol=0, atol=1e-4)
    assert ours["class_conditional_prior"] is True and ours["kind"] == "prior" and ours["header_bits_per_image"] == 0
    assert fixed["bits_per_image"] == pytest.approx(144 * math.log2(100)) and fixed["psnr"] == ours["psnr"]
    # The distortion is the VQ-VAE's reconstruction of these images, rounded to 8 bits: the model's PSNR within 0.05 dB.
    with torch.no_grad():
        recon = vqvae.decode_indices(codes.long()).clamp(0, 1)
    exact = -10 * math.log10(((recon[:, 0].double() - images.double() / 255) ** 2).mean().item())
    assert ours["psnr"] == pytest.approx(exact, abs=0.05)


def test_cli_writes_the_table_and_the_figure(conditional_prior, tmp_path, capsys):
    from vqlib.cli import main

    out = tmp_path / "codec"
    args = ["rate-distortion", "--prior", str(conditional_prior), "--test-subset", "30", "--qualities", "10,95"]
    assert main([*args, "--results-dir", str(out)]) == 0
    table = pd.read_csv(out / codec.TABLE_FILE)
    assert list(table["codec"]) == [codec.PRIOR_CODEC, codec.FIXED_CODEC, "JPEG", "JPEG", "WEBP", "WEBP"]
    assert (table["images"] == 30).all() and np.isfinite(table["psnr"]).all()
    assert (out / codec.FIGURE_FILE).stat().st_size > 10_000
    assert "table:" in capsys.readouterr().out


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--qualities", "5,200"], "qualities must be integers from 0 to 100"),
        (["--formats", "PNG"], "formats must be among JPEG, WEBP"),
        (["--test-subset", "5"], "test_subset must be an integer from 10"),
    ],
)
def test_cli_refuses_bad_input_in_one_sentence_and_writes_nothing(conditional_prior, tmp_path, capsys, extra, message):
    from vqlib.cli import main

    out = tmp_path / "codec"
    assert main(["rate-distortion", "--prior", str(conditional_prior), *extra, "--results-dir", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not out.exists()


def test_cli_refuses_a_missing_prior(tmp_path, capsys):
    from vqlib.cli import main

    out = tmp_path / "codec"
    assert main(["rate-distortion", "--prior", str(tmp_path / "none.pt"), "--results-dir", str(out)]) == 2
    assert "no checkpoint at" in capsys.readouterr().err and not out.exists()


def test_publish_takes_the_comparison_of_published_priors_and_of_the_projects_own(conditional_prior, project, capsys):
    """`vqlib publish`'s codec stage: a table of a prior outside the project is refused in one sentence (nobody
    could find it), one of a prior file of the project is published with its path made relative and the weights'
    digest it was measured with, and refused once that file holds other weights; one of pretrained:NAME priors is
    published as written, and a rerun writes nothing."""
    from vqlib.cli import main
    from vqlib.prior import load_prior, weights_digest
    from vqlib.publish import _publish_codec, published_codec_dir

    for name in ("K100_D64", "K100_D64_prior"):
        shutil.copytree(REPO / "checkpoints" / "pretrained" / name, project / "checkpoints" / "pretrained" / name)
    args = ["rate-distortion", "--test-subset", "30", "--qualities", "10", "--formats", "WEBP"]
    assert main([*args, "--prior", str(conditional_prior)]) == 0
    refused = _publish_codec()
    assert not refused.published and "outside this project" in refused.note and "vqlib publish --prior" in refused.note
    assert not published_codec_dir().exists()

    own = project / "checkpoints" / "prior" / "K100_D64_tiny" / "best.pt"
    own.parent.mkdir(parents=True)
    shutil.copy(conditional_prior, own)
    assert main([*args, "--prior", str(own)]) == 0
    capsys.readouterr()
    done = _publish_codec()
    assert done.published and "1 prior(s) by their files, not published (checkpoints/prior/K100_D64_tiny/best.pt)" in (
        done.note
    ), done.note
    text = (published_codec_dir() / codec.TABLE_FILE).read_text()
    assert str(project) not in text
    table = pd.read_csv(published_codec_dir() / codec.TABLE_FILE)
    rows = table[table["kind"] == "prior"]
    assert list(rows["source"]) == ["checkpoints/prior/K100_D64_tiny/best.pt"]
    assert list(rows["prior_weights_sha256"]) == [weights_digest(load_prior(own)[0])]
    shutil.copy(REPO / "checkpoints" / "pretrained" / "K100_D64_prior" / "best.pt", own)  # other weights now
    changed = _publish_codec()
    assert not changed.published and "has other weights than" in changed.note, changed.note
    table_file = project / "results" / "codec" / codec.TABLE_FILE  # as an older vqlib wrote it: no digests
    pd.read_csv(table_file).drop(columns="prior_weights_sha256").to_csv(table_file, index=False)
    older = _publish_codec()
    assert not older.published and "predates prior_weights_sha256" in older.note, older.note

    assert main([*args, "--prior", "pretrained:K100_D64_prior"]) == 0
    capsys.readouterr()
    done = _publish_codec()
    assert done.published and "2 file(s) written" in done.note, done.note
    for name in (codec.TABLE_FILE, codec.FIGURE_FILE):
        assert (published_codec_dir() / name).read_bytes() == (project / "results" / "codec" / name).read_bytes()
    table = pd.read_csv(published_codec_dir() / codec.TABLE_FILE)
    assert set(table[table["kind"] != "image codec"]["source"]) == {"pretrained:K100_D64_prior"}
    assert _publish_codec().note.endswith("(up to date)")
