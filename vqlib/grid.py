"""The grid: a plan of notebook runs (K x D x seed), run by an executor, collected and chosen from.

`run_grid` executes notebooks/01_train_vqvae.ipynb once per point with
papermill; each executed notebook lands in its run folder
``results/grid/K{K}_D{D}[_s{seed}]/`` beside the metrics JSON the notebook
writes and the run record the grid writes. A point whose metrics record
success for the same settings is reused; one that fails (a cell error, a cell
timeout, a dead kernel) is recorded with its error and the others still run;
an interrupted one continues from its last.pt. Which machine runs a point is
the executor's business (`executors.py`). Notebook 02 reads the folders back
(`collect_grid`), aggregates seeds and chooses the best configuration on the
mean validation MSE (`write_best`).
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd

from . import paths
from .checkpoints import BEST_FILE
from .config import GridConfig, TrainConfig, VQVAEConfig, changed_fields, with_defaults
from .errors import CheckpointError, ConfigError, TrainingError
from .executors import choose_placement, make_executor
from .files import ensure_dir, read_json, read_json_or_empty, write_csv, write_json
from .notebooks import TRAIN_NOTEBOOK, NotebookError, check_kernel, plain_parameters
from .train import METRICS_FILE, configs_from_parameters

RUN_FILE = "run.json"  # written by the grid: status, error, wall time, executor, node and attempts of the run
SUMMARY_FILE = "summary.csv"
# Selection happens on validation MSE (the original study's find_best_model_params), averaged over
# seeds when there are several; the test split is measured for the chosen configuration only.
SELECTION_METRIC = "val_mse"


# ----------------------------------------------------------------------------- folders


def grid_dir(config: Optional[GridConfig] = None) -> Path:
    return Path(config.grid_dir) if config and config.grid_dir else paths.grid_dir()


def checkpoint_root(config: Optional[GridConfig] = None) -> Path:
    return Path(config.checkpoint_root) if config and config.checkpoint_root else paths.checkpoints_dir() / "grid"


# ----------------------------------------------------------------------------- the plan


def grid_parameters(
    num_embeddings: int,
    embedding_dim: int,
    model: Optional[VQVAEConfig] = None,
    train: Optional[TrainConfig] = None,
    grid: Optional[GridConfig] = None,
    seed: int = 0,
) -> dict[str, Any]:
    """The parameters of notebook 01 for one grid point: every field of VQVAEConfig and TrainConfig.

    K and D are substituted without validation, so that an impossible point
    fails inside its own notebook (recorded) rather than stopping the grid.
    """
    name = paths.vqvae_run_name(num_embeddings, embedding_dim, seed)
    return plain_parameters(
        {
            **dataclasses.asdict(model or VQVAEConfig()),
            "num_embeddings": num_embeddings,
            "embedding_dim": embedding_dim,
            **dataclasses.asdict(train or TrainConfig()),
            "seed": seed,
            "checkpoint_dir": str((checkpoint_root(grid) / name).resolve()),
            "results_dir": str((grid_dir(grid) / name).resolve()),
        }
    )


# Where and how fast a point ran, not what it computed: a finished point is reused
# whatever these were (another machine's folders, CUDA, speed switches).
# The precision is among them: a finished fp32 point is reused by a run that asks for 'auto' on a
# bf16 machine; its metrics (and the summary's precision column) say what it ran in.
PLACEMENT_FIELDS = ("device", "checkpoint_dir", "results_dir", "precision", "channels_last", "compile")


def is_complete(folder: str | os.PathLike, parameters: dict[str, Any]) -> bool:
    """True when the run folder's metrics record success for these parameters and its best.pt exists.

    Only what determines the result is compared (`PLACEMENT_FIELDS` may differ),
    and fields added to the configs since the run count at their defaults.
    """
    path = Path(folder) / METRICS_FILE
    try:
        metrics = read_json(path)
    except (OSError, ValueError):
        return False
    if not isinstance(metrics, dict) or metrics.get("status") != "success":
        return False
    model_config, train_config = metrics.get("model_config"), metrics.get("train_config")
    if not isinstance(model_config, dict) or not isinstance(train_config, dict):
        return False
    recorded = {**with_defaults(VQVAEConfig, model_config), **with_defaults(TrainConfig, train_config)}
    if changed_fields(recorded, parameters, PLACEMENT_FIELDS):
        return False
    return (Path(parameters["checkpoint_dir"]) / "best.pt").is_file()


def resume_decision(name: str, parameters: dict[str, Any]) -> tuple[bool, str, int]:
    """Whether an unfinished grid point continues from its last.pt, a line saying what happens, and its epochs done.

    An interrupted point continues where its last.pt left off. A last.pt of other
    settings (another profile, say) cannot be continued: the grid owns that folder
    and was asked for these settings, so the point is trained afresh, and says so.
    """
    from .train import read_last

    last = Path(parameters["checkpoint_dir"]) / "last.pt"
    if not last.is_file():
        return False, "", 0
    try:
        model_config, train_config = configs_from_parameters(parameters)
    except ConfigError:
        return False, "", 0  # an impossible point fails in its own notebook, where the error is recorded
    try:
        epoch = read_last(last, model_config, train_config)["epoch"]
    except CheckpointError as exc:
        return False, f"{name} starts afresh and replaces its checkpoints: {exc}", 0
    return True, f"{name} continues from its last.pt (epoch {epoch} of {train_config.epochs} done)", epoch


# ----------------------------------------------------------------------------- running it


def executor_for(grid: GridConfig, points: int, device: str = "auto"):
    """The executor `grid` asks for, placed for `points` points on this machine (or the Ray cluster)."""
    jobs, threads = choose_placement(points, grid.jobs, grid.threads_per_config, device)
    return make_executor(
        grid.executor,
        jobs=jobs,
        threads=threads,
        ray_address=grid.ray_address,
        cpus_per_config=grid.cpus_per_config or grid.threads_per_config,
        gpus_per_config=grid.gpus_per_config,
        ray_worker_root=grid.ray_worker_root,
    )


def run_grid(
    grid: Optional[GridConfig] = None,
    model: Optional[VQVAEConfig] = None,
    train: Optional[TrainConfig] = None,
    *,
    progress: bool = True,
    executor=None,
) -> pd.DataFrame:
    """Train every (K, D) of `grid` through notebook 01; return (and write) the summary table.

    `model` and `train` give every other setting (their K, D, seed and folders
    are replaced per point). Complete points are reused, failed ones recorded.
    The executor (`grid.executor`, or one given) places the points: by default
    a local pool sized by `choose_placement`, each point in its own kernel with
    its share of the cores.
    """
    from .progress import progress_bar

    grid = grid or GridConfig()
    check_kernel()
    notebook = paths.notebooks_dir() / TRAIN_NOTEBOOK
    if not notebook.is_file():
        raise NotebookError(f"no notebook at {notebook}; the grid executes it once per configuration")
    root = ensure_dir(grid_dir(grid))
    specs, reused, notes = [], {}, []
    points = grid.points()
    executor = executor or executor_for(grid, len(points), (train or TrainConfig()).device)
    for k, d, seed in points:
        name = paths.vqvae_run_name(k, d, seed)
        parameters = grid_parameters(k, d, model, train, grid, seed)
        if is_complete(root / name, parameters):
            reused[name] = True
            continue
        resume, note, epochs_done = resume_decision(name, parameters)
        if note:
            notes.append(note)
        specs.append(
            {
                # Epochs still to train: what the progress bar counts, so that a point
                # resumed near its end does not make the rest of the grid look short.
                "epochs_left": max(int(parameters["epochs"]) - epochs_done, 0),
                "name": name,
                "folder": str(root / name),
                "notebook": str(notebook),
                "cwd": str(paths.notebooks_dir()),
                "parameters": parameters,
                "resume": resume,
                "cell_timeout": grid.cell_timeout,
                "threads": executor.threads,
            }
        )
    names = [paths.vqvae_run_name(k, d, seed) for k, d, seed in points]

    def summary() -> pd.DataFrame:
        frame = collect_grid(root, names=names)
        frame.insert(5, "reused", [name in reused for name in frame["name"]])
        write_csv(root / SUMMARY_FILE, frame.drop(columns=["history"], errors="ignore"))
        return frame

    if progress and reused:
        print(f"grid: {len(reused)} of {len(names)} configurations already complete, reused: {', '.join(reused)}")
    if progress:
        for note in notes:
            print(f"grid: {note}")
    # The bar counts epochs (advanced when a point ends), the description configurations.
    bar = progress_bar(
        total=sum(spec["epochs_left"] for spec in specs),
        desc=f"grid: 0/{len(specs)} configs done",
        unit="epoch",
        enabled=progress and bool(specs),
        bar_format="{desc}, {n}/{total} epochs [{elapsed} elapsed, {remaining} left] {postfix}",
    )
    ended = []

    by_name = {spec["name"]: spec for spec in specs}
    for spec in specs:
        # A stale success from other parameters must not survive a failed rerun.
        (ensure_dir(spec["folder"]) / METRICS_FILE).unlink(missing_ok=True)

    def report(record: dict) -> None:
        spec = by_name[record["name"]]
        folder = Path(spec["folder"])
        if record["status"] == "success" and not is_complete(folder, spec["parameters"]):
            record.update(
                status="failed", error=f"{TRAIN_NOTEBOOK} ended without recording success in {folder / METRICS_FILE}"
            )
        if record["status"] == "success":
            # What the point trained in, beside where and how long: 'auto' resolves per machine.
            record["precision"] = read_json_or_empty(folder / METRICS_FILE).get("precision", "fp32")
        write_json(folder / RUN_FILE, record)
        ended.append(record["name"])
        bar.set_description_str(f"grid: {len(ended)}/{len(specs)} configs done", refresh=False)
        bar.update(spec["epochs_left"])
        if record["status"] == "success":
            metrics = read_json(folder / METRICS_FILE)
            bar.write(
                f"{record['name']}: done in {record['seconds']:.0f} s, validation MSE {metrics['val_mse']:.5f}, "
                f"perplexity {metrics['val_perplexity']:.1f}, codes used {metrics['val_usage']:.0%}"
            )
        else:
            bar.write(f"{record['name']}: FAILED after {record['seconds']:.0f} s: {record['error']}")
        summary()

    if progress and specs:
        print(f"grid: {len(specs)} to run, {executor.describe()}")
        bar.set_postfix_str(executor.describe())
    executor.run(specs, report)
    bar.close()
    return summary()


# ----------------------------------------------------------------------------- reading the grid (notebook 02)


def collect_grid(folder: Optional[str | os.PathLike] = None, *, names: Optional[list[str]] = None) -> pd.DataFrame:
    """One row per run folder (K{K}_D{D}) of the grid: status, error, validation metrics, timing, history.

    Reads each folder's metrics JSON (written by notebook 01) and run record
    (written by the grid). `names` restricts and orders the folders.
    """
    root = Path(folder) if folder else grid_dir()
    if names is None:
        names = sorted(
            (p.name for p in root.glob("K*_D*") if p.is_dir() and paths.parse_vqvae_run_name(p.name)),
            key=paths.parse_vqvae_run_name,
        )
    rows = []
    for name in names:
        run_dir = root / name
        record = read_json_or_empty(run_dir / RUN_FILE)
        metrics = read_json_or_empty(run_dir / METRICS_FILE)
        k, d, seed = paths.parse_vqvae_run_name(name)
        ok = metrics.get("status") == "success"
        status = "success" if ok else (record.get("status") or "missing")
        if status == "success" and not ok:
            status = "missing"  # the grid said success but the metrics are gone
        train_config = _dict(metrics.get("train_config"))
        code = metrics.get("code")
        rows.append(
            {
                "name": name,
                "num_embeddings": k,
                "embedding_dim": d,
                "seed": seed,
                "status": status,
                "error": "" if ok else str(record.get("error", "no metrics.json yet")),
                "val_mse": _number(metrics.get("val_mse")),
                "val_psnr": _number(metrics.get("val_psnr")),
                "val_perplexity": _number(metrics.get("val_perplexity")),
                "val_usage": _number(metrics.get("val_usage")),
                "best_epoch": _number(metrics.get("best_epoch")),
                "epochs": _number(train_config.get("epochs")),
                "train_subset": train_config.get("train_subset"),
                "train_seconds": _number(metrics.get("train_seconds")),
                "run_seconds": _number(record.get("seconds")),
                "images_per_s": _number(metrics.get("images_per_s")),
                # Runs recorded before precision was recorded trained in fp32.
                "precision": _text(metrics.get("precision", "fp32")) if ok else "",
                "peak_rss_mb": _number(metrics.get("peak_rss_mb")),
                "threads": record.get("threads"),
                "code": " ".join(map(str, code)) if isinstance(code, list) else "",
                "checkpoint": str(metrics.get("checkpoint", "")),
                "notebook": str(record.get("notebook", run_dir / TRAIN_NOTEBOOK)),
                "history": [row for row in metrics.get("history", []) if isinstance(row, dict)]
                if isinstance(metrics.get("history"), list)
                else [],
            }
        )
    columns = [
        "name",
        "num_embeddings",
        "embedding_dim",
        "seed",
        "status",
        "error",
        "val_mse",
        "val_psnr",
        "val_perplexity",
        "val_usage",
        "best_epoch",
        "epochs",
        "train_subset",
        "train_seconds",
        "run_seconds",
        "images_per_s",
        "precision",
        "peak_rss_mb",
        "threads",
        "code",
        "checkpoint",
        "notebook",
        "history",
    ]
    return with_seed_statistics(pd.DataFrame(rows, columns=columns))


def _text(value: Any) -> str:
    """A recorded name as it is; anything else read from a damaged record is an empty string."""
    return value if isinstance(value, str) else ""


def _number(value: Any) -> float | int:
    """A recorded number as it is (an int stays an int, as the columns had it); anything else (a string, a list,
    true) read from a hand-edited or damaged record is NaN, so that one broken file cannot break the whole
    table (tests/test_fuzz.py)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return math.nan
    if isinstance(value, int) and abs(value) >= 2**63:  # beyond int64: pandas would make the column object
        return math.nan
    return value


def _dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def with_seed_statistics(frame: pd.DataFrame, metric: str = SELECTION_METRIC) -> pd.DataFrame:
    """`frame` with, on every row, the mean, standard deviation and count over the seeds of its K x D.

    Only successful runs count. With one seed the std is NaN: a spread cannot be
    measured from one run (the original study's findings have no error bars; several
    seeds give them).
    """
    ok = frame[metric].where(frame["status"] == "success")
    groups = ok.groupby([frame["num_embeddings"], frame["embedding_dim"]])
    return frame.assign(
        **{
            f"{metric}_mean": groups.transform("mean"),
            f"{metric}_std": groups.transform("std"),
            "seeds_done": groups.transform("count").astype(int),
        }
    )


def paired_interval(differences: pd.Series, confidence: float = 0.95) -> tuple[int, float, float, float]:
    """(n, mean, low, high) of per-seed paired differences: their mean and its t-interval (n - 1 degrees of
    freedom). With fewer than 2 differences the interval is not measured (NaN), and with none the mean either."""
    from scipy import stats

    n = len(differences)
    mean = float(differences.mean()) if n else math.nan
    if n < 2:
        return n, mean, math.nan, math.nan
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1) * differences.std(ddof=1) / math.sqrt(n))
    return n, mean, mean - half, mean + half


def paired_seed_differences(
    frame: pd.DataFrame, metric: str = SELECTION_METRIC, *, over: str = "embedding_dim", confidence: float = 0.95
) -> pd.DataFrame:
    """Paired differences of `metric` between the values of `over` (D by default) within each other axis value (K),
    over the seeds that both configurations finished: one row per pair (a, b) with a < b.

    Each seed is one paired observation (`metric` of b minus that of a, at the same
    seed): the same seed starts both from the same data order, so the pairs share
    that part of the run-to-run noise, and the interval is a t-interval on the
    per-seed differences (n - 1 degrees of freedom). `verdict` says whether the
    interval excludes 0. With one seed the interval is not measured (NaN).
    """
    other = "num_embeddings" if over == "embedding_dim" else "embedding_dim"
    ok = frame[frame["status"] == "success"]
    rows = []
    for value, group in ok.groupby(other):
        table = group.pivot_table(index="seed", columns=over, values=metric, aggfunc="first")
        levels = sorted(table.columns)
        for i, a in enumerate(levels):
            for b in levels[i + 1 :]:
                diff = (table[b] - table[a]).dropna()
                n, mean, low, high = paired_interval(diff, confidence)
                if n >= 2:
                    verdict = "b lower" if high < 0 else "b higher" if low > 0 else "no difference shown"
                else:
                    verdict = "not measured (one seed)"
                rows.append(
                    {
                        other: value,
                        f"{over}_a": a,
                        f"{over}_b": b,
                        "seeds": n,
                        f"{metric}_a": float(table.loc[diff.index, a].mean()) if n else math.nan,
                        f"{metric}_b": float(table.loc[diff.index, b].mean()) if n else math.nan,
                        "mean_difference": mean,
                        "ci_low": low,
                        "ci_high": high,
                        "verdict": verdict,
                    }
                )
    return pd.DataFrame(rows)


NOT_MEASURED = "not measured (fewer than 2 paired seeds)"


def paired_comparison(
    frame: pd.DataFrame, metric: str, *, by: str, a: str, b: str, confidence: float = 0.95
) -> dict[str, Any]:
    """`metric` of the rows whose column `by` is `b` against those where it is `a`, paired by seed.

    `frame` holds one row per (`by`, seed), of one configuration. Over the seeds
    that both have: each setting's mean and standard deviation, and the paired
    difference b - a with its t-interval (`paired_interval`). The verdict is "no
    difference shown" when the interval holds 0; else "<b> lower" or "<b> higher",
    "beyond the seed spread" when the mean difference exceeds the larger of the
    two standard deviations and "within the seed spread" when it does not. With
    fewer than 2 paired seeds nothing is claimed.
    """
    table = frame.pivot_table(index="seed", columns=by, values=metric, aggfunc="first")
    paired = table.reindex(columns=[a, b]).dropna()
    n, mean, low, high = paired_interval(paired[b] - paired[a], confidence)
    spread = max(float(paired[a].std(ddof=1)), float(paired[b].std(ddof=1))) if n >= 2 else math.nan
    if n < 2:
        verdict = NOT_MEASURED
    elif low <= 0 <= high:
        verdict = "no difference shown"
    else:
        verdict = f"{b} {'lower' if mean < 0 else 'higher'}, " + (
            "beyond the seed spread" if abs(mean) > spread else "within the seed spread"
        )
    return {
        "metric": metric,
        "seeds": n,
        f"{a}_mean": float(paired[a].mean()) if n else math.nan,
        f"{a}_std": float(paired[a].std(ddof=1)) if n >= 2 else math.nan,
        f"{b}_mean": float(paired[b].mean()) if n else math.nan,
        f"{b}_std": float(paired[b].std(ddof=1)) if n >= 2 else math.nan,
        "mean_difference": mean,
        "ci_low": low,
        "ci_high": high,
        "verdict": verdict,
    }


def soak_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per run: resident memory and speed across its epochs, from the history (the long study is the soak test).

    `rss_growth_mb_per_epoch` is the least-squares slope of the resident memory
    over the epochs after the first (the first holds the one-off allocations);
    `speed_last_over_first` compares the mean images/s of the last and the first
    fifth of the epochs. A leak shows as a steady positive slope; a slowdown of
    the code (not of a busy machine) as a ratio well below 1 with the machine's
    load (`load_first`, `load_last`: the 1-minute load average) unchanged.
    """
    rows = []
    for row in frame.itertuples():
        history = pd.DataFrame(row.history)
        if history.empty or "rss_mb" not in history:
            continue
        rss = history["rss_mb"].to_numpy(dtype=float)[1:]
        slope = float(np.polyfit(np.arange(len(rss)), rss, 1)[0]) if len(rss) >= 3 else math.nan
        fifth = max(1, len(history) // 5)
        speed = history["images_per_s"].to_numpy(dtype=float)
        rows.append(
            {
                "name": row.name,
                "epochs": len(history),
                "rss_first_mb": float(history["rss_mb"].iloc[0]),
                "rss_last_mb": float(history["rss_mb"].iloc[-1]),
                "peak_rss_mb": float(history["peak_rss_mb"].max()),
                "rss_growth_mb_per_epoch": slope,
                "images_per_s_first": float(speed[:fifth].mean()),
                "images_per_s_last": float(speed[-fifth:].mean()),
                "speed_last_over_first": float(speed[-fifth:].mean() / speed[:fifth].mean()),
                "load_first": float(history["load_avg"].iloc[:fifth].mean()) if "load_avg" in history else math.nan,
                "load_last": float(history["load_avg"].iloc[-fifth:].mean()) if "load_avg" in history else math.nan,
                "code": " ".join(dict.fromkeys(history["code"])) if "code" in history else "",
            }
        )
    return pd.DataFrame(rows)


def load_losses(folder: Optional[str | os.PathLike] = None) -> dict[str, pd.DataFrame]:
    """The original study's `load_losses`: per-epoch history of every successful grid run, by run name."""
    frame = collect_grid(folder)
    return {
        row.name: pd.DataFrame(row.history) for row in frame.itertuples() if row.status == "success" and row.history
    }


def find_best_model_params(frame: pd.DataFrame, *, metric: str = SELECTION_METRIC) -> dict:
    """The original study's `find_best_model_params`: the configuration with the lowest validation MSE, as a dict.

    With several seeds per K x D the configuration is chosen on the mean over its
    seeds, and its checkpoint is that of its seed with the lowest validation MSE.
    The margin to the runner-up configuration is reported beside the seed-to-seed
    spread, so a reader can tell whether the choice is more than noise.
    """
    done = frame[(frame["status"] == "success") & frame[metric].notna()]
    if done.empty:
        raise TrainingError(
            "no grid configuration finished successfully, so there is no best one; "
            "see the errors in results/grid/summary.csv"
        )
    means = done.groupby(["num_embeddings", "embedding_dim"])[metric].agg(["mean", "std", "count"]).sort_values("mean")
    k, d = means.index[0]
    runs = done[(done["num_embeddings"] == k) & (done["embedding_dim"] == d)]
    row = runs.loc[runs[metric].idxmin()]
    best = {
        key: _python(row.get(key))  # a hand-made table may lack a column (seed, train_subset): None
        for key in (
            "name",
            "num_embeddings",
            "embedding_dim",
            "seed",
            "checkpoint",
            "val_mse",
            "val_psnr",
            "val_perplexity",
            "val_usage",
            "best_epoch",
            "epochs",
            "train_subset",
        )
    }
    best.update(
        {
            f"{metric}_mean": _python(means["mean"].iloc[0]),
            f"{metric}_std": _python(means["std"].iloc[0]),
            "seeds": int(means["count"].iloc[0]),
            # The typical seed-to-seed standard deviation over the configurations with several seeds.
            f"{metric}_seed_std": _python(means["std"].mean()) if (means["count"] > 1).any() else None,
        }
    )
    if len(means) > 1:
        runner_k, runner_d = means.index[1]
        best["runner_up"] = paths.vqvae_run_name(int(runner_k), int(runner_d))
        best[f"{metric}_margin"] = _python(means["mean"].iloc[1] - means["mean"].iloc[0])
    return best


def describe_choice(best: dict, metric: str = SELECTION_METRIC) -> str:
    """One sentence on the choice: the winner, its margin to the runner-up, and whether that exceeds seed noise."""
    text = f"{best['name']} has the lowest "
    text += f"mean validation MSE over {best['seeds']} seeds" if best.get("seeds", 1) > 1 else "validation MSE"
    text += f" ({best.get(f'{metric}_mean', best[metric]):.5f})"
    margin = best.get(f"{metric}_margin")
    if margin is None:
        return text + "; it is the only configuration that succeeded."
    text += f", {margin:.5f} below the runner-up {best['runner_up']}"
    spread = best.get(f"{metric}_seed_std")
    if spread is None:
        return text + "; with one seed per configuration the seed-to-seed spread is not measured (run --seeds 0,1,2)."
    verdict = "larger than" if margin > spread else "within"
    return text + f"; that margin is {verdict} the typical seed-to-seed standard deviation ({spread:.5f})."


def _python(value: Any) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def write_best(
    frame: pd.DataFrame,
    folder: Optional[str | os.PathLike] = None,
    *,
    test_metrics: bool = True,
    device: str = "auto",
    data=None,
) -> dict:
    """Choose the best configuration on validation MSE, measure it on the test split, write best.json.

    Only the chosen model ever sees the test split, after the choice.
    """
    best = find_best_model_params(frame)
    best.update(selected_on=SELECTION_METRIC, candidates=int((frame["status"] == "success").sum()))
    if test_metrics:
        from .checkpoints import load_vqvae
        from .data import load_fashion_mnist
        from .device import resolve_device
        from .train import evaluate_vqvae

        data = data or load_fashion_mnist()
        model, _ = load_vqvae(
            best["checkpoint"],
            device=resolve_device(device),
            expect={"num_embeddings": best["num_embeddings"], "embedding_dim": best["embedding_dim"]},
        )
        test = evaluate_vqvae(model, data.test_images, data.test_labels)
        best.update(
            test_mse=test["mse"],
            test_psnr=test["psnr"],  # 10 log10(1 / mean MSE over the split)
            test_psnr_mean_per_image=test["psnr_mean_per_image"],
            test_perplexity=test["perplexity"],
            test_usage=test["codebook_usage"],
            test_per_class_mse=test["per_class_mse"],
        )
    write_json(Path(folder or grid_dir()) / BEST_FILE, best)
    return best
