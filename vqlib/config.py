"""One config dataclass per stage, serialised as JSON next to every checkpoint.

A checkpoint stores ``asdict(config)``; `from_dict` rebuilds the dataclass, so
any script can rebuild a model from the file alone. Every field carries a
``help`` string: the CLI turns fields into options with it, and the notebooks'
parameters cells use exactly these names.

Validation happens in ``__post_init__``: an impossible value raises
`ConfigError` with one sentence, before any work starts.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Optional, TypeVar

from .errors import ConfigError

T = TypeVar("T")


def _opt(default: Any, help: str, **kw: Any) -> Any:
    return field(default=default, metadata={"help": help, **kw})


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    _check(value in choices, f"{name} must be one of {', '.join(choices)}, not {value!r}")


DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16")  # what may be asked for; vqlib.device.resolve_precision decides what runs
PRECISION_HELP = (
    "arithmetic of the convolutions: 'auto' (bf16 on CUDA and on a CPU with native bfloat16 units, AVX-512 BF16 or "
    "AMX; fp32 on any other CPU), 'fp32' or 'bf16' (honoured on any CPU, slow without those units); the quantizer's "
    "distances and EMA, losses, metrics, weights and Adam state stay fp32. With --resume, 'auto' keeps the run's "
    "recorded precision and another explicit one is refused (docs/precision.md)"
)
# The option `precision` replaced: amp 'on' meant bf16 autocast everywhere, 'off' fp32, 'auto' bf16 on CUDA only.
LEGACY_AMP = {"on": "bf16", "off": "fp32", "auto": "auto"}
LR_SCHEDULES = ("constant", "cosine")


# The codebook-health ablation (vqlib/ablation.py): from the paper's quantizer to the full set of options, one
# option added at a time, on the seed grid's two extreme configurations (K, D).
ABLATION_VARIANTS: dict[str, dict] = {
    "paper": {"codebook_update": "loss", "init": "uniform", "dead_code_threshold": 0.0},
    "ema": {"codebook_update": "ema", "init": "uniform", "dead_code_threshold": 0.0},
    "ema+kmeans": {"codebook_update": "ema", "init": "kmeans", "dead_code_threshold": 0.0},
    "ema+kmeans+restarts": {"codebook_update": "ema", "init": "kmeans", "dead_code_threshold": 1.0},
}
ABLATION_CONFIGS = ((25, 16), (100, 64))


@dataclass
class VQVAEConfig:
    """Architecture and quantizer of one VQ-VAE."""

    num_embeddings: int = _opt(50, "codebook size K (number of code vectors)")
    embedding_dim: int = _opt(32, "code vector dimension D (channels of the 12x12 latent)")
    hidden_channels: int = _opt(64, "channels of the encoder/decoder trunk")
    residual_channels: int = _opt(32, "bottleneck channels inside each residual block")
    num_residual_blocks: int = _opt(2, "residual blocks in the encoder and in the decoder")
    beta: float = _opt(0.25, "commitment weight (van den Oord et al. 2017, eq. 3)")
    codebook_update: str = _opt(
        "ema", "codebook learning: 'loss' (the paper's codebook term) or 'ema'", choices=("loss", "ema")
    )
    ema_decay: float = _opt(0.99, "EMA decay of code counts and sums (codebook_update='ema')")
    init: str = _opt(
        "kmeans",
        "codebook init: 'uniform' (the paper's) or 'kmeans' (on the first batch)",
        choices=("uniform", "kmeans"),
    )
    dead_code_threshold: float = _opt(
        1.0, "restart codes whose EMA count per batch falls below this; 0 turns restarts off"
    )

    def __post_init__(self) -> None:
        _check(
            isinstance(self.num_embeddings, int) and 1 <= self.num_embeddings <= 65536,
            f"num_embeddings must be an integer between 1 and 65536, not {self.num_embeddings!r}",
        )
        for name in ("embedding_dim", "hidden_channels", "residual_channels"):
            value = getattr(self, name)
            _check(isinstance(value, int) and value >= 1, f"{name} must be a positive integer, not {value!r}")
        _check(self.hidden_channels % 2 == 0, f"hidden_channels must be even, not {self.hidden_channels}")
        _check(
            isinstance(self.num_residual_blocks, int) and self.num_residual_blocks >= 0,
            f"num_residual_blocks must be 0 or more, not {self.num_residual_blocks!r}",
        )
        _check(self.beta >= 0, f"beta must be 0 or more, not {self.beta}")
        _check(0.0 < self.ema_decay < 1.0, f"ema_decay must lie strictly between 0 and 1, not {self.ema_decay}")
        _check(self.dead_code_threshold >= 0, f"dead_code_threshold must be 0 or more, not {self.dead_code_threshold}")
        _check_choice("codebook_update", self.codebook_update, ("loss", "ema"))
        _check_choice("init", self.init, ("uniform", "kmeans"))


@dataclass
class TrainConfig:
    """How one VQ-VAE is trained, and where its files go."""

    epochs: int = _opt(10, "passes over the training split")
    batch_size: int = _opt(128, "images per optimiser step")
    learning_rate: float = _opt(2e-3, "Adam learning rate")
    lr_schedule: str = _opt(
        "constant",
        "learning-rate schedule: 'constant' (the published study's) or 'cosine' (from learning_rate to 0 "
        "over all the run's steps, set every step)",
        choices=LR_SCHEDULES,
    )
    seed: int = _opt(0, "seed of weights, shuffling and codebook restarts")
    train_subset: Optional[int] = _opt(
        None, "train on this many images of the training split (stratified); None uses all 55,000"
    )
    device: str = _opt("auto", "'auto' (CUDA when available), 'cpu' or 'cuda'", choices=DEVICES)
    checkpoint_dir: Optional[str] = _opt(None, "folder of best.pt/last.pt; None means checkpoints/vqvae/K{K}_D{D}")
    results_dir: Optional[str] = _opt(None, "folder of metrics and figures; None means results/vqvae/K{K}_D{D}")
    precision: str = _opt("auto", PRECISION_HELP, choices=PRECISIONS)
    channels_last: bool = _opt(True, "channels-last (NHWC) memory format for the convolutions")
    compile: bool = _opt(False, "torch.compile the encoder and decoder (slow first steps; pays off on long GPU runs)")

    def __post_init__(self) -> None:
        _check(
            isinstance(self.epochs, int) and self.epochs >= 1, f"epochs must be a positive integer, not {self.epochs!r}"
        )
        _check(
            isinstance(self.batch_size, int) and self.batch_size >= 1,
            f"batch_size must be a positive integer, not {self.batch_size!r}",
        )
        _check(self.learning_rate > 0, f"learning_rate must be positive, not {self.learning_rate}")
        _check(
            self.train_subset is None or (isinstance(self.train_subset, int) and self.train_subset >= 1),
            f"train_subset must be a positive integer or None, not {self.train_subset!r}",
        )
        _check_choice("device", self.device, DEVICES)
        _check_choice("precision", self.precision, PRECISIONS)
        _check_choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        for name in ("channels_last", "compile"):
            _check(isinstance(getattr(self, name), bool), f"{name} must be true or false, not {getattr(self, name)!r}")

    @staticmethod
    def upgrade(values: dict[str, Any]) -> dict[str, Any]:
        """A saved config from before `precision` replaced `amp`, in today's names (amp on -> bf16, off -> fp32,
        auto -> auto); the precision a run actually used is recorded beside the config, and missing means fp32."""
        if "amp" not in values:
            return values
        values = dict(values)
        amp = values.pop("amp")
        values.setdefault("precision", LEGACY_AMP.get(amp, amp) if isinstance(amp, str) else amp)
        return values


def _upgrade(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    upgrade = getattr(cls, "upgrade", None)
    return upgrade(values) if upgrade is not None and isinstance(values, dict) else values


def from_dict(cls: type[T], values: dict[str, Any]) -> T:
    """Build `cls` from a dict, refusing unknown keys with a clear message."""
    values = _upgrade(cls, values)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} option(s): {', '.join(unknown)}")
    return cls(**values)


def split_fields(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """The entries of `values` that are fields of `cls`."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in _upgrade(cls, values).items() if k in names}


def with_defaults(cls: type, saved: dict[str, Any]) -> dict[str, Any]:
    """A saved config dict completed with the defaults of fields added since it was saved.

    A checkpoint or metrics file written before a field existed then compares
    equal to a config that leaves the new field at its default.
    """
    return {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING} | _upgrade(
        cls, saved
    )


def changed_fields(saved: dict[str, Any], wanted: dict[str, Any], ignore: Any = ()) -> dict[str, Any]:
    """The saved values of the fields (outside `ignore`) where two config dicts differ; empty when equal.

    How a checkpoint's config is compared with the one a run asks for: the
    result is what an error message shows as "trained with ...".
    """
    keys = [k for k in dict.fromkeys([*saved, *wanted]) if k not in ignore]
    missing = object()
    return {k: saved.get(k) for k in keys if saved.get(k, missing) != wanted.get(k, missing)}


# The training split holds 6,000 images of each class minus the 500 of each class
# carved out for validation (data.VALIDATION_SIZE / 10).
LABELS_PER_CLASS_AVAILABLE = 5500
CLASSIFIER_METHODS = ("vq_head", "vq_linear", "z_linear", "pixel_convnet", "pixel_linear")
# Earlier names of the methods, still read in configs and in result files (label_efficiency.csv, the runs
# file): the ConvNet on pixels was "pixel_cnn", a name readers took for the generative PixelCNN.
LEGACY_METHODS = {"pixel_cnn": "pixel_convnet"}


def canonical_method(name: str) -> str:
    """A label-efficiency method's current name (an earlier name mapped, see LEGACY_METHODS)."""
    return LEGACY_METHODS.get(name, name)


# How label efficiency chooses epochs and C: on a validation subset of the labelled budget, or on all of it.
SELECTIONS = ("matched", "full_val")


def _check_labels_per_class(name: str, value: Optional[int]) -> None:
    _check(
        value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 1),
        f"{name} must be a positive integer or None (all labels), not {value!r}",
    )
    _check(
        value is None or value <= LABELS_PER_CLASS_AVAILABLE,
        f"{name} is {value}, but the training split has only {LABELS_PER_CLASS_AVAILABLE} "
        "labelled images of each class; use at most that, or None for all",
    )


@dataclass
class ClassifierConfig:
    """The classification head on a frozen (or fine-tuned) VQ-VAE encoder, and how it is trained."""

    vqvae_checkpoint: Optional[str] = _opt(
        None, "VQ-VAE checkpoint whose encoder is used; None reads results/grid/best.json"
    )
    labels_per_class: Optional[int] = _opt(
        None, "train on this many labelled images of each class (stratified); None uses all 5,500"
    )
    finetune: bool = _opt(False, "also train the encoder (a comparison point); default keeps it frozen")
    conv_channels: int = _opt(32, "channels of the head's first conv; the second has twice as many")
    hidden_units: int = _opt(128, "units of the head's hidden linear layer")
    dropout: float = _opt(0.3, "dropout before each linear layer of the head")
    # A generous cap and patience on validation: with a cap of 8 (and 3 for the pixel CNN on all labels) the
    # published heads still improved when they stopped, so the cap, not convergence, ended them.
    epochs: int = _opt(100, "cap on epochs; early stopping on validation accuracy (patience) ends training first")
    patience: int = _opt(5, "stop after this many epochs without a better validation accuracy")
    min_steps_per_epoch: int = _opt(
        20, "an epoch is one pass or this many steps, whichever is longer (small label sets)"
    )
    batch_size: int = _opt(128, "images per optimiser step")
    learning_rate: float = _opt(2e-3, "AdamW learning rate of the head (cosine decay to 0)")
    encoder_learning_rate: float = _opt(2e-4, "AdamW learning rate of the encoder when finetune is on")
    weight_decay: float = _opt(1e-4, "AdamW weight decay")
    cache_codes: bool = _opt(True, "encode the training set once into code indices (frozen encoder only)")
    seed: int = _opt(0, "seed of the label subset, weights and shuffling")
    device: str = _opt("auto", "'auto' (CUDA when available), 'cpu' or 'cuda'", choices=DEVICES)
    precision: str = _opt(
        "auto",
        "arithmetic of the encoder (the code-index cache too) and the head: 'auto' (bf16 on CUDA and on a CPU with "
        "native bfloat16 units, AVX-512 BF16 or AMX; fp32 on any other CPU), 'fp32' or 'bf16' (slow without those "
        "units); the quantizer's distances, losses, validation, weights and AdamW state stay fp32. With --resume, "
        "'auto' keeps the run's recorded precision and another explicit one is refused",
        choices=PRECISIONS,
    )
    checkpoint_dir: Optional[str] = _opt(
        None, "folder of best.pt; None means checkpoints/classifier/<VQ-VAE run>_<labels>_<frozen|finetune>"
    )
    results_dir: Optional[str] = _opt(None, "folder of metrics and figures; None means results/classifier/<same name>")

    def __post_init__(self) -> None:
        _check_labels_per_class("labels_per_class", self.labels_per_class)
        for name in ("conv_channels", "hidden_units", "epochs", "batch_size", "min_steps_per_epoch"):
            value = getattr(self, name)
            _check(
                isinstance(value, int) and not isinstance(value, bool) and value >= 1,
                f"{name} must be a positive integer, not {value!r}",
            )
        _check(
            isinstance(self.patience, int) and self.patience >= 1,
            f"patience must be a positive integer, not {self.patience!r}",
        )
        _check(0.0 <= self.dropout < 1.0, f"dropout must lie in [0, 1), not {self.dropout}")
        _check(self.learning_rate > 0, f"learning_rate must be positive, not {self.learning_rate}")
        _check(
            self.encoder_learning_rate > 0, f"encoder_learning_rate must be positive, not {self.encoder_learning_rate}"
        )
        _check(self.weight_decay >= 0, f"weight_decay must be 0 or more, not {self.weight_decay}")
        _check_choice("device", self.device, DEVICES)
        _check_choice("precision", self.precision, PRECISIONS)


def parse_label_counts(text: str) -> list[Optional[int]]:
    """'10,100,all' -> [10, 100, None] (None: all labels), each checked."""
    counts: list[Optional[int]] = []
    for item in str(text).split(","):
        item = item.strip().lower()
        if item in ("all", "none"):
            counts.append(None)
            continue
        try:
            value = int(item)
        except ValueError:
            raise ConfigError(
                f"label_counts must list positive integers or 'all' separated by commas, not {text!r}"
            ) from None
        _check_labels_per_class("each of label_counts", value)
        counts.append(value)
    _check(len(counts) > 0, "label_counts must name at least one count")
    return counts


def parse_methods(text: str) -> list[str]:
    methods = [canonical_method(m.strip()) for m in str(text).split(",") if m.strip()]
    for m in methods:
        _check_choice("each of methods", m, CLASSIFIER_METHODS)
    _check(len(methods) > 0, "methods must name at least one method")
    return methods


def parse_floats(name: str, text: str) -> list[float]:
    try:
        values = [float(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{name} must be positive numbers separated by commas, not {text!r}") from None
    _check(
        len(values) > 0 and all(v > 0 for v in values),
        f"{name} must be positive numbers separated by commas, not {text!r}",
    )
    return values


@dataclass
class LabelEfficiencyConfig:
    """What the discrete code is worth with few labels: five methods, several label counts and seeds.

    The head's sizes and training budget come from a `ClassifierConfig`; the
    fields named like its fields (vqvae_checkpoint, seed, device, results_dir)
    mean the same and override it.
    """

    vqvae_checkpoint: Optional[str] = _opt(
        None, "VQ-VAE checkpoint whose code is measured; None reads results/grid/best.json"
    )
    label_counts: str = _opt("10,100,1000,all", "labelled images per class to try, comma-separated ('all' = 5,500)")
    methods: str = _opt(
        ",".join(CLASSIFIER_METHODS),
        "comma-separated: vq_head, vq_linear (logistic regression on the quantized latents), z_linear (the same "
        "on the encoder's continuous output before quantization), pixel_convnet (a ConvNet of the encoder's shape + "
        "the head, from scratch on pixels; formerly pixel_cnn), pixel_linear",
    )
    selection: str = _opt(
        "matched",
        "what chooses epochs and C: 'matched' (a stratified validation subset with as many labels per class as the "
        "training subset, at most 500, the same for every method) or 'full_val' (all 5,000 validation labels)",
        choices=SELECTIONS,
    )
    num_seeds: int = _opt(3, "seeds (label subsets and initialisations) per label count up to max_seeded_labels")
    max_seeded_labels: int = _opt(1000, "label counts above this (and 'all') run one seed only")
    cnn_epochs_all: int = _opt(
        100, "cap on epochs of pixel_convnet on all labels (it runs the ConvNet on every image, every step)"
    )
    # Measured: on standardised features the best C was the smallest of 0.01,0.1,1 in 14 of 18 fits
    # (full-settings K100_D16, 10-1,000 labels, 3 seeds); with 0.0003-0.01 the code's probe chose 0.003.
    # At the protocol (K100_D64) the probes chose 0.001, then the smallest, at 100 and 1,000 per class: 0.0003 added
    # (six values fit in three rounds of two processes, as five did).
    linear_c: str = _opt(
        "0.0003,0.001,0.003,0.01,0.1,1",
        "inverse regularisation strengths C of the logistic regressions, chosen on validation",
    )
    linear_max_iter: int = _opt(
        1000, "L-BFGS iteration cap of each logistic regression; a fit that reaches it is recorded as not converged"
    )
    seed: int = _opt(0, "first seed; seed i of a label count uses seed + i")
    device: str = _opt("auto", "'auto' (CUDA when available), 'cpu' or 'cuda'", choices=DEVICES)
    results_dir: Optional[str] = _opt(
        None, "folder of label_efficiency.csv/.png; None means results/classifier/label_efficiency_<VQ-VAE run>"
    )

    def __post_init__(self) -> None:
        parse_label_counts(self.label_counts)
        parse_methods(self.methods)
        parse_floats("linear_c", self.linear_c)
        _check_choice("selection", self.selection, SELECTIONS)
        for name in ("num_seeds", "max_seeded_labels", "cnn_epochs_all", "linear_max_iter"):
            value = getattr(self, name)
            _check(
                isinstance(value, int) and not isinstance(value, bool) and value >= 1,
                f"{name} must be a positive integer, not {value!r}",
            )
        _check_choice("device", self.device, DEVICES)


@dataclass
class ClassifierStudyConfig:
    """Notebook 03's comparison: the other classifier variant beside the trained one, and the published references."""

    compare_finetune: bool = _opt(
        False,
        "also train the classifier with the encoder fine-tuned (frozen, when finetune is on) and tabulate both "
        "beside the published references",
    )

    def __post_init__(self) -> None:
        _check(
            isinstance(self.compare_finetune, bool),
            f"compare_finetune must be true or false, not {self.compare_finetune!r}",
        )


def parse_int_list(name: str, text: str) -> list[int]:
    """'25,50,100' -> [25, 50, 100]; anything but integers is a ConfigError."""
    try:
        values = [int(v) for v in str(text).replace(" ", ",").split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{name} must be integers separated by commas, such as 25,50,100, not {text!r}") from None
    _check(len(values) > 0, f"{name} must name at least one value")
    return values


@dataclass
class GridConfig:
    """Which VQ-VAE configurations the grid trains (K x D x seed), and how the grid places them.

    The values are checked as integers only: each configuration is validated
    when it runs, so that one impossible point is recorded as failed and does
    not stop the others.
    """

    num_embeddings_values: str = _opt("25,50,100", "codebook sizes K, comma-separated")
    embedding_dim_values: str = _opt("16,32,64", "code dimensions D, comma-separated")
    seeds: str = _opt("0", "training seeds of every K x D, comma-separated; summaries show mean and std over them")
    jobs: Optional[int] = _opt(
        None,
        "configurations run at once; None chooses from the machine (CPU: one per core with "
        "one thread each, measured fastest; CUDA: one)",
    )
    threads_per_config: Optional[int] = _opt(
        None, "torch threads of each configuration; None: the cores divided by jobs"
    )
    executor: str = _opt(
        "local",
        "where configurations run: 'local' (a process pool here) or 'ray' (Ray tasks)",
        choices=("local", "ray"),
    )
    ray_address: Optional[str] = _opt(
        None, "Ray cluster to join: None starts a local Ray; 'auto' or HOST:PORT joins a running one"
    )
    cpus_per_config: Optional[int] = _opt(
        None, "CPUs of each Ray task, which are also its torch threads; None: threads_per_config, else the placement's"
    )
    gpus_per_config: float = _opt(0.0, "GPUs of each Ray task; a fraction (0.25) lets configurations share a GPU")
    ray_worker_root: Optional[str] = _opt(
        None, "VQLIB_ROOT of the Ray workers, where they keep scratch files; None: each worker's own default"
    )
    cell_timeout: Optional[int] = _opt(
        None, "seconds one notebook cell may run before its configuration counts as failed; None: no limit"
    )
    grid_dir: Optional[str] = _opt(
        None, "folder of the runs K{K}_D{D}/, summary.csv and best.json; None means results/grid"
    )
    checkpoint_root: Optional[str] = _opt(
        None,
        "folder of the runs' checkpoints K{K}_D{D}/; None means checkpoints/grid (apart from manual train-vqvae runs in checkpoints/vqvae)",
    )

    def __post_init__(self) -> None:
        parse_int_list("num_embeddings_values", self.num_embeddings_values)
        parse_int_list("embedding_dim_values", self.embedding_dim_values)
        seeds = parse_int_list("seeds", self.seeds)
        _check(all(s >= 0 for s in seeds), f"seeds must be 0 or more, not {self.seeds!r}")
        _check_choice("executor", self.executor, ("local", "ray"))
        _check(
            isinstance(self.gpus_per_config, (int, float)) and self.gpus_per_config >= 0,
            f"gpus_per_config must be 0 or more, not {self.gpus_per_config!r}",
        )
        for name in ("jobs", "threads_per_config", "cpus_per_config"):
            value = getattr(self, name)
            _check(
                value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 1),
                f"{name} must be a positive integer or None (chosen from the machine), not {value!r}",
            )
        _check(
            self.cell_timeout is None or (isinstance(self.cell_timeout, int) and self.cell_timeout >= 1),
            f"cell_timeout must be a positive number of seconds or None, not {self.cell_timeout!r}",
        )

    def configurations(self) -> list[tuple[int, int]]:
        """(K, D) pairs, K-major, duplicates removed."""
        ks = parse_int_list("num_embeddings_values", self.num_embeddings_values)
        ds = parse_int_list("embedding_dim_values", self.embedding_dim_values)
        return list(dict.fromkeys((k, d) for k in ks for d in ds))

    def points(self) -> list[tuple[int, int, int]]:
        """(K, D, seed) triples: every configuration with every seed, K-major, duplicates removed."""
        seeds = list(dict.fromkeys(parse_int_list("seeds", self.seeds)))
        return [(k, d, s) for k, d in self.configurations() for s in seeds]


@dataclass
class SummaryConfig:
    """Notebook 02: collect the grid, choose the best configuration on validation MSE."""

    grid_dir: Optional[str] = _opt(None, "folder of the grid's runs; None means results/grid")
    test_metrics: bool = _opt(True, "also measure the chosen configuration on the test split (only that one)")
    device: str = _opt("auto", "'auto' (CUDA when available), 'cpu' or 'cuda'", choices=DEVICES)

    def __post_init__(self) -> None:
        _check_choice("device", self.device, DEVICES)


@dataclass
class AnalysisConfig:
    """Notebook 04: what the discrete code of the chosen VQ-VAE says about the test images."""

    vqvae_checkpoint: Optional[str] = _opt(None, "VQ-VAE checkpoint to analyse; None reads results/grid/best.json")
    test_subset: Optional[int] = _opt(None, "analyse this many test images (classes balanced); None uses all 10,000")
    tsne_points: int = _opt(
        2000, "test images in the t-SNE (classes balanced); t-SNE costs about 45 s per 10,000 on 2 cores"
    )
    tsne_perplexity: float = _opt(30.0, "t-SNE perplexity")
    top_codes: int = _opt(3, "codes listed as most specific to each class")
    patch_classes: int = _opt(4, "classes whose most specific code is shown as image patches")
    patches_per_code: int = _opt(8, "image patches shown for each of those codes")
    images_per_class: int = _opt(8, "images per class in the reconstruction figure")
    interpolation_pairs: int = _opt(4, "pairs of test images of different classes to interpolate between")
    interpolation_steps: int = _opt(9, "images along each interpolation, both ends included")
    pca_dims: int = _opt(50, "principal components of the flattened code and of the pixels before t-SNE and k-NN")
    knn_neighbours: int = _opt(10, "k of the k-NN accuracy that measures clustering (in the map and in the PCA space)")
    claim_pairs: int = _opt(20, "interpolation pairs measured for the smoothness claim (the figure shows fewer)")
    specificity_bar: float = _opt(0.5, "a code is class-specific when its largest P(class | code) exceeds this")
    label_shuffles: int = _opt(50, "label shuffles of the baseline the codebook-usage numbers must beat")
    rank_band: int = _opt(3, "a class is among the best (worst) when it ranks in this many best (worst) classes")
    bootstrap_samples: int = _opt(1000, "bootstrap resamples behind every interval of the claims")
    seed: int = _opt(0, "seed of every random choice (t-SNE sample, examples, pairs)")
    device: str = _opt("auto", "'auto' (CUDA when available), 'cpu' or 'cuda'", choices=DEVICES)
    results_dir: Optional[str] = _opt(None, "folder of the figures and analysis.json; None means results/analysis")

    def __post_init__(self) -> None:
        _check(
            self.test_subset is None or (isinstance(self.test_subset, int) and self.test_subset >= 100),
            f"test_subset must be an integer of at least 100 or None, not {self.test_subset!r}",
        )
        for name in (
            "tsne_points",
            "top_codes",
            "patch_classes",
            "patches_per_code",
            "images_per_class",
            "interpolation_pairs",
            "interpolation_steps",
            "pca_dims",
            "knn_neighbours",
            "claim_pairs",
            "label_shuffles",
            "rank_band",
            "bootstrap_samples",
        ):
            value = getattr(self, name)
            _check(
                isinstance(value, int) and not isinstance(value, bool) and value >= 1,
                f"{name} must be a positive integer, not {value!r}",
            )
        _check(self.tsne_points >= 5, f"tsne_points must be at least 5, not {self.tsne_points}")
        _check(self.interpolation_steps >= 2, f"interpolation_steps must be at least 2, not {self.interpolation_steps}")
        _check(self.patch_classes <= 10, f"patch_classes must be at most 10 (the classes), not {self.patch_classes}")
        _check(self.tsne_perplexity > 0, f"tsne_perplexity must be positive, not {self.tsne_perplexity}")
        _check(self.claim_pairs >= 2, f"claim_pairs must be at least 2, not {self.claim_pairs}")
        _check(self.claim_pairs <= 45, f"claim_pairs must be at most 45 (the pairs of classes), not {self.claim_pairs}")
        _check(self.rank_band <= 4, f"rank_band must be below half the 10 classes, not {self.rank_band}")
        _check(
            0 < self.specificity_bar < 1,
            f"specificity_bar must lie strictly between 0 and 1, not {self.specificity_bar}",
        )
        _check_choice("device", self.device, DEVICES)


SPLITS = ("train", "val", "test")


@dataclass
class ExplorerConfig:
    """Notebook 05: the interactive explorer of one VQ-VAE's code, optionally with a classifier and a prior."""

    vqvae_checkpoint: Optional[str] = _opt(
        None, "VQ-VAE checkpoint (or pretrained:NAME); None: the grid's best, else the published best"
    )
    classifier_checkpoint: Optional[str] = _opt(
        None,
        "classifier checkpoint trained on that VQ-VAE; None: the published classifier paired with a published "
        "VQ-VAE, when there is one; 'none': no classifier until one is loaded",
    )
    prior_checkpoint: Optional[str] = _opt(
        None,
        "prior over that VQ-VAE's code (or pretrained:NAME); None: a published prior trained on that VQ-VAE, "
        "when there is one; 'none': no prior until one is loaded",
    )
    split: str = _opt("test", "the split whose images are explored: 'train', 'val' or 'test'", choices=SPLITS)
    image_index: int = _opt(0, "the image shown first, an index into the split")
    codebook_images: Optional[int] = _opt(
        2000, "images (classes balanced) behind the codebook panel; None: the whole split"
    )
    interpolation_steps: int = _opt(11, "points along the interpolation slider, both images included")
    seed: int = _opt(0, "seed of the codebook sample and of the patches shown")
    device: str = _opt("cpu", "'cpu', 'cuda' or 'auto'; one image at a time runs well on the CPU", choices=DEVICES)

    def __post_init__(self) -> None:
        _check_choice("split", self.split, SPLITS)
        _check(
            isinstance(self.image_index, int) and not isinstance(self.image_index, bool) and self.image_index >= 0,
            f"image_index must be an integer of 0 or more, not {self.image_index!r}",
        )
        _check(
            self.codebook_images is None or (isinstance(self.codebook_images, int) and self.codebook_images >= 10),
            f"codebook_images must be an integer of at least 10 or None, not {self.codebook_images!r}",
        )
        _check(
            isinstance(self.interpolation_steps, int) and self.interpolation_steps >= 2,
            f"interpolation_steps must be an integer of at least 2, not {self.interpolation_steps!r}",
        )
        _check_choice("device", self.device, DEVICES)


PRIOR_ARCHITECTURES = ("transformer", "pixelcnn")


@dataclass
class PriorConfig:
    """The autoregressive prior over a frozen VQ-VAE's code (the VQ-VAE's second stage), and how it is trained."""

    vqvae_checkpoint: Optional[str] = _opt(
        None, "VQ-VAE checkpoint (or pretrained:NAME) whose code the prior models; None: the grid's best"
    )
    architecture: str = _opt(
        "transformer",
        "'transformer' (causal, key-value cached sampling) or 'pixelcnn' (gated PixelCNN, the VQ-VAE paper's)",
        choices=PRIOR_ARCHITECTURES,
    )
    class_conditional: bool = _opt(
        False, "condition on the class; class_dropout of the sequences see 'no class', so it also samples without one"
    )
    class_dropout: float = _opt(0.1, "share of training sequences shown 'no class' when class_conditional is on")
    layers: int = _opt(4, "transformer blocks (or gated PixelCNN layers)")
    heads: int = _opt(4, "attention heads per block (transformer only)")
    width: int = _opt(128, "embedding width (transformer) or channels (PixelCNN)")
    kernel: int = _opt(5, "kernel size of the gated PixelCNN's layers (pixelcnn only)")
    dropout: float = _opt(0.1, "dropout on embeddings, attention and MLP outputs (transformer only)")
    perturbation: float = _opt(
        0.0,
        "share of code positions replaced by a uniformly drawn code in every training and validation code; above 0 "
        "the run is the background model of the out-of-distribution detector (Ren et al. 2019 use 0.1 on "
        "Fashion-MNIST; docs/robustness.md)",
    )
    batch_size: int = _opt(64, "codes per optimiser step")
    learning_rate: float = _opt(1e-3, "Adam learning rate (after a linear warm-up)")
    warmup_steps: int = _opt(200, "steps of linear learning-rate warm-up from 0")
    epochs: int = _opt(20, "maximum passes over the training codes (early stopping may end sooner)")
    patience: int = _opt(3, "stop after this many epochs without a lower validation NLL")
    max_seconds: Optional[float] = _opt(
        None,
        "stop training after this many seconds of steps, then validate and keep the model (for equal-time "
        "comparisons; a run cut this way is not resumable bit for bit); None: no limit",
    )
    train_subset: Optional[int] = _opt(
        None, "train on this many codes of the training split (stratified); None uses all 55,000"
    )
    val_subset: Optional[int] = _opt(
        None, "validate on this many codes of the validation split (stratified); None uses all 5,000"
    )
    seed: int = _opt(0, "seed of weights, shuffling, dropout and class dropout")
    device: str = _opt("auto", "'auto' (CUDA when available), 'cpu' or 'cuda'", choices=DEVICES)
    precision: str = _opt(
        "auto",
        "arithmetic of the training steps: 'auto' (bf16 on CUDA and on a CPU with native bfloat16 units, AVX-512 "
        "BF16 or AMX; fp32 on any other CPU), 'fp32' or 'bf16' (slow without those units); the loss, the "
        "validation NLL that chooses best.pt, every likelihood and sample, the weights and Adam state stay fp32. "
        "With --resume, 'auto' keeps the run's recorded precision and another explicit one is refused",
        choices=PRECISIONS,
    )
    checkpoint_dir: Optional[str] = _opt(
        None, "folder of best.pt/last.pt; None means checkpoints/prior/<VQ-VAE run>_<architecture>_<cond|uncond>"
    )

    def __post_init__(self) -> None:
        _check_choice("architecture", self.architecture, PRIOR_ARCHITECTURES)
        for name in ("layers", "heads", "width", "kernel", "batch_size", "epochs", "patience"):
            value = getattr(self, name)
            _check(
                isinstance(value, int) and not isinstance(value, bool) and value >= 1,
                f"{name} must be a positive integer, not {value!r}",
            )
        _check(self.width % self.heads == 0, f"width ({self.width}) must be a multiple of heads ({self.heads})")
        _check(self.kernel % 2 == 1, f"kernel must be odd, not {self.kernel}")
        _check(
            isinstance(self.warmup_steps, int) and self.warmup_steps >= 0,
            f"warmup_steps must be 0 or more, not {self.warmup_steps!r}",
        )
        _check(isinstance(self.class_conditional, bool), "class_conditional must be true or false")
        _check(0.0 <= self.class_dropout < 1.0, f"class_dropout must lie in [0, 1), not {self.class_dropout}")
        _check(0.0 <= self.dropout < 1.0, f"dropout must lie in [0, 1), not {self.dropout}")
        _check(0.0 <= self.perturbation < 1.0, f"perturbation must lie in [0, 1), not {self.perturbation}")
        _check(self.learning_rate > 0, f"learning_rate must be positive, not {self.learning_rate}")
        _check(
            self.max_seconds is None or self.max_seconds > 0,
            f"max_seconds must be positive or None, not {self.max_seconds}",
        )
        for name in ("train_subset", "val_subset"):
            value = getattr(self, name)
            _check(
                value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 10),
                f"{name} must be an integer of at least 10 (one per class) or None, not {value!r}",
            )
        _check_choice("device", self.device, DEVICES)
        _check_choice("precision", self.precision, PRECISIONS)


def is_guidance(value) -> bool:
    """Whether `value` is a classifier-free guidance weight: a finite number of at least 0 (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0


def _is_weight(text: str) -> bool:
    try:
        return is_guidance(float(text))
    except ValueError:
        return False


@dataclass
class GenerationConfig:
    """Notebook 06: how good the prior is, in bits and in samples, beside baselines and real images.

    Its fields sit beside PriorConfig's in the notebook's parameters cell: PriorConfig
    trains (or finds) the prior, these measure it (vqlib.generation).
    """

    prior_checkpoint: Optional[str] = _opt(
        None,
        "prior checkpoint (or pretrained:NAME) to measure; None: the prior the PriorConfig fields describe, reused "
        "when one was trained with the same settings, else trained now",
    )
    test_subset: Optional[int] = _opt(
        None, "test codes whose likelihood is measured (classes balanced); None uses all 10,000"
    )
    num_samples: int = _opt(
        10_000,
        "samples of the prior and of the per-position model behind the Fréchet distances and the per-class "
        "accuracy (classes balanced); as many test images and their reconstructions are compared",
    )
    reference_images: Optional[int] = _opt(
        None, "validation images every Fréchet distance is measured against (classes balanced); None uses all 5,000"
    )
    temperature: float = _opt(1.0, "temperature of every measured sample; 1 is the model's own distribution")
    top_k: Optional[int] = _opt(None, "sample each position from its k likeliest codes; None: from all of them")
    guidance: float = _opt(
        0.0,
        "classifier-free guidance w of the class-conditional samples (logits c + w (c - u)); 0: the model itself",
    )
    guidance_values: str = _opt(
        "0,0.5,1,2,3",
        "guidance weights compared on validation images (Fréchet distance, the class judged), comma-separated",
    )
    guidance_samples: int = _opt(2000, "class-conditional samples per weight of that comparison; 0 skips it")
    sample_batch_size: int = _opt(500, "codes sampled at once")
    feature_train_subset: Optional[int] = _opt(
        None,
        "real training images of the feature classifier (classes balanced); None uses all 55,000",
    )
    feature_epochs: int = _opt(
        30, "cap on the feature classifier's epochs; early stopping on validation accuracy ends it first"
    )
    classifier_patience: int = _opt(
        3, "epochs without a better validation accuracy before the feature and CAS classifiers stop"
    )
    cas_train_size: int = _opt(
        55_000,
        "CAS: class-conditional samples a classifier trains on; its real twin trains on as many real training images",
    )
    cas_val_size: int = _opt(
        5_000,
        "CAS: further samples that choose the sample-trained classifier's epoch (its twin: as many validation images)",
    )
    cas_epochs: int = _opt(30, "CAS: cap on the classifiers' epochs; early stopping on their validation ends it first")
    nearest_images: int = _opt(
        2_000, "samples, test images and reconstructions whose nearest training image is searched (memorisation)"
    )
    samples_per_class: int = _opt(8, "samples (and real test images) shown per class")
    completion_images: int = _opt(4, "test images whose lower code rows are sampled again")
    completion_rows: int = _opt(6, "code rows kept of each (of 12)")
    completions: int = _opt(6, "completions drawn per image")
    results_dir: Optional[str] = _opt(None, "folder of generation.json and the figures; None means results/prior")

    def __post_init__(self) -> None:
        for name in (
            "num_samples",
            "sample_batch_size",
            "feature_epochs",
            "classifier_patience",
            "cas_train_size",
            "cas_val_size",
            "cas_epochs",
            "nearest_images",
            "samples_per_class",
            "completion_images",
            "completions",
        ):
            value = getattr(self, name)
            _check(
                isinstance(value, int) and not isinstance(value, bool) and value >= 1,
                f"{name} must be a positive integer, not {value!r}",
            )
        for name in ("num_samples", "cas_train_size", "cas_val_size", "nearest_images"):
            _check(getattr(self, name) >= 10, f"{name} must be at least 10 (one per class), not {getattr(self, name)}")
        for name, most in (("test_subset", 10_000), ("reference_images", 5_000), ("feature_train_subset", 55_000)):
            value = getattr(self, name)
            _check(
                value is None or (isinstance(value, int) and not isinstance(value, bool) and 10 <= value <= most),
                f"{name} must be an integer from 10 (one per class) to {most:,}, or None, not {value!r}",
            )
        _check(
            self.cas_train_size <= 55_000,
            f"cas_train_size must be at most 55,000 (its real twin trains on as many real images), not {self.cas_train_size}",
        )
        _check(
            self.cas_val_size <= 5_000,
            f"cas_val_size must be at most 5,000 (its twin chooses on as many validation images), not {self.cas_val_size}",
        )
        _check(
            self.num_samples <= 10_000,
            f"num_samples must be at most 10,000 (as many test images are compared), not {self.num_samples}",
        )
        _check(
            self.nearest_images <= self.num_samples,
            f"nearest_images ({self.nearest_images}) must be at most num_samples ({self.num_samples}): the samples "
            "searched are those measured",
        )
        _check(
            isinstance(self.temperature, (int, float)) and self.temperature > 0,
            f"temperature must be positive, not {self.temperature!r}",
        )
        _check(
            self.top_k is None or (isinstance(self.top_k, int) and self.top_k >= 1),
            f"top_k must be a positive integer or None, not {self.top_k!r}",
        )
        _check(
            is_guidance(self.guidance),
            f"guidance must be a number of at least 0 (0: no guidance), not {self.guidance!r}",
        )
        _check(
            isinstance(self.guidance_samples, int)
            and not isinstance(self.guidance_samples, bool)
            and (self.guidance_samples == 0 or self.guidance_samples >= 10),
            f"guidance_samples must be 0 (no comparison) or an integer of at least 10, not {self.guidance_samples!r}",
        )
        weights = [w.strip() for w in str(self.guidance_values).split(",")]
        _check(
            all(_is_weight(w) for w in weights),
            f"guidance_values must be comma-separated numbers of at least 0, not {self.guidance_values!r}",
        )
        _check(
            isinstance(self.completion_rows, int) and 0 <= self.completion_rows <= 12,
            f"completion_rows must be an integer from 0 to 12 (the code's rows), not {self.completion_rows!r}",
        )
