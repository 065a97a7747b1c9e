"""The original study's claims ("Key Findings" of its README), measured (notebook 04).

Each claim becomes a dict: name, the original study's words, the numbers, the definition the
verdict applies, a verdict in VERDICTS and one generated sentence. The verdicts are strict on
purpose: a claim counts only where it holds beyond the noise of the sample (a bootstrap
interval, a label-shuffle baseline, or a stated tolerance), and "partly" says where only some
of it does. The measurements they read (t-SNE maps, code counts, interpolation paths,
per-image errors) come from analysis.py.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional, Sequence

import numpy as np
import pandas as pd
import torch

from .analysis import code_counts_per_class, code_frequencies
from .data import CLASS_NAMES, NUM_CLASSES
from .errors import ConfigError

# The original study's reading of its per-class reconstruction errors (its README, "Key Findings").
SEED_BEST_CLASSES = ("Trouser", "Ankle boot")
SEED_WORST_CLASSES = ("Shirt", "Pullover")

VERDICTS = ("agrees", "partly", "disagrees")
SEED_WORDS = {
    "tsne_clustering": "Clear clustering of similar clothing items in t-SNE visualization",
    "codebook_usage": "Distinct codebook usage patterns across clothing categories; "
    "specialized codebook vectors for specific clothing features",
    "interpolation": "Smooth transitions between clothing categories; coherent intermediate representations",
    "reconstruction": "Best performance on structured items (trousers, boots); "
    "higher variability in complex items (shirts, pullovers)",
}


def _ordinal(n: int) -> str:
    return "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")


def _verdict(parts: Sequence[bool]) -> str:
    parts = [bool(p) for p in parts]
    return "agrees" if all(parts) else ("partly" if any(parts) else "disagrees")


def _plain(value):
    """numpy scalars and arrays inside dicts and lists -> plain Python values (for JSON)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    return value


def _p(value: float) -> str:
    """A p-value as text: three decimals, or "< 0.001"."""
    return f"{value:.3f}" if value >= 0.001 else "< 0.001"


def _claim(name: str, numbers: dict, definition: str, verdict: str, sentence: str) -> dict:
    return {
        "name": name,
        "seed_words": SEED_WORDS[name],
        "numbers": _plain(numbers),
        "definition": definition,
        "verdict": verdict,
        "sentence": sentence,
    }


def bootstrap_p_value(estimate: float, samples: np.ndarray) -> float:
    """Two-sided p-value of "the difference is 0": the estimate over its bootstrap standard error, as a normal z.

    Not the share of samples beyond 0: that p-value cannot fall below
    2 / (samples + 1), and a multiple-comparison correction multiplies it (with
    300 resamples and 8 tests, Holm's smallest adjusted p-value would be
    0.053, so nothing could ever count). The normal approximation of the
    bootstrap distribution (the standard normal interval of Efron & Tibshirani
    1993) has no such floor.
    """
    se = float(np.std(np.asarray(samples, dtype=np.float64), ddof=1))
    if se == 0:
        return 1.0 if estimate == 0 else 0.0
    return float(math.erfc(abs(estimate) / se / math.sqrt(2)))


def holm_adjusted(p_values: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (Holm 1979): reject where the adjusted value is below the family's alpha.

    The i-th smallest of m p-values is multiplied by m - i + 1, and the running
    maximum keeps the order; it controls the family-wise error rate at alpha
    under any dependence between the tests, and rejects at least what
    Bonferroni rejects.
    """
    p = np.asarray(p_values, dtype=np.float64)
    m = len(p)
    order = np.argsort(p, kind="stable")
    adjusted = np.empty(m)
    adjusted[order] = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    return adjusted


def _interval(samples: np.ndarray, confidence: float) -> tuple[float, float]:
    """Percentile interval of bootstrap samples (along axis 0)."""
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(samples, [tail, 100 - tail], axis=0)
    return low, high


# --- t-SNE clustering


def quantized_code_features(model, indices: torch.Tensor, *, batch_size: int = 2000) -> np.ndarray:
    """(N, D * 144) float32: each image's 12x12 grid of code vectors, flattened (what the classifier reads)."""
    quantizer = model.quantizer
    device = quantizer.codebook.device
    with torch.inference_mode():
        return torch.cat(
            [
                quantizer.lookup(indices[s : s + batch_size].to(device).long()).flatten(1).float().cpu()
                for s in range(0, len(indices), batch_size)
            ]
        ).numpy()


def pixel_features(images: torch.Tensor | np.ndarray) -> np.ndarray:
    """(N, 784) float32 pixels in [0, 1]: the reference every representation is compared with."""
    images = np.asarray(images)
    return images.reshape(len(images), -1).astype(np.float32) / 255.0


def pca_features(features: np.ndarray, *, dims: int = 50, seed: int = 0) -> np.ndarray:
    """The first `dims` principal components (fewer when the data has fewer), float32.

    t-SNE of the flattened code (2,304 dimensions at D=16, 9,216 at D=64) goes
    through PCA to 50 first, the usual practice (van der Maaten & Hinton 2008)
    and scikit-learn's advice: it removes noise dimensions and makes the
    neighbour search cheap.
    """
    from sklearn.decomposition import PCA

    features = np.asarray(features, dtype=np.float32)
    dims = min(dims, features.shape[0], features.shape[1])
    return PCA(n_components=dims, svd_solver="randomized", random_state=seed).fit_transform(features).astype(np.float32)


def knn_correct(features: np.ndarray, labels: np.ndarray | torch.Tensor, *, k: int = 10) -> np.ndarray:
    """Leave-one-out k-nearest-neighbour classification: per point, whether its k nearest others vote its class.

    Euclidean distance; a tie in the vote goes to the class of the nearer
    neighbours. The mean of the result is the k-NN accuracy, the number
    behind "clear clustering": in a map where classes form islands, a point's
    neighbours share its class.
    """
    from sklearn.neighbors import NearestNeighbors

    labels = np.asarray(labels)
    n = len(labels)
    if n <= k:
        raise ConfigError(f"a {k}-nearest-neighbour accuracy needs more than {k} points, not {n}")
    _, idx = NearestNeighbors(n_neighbors=k + 1).fit(features).kneighbors(features)
    own = idx == np.arange(n)[:, None]
    # With duplicate points a point may not be its own first neighbour; then the farthest is dropped.
    own[~own.any(axis=1), -1] = True
    neighbours = idx[~own].reshape(n, k)
    classes = int(labels.max()) + 1
    votes = np.zeros((n, classes))
    weights = 1.0 + 1e-3 * np.arange(k, 0, -1) / k  # nearer neighbours break ties
    np.add.at(votes, (np.repeat(np.arange(n), k), labels[neighbours].reshape(-1)), np.tile(weights, n))
    return votes.argmax(axis=1) == labels


def tsne_claim(
    *,
    code_map: np.ndarray,
    code_space: np.ndarray,
    pixel_map: np.ndarray,
    pixel_space: np.ndarray,
    k: int = 10,
    classes: int = NUM_CLASSES,
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict:
    """ "Clear clustering of similar clothing items in t-SNE", as k-NN accuracies on one balanced sample.

    Each argument is `knn_correct`'s output for the same images: in the 2-D
    t-SNE map of the flattened quantized code, in the code space itself (PCA
    to 50), and the same two for the pixels, the reference. Agrees when the
    code's map is not worse than the pixels' map (the upper end of a paired
    bootstrap interval of the difference reaches 0); partly when it is worse
    but more than halfway from chance (1 / classes) to the pixels' map;
    disagrees otherwise.
    """
    arrays = {"code_map": code_map, "code_space": code_space, "pixel_map": pixel_map, "pixel_space": pixel_space}
    n = len(code_map)
    if any(len(a) != n for a in arrays.values()):
        raise ConfigError("the k-NN results of the code and the pixels must be measured on the same images")
    acc = {name: float(np.mean(a)) for name, a in arrays.items()}
    rng = np.random.Generator(np.random.PCG64(seed))
    resample = rng.integers(0, n, size=(n_boot, n))
    diff = code_map.astype(float) - pixel_map.astype(float)
    low, high = _interval(diff[resample].mean(axis=1), confidence)
    chance = 1.0 / classes
    halfway = chance + (acc["pixel_map"] - chance) / 2
    not_worse = high >= 0
    verdict = "agrees" if not_worse else ("partly" if acc["code_map"] > halfway else "disagrees")
    better = low > 0
    comparison = (
        "clusters the classes better than"
        if better
        else ("clusters the classes as clearly as" if not_worse else "clusters the classes less clearly than")
    )
    sentence = (
        f"In the 2-D t-SNE map of the flattened quantized code, {acc['code_map']:.2f} of {n} test images have "
        f"their class as the majority of their {k} nearest neighbours (pixels' map: {acc['pixel_map']:.2f}; "
        f"difference {acc['code_map'] - acc['pixel_map']:+.3f}, {confidence:.0%} interval {low:+.3f} to "
        f"{high:+.3f}; chance {chance:.2f}); in the 50-D spaces before t-SNE, code {acc['code_space']:.2f} "
        f"and pixels {acc['pixel_space']:.2f}. The code {comparison} the raw pixels, so the original study's "
        f'"clear clustering" {verdict}'
        + (
            " (the clustering is already in the pixels; the code keeps it)."
            if verdict == "agrees" and not better
            else "."
        )
    )
    numbers = {
        "k": k,
        "images": n,
        "knn_accuracy": acc,
        "map_difference_code_minus_pixels": acc["code_map"] - acc["pixel_map"],
        "map_difference_interval": [low, high],
        "confidence": confidence,
        "chance": chance,
    }
    definition = (
        f"{k}-NN accuracy (leave one out) in the 2-D t-SNE map of the flattened quantized code (PCA to 50 first) "
        "against the same for the pixels on the same balanced sample; agrees: not worse than the pixels' map "
        f"(upper end of the {confidence:.0%} paired bootstrap interval >= 0); partly: worse, but more than halfway "
        "from chance to the pixels' map; disagrees: otherwise. One t-SNE run per map (random initialisation from "
        "the analysis seed): the interval resamples the images of that run, not the t-SNE run itself"
    )
    return _claim("tsne_clustering", numbers, definition, verdict, sentence)


# --- codebook usage per class


def normalized_mutual_information(counts: np.ndarray) -> float:
    """NMI between class and code of a latent cell, from the (classes, K) counts; arithmetic-mean normalisation.

    The same as scikit-learn's `normalized_mutual_info_score` over the cells
    (its default normalisation), computed from the counts alone.
    """
    joint = counts / max(counts.sum(), 1)
    pc, pk = joint.sum(axis=1), joint.sum(axis=0)
    nz = joint > 0
    mi = float((joint[nz] * np.log(joint[nz] / np.outer(pc, pk)[nz])).sum())
    h = [-float((p[p > 0] * np.log(p[p > 0])).sum()) for p in (pc, pk)]
    return 0.0 if min(h) == 0 else max(mi, 0.0) / (sum(h) / 2)


def code_class_specificity(counts: np.ndarray) -> np.ndarray:
    """(K,) the largest P(class | code) of each code, with equal class priors (nan for an unused code).

    Frequencies within each class first, so that a class with more images in
    the sample does not look like a code's owner.
    """
    freq = code_frequencies(counts)
    totals = freq.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, freq.max(axis=0) / totals, np.nan)


def codebook_usage_claim(
    indices: torch.Tensor,
    labels: np.ndarray | torch.Tensor,
    num_embeddings: int,
    *,
    bar: float = 0.5,
    min_share: float = 0.001,
    shuffles: int = 50,
    seed: int = 0,
) -> dict:
    """ "Distinct codebook usage patterns across categories; specialised codebook vectors", measured.

    Distinct patterns: the normalised mutual information between a cell's code
    and its image's class. Specialised codes: codes used by at least
    `min_share` of all cells whose P(class | code) (equal class priors)
    exceeds `bar`. Both are compared with the same numbers after shuffling the
    labels across images `shuffles` times (each image keeps its codes, the
    link to the class is broken): a part holds when it beats every shuffle
    (a permutation test at p < 1 / (shuffles + 1)). Agrees when both hold.
    """
    labels = np.asarray(labels)
    if shuffles < 1:
        raise ConfigError(f"the codebook-usage baseline needs at least 1 label shuffle, not {shuffles}")
    rng = np.random.Generator(np.random.PCG64(seed))

    def measure(lab: np.ndarray) -> tuple[float, int, np.ndarray, float]:
        counts = code_counts_per_class(indices, lab, num_embeddings)
        spec = code_class_specificity(counts)
        used = counts.sum(axis=0) >= min_share * counts.sum()
        special = used & (np.nan_to_num(spec) > bar)
        return normalized_mutual_information(counts), int(special.sum()), spec, counts[:, special].sum() / counts.sum()

    nmi, special, spec, special_share = measure(labels)
    top = float(np.nanmax(spec)) if np.isfinite(spec).any() else 0.0
    shuffled = [measure(rng.permutation(labels)) for _ in range(shuffles)]
    nmi_null = np.array([s[0] for s in shuffled])
    special_null = np.array([s[1] for s in shuffled])
    # The baseline of the most class-specific code is the largest over every shuffle, as for the other two
    # numbers: one shuffle's largest value understates what chance reaches.
    top_null = np.array([np.nanmax(s[2]) if np.isfinite(s[2]).any() else 0.0 for s in shuffled])
    top_null_max = float(top_null.max())
    distinct = nmi > nmi_null.max()
    specialised = special >= 1 and special > special_null.max()
    verdict = _verdict([distinct, specialised])
    sentence = (
        f"The normalised mutual information between a latent cell's code and its image's class is {nmi:.3f} "
        f"(labels shuffled {shuffles} times: at most {nmi_null.max():.4f}); {special} of {num_embeddings} codes "
        f"have P(class | code) above {bar:g} (shuffled: at most {int(special_null.max())}), and they cover "
        f"{special_share:.0%} of all cells; the most class-specific code has P(class | code) = {top:.2f} "
        f"(largest over the {shuffles} shuffles: {top_null_max:.2f}; chance {1 / NUM_CLASSES:.2f}). "
        f"Distinct usage patterns {'hold' if distinct else 'do not hold'}, "
        f"specialised codes {'exist' if specialised else 'do not stand out from chance'}: the original study's claim {verdict}."
    )
    numbers = {
        "nmi": nmi,
        "nmi_shuffled_mean": float(nmi_null.mean()),
        "nmi_shuffled_max": float(nmi_null.max()),
        "specialised_codes": special,
        "specialised_codes_shuffled_mean": float(special_null.mean()),
        "specialised_codes_shuffled_max": int(special_null.max()),
        "specialised_share_of_cells": special_share,
        "max_specificity": top,
        "max_specificity_shuffled_max": top_null_max,
        "max_specificity_shuffled_mean": float(top_null.mean()),
        "bar": bar,
        "min_share": min_share,
        "shuffles": shuffles,
        "num_embeddings": num_embeddings,
        "max_specificity_per_code": np.nan_to_num(spec, nan=0.0),
        # One shuffle's distribution over the codes, for the histogram beside the true labels' distribution.
        "max_specificity_per_code_shuffled": np.nan_to_num(shuffled[0][2], nan=0.0),
    }
    definition = (
        "normalised mutual information (arithmetic) between cell code and class, and the count of codes "
        f"(used by >= {min_share:.1%} of cells) with P(class | code) > {bar:g} under equal class priors; each part "
        f"holds when it exceeds all of {shuffles} label shuffles; agrees: both hold; partly: one; disagrees: none"
    )
    return _claim("codebook_usage", numbers, definition, verdict, sentence)


# --- interpolation


def _rms(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Root mean square difference over the pixels of each image pair (leading axis kept)."""
    return np.sqrt(((a - b) ** 2).reshape(len(a), -1).mean(axis=1))


def interpolation_path_numbers(
    frames: torch.Tensor | np.ndarray, reference: np.ndarray, *, exclude: Sequence[int] = ()
) -> dict:
    """How one decoded path (steps, 1, 28, 28) in [0, 1] moves, and how far it lies from a pixel cross-fade.

    steps: RMS pixel change between consecutive frames; step_ratio: the
    largest step over the mean step (1 = even steps; a path that jumps in one
    step reaches steps - 1). The cross-fade is (1 - t) first frame + t last
    frame, so reconstruction error does not count: crossfade_deviation is the
    RMS distance of each interior frame from it, relative to the RMS distance
    between the ends (0 = the path is a cross-fade). nn_path / nn_crossfade:
    the mean RMS distance of the interior frames, and of the cross-fade's,
    to their nearest image in `reference` (N, 784) in [0, 1]: a coherent
    intermediate image lies nearer to real images than a double exposure.
    `exclude` names rows of `reference` left out of that search: the path's
    own two end images, which its early and late frames resemble by
    construction (on the published K100_D64 model 101 of the 140 interior
    frames of its 20 measured paths had one of them as nearest test image),
    so that the distance measures how real the frames look, not how close
    they stay to where they started.
    """
    frames = np.asarray(frames.cpu() if isinstance(frames, torch.Tensor) else frames, dtype=np.float64)
    frames = frames.reshape(len(frames), -1)
    s = len(frames)
    t = np.linspace(0.0, 1.0, s)[:, None]
    crossfade = (1 - t) * frames[0] + t * frames[-1]
    steps = _rms(frames[1:], frames[:-1])
    span = float(_rms(frames[-1:], frames[:1])[0])
    interior = slice(1, s - 1)
    deviation = _rms(frames[interior], crossfade[interior]) / max(span, 1e-12)

    ref = np.asarray(reference, dtype=np.float64)
    keep = np.ones(len(ref), dtype=bool)
    keep[list(exclude)] = False
    if not keep.any():
        raise ConfigError("the reference images hold nothing but the path's own ends; pass more real images")
    ref = ref[keep]

    def nearest(x: np.ndarray) -> np.ndarray:
        d2 = (x**2).sum(1)[:, None] - 2 * x @ ref.T + (ref**2).sum(1)[None, :]
        return np.sqrt(np.maximum(d2.min(axis=1), 0) / x.shape[1])

    return {
        "steps": steps,
        "step_ratio": float(steps.max() / max(steps.mean(), 1e-12)),
        "crossfade_deviation": deviation,
        "crossfade_deviation_mean": float(deviation.mean()) if len(deviation) else 0.0,
        "nn_path": float(nearest(frames[interior]).mean()) if s > 2 else 0.0,
        "nn_crossfade": float(nearest(crossfade[interior]).mean()) if s > 2 else 0.0,
    }


def interpolation_claim(
    paths: Sequence[torch.Tensor | np.ndarray],
    reference: np.ndarray,
    *,
    ends: Optional[Sequence[tuple[int, int]]],
    max_step_ratio: float = 2.0,
    crossfade_tolerance: float = 0.1,
    coherence_margin: float = 0.1,
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict:
    """ "Smooth transitions; coherent intermediate representations", on decoded latent paths.

    `paths` are the quantized decodes of `interpolate` (what the VQ-VAE can
    produce), `reference` real images (N, 784) in [0, 1], and `ends` the rows
    of `reference` each path starts and ends on (None when the reference
    holds none of the ends): a path's own ends are left out of its
    nearest-image search (`interpolation_path_numbers`). Smooth: in every
    path no step is larger than `max_step_ratio` times the path's mean step.
    Coherent: the path is not a cross-fade (mean deviation above
    `crossfade_tolerance` of the end-to-end distance) and its interior frames
    lie clearly nearer to real images than the cross-fade's (the upper end of
    a bootstrap interval over paths of the mean ratio nn_path / nn_crossfade
    is below 1 - `coherence_margin`: a few per cent nearer is still a blend).
    Agrees when both hold, partly when one does.
    """
    if len(paths) < 2:
        raise ConfigError(f"the interpolation claim needs at least 2 paths, not {len(paths)}")
    if ends is not None and len(ends) != len(paths):
        raise ConfigError(f"ends must name the two reference rows of each of the {len(paths)} paths, not {len(ends)}")
    per_path = [
        interpolation_path_numbers(p, reference, exclude=() if ends is None else ends[i]) for i, p in enumerate(paths)
    ]
    ratios = np.array([p["step_ratio"] for p in per_path])
    deviation = np.array([p["crossfade_deviation_mean"] for p in per_path])
    nn_ratio = np.array([p["nn_path"] / max(p["nn_crossfade"], 1e-12) for p in per_path])
    rng = np.random.Generator(np.random.PCG64(seed))
    low, high = _interval(nn_ratio[rng.integers(0, len(paths), size=(n_boot, len(paths)))].mean(axis=1), confidence)
    smooth = bool((ratios <= max_step_ratio).all())
    is_crossfade = float(deviation.mean()) <= crossfade_tolerance
    nearer = high < 1 - coherence_margin
    coherent = (not is_crossfade) and nearer
    verdict = _verdict([smooth, coherent])
    sentence = (
        f"Over {len(paths)} quantized latent paths between test images of different classes, the largest step "
        f"is {ratios.max():.1f}x the path's mean step at worst (median {np.median(ratios):.1f}x; smooth means "
        f"<= {max_step_ratio:g}x in every path): {'smooth' if smooth else 'not smooth: some paths jump'}. "
        f"The interior frames lie {deviation.mean():.2f} of the end-to-end distance from a pixel cross-fade of "
        f"the two ends"
        + (" — the latent path is close to a cross-fade" if is_crossfade else "")
        + f", and {nn_ratio.mean():.3f}x as far from the nearest real test image (the path's own two ends left "
        "out) as the cross-fade's frames "
        f"({confidence:.0%} interval {low:.3f} to {high:.3f}; coherent needs below {1 - coherence_margin:.2f}). "
        + (
            "Coherent intermediates hold"
            if coherent
            else "The intermediate images are not shown to be more coherent than a blend of the two ends"
        )
        + f": the original study's claim {verdict}."
    )
    numbers = {
        "paths": len(paths),
        "step_ratio_max": float(ratios.max()),
        "step_ratio_median": float(np.median(ratios)),
        "crossfade_deviation_mean": float(deviation.mean()),
        "nn_ratio_mean": float(nn_ratio.mean()),
        "nn_ratio_interval": [low, high],
        "nn_reference_excludes_ends": ends is not None,
        "max_step_ratio": max_step_ratio,
        "crossfade_tolerance": crossfade_tolerance,
        "coherence_margin": coherence_margin,
        "confidence": confidence,
        "per_path": per_path,
    }
    definition = (
        f"smooth: in every quantized latent path the largest RMS step <= {max_step_ratio:g}x the mean step; "
        f"coherent: mean deviation from the pixel cross-fade of the decoded ends > {crossfade_tolerance:g} of the "
        "end-to-end distance, and interior frames nearer to real test images (each path's own two end images left "
        "out of the search) than the cross-fade's (upper end of "
        f"the {confidence:.0%} bootstrap interval of the distance ratio < {1 - coherence_margin:g}); agrees: both; "
        "partly: one"
    )
    return _claim("interpolation", numbers, definition, verdict, sentence)


# --- reconstruction per class


def reconstruction_claim(
    errors: np.ndarray,
    labels: np.ndarray | torch.Tensor,
    *,
    best: Sequence[str] = SEED_BEST_CLASSES,
    worst: Sequence[str] = SEED_WORST_CLASSES,
    band: int = 3,
    n_boot: int = 1000,
    confidence: float = 0.95,
    alpha: float = 0.05,
    seed: int = 0,
) -> dict:
    """ "Best on structured items, more variability on complex items", with ties and noise counted.

    Classes are ranked by mean per-image MSE. A class named best counts only
    if it ranks in the best `band` AND its mean is lower than that of the
    class just outside the band (rank band + 1) beyond the noise: the
    bootstrap interval of the difference (images resampled within each
    class) lies above 0. Likewise for a class named worst against rank
    n - band. Variability is the coefficient of variation (std / mean of the
    per-image errors; the raw standard deviation grows with the mean): each
    (complex, structured) pair counts when the interval of the difference of
    their CVs lies above 0. Agrees when every part holds, partly when some do.

    "Beyond the noise" is decided for the parts as one family (two best, two
    worst, four pairs: eight tests with the original study's names): each part's
    two-sided p-value (`bootstrap_p_value`) is adjusted by Holm's
    method (`holm_adjusted`), and a part holds only when its adjusted p-value
    is below `alpha`, so that the chance of any part holding by noise alone
    is at most `alpha`. The `confidence` intervals are shown unadjusted.
    """
    if not 0 < alpha < 1:
        raise ConfigError(f"alpha must lie in (0, 1), not {alpha}")
    errors = np.asarray(errors, dtype=np.float64)
    labels = np.asarray(labels)
    present = [c for c in range(NUM_CLASSES) if (labels == c).sum() >= 2]
    names = [CLASS_NAMES[c] for c in present]
    missing = [c for c in (*best, *worst) if c not in names]
    if missing:
        raise ConfigError(f"the test images lack the classes {', '.join(missing)}; analyse a split with all classes")
    n = len(present)
    if not 1 <= band < n / 2:
        raise ConfigError(f"band must be at least 1 and below half the {n} classes, not {band}")
    rng = np.random.Generator(np.random.PCG64(seed))
    means, cvs, boot_means, boot_cvs = [], [], [], []
    for c in present:
        e = errors[labels == c]
        means.append(e.mean())
        cvs.append(e.std(ddof=1) / e.mean())
        sample = e[rng.integers(0, len(e), size=(n_boot, len(e)))]
        boot_means.append(sample.mean(axis=1))
        boot_cvs.append(sample.std(axis=1, ddof=1) / sample.mean(axis=1))
    means, cvs = np.array(means), np.array(cvs)
    boot_means, boot_cvs = np.stack(boot_means, axis=1), np.stack(boot_cvs, axis=1)  # (n_boot, classes)
    order = np.argsort(means, kind="stable")
    rank = {names[i]: r + 1 for r, i in enumerate(order)}
    col = {name: i for i, name in enumerate(names)}
    inside_best, outside_best = names[order[band - 1]], names[order[band]]
    inside_worst, outside_worst = names[order[n - band]], names[order[n - band - 1]]

    def margin(lower: str, higher: str) -> tuple[float, float, float, float]:
        """Mean of `higher` minus mean of `lower`, with its bootstrap interval and p-value."""
        d = boot_means[:, col[higher]] - boot_means[:, col[lower]]
        low, high = _interval(d, confidence)
        estimate = float(means[col[higher]] - means[col[lower]])
        return estimate, float(low), float(high), bootstrap_p_value(estimate, d)

    def part(c: str, inside: bool, other: str, m: tuple[float, float, float, float]) -> dict:
        # "holds" is decided below, once the family's p-values are adjusted.
        return {
            "rank": rank[c],
            "compared_with": other,
            "margin": m[0],
            "interval": list(m[1:3]),
            "p_value": m[3],
            "inside_band": inside,
        }

    best_parts, worst_parts = {}, {}
    # A class inside the band is compared with the class just outside it; one outside, with the band's edge
    # (how far it is from getting in). Either way a positive margin means "on the original study's side" of the other.
    for c in best:
        inside = rank[c] <= band
        other = outside_best if inside else inside_best
        best_parts[c] = part(c, inside, other, margin(c, other))
    for c in worst:
        inside = rank[c] > n - band
        other = outside_worst if inside else inside_worst
        worst_parts[c] = part(c, inside, other, margin(other, c))
    variability_parts = {}
    for w in worst:
        for b in best:
            d = boot_cvs[:, col[w]] - boot_cvs[:, col[b]]
            low, high = _interval(d, confidence)
            variability_parts[f"{w} vs {b}"] = {
                "cv_difference": float(cvs[col[w]] - cvs[col[b]]),
                "interval": [float(low), float(high)],
                "p_value": bootstrap_p_value(float(cvs[col[w]] - cvs[col[b]]), d),
            }
    family = [*best_parts.values(), *worst_parts.values(), *variability_parts.values()]
    for p, adjusted in zip(family, holm_adjusted([p["p_value"] for p in family]), strict=True):
        p["p_holm"] = float(adjusted)
        # On the original study's side of the other (a positive margin or CV difference) and beyond the family's noise;
        # a named class must also sit inside its band.
        on_side = p["inside_band"] and p["margin"] > 0 if "margin" in p else p["cv_difference"] > 0
        p["holds_unadjusted"] = bool(on_side and p["interval"][0] > 0)
        p["holds"] = bool(on_side and adjusted < alpha)
    cv_low, cv_high = _interval(boot_cvs, confidence)
    mean_low, mean_high = _interval(boot_means, confidence)
    per_class = [
        {
            "class": names[i],
            "rank": r + 1,
            "mse_mean": float(means[i]),
            "mse_mean_interval": [float(mean_low[i]), float(mean_high[i])],
            "cv": float(cvs[i]),
            "cv_interval": [float(cv_low[i]), float(cv_high[i])],
            "images": int((labels == present[i]).sum()),
        }
        for r, i in enumerate(order)
    ]
    group_cv_ratio = float(np.mean([cvs[col[c]] for c in worst]) / np.mean([cvs[col[c]] for c in best]))
    parts = [p["holds"] for p in family]
    verdict = _verdict(parts)
    lost = sum(p["holds_unadjusted"] and not p["holds"] for p in family)

    def listing(group: dict, lower_is_better: bool) -> str:
        def one(c: str, p: dict) -> str:
            where = "inside" if p["rank"] in band_ranks[lower_is_better] else "outside"
            return (
                f"{c} {p['rank']}{_ordinal(p['rank'])}, {where} the band, {p['margin']:+.5f} against "
                f"{p['compared_with']} ({rank[p['compared_with']]}{_ordinal(rank[p['compared_with']])}; interval "
                f"{p['interval'][0]:+.5f} to {p['interval'][1]:+.5f}, Holm-adjusted p {_p(p['p_holm'])}): "
                f"{'counts' if p['holds'] else 'does not count'}"
            )

        return "; ".join(one(c, p) for c, p in group.items())

    band_ranks = {True: range(1, band + 1), False: range(n - band + 1, n + 1)}
    held = [k for k, p in variability_parts.items() if p["holds"]]
    sentence = (
        f"Ranked by mean test reconstruction MSE (1st = lowest, of {n} classes; a class counts as best or worst "
        f"only inside the {band} best or worst and beyond the noise to the class just outside): "
        f"{listing(best_parts, True)}; {listing(worst_parts, False)}. "
        f"Coefficient of variation (std / mean of per-image MSE): "
        + ", ".join(f"{c} {cvs[col[c]]:.2f}" for c in (*best, *worst))
        + f"; {' and '.join(worst)} vary {group_cv_ratio:.2f}x as much as {' and '.join(best)} on average, and "
        f"{len(held)} of {len(variability_parts)} pairs differ beyond the noise"
        + (f" ({', '.join(held)})" if held and len(held) < len(variability_parts) else "")
        + f". Each of the {len(family)} parts is tested with Holm's correction (family-wise {alpha:.0%}); "
        + (
            f"{lost} part{'s' if lost != 1 else ''} that an uncorrected {confidence:.0%} interval would count "
            f"{'do' if lost != 1 else 'does'} not count."
            if lost
            else "the correction changes no part."
        )
        + f" The original study's claim {verdict}. Best class overall: {names[order[0]]}; worst: {names[order[-1]]}."
    )
    numbers = {
        "band": band,
        "classes": n,
        "best_named": best_parts,
        "worst_named": worst_parts,
        "variability_pairs": variability_parts,
        "cv_ratio_complex_to_structured": group_cv_ratio,
        "per_class": per_class,
        "confidence": confidence,
        "alpha_familywise": alpha,
        "parts_tested": len(family),
        "parts_holding_unadjusted": sum(p["holds_unadjusted"] for p in family),
        "parts_holding": sum(parts),
        "n_boot": n_boot,
        "inside_best_band_last": inside_best,
        "inside_worst_band_first": inside_worst,
    }
    definition = (
        f"a named class counts as best (worst) when it ranks in the {band} lowest (highest) mean per-image MSE "
        "and its difference to the class just outside that band is positive beyond the noise; variability by "
        "the coefficient of variation, each (complex, structured) pair counting when its CV difference is "
        "positive beyond the noise; beyond the noise: the part's two-sided p-value (its difference over the "
        f"bootstrap standard error, {n_boot} resamples, as a normal z), Holm-adjusted over the {len(family)} "
        f"parts, is below {alpha:g} (family-wise error "
        f"{alpha:.0%}); agrees: all parts; partly: some; disagrees: none"
    )
    return _claim("reconstruction", numbers, definition, verdict, sentence)


def claims_table(claims: Sequence[dict]) -> pd.DataFrame:
    """One row per claim: its name, the original study's words, the verdict and the sentence (the notebook's overview)."""
    return pd.DataFrame(
        [{k: c[k] for k in ("name", "seed_words", "verdict", "sentence")} for c in claims],
        columns=["name", "seed_words", "verdict", "sentence"],
    )


def reconstruction_parts(claim: dict) -> pd.DataFrame:
    """The reconstruction claim's parts, one row each: the difference, its interval, raw and Holm-adjusted p.

    `holds_unadjusted` is what each part's own 95% interval says alone;
    `holds` what the family's Holm correction leaves (the verdict's reading).
    """
    numbers = claim["numbers"]
    rows = []
    for group, key in (("best", "best_named"), ("worst", "worst_named")):
        for name, p in numbers[key].items():
            rows.append(
                {
                    "part": f"{name} among the {group}",
                    "compared_with": p["compared_with"],
                    "difference": p["margin"],
                    **{k: p.get(k) for k in ("interval", "p_value", "p_holm", "holds_unadjusted", "holds")},
                }
            )
    for pair, p in numbers["variability_pairs"].items():
        rows.append(
            {
                "part": f"CV {pair}",
                "compared_with": pair.split(" vs ")[1],
                "difference": p["cv_difference"],
                **{k: p.get(k) for k in ("interval", "p_value", "p_holm", "holds_unadjusted", "holds")},
            }
        )
    frame = pd.DataFrame(rows)
    frame[["low", "high"]] = pd.DataFrame(frame.pop("interval").tolist(), index=frame.index)
    columns = ["part", "compared_with", "difference", "low", "high", "p_value", "p_holm", "holds_unadjusted", "holds"]
    return frame[columns]


def analysis_summary(table: pd.DataFrame, claims: Sequence[dict], specific: pd.DataFrame, **extra) -> dict:
    """The JSON-ready record of an analysis run (plain Python values only).

    `claims` are the seed-claim dicts (`tsne_claim`, `codebook_usage_claim`,
    `interpolation_claim`, `reconstruction_claim`), recorded under "claims" in
    that order; "verdicts" repeats name -> verdict for a quick look.
    """
    unknown = [c.get("verdict") for c in claims if c.get("verdict") not in VERDICTS]
    if unknown:
        raise ConfigError(f"claim verdicts must be one of {', '.join(VERDICTS)}, not {unknown}")
    return _plain(
        {
            "per_class_mse": table.to_dict(orient="records"),
            "claims": list(claims),
            "verdicts": {c["name"]: c["verdict"] for c in claims},
            "class_specific_codes": specific.to_dict(orient="records"),
            **{k: (dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v) for k, v in extra.items()},
        }
    )
