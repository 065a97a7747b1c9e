"""The explorer of the discrete code (notebook 05): its state and callbacks, without widgets.

`Explorer` holds a VQ-VAE, optionally a classifier and a prior paired with it,
one data split, the image being explored, its 12 x 12 code map as edited so far
and an undo stack. Every callback of the widgets (`vqlib.explore_ui`) is a method here
that returns plain values (numpy images, arrays, dicts) or raises a
`VqlibError` with one sentence, so each is tested without a browser.

An edit decodes exactly one image (`VQVAE.decode_indices` on one code map);
the classifier reads the edited map directly (`VQVAEClassifier.classify_codes`),
so no encoder runs after an image is chosen. `make bench` times both. The prior
draws a whole new code into the editor or redraws the selected cells given all
the others (`vqlib.prior.resample`); both are edits that undo takes back.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .analysis import (
    Interpolation,
    code_counts_per_class,
    code_patches,
    interpolate,
    receptive_field,
    stratified_sample,
)
from .checkpoints import (
    checkpoint_label,
    load_vqvae,
    paired_pretrained_classifier,
    resolve_checkpoint,
    resolve_vqvae_checkpoint,
)
from .classify import encode_codes, load_classifier
from .config import ExplorerConfig
from .data import CLASS_NAMES, FashionMNIST, load_fashion_mnist, to_float
from .device import resolve_device
from .errors import ConfigError
from .models import VQVAE, VQVAEClassifier
from .models.classifier import LATENT_SIZE
from .prior import bits_per_image, full_conditional, load_prior, paired_pretrained_prior, resample, sample_images

# A pixel counts as changed by an edit when it moves by more than half a grey level:
# smaller changes are invisible on an 8-bit display, and float noise of the
# convolutions (about 1e-7) stays far below it.
CHANGE_THRESHOLD = 0.5 / 255


def one_thread(fn):
    """Run `fn` with one PyTorch thread and in inference mode, then restore the thread count.

    Every tensor operation of a callback runs inside it, small ones too: measured here,
    a logsumexp over (70, 9) values took 49 ms with two threads on the busy machine.

    The explorer computes one image at a time, which a second thread cannot
    speed up; on a shared 2-core CPU the two threads wait for each other
    instead: one decode measured 75 ms median with 2 threads and 0.7 ms with 1,
    under the load of a training job (switching costs under a microsecond).
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with torch.inference_mode():
                return fn(*args, **kwargs)
        finally:
            torch.set_num_threads(before)

    return wrapper


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


@dataclass
class Explorer:
    """The state of one exploration: model(s), split, current image, its edited code map, undo stack."""

    model: VQVAE
    images: torch.Tensor  # uint8 (N, 28, 28) of the split
    labels: torch.Tensor  # int64 (N,)
    split: str = "test"
    index: int = 0
    classifier: Optional[VQVAEClassifier] = None
    vqvae_checkpoint: Optional[Path] = None  # needed to pair a classifier loaded later
    classifier_checkpoint: Optional[Path] = None
    prior: Optional[torch.nn.Module] = None  # attach with attach_prior: it is checked against the VQ-VAE
    prior_checkpoint: Optional[str] = None  # as given: pretrained:NAME or a path
    prior_conditional: bool = False  # trained with classes (else a class would reach untrained embeddings)
    codebook_images: Optional[int] = 2000  # images (classes balanced) behind the codebook statistics
    interpolation_steps: int = 11
    seed: int = 0
    codes: torch.Tensor = field(init=False)  # (12, 12) int64, the map as edited
    original_codes: torch.Tensor = field(init=False)  # (12, 12) int64, the map the encoder gave

    def __post_init__(self) -> None:
        self.model.eval()
        self.device = next(self.model.parameters()).device
        self.num_codes = self.model.config.num_embeddings
        self.field = receptive_field(self.model.encoder)
        self._undo: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._codebook: Optional[tuple[np.ndarray, torch.Tensor, np.ndarray, np.ndarray]] = None
        self._interpolation: Optional[tuple[tuple[int, int], Interpolation]] = None
        # The code the encoder gives an empty (black) image: what "nothing here" is in this
        # code, so the occlusion map replaces a cell with it rather than with an arbitrary code.
        blank = self._encode(torch.zeros(1, 28, 28, dtype=torch.uint8))
        self.blank_code = int(torch.mode(blank.reshape(-1)).values)
        self.select(self.index)

    # ------------------------------------------------------------------ model calls

    @one_thread
    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.encode(to_float(images, self.device))[0][0].cpu()

    @one_thread
    def _decode(self, codes: torch.Tensor) -> torch.Tensor:
        """One code map (12, 12) -> one image (28, 28) in [0, 1], on the CPU."""
        return self.model.decode_indices(codes[None].to(self.device))[0, 0].cpu()

    # ------------------------------------------------------------------ checks

    @property
    def num_images(self) -> int:
        return len(self.images)

    def check_index(self, index) -> int:
        if not _is_int(index) or not 0 <= index < self.num_images:
            raise ConfigError(
                f"image index {index} is out of range: the {self.split} split has {self.num_images:,} images, "
                f"numbered 0 to {self.num_images - 1:,}"
            )
        return int(index)

    def check_code(self, code) -> int:
        if not _is_int(code) or not 0 <= code < self.num_codes:
            raise ConfigError(
                f"code {code} is not in the codebook: this VQ-VAE has K={self.num_codes} codes, "
                f"numbered 0 to {self.num_codes - 1}"
            )
        return int(code)

    def check_cells(self, rows, cols) -> tuple[tuple[int, int], tuple[int, int]]:
        """Inclusive (first, last) row and column ranges of a rectangle of cells, checked."""
        out = []
        for name, span in (("rows", rows), ("columns", cols)):
            first, last = (span, span) if _is_int(span) else tuple(span)
            if not (_is_int(first) and _is_int(last) and 0 <= first <= last < LATENT_SIZE):
                raise ConfigError(
                    f"{name} {first} to {last} do not lie in the {LATENT_SIZE} x {LATENT_SIZE} code map: "
                    f"choose a first and a last from 0 to {LATENT_SIZE - 1}, the first not after the last"
                )
            out.append((int(first), int(last)))
        return out[0], out[1]

    # ------------------------------------------------------------------ 1. pick an image

    @one_thread
    def select(self, index) -> None:
        """Explore image `index` of the split: encode it once; edits and undo start afresh."""
        index = self.check_index(index)
        self.index = index
        self.original_codes = self._encode(self.images[index : index + 1])
        self.codes = self.original_codes.clone()
        self._reconstruction = self._decode(self.codes)
        self._image = self._reconstruction
        self._undo.clear()

    def class_members(self, label) -> np.ndarray:
        """Indices of the split's images of class `label` (an index into CLASS_NAMES)."""
        if not _is_int(label) or not 0 <= label < len(CLASS_NAMES):
            raise ConfigError(f"class {label} does not exist: classes are numbered 0 to {len(CLASS_NAMES) - 1}")
        return np.flatnonzero(self.labels.numpy() == label)

    def select_in_class(self, label, nth) -> int:
        """Explore the `nth` image of class `label` in the split; returns its index."""
        members = self.class_members(label)
        if not _is_int(nth) or not 0 <= nth < len(members):
            raise ConfigError(
                f"there is no image {nth} of class {CLASS_NAMES[label]}: the {self.split} split has "
                f"{len(members):,} of them, numbered 0 to {len(members) - 1:,}"
            )
        self.select(int(members[nth]))
        return self.index

    @property
    def label(self) -> int:
        return int(self.labels[self.index])

    @property
    def original(self) -> np.ndarray:
        """The chosen image, (28, 28) float in [0, 1]."""
        return self.images[self.index].numpy() / 255.0

    @property
    def reconstruction(self) -> np.ndarray:
        """The decode of the encoder's own code map, (28, 28)."""
        return self._reconstruction.numpy()

    @property
    def image(self) -> np.ndarray:
        """The decode of the code map as edited, (28, 28)."""
        return self._image.numpy()

    def reconstruction_mse(self) -> float:
        return float(np.mean((self.reconstruction - self.original) ** 2))

    def edited_mse(self) -> float:
        """MSE of the edited decode against the original image."""
        return float(np.mean((self.image - self.original) ** 2))

    # ------------------------------------------------------------------ 2. edit the code

    @one_thread
    def edit(self, code, rows, cols) -> np.ndarray:
        """Set the cells of `rows` x `cols` (inclusive ranges, or single ints) to `code`; returns the new decode."""
        code = self.check_code(code)
        (r0, r1), (c0, c1) = self.check_cells(rows, cols)
        new = self.codes.clone()
        new[r0 : r1 + 1, c0 : c1 + 1] = code
        return self._replace_codes(new)

    def _replace_codes(self, new: torch.Tensor) -> np.ndarray:
        """Make `new` the map as edited (decoded once), the previous map one undo away."""
        image = self._decode(new)
        self._undo.append((self.codes, self._image))
        self.codes, self._image = new, image
        return self.image

    def undo(self) -> np.ndarray:
        """Back to the map and image before the last edit or reset (kept, not decoded again: exact)."""
        if not self._undo:
            raise ConfigError("there is nothing to undo: no edit since this image was chosen")
        self.codes, self._image = self._undo.pop()
        return self.image

    def reset(self) -> np.ndarray:
        """Back to the encoder's map; undo brings the edits back."""
        if not torch.equal(self.codes, self.original_codes):
            self._undo.append((self.codes, self._image))
            self.codes, self._image = self.original_codes.clone(), self._reconstruction
        return self.image

    @property
    def can_undo(self) -> int:
        return len(self._undo)

    def edited_cells(self) -> np.ndarray:
        """(12, 12) bool: cells whose code differs from the encoder's."""
        return (self.codes != self.original_codes).numpy()

    def difference(self) -> np.ndarray:
        """Edited decode minus the reconstruction, (28, 28)."""
        return self.image - self.reconstruction

    def changed_pixels(self, threshold: float = CHANGE_THRESHOLD) -> np.ndarray:
        """(28, 28) bool: pixels the edits moved by more than `threshold`."""
        return np.abs(self.difference()) > threshold

    def pixel_window(self, rows, cols) -> tuple[int, int, int, int]:
        """(top, left, bottom, right), bottom and right exclusive: the pixels an edit of these cells can change.

        The decoder mirrors the encoder with transposed convolutions of the same
        kernels, strides and paddings, and a transposed convolution writes exactly
        the window its convolution twin reads, so a cell's footprint in the decode
        is its receptive field in the encoder (checked in tests/test_explore.py).
        """
        (r0, r1), (c0, c1) = self.check_cells(rows, cols)
        f, size = self.field, self.field.size
        return (
            max(f.first(r0), 0),
            max(f.first(c0), 0),
            min(f.first(r1) + size, 28),
            min(f.first(c1) + size, 28),
        )

    # ------------------------------------------------------------------ 3. browse the codebook

    @one_thread
    def _codebook_stats(self) -> tuple[np.ndarray, torch.Tensor, np.ndarray, np.ndarray]:
        """(split indices, their code maps, class x code counts, their images) of the codebook sample, encoded once."""
        if self._codebook is None:
            chosen = stratified_sample(self.labels.numpy(), self.codebook_images, seed=self.seed)
            images = self.images[chosen]
            codes = encode_codes(self.model, images).long().cpu()
            counts = code_counts_per_class(codes, self.labels.numpy()[chosen], self.num_codes)
            self._codebook = (chosen, codes, counts, images.numpy())
        return self._codebook

    def code_usage(self, code) -> dict:
        """How the codebook sample uses `code`: cells per class, each class's share of the code's uses,
        and the share of all cells that use it."""
        code = self.check_code(code)
        chosen, _, counts, _ = self._codebook_stats()
        per_class = counts[:, code]
        total = int(per_class.sum())
        return {
            "code": code,
            "images": len(chosen),
            "cells": total,
            "share_of_cells": total / max(int(counts.sum()), 1),
            "per_class": {name: int(n) for name, n in zip(CLASS_NAMES, per_class, strict=True)},
            "class_share": {
                name: (int(n) / total if total else 0.0) for name, n in zip(CLASS_NAMES, per_class, strict=True)
            },
        }

    def code_patches(self, code, count: int = 8) -> tuple[np.ndarray, list[tuple[int, int, int]]]:
        """Up to `count` image patches (uint8, n x size x size) where `code` is used, and (split index, row, col)."""
        code = self.check_code(code)
        chosen, codes, _, images = self._codebook_stats()
        patches, where = code_patches(images, codes, code, self.field, count=count, seed=self.seed)
        return patches, [(int(chosen[i]), r, c) for i, r, c in where]

    @one_thread
    def paste_preview(self, code, rows, cols) -> np.ndarray:
        """The decode of the current map with `code` pasted into the cells; the state does not change."""
        code = self.check_code(code)
        (r0, r1), (c0, c1) = self.check_cells(rows, cols)
        new = self.codes.clone()
        new[r0 : r1 + 1, c0 : c1 + 1] = code
        return self._decode(new).numpy()

    # ------------------------------------------------------------------ 4. interpolate

    @one_thread
    def interpolation(self, index_a, index_b) -> Interpolation:
        """`analysis.interpolate` between two images of the split, quantized and continuous; the last pair is kept,
        so moving the slider decodes nothing."""
        pair = (self.check_index(index_a), self.check_index(index_b))
        if self._interpolation is None or self._interpolation[0] != pair:
            result = interpolate(self.model, self.images[pair[0]], self.images[pair[1]], steps=self.interpolation_steps)
            self._interpolation = (pair, result)
        return self._interpolation[1]

    # ------------------------------------------------------------------ 5. classifier response

    def attach_classifier(self, path: str | os.PathLike) -> None:
        """Load a classifier trained on this explorer's VQ-VAE; `load_classifier` refuses one of another."""
        if self.vqvae_checkpoint is None:
            raise ConfigError(
                "this explorer was built from a model without its checkpoint, so no classifier can be paired with it"
            )
        model, _ = load_classifier(path, vqvae_checkpoint=self.vqvae_checkpoint, device=self.device)
        self.classifier, self.classifier_checkpoint = model, resolve_checkpoint(path)

    def _need_classifier(self) -> VQVAEClassifier:
        if self.classifier is None:
            raise ConfigError("no classifier is loaded: give a classifier checkpoint trained on this VQ-VAE")
        return self.classifier

    def _log_probabilities(self, maps: torch.Tensor) -> torch.Tensor:
        classifier = self._need_classifier()
        return torch.log_softmax(classifier.classify_codes(maps.to(self.device)), dim=1).cpu()

    @one_thread
    def probabilities(self, codes: Optional[torch.Tensor] = None) -> np.ndarray:
        """Class probabilities (10,) of a code map (default: the map as edited), from the classifier's head alone."""
        return self._log_probabilities((self.codes if codes is None else codes)[None])[0].exp().numpy()

    @one_thread
    def occlusion_map(self) -> tuple[np.ndarray, int]:
        """(12, 12) fall of the predicted class's log-odds when each cell alone becomes the blank code,
        and that class. Positive: the decision leans on the cell; 0 for cells already blank.

        Log-odds log(p / (1 - p)), not probabilities: at p = 0.995 a cell that halves the
        evidence for the class moves p by a fraction of a percent (and log p by 0.005),
        while the log-odds fall by a visible amount, as they would at p = 0.6.
        """
        # Only cells that are not blank already: hiding a blank cell changes nothing, and
        # the background is often half of the map, so the batch through the head halves too.
        cells = torch.nonzero(self.codes.reshape(-1) != self.blank_code).reshape(-1)
        maps = self.codes.reshape(1, -1).repeat(len(cells), 1)
        maps[torch.arange(len(cells)), cells] = self.blank_code
        # One batch: the current map first, then the occluded ones.
        log_probs = self._log_probabilities(torch.cat([self.codes[None], maps.view(-1, LATENT_SIZE, LATENT_SIZE)]))
        predicted = int(log_probs[0].argmax())
        others = torch.cat([log_probs[:, :predicted], log_probs[:, predicted + 1 :]], dim=1)
        log_odds = log_probs[:, predicted] - torch.logsumexp(others, dim=1)  # log p - log(1 - p), without 1 - p
        values = torch.zeros(LATENT_SIZE * LATENT_SIZE)
        values[cells] = log_odds[0] - log_odds[1:]
        return values.view(LATENT_SIZE, LATENT_SIZE).numpy(), predicted

    # ------------------------------------------------------------------ 6. generate with the prior

    def attach_prior(self, path: str | os.PathLike) -> None:
        """Load a prior over this VQ-VAE's code; `load_prior` refuses one of another K or other weights."""
        model, ckpt = load_prior(path, vqvae=self.model, device=self.device)
        self.prior, self.prior_checkpoint = model, os.fspath(path)
        self.prior_conditional = bool(ckpt["model_config"].get("class_conditional"))

    def _need_prior(self):
        if self.prior is None:
            raise ConfigError(
                "no prior is loaded: give a prior trained on this VQ-VAE's code (vqlib train-prior), "
                "or pretrained:NAME of a published one"
            )
        return self.prior

    def check_generation_class(self, label) -> Optional[int]:
        """None (no class), or a class index the loaded prior was trained to condition on."""
        self._need_prior()
        if label is None:
            return None
        if not _is_int(label) or not 0 <= label < len(CLASS_NAMES):
            raise ConfigError(f"class {label} does not exist: classes are numbered 0 to {len(CLASS_NAMES) - 1}")
        if not self.prior_conditional:
            raise ConfigError(
                "this prior was trained without classes, so it cannot draw a class: choose no class, or load a "
                "class-conditional prior (vqlib train-prior --class-conditional)"
            )
        return int(label)

    @staticmethod
    def _check_seed(seed) -> Optional[int]:
        if seed is not None and not (_is_int(seed) and seed >= 0):
            raise ConfigError(f"the seed must be an integer of 0 or more (or None), not {seed!r}")
        return None if seed is None else int(seed)

    def selection_mask(self, rows, cols) -> torch.Tensor:
        """(12, 12) bool: True on the rectangle of cells."""
        (r0, r1), (c0, c1) = self.check_cells(rows, cols)
        mask = torch.zeros(LATENT_SIZE, LATENT_SIZE, dtype=torch.bool)
        mask[r0 : r1 + 1, c0 : c1 + 1] = True
        return mask

    @one_thread
    def sample_code(
        self, label=None, *, temperature: float = 1.0, top_k: Optional[int] = None, seed=None, guidance: float = 0.0
    ):
        """Draw a whole new code from the prior (of class `label`, or none) into the editor; undo takes it back.
        `guidance` > 0 pushes the draw towards the class (classifier-free guidance; needs `label`)."""
        prior, label = self._need_prior(), self.check_generation_class(label)
        _, codes = sample_images(
            prior,
            self.model,
            1,
            classes=label,
            temperature=temperature,
            top_k=top_k,
            seed=self._check_seed(seed),
            guidance=guidance,
        )
        return self._replace_codes(codes[0].long())

    @one_thread
    def resample_cells(
        self,
        rows,
        cols,
        label=None,
        *,
        temperature: float = 1.0,
        top_k: Optional[int] = None,
        sweeps: int = 1,
        seed=None,
    ) -> np.ndarray:
        """Redraw the cells of the rectangle given all the other cells of the map as edited (Gibbs sweeps of
        `vqlib.prior.resample`, each cell from its exact full conditional); undo takes it back."""
        prior, label = self._need_prior(), self.check_generation_class(label)
        new = resample(
            prior,
            self.codes,
            self.selection_mask(rows, cols),
            classes=label,
            sweeps=sweeps,
            temperature=temperature,
            top_k=top_k,
            seed=self._check_seed(seed),
        )
        return self._replace_codes(new)

    @one_thread
    def cell_choices(self, row, col, label=None, *, count: int = 8) -> list[tuple[int, float]]:
        """What else the prior would put in one cell: the `count` likeliest codes of its exact full conditional
        given every other cell of the map as edited, with their probabilities, likeliest first."""
        prior, label = self._need_prior(), self.check_generation_class(label)
        (row, _), (col, _) = self.check_cells(row, col)
        probs = full_conditional(prior, self.codes, (row, col), classes=label)
        top = torch.topk(probs, min(count, len(probs)))
        return [(int(k), float(p)) for k, p in zip(top.indices, top.values, strict=True)]

    @one_thread
    def code_bits(self, codes: Optional[torch.Tensor] = None, label=None) -> float:
        """-log2 p(code) under the prior (of class `label`, or none) of a map (default: the map as edited)."""
        prior, label = self._need_prior(), self.check_generation_class(label)
        codes = self.codes if codes is None else codes
        return float(bits_per_image(prior, codes[None], None if label is None else [label])[0])


NO_CLASSIFIER = "none"


def classifier_choice(config: ExplorerConfig, vqvae_path: str | os.PathLike) -> Optional[str]:
    """The classifier an explorer opens with: the config's, or (None) the published classifier paired with a
    published VQ-VAE, so that a fresh clone shows the classifier panel at once; "none": no classifier."""
    if config.classifier_checkpoint is None:
        return paired_pretrained_classifier(vqvae_path)
    return None if config.classifier_checkpoint.strip().lower() == NO_CLASSIFIER else config.classifier_checkpoint


NO_PRIOR = "none"


def prior_choice(config: ExplorerConfig, vqvae: VQVAE) -> Optional[str]:
    """The prior an explorer opens with: the config's, or (None) a published prior trained on this VQ-VAE's
    code when there is one; "none": no prior."""
    if config.prior_checkpoint is None:
        return paired_pretrained_prior(vqvae)
    return None if config.prior_checkpoint.strip().lower() == NO_PRIOR else config.prior_checkpoint


def how_to_get_a_prior(explorer: Explorer) -> str:
    """The sentence a panel shows where no prior is loaded."""
    name = checkpoint_label(explorer.vqvae_checkpoint) if explorer.vqvae_checkpoint else "VQVAE_CHECKPOINT"
    return (
        f"No prior is loaded. Train one on this VQ-VAE's code (vqlib train-prior --vqvae-checkpoint {name} "
        "--class-conditional, see docs/prior.md), type its best.pt here and press load; a published prior "
        "trained on this VQ-VAE opens by itself."
    )


def open_explorer(config: ExplorerConfig, data: Optional[FashionMNIST] = None) -> Explorer:
    """An `Explorer` on the config's VQ-VAE (default: the grid's best, else the published one), classifier and
    prior."""
    device = resolve_device(config.device)
    vqvae_path = resolve_vqvae_checkpoint(config.vqvae_checkpoint)
    model, _ = load_vqvae(vqvae_path, device=device)
    data = data or load_fashion_mnist()
    images, labels = data.split(config.split)
    explorer = Explorer(
        model,
        images,
        labels,
        split=config.split,
        index=0,
        vqvae_checkpoint=vqvae_path,
        codebook_images=config.codebook_images,
        interpolation_steps=config.interpolation_steps,
        seed=config.seed,
    )
    explorer.select(config.image_index)
    classifier = classifier_choice(config, vqvae_path)
    if classifier:
        explorer.attach_classifier(classifier)
    prior = prior_choice(config, model)
    if prior:
        explorer.attach_prior(prior)
    return explorer
