"""Out-of-distribution detection from the prior over the VQ-VAE's code: how unlike FashionMNIST an image is.

A classifier answers every input with a class; this module says which answers
to distrust. The detector is a likelihood ratio (Ren et al. 2019) between two
autoregressive priors over the code c of an image (vqlib.prior):

    score(x) = bits_prior(c) - bits_background(c),   bits = -log2 p(c), classes=None

`prior` is the prior over the code of the FashionMNIST training split;
`background` is the same network trained on the same codes with 10% of their
positions replaced by uniformly drawn codes (`PriorConfig.perturbation`). The
background learns what survives the perturbation, the population-level
statistics (which codes are common, where the black background lies), and
little of the garments' structure; the ratio cancels the first and keeps the
second. A raw likelihood does not: it ranks simple inputs (blank images,
digits on black) as likelier than FashionMNIST itself (Nalisnick et al. 2019).

The form was fixed before any out-of-distribution image was scored, from those
two papers and the training and validation splits alone: no evaluation set,
synthetic or real, chose among forms, weights or signals (docs/robustness.md
says where each choice was made). Serra et al. 2020's correction (the input's
bits under a generic compressor) is computed as a baseline in `vqlib.ood_eval`
only: it subtracts the bits of the image's PNG from the bits of its code, two
different objects, where the background prior models the code itself.

The score is calibrated as a percentile among the 5,000 FashionMNIST validation
images, and an image is flagged beyond `THRESHOLD_PERCENTILE` (99: about 1% of
FashionMNIST flagged by design). The calibration is a vqlib checkpoint of kind
``ood`` (loadable with ``torch.load(weights_only=True)``) cached under
``checkpoints/ood-detectors/``, named by a hash of the three models' weights;
`detector_for` fits it the first time it is needed and says so.
"""

from __future__ import annotations

import hashlib
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from . import paths
from .checkpoints import (
    PRETRAINED_PREFIX,
    checkpoint_label,
    load_checkpoint,
    load_vqvae,
    resolve_checkpoint,
    resolve_vqvae_checkpoint,
    save_checkpoint,
)
from .classify import encode_codes
from .data import FashionMNIST
from .errors import CheckpointError, OutputError

KIND = "ood"
# What a saved detector computes; a cached file of another form is fitted again.
FORM = "likelihood_ratio"
THRESHOLD_PERCENTILE = 99.0  # flag above the validation 99th percentile: a 1% false-positive target
PRIOR_SUFFIX = "_prior"  # pretrained:K100_D64 -> pretrained:K100_D64_prior
BACKGROUND_SUFFIX = "_background"  # a prior's folder NAME -> its background model's folder NAME_background
BACKGROUND_PERTURBATION = 0.1  # Ren et al. 2019's released Fashion-MNIST background model (mutation rate 0.1)


# ----------------------------------------------------------------------------- which priors


def default_prior(vqvae_checkpoint: str | os.PathLike) -> str:
    """The published prior over a published VQ-VAE's code: ``pretrained:NAME_prior`` for ``pretrained:NAME``."""
    label = checkpoint_label(vqvae_checkpoint)
    if not label.startswith(PRETRAINED_PREFIX):
        raise CheckpointError(
            f"no prior over the code of {label} is given; train one (vqlib train-prior --vqvae-checkpoint {label}) "
            f"and its background model (the same with --perturbation {BACKGROUND_PERTURBATION:g}), and pass --prior"
        )
    return label + PRIOR_SUFFIX


def default_background(prior: str | os.PathLike) -> str:
    """Where the background model of a prior lives: the prior's folder name + _background, beside it.

    ``pretrained:K100_D64_prior`` -> ``pretrained:K100_D64_prior_background``;
    ``checkpoints/prior/K100_D64_transformer_cond/best.pt`` ->
    ``checkpoints/prior/K100_D64_transformer_cond_background/best.pt``, which is where
    `vqlib train-prior` puts a run of the same settings with --perturbation.
    """
    text = os.fspath(prior)
    if text.startswith(PRETRAINED_PREFIX):
        return text + BACKGROUND_SUFFIX
    path = Path(text)
    return str(path.parent.parent / (path.parent.name + BACKGROUND_SUFFIX) / path.name)


def _require(name: str, what: str, vqvae_label: str) -> None:
    """A prior or background model that does not exist: one sentence on how to make it and where to pass it."""
    try:
        found = resolve_checkpoint(name, kind="prior").is_file()
    except CheckpointError:
        found = False
    if found:
        return
    if what == "prior":
        how, option = f"vqlib train-prior --vqvae-checkpoint {vqvae_label} --class-conditional", "--prior"
    else:
        how = f"the prior's own train-prior command plus --perturbation {BACKGROUND_PERTURBATION:g}"
        option = "--background-prior"
    where = "is not published here" if name.startswith(PRETRAINED_PREFIX) else "does not exist"
    raise CheckpointError(
        f"the out-of-distribution detector needs the {what} {name}, which {where}; train it ({how}) "
        f"and pass its best.pt with {option}"
    )


@dataclass
class Models:
    """The three networks of the detector, in eval mode, and how they were named."""

    vqvae: torch.nn.Module
    prior: torch.nn.Module
    background: torch.nn.Module
    names: dict = field(default_factory=dict)  # vqvae, prior, background: labels for messages and records


def load_models(
    vqvae_checkpoint: Optional[str | os.PathLike] = None,
    prior: Optional[str | os.PathLike] = None,
    background: Optional[str | os.PathLike] = None,
    *,
    device: torch.device | str = "cpu",
) -> Models:
    """The VQ-VAE, its prior and the prior's background model, each checked against the others.

    Defaults: the VQ-VAE the prior was trained on when only the prior is given, else
    `resolve_vqvae_checkpoint` (the grid's best, else the published one); the published
    prior of a published VQ-VAE (`default_prior`); the background beside the prior
    (`default_background`). A prior trained on perturbed codes where the prior belongs,
    or an unperturbed one where the background belongs, is refused.
    """
    from .prior import check_pair, load_prior

    if vqvae_checkpoint is None and prior is not None:
        _require(os.fspath(prior), "prior", "VQ-VAE")
        recorded = load_checkpoint(prior, kind="prior").get("vqvae_checkpoint")
        vqvae_checkpoint = recorded if isinstance(recorded, str) and recorded else None
    vqvae_path = resolve_vqvae_checkpoint(vqvae_checkpoint)
    vqvae_label = checkpoint_label(vqvae_path)
    prior = os.fspath(prior) if prior is not None else default_prior(vqvae_path)
    background = os.fspath(background) if background is not None else default_background(prior)
    vqvae, _ = load_vqvae(vqvae_path, device=device)
    loaded = {}
    for name, what in ((prior, "prior"), (background, "background model")):
        _require(name, what, vqvae_label)
        model, ckpt = load_prior(name, device=device)
        check_pair(ckpt, vqvae, name, vqvae_label)
        perturbation = ckpt["model_config"].get("perturbation", 0.0)
        if what == "prior" and perturbation:
            raise CheckpointError(
                f"{name} was trained on perturbed codes (perturbation {perturbation:g}): it is a background model; "
                "pass it as the background and the prior trained on the plain codes as the prior"
            )
        if what == "background model" and not perturbation:
            raise CheckpointError(
                f"{name} was trained on plain codes, so it cannot be the background model: train one with "
                f"--perturbation {BACKGROUND_PERTURBATION:g} (Ren et al. 2019) and pass it as the background"
            )
        loaded[what] = model
    return Models(
        vqvae=vqvae,
        prior=loaded["prior"],
        background=loaded["background model"],
        names={"vqvae": vqvae_label, "prior": checkpoint_label(prior), "background": checkpoint_label(background)},
    )


# ----------------------------------------------------------------------------- the score


def code_bits(models: Models, codes: torch.Tensor, *, progress: bool = False) -> dict[str, np.ndarray]:
    """Bits of each code (N, 12, 12) under the prior and the background (both unconditional), and their ratio."""
    from .prior import bits_per_image

    prior = bits_per_image(models.prior, codes, progress=progress, desc="prior").numpy()
    background = bits_per_image(models.background, codes, progress=progress, desc="background model").numpy()
    return {"prior_bits": prior, "background_bits": background, "likelihood_ratio": prior - background}


@dataclass
class Detector:
    """A calibrated detector: the models and the sorted likelihood-ratio scores of the validation images."""

    models: Models
    val_scores: np.ndarray  # sorted ascending
    info: dict  # the saved model_config: form, threshold, digests, names
    path: Optional[Path] = None  # where it is cached, when it is

    @property
    def threshold_percentile(self) -> float:
        return float(self.info["threshold_percentile"])

    def bits(self, images: torch.Tensor, *, progress: bool = False) -> dict[str, np.ndarray]:
        """`code_bits` of uint8 images (N, 28, 28), encoded by the VQ-VAE as the classifier reads them."""
        return code_bits(self.models, encode_codes(self.models.vqvae, images).cpu(), progress=progress)

    def percentile(self, scores: np.ndarray) -> np.ndarray:
        """Percentile of each score among the validation images' (0-100; 100: beyond every one of them)."""
        return 100.0 * np.searchsorted(self.val_scores, scores, side="right") / len(self.val_scores)

    def score(self, images: torch.Tensor, *, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(OOD score, flag) per uint8 image (N, 28, 28): the score's validation percentile, and whether it lies
        above the threshold percentile (99 by default)."""
        percentile = self.percentile(self.bits(images, progress=progress)["likelihood_ratio"])
        return percentile, percentile > self.threshold_percentile


def _digest(model: torch.nn.Module) -> str:
    from .prior import weights_digest

    return weights_digest(model)


def detector_key(models: Models) -> str:
    """A hash of the form and the three models' weights: one detector per (VQ-VAE, prior, background)."""
    digest = hashlib.sha256(FORM.encode())
    for model in (models.vqvae, models.prior, models.background):
        digest.update(_digest(model).encode())
    return digest.hexdigest()


def detector_path(models: Models) -> Path:
    """checkpoints/ood-detectors/<first 16 hex digits of `detector_key`>.pt.

    Keyed by the weights, not stored beside a checkpoint: a published checkpoint
    (tracked in git, perhaps read-only) gets no stray file, and a model retrained in
    the same folder never meets a stale calibration.
    """
    return paths.checkpoints_dir() / "ood-detectors" / f"{detector_key(models)[:16]}.pt"


def fit_detector(models: Models, data: FashionMNIST, *, progress: bool = False) -> Detector:
    """Score the validation split (codes cached on disk by `vqlib.prior.split_codes`) and keep the sorted scores."""
    from .prior import split_codes

    codes, _ = split_codes(models.vqvae, data, "val")
    scores = np.sort(code_bits(models, codes, progress=progress)["likelihood_ratio"])
    info = {
        "form": FORM,
        "threshold_percentile": THRESHOLD_PERCENTILE,
        "val_images": len(scores),
        "key": detector_key(models),
        **{f"{name}_digest": _digest(getattr(models, name)) for name in ("vqvae", "prior", "background")},
        **{f"{name}": label for name, label in models.names.items()},
    }
    return Detector(models=models, val_scores=scores, info=info)


def save_detector(path: str | os.PathLike, detector: Detector) -> Path:
    state = {"val_scores": torch.from_numpy(np.ascontiguousarray(detector.val_scores, dtype=np.float64))}
    return save_checkpoint(path, KIND, {"model_config": detector.info, "state_dict": state})


def load_detector(path: str | os.PathLike, models: Models) -> Detector:
    """A saved calibration (weights_only, validated) for exactly these three models."""
    ckpt = load_checkpoint(path, kind=KIND)
    config, scores = ckpt["model_config"], ckpt["state_dict"].get("val_scores")
    if config.get("form") != FORM:
        raise CheckpointError(f"{path} is a detector of another form ({config.get('form')!r}); delete it")
    if (
        not isinstance(scores, torch.Tensor)
        or scores.ndim != 1
        or not len(scores)
        or not scores.dtype.is_floating_point
        or not bool(torch.isfinite(scores).all())
        or not bool((scores[1:] >= scores[:-1]).all())
    ):
        raise CheckpointError(f"{path} holds no usable validation scores; delete it and it is fitted again")
    if not isinstance(config.get("threshold_percentile"), float) or not 0 < config["threshold_percentile"] < 100:
        raise CheckpointError(f"{path} holds no threshold percentile in (0, 100); delete it")
    if config.get("key") != detector_key(models):
        raise CheckpointError(f"{path} was fitted on other models than these; delete it to fit it again")
    return Detector(models=models, val_scores=scores.numpy(), info=dict(config), path=Path(path))


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def detector_for(
    vqvae_checkpoint: Optional[str | os.PathLike] = None,
    prior: Optional[str | os.PathLike] = None,
    background: Optional[str | os.PathLike] = None,
    *,
    data: Optional[FashionMNIST] = None,
    device: torch.device | str = "cpu",
    refit: bool = False,
    progress: bool = True,
    say: Callable[[str], None] = _say,
) -> Detector:
    """The detector of (VQ-VAE, prior, background) (`load_models`): the cached calibration, or one fitted now.

    Fitting scores the 5,000 validation images under both priors (minutes
    on a 2-core CPU for the default transformers); `say` tells the user what is
    happening and where the result is cached, with a progress bar when `progress`.
    A cache folder that cannot be written only means fitting again next time.
    """
    from .data import load_fashion_mnist

    models = load_models(vqvae_checkpoint, prior, background, device=device)
    path = detector_path(models)
    if path.is_file() and not refit:
        try:
            return load_detector(path, models)
        except CheckpointError:
            pass  # another form's or a damaged file: fitted again and replaced below
    data = data or load_fashion_mnist()
    say(
        f"fitting the out-of-distribution detector of {models.names['prior']} (once; it is cached in "
        f"{paths.shown(path)}): both priors score the {len(data.val_labels):,} FashionMNIST validation images, "
        "a few minutes on a CPU"
    )
    detector = fit_detector(models, data, progress=progress)
    try:
        save_detector(path, detector)
        detector.path = path
    except OutputError as exc:
        say(f"the detector could not be cached ({exc}); it is fitted again next time")
    return detector
