"""What the discrete code is worth with few labels: the code against pixel baselines.

Four methods at several label counts and seeds, all trained by the classifier
stage's one loop (`classify.fit`) or a logistic regression, all seeing the same
labelled subset for a (label count, seed).
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from . import paths
from .checkpoints import load_vqvae, resolve_vqvae_checkpoint
from .classify import Inputs, build_classifier, code_lookup, encode_codes, evaluate_logits, fit, label_subset
from .config import (
    LABELS_PER_CLASS_AVAILABLE,
    ClassifierConfig,
    LabelEfficiencyConfig,
    parse_floats,
    parse_label_counts,
    parse_methods,
)
from .data import FashionMNIST, load_fashion_mnist, to_float
from .device import resolve_device, seed_everything
from .files import ensure_dir, save_figure, write_csv
from .models import ClassificationHead, PixelCNN
from .progress import progress_bar


def _logistic_regression(
    train_x: np.ndarray,
    train_y: np.ndarray,
    val_x: np.ndarray,
    val_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    cs: list[float],
    max_iter: int,
    seed: int,
) -> dict:
    """Standardised features, L-BFGS logistic regression; C chosen on validation accuracy."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(train_x)
    train_x, val_x, test_x = scaler.transform(train_x), scaler.transform(val_x), scaler.transform(test_x)
    best = None
    for c in cs:
        with warnings.catch_warnings():
            # A capped iteration count is the stated budget; the validation score judges the result.
            warnings.simplefilter("ignore", ConvergenceWarning)
            clf = LogisticRegression(C=c, max_iter=max_iter, random_state=seed).fit(train_x, train_y)
        val_acc = float((clf.predict(val_x) == val_y).mean())
        if best is None or val_acc > best[0]:
            best = (val_acc, c, clf)
    val_acc, c, clf = best
    return {"val_acc": val_acc, "test_acc": float((clf.predict(test_x) == test_y).mean()), "chosen": f"C={c}"}


def label_efficiency(
    config: LabelEfficiencyConfig,
    data: Optional[FashionMNIST] = None,
    *,
    classifier: Optional[ClassifierConfig] = None,
    progress: bool = True,
):
    """Test accuracy against labels per class for the four methods; returns the tidy DataFrame.

    Methods: vq_head (the head on the frozen code, from the index cache),
    vq_linear (logistic regression on the flattened quantized latents),
    pixel_cnn (an encoder-shaped CNN and the same head, from scratch on pixels,
    the same size as the fine-tuned classifier), pixel_linear (logistic
    regression on pixels). Every method sees the same labelled subset for a
    (label count, seed) and selects its epoch or C on the whole validation
    split. Writes label_efficiency.csv and label_efficiency.png into the
    results folder.
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
    codes = {split: encode_codes(frozen, data.split(split)[0]) for split in ("train", "val", "test")}
    labels = {split: data.split(split)[1].to(device) for split in ("train", "val", "test")}

    def quantized_features(split: str, idx=None) -> np.ndarray:
        c = codes[split] if idx is None else codes[split][idx.to(codes[split].device)]
        return torch.cat(
            [frozen.quantizer.lookup(c[s : s + 2000].long()).flatten(1).cpu() for s in range(0, len(c), 2000)]
        ).numpy()

    def pixels(split: str, idx=None) -> np.ndarray:
        images = data.split(split)[0]
        images = images if idx is None else images[idx]
        return images.reshape(len(images), -1).numpy().astype(np.float32) / 255.0

    val_q, test_q = (quantized_features("val"), quantized_features("test")) if "vq_linear" in methods else (None, None)
    val_p, test_p = (pixels("val"), pixels("test")) if "pixel_linear" in methods else (None, None)
    val_y, test_y = data.val_labels.numpy(), data.test_labels.numpy()
    lookup = code_lookup(frozen.quantizer)
    to_input = lambda x: to_float(x, device)  # noqa: E731

    jobs = [
        (n, config.seed + i)
        for n in counts
        for i in range(config.num_seeds if n is not None and n <= config.max_seeded_labels else 1)
    ]
    rows = []
    bar = progress_bar(total=len(jobs) * len(methods), desc="label efficiency", unit="run", enabled=progress)
    for n, seed in jobs:
        idx = label_subset(data, n, seed)
        didx = idx.to(device)
        per_class = LABELS_PER_CLASS_AVAILABLE if n is None else n
        for method in methods:
            bar.set_postfix(labels=per_class, seed=seed, method=method)
            started = time.perf_counter()
            if method in ("vq_head", "pixel_cnn"):
                seed_everything(seed)
                head = ClassificationHead.from_config(classifier, vqvae.config.embedding_dim).to(device)
                if method == "vq_head":
                    model = head
                    train = Inputs(codes["train"][didx], labels["train"][didx], lookup)
                    val, test = (
                        Inputs(codes["val"], labels["val"], lookup),
                        Inputs(codes["test"], labels["test"], lookup),
                    )
                    epochs = classifier.epochs
                else:
                    model = PixelCNN(vqvae.config, head).to(device)
                    train = Inputs(data.train_images[idx].to(device), labels["train"][didx], to_input)
                    val = Inputs(data.val_images.to(device), labels["val"], to_input)
                    test = Inputs(data.test_images.to(device), labels["test"], to_input)
                    epochs = min(classifier.epochs, config.cnn_epochs_all) if n is None else classifier.epochs
                params = [
                    {
                        "params": model.parameters(),
                        "lr": classifier.learning_rate,
                        "initial_lr": classifier.learning_rate,
                    }
                ]
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
                )
                test_logits = evaluate_logits(model, test)
                result = {
                    "val_acc": history[best_epoch - 1]["val_acc"],
                    "test_acc": (test_logits.argmax(1) == test.labels).float().mean().item(),
                    "chosen": f"epoch {best_epoch} of {len(history)}",
                }
            elif method == "vq_linear":
                result = _logistic_regression(
                    quantized_features("train", idx),
                    data.train_labels[idx].numpy(),
                    val_q,
                    val_y,
                    test_q,
                    test_y,
                    cs,
                    config.linear_max_iter,
                    seed,
                )
            else:
                result = _logistic_regression(
                    pixels("train", idx),
                    data.train_labels[idx].numpy(),
                    val_p,
                    val_y,
                    test_p,
                    test_y,
                    cs,
                    config.linear_max_iter,
                    seed,
                )
            rows.append(
                {
                    "method": method,
                    "labels_per_class": per_class,
                    "seed": seed,
                    "val_acc": result["val_acc"],
                    "test_acc": result["test_acc"],
                    "train_images": len(idx),
                    "selected": result["chosen"],
                    "seconds": time.perf_counter() - started,
                }
            )
            bar.update(1)
            if progress:
                bar.write(
                    f"{method:>12} {per_class:>5}/class seed {seed}: val {result['val_acc']:.4f}, "
                    f"test {result['test_acc']:.4f} ({result['chosen']}, {rows[-1]['seconds']:.1f} s)"
                )
    bar.close()
    frame = pd.DataFrame(rows)
    write_csv(out / "label_efficiency.csv", frame)
    fig = label_efficiency_figure(frame)
    save_figure(fig, out / "label_efficiency.png")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return frame


def label_efficiency_summary(frame):
    """Mean and standard deviation of test accuracy per method and label count (the table of the report)."""
    return frame.groupby(["method", "labels_per_class"])["test_acc"].agg(["mean", "std", "count"]).reset_index()
