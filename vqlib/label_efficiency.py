"""What the discrete code is worth with few labels: the code against pixel baselines.

Five methods at several label counts and seeds, all trained by the classifier
stage's one loop (`classify.fit`) or a logistic regression, all seeing the same
labelled subset and the same selection set for a (label count, seed).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import time
import warnings
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from . import paths
from .checkpoints import load_checkpoint, load_vqvae, resolve_vqvae_checkpoint, save_checkpoint
from .classify import Inputs, build_classifier, code_lookup, encode_codes, evaluate_logits, fit, label_subset, stopping
from .config import (
    LABELS_PER_CLASS_AVAILABLE,
    SELECTIONS,
    ClassifierConfig,
    LabelEfficiencyConfig,
    canonical_method,
    parse_floats,
    parse_label_counts,
    parse_methods,
)
from .data import NUM_CLASSES, FashionMNIST, load_fashion_mnist, stratified_subset, to_float
from .device import cpu_cores, resolve_device, seed_everything
from .errors import CheckpointError, ConfigError, ResultFileError
from .files import _plain, atomic_path, ensure_dir, read_json_or_empty, save_figure, write_csv, write_json
from .models import ClassificationHead, PixelConvNet
from .progress import progress_bar


def logistic_regression(
    train_x: np.ndarray,
    train_y: np.ndarray,
    val_x: np.ndarray,
    val_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    cs: list[float],
    max_iter: int,
    seed: int,
    *,
    jobs: Optional[int] = None,
    cache: Optional[Path] = None,
) -> dict:
    """Standardised features, L-BFGS logistic regression; C chosen on validation accuracy.

    A tie in validation accuracy (frequent when the selection set is small) goes
    to the lower validation log-loss. Convergence is recorded, not silenced: a
    fit that stops at `max_iter` mixes C's effect with an early stop. Returns val_acc, test_acc, chosen, c, converged (the chosen fit),
    fits_not_converged (over the grid), iterations (of the chosen fit) and
    c_at_edge (the chosen C is the grid's smallest or largest, so the best C
    may lie outside it).

    The values of C are fitted side by side, `jobs` processes (default: one per
    core) with one BLAS thread each: L-BFGS makes thousands of small BLAS calls,
    and several BLAS threads synchronise on each, so on a 2-core CPU where torch
    has run (its OpenMP threads) or anything else runs each call waits for a core.
    Measured with benchmarks/bench.py --only-regression (section 9).

    With a `cache` folder, each finished fit is kept there (`C=<c>.npz`: the
    coefficients and the validation scores) and a later call reuses it: the
    regressions on all labels fit for an hour on a 2-core CPU, and an
    interruption then costs the fits under way, not the finished ones. The
    caller keeps the folder to one problem (the same data and settings). The
    folder also keeps the seconds its fits have taken so far (`elapsed.json`,
    written as each fit ends); they are returned as `earlier_seconds`, so that a
    row finished by a later call states the time of all its fits.
    """
    from joblib import Parallel, delayed
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(train_x)
    train_x, val_x, test_x = scaler.transform(train_x), scaler.transform(val_x), scaler.transform(test_x)
    cs = sorted(cs)
    done = {c: fit for c in cs if (fit := _cached_fit(cache, c, max_iter, seed)) is not None} if cache else {}
    earlier = float(read_json_or_empty(cache / ELAPSED_FILE).get("seconds", 0.0)) if cache and done else 0.0
    todo = [c for c in cs if c not in done]
    jobs = max(1, min(len(todo), jobs or cpu_cores()))
    started, fitted = time.perf_counter(), []
    for fit in Parallel(n_jobs=jobs, return_as="generator_unordered")(
        delayed(_fit)(train_x, train_y, val_x, val_y, c, max_iter, seed, cache=cache) for c in todo
    ):
        fitted.append(fit)
        if cache is not None:
            write_json(cache / ELAPSED_FILE, {"seconds": earlier + time.perf_counter() - started})
    fits = sorted([*done.values(), *fitted], key=lambda f: f["c"])
    best = max(fits, key=lambda f: (f["val_acc"], -f["val_loss"]))
    return {
        "val_acc": best["val_acc"],
        "test_acc": float((best["clf"].predict(test_x) == test_y).mean()),
        "chosen": f"C={best['c']:g}",
        "c": best["c"],
        "converged": best["converged"],
        "fits_not_converged": sum(not f["converged"] for f in fits),
        "iterations": best["iterations"],
        "c_at_edge": best["c"] in (cs[0], cs[-1]),
        "earlier_seconds": earlier,
    }


ELAPSED_FILE = "elapsed.json"  # in a regression's fits folder: the seconds its finished fits took


def _cache_file(cache: Path, c: float) -> Path:
    return cache / f"C={c!r}.npz"


def _cached_fit(cache: Path, c: float, max_iter: int, seed: int) -> Optional[dict]:
    """The fit of `c` that `_fit` kept in `cache`, as `_fit` returns it; None when there is none (or it is unreadable:
    a file cut short by a kill is fitted again)."""
    from sklearn.linear_model import LogisticRegression

    try:
        with np.load(_cache_file(cache, c), allow_pickle=False) as kept:
            saved = {k: kept[k] for k in kept.files}
        clf = LogisticRegression(C=c, max_iter=max_iter, random_state=seed)
        clf.coef_, clf.intercept_, clf.classes_ = saved["coef"], saved["intercept"], saved["classes"]
        clf.n_iter_, clf.n_features_in_ = saved["n_iter"], saved["coef"].shape[1]
        return {
            "c": float(saved["c"]),
            "clf": clf,
            "val_acc": float(saved["val_acc"]),
            "val_loss": float(saved["val_loss"]),
            "converged": bool(saved["converged"]),
            "iterations": int(np.max(saved["n_iter"])),
        }
    except (OSError, KeyError, ValueError):
        return None


def _fit(
    train_x,
    train_y,
    val_x,
    val_y,
    c: float,
    max_iter: int,
    seed: int,
    blas_threads: int = 1,
    cache: Optional[Path] = None,
) -> dict:
    """One value of C, on one BLAS thread: the fitted model and its validation accuracy and log-loss (kept in
    `cache` when given, see `logistic_regression`)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=blas_threads, user_api="blas"), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        clf = LogisticRegression(C=c, max_iter=max_iter, random_state=seed).fit(train_x, train_y)
        proba = clf.predict_proba(val_x)
    fit = {
        "c": c,
        "clf": clf,
        "val_acc": float((clf.classes_[proba.argmax(1)] == val_y).mean()),
        "val_loss": float(log_loss(val_y, proba, labels=clf.classes_)),
        "converged": not any(issubclass(w.category, ConvergenceWarning) for w in caught),
        "iterations": int(np.max(clf.n_iter_)),
    }
    if cache is not None:
        arrays = {"coef": clf.coef_, "intercept": clf.intercept_, "classes": clf.classes_, "n_iter": clf.n_iter_}
        scores = {k: np.asarray(fit[k]) for k in ("c", "val_acc", "val_loss", "converged")}
        with atomic_path(_cache_file(cache, c)) as tmp, open(tmp, "wb") as f:
            np.savez(f, **arrays, **scores)
    return fit


@torch.inference_mode()
def continuous_features(model, images: torch.Tensor, *, batch_size: int = 1000) -> np.ndarray:
    """(N, D * 144) float32: the encoder's output z_e before quantization, flattened.

    The probe on these features against the probe on the quantized code
    separates what quantization costs from what the reconstruction objective
    costs.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = [
        model.encoder(to_float(images[s : s + batch_size], device)).flatten(1).float().cpu()
        for s in range(0, len(images), batch_size)
    ]
    model.train(was_training)
    return torch.cat(out).numpy()


def selection_subset(data: FashionMNIST, labels_per_class: Optional[int], selection: str, seed: int) -> torch.Tensor:
    """Indices into the validation split that choose epochs and C.

    "full_val": all 5,000 labelled validation images at every label count.
    "matched": as many per class as the labelled training subset, capped at the
    500 per class the validation split holds (seeded, stratified): the labels
    a user with that budget would have (Oliver et al. 2018, "Realistic
    evaluation of deep semi-supervised learning algorithms").
    """
    if selection == "full_val":
        return torch.arange(len(data.val_labels))
    if selection != "matched":
        raise ConfigError(f"selection must be one of {', '.join(SELECTIONS)}, not {selection!r}")
    available = int(torch.bincount(data.val_labels, minlength=NUM_CLASSES).min())
    per_class = available if labels_per_class is None else min(labels_per_class, available)
    if per_class >= available:
        return torch.arange(len(data.val_labels))
    return torch.from_numpy(stratified_subset(data.val_labels, per_class, seed))


RUNS_FILE = "label_efficiency.runs.jsonl"
RESULTS_FILE = "label_efficiency.csv"


def read_label_efficiency(path: str | os.PathLike):
    """A label_efficiency.csv as a DataFrame, methods under their current names (older files name pixel_cnn)."""
    import pandas as pd

    try:
        frame = pd.read_csv(path)
    except (OSError, UnicodeDecodeError, pd.errors.EmptyDataError, pd.errors.ParserError) as exc:
        raise ResultFileError(f"cannot read {path} as a label-efficiency table ({exc})") from None
    if "method" not in frame:
        raise ResultFileError(f"{path} is not a label-efficiency table: it has no column 'method'")
    return frame.assign(method=frame["method"].map(canonical_method))


# Fields that choose which rows run, or where they go, but not what a row measures.
_NOT_IN_FINGERPRINT = {"label_counts", "methods", "num_seeds", "max_seeded_labels", "seed", "results_dir"}
# The logistic regressions; every other method is a network trained by `classify.fit`.
REGRESSION_METHODS = ("vq_linear", "z_linear", "pixel_linear")
# What one kind of method never reads: a regression neither the head's settings nor the networks' epoch cap,
# a network not the regressions' C grid and iteration cap. Changing only those keeps the other kind's rows.
_NETWORK_ONLY = {"cnn_epochs_all"}
_REGRESSION_ONLY = {"linear_c", "linear_max_iter"}


def run_fingerprint(config: LabelEfficiencyConfig, classifier: ClassifierConfig, vqvae_path: Path) -> dict:
    """What one row's numbers depend on besides its method, label count and seed.

    The settings of the study and of the head (folders and checkpoints left
    out) and the VQ-VAE checkpoint's content, by its SHA-256: a retrained or
    replaced model never reuses a row measured on another.
    """
    settings = {
        k: v for k, v in dataclasses.asdict(config).items() if k not in _NOT_IN_FINGERPRINT | {"vqvae_checkpoint"}
    }
    head = {
        k: v
        for k, v in dataclasses.asdict(classifier).items()
        if k not in {"vqvae_checkpoint", "checkpoint_dir", "results_dir", "labels_per_class", "finetune", "seed"}
    }
    digest = hashlib.sha256(Path(vqvae_path).read_bytes()).hexdigest()
    # Through JSON, as the runs file stores it, so that a fingerprint read back compares equal.
    return json.loads(json.dumps(_plain({"label_efficiency": settings, "head": head, "vqvae_sha256": digest})))


def method_fingerprint(fingerprint: dict, method: str) -> dict:
    """The part of a `run_fingerprint` that a row of `method` depends on.

    A logistic regression reads neither the head's settings nor the networks'
    epoch cap, so a study that changes only how the networks train (their
    epochs, patience, head size) reuses every regression row; a network row
    does not depend on the regressions' C grid and iteration cap.
    """
    regression = method in REGRESSION_METHODS
    drop = _NETWORK_ONLY if regression else _REGRESSION_ONLY
    part = {k: v for k, v in fingerprint.items() if not (regression and k == "head")}
    part["label_efficiency"] = {k: v for k, v in fingerprint.get("label_efficiency", {}).items() if k not in drop}
    return part


UNFINISHED_DIR = ".unfinished"  # in the results folder: each network row's last epoch, until the row is recorded
UNFINISHED_KIND = "label_efficiency_row"


def _unfinished_path(folder: Path, method: str, per_class: int, seed: int, suffix: str = ".pt") -> Path:
    """A row's work under way: a network's last epoch (.pt), or a folder of a regression's fits (suffix "")."""
    return folder / UNFINISHED_DIR / f"{method}_{per_class}pc_s{seed}{suffix}"


def _unfinished_row(path: Path, fingerprint: dict) -> Optional[dict]:
    """The last epoch a network row saved, when it was trained with these settings; else None (it starts afresh)."""
    if not path.is_file():
        return None
    try:
        ckpt = load_checkpoint(path, kind=UNFINISHED_KIND)
    except CheckpointError:
        return None
    return ckpt if ckpt["model_config"].get("fingerprint") == fingerprint and "fit" in ckpt else None


def _fits_folder(folder: Path, fingerprint: dict) -> Path:
    """`folder` for a regression row's finished fits (`logistic_regression`'s cache), emptied first when its fits
    were made with other settings (its about.json holds the row's fingerprint)."""
    about = folder / "about.json"
    if about.is_file() and read_json_or_empty(about) != fingerprint:
        shutil.rmtree(folder)
    if not about.is_file():
        write_json(about, fingerprint)
    return folder


def finished_runs(folder: Path, fingerprint: dict) -> dict[tuple, dict]:
    """Rows already measured with this fingerprint, keyed by (method, labels_per_class, seed).

    The runs file is appended one line per finished row; a line cut short by an
    interruption, or measured with other settings or another model, is ignored.
    Settings are compared as far as the row's method depends on them
    (`method_fingerprint`).
    """
    done = {}
    try:
        lines = (Path(folder) / RUNS_FILE).read_text().splitlines()
    except OSError:
        return done
    for line in lines:
        try:
            entry = json.loads(line)
            row = entry["row"]
            if method_fingerprint(entry["fingerprint"], row["method"]) == method_fingerprint(
                fingerprint, row["method"]
            ):
                row = {**row, "method": canonical_method(row["method"])}  # rows of a method's former name
                done[(row["method"], int(row["labels_per_class"]), int(row["seed"]))] = row
        except (ValueError, KeyError, TypeError):
            continue
    return done


def _record_run(folder: Path, fingerprint: dict, row: dict) -> None:
    """Append one finished row to the runs file, on disk before the next row starts."""
    path = Path(folder) / RUNS_FILE
    # After a line cut short by an interruption, start a new one rather than extend it.
    cut = path.exists() and path.stat().st_size > 0 and not path.read_bytes().endswith(b"\n")
    with open(path, "a") as f:
        f.write(("\n" if cut else "") + json.dumps(_plain({"fingerprint": fingerprint, "row": row})) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _network_row(
    model: torch.nn.Module,
    train: Inputs,
    val: Inputs,
    test: Inputs,
    *,
    epochs: int,
    classifier: ClassifierConfig,
    row: tuple[str, int, int],
    fingerprint: dict,
    unfinished: Path,
    started: float,
    progress: bool,
) -> tuple[dict, float]:
    """Train one network row, `row` = (method, labels per class, seed): the head on the code, or the ConvNet on
    pixels, with early stopping on `val`. Its last epoch is kept in `unfinished` with the row and its `fingerprint`,
    and continued from when that file was saved with the same fingerprint. Returns the row's result and the seconds
    it took before an interruption."""
    method, per_class, seed = row
    about = {"row": list(row), "fingerprint": fingerprint}
    params = [{"params": model.parameters(), "lr": classifier.learning_rate, "initial_lr": classifier.learning_rate}]
    resumed = _unfinished_row(unfinished, fingerprint)
    earlier_seconds = 0.0
    if resumed is not None:
        model.load_state_dict(resumed["state_dict"])
        earlier_seconds = resumed["seconds"]

    def save_epoch(fit_state: dict) -> None:
        payload = {
            "model_config": about,
            "state_dict": model.state_dict(),
            "fit": fit_state,
            "epoch": len(fit_state["history"]),
            "seconds": earlier_seconds + time.perf_counter() - started,
        }
        save_checkpoint(unfinished, UNFINISHED_KIND, payload)

    history, _, best_epoch = fit(
        model,
        params,
        train,
        val,
        epochs=epochs,
        config=classifier,
        seed=seed,
        desc=f"{method} {per_class}/class seed {seed}",
        progress=progress,
        resume_from=resumed["fit"] if resumed is not None else None,
        on_epoch=save_epoch,
    )
    test_logits = evaluate_logits(model, test)
    stop = stopping(history, best_epoch, max_epochs=epochs, patience=classifier.patience)
    result = {
        "val_acc": history[best_epoch - 1]["val_acc"],
        "test_acc": (test_logits.argmax(1) == test.labels).float().mean().item(),
        "chosen": f"epoch {best_epoch} of {len(history)}",
        "stopped_epoch": stop["stopped_epoch"],
        "stop_reason": stop["reason"],
    }
    return result, earlier_seconds


def label_efficiency(
    config: LabelEfficiencyConfig,
    data: Optional[FashionMNIST] = None,
    *,
    classifier: Optional[ClassifierConfig] = None,
    progress: bool = True,
):
    """Test accuracy against labels per class for the five methods; returns the tidy DataFrame.

    Methods: vq_head (the head on the frozen code, from the index cache),
    vq_linear (logistic regression on the flattened quantized latents),
    z_linear (logistic regression on the encoder's continuous output before
    quantization), pixel_convnet (a ConvNet of the encoder's shape and the same
    head, from scratch on pixels, the same size as the fine-tuned classifier;
    rows of its former name, pixel_cnn, are read under the new one),
    pixel_linear (logistic regression on pixels). Every method sees the same
    labelled subset and the same selection set for a (label count, seed);
    `config.selection` says which (`selection_subset`). Each row records the
    selection set's size and, for the regressions, whether the chosen fit
    converged and whether its C sits on an edge of the grid. Writes
    label_efficiency.csv and label_efficiency.png into the results folder.

    Resumable: each finished row is appended to label_efficiency.runs.jsonl in
    that folder, and a later call with the same settings on the same VQ-VAE
    (`run_fingerprint`) reuses it instead of training again. The protocol's
    notebook 03 runs for hours on a CPU. A row under way keeps its progress in
    .unfinished/ until it is recorded (a network its last epoch, a regression
    its finished fits, one per C), so that an interruption costs an epoch or the
    fits under way; adding a method or a label count runs only what is new.
    Delete the runs file to measure everything again.
    """
    import pandas as pd

    from .plots import label_efficiency_figure

    classifier = classifier or ClassifierConfig()
    data = data or load_fashion_mnist()
    device = resolve_device(config.device)
    vqvae_path = resolve_vqvae_checkpoint(config.vqvae_checkpoint)
    vqvae, _ = load_vqvae(vqvae_path, device=device)
    out = ensure_dir(
        config.results_dir
        or paths.results_dir() / "classifier" / f"label_efficiency_{Path(vqvae_path).resolve().parent.name}"
    )
    counts, methods, cs = (
        parse_label_counts(config.label_counts),
        parse_methods(config.methods),
        parse_floats("linear_c", config.linear_c),
    )

    head_config = dataclasses.replace(classifier, finetune=False)
    frozen = build_classifier(head_config, vqvae).to(device)
    jobs = [
        (n, config.seed + i)
        for n in counts
        for i in range(config.num_seeds if n is not None and n <= config.max_seeded_labels else 1)
    ]
    subsets = {job: label_subset(data, *job) for job in jobs}
    codes = {split: encode_codes(frozen, data.split(split)[0]) for split in ("val", "test")}
    # The training codes of the labelled subsets only (all of them when a count is 'all'): the
    # rest of the 55,000 are never read, and encoding them is most of a small study's time.
    needed = torch.unique(torch.cat(list(subsets.values())))
    val = codes["val"]
    codes["train"] = torch.zeros((len(data.train_labels), *val.shape[1:]), dtype=val.dtype, device=val.device)
    codes["train"][needed.to(val.device)] = encode_codes(frozen, data.train_images[needed])
    labels = {split: data.split(split)[1].to(device) for split in ("train", "val", "test")}

    def quantized_features(split: str, idx=None) -> np.ndarray:
        c = codes[split] if idx is None else codes[split][idx.to(codes[split].device)]
        return torch.cat(
            [frozen.quantizer.lookup(c[s : s + 2000].long()).flatten(1).cpu() for s in range(0, len(c), 2000)]
        ).numpy()

    def latent_features(split: str, idx=None) -> np.ndarray:
        images = data.split(split)[0]
        return continuous_features(frozen, images if idx is None else images[idx])

    def pixels(split: str, idx=None) -> np.ndarray:
        images = data.split(split)[0]
        images = images if idx is None else images[idx]
        return images.reshape(len(images), -1).numpy().astype(np.float32) / 255.0

    # The validation and test features of each regression, computed once; the selection subset indexes them.
    feature_of = {"vq_linear": quantized_features, "z_linear": latent_features, "pixel_linear": pixels}
    fixed = {m: (feature_of[m]("val"), feature_of[m]("test")) for m in methods if m in feature_of}
    val_y, test_y = data.val_labels.numpy(), data.test_labels.numpy()
    lookup = code_lookup(frozen.quantizer)
    to_input = lambda x: to_float(x, device)  # noqa: E731

    fingerprint = run_fingerprint(config, classifier, vqvae_path)
    done = finished_runs(out, fingerprint)
    rows = []
    bar = progress_bar(total=len(jobs) * len(methods), desc="label efficiency", unit="run", enabled=progress)
    for n, seed in jobs:
        idx = subsets[(n, seed)]
        didx = idx.to(device)
        sel = selection_subset(data, n, config.selection, seed)
        dsel = sel.to(device)
        per_class = LABELS_PER_CLASS_AVAILABLE if n is None else n
        for method in methods:
            bar.set_postfix(labels=per_class, seed=seed, method=method)
            if (method, per_class, seed) in done:
                rows.append(done[(method, per_class, seed)])
                bar.update(1)
                if progress:
                    bar.write(f"{method:>12} {per_class:>5}/class seed {seed}: reused from {RUNS_FILE}")
                continue
            started = time.perf_counter()
            # A network row's time before an interruption; the row's work under way (`_unfinished_path`).
            earlier_seconds, unfinished = 0.0, None
            if method in ("vq_head", "pixel_convnet"):
                seed_everything(seed)
                head = ClassificationHead.from_config(classifier, vqvae.config.embedding_dim).to(device)
                if method == "vq_head":
                    model = head
                    train = Inputs(codes["train"][didx], labels["train"][didx], lookup)
                    val, test = (
                        Inputs(codes["val"][dsel], labels["val"][dsel], lookup),
                        Inputs(codes["test"], labels["test"], lookup),
                    )
                    epochs = classifier.epochs
                else:
                    model = PixelConvNet(vqvae.config, head).to(device)
                    train = Inputs(data.train_images[idx].to(device), labels["train"][didx], to_input)
                    val = Inputs(data.val_images[sel].to(device), labels["val"][dsel], to_input)
                    test = Inputs(data.test_images.to(device), labels["test"], to_input)
                    epochs = min(classifier.epochs, config.cnn_epochs_all) if n is None else classifier.epochs
                # An interrupted network row goes on from its last epoch (bitwise, on the CPU): the one at all
                # labels trains for hours at the protocol.
                unfinished = _unfinished_path(out, method, per_class, seed)
                result, earlier_seconds = _network_row(
                    model,
                    train,
                    val,
                    test,
                    epochs=epochs,
                    classifier=classifier,
                    row=(method, per_class, seed),
                    fingerprint=method_fingerprint(fingerprint, method),
                    unfinished=unfinished,
                    started=started,
                    progress=progress,
                )
            else:
                val_x, test_x = fixed[method]
                sel_np = sel.numpy()
                # Its finished fits, one per C, are kept until the row is recorded: on all labels they take an hour.
                unfinished = _unfinished_path(out, method, per_class, seed, suffix="")
                result = logistic_regression(
                    feature_of[method]("train", idx),
                    data.train_labels[idx].numpy(),
                    val_x[sel_np],
                    val_y[sel_np],
                    test_x,
                    test_y,
                    cs,
                    config.linear_max_iter,
                    seed,
                    cache=_fits_folder(unfinished, method_fingerprint(fingerprint, method)),
                )
                earlier_seconds = result["earlier_seconds"]  # the kept fits' time, from an earlier run
            rows.append(
                {
                    "method": method,
                    "labels_per_class": per_class,
                    "seed": seed,
                    "val_acc": result["val_acc"],
                    "test_acc": result["test_acc"],
                    "train_images": len(idx),
                    "selected": result["chosen"],
                    "selection": config.selection,
                    "selection_images": len(sel),
                    # Regressions only (empty for the networks, which stop on validation accuracy).
                    "converged": result.get("converged"),
                    "fits_not_converged": result.get("fits_not_converged"),
                    "iterations": result.get("iterations"),
                    "c_at_edge": result.get("c_at_edge"),
                    # Networks only: the last epoch and why training ended there (`classify.stopping`).
                    "stopped_epoch": result.get("stopped_epoch"),
                    "stop_reason": result.get("stop_reason"),
                    "seconds": earlier_seconds + time.perf_counter() - started,
                }
            )
            _record_run(out, fingerprint, rows[-1])
            if unfinished is not None and unfinished.is_dir():
                shutil.rmtree(unfinished)
            elif unfinished is not None:
                unfinished.unlink(missing_ok=True)
            bar.update(1)
            if progress:
                note = ""
                if "converged" in result:
                    note = (", converged" if result["converged"] else ", NOT converged") + (
                        ", C on the grid's edge" if result["c_at_edge"] else ""
                    )
                elif "stop_reason" in result:
                    note = f", {result['stop_reason']}"
                bar.write(
                    f"{method:>12} {per_class:>5}/class seed {seed}: val {result['val_acc']:.4f} "
                    f"({len(sel)} images), test {result['test_acc']:.4f} ({result['chosen']}{note}, "
                    f"{rows[-1]['seconds']:.1f} s)"
                )
    bar.close()
    with contextlib.suppress(OSError):  # every row recorded: no epoch is kept (a file left is another study's)
        (out / UNFINISHED_DIR).rmdir()
    frame = pd.DataFrame(rows)
    write_csv(out / RESULTS_FILE, frame)
    fig = label_efficiency_figure(frame)
    save_figure(fig, out / "label_efficiency.png")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return frame


def label_efficiency_summary(frame):
    """Mean and standard deviation of test accuracy per method and label count (the table of the report).

    With the protocol's columns, also the selection set's size, and for the
    regressions how many seeds' chosen fits did not converge and how many chose
    a C on an edge of the grid.
    """
    groups = frame.groupby(["method", "labels_per_class"])
    table = groups["test_acc"].agg(["mean", "std", "count"])
    if "selection_images" in frame:
        table["selection_images"] = groups["selection_images"].max()
    for column, flag, name in (("converged", False, "not_converged"), ("c_at_edge", True, "c_at_edge")):
        if column in frame:
            # Counted over the regressions only: the networks' rows hold no value (None / NaN).
            table[name] = groups[column].agg(
                lambda s, flag=flag: int(s.dropna().eq(flag).sum()) if s.notna().any() else None
            )
    if "stop_reason" in frame:
        # Networks only: how many seeds ended at the epoch cap rather than by patience on validation.
        table["stopped_at_cap"] = groups["stop_reason"].agg(
            lambda s: int(s.dropna().str.startswith("cap").sum()) if s.notna().any() else None
        )
    return table.reset_index()


def stopping_table(frame):
    """The networks' rows: where each stopped and why (early stopping on validation, or the epoch cap).

    Rows measured before the reason was recorded show it as missing.
    """
    columns = ["method", "labels_per_class", "seed", "selected", "stopped_epoch", "stop_reason"]
    networks = frame[~frame["method"].isin(REGRESSION_METHODS)]
    return networks.reindex(columns=columns).reset_index(drop=True)


def paired_differences(frame, *, reference: Optional[str] = "vq_head", confidence: float = 0.95):
    """Each method's test accuracy minus the reference's, paired by seed, with a t-interval over the seeds.

    Every method of a (label count, seed) trains on the same labelled subset and
    chooses on the same selection set, so the seeds pair the methods: the
    subset's luck (an easy or a hard draw) moves all of them together, and the
    per-seed difference removes it. Comparing the methods' means with their
    unpaired standard deviations (`label_efficiency_summary`) keeps that luck
    in the noise and can miss a consistent gap, or the reverse. With
    `reference=None` every pair of methods is compared (the second minus the
    first, in the frame's order of methods).

    Returns one row per label count and pair: labels_per_class, method,
    reference, seeds (paired seeds), mean_difference, std_difference,
    low, high (the `confidence` t-interval, scipy.stats.t with seeds - 1
    degrees of freedom; NaN with one seed) and excludes_zero.
    """
    import pandas as pd
    from scipy import stats

    if not 0 < confidence < 1:
        raise ConfigError(f"confidence must lie in (0, 1), not {confidence}")
    missing = {"method", "labels_per_class", "seed", "test_acc"} - set(frame.columns)
    if missing:
        raise ConfigError(f"the label-efficiency frame lacks the columns {', '.join(sorted(missing))}")
    if frame.duplicated(["method", "labels_per_class", "seed"]).any():
        raise ConfigError("the label-efficiency frame holds a (method, labels_per_class, seed) more than once")
    methods = list(dict.fromkeys(frame["method"]))
    if reference is not None and reference not in methods:
        raise ConfigError(f"the reference method {reference!r} is not in the frame (methods: {', '.join(methods)})")
    pairs = (
        [(reference, m) for m in methods if m != reference]
        if reference is not None
        else [(a, b) for i, a in enumerate(methods) for b in methods[i + 1 :]]
    )
    wide = frame.pivot(index=["labels_per_class", "seed"], columns="method", values="test_acc")
    rows = []
    for count, per_seed in wide.groupby(level="labels_per_class", sort=True):
        for ref, method in pairs:
            d = (per_seed[method] - per_seed[ref]).dropna().to_numpy(dtype=np.float64)
            n = len(d)
            if n == 0:
                continue
            mean = float(d.mean())
            std = float(d.std(ddof=1)) if n > 1 else float("nan")
            if n > 1:
                half = float(stats.t.ppf(0.5 + confidence / 2, df=n - 1)) * std / np.sqrt(n)
                low, high = mean - half, mean + half
            else:
                low = high = float("nan")
            rows.append(
                {
                    "labels_per_class": count,
                    "method": method,
                    "reference": ref,
                    "seeds": n,
                    "mean_difference": mean,
                    "std_difference": std,
                    "low": low,
                    "high": high,
                    "excludes_zero": bool(n > 1 and (low > 0 or high < 0)),
                }
            )
    columns = [
        "labels_per_class",
        "method",
        "reference",
        "seeds",
        "mean_difference",
        "std_difference",
        "low",
        "high",
        "excludes_zero",
    ]
    return pd.DataFrame(rows, columns=columns)
