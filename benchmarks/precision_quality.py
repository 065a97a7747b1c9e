"""fp32 against bf16 at equal budgets: is the quality the same within the spread between seeds?

Collects the runs that docs/precision.md's commands train (VQ-VAEs through `vqlib grid`, classifiers
through `vqlib train-cls`, priors through `vqlib train-prior`, each in both precisions with seeds 0, 1
and 2) and writes results/published/precision/: one CSV of runs per model kind and `summary.csv`,
one row per model kind and metric with both precisions' means and standard deviations over the seeds
and the paired difference bf16 - fp32 (same seed: the same data order and initial weights) with its
95% t-interval. Each metric's verdict: "no difference shown" when that interval holds 0; "a paired
difference, within the seed spread" when it does not but the mean difference is at most the larger
of the two standard deviations; else "differs beyond the seed spread". Prints the summary.

    python benchmarks/precision_quality.py [--runs ROOT] [--out DIR]

ROOT holds results/precision/{fp32,bf16}/K{K}_D{D}/ (the grids), checkpoints/precision/classifier/
{fp32,bf16}_s{seed}/ and checkpoints/precision/prior/{fp32,bf16}_s{seed}/ (default: this project).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

import pandas as pd

from vqlib import paths
from vqlib.files import read_json, write_csv
from vqlib.grid import paired_interval

PRECISIONS = ("fp32", "bf16")
METRICS = {
    "vqvae": ("val_mse", "val_perplexity", "val_usage"),
    "classifier": ("val_acc",),
    "prior": ("val_bits_per_code",),
}


def vqvae_runs(root: Path) -> pd.DataFrame:
    """One row per finished grid run under results/precision/{fp32,bf16}/."""
    rows = []
    for precision in PRECISIONS:
        for metrics_file in sorted((root / "results" / "precision" / precision).glob("K*_D*/K*_D*/metrics.json")):
            m = read_json(metrics_file)
            if m.get("status") != "success":
                continue
            rows.append(
                {
                    "kind": "vqvae",
                    "config": metrics_file.parent.parent.name,
                    "precision": m["precision"],
                    "seed": int(m.get("seed", 0)),
                    "val_mse": m["val_mse"],
                    "val_perplexity": m["val_perplexity"],
                    "val_usage": m["val_usage"],
                    "best_epoch": m["best_epoch"],
                    "epochs": len(m["history"]),
                    "images_per_s": m.get("images_per_s"),
                }
            )
    return pd.DataFrame(rows)


def _checkpoint_runs(root: Path, kind: str) -> list[tuple[str, int, Path]]:
    found = []
    for folder in sorted((root / "checkpoints" / "precision" / kind).glob("*_s*")):
        precision, _, seed = folder.name.partition("_s")
        if precision in PRECISIONS and seed.isdigit() and (folder / "history.json").is_file():
            found.append((precision, int(seed), folder))
    return found


def classifier_runs(root: Path) -> pd.DataFrame:
    """One row per classifier that stopped (a stopping.json beside its history)."""
    rows = []
    for precision, seed, folder in _checkpoint_runs(root, "classifier"):
        if not (folder / "stopping.json").is_file():
            continue  # still training
        history = read_json(folder / "history.json")
        best = max(history, key=lambda e: e["val_acc"])
        assert all(e["precision"] == precision for e in history), folder
        rows.append(
            {
                "kind": "classifier",
                "config": "K100_D64 head, all labels",
                "precision": precision,
                "seed": seed,
                "val_acc": best["val_acc"],
                "best_epoch": best["epoch"],
                "epochs": len(history),
                "images_per_s": float(pd.Series([e["images_per_s"] for e in history]).median()),
            }
        )
    return pd.DataFrame(rows)


def prior_runs(root: Path) -> pd.DataFrame:
    """One row per prior that finished its epochs (history of `epochs` entries, or stopped early)."""
    rows = []
    for precision, seed, folder in _checkpoint_runs(root, "prior"):
        history = read_json(folder / "history.json")
        config = read_json(folder / "config.json")
        config = config.get("prior", config)  # train_prior writes {"prior": PriorConfig, "vqvae_checkpoint": ...}
        entries = history if isinstance(history, list) else history.get("epochs", [])
        if not entries or not (folder / "best.pt").is_file() or len(entries) < config.get("epochs", 0):
            continue
        best = min(entries, key=lambda e: e["val_bits_per_code"])
        rows.append(
            {
                "kind": "prior",
                "config": f"{config.get('layers')} x {config.get('width')} transformer, "
                f"{config.get('train_subset')} codes x {config.get('epochs')} epochs",
                "precision": precision,
                "seed": seed,
                "val_bits_per_code": best["val_bits_per_code"],
                "best_epoch": best["epoch"],
                "epochs": len(entries),
            }
        )
    return pd.DataFrame(rows)


def agreement(runs: pd.DataFrame, metric: str, confidence: float = 0.95) -> Optional[dict]:
    """Both precisions' mean and std over seeds, and the paired difference bf16 - fp32 with its t-interval."""
    table = runs.pivot_table(index="seed", columns="precision", values=metric, aggfunc="first")
    if not set(PRECISIONS) <= set(table.columns):
        return None
    paired = table.dropna()
    n, mean, low, high = paired_interval(paired["bf16"] - paired["fp32"], confidence)
    spread = max(float(table["fp32"].std(ddof=1)), float(table["bf16"].std(ddof=1)))
    holds_zero = n >= 2 and low <= 0 <= high
    within = n >= 2 and abs(mean) <= spread
    if n < 2:
        verdict = "not measured (fewer than 2 paired seeds)"
    elif holds_zero:
        verdict = "no difference shown"
    elif within:
        verdict = "a paired difference, within the seed spread"
    else:
        verdict = "differs beyond the seed spread"
    return {
        "metric": metric,
        "seeds": n,
        "fp32_mean": float(table["fp32"].mean()),
        "fp32_std": float(table["fp32"].std(ddof=1)),
        "bf16_mean": float(table["bf16"].mean()),
        "bf16_std": float(table["bf16"].std(ddof=1)),
        "difference": mean,
        "ci_low": low,
        "ci_high": high,
        "interval_holds_zero": bool(holds_zero),
        "within_seed_std": bool(within),
        "verdict": verdict,
    }


def summarise(frames: dict[str, pd.DataFrame]) -> pd.DataFrame:
    rows = []
    for kind, runs in frames.items():
        if runs.empty:
            continue
        for config, group in runs.groupby("config"):
            for metric in METRICS[kind]:
                row = agreement(group, metric)
                if row:
                    rows.append({"kind": kind, "config": config, **row})
    return pd.DataFrame(rows)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default=None, help="project root holding the runs (default: this project)")
    parser.add_argument("--out", default=None, help="output folder (default: results/published/precision)")
    args = parser.parse_args(argv)
    root = Path(args.runs) if args.runs else paths.project_root()
    out = Path(args.out) if args.out else paths.published_dir() / "precision"
    frames = {"vqvae": vqvae_runs(root), "classifier": classifier_runs(root), "prior": prior_runs(root)}
    if all(f.empty for f in frames.values()):
        print(f"precision_quality: no finished fp32/bf16 runs under {root}", file=sys.stderr)
        return 2
    for kind, frame in frames.items():
        if not frame.empty:
            write_csv(out / f"{kind}_runs.csv", frame.sort_values(["config", "precision", "seed"]))
    summary = summarise(frames)
    write_csv(out / "summary.csv", summary)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(summary.to_string(index=False, float_format=lambda x: f"{x:.6g}"))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
