"""The explorer (notebook 05) on real FashionMNIST: its callbacks as plain functions, its widgets without a
browser, the notebook under papermill, and the whole of it in JupyterLab in headless Chromium."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import time

import nbformat
import numpy as np
import papermill
import pytest
import torch

from vqlib import classify
from vqlib.analysis import receptive_field
from vqlib.checkpoints import save_checkpoint
from vqlib.config import ClassifierConfig, ExplorerConfig, TrainConfig, VQVAEConfig
from vqlib.data import CLASS_NAMES
from vqlib.errors import CheckpointError, ConfigError
from vqlib.explore import CHANGE_THRESHOLD, Explorer, open_explorer
from vqlib.models import VQVAE

from . import conftest, explore_browser
from .conftest import REPO

NOTEBOOK = REPO / "notebooks" / "05_explore.ipynb"
SMALL = dict(codebook_images=300, interpolation_steps=5)


@pytest.fixture(scope="module")
def classifier_checkpoint(data, vqvae_checkpoint, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("explore_cls")
    run = classify.train_classifier(
        ClassifierConfig(
            vqvae_checkpoint=str(vqvae_checkpoint),
            labels_per_class=50,
            epochs=2,
            min_steps_per_epoch=3,
            batch_size=64,
            device="cpu",
            checkpoint_dir=str(tmp / "cls"),
            results_dir=str(tmp / "results"),
        ),
        data,
        progress=False,
    )
    return run.best_checkpoint


def train_tiny_prior(data, vqvae_checkpoint, folder, *, class_conditional: bool = True):
    """A prior of one layer trained for one epoch on 160 real codes of the VQ-VAE: seconds."""
    return conftest.train_tiny_prior(
        data, folder, vqvae_checkpoint, class_conditional=class_conditional
    ).best_checkpoint


@pytest.fixture(scope="module")
def prior_checkpoint(data, vqvae_checkpoint, tmp_path_factory):
    """A class-conditional prior over the tiny VQ-VAE's code."""
    return train_tiny_prior(data, vqvae_checkpoint, tmp_path_factory.mktemp("explore_prior"))


@pytest.fixture(scope="module")
def other_vqvae_checkpoint(tmp_path_factory):
    """A VQ-VAE of another configuration (untrained): the classifier above does not belong to it."""
    config = VQVAEConfig(num_embeddings=16, embedding_dim=8, hidden_channels=16, residual_channels=8)
    torch.manual_seed(1)
    return save_checkpoint(
        tmp_path_factory.mktemp("other") / "best.pt",
        "vqvae",
        {
            "model_config": dataclasses.asdict(config),
            "train_config": dataclasses.asdict(TrainConfig()),
            "state_dict": VQVAE(config).state_dict(),
            "epoch": 0,
            "history": [],
        },
    )


@pytest.fixture
def explorer(data, vqvae_checkpoint, classifier_checkpoint):
    config = ExplorerConfig(
        vqvae_checkpoint=str(vqvae_checkpoint), classifier_checkpoint=str(classifier_checkpoint), **SMALL
    )
    return open_explorer(config, data)


def other_code(explorer: Explorer, row: int, col: int) -> int:
    """A code other than the cell's, and other than the blank code (a cell may already hold that)."""
    current = int(explorer.codes[row, col])
    return next(k for k in range(explorer.num_codes) if k not in (current, explorer.blank_code))


# ----------------------------------------------------------------------------- 1. pick


def test_select_shows_the_image_its_reconstruction_and_code(explorer, data):
    explorer.select(17)
    assert np.array_equal(explorer.original, data.test_images[17].numpy() / 255.0)
    assert explorer.label == int(data.test_labels[17])
    codes = classify.encode_codes(explorer.model, data.test_images[17:18])[0].long()
    assert torch.equal(explorer.original_codes, codes) and explorer.codes.shape == (12, 12)
    assert explorer.reconstruction_mse() == pytest.approx(np.mean((explorer.reconstruction - explorer.original) ** 2))
    assert explorer.reconstruction_mse() > 0


def test_class_and_slider_pick_the_nth_image_of_the_class(explorer, data):
    index = explorer.select_in_class(CLASS_NAMES.index("Trouser"), 3)
    assert index == int(np.flatnonzero(data.test_labels.numpy() == 1)[3]) and explorer.label == 1


# ----------------------------------------------------------------------------- 2. edit


@pytest.mark.parametrize("row, col", [(0, 0), (5, 6), (11, 3), (11, 11)])
def test_an_edited_cell_changes_the_image_only_inside_its_receptive_field(explorer, row, col):
    explorer.select(3)
    before = explorer.image.copy()
    after = explorer.edit(other_code(explorer, row, col), row, col)
    field = receptive_field(explorer.model.encoder)
    top, left = field.first(row), field.first(col)
    inside = np.zeros((28, 28), dtype=bool)
    inside[max(top, 0) : top + field.size, max(left, 0) : left + field.size] = True
    assert inside.sum() < 28 * 28 / 2  # the check has teeth: the field is a small part of the image
    changed = np.abs(after - before)
    assert changed[inside].max() > CHANGE_THRESHOLD, "the edit changed nothing"
    # Outside the field only float noise of the convolutions may remain.
    assert changed[~inside].max(initial=0.0) < 1e-5
    assert explorer.pixel_window(row, col) == (
        max(top, 0),
        max(left, 0),
        min(top + field.size, 28),
        min(left + field.size, 28),
    )
    assert not explorer.changed_pixels()[~inside].any()


def test_a_rectangle_edit_sets_every_cell_and_reaches_the_union_of_their_fields(explorer):
    explorer.select(5)
    code = other_code(explorer, 4, 4)
    explorer.edit(code, (3, 5), (4, 8))
    assert (explorer.codes[3:6, 4:9] == code).all()
    assert explorer.edited_cells().sum() == int((explorer.original_codes[3:6, 4:9] != code).sum())
    top, left, bottom, right = explorer.pixel_window((3, 5), (4, 8))
    outside = np.ones((28, 28), dtype=bool)
    outside[top:bottom, left:right] = False
    assert not explorer.changed_pixels()[outside].any() and explorer.changed_pixels().any()


def test_undo_restores_the_exact_previous_image_and_reset_is_undone_too(explorer):
    explorer.select(8)
    start = explorer.image.copy()
    first = explorer.edit(other_code(explorer, 2, 2), 2, 2).copy()
    codes_after_first = explorer.codes.clone()
    explorer.edit(other_code(explorer, 9, 9), (8, 10), (8, 10))
    assert not np.array_equal(explorer.image, first)
    assert np.array_equal(explorer.undo(), first) and torch.equal(explorer.codes, codes_after_first)
    assert np.array_equal(explorer.undo(), start) and torch.equal(explorer.codes, explorer.original_codes)
    with pytest.raises(ConfigError, match="nothing to undo"):
        explorer.undo()
    edited = explorer.edit(other_code(explorer, 6, 6), 6, 6).copy()
    assert np.array_equal(explorer.reset(), explorer.reconstruction) and not explorer.edited_cells().any()
    assert np.array_equal(explorer.undo(), edited)


# ----------------------------------------------------------------------------- 3. codebook


def test_code_usage_counts_every_cell_of_the_sample_once(explorer):
    usages = [explorer.code_usage(k) for k in range(explorer.num_codes)]
    assert sum(u["cells"] for u in usages) == 300 * 144
    assert sum(u["share_of_cells"] for u in usages) == pytest.approx(1.0)
    for u in usages:
        assert sum(u["per_class"].values()) == u["cells"]
        if u["cells"]:
            assert sum(u["class_share"].values()) == pytest.approx(1.0)


def test_code_patches_come_from_cells_that_use_the_code(explorer, data):
    code = max(range(explorer.num_codes), key=lambda k: explorer.code_usage(k)["cells"])
    patches, where = explorer.code_patches(code, count=5)
    assert len(patches) == len(where) == 5
    codes = classify.encode_codes(explorer.model, data.test_images[[i for i, _, _ in where]]).long()
    for (_, row, col), image_codes in zip(where, codes, strict=True):
        assert image_codes[row, col] == code


def test_paste_preview_decodes_without_changing_the_state(explorer):
    explorer.select(2)
    codes, image = explorer.codes.clone(), explorer.image.copy()
    code = other_code(explorer, 6, 6)
    preview = explorer.paste_preview(code, (5, 7), (5, 7))
    assert torch.equal(explorer.codes, codes) and np.array_equal(explorer.image, image)
    assert np.array_equal(preview, explorer.edit(code, (5, 7), (5, 7)))


# ----------------------------------------------------------------------------- 4. interpolation


def test_interpolation_starts_at_image_a_and_ends_at_image_b(explorer):
    result = explorer.interpolation(0, 1)
    assert result.quantized.shape == result.continuous.shape == (5, 1, 28, 28)
    explorer.select(0)
    assert np.allclose(result.quantized[0, 0].numpy(), explorer.reconstruction, atol=1e-5)
    explorer.select(1)
    assert np.allclose(result.quantized[-1, 0].numpy(), explorer.reconstruction, atol=1e-5)
    assert result.codes_changed[0] == 0 and result.codes_changed[-1] > 0
    assert explorer.interpolation(0, 1) is result  # the slider moves through it without decoding


# ----------------------------------------------------------------------------- 5. classifier


def test_probabilities_of_the_unedited_map_are_the_classifiers_prediction(explorer, data, classifier_checkpoint):
    explorer.select(4)
    model, _ = classify.load_classifier(classifier_checkpoint)
    expected = classify.predict(model, data.test_images[4:5])[0].numpy()
    assert np.allclose(explorer.probabilities(), expected, atol=1e-5)
    assert explorer.probabilities().sum() == pytest.approx(1.0, abs=1e-5)
    explorer.edit(explorer.blank_code, (0, 11), (0, 11))  # an empty map: the answer must move
    assert not np.allclose(explorer.probabilities(), expected, atol=1e-3)


def test_the_occlusion_map_has_one_value_per_cell(explorer):
    explorer.select(6)
    values, predicted = explorer.occlusion_map()
    assert values.shape == (12, 12) and np.isfinite(values).all()
    assert predicted == int(explorer.probabilities().argmax())
    blank = (explorer.codes == explorer.blank_code).numpy()
    assert np.all(values[blank] == 0)  # hiding a cell that is already blank changes nothing
    assert np.abs(values[~blank]).max() > 0
    # One cell checked by hand: blank it, classify, compare log-odds.
    row, col = map(int, np.argwhere(~blank)[0])
    occluded = explorer.codes.clone()
    occluded[row, col] = explorer.blank_code
    log_odds = lambda p: np.log(p[predicted]) - np.log(1 - p[predicted])  # noqa: E731
    expected = log_odds(explorer.probabilities().astype(float)) - log_odds(
        explorer.probabilities(occluded).astype(float)
    )
    assert values[row, col] == pytest.approx(expected, rel=1e-3, abs=1e-3)


# ----------------------------------------------------------------------------- 6. generate with the prior


@pytest.fixture
def generating(explorer, prior_checkpoint):
    explorer.attach_prior(prior_checkpoint)
    return explorer


def test_sample_draws_a_whole_code_into_the_editor_and_undo_takes_it_back(generating):
    ex = generating
    ex.select(9)
    before, image_before = ex.codes.clone(), ex.image.copy()
    image = ex.sample_code(3, temperature=1.0, seed=0)
    drawn = ex.codes.clone()
    assert not torch.equal(drawn, before) and ex.edited_cells().sum() > 72
    assert np.allclose(image, ex.model.decode_indices(drawn[None])[0, 0].detach().numpy(), atol=1e-6)
    assert np.array_equal(ex.undo(), image_before) and torch.equal(ex.codes, before)
    ex.sample_code(3, temperature=1.0, seed=0)
    assert torch.equal(ex.codes, drawn)  # seeded: the same draw
    ex.sample_code(3, temperature=1.0, seed=1)
    assert not torch.equal(ex.codes, drawn)
    # With guidance, the draw is vqlib.prior.sample_images' guided one for the same seed.
    from vqlib.prior import sample_images

    ex.sample_code(3, temperature=1.0, seed=0, guidance=2.0)
    _, guided = sample_images(ex.prior, ex.model, 1, classes=3, seed=0, guidance=2.0)
    assert torch.equal(ex.codes, guided[0].long())


def test_resample_redraws_the_selection_given_the_rest_and_nothing_else(generating):
    from vqlib.prior import bits_per_image, resample

    ex = generating
    ex.select(11)
    before = ex.codes.clone()
    ex.resample_cells((4, 6), (5, 7), 0, temperature=2.0, seed=1)
    inside = ex.selection_mask((4, 6), (5, 7))
    assert inside.sum() == 9 and torch.equal(ex.codes[~inside], before[~inside])
    assert not torch.equal(ex.codes[inside], before[inside])
    # The explorer's draw is vqlib.prior.resample's on the map as edited, cell for cell.
    expected = resample(ex.prior, before, inside, classes=0, temperature=2.0, seed=1)
    assert torch.equal(ex.codes, expected)
    assert ex.code_bits(label=0) == pytest.approx(float(bits_per_image(ex.prior, ex.codes[None], [0])[0]))
    ex.undo()
    assert torch.equal(ex.codes, before)


def test_the_choices_for_a_cell_are_its_full_conditional(generating):
    from vqlib.prior import full_conditional

    ex = generating
    ex.select(12)
    choices = ex.cell_choices(5, 6, 7, count=5)
    probs = full_conditional(ex.prior, ex.codes, (5, 6), classes=7)
    assert [code for code, _ in choices] == torch.topk(probs, 5).indices.tolist()
    assert [p for _, p in choices] == pytest.approx(torch.topk(probs, 5).values.tolist())
    assert probs.sum().item() == pytest.approx(1.0, abs=1e-5)


def test_generation_refuses_bad_input_in_one_sentence(
    explorer, data, prior_checkpoint, other_vqvae_checkpoint, vqvae_checkpoint, tmp_path
):
    with pytest.raises(ConfigError, match="no prior is loaded") as info:
        explorer.sample_code()
    assert one_sentence(str(info.value))
    explorer.attach_prior(prior_checkpoint)
    for call, pattern in [
        (lambda: explorer.sample_code(12), "class 12 does not exist"),
        (lambda: explorer.sample_code(temperature=0.0), "temperature must be a positive number"),
        (lambda: explorer.sample_code(seed=-1), "the seed must be an integer of 0 or more"),
        (lambda: explorer.sample_code(guidance=1.0), "give a class, or set guidance to 0"),
        (lambda: explorer.sample_code(3, guidance=-1.0), "guidance must be a number of at least 0"),
        (lambda: explorer.resample_cells((3, 12), 0), "do not lie in the 12 x 12 code map"),
        (lambda: explorer.resample_cells(2, 2, sweeps=0), "sweeps must be a positive integer"),
        (lambda: explorer.cell_choices(12, 0), "do not lie in the 12 x 12 code map"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(pattern)) as info:
            call()
        assert one_sentence(str(info.value))
    explorer.attach_prior(train_tiny_prior(data, vqvae_checkpoint, tmp_path / "uncond", class_conditional=False))
    with pytest.raises(ConfigError, match="trained without classes") as info:
        explorer.resample_cells(2, 2, 4)
    assert one_sentence(str(info.value))
    explorer.resample_cells(2, 2, None, seed=0)  # no class: fine
    other = open_explorer(ExplorerConfig(vqvae_checkpoint=str(other_vqvae_checkpoint), **SMALL), data)
    with pytest.raises(CheckpointError, match="models a code of K=32 indices, but this VQ-VAE has K=16") as info:
        other.attach_prior(prior_checkpoint)
    assert one_sentence(str(info.value)) and other.prior is None


# ----------------------------------------------------------------------------- bad input


def one_sentence(message: str) -> bool:
    return "\n" not in message and "Traceback" not in message and 0 < len(message) < 1000


def test_bad_input_raises_one_clear_sentence(explorer, data, other_vqvae_checkpoint, classifier_checkpoint):
    for call, pattern in [
        (lambda: explorer.select(10_000), "image index 10000 is out of range: the test split has 10,000"),
        (lambda: explorer.select(-1), "out of range"),
        (lambda: explorer.edit(explorer.num_codes, 0, 0), f"code {explorer.num_codes} is not in the codebook"),
        (lambda: explorer.edit(-3, 0, 0), "not in the codebook"),
        (lambda: explorer.edit(0, (4, 12), 0), "do not lie in the 12 x 12 code map"),
        (lambda: explorer.select_in_class(3, 10**6), "there is no image"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(pattern)) as info:
            call()
        assert one_sentence(str(info.value))
    other = open_explorer(ExplorerConfig(vqvae_checkpoint=str(other_vqvae_checkpoint), **SMALL), data)
    with pytest.raises(CheckpointError, match="cannot be paired") as info:
        other.attach_classifier(classifier_checkpoint)
    assert one_sentence(str(info.value)) and other.classifier is None
    with pytest.raises(ConfigError, match="no classifier is loaded"):
        other.occlusion_map()


# ----------------------------------------------------------------------------- widgets, without a browser


@pytest.fixture
def ui(data, vqvae_checkpoint, classifier_checkpoint):
    from vqlib.explore_ui import explorer_ui

    parameters = {"vqvae_checkpoint": str(vqvae_checkpoint), "classifier_checkpoint": str(classifier_checkpoint)}
    return explorer_ui({**parameters, **SMALL}, data)


def messages(ui) -> list[str]:
    return [
        getattr(ui, f"{name}_message").value
        for name in ("pick", "edit", "codebook", "interpolation", "classifier", "generate")
        if getattr(ui, f"{name}_message").value
    ]


def test_the_widgets_build_and_every_panel_is_drawn(ui):
    assert set(ui.panels) == {"pick", "edit", "codebook", "interpolation", "classifier", "generate"}
    assert all(panel.children for panel in ui.panels.values())
    for image in (ui.original_image, ui.edited_image, ui.edited_map, ui.patches_image, ui.quantized_image):
        assert bytes(image.value).startswith(b"\x89PNG")
    assert "Trouser" in ui.probabilities.value and messages(ui) == []


def test_widgets_update_the_images_and_the_probabilities(ui):
    before, probabilities = ui.edited_image.value, ui.probabilities.value
    ui.code.value = next(k for k in range(ui.explorer.num_codes) if k != int(ui.explorer.codes[5, 5]))
    ui.rows.value, ui.cols.value = (4, 7), (4, 7)
    ui.apply.click()
    assert ui.edited_image.value != before and ui.probabilities.value != probabilities
    assert ui.explorer.edited_cells().any() and messages(ui) == []
    ui.undo.click()
    assert ui.edited_image.value == before
    original = ui.original_image.value
    ui.nth.value = 4
    assert ui.original_image.value != original and ui.index.value == ui.explorer.index
    assert ui.explorer.label == ui.class_choice.value
    quantized = ui.quantized_image.value
    ui.t.value = 1.0
    assert ui.quantized_image.value != quantized
    patches = ui.patches_image.value
    ui.book_code.value = (ui.book_code.value + 1) % ui.explorer.num_codes
    assert ui.patches_image.value != patches or ui.explorer.code_usage(ui.book_code.value)["cells"] == 0


def test_bad_input_in_the_widgets_ends_in_one_message_not_a_traceback(
    ui, classifier_checkpoint, other_vqvae_checkpoint
):
    ui.index.value = 10_000
    assert "out of range" in ui.pick_message.value and ui.explorer.index != 10_000
    ui.code.value = ui.explorer.num_codes
    image = ui.edited_image.value
    ui.apply.click()
    assert "is not in the codebook" in ui.edit_message.value and ui.edited_image.value == image
    ui.code.value = 0
    ui.apply.click()
    assert ui.edit_message.value == ""  # a good edit clears the message
    ui.index_b.value = -5
    assert "out of range" in ui.interpolation_message.value
    ui.classifier_path.value = str(other_vqvae_checkpoint)
    ui.load_classifier.click()
    assert "is a vqvae checkpoint" in ui.classifier_message.value
    for message in messages(ui):
        assert "Traceback" not in message and message.count("<span") == 1


def test_a_classifier_of_another_vqvae_is_refused_in_the_widget(data, other_vqvae_checkpoint, classifier_checkpoint):
    from vqlib.explore_ui import explorer_ui

    ui = explorer_ui(
        {
            "vqvae_checkpoint": str(other_vqvae_checkpoint),
            "classifier_checkpoint": str(classifier_checkpoint),
            "image_index": 20_000,
            **SMALL,
        },
        data,
    )
    assert "cannot be paired" in ui.classifier_message.value and ui.explorer.classifier is None
    assert "out of range" in ui.pick_message.value and ui.explorer.index == 0
    assert "no classifier loaded" in ui.probabilities.value
    assert bytes(ui.edited_image.value).startswith(b"\x89PNG")  # the rest of the explorer works
    broken = explorer_ui({"vqvae_checkpoint": str(other_vqvae_checkpoint) + ".missing"}, data)
    assert broken.explorer is None and "no checkpoint at" in broken.status.value
    assert explorer_ui({"split": "validation"}, data).status.value.count("split must be one of") == 1


def test_a_published_vqvae_opens_with_its_published_classifier(data, monkeypatch):
    """On a fresh clone the classifier panel works at once: the published VQ-VAE brings its published classifier."""
    from vqlib.explore_ui import explorer_ui

    monkeypatch.delenv("VQLIB_ROOT", raising=False)
    ui = explorer_ui({"vqvae_checkpoint": "pretrained:K100_D64", **SMALL}, data)
    assert ui.explorer.classifier is not None and "classifier pretrained:K100_D64_all_frozen" in ui.status.value
    # Published models are named as such, never by the machine's path (the README's screenshot shows them).
    assert "VQ-VAE pretrained:K100_D64 " in ui.status.value and str(REPO) not in ui.status.value
    assert (
        ui.classifier_path.value == "pretrained:K100_D64_all_frozen" and "no classifier" not in ui.probabilities.value
    )
    # 'none' opts out; a published VQ-VAE without a published classifier opens without one.
    config = ExplorerConfig(vqvae_checkpoint="pretrained:K100_D64", classifier_checkpoint="none", **SMALL)
    assert open_explorer(config, data).classifier is None
    assert open_explorer(ExplorerConfig(vqvae_checkpoint="pretrained:K25_D16", **SMALL), data).classifier is None


def test_the_generate_panel_samples_resamples_and_lists_choices(data, vqvae_checkpoint, prior_checkpoint):
    from vqlib.explore_ui import explorer_ui

    ui = explorer_ui(
        {"vqvae_checkpoint": str(vqvae_checkpoint), "prior_checkpoint": str(prior_checkpoint), **SMALL}, data
    )
    assert ui.explorer.prior is not None and "prior " in ui.status.value
    assert "bits</b> under the prior" in ui.generate_info.value
    generated, edited = ui.generated_image.value, ui.edited_image.value
    ui.generation_class.value, ui.seed.value = 1, 5
    ui.sample.click()
    assert ui.generated_image.value != generated and ui.edited_image.value != edited
    assert ui.seed.value == 6 and "sampled a new code" in ui.generate_info.value and "seed 5" in ui.generate_info.value
    sampled = ui.explorer.codes.clone()
    ui.rows.value, ui.cols.value = (2, 4), (3, 5)
    ui.resample.click()
    assert "resampled 9 cell(s) given the other 135" in ui.generate_info.value
    changed = (ui.explorer.codes != sampled).numpy()
    assert not changed[:2].any() and not changed[5:].any() and not changed[:, :3].any() and not changed[:, 6:].any()
    ui.choices.click()
    assert "cell (2, 3) given the other 143" in ui.choices_table.value and ui.choices_table.value.count("code ") >= 8
    ui.generate_undo.click()
    assert torch.equal(ui.explorer.codes, sampled) and messages(ui) == []


def test_without_a_prior_the_panel_says_how_to_get_one(data, vqvae_checkpoint, other_vqvae_checkpoint):
    from vqlib.explore_ui import explorer_ui

    ui = explorer_ui({"vqvae_checkpoint": str(other_vqvae_checkpoint), **SMALL}, data)
    assert ui.explorer.prior is None and "prior" not in ui.status.value
    assert "No prior is loaded" in ui.generate_info.value and "vqlib train-prior" in ui.generate_info.value
    ui.sample.click()
    assert "no prior is loaded" in ui.generate_message.value
    for message in messages(ui):
        assert "Traceback" not in message and message.count("<span") == 1


def test_a_prior_of_another_vqvae_is_refused_in_the_panel(data, other_vqvae_checkpoint, prior_checkpoint):
    from vqlib.explore_ui import explorer_ui

    ui = explorer_ui(
        {"vqvae_checkpoint": str(other_vqvae_checkpoint), "prior_checkpoint": str(prior_checkpoint), **SMALL}, data
    )
    assert ui.explorer.prior is None and ui.prior_path.value == str(prior_checkpoint)
    assert "models a code of K=32 indices" in ui.generate_message.value
    assert "Traceback" not in ui.generate_message.value and ui.generate_message.value.count("<span") == 1
    assert bytes(ui.edited_image.value).startswith(b"\x89PNG")  # the rest of the explorer works
    ui.load_prior.click()
    assert "models a code of K=32 indices" in ui.generate_message.value


def test_a_published_vqvae_opens_with_a_published_prior_trained_on_it(data, project, tmp_path_factory):
    """pretrained:K100_D64_prior, once published, opens with pretrained:K100_D64 by itself: a project root whose
    published folder holds the real K100_D64 and a tiny prior trained on it stands in for that day."""
    from vqlib.explore_ui import explorer_ui

    published = project / "checkpoints" / "pretrained"
    published.mkdir(parents=True)
    (published / "K100_D64").symlink_to(REPO / "checkpoints" / "pretrained" / "K100_D64")
    prior = train_tiny_prior(data, "pretrained:K100_D64", tmp_path_factory.mktemp("published_prior"))
    (published / "K100_D64_prior").mkdir()
    (published / "K100_D64_prior" / "best.pt").write_bytes(prior.read_bytes())
    ui = explorer_ui({"vqvae_checkpoint": "pretrained:K100_D64", **SMALL}, data)
    assert ui.explorer.prior is not None and "prior pretrained:K100_D64_prior" in ui.status.value
    assert ui.prior_path.value == "pretrained:K100_D64_prior" and messages(ui) == []
    config = ExplorerConfig(vqvae_checkpoint="pretrained:K100_D64", prior_checkpoint="none", **SMALL)
    assert open_explorer(config, data).prior is None


# ----------------------------------------------------------------------------- notebook and Makefile


def test_parameters_cell_equals_the_explorer_config():
    names = list(papermill.inspect_notebook(str(NOTEBOOK)))
    assert names == [f.name for f in dataclasses.fields(ExplorerConfig)]
    nb = nbformat.read(NOTEBOOK, as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    for line in tagged[0].source.splitlines():
        assert re.fullmatch(r"\w+ = (None|True|False|-?[\d.e+-]+|'[^']*'|\"[^\"]*\")  # .+", line), line
    assert nb.metadata["kernelspec"]["name"] == "vqlib"


def test_notebook_05_runs_headless_under_papermill(tmp_path, vqvae_checkpoint, classifier_checkpoint, prior_checkpoint):
    out = tmp_path / "05_explore.ipynb"
    papermill.execute_notebook(
        str(NOTEBOOK),
        str(out),
        parameters={
            "vqvae_checkpoint": str(vqvae_checkpoint),
            "classifier_checkpoint": str(classifier_checkpoint),
            "prior_checkpoint": str(prior_checkpoint),
            "image_index": 7,
            **SMALL,
        },
        kernel_name="vqlib",
        cwd=str(tmp_path),
        progress_bar=False,
    )
    nb = nbformat.read(out, as_version=4)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error" or o.get("name") == "stderr"]
    # What the widgets showed, from the widget state papermill saved with the notebook.
    state = nb.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    models = [m["state"] for m in state.values()]
    classes = {c for m in models for c in m.get("_dom_classes", [])}
    panels = ("pick", "edit", "codebook", "interpolation", "classifier", "generate")
    assert {f"vqlib-panel-{panel}" for panel in panels} <= classes
    status = next(m["value"] for m in models if "vqlib-status" in m.get("_dom_classes", []))
    assert "K=32, D=16" in status and "classifier" in status and "prior" in status
    messages = [m["value"] for m in models if any(c.endswith("-message") for c in m.get("_dom_classes", []))]
    assert messages == [""] * 6
    generate_info = next(m["value"] for m in models if "vqlib-generate-info" in m.get("_dom_classes", []))
    assert "bits</b> under the prior" in generate_info
    pick_info = [m["value"] for m in models if "test image 7 of 10,000" in str(m.get("value", ""))]
    assert pick_info and "reconstruction MSE" in pick_info[0]


def test_make_lab_listens_on_localhost_and_allows_root():
    done = subprocess.run(["make", "-n", "lab"], cwd=REPO, capture_output=True, text=True, timeout=60)
    command = done.stdout.replace("\\\n", " ")
    assert "jupyter lab" in command and "--ip=127.0.0.1" in command and "05_explore.ipynb" in command
    assert ("--allow-root" in command) == (os.getuid() == 0)


# ----------------------------------------------------------------------------- a real browser


@pytest.mark.skipif(not explore_browser.CHROMIUM.is_file(), reason="no /usr/bin/chromium (apt-get install chromium)")
def test_the_explorer_works_in_jupyterlab_in_a_real_browser(
    tmp_path, vqvae_checkpoint, classifier_checkpoint, prior_checkpoint
):
    """JupyterLab on 127.0.0.1, Debian's Chromium via Playwright: run all, move a slider, press edit, sample
    and resample."""
    started = time.monotonic()
    result = explore_browser.run_check(
        vqvae_checkpoint,
        classifier_checkpoint,
        tmp_path / "explorer.png",
        folder=tmp_path / "lab",
        extra_parameters=SMALL,
        prior_checkpoint=prior_checkpoint,
    )
    assert result["slider_changed_image"] and result["edit_changed_image"] and result["sample_changed_image"]
    assert "resampled 4 cell(s) given the other 140" in result["resample_info"]
    assert result["messages"] == [] and result["stderr_outputs"] == 0
    assert (tmp_path / "explorer.png").stat().st_size > 20_000
    print(f"browser check: {result} in {time.monotonic() - started:.0f} s", file=sys.stderr)
