"""vqlib.analysis on the real test images with a small VQ-VAE (a few training steps, no notebook)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from vqlib import analysis, claims
from vqlib.config import VQVAEConfig
from vqlib.data import CLASS_NAMES, NUM_CLASSES, class_examples
from vqlib.errors import ConfigError
from vqlib.models import VQVAE


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return VQVAE(
        VQVAEConfig(num_embeddings=16, embedding_dim=8, hidden_channels=16, residual_channels=8, num_residual_blocks=2)
    ).eval()


@pytest.fixture(scope="module")
def sample(data):
    idx = analysis.stratified_sample(data.test_labels, 300, seed=0)
    return data.test_images[idx], data.test_labels[idx].numpy()


def test_stratified_sample_is_balanced_exact_and_seeded(data):
    idx = analysis.stratified_sample(data.test_labels, 205, seed=3)
    assert len(idx) == 205 and len(np.unique(idx)) == 205
    per_class = np.bincount(data.test_labels[idx].numpy(), minlength=NUM_CLASSES)
    assert per_class.max() - per_class.min() <= 1
    assert np.array_equal(idx, analysis.stratified_sample(data.test_labels, 205, seed=3))
    assert not np.array_equal(idx, analysis.stratified_sample(data.test_labels, 205, seed=4))
    assert len(analysis.stratified_sample(data.test_labels, None)) == len(data.test_labels)


def test_encode_split_shapes_and_pooled_equals_mean_of_encoder(model, sample):
    images, labels = sample
    encoded = analysis.encode_split(model, images, labels, batch_size=128)
    assert encoded.indices.shape == (300, 12, 12) and encoded.pooled.shape == (300, 8)
    assert int(encoded.indices.min()) >= 0 and int(encoded.indices.max()) < 16
    with torch.no_grad():
        z = model.encoder(images[:3].unsqueeze(1).float() / 255)
    np.testing.assert_allclose(encoded.pooled[:3], z.mean(dim=(2, 3)).numpy(), rtol=1e-4, atol=1e-5)


def test_tsne_embedding_is_2d_and_seeded(model, sample):
    images, labels = sample
    pooled = analysis.encode_split(model, images[:60], labels[:60]).pooled
    a = analysis.tsne_embedding(pooled, seed=1, perplexity=30)
    assert a.shape == (60, 2) and np.isfinite(a).all()
    np.testing.assert_allclose(a, analysis.tsne_embedding(pooled, seed=1, perplexity=30))
    # Another seed is another t-SNE run (with PCA initialisation seeds 1 and 2 gave the same map).
    assert not np.allclose(a, analysis.tsne_embedding(pooled, seed=2, perplexity=30))
    with pytest.raises(ConfigError):
        analysis.tsne_embedding(pooled[:3])


def test_code_counts_and_specific_codes():
    # Class 0 images use code 1 only; class 1 images use codes 1 and 2 half-half.
    indices = torch.zeros(4, 12, 12, dtype=torch.long)
    indices[0:2] = 1
    indices[2:4, :6] = 1
    indices[2:4, 6:] = 2
    labels = np.array([0, 0, 1, 1])
    counts = analysis.code_counts_per_class(indices, labels, num_embeddings=3)
    assert counts.shape == (NUM_CLASSES, 3)
    assert counts[0].tolist() == [0, 288, 0] and counts[1].tolist() == [0, 144, 144]
    freq = analysis.code_frequencies(counts)
    np.testing.assert_allclose(freq[:2].sum(axis=1), 1.0)
    assert freq[2:].sum() == 0  # classes without images stay empty
    table = analysis.class_specific_codes(counts, top=2)
    class1 = table[table["class"] == CLASS_NAMES[1]]
    # Code 2 is used by class 1 alone: specificity 1, ranked first; code 1 is shared 288 : 144.
    assert class1["code"].tolist() == [2, 1]
    assert class1["specificity"].tolist() == pytest.approx([1.0, 144 / 432])
    assert table[table["class"] == CLASS_NAMES[0]]["code"].tolist() == [1]


def test_receptive_field_matches_the_encoders_gradient(model):
    field = analysis.receptive_field(model.encoder)
    # conv 4x4/2 pad 1, conv 3x3, two residual 3x3 convs at stride 2, 1x1 convs: 4 + 2*2 + 2*(2*2) = 16.
    assert (field.size, field.stride) == (16, 2)
    x = torch.rand(1, 1, 28, 28, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    for row, col in [(5, 6), (0, 0), (11, 3)]:
        x.grad = None
        model.encoder(x)[0, :, row, col].sum().backward()
        ys, xs = np.nonzero(x.grad[0, 0].abs().numpy() > 0)
        top, left = field.first(row), field.first(col)
        assert ys.min() >= max(top, 0) and ys.max() <= min(top + field.size, 28) - 1
        assert xs.min() >= max(left, 0) and xs.max() <= min(left + field.size, 28) - 1
        if row == 5:  # an interior cell reaches the window's edges exactly
            assert (ys.min(), ys.max()) == (top, top + field.size - 1)
            assert (xs.min(), xs.max()) == (left, left + field.size - 1)


def test_cell_patch_crops_with_zero_padding():
    field = analysis.ReceptiveField(size=16, stride=2, offset=2.5)
    image = np.arange(28 * 28, dtype=np.int64).reshape(28, 28) + 1
    inner = analysis.cell_patch(image, 5, 6, field)
    assert np.array_equal(inner, image[5:21, 7:23])
    corner = analysis.cell_patch(image, 0, 0, field)
    assert (corner[:5].sum(), corner[:, :5].sum()) == (0, 0)
    assert np.array_equal(corner[5:, 5:], image[:11, :11])


def test_code_patches_come_from_cells_using_the_code(model, sample):
    images, labels = sample
    encoded = analysis.encode_split(model, images, labels)
    field = analysis.receptive_field(model.encoder)
    code = int(torch.bincount(encoded.indices.reshape(-1)).argmax())
    patches, where = analysis.code_patches(images, encoded.indices, code, field, count=5, seed=0)
    assert patches.shape == (5, 16, 16) and len({i for i, _, _ in where}) == 5
    for patch, (i, r, c) in zip(patches, where, strict=True):
        assert int(encoded.indices[i, r, c]) == code
        assert np.array_equal(patch, analysis.cell_patch(images[i].numpy(), r, c, field))
    specific = analysis.class_specific_codes(
        analysis.code_counts_per_class(encoded.indices, labels, 16), top=2, min_share=0.0
    )
    rows, row_labels = analysis.specific_code_patches(
        images, encoded.indices, specific, field, labels=labels, classes=3, per_code=4
    )
    assert 1 <= len(rows) == len(row_labels) <= 3 and all(r.shape[1:] == (16, 16) for r in rows)
    assert len({label.split(":")[0] for label in row_labels}) == len(row_labels)  # each code once


def test_per_class_errors_sorted_and_consistent(model, sample):
    images, labels = sample
    errors = analysis.per_image_mse(model, images, batch_size=64)
    assert errors.shape == (300,) and (errors > 0).all()
    x = images[:4].unsqueeze(1).float() / 255
    with torch.no_grad():
        expected = (model(x).reconstruction - x).pow(2).mean(dim=(1, 2, 3)).numpy()
    np.testing.assert_allclose(errors[:4], expected, rtol=1e-4)
    table = analysis.per_class_errors(errors, labels)
    assert list(table["rank"]) == list(range(1, 11))
    assert table["mse_mean"].is_monotonic_increasing
    assert table["images"].sum() == 300
    trouser = table.set_index("class").loc["Trouser", "mse_mean"]
    assert trouser == pytest.approx(errors[labels == 1].mean())


# ----------------------------------------------------------------------------- the original study's claims


def test_knn_correct_separates_islands_and_drops_only_itself():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 30)
    islands = rng.normal(size=(90, 2)) * 0.1 + labels[:, None] * 10.0
    assert claims.knn_correct(islands, labels, k=10).all()
    # Duplicated points: a point need not be its own first neighbour, and the result is still exact.
    doubled = np.concatenate([islands, islands])
    assert claims.knn_correct(doubled, np.concatenate([labels, labels]), k=10).all()
    # Each point of a two-point class sees one of its class among 3 neighbours: the vote goes to the others.
    tiny = np.array([[0.0], [0.1], [5.0], [5.1], [5.2], [5.3]])
    assert claims.knn_correct(tiny, np.array([0, 0, 1, 1, 1, 1]), k=3).tolist() == [False] * 2 + [True] * 4
    noise = rng.normal(size=(400, 5))
    assert abs(claims.knn_correct(noise, rng.integers(0, 10, 400), k=10).mean() - 0.1) < 0.06
    with pytest.raises(ConfigError):
        claims.knn_correct(islands[:5], labels[:5], k=10)


def test_tsne_claim_verdicts_follow_the_pixel_reference():
    rng = np.random.default_rng(0)
    pixels = rng.random(2000) < 0.75
    same = claims.tsne_claim(code_map=pixels.copy(), code_space=pixels, pixel_map=pixels, pixel_space=pixels)
    assert same["verdict"] == "agrees" and "already in the pixels" in same["sentence"]
    assert same["numbers"]["knn_accuracy"]["code_map"] == pytest.approx(pixels.mean())
    worse = claims.tsne_claim(code_map=rng.random(2000) < 0.6, code_space=pixels, pixel_map=pixels, pixel_space=pixels)
    assert worse["verdict"] == "partly" and worse["numbers"]["map_difference_interval"][1] < 0
    # The measurement: the cell average's map at 0.43 against 0.75 for the pixels.
    average = claims.tsne_claim(
        code_map=rng.random(2000) < 0.4, code_space=pixels, pixel_map=pixels, pixel_space=pixels
    )
    assert average["verdict"] == "disagrees"
    assert set(same) == {"name", "seed_words", "numbers", "definition", "verdict", "sentence"}
    with pytest.raises(ConfigError, match="same images"):
        claims.tsne_claim(code_map=pixels[:10], code_space=pixels, pixel_map=pixels, pixel_space=pixels)


def test_normalized_mutual_information_equals_scikit_learns():
    from sklearn.metrics import normalized_mutual_info_score

    rng = np.random.default_rng(1)
    labels = rng.integers(0, NUM_CLASSES, 200)
    indices = torch.from_numpy((labels[:, None, None] + rng.integers(0, 6, (200, 12, 12))) % 16)
    counts = analysis.code_counts_per_class(indices, labels, 16)
    cells_class = np.repeat(labels, 144)
    expected = normalized_mutual_info_score(cells_class, indices.reshape(-1).numpy())
    assert claims.normalized_mutual_information(counts) == pytest.approx(expected, rel=1e-9)


def test_codebook_usage_claim_against_shuffled_labels():
    rng = np.random.default_rng(2)
    labels = np.repeat(np.arange(NUM_CLASSES), 30)
    # Background code 10 everywhere; each class also uses its own code in a quarter of its cells.
    indices = torch.full((300, 12, 12), 10, dtype=torch.long)
    indices[:, :3, :] = torch.from_numpy(labels)[:, None, None]
    indices[:, 6:, :] = torch.from_numpy(rng.integers(11, 20, (300, 6, 12)))
    owned = claims.codebook_usage_claim(indices, labels, 20, shuffles=20)
    assert owned["verdict"] == "agrees"
    assert owned["numbers"]["specialised_codes"] == 10 and owned["numbers"]["specialised_codes_shuffled_max"] == 0
    assert owned["numbers"]["specialised_share_of_cells"] == pytest.approx(0.25)
    shared = torch.from_numpy(rng.integers(0, 20, (300, 12, 12)))
    assert claims.codebook_usage_claim(shared, labels, 20, shuffles=20)["verdict"] == "disagrees"


def test_codebook_usage_baseline_of_the_most_specific_code_is_the_largest_over_all_shuffles():
    rng = np.random.default_rng(5)
    labels = np.repeat(np.arange(NUM_CLASSES), 3)
    indices = torch.from_numpy(rng.integers(0, 40, (30, 12, 12)))
    claim = claims.codebook_usage_claim(indices, labels, 40, shuffles=30, seed=1)
    # The same shuffles, drawn as the claim draws them.
    shuffle_rng = np.random.Generator(np.random.PCG64(1))
    tops = [
        np.nanmax(
            claims.code_class_specificity(analysis.code_counts_per_class(indices, shuffle_rng.permutation(labels), 40))
        )
        for _ in range(30)
    ]
    assert max(tops) > tops[0]  # the first shuffle is not the largest: the case tells the two apart
    numbers = claim["numbers"]
    assert numbers["max_specificity_shuffled_max"] == pytest.approx(max(tops))
    assert numbers["max_specificity_shuffled_mean"] == pytest.approx(np.mean(tops))
    assert f"largest over the 30 shuffles: {max(tops):.2f}" in claim["sentence"]
    with pytest.raises(ConfigError, match="shuffle"):
        claims.codebook_usage_claim(indices, labels, 40, shuffles=0)


def _images(values) -> np.ndarray:
    return np.stack([np.full((1, 28, 28), v) for v in values])


def test_interpolation_numbers_of_a_crossfade_and_of_a_jump():
    rng = np.random.default_rng(3)
    a, b = rng.random((1, 28, 28)), rng.random((1, 28, 28))
    t = np.linspace(0, 1, 5)[:, None, None, None]
    fade = (1 - t) * a + t * b
    reference = np.stack([a.reshape(-1), b.reshape(-1)])
    numbers = claims.interpolation_path_numbers(fade, reference)
    assert numbers["step_ratio"] == pytest.approx(1.0) and numbers["crossfade_deviation_mean"] == pytest.approx(0.0)
    assert numbers["nn_path"] == pytest.approx(numbers["nn_crossfade"])
    jump = np.stack([a, a, a, b, b])  # every frame a real image, all the change in one step
    numbers = claims.interpolation_path_numbers(jump, reference)
    # nn_path: RMS distances computed through a matrix product, exact only to about 1e-8.
    assert numbers["step_ratio"] == pytest.approx(4.0) and numbers["nn_path"] == pytest.approx(0.0, abs=1e-6)
    # The reference is the two ends themselves here: nothing is left out of the search.
    fades = claims.interpolation_claim([fade, fade, fade], reference, ends=None)
    assert fades["verdict"] == "partly" and "close to a cross-fade" in fades["sentence"]
    jumps = claims.interpolation_claim([jump, jump, jump], reference, ends=None)
    assert jumps["verdict"] == "partly" and "not smooth" in jumps["sentence"]
    with pytest.raises(ConfigError):
        claims.interpolation_claim([fade], reference, ends=None)


def test_interpolation_nearest_real_image_leaves_out_the_paths_own_ends():
    rng = np.random.default_rng(6)
    a, b, other = (rng.random((1, 28, 28)) for _ in range(3))
    # A path that lingers at its ends: each interior frame is one of its own two end images.
    path = np.stack([a, a, a, b, b])
    reference = np.stack([x.reshape(-1) for x in (a, b, other)])
    with_ends = claims.interpolation_path_numbers(path, reference)
    assert with_ends["nn_path"] == pytest.approx(0.0, abs=1e-6)  # the old reference: the frames find themselves
    without = claims.interpolation_path_numbers(path, reference, exclude=(0, 1))
    to_other = [float(np.sqrt(((x - other) ** 2).mean())) for x in (a, a, b)]
    assert without["nn_path"] == pytest.approx(np.mean(to_other), rel=1e-6)
    claim = claims.interpolation_claim([path, path], reference, ends=[(0, 1), (0, 1)], n_boot=50)
    assert claim["numbers"]["per_path"][0]["nn_path"] == pytest.approx(without["nn_path"])
    assert claim["numbers"]["nn_reference_excludes_ends"] and "own two ends left out" in claim["sentence"]
    with pytest.raises(ConfigError, match="ends"):
        claims.interpolation_claim([path, path], reference, ends=[(0, 1)])
    with pytest.raises(ConfigError, match="own ends"):
        claims.interpolation_path_numbers(path, reference[:2], exclude=(0, 1))


def _errors(means: dict, cv: dict, per_class: int = 400, seed: int = 0):
    """Per-image errors with the given class means and coefficients of variation (gamma-distributed)."""
    rng = np.random.default_rng(seed)
    errors, labels = [], []
    for c, name in enumerate(CLASS_NAMES):
        shape = 1 / cv.get(name, 0.4) ** 2
        errors.append(rng.gamma(shape, means[name] / shape, per_class))
        labels.append(np.full(per_class, c))
    return np.concatenate(errors), np.concatenate(labels)


ORDER = ["Trouser", "Ankle boot", "Sandal", "Bag", "Dress", "Sneaker", "Coat", "T-shirt/top", "Pullover", "Shirt"]


def test_reconstruction_claim_agrees_when_clear():
    means = {name: 0.002 * (i + 1) for i, name in enumerate(ORDER)}
    errors, labels = _errors(means, {"Shirt": 0.8, "Pullover": 0.8, "Trouser": 0.3, "Ankle boot": 0.3})
    claim = claims.reconstruction_claim(errors, labels, n_boot=300)
    assert claim["verdict"] == "agrees", claim["sentence"]
    assert claim["numbers"]["best_named"]["Trouser"]["rank"] == 1
    assert claim["numbers"]["cv_ratio_complex_to_structured"] == pytest.approx(8 / 3, rel=0.15)
    assert [r["class"] for r in claim["numbers"]["per_class"]] == ORDER


def test_reconstruction_claim_counts_ties_rounding_and_the_mean_in_the_spread():
    # The quick model's case: Ankle boot 3rd but tied with Dress 4th; Pullover 7th (outside the worst 3);
    # the same CV everywhere, so the raw std of the worse classes is larger only because their mean is.
    order = ["Trouser", "Sandal", "Ankle boot", "Dress", "Bag", "Sneaker", "Pullover", "Coat", "T-shirt/top", "Shirt"]
    means = {name: 0.002 * (i + 1) for i, name in enumerate(order)}
    means["Dress"] = means["Ankle boot"] * 1.002
    errors, labels = _errors(means, {})
    claim = claims.reconstruction_claim(errors, labels, n_boot=300)
    numbers = claim["numbers"]
    assert numbers["best_named"]["Trouser"]["holds"] and not numbers["best_named"]["Ankle boot"]["holds"]
    assert numbers["worst_named"]["Shirt"]["holds"] and not numbers["worst_named"]["Pullover"]["holds"]
    assert not any(p["holds"] for p in numbers["variability_pairs"].values())
    assert claim["verdict"] == "partly"
    table = analysis.per_class_errors(errors, labels).set_index("class")
    assert table.loc["Shirt", "mse_std"] > 3 * table.loc["Trouser", "mse_std"]  # the raw std would have said yes
    reversed_means = {name: 0.002 * (10 - i) for i, name in enumerate(ORDER)}
    errors, labels = _errors(reversed_means, {"Trouser": 0.8, "Ankle boot": 0.8})
    assert claims.reconstruction_claim(errors, labels, n_boot=300)["verdict"] == "disagrees"
    with pytest.raises(ConfigError, match="lack the classes"):
        claims.reconstruction_claim(errors[labels != 6], labels[labels != 6])


def test_holm_adjusted_p_values():
    # Sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1, then the running maximum (Holm 1979).
    np.testing.assert_allclose(claims.holm_adjusted([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(claims.holm_adjusted([0.5, 0.9]), [1.0, 1.0])
    assert claims.bootstrap_p_value(0.0, np.array([-1.0, 1.0])) == pytest.approx(1.0)
    assert claims.bootstrap_p_value(1.96, np.array([-1.0, 1.0]) / np.std([-1.0, 1.0], ddof=1)) == pytest.approx(
        0.05, abs=1e-3
    )


def test_reconstruction_claim_corrects_its_eight_parts_for_multiple_comparisons():
    # Shirt and Pullover vary a little more than Trouser and Ankle boot: each of the four pairs' own 95% interval
    # lies above 0 (p 0.017 to 0.033), so uncorrected all eight parts hold; Holm's correction over the eight
    # leaves none of the four pairs.
    means = {name: 0.002 * (i + 1) for i, name in enumerate(ORDER)}
    cv = {"Shirt": 0.47, "Pullover": 0.47, "Trouser": 0.4, "Ankle boot": 0.4}
    errors, labels = _errors(means, cv, seed=1)
    claim = claims.reconstruction_claim(errors, labels, n_boot=1000)
    numbers = claim["numbers"]
    pairs = numbers["variability_pairs"].values()
    assert all(p["holds_unadjusted"] and p["interval"][0] > 0 for p in pairs)
    assert not any(p["holds"] for p in pairs) and all(p["p_holm"] >= 0.05 for p in pairs)
    assert numbers["parts_holding_unadjusted"] == 8 and numbers["parts_holding"] == 4
    assert claim["verdict"] == "partly" and "Holm's correction" in claim["sentence"]
    assert "4 parts that an uncorrected 95% interval would count do not count" in claim["sentence"]
    parts = claims.reconstruction_parts(claim)
    assert len(parts) == 8 and parts["holds_unadjusted"].all() and parts["holds"].sum() == 4
    assert (parts["p_holm"] >= parts["p_value"]).all()


def test_claims_on_a_real_model_are_recorded_as_plain_json(model, sample):
    import json

    images, labels = sample
    encoded = analysis.encode_split(model, images, labels)
    code = claims.pca_features(claims.quantized_code_features(model, encoded.indices), dims=20)
    pixels = claims.pca_features(claims.pixel_features(images), dims=20)
    assert code.shape == (300, 20) and pixels.shape == (300, 20)
    knn = {name: claims.knn_correct(x, labels) for name, x in (("code", code), ("pixels", pixels))}
    measured = [
        claims.tsne_claim(
            code_map=knn["code"], code_space=knn["code"], pixel_map=knn["pixels"], pixel_space=knn["pixels"]
        ),
        claims.codebook_usage_claim(encoded.indices, labels, 16, shuffles=5),
        claims.interpolation_claim(
            [analysis.interpolate(model, images[i], images[j], steps=4).quantized for i, j in ((0, 150), (1, 250))],
            claims.pixel_features(images),
            ends=[(0, 150), (1, 250)],
        ),
        claims.reconstruction_claim(analysis.per_image_mse(model, images), labels, n_boot=100),
    ]
    table = analysis.per_class_errors(analysis.per_image_mse(model, images), labels)
    summary = claims.analysis_summary(table, measured, pd.DataFrame({"class": [], "code": []}), images=300)
    text = json.dumps(summary)
    assert [c["name"] for c in summary["claims"]] == [
        "tsne_clustering",
        "codebook_usage",
        "interpolation",
        "reconstruction",
    ]
    assert set(summary["verdicts"].values()) <= set(claims.VERDICTS) and "NaN" not in text
    with pytest.raises(ConfigError, match="verdicts"):
        claims.analysis_summary(table, [{**measured[0], "verdict": "partly agrees"}], pd.DataFrame())


def test_interpolation_ends_are_the_two_images(model, data):
    a, b = data.test_images[0], data.test_images[1]
    result = analysis.interpolate(model, a, b, steps=5)
    assert result.quantized.shape == (5, 1, 28, 28) and result.continuous.shape == (5, 1, 28, 28)
    np.testing.assert_allclose(result.weights, [0, 0.25, 0.5, 0.75, 1])
    with torch.no_grad():
        ends = model(torch.stack([a, b]).unsqueeze(1).float() / 255).reconstruction
        z = model.encoder(torch.stack([a, b]).unsqueeze(1).float() / 255)
        mid = model.decode(0.5 * z[0:1] + 0.5 * z[1:2])
    torch.testing.assert_close(result.quantized[[0, -1]], ends, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(result.continuous[2:3], mid, rtol=1e-4, atol=1e-5)
    assert result.codes_changed[0] == 0 and 0 <= result.codes_changed.max() <= 1
    with pytest.raises(ConfigError):
        analysis.interpolate(model, a, b, steps=1)


def test_interpolation_pairs_cross_classes(sample):
    _, labels = sample
    pairs = analysis.different_class_pairs(labels, 6, seed=0)
    assert len(pairs) == 6 and all(labels[i] != labels[j] for i, j in pairs)
    assert len({(labels[i], labels[j]) for i, j in pairs}) == 6
    assert pairs == analysis.different_class_pairs(labels, 6, seed=0)
    with pytest.raises(ConfigError):
        analysis.different_class_pairs(labels, 46)


def test_class_examples_one_row_per_class(sample):
    _, labels = sample
    rows = class_examples(labels, 4, seed=0)
    assert rows.shape == (10, 4)
    assert all((labels[row] == c).all() for c, row in enumerate(rows))
    with pytest.raises(ConfigError):
        class_examples(labels, 31)


def test_grid_loss_curves_read_like_the_grid_and_count_whole_epochs():
    """plot_losses: a colour per K, a dash per D; epoch ticks are whole numbers even for a 2-epoch run."""
    import matplotlib.pyplot as plt

    from vqlib import plots

    history = [{"epoch": 1, "train_mse": 0.03, "val_mse": 0.02}, {"epoch": 2, "train_mse": 0.01, "val_mse": 0.01}]
    names = ["K25_D16", "K25_D32", "K50_D16", "K50_D32"]
    fig = plots.plot_losses({name: history for name in names})
    lines = {line.get_label(): line for line in fig.axes[0].get_lines()}
    assert lines["K25_D16"].get_color() == lines["K25_D32"].get_color() != lines["K50_D16"].get_color()
    assert lines["K25_D16"].get_linestyle() == lines["K50_D16"].get_linestyle() != lines["K25_D32"].get_linestyle()
    assert lines["K25_D16"].get_marker() == lines["K50_D16"].get_marker() != lines["K25_D32"].get_marker()
    low, high = fig.axes[0].get_xlim()
    ticks = [t for t in fig.axes[0].get_xticks() if low <= t <= high]
    assert ticks and all(float(t).is_integer() for t in ticks)
    plt.close(fig)
    # Names of another form still get lines that differ.
    fig = plots.plot_losses({"first": history, "second": history})
    first, second = fig.axes[0].get_lines()
    assert first.get_color() != second.get_color()
    plt.close(fig)


def test_grid_heatmaps_keep_three_digits_of_close_mses_and_show_shares_on_their_whole_scale():
    """0.00201 / 0.00200 / 0.00199 (the full study's K=50 row) must not all read 0.0020; 100% usage is the scale's top."""
    import matplotlib.pyplot as plt
    import pandas as pd

    from vqlib import plots

    frame = pd.DataFrame(
        {
            "num_embeddings": [50, 50, 50],
            "embedding_dim": [16, 32, 64],
            "status": ["success"] * 3,
            "val_mse": [0.00201, 0.0020024, 0.00199],
            "val_perplexity": [29.8, 29.1, 26.0],
            "val_usage": [1.0, 1.0, 1.0],
        }
    )
    fig = plots.grid_heatmaps(frame)
    mse, _, usage = fig.axes
    assert [t.get_text() for t in mse.texts] == ["0.00201", "0.00200", "0.00199"]
    assert usage.collections[0].get_clim() == (0.0, 1.0)
    plt.close(fig)


def test_codebook_usage_heatmap_scales_each_code_by_its_top_class():
    """The bottom panel is 1 for the class that uses a code most; a code nobody uses is 0, never NaN."""
    import matplotlib.pyplot as plt

    from vqlib import plots

    rng = np.random.default_rng(0)
    frequencies = rng.random((NUM_CLASSES, 12))
    frequencies[:, 5] = 0.0
    frequencies /= frequencies.sum(axis=1, keepdims=True)
    fig = plots.class_code_heatmap(frequencies, CLASS_NAMES)
    top, bottom = fig.axes[0], fig.axes[1]
    relative = np.asarray(bottom.collections[0].get_array()).reshape(NUM_CLASSES, 12)
    assert np.isfinite(relative).all()
    used = relative.max(axis=0) > 0
    assert used.sum() == 11 and np.allclose(relative.max(axis=0)[used], 1.0)
    assert np.isfinite(np.asarray(top.collections[0].get_array(), dtype=float)).all()
    plt.close(fig)
