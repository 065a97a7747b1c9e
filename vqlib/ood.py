"""Out-of-distribution scores from a frozen VQ-VAE: how unlike FashionMNIST an image is.

A classifier answers every input with a class; this module says which answers
to distrust. Every signal comes from the frozen VQ-VAE:

- ``mse``: reconstruction error. Fails on simple images: digits reconstruct
  better than clothes (measured: AUROC 0.06), the failure Nalisnick et al. 2019
  describe for likelihoods.
- ``mahalanobis``: class-conditional Mahalanobis distance of the flattened
  quantized code after PCA to 50 dimensions, shared covariance (Lee et al. 2018).
- ``code_nll``: bits of the code indices under a per-position categorical model
  of the training codes (a discrete likelihood, so it has the same complexity
  bias as any likelihood).
- ``serra``: ``code_nll`` minus the image's complexity, its zlib-compressed size in
  bits (the compressor PNG uses): Serra et al. 2020's S(x) = -log p(x) - L(x).

Each is fitted on training images only, standardised on the validation split
(median and spread), and the detector's score is the largest standardised
signal of a combination chosen on validation against synthetic sets (uniform
noise, blank, inverted validation images): never on the test set or the digits
that `evaluate` reports. The score is calibrated as a percentile among the
validation images, and an image is flagged beyond `threshold_percentile` (99:
about 1% of FashionMNIST flagged by design).

The fitted detector is a plain dict of tensors (a vqlib checkpoint of kind
``ood``, loadable with ``torch.load(weights_only=True)``) cached under
``checkpoints/ood-detectors/``, named by a hash of the VQ-VAE's weights: it
depends only on that VQ-VAE and the data, so every classifier trained on that
VQ-VAE shares it. `detector_for` fits it the first time it is needed (about
35,000 images encoded and decoded: a minute or two on a 2-core CPU) and reuses
it afterwards.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import zlib
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from . import paths
from .checkpoints import load_checkpoint, load_vqvae, save_checkpoint
from .data import IMAGE_SIZE, NUM_CLASSES, FashionMNIST, subset, to_float
from .errors import CheckpointError, OutputError

KIND = "ood"
SIGNALS = ("mse", "mahalanobis", "code_nll", "serra")
# Candidate combinations: every non-empty subset of the signals. Chosen on validation + synthetic sets.
CANDIDATES = tuple("+".join(c) for r in range(1, len(SIGNALS) + 1) for c in itertools.combinations(SIGNALS, r))
PCA_DIMS = 50  # the first Mahalanobis baseline measured: PCA to 50, shared covariance
FIT_IMAGES = 10_000  # training images the signals are fitted on (stratified)
THRESHOLD_PERCENTILE = 99.0  # flag above the validation 99th percentile: a 1% false-positive target
SYNTHETIC_SETS = ("noise", "blank", "inverted")
LATENT_POSITIONS = 12 * 12  # the encoder's 28 -> 12 latent grid


# ----------------------------------------------------------------------------- images


def complexity_bits(images: torch.Tensor) -> np.ndarray:
    """Serra et al. 2020's L(x): bits of each uint8 28x28 image compressed by zlib at level 9 (PNG's deflate)."""
    array = images.numpy()
    return np.array([8.0 * len(zlib.compress(a.tobytes(), 9)) for a in array])


def synthetic_images(kind: str, source: torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
    """Synthetic out-of-distribution images: uniform noise, blank (all black, as a blank photo becomes), or
    the `source` images inverted."""
    if kind == "noise":
        generator = torch.Generator().manual_seed(seed)
        return torch.randint(0, 256, (n, IMAGE_SIZE, IMAGE_SIZE), dtype=torch.uint8, generator=generator)
    if kind == "blank":
        return torch.zeros((n, IMAGE_SIZE, IMAGE_SIZE), dtype=torch.uint8)
    if kind == "inverted":
        return 255 - source[:n]
    raise ValueError(f"unknown synthetic set {kind!r}")


def digits_images() -> torch.Tensor:
    """scikit-learn's 1,797 handwritten digits (8x8, values 0..16) made MNIST-like: 0..255, 20x20, padded to 28x28."""
    from PIL import Image
    from sklearn.datasets import load_digits

    small = (load_digits().images * (255.0 / 16.0)).round().astype(np.uint8)
    pad = (IMAGE_SIZE - 20) // 2
    out = np.zeros((len(small), IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    for i, image in enumerate(small):
        out[i, pad : pad + 20, pad : pad + 20] = np.asarray(
            Image.fromarray(image).resize((20, 20), Image.Resampling.BILINEAR)
        )
    return torch.from_numpy(out)


# ----------------------------------------------------------------------------- raw signals


@torch.inference_mode()
def encode_for_ood(vqvae, images: torch.Tensor, *, batch_size: int = 500) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(reconstruction MSE per image, flattened quantized code (N, D*144), code indices (N, 144))."""
    device = next(vqvae.parameters()).device
    vqvae.eval()
    mse, flat, indices = [], [], []
    for start in range(0, len(images), batch_size):
        x = to_float(images[start : start + batch_size], device)
        out = vqvae(x)
        mse.append((out.reconstruction - x).pow(2).mean(dim=(1, 2, 3)).float().cpu())
        flat.append(out.vq.quantized.flatten(1).float().cpu())
        indices.append(out.vq.indices.flatten(1).cpu())
    return torch.cat(mse).numpy(), torch.cat(flat).numpy(), torch.cat(indices).numpy()


def _raw_signals(state: dict, vqvae, images: torch.Tensor) -> dict[str, np.ndarray]:
    mse, flat, indices = encode_for_ood(vqvae, images)
    z = (flat - state["pca_mean"].numpy()) @ state["pca_components"].numpy().T
    precision = state["precision"].numpy()
    distances = np.stack(
        [np.einsum("ij,jk,ik->i", z - mu, precision, z - mu) for mu in state["class_means"].numpy()], axis=1
    )
    log_probs = state["code_log2_probs"].numpy()  # (144, K)
    code_nll = -log_probs[np.arange(indices.shape[1])[None, :], indices].sum(1)
    return {
        # log: errors and distances are skewed over orders of magnitude; the median/spread
        # standardisation below expects a roughly symmetric spread.
        "mse": np.log(mse + 1e-8),
        "mahalanobis": np.log(distances.min(1) + 1e-8),
        "code_nll": code_nll,
        "serra": code_nll - complexity_bits(images),
    }


def _fit_state(vqvae, train_images: torch.Tensor, train_labels: torch.Tensor) -> dict:
    from sklearn.decomposition import PCA

    _, flat, indices = encode_for_ood(vqvae, train_images)
    pca = PCA(n_components=min(PCA_DIMS, flat.shape[1], len(flat)), random_state=0).fit(flat)
    z = pca.transform(flat)
    labels = np.asarray(train_labels)
    means = np.stack([z[labels == c].mean(0) for c in range(NUM_CLASSES)])
    centred = z - means[labels]
    covariance = centred.T @ centred / len(z)
    precision = np.linalg.pinv(covariance + 1e-6 * np.eye(len(covariance)))
    k = vqvae.quantizer.num_embeddings
    counts = np.stack([np.bincount(indices[:, p], minlength=k) for p in range(indices.shape[1])]).astype(np.float64)
    # Add-one (Laplace) smoothing: a code never seen at a position costs log2(N + K) bits, not infinity.
    log2_probs = np.log2((counts + 1.0) / (counts.sum(1, keepdims=True) + k))
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64))  # noqa: E731
    return {
        "pca_mean": t(pca.mean_),
        "pca_components": t(pca.components_),
        "class_means": t(means),
        "precision": t(precision),
        "code_log2_probs": t(log2_probs),
    }


# ----------------------------------------------------------------------------- standardised and combined


def _standardise(raw: dict[str, np.ndarray], state: dict) -> dict[str, np.ndarray]:
    """(value - validation median) / validation spread (half the 16-84 percentile range: sigma for a Gaussian)."""
    centre, spread = state["centre"].numpy(), state["spread"].numpy()
    return {name: (raw[name] - centre[i]) / spread[i] for i, name in enumerate(SIGNALS)}


def _combine(z: dict[str, np.ndarray], combination: str) -> np.ndarray:
    """The largest standardised signal of the combination: an image is unusual when any of its signals is."""
    return np.max(np.stack([z[name] for name in combination.split("+")]), axis=0)


def auroc(inliers: np.ndarray, outliers: np.ndarray) -> float:
    """Area under the ROC curve of `outliers` (positives) against `inliers`, higher score = more unusual."""
    from sklearn.metrics import roc_auc_score

    scores = np.concatenate([inliers, outliers])
    truth = np.concatenate([np.zeros(len(inliers)), np.ones(len(outliers))])
    return float(roc_auc_score(truth, scores))


def choose_combination(val_z: dict[str, np.ndarray], synthetic_z: dict[str, dict[str, np.ndarray]]) -> tuple[str, list]:
    """The candidate with the highest worst-case AUROC over the synthetic sets against validation, then the highest
    mean share of synthetic images flagged at the validation 99th percentile, then the fewest signals.

    Returns the choice and the table of every candidate (for the record)."""
    table = []
    for candidate in CANDIDATES:
        val = _combine(val_z, candidate)
        threshold = np.percentile(val, THRESHOLD_PERCENTILE)
        aurocs = {k: auroc(val, _combine(z, candidate)) for k, z in synthetic_z.items()}
        flagged = {k: float((_combine(z, candidate) > threshold).mean()) for k, z in synthetic_z.items()}
        table.append(
            {
                "combination": candidate,
                **{f"auroc_{k}": v for k, v in aurocs.items()},
                **{f"flagged_{k}": v for k, v in flagged.items()},
                "worst_auroc": min(aurocs.values()),
                "mean_flagged": float(np.mean(list(flagged.values()))),
            }
        )
    best = max(
        table,
        key=lambda row: (round(row["worst_auroc"], 3), round(row["mean_flagged"], 3), -row["combination"].count("+")),
    )
    return best["combination"], table


# ----------------------------------------------------------------------------- the detector


def vqvae_fingerprint(vqvae) -> str:
    """SHA-256 of the VQ-VAE's weights: a detector belongs to exactly one VQ-VAE."""
    digest = hashlib.sha256()
    for name, tensor in sorted(vqvae.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def fit_detector(
    vqvae, data: FashionMNIST, *, fit_images: int = FIT_IMAGES, synthetic_per_set: Optional[int] = None, seed: int = 0
) -> dict:
    """Fit the signals on `fit_images` training images, standardise and calibrate them on the validation split,
    and choose the combination on validation against synthetic sets. Returns the detector (a plain dict)."""
    train_images, train_labels = subset(
        data.train_images, data.train_labels, min(fit_images, len(data.train_labels)), seed
    )
    state = _fit_state(vqvae, train_images, train_labels)
    val_raw = _raw_signals(state, vqvae, data.val_images)
    stack = np.stack([val_raw[name] for name in SIGNALS])
    low, centre, high = np.percentile(stack, [15.87, 50, 84.13], axis=1)
    state["centre"] = torch.from_numpy(centre)
    state["spread"] = torch.from_numpy(np.maximum((high - low) / 2, 1e-6))
    val_z = _standardise(val_raw, state)
    n = len(data.val_images)
    m = min(synthetic_per_set or n, n)  # as many of each synthetic set as validation images, unless told
    synthetic_z = {
        kind: _standardise(_raw_signals(state, vqvae, synthetic_images(kind, data.val_images, m, seed)), state)
        for kind in SYNTHETIC_SETS
    }
    combination, table = choose_combination(val_z, synthetic_z)
    state["val_scores"] = torch.from_numpy(np.sort(_combine(val_z, combination)))
    return {
        "kind": KIND,
        "model_config": {
            "combination": combination,
            "threshold_percentile": THRESHOLD_PERCENTILE,
            "fit_images": len(train_images),
            "val_images": n,
            "signals": list(SIGNALS),
            "vqvae_fingerprint": vqvae_fingerprint(vqvae),
        },
        "state_dict": state,
        "selection": table,
    }


def detector_path(vqvae) -> Path:
    """Where the detector of a VQ-VAE is cached: checkpoints/ood-detectors/<first 16 hex of its fingerprint>.pt.

    Keyed by the weights, not by the checkpoint's folder: a published checkpoint
    (tracked in git, perhaps read-only) gets no stray file beside it, and a
    VQ-VAE retrained in the same folder never meets a stale detector.
    """
    return paths.checkpoints_dir() / "ood-detectors" / f"{vqvae_fingerprint(vqvae)[:16]}.pt"


def load_detector(path: str | os.PathLike, vqvae) -> dict:
    """A saved detector (weights_only, validated) for exactly this VQ-VAE."""
    ckpt = load_checkpoint(path, kind=KIND)
    config, state = ckpt["model_config"], ckpt["state_dict"]
    needed = {
        "pca_mean",
        "pca_components",
        "class_means",
        "precision",
        "code_log2_probs",
        "centre",
        "spread",
        "val_scores",
    }
    if not needed <= set(state) or not all(isinstance(state[k], torch.Tensor) for k in needed):
        raise CheckpointError(f"{path} is not a complete OOD detector (it lacks {sorted(needed - set(state))})")
    # A damaged or foreign cache file must fail here, in one sentence, not in the middle of scoring.
    p, f = tuple(state["pca_components"].shape) if state["pca_components"].ndim == 2 else (0, 0)
    shapes = {
        "pca_mean": (f,),
        "class_means": (NUM_CLASSES, p),
        "precision": (p, p),
        "code_log2_probs": (LATENT_POSITIONS, vqvae.quantizer.num_embeddings),
        "centre": (len(SIGNALS),),
        "spread": (len(SIGNALS),),
    }
    wrong = [k for k, shape in shapes.items() if tuple(state[k].shape) != shape]
    if p < 1 or f != vqvae.config.embedding_dim * LATENT_POSITIONS or state["val_scores"].ndim != 1:
        wrong.append("pca_components or val_scores")
    if wrong or not len(state["val_scores"]):
        raise CheckpointError(
            f"{path} does not fit this VQ-VAE ({', '.join(wrong) or 'no validation scores'}); delete it"
        )
    if config.get("combination") not in CANDIDATES or not isinstance(config.get("threshold_percentile"), float):
        raise CheckpointError(f"{path} names no known combination of signals; delete it and it is fitted again")
    if config.get("vqvae_fingerprint") != vqvae_fingerprint(vqvae):
        raise CheckpointError(f"{path} was fitted on another VQ-VAE than the one beside it; delete it to fit it again")
    return ckpt


def save_detector(path: str | os.PathLike, detector: dict) -> Path:
    return save_checkpoint(path, KIND, {k: v for k, v in detector.items() if k != "kind"})


def detector_for(
    vqvae_checkpoint: str | os.PathLike, data: Optional[FashionMNIST] = None, *, device="cpu", refit: bool = False
):
    """(VQ-VAE, detector) of a VQ-VAE checkpoint: the cached detector, or one fitted now and cached.

    A cache folder that cannot be written only means the detector is fitted again next time.
    """
    from .data import load_fashion_mnist

    vqvae, _ = load_vqvae(vqvae_checkpoint, device=device)
    path = detector_path(vqvae)
    if path.is_file() and not refit:
        try:
            return vqvae, load_detector(path, vqvae)
        except CheckpointError:
            pass  # another VQ-VAE's or a damaged detector: fitted again and replaced below
    detector = fit_detector(vqvae, data or load_fashion_mnist())
    try:
        save_detector(path, detector)
    except OutputError:
        pass
    return vqvae, detector


def score_signals(detector: dict, vqvae, images: torch.Tensor) -> dict[str, np.ndarray]:
    """Every standardised signal and the detector's combined score, per image."""
    z = _standardise(_raw_signals(detector["state_dict"], vqvae, images), detector["state_dict"])
    return {**z, "detector": _combine(z, detector["model_config"]["combination"])}


def score_images(detector: dict, vqvae, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(OOD score, flag) per uint8 image (N, 28, 28).

    The score is the percentile of the image's combined signal among the
    validation images (0-100; 100 = beyond every validation image); the flag
    says it lies above the detector's threshold percentile (99 by default).
    """
    combined = score_signals(detector, vqvae, images)["detector"]
    val = detector["state_dict"]["val_scores"].numpy()
    percentile = 100.0 * np.searchsorted(val, combined, side="right") / len(val)
    return percentile, percentile > detector["model_config"]["threshold_percentile"]


# ----------------------------------------------------------------------------- measurement (vqlib ood-eval)


def evaluate_detector(detector: dict, vqvae, data: FashionMNIST, *, seed: int = 1):
    """AUROC of every signal and of the detector for each out-of-distribution set against the FashionMNIST test
    set, and the share of each set flagged at the detector's threshold (on the test set: the false-positive rate).

    The sets: scikit-learn's handwritten digits (real images), uniform noise,
    blank images and the inverted test set. None of them, nor the test set,
    took part in fitting or choosing the detector.
    """
    import pandas as pd

    test = data.test_images
    sets = {
        "FashionMNIST test (in-distribution)": test,
        "digits (scikit-learn, MNIST-like)": digits_images(),
        "uniform noise": synthetic_images("noise", test, len(test), seed),
        "blank": synthetic_images("blank", test, 1000),
        "inverted FashionMNIST test": synthetic_images("inverted", test, len(test)),
    }
    scores = {name: score_signals(detector, vqvae, images) for name, images in sets.items()}
    percentiles = {name: score_images(detector, vqvae, images)[1] for name, images in sets.items()}
    inliers = scores["FashionMNIST test (in-distribution)"]
    rows = []
    for name, images in sets.items():
        row = {"set": name, "images": len(images)}
        for signal in (*SIGNALS, "detector"):
            row[f"auroc_{signal}"] = (
                float("nan") if name.startswith("FashionMNIST") else auroc(inliers[signal], scores[name][signal])
            )
        row["flagged"] = float(percentiles[name].mean())
        rows.append(row)
    return pd.DataFrame(rows)
