"""How good a prior's samples are (vqlib.generation): real data, tiny sizes.

The protocol VQ-VAE (K100_D64) encodes small subsets of FashionMNIST and the
classifier on pixels trains for one epoch on 300 images, so each test takes
seconds. The per-position baseline and the prior's own side are tested in
tests/test_prior.py; notebook 06 as a whole in tests/test_notebooks.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import REPO
from vqlib.config import GenerationConfig
from vqlib.errors import ConfigError

PROTOCOL = str(REPO / "checkpoints" / "pretrained" / "K100_D64" / "best.pt")


def pooled_pixels(images: torch.Tensor) -> np.ndarray:
    """Real images as 49 features: 4 x 4 average pools of the pixels in [0, 1]."""
    x = images.float().div(255).view(-1, 1, 28, 28)
    return torch.nn.functional.avg_pool2d(x, 4).flatten(1).double().numpy()


@pytest.fixture(scope="module")
def protocol(data):
    """The protocol VQ-VAE and the codes of 2,000 training images (classes balanced) and 500 test images."""
    from vqlib.checkpoints import load_vqvae
    from vqlib.prior import split_codes

    vqvae, _ = load_vqvae(PROTOCOL)
    train = split_codes(vqvae, data, "train", 2000, 0)
    test = split_codes(vqvae, data, "test", 500, 0)
    return vqvae, train, test


# ----------------------------------------------------------------------------- the Fréchet distance


def test_frechet_distance_is_zero_for_a_set_with_itself_and_the_squared_shift_for_a_shift(data):
    from vqlib.generation import frechet_distance

    x = pooled_pixels(data.test_images[:1000])
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-9)
    shift = np.full(x.shape[1], 0.05)
    # The covariances are equal, so only |mu_a - mu_b|^2 remains: exactly the squared shift.
    assert frechet_distance(x, x + shift) == pytest.approx(float(shift @ shift), rel=1e-6)
    grows = [frechet_distance(x, x + s * shift) for s in (0.5, 1, 2, 4)]
    assert grows == sorted(grows) and grows[0] > 0
    # Two halves of the test set are far closer than two classes are.
    labels = data.test_labels[:1000].numpy()
    halves = frechet_distance(x[:500], x[500:])
    classes = frechet_distance(x[labels == 1], x[labels == 9])  # trousers against ankle boots
    assert 0 < halves < classes / 10
    # A spread of another shape counts too: the same mean, twice the deviation.
    doubled = 2 * (x - x.mean(0)) + x.mean(0)
    assert frechet_distance(x, doubled) == pytest.approx(np.trace(np.cov(x, rowvar=False)), rel=1e-6)


def test_frechet_distance_refuses_sets_it_cannot_compare():
    from vqlib.generation import frechet_distance

    with pytest.raises(ConfigError, match="two sets of at least 2"):
        frechet_distance(np.zeros((5, 3)), np.zeros((5, 4)))
    with pytest.raises(ConfigError):
        frechet_distance(np.zeros((1, 3)), np.zeros((5, 3)))


# ----------------------------------------------------------------------------- memorisation


def test_a_training_image_is_its_own_nearest_training_image_at_distance_zero(data):
    from vqlib.generation import nearest_neighbours

    train = data.train_images
    queries = train[[0, 7, 12_345, 54_999]]
    distances, indices = nearest_neighbours(queries, train, device="cpu", progress=False)
    assert np.array_equal(distances, np.zeros(4))
    assert torch.equal(train[torch.from_numpy(indices)], queries)  # itself, or an identical image
    # One pixel changed by 51/255 = 0.2: the distance is exactly that change.
    changed = queries.clone()
    changed[:, 14, 14] = torch.where(changed[:, 14, 14] > 127, changed[:, 14, 14] - 51, changed[:, 14, 14] + 51)
    distances, _ = nearest_neighbours(changed, train, device="cpu", progress=False)
    assert distances == pytest.approx(np.full(4, 0.2), abs=1e-12)
    # A test image is not in the training split.
    distances, _ = nearest_neighbours(data.test_images[:50], train, device="cpu", progress=False)
    assert (distances > 0).all()


def test_copied_codes_and_the_memorisation_table(protocol):
    from vqlib.generation import copied_codes, memorisation_table

    _, (train_codes, _), (test_codes, _) = protocol
    assert copied_codes(train_codes[:50], train_codes).all()
    assert copied_codes(test_codes, train_codes).mean() < 0.05
    rng = np.random.default_rng(0)
    held_out, copies = rng.uniform(2, 5, 1000), rng.uniform(0, 1, 1000)
    table = memorisation_table({"held out": held_out, "copies": copies}, reference="held out").set_index("set")
    assert table.loc["held out", "share_below_held out_p1"] == pytest.approx(0.01, abs=0.002)
    assert table.loc["copies", "share_below_held out_p1"] == 1.0
    with pytest.raises(ConfigError, match="reference set"):
        memorisation_table({"a": held_out}, reference="b")


# ----------------------------------------------------------------------------- the per-position model


def test_samples_are_decoded_uint8_images_balanced_over_classes(protocol):
    from vqlib.generation import draw_samples, samples_by_class
    from vqlib.prior import fit_position_prior

    vqvae, (train_codes, train_labels), _ = protocol
    model = fit_position_prior(train_codes, 100, train_labels)
    samples = draw_samples(model, vqvae, 25, conditional=True, seed=3, batch_size=10, progress=False)
    assert samples.images.dtype == torch.uint8 and samples.images.shape == (25, 28, 28)
    assert torch.bincount(samples.classes).tolist() == [3] * 5 + [2] * 5
    again = draw_samples(model, vqvae, 25, conditional=True, seed=3, batch_size=10, progress=False)
    assert torch.equal(samples.codes, again.codes)
    assert samples_by_class(samples, 2).shape == (10, 2, 28, 28)
    assert draw_samples(model, vqvae, 10, conditional=False, progress=False).classes is None


# ----------------------------------------------------------------------------- the classifier on pixels


def test_the_pixel_classifier_is_trained_once_and_judges_per_class(project, data, protocol):
    from vqlib.generation import (
        Samples,
        cached_pixel_classifier,
        class_accuracy_table,
        judge_images,
        pixel_classifier_cache,
        published_pixel_classifiers,
        real_pixel_classifier,
        sample_trained_classifier,
    )

    settings = dict(train_subset=300, val_subset=100, epochs=1, patience=1, device="cpu", progress=False)
    first = real_pixel_classifier(data, **settings)
    assert first.checkpoint.is_file() and first.checkpoint.is_relative_to(project / "checkpoints" / "pixel-classifier")
    raw = torch.load(first.checkpoint, weights_only=True)
    assert raw["kind"] == "pixel_classifier" and raw["model_config"]["train_images"] == 300
    stamp = first.checkpoint.stat().st_mtime_ns
    again = real_pixel_classifier(data, **settings)  # loaded, not trained again
    assert first.checkpoint.stat().st_mtime_ns == stamp and again.record == first.record
    for name, tensor in first.model.state_dict().items():
        assert torch.equal(tensor, again.model.state_dict()[name]), name
    # Publishing finds the cached file by its record; a published one with the settings asked for is used as is.
    assert cached_pixel_classifier(first.summary) == first.checkpoint
    assert cached_pixel_classifier({**first.summary, "written": "another training"}) is None
    published = published_pixel_classifiers() / first.checkpoint.parent.name / "best.pt"
    published.parent.mkdir(parents=True)
    first.checkpoint.rename(published)
    from_published = real_pixel_classifier(data, **settings)
    assert from_published.checkpoint == published and from_published.record == first.record
    assert not list(pixel_classifier_cache().glob("*/best.pt"))  # not trained again
    other = real_pixel_classifier(data, **{**settings, "val_subset": 50})  # other settings: trained, cached
    assert other.checkpoint.is_relative_to(pixel_classifier_cache())
    test = data.test_images[:200], data.test_labels[:200]
    judged = judge_images(again.model, {"test": test, "unlabelled": (test[0], None)})
    assert judged["test"].features.shape == (200, 128) and (judged["test"].features >= 0).all()  # after the ReLU
    table = class_accuracy_table(judged)
    assert list(table.columns) == ["test"] and len(table) == 11
    assert table.loc["all", "test"] == pytest.approx((judged["test"].predicted == test[1].numpy()).mean())
    unconditional = Samples(test[0], torch.zeros(200, 12, 12, dtype=torch.long), None)
    with pytest.raises(ConfigError, match="class-conditional samples"):
        sample_trained_classifier(unconditional, unconditional, data, epochs=1, patience=1, device="cpu")


def test_the_guidance_table_measures_each_weight_and_chooses_the_smallest_distance(project, data, protocol):
    """Each row is what its weight's samples score with the judge; the choice is the row of the smallest Fréchet
    distance to the reference (validation) features."""
    from vqlib.generation import (
        chosen_guidance,
        classifier_outputs,
        draw_samples,
        frechet_distance,
        guidance_table,
        real_pixel_classifier,
    )
    from vqlib.prior import fit_position_prior

    vqvae, (train_codes, train_labels), _ = protocol
    baseline = fit_position_prior(train_codes, 100, train_labels)
    judge = real_pixel_classifier(data, train_subset=300, val_subset=100, epochs=1, patience=1, device="cpu",
                                  progress=False).model  # fmt: skip
    reference, _ = classifier_outputs(judge, data.val_images[:300])
    table = guidance_table(baseline, vqvae, judge, reference, [0, 3], num=100, seed=5, progress=False)
    assert list(table["guidance"]) == [0.0, 3.0] and (table["samples"] == 100).all()
    plain = draw_samples(baseline, vqvae, 100, conditional=True, seed=5, progress=False)
    features, predicted = classifier_outputs(judge, plain.images)
    assert table.loc[0, "frechet_distance"] == pytest.approx(frechet_distance(features, reference))
    assert table.loc[0, "judged_accuracy"] == pytest.approx((predicted == plain.classes.numpy()).mean())
    assert table.loc[0, "frechet_distance"] != table.loc[1, "frechet_distance"]  # guidance changed the samples
    assert chosen_guidance(table) == table.loc[table["frechet_distance"].idxmin(), "guidance"]
    assert (table["lowest_class_accuracy"] <= table["judged_accuracy"]).all()


# ----------------------------------------------------------------------------- the prior notebook 06 measures


def test_position_bits_of_a_network_sum_to_its_bits_per_image(protocol):
    from vqlib.generation import likelihood_table, test_position_bits
    from vqlib.models.prior import PriorTransformer
    from vqlib.prior import bits_per_image, fit_position_prior

    _, (train_codes, train_labels), (test_codes, test_labels) = protocol
    torch.manual_seed(0)
    network = PriorTransformer(100, layers=1, heads=2, width=16, dropout=0.0).eval()
    baseline = fit_position_prior(train_codes, 100, train_labels)
    bits = test_position_bits(network, baseline, test_codes[:60], test_labels[:60], conditional=True, progress=False)
    assert list(bits) == [
        "per-position model",
        "per-position model, given the class",
        "prior without a class",
        "prior, given the class",
    ]
    # float32 log-probabilities summed in two orders: equal to a few parts in 10^7.
    torch.testing.assert_close(
        bits["prior, given the class"].sum(1),
        bits_per_image(network, test_codes[:60], test_labels[:60]),
        rtol=1e-5,
        atol=0,
    )
    table = likelihood_table(bits, 100).set_index("model")
    assert table.loc["uniform over K=100 codes", "bits_per_image"] == pytest.approx(144 * np.log2(100))
    # An untrained network is about uniform; counting alone saves a fifth of that.
    assert table.loc["prior without a class", "share_of_uniform"] == pytest.approx(1.0, abs=0.02)
    assert table.loc["per-position model", "share_of_uniform"] < 0.85


@pytest.mark.parametrize(
    "field, value, words",
    [
        ("nearest_images", 20_000, "nearest_images"),
        ("num_samples", 5, "at least 10"),
        ("reference_images", 6000, "reference_images must be an integer from 10"),
        ("cas_train_size", 60_000, "cas_train_size must be at most 55,000"),
        ("completion_rows", 13, "completion_rows"),
        ("temperature", 0, "temperature must be positive"),
        ("guidance", -1.0, "guidance must be a number of at least 0"),
        ("guidance_values", "0,x", "guidance_values must be comma-separated numbers"),
        ("guidance_samples", 5, "guidance_samples must be 0"),
    ],
)
def test_generation_settings_are_refused_in_one_sentence(field, value, words):
    with pytest.raises(ConfigError, match=words) as refused:
        GenerationConfig(**{field: value})
    assert "\n" not in str(refused.value)
