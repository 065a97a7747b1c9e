"""How good a prior's samples are: Fréchet distances, class accuracy, CAS and memorisation (notebook 06).

A likelihood in bits says how well the prior predicts held-out codes, not whether
its samples look like clothes. Every measure here compares images: samples of the
prior (decoded by the VQ-VAE) and of the per-position baseline beside real images
and the VQ-VAE's reconstructions of them, so each number has a floor (real against
real) and a ceiling of what the decoder allows (reconstructions).

The feature space is that of a classifier trained on real training pixels only:
`PixelConvNet`, the from-scratch pixel baseline of label efficiency (an encoder of
the protocol VQ-VAE's shape, 28x28 -> 12x12x64, no codebook, and the classifier's
head), chosen on validation accuracy and cached under checkpoints/pixel-classifier/.
The one behind the published measures is published (checkpoints/pretrained/pixel-classifier/),
so a Fréchet distance computed elsewhere is in the same feature space, and a clone does not
train it again. Its features are the head's 128 hidden units, the layer before the logits, as the
Fréchet Inception distance reads Inception's last pooling layer (Heusel et al.
2017); no ImageNet network is needed, and none could be downloaded here.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from . import paths
from .checkpoints import build_checked, load_checkpoint, save_checkpoint
from .classify import Inputs, encode_codes, evaluate_logits, fit, stopping
from .config import ClassifierConfig, VQVAEConfig
from .data import CLASS_NAMES, IMAGE_SIZE, NUM_CLASSES, FashionMNIST, class_examples, subset, to_float
from .device import resolve_device, seed_everything
from .errors import CheckpointError, ConfigError, OutputError
from .files import utc_timestamp, write_json
from .models import ClassificationHead, PixelConvNet
from .prior import complete, position_bits
from .progress import progress_bar

KIND = "pixel_classifier"
# The encoder's shape: the protocol VQ-VAE's (K100_D64), as label efficiency's pixel baseline on it.
FEATURE_ENCODER = VQVAEConfig(num_embeddings=100, embedding_dim=64)
# The ClassifierConfig fields that decide what a pixel classifier learns (not where it runs or is written).
_CLASSIFIER_SETTINGS = (
    "conv_channels",
    "hidden_units",
    "dropout",
    "epochs",
    "patience",
    "min_steps_per_epoch",
    "batch_size",
    "learning_rate",
    "weight_decay",
    "seed",
)


# ----------------------------------------------------------------------------- samples


@dataclass
class Samples:
    """Decoded samples, stored as the real images are: uint8 (N, 28, 28), their codes, and the class each was
    drawn for (None when drawn without one)."""

    images: torch.Tensor
    codes: torch.Tensor
    classes: Optional[torch.Tensor]

    def __len__(self) -> int:
        return len(self.images)


def balanced_classes(num: int, num_classes: int = NUM_CLASSES) -> torch.Tensor:
    """(num,) class indices in blocks, as equal as possible (the first num % num_classes classes one more)."""
    return torch.sort(torch.arange(num) % num_classes).values


def balanced_indices(labels, size: Optional[int], seed: int = 0) -> torch.Tensor:
    """Indices of a class-balanced subset of `size` (data.subset's choice); all of them, in order, for None."""
    labels = torch.as_tensor(labels)
    if size is None or size >= len(labels):
        return torch.arange(len(labels))
    positions = torch.arange(len(labels))
    return subset(positions, labels, size, seed)[0]


def class_rows(labels, per_class: int, seed: int = 0) -> torch.Tensor:
    """(classes, per_class) indices: `per_class` items of each class, chosen at random (seeded), one row per class.

    `labels` None (samples drawn without a class): the first 10 x per_class items, ten rows.
    """
    if labels is None:
        return torch.arange(NUM_CLASSES * per_class).view(NUM_CLASSES, per_class)
    return torch.from_numpy(class_examples(labels, per_class, seed=seed))


def one_per_class(labels, num: int, seed: int = 0) -> torch.Tensor:
    """Indices of `num` (at most 10) items, each of another class, the classes in order."""
    if not 1 <= num <= NUM_CLASSES:
        raise ConfigError(f"one image per class gives 1 to {NUM_CLASSES} images, not {num}")
    return class_rows(labels, 1, seed)[:num, 0]


def samples_by_class(samples: Samples, per_class: int, seed: int = 0) -> torch.Tensor:
    """(10, per_class, 28, 28) images: a row per class drawn for (the first 10 x per_class, without classes)."""
    return samples.images[class_rows(samples.classes, per_class, seed)]


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Decoded images (N, 1, 28, 28) float in [0, 1] -> uint8 (N, 28, 28) on the CPU, as the real images are."""
    return images.reshape(len(images), IMAGE_SIZE, IMAGE_SIZE).clamp(0, 1).mul(255).round().to(torch.uint8).cpu()


@torch.no_grad()
def decode_codes(vqvae, codes: torch.Tensor, *, batch_size: int = 1000) -> torch.Tensor:
    """Code indices (N, 12, 12) -> decoded uint8 images (N, 28, 28): what the VQ-VAE draws for each code."""
    device = next(vqvae.parameters()).device
    vqvae.eval()
    out = [
        to_uint8(vqvae.decode_indices(codes[s : s + batch_size].long().to(device)))
        for s in range(0, len(codes), batch_size)
    ]
    return torch.cat(out) if out else torch.zeros(0, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.uint8)


def reconstructions(vqvae, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(decoded uint8 images (N, 28, 28), codes (N, 12, 12)) of uint8 images: what the decoder makes of their code."""
    codes = encode_codes(vqvae, images).cpu().long()
    return decode_codes(vqvae, codes), codes


def complete_images(
    prior,
    vqvae,
    images: torch.Tensor,
    labels: torch.Tensor,
    keep_rows: int,
    *,
    num: int,
    conditional: bool,
    temperature: float = 1.0,
    top_k: Optional[int] = None,
    seed: int = 0,
) -> list[torch.Tensor]:
    """For each uint8 image, `num` completions (uint8 (num, 28, 28)) keeping its first `keep_rows` code rows
    (`vqlib.prior.complete`), given the image's class when the prior is `conditional`."""
    return [
        to_uint8(
            complete(
                prior,
                vqvae,
                image,
                keep_rows,
                num=num,
                classes=int(label) if conditional else None,
                temperature=temperature,
                top_k=top_k,
                seed=seed + i,
            )[0]
        )
        for i, (image, label) in enumerate(zip(images, labels, strict=True))
    ]


def draw_samples(
    prior,
    vqvae,
    num: int,
    *,
    conditional: bool,
    temperature: float = 1.0,
    top_k: Optional[int] = None,
    seed: int = 0,
    batch_size: int = 500,
    progress: bool = True,
    desc: str = "samples",
    guidance: float = 0.0,
) -> Samples:
    """`num` codes drawn from `prior` and decoded; with `conditional`, classes balanced (`balanced_classes`).

    One generator, seeded once, draws every batch: the same seed and batch size give the
    same samples on the same device.
    """
    if not isinstance(num, int) or num < 1:
        raise ConfigError(f"the number of samples must be a positive integer, not {num!r}")
    device = next(prior.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    classes = balanced_classes(num) if conditional else None
    codes = []
    bar = progress_bar(total=num, enabled=progress, desc=desc, unit="sample")
    for start in range(0, num, batch_size):
        n = min(batch_size, num - start)
        part = None if classes is None else classes[start : start + n].to(device)
        guided = guidance if part is not None else 0.0  # guidance needs a class; without one it is the model itself
        codes.append(
            prior.sample(n, part, temperature=temperature, top_k=top_k, generator=generator, guidance=guided).cpu()
        )
        bar.update(n)
    bar.close()
    codes = torch.cat(codes)
    return Samples(decode_codes(vqvae, codes), codes, classes)


# ----------------------------------------------------------------------------- the classifier on pixels


@dataclass
class PixelClassifier:
    """A `PixelConvNet` trained on real pixels (or on samples), in eval mode, with what it was trained on."""

    model: PixelConvNet
    record: dict
    checkpoint: Optional[Path] = None

    @property
    def test_accuracy(self) -> float:
        return self.record["test_accuracy"]

    @property
    def summary(self) -> dict:
        """The record without its per-epoch history: what a results file keeps."""
        return {k: v for k, v in self.record.items() if k != "history"}


def pixel_classifier_config(epochs: int, patience: int, seed: int, device: str) -> ClassifierConfig:
    """The classifier stage's defaults (head size, AdamW, batch 128), with an epoch of one pass: these classifiers
    see thousands of images, and a floor of steps per epoch (min_steps_per_epoch) is for label sets of a few dozen."""
    return ClassifierConfig(epochs=epochs, patience=patience, seed=seed, device=device, min_steps_per_epoch=1)


def build_pixel_classifier(config: ClassifierConfig) -> PixelConvNet:
    return PixelConvNet(FEATURE_ENCODER, ClassificationHead.from_config(config, FEATURE_ENCODER.embedding_dim))


def train_pixel_classifier(
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    config: ClassifierConfig,
    *,
    progress: bool = True,
    desc: str = "pixel classifier",
) -> PixelClassifier:
    """A `PixelConvNet` trained on `train` (uint8 images, labels) by the classifier stage's loop (`classify.fit`:
    AdamW, cosine decay, the epoch of the best `val` accuracy kept, early stopping), then measured once on `test`."""
    device = resolve_device(config.device)
    seed_everything(config.seed)
    model = build_pixel_classifier(config).to(device)
    to_input = lambda x: to_float(x, device)  # noqa: E731
    inputs = [Inputs(images.to(device), labels.to(device), to_input) for images, labels in (train, val, test)]
    params = [{"params": model.parameters(), "lr": config.learning_rate, "initial_lr": config.learning_rate}]
    started = time.perf_counter()
    history, _, best_epoch = fit(
        model,
        params,
        inputs[0],
        inputs[1],
        epochs=config.epochs,
        config=config,
        seed=config.seed,
        desc=desc,
        progress=progress,
    )
    # Batches of 256: on a CPU, batches of 1,000 images ran this network 2.7x slower (cache misses).
    predicted = evaluate_logits(model, inputs[2], batch_size=256).argmax(1).cpu().numpy()
    truth = test[1].numpy()
    stop = stopping(history, best_epoch, max_epochs=config.epochs, patience=config.patience)
    record = {
        "train_images": len(train[1]),
        "selection_images": len(val[1]),
        "val_accuracy": history[best_epoch - 1]["val_acc"],
        "test_accuracy": float((predicted == truth).mean()),
        "test_accuracy_per_class": per_class_accuracy(predicted, truth).tolist(),
        "best_epoch": best_epoch,
        "stopped_epoch": stop["stopped_epoch"],
        "stop_reason": stop["reason"],
        "seconds": time.perf_counter() - started,
        "history": history,
    }
    model.eval()
    return PixelClassifier(model, record)


def real_pixel_classifier(
    data: FashionMNIST,
    *,
    train_subset: Optional[int] = None,
    val_subset: Optional[int] = None,
    epochs: int = 30,
    patience: int = 3,
    seed: int = 0,
    device: str = "auto",
    progress: bool = True,
) -> PixelClassifier:
    """A `PixelConvNet` trained on `train_subset` real training images (classes balanced; None: all 55,000),
    its epoch chosen on `val_subset` validation images (None: all 5,000), measured on the test split.

    Trained once per setting and cached under checkpoints/pixel-classifier/ (a checkpoint
    of kind ``pixel_classifier`` that loads with weights_only): the feature classifier of
    every run of notebook 06, and the real twin of its CAS, are the same network when
    their settings are. The published one (checkpoints/pretrained/pixel-classifier/) is
    used when its settings are those asked for. A cache that cannot be written only means
    training again next time.
    """
    config = pixel_classifier_config(epochs, patience, seed, device)
    n_train = len(data.train_labels) if train_subset is None else min(train_subset, len(data.train_labels))
    n_val = len(data.val_labels) if val_subset is None else min(val_subset, len(data.val_labels))
    wanted = {
        "classifier": {name: getattr(config, name) for name in _CLASSIFIER_SETTINGS},
        "encoder": dataclasses.asdict(FEATURE_ENCODER),
        "train_images": n_train,
        "selection_images": n_val,
    }
    name = f"pixel_convnet_{'all' if n_train == len(data.train_labels) else n_train}"
    name += f"_val{'all' if n_val == len(data.val_labels) else n_val}_e{epochs}_p{patience}_s{seed}"
    path = pixel_classifier_cache() / name / "best.pt"
    for candidate in (path, published_pixel_classifiers() / name / "best.pt"):
        if candidate.is_file():
            try:
                return load_pixel_classifier(candidate, expect=wanted, device=device)
            except CheckpointError:
                pass  # another setting's or a damaged file: trained again (and the cache replaced) below
    found = train_pixel_classifier(
        subset(data.train_images, data.train_labels, n_train, seed),
        subset(data.val_images, data.val_labels, n_val, seed),
        (data.test_images, data.test_labels),
        config,
        progress=progress,
        desc=f"pixel classifier ({n_train} real images)",
    )
    record = {**found.record, "trained_on": "real training images", "written": utc_timestamp()}
    try:
        save_checkpoint(
            path,
            KIND,
            {
                "model_config": wanted,
                "state_dict": found.model.state_dict(),
                "record": record,
                "code": paths.code_version(),
            },
        )
        found.checkpoint = path
    except OutputError:
        pass
    return PixelClassifier(found.model, record, found.checkpoint)


def pixel_classifier_cache() -> Path:
    return paths.checkpoints_dir() / "pixel-classifier"


def published_pixel_classifiers() -> Path:
    return paths.pretrained_dir() / "pixel-classifier"


def cached_pixel_classifier(record: dict) -> Optional[Path]:
    """The cached checkpoint whose record is `record` (a `PixelClassifier.summary`, as notebook 06 keeps it: its
    written time tells one training from another), or None when it is not cached here."""
    written = record.get("written") if isinstance(record, dict) else None
    if not written:
        return None
    for path in sorted(pixel_classifier_cache().glob("*/best.pt")):
        try:
            found = load_checkpoint(path, kind=KIND).get("record", {})
        except CheckpointError:
            continue
        if isinstance(found, dict) and found.get("written") == written:
            return path
    return None


def load_pixel_classifier(path, *, expect: Optional[dict] = None, device: str = "auto") -> PixelClassifier:
    """A cached pixel classifier (weights_only, its shapes checked), refused when its settings are not `expect`."""
    ckpt = load_checkpoint(path, kind=KIND)
    if expect is not None and ckpt["model_config"] != expect:
        raise CheckpointError(f"{paths.shown(path)} was trained with other settings than those asked for")
    settings = ckpt["model_config"].get("classifier", {})
    config = ClassifierConfig(**{k: v for k, v in settings.items() if k in _CLASSIFIER_SETTINGS})
    model = build_checked(lambda: build_pixel_classifier(config), ckpt, path, "pixel classifier")
    record = ckpt.get("record") if isinstance(ckpt.get("record"), dict) else {}
    return PixelClassifier(model.to(resolve_device(device)).eval(), record, Path(path))


@dataclass
class Judged:
    """What the classifier on pixels makes of a set of images: features, predicted classes, and the class each image
    is of or was drawn for (None for samples drawn without one)."""

    features: np.ndarray
    predicted: np.ndarray
    classes: Optional[np.ndarray]


def judge_images(
    model: PixelConvNet, sets: dict[str, tuple[torch.Tensor, Optional[torch.Tensor]]]
) -> dict[str, Judged]:
    """`classifier_outputs` of each set (name -> (uint8 images, classes or None))."""
    out = {}
    for name, (images, classes) in sets.items():
        features, predicted = classifier_outputs(model, images)
        out[name] = Judged(features, predicted, None if classes is None else np.asarray(classes))
    return out


@torch.inference_mode()
def classifier_outputs(model: PixelConvNet, images: torch.Tensor, *, batch_size: int = 256):
    """(features (N, hidden units) float64, predicted classes (N,) int64) of uint8 images (N, 28, 28).

    The features are the head's hidden layer after its ReLU: the layer before the logits.
    """
    device = next(model.parameters()).device
    model.eval()
    features, predicted = [], []
    hidden, last = model.head.classifier[:-2], model.head.classifier[-2:]
    for start in range(0, len(images), batch_size):
        x = to_float(images[start : start + batch_size], device)
        h = hidden(model.head.features(model.encoder(x)))
        features.append(h.double().cpu())
        predicted.append(last(h).argmax(1).cpu())
    if not features:
        return np.zeros((0, model.head.classifier[-1].in_features)), np.zeros(0, dtype=np.int64)
    return torch.cat(features).numpy(), torch.cat(predicted).numpy()


# ----------------------------------------------------------------------------- measures


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """The Fréchet distance between Gaussians fitted to two sets of features (N, F) and (M, F):
    |mu_a - mu_b|^2 + Tr(C_a + C_b - 2 (C_a C_b)^(1/2)) (Heusel et al. 2017, the FID's formula).

    Tr (C_a C_b)^(1/2) is the sum of the square roots of the eigenvalues of
    C_a^(1/2) C_b C_a^(1/2), a symmetric matrix: two symmetric eigendecompositions, in
    float64, with no non-symmetric matrix square root and its imaginary round-off.
    Biased upward for small sets (its covariances are estimates): compare distances of
    sets of equal size.
    """
    a, b = np.asarray(features_a, dtype=np.float64), np.asarray(features_b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or len(a) < 2 or len(b) < 2:
        raise ConfigError(
            f"the Fréchet distance needs two sets of at least 2 feature vectors of one size, not {a.shape} and {b.shape}"
        )
    mean = a.mean(0) - b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    values, vectors = np.linalg.eigh(cov_a)
    root = (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T
    middle = root @ cov_b @ root
    trace_root = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum()
    distance = float(mean @ mean + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_root)
    return max(distance, 0.0)  # >= 0 exactly; round-off of identical sets can dip below


def frechet_table(reference: np.ndarray, sets: dict):
    """The Fréchet distance of each set of features (arrays, or `Judged`) to the reference's: set, images, frechet_distance, and each
    distance as a multiple of the first row's (the floor when the first set is real)."""
    import pandas as pd

    sets = {name: x.features if isinstance(x, Judged) else x for name, x in sets.items()}
    rows = [
        {"set": name, "images": len(x), "frechet_distance": frechet_distance(x, reference)} for name, x in sets.items()
    ]
    frame = pd.DataFrame(rows)
    first = frame["frechet_distance"].iloc[0] if len(frame) else np.nan
    frame["times_first"] = frame["frechet_distance"] / first if first > 0 else np.nan
    return frame


def per_class_accuracy(predicted: np.ndarray, classes: np.ndarray, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """(num_classes,) share of each class's images predicted as that class; NaN for a class with no images."""
    predicted, classes = np.asarray(predicted), np.asarray(classes)
    out = np.full(num_classes, np.nan)
    for c in range(num_classes):
        members = classes == c
        if members.any():
            out[c] = float((predicted[members] == c).mean())
    return out


def class_accuracy_table(sets: dict[str, Judged]):
    """The classifier's accuracy per class (rows: the ten classes, then 'all') for each judged set with classes
    (a set of samples drawn without a class has none, and no column)."""
    import pandas as pd

    columns = {}
    for name, judged in sets.items():
        if judged.classes is not None:
            predicted, classes = judged.predicted, judged.classes
            columns[name] = [*per_class_accuracy(predicted, classes), float((predicted == classes).mean())]
    return pd.DataFrame(columns, index=pd.Index([*CLASS_NAMES, "all"], name="class"))


def guidance_table(
    prior,
    vqvae,
    judge: PixelConvNet,
    reference_features: np.ndarray,
    weights,
    *,
    num: int,
    seed: int = 0,
    temperature: float = 1.0,
    top_k: Optional[int] = None,
    batch_size: int = 500,
    progress: bool = True,
):
    """Class-conditional samples of `prior` at each classifier-free guidance weight in `weights`: the Fréchet
    distance of `num` of them (classes balanced, one seed for every weight) to `reference_features` (the judge's
    features of the validation images), and the share the judge assigns to the class they were drawn for.

    Guidance trades variety for fidelity to the class: the distance first falls, then rises again as the samples
    crowd around each class's likeliest images. `chosen_guidance` takes the weight of the smallest distance, a
    choice made on validation images, never on the test split.
    """
    import pandas as pd

    rows = []
    for w in weights:
        samples = draw_samples(
            prior,
            vqvae,
            num,
            conditional=True,
            guidance=float(w),
            temperature=temperature,
            top_k=top_k,
            seed=seed,
            batch_size=batch_size,
            progress=progress,
            desc=f"guidance {w}",
        )
        features, predicted = classifier_outputs(judge, samples.images)
        per_class = per_class_accuracy(predicted, samples.classes.numpy())
        rows.append(
            {
                "guidance": float(w),
                "samples": num,
                "frechet_distance": frechet_distance(features, reference_features),
                "judged_accuracy": float((predicted == samples.classes.numpy()).mean()),
                "lowest_class_accuracy": float(np.nanmin(per_class)),
                "lowest_class": CLASS_NAMES[int(np.nanargmin(per_class))],
            }
        )
    return pd.DataFrame(rows)


def chosen_guidance(table) -> float:
    """The guidance weight of `guidance_table`'s smallest Fréchet distance to the validation images."""
    return float(table.loc[table["frechet_distance"].idxmin(), "guidance"])


def cas_table(results: dict[str, dict]):
    """The Classification Accuracy Score (Ravuri and Vinyals 2019) beside its real twin: one row per training
    source (its images, what chose its epoch, test accuracy on the real test split, the epoch kept and why)."""
    import pandas as pd

    return pd.DataFrame(
        [
            {
                "trained on": name,
                "train_images": r["train_images"],
                "selection_images": r["selection_images"],
                "val_accuracy": r["val_accuracy"],
                "test_accuracy": r["test_accuracy"],
                "best_epoch": r["best_epoch"],
                "stop_reason": r["stop_reason"],
            }
            for name, r in results.items()
        ]
    )


def sample_trained_classifier(
    train: Samples,
    val: Samples,
    data: FashionMNIST,
    *,
    epochs: int,
    patience: int,
    seed: int = 0,
    device: str = "auto",
    progress: bool = True,
    desc: str = "CAS classifier",
) -> PixelClassifier:
    """CAS: the pixel classifier trained only on class-conditional samples (the class each was drawn for is its
    label), its epoch chosen on other samples, measured on the real test split. No real image takes part
    until the test."""
    if train.classes is None or val.classes is None:
        raise ConfigError("the Classification Accuracy Score needs class-conditional samples; this prior has no class")
    config = pixel_classifier_config(epochs, patience, seed, device)
    found = train_pixel_classifier(
        (train.images, train.classes),
        (val.images, val.classes),
        (data.test_images, data.test_labels),
        config,
        progress=progress,
        desc=desc,
    )
    return PixelClassifier(found.model, {**found.record, "trained_on": "samples"})


def classification_accuracy_scores(
    samplers: dict,
    vqvae,
    data: FashionMNIST,
    *,
    conditional: bool,
    train_size: int,
    val_size: int,
    epochs: int,
    patience: int,
    seed: int = 0,
    device: str = "auto",
    temperature: float = 1.0,
    top_k: Optional[int] = None,
    batch_size: int = 500,
    progress: bool = True,
    guidance: float = 0.0,
) -> dict[str, dict]:
    """CAS for each of `samplers` (name -> a prior or the per-position model), after its real twin.

    The twin ("real training images") is the same network trained on `train_size` real
    training images, its epoch chosen on `val_size` validation images (cached, as the
    feature classifier is); each sampler's classifier trains on `train_size` of its
    class-conditional samples and chooses its epoch on `val_size` others. All are tested
    on the real test split. Without `conditional` only the twin is measured: samples
    drawn without a class have no label to train on.
    """
    twin = real_pixel_classifier(
        data,
        train_subset=train_size,
        val_subset=val_size,
        epochs=epochs,
        patience=patience,
        seed=seed,
        device=device,
        progress=progress,
    )
    out = {"real training images": twin.record}
    if not conditional:
        return out
    for i, (name, sampler) in enumerate(samplers.items(), start=1):
        draw = dict(
            conditional=True,
            temperature=temperature,
            top_k=top_k,
            batch_size=batch_size,
            progress=progress,
            guidance=guidance,
        )
        train = draw_samples(sampler, vqvae, train_size, seed=seed + 1000 * i, desc=f"{name}: CAS training", **draw)
        val = draw_samples(sampler, vqvae, val_size, seed=seed + 1000 * i + 1, desc=f"{name}: CAS selection", **draw)
        out[name] = sample_trained_classifier(
            train,
            val,
            data,
            epochs=epochs,
            patience=patience,
            seed=seed,
            device=device,
            progress=progress,
            desc=f"CAS classifier on {name}",
        ).record
    return out


@dataclass
class Nearest:
    """Each chosen image's nearest training image: `chosen` indexes the set, `indices` the training images."""

    chosen: torch.Tensor
    distances: np.ndarray
    indices: np.ndarray


def nearest_training_images(
    sets: dict[str, tuple[torch.Tensor, Optional[torch.Tensor]]],
    train_images: torch.Tensor,
    *,
    size: int,
    seed: int = 0,
    device: str = "auto",
    progress: bool = True,
) -> dict[str, Nearest]:
    """For `size` images of each set (name -> (uint8 images, classes or None); classes balanced when given, so
    sets with the same classes and seed choose the same positions), the nearest of `train_images`."""
    out = {}
    for name, (images, classes) in sets.items():
        chosen = balanced_indices(classes, size, seed) if classes is not None else torch.arange(min(size, len(images)))
        distances, indices = nearest_neighbours(
            images[chosen], train_images, device=device, progress=progress, desc=name
        )
        out[name] = Nearest(chosen, distances, indices)
    return out


def closest_pairs(images: torch.Tensor, nearest: Nearest, train_images: torch.Tensor, num: int = 10):
    """The `num` chosen images nearest to a training image: (images, their nearest training images, distances)."""
    order = np.argsort(nearest.distances, kind="stable")[:num]
    return images[nearest.chosen[order]], train_images[nearest.indices[order]], nearest.distances[order]


@torch.no_grad()
def nearest_neighbours(
    queries: torch.Tensor,
    references: torch.Tensor,
    *,
    batch_size: int = 256,
    device: str = "auto",
    progress: bool = True,
    desc: str = "nearest training image",
) -> tuple[np.ndarray, np.ndarray]:
    """(distance (N,) float64, index (N,)) of each uint8 query image's nearest reference image: the Euclidean
    distance of their pixels in [0, 1] (sqrt of the summed squared differences over the 784 pixels).

    The search is a float32 matrix product; the distance to the neighbour found is then
    computed again exactly in float64, so an exact copy is at distance 0.
    """
    dev = resolve_device(device)
    raw = references.reshape(len(references), -1).to(dev)
    ref = raw.float().div_(255.0)
    ref_sq = ref.pow(2).sum(1)
    distances, indices = [], []
    bar = progress_bar(total=len(queries), enabled=progress, desc=desc, unit="image")
    for start in range(0, len(queries), batch_size):
        q_raw = queries[start : start + batch_size].reshape(-1, ref.shape[1]).to(dev)
        q = q_raw.float().div_(255.0)
        nearest = (ref_sq[None, :] - 2.0 * q @ ref.T).argmin(1)  # |q|^2 is the same for every reference
        exact = (q_raw.double() - raw[nearest].double()).pow(2).sum(1).sqrt() / 255.0
        distances.append(exact.cpu())
        indices.append(nearest.cpu())
        bar.update(len(q))
    bar.close()
    if not distances:
        return np.zeros(0), np.zeros(0, dtype=np.int64)
    return torch.cat(distances).numpy(), torch.cat(indices).numpy()


def copied_codes(codes: torch.Tensor, training_codes: torch.Tensor) -> np.ndarray:
    """(N,) bool: whether each code (N, 12, 12) equals a training code exactly, all 144 positions."""
    seen = {bytes(row) for row in training_codes.reshape(len(training_codes), -1).to(torch.int64).numpy()}
    return np.array([bytes(row) in seen for row in codes.reshape(len(codes), -1).to(torch.int64).numpy()], dtype=bool)


def copy_shares(sets: dict[str, Samples], training_codes: torch.Tensor) -> dict[str, float]:
    """Per set of samples, the share whose code equals a training code exactly (`copied_codes`)."""
    return {name: float(copied_codes(samples.codes, training_codes).mean()) for name, samples in sets.items()}


def memorisation_table(distances: dict, *, reference: str, percentile: float = 1.0):
    """Per set of nearest-training-image distances: images, median, the `percentile`-th percentile, minimum, and
    the share closer than the `percentile`-th percentile of the `reference` set (held-out images: about
    `percentile` % by construction; a prior that copies its training images puts far more of its samples there)."""
    import pandas as pd

    distances = {name: d.distances if isinstance(d, Nearest) else np.asarray(d) for name, d in distances.items()}
    if reference not in distances:
        raise ConfigError(f"the reference set {reference!r} is not among {', '.join(distances)}")
    bar = float(np.percentile(distances[reference], percentile))
    rows = [
        {
            "set": name,
            "images": len(d),
            "median": float(np.median(d)),
            f"percentile_{percentile:g}": float(np.percentile(d, percentile)),
            "minimum": float(d.min()),
            f"share_below_{reference}_p{percentile:g}": float((d < bar).mean()),
        }
        for name, d in distances.items()
    ]
    return pd.DataFrame(rows)


def test_position_bits(
    prior,
    baseline,
    codes: torch.Tensor,
    labels: torch.Tensor,
    *,
    conditional: bool,
    batch_size: int = 500,
    progress: bool = True,
) -> dict[str, torch.Tensor]:
    """(N, 144) bits of every test code's positions under the per-position `baseline` and the `prior`, each without
    a class and, when the prior is `conditional`, given the code's true class: name -> bits, baseline first."""
    runs = [("per-position model", baseline, None), ("prior", prior, None)]
    if conditional:
        runs = [
            ("per-position model", baseline, None),
            ("per-position model, given the class", baseline, labels),
            ("prior without a class", prior, None),
            ("prior, given the class", prior, labels),
        ]
    out = {}
    bar = progress_bar(total=len(runs) * len(codes), enabled=progress, desc="test bits", unit="code")
    for name, model, classes in runs:
        parts = []
        for start in range(0, len(codes), batch_size):
            part = None if classes is None else classes[start : start + batch_size]
            parts.append(position_bits(model, codes[start : start + batch_size], part, batch_size=batch_size))
            bar.update(len(parts[-1]))
        out[name] = torch.cat(parts)
    bar.close()
    return out


def mean_position_maps(bits: dict[str, torch.Tensor], grid_size: tuple[int, int]) -> dict[str, np.ndarray]:
    """The mean bits at each position (a grid_size map) of the first and the last model of `bits` (name -> (N, L)):
    in `test_position_bits`'s order, the per-position model without a class and the prior as it is best used."""
    names = list(dict.fromkeys([next(iter(bits)), list(bits)[-1]])) if bits else []
    return {name: bits[name].double().mean(0).reshape(grid_size).numpy() for name in names}


def bits_per_class(bits: torch.Tensor, labels, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """(num_classes,) mean bits per image of each class's codes, from (N, 144) position bits."""
    per_image, labels = bits.double().sum(1).numpy(), np.asarray(labels)
    return np.array([per_image[labels == c].mean() if (labels == c).any() else np.nan for c in range(num_classes)])


def likelihood_table(position_bits: dict[str, torch.Tensor], num_codes: int):
    """Test bits per image and per code position of each model (rows), after the uniform bound 144 x log2 K.

    `position_bits`: name -> (N, 144) bits of every position of every test code
    (`vqlib.prior.position_bits`). Columns: bits_per_image (mean over the codes),
    its standard error, bits_per_position, and the share of the uniform bound.
    """
    import math

    import pandas as pd

    first = next(iter(position_bits.values()), None)
    length = first.shape[1] if first is not None else 144
    uniform = length * math.log2(num_codes)
    rows = [
        {
            "model": f"uniform over K={num_codes} codes",
            "bits_per_image": uniform,
            "standard_error": 0.0,
            "bits_per_position": uniform / length,
        }
    ]
    for name, bits in position_bits.items():
        per_image = bits.double().sum(1)
        rows.append(
            {
                "model": name,
                "bits_per_image": float(per_image.mean()),
                "standard_error": float(per_image.std() / math.sqrt(len(per_image))) if len(per_image) > 1 else np.nan,
                "bits_per_position": float(per_image.mean()) / length,
            }
        )
    frame = pd.DataFrame(rows)
    frame["share_of_uniform"] = frame["bits_per_image"] / uniform
    return frame


# ----------------------------------------------------------------------------- the record


def record_generation(path, **parts) -> Path:
    """Write notebook 06's results (tables as lists of records, numbers, settings) to `path` as JSON, atomically."""

    def plain(value):
        if hasattr(value, "to_dict") and hasattr(value, "reset_index"):  # a DataFrame
            frame = value.reset_index() if value.index.name is not None else value
            return frame.to_dict(orient="records")
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return dataclasses.asdict(value)
        if isinstance(value, dict):
            return {str(k): plain(v) for k, v in value.items()}
        return value

    return write_json(path, {"written": utc_timestamp(), "code": paths.code_version(), **plain(parts)})
