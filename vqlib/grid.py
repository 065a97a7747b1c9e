"""The papermill grid, the whole study and its HTML reports.

`run_grid` executes notebooks/01_train_vqvae.ipynb once per (K, D) with
papermill; each executed notebook lands in its run folder
``results/grid/K{K}_D{D}/`` beside the metrics JSON the notebook writes. A
configuration whose metrics record success for the very same parameters is
reused; one that fails (a cell error, a cell timeout, a dead kernel) is
recorded with its error and the others still run. `run_study` runs the grid,
then notebooks 02, 03 and 04, and exports every executed notebook to HTML
with an index page (`write_reports`).

Papermill always gets the project's kernel by name (`KERNEL_NAME`, registered
inside the virtual environment by the Makefile), an explicit working folder,
and plain parameter values only.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import html
import math
import multiprocessing
import os
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import pandas as pd

from . import paths
from .checkpoints import BEST_FILE, read_best
from .config import (
    AnalysisConfig,
    GridConfig,
    SummaryConfig,
    TrainConfig,
    VQVAEConfig,
    changed_fields,
    from_dict,
    split_fields,
    with_defaults,
)
from .errors import CheckpointError, ConfigError, OutputError, TrainingError, VqlibError
from .files import atomic_path, ensure_dir, read_json, write_csv, write_json

# The Jupyter kernel papermill runs every notebook in: `python -m ipykernel install
# --sys-prefix --name vqlib` inside the project's virtual environment (the Makefile does it).
KERNEL_NAME = "vqlib"
TRAIN_NOTEBOOK = "01_train_vqvae.ipynb"
SUMMARY_NOTEBOOK = "02_grid_summary.ipynb"
CLASSIFIER_NOTEBOOK = "03_classifier.ipynb"
ANALYSIS_NOTEBOOK = "04_latent_analysis.ipynb"
METRICS_FILE = "metrics.json"  # written by notebook 01: the run's result
RUN_FILE = "run.json"  # written by the grid: status, error and wall time of the execution
SUMMARY_FILE = "summary.csv"
# Selection happens on validation MSE (the seed's find_best_model_params); the test
# split is measured for the chosen configuration only.
SELECTION_METRIC = "val_mse"


class NotebookError(VqlibError):
    """A notebook could not be executed to its end."""


# ----------------------------------------------------------------------------- folders


def grid_dir(config: Optional[GridConfig] = None) -> Path:
    return Path(config.grid_dir) if config and config.grid_dir else paths.grid_dir()


def checkpoint_root(config: Optional[GridConfig] = None) -> Path:
    return Path(config.checkpoint_root) if config and config.checkpoint_root else paths.checkpoints_dir() / "grid"


def reports_dir() -> Path:
    return paths.results_dir() / "reports"


def analysis_dir(config: Optional[AnalysisConfig] = None) -> Path:
    return Path(config.results_dir) if config and config.results_dir else paths.results_dir() / "analysis"


def classifier_dir() -> Path:
    return paths.results_dir() / "classifier"


# ----------------------------------------------------------------------------- what notebook 01 records


def vqvae_results_dir(model_config: VQVAEConfig, train_config: TrainConfig) -> Path:
    """Where notebook 01 writes its metrics and figures."""
    from .train import default_results_dir

    return Path(train_config.results_dir) if train_config.results_dir else default_results_dir(model_config)


def configs_from_parameters(values: dict[str, Any]) -> tuple[VQVAEConfig, TrainConfig]:
    """The two configs of notebook 01 from its parameters (any extra names are ignored)."""
    return (
        from_dict(VQVAEConfig, split_fields(VQVAEConfig, values)),
        from_dict(TrainConfig, split_fields(TrainConfig, values)),
    )


def record_vqvae_run(run, results_dir: str | os.PathLike) -> dict:
    """Write the metrics JSON of one trained VQ-VAE (`train.VQVAERun`); return it.

    The validation numbers are those of the best epoch, the one best.pt holds.
    ``status: success`` is what makes the grid count the run as complete.
    """
    best = min(run.history, key=lambda row: row["val_mse"])
    metrics = {
        "status": "success",
        "name": paths.vqvae_run_name(
            run.model_config.num_embeddings, run.model_config.embedding_dim, run.train_config.seed
        ),
        "num_embeddings": run.model_config.num_embeddings,
        "embedding_dim": run.model_config.embedding_dim,
        "seed": run.train_config.seed,
        "best_epoch": best["epoch"],
        "val_mse": best["val_mse"],
        "val_psnr": best["val_psnr"],
        "val_perplexity": best["val_perplexity"],
        "val_usage": best["val_usage"],
        "train_seconds": float(sum(row["epoch_seconds"] for row in run.history)),
        "images_per_s": float(np.mean([row["images_per_s"] for row in run.history])),
        # Soak figures of the whole run, resumed parts included: the largest resident memory
        # of any epoch, and every code version that trained an epoch (older histories lack them).
        "peak_rss_mb": max((row.get("peak_rss_mb", math.nan) for row in run.history), default=math.nan),
        "code": sorted({row["code"] for row in run.history if "code" in row}),
        "checkpoint": str(run.best_checkpoint.resolve()),
        "model_config": dataclasses.asdict(run.model_config),
        "train_config": dataclasses.asdict(run.train_config),
        "history": run.history,
        "finished": _now(),
    }
    write_json(Path(results_dir) / METRICS_FILE, metrics)
    return metrics


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ----------------------------------------------------------------------------- executing one notebook


def plain_parameters(values: dict[str, Any]) -> dict[str, Any]:
    """Parameters papermill can write as literals: numpy numbers cast, paths as str, tuples as lists."""

    def plain(name: str, value: Any) -> Any:
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        if isinstance(value, (list, tuple)):
            return [plain(name, v) for v in value]
        if isinstance(value, dict):
            return {str(k): plain(name, v) for k, v in value.items()}
        raise ConfigError(
            f"notebook parameter {name} is a {type(value).__name__}; only numbers, strings, "
            "lists, dicts and None can be passed to a notebook"
        )

    return {name: plain(name, value) for name, value in values.items()}


def check_kernel(kernel_name: str = KERNEL_NAME) -> None:
    """Fail early, in one sentence, when the project's kernel is not installed."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        KernelSpecManager().get_kernel_spec(kernel_name)
    except NoSuchKernel:
        raise NotebookError(
            f"the Jupyter kernel {kernel_name!r} is not installed; run `make run` (it registers it) or "
            f"`.venv/bin/python -m ipykernel install --sys-prefix --name {kernel_name}`"
        ) from None


@contextlib.contextmanager
def _kernel_environment(threads: Optional[int] = None) -> Iterator[None]:
    """The environment the kernel papermill starts inherits from this process: quiet, and `threads` threads.

    Progress bars inside an executed notebook end up as pages of text in the
    HTML reports; tqdm >= 4.66 reads TQDM_DISABLE when a bar is created. Torch
    reads OMP_NUM_THREADS when the kernel imports it, so this is how a grid
    point gets its share of the cores.
    """
    values = {"TQDM_DISABLE": "1"}
    if threads:
        values |= {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def notebook_parameter_names(notebook: str | os.PathLike) -> list[str]:
    """Names in the cell tagged `parameters` (papermill's own reading of it)."""
    import papermill

    return list(papermill.inspect_notebook(str(notebook)))


def execute_notebook(
    notebook: str | os.PathLike,
    output: str | os.PathLike,
    parameters: dict[str, Any],
    *,
    cwd: Optional[str | os.PathLike] = None,
    cell_timeout: Optional[int] = None,
    threads: Optional[int] = None,
) -> Path:
    """Execute `notebook` with papermill into `output`; raise `NotebookError` with one sentence on failure.

    The notebook is written next to `output` under a temporary name and moved
    into place when execution ends, successful or not: a failed notebook is
    kept, because its last cell shows the error.
    """
    import papermill
    from nbclient.exceptions import CellTimeoutError, DeadKernelError
    from papermill.exceptions import PapermillException, PapermillExecutionError

    notebook, output = Path(notebook), Path(output)
    if not notebook.is_file():
        raise NotebookError(f"no notebook at {notebook}")
    ensure_dir(output.parent)
    partial = output.with_name(f".{output.stem}.running.ipynb")
    error: Optional[str] = None
    try:
        with _kernel_environment(threads):
            papermill.execute_notebook(
                str(notebook),
                str(partial),
                parameters=plain_parameters(parameters),
                kernel_name=KERNEL_NAME,
                cwd=str(cwd or notebook.parent),
                progress_bar=False,
                log_output=False,
                execution_timeout=cell_timeout,
                # the kernel's start-up warnings (TCP without encryption on
                # loopback) would print once per grid point in the terminal
                extra_arguments=["--IPKernelApp.log_level=ERROR"],
            )
    except PapermillExecutionError as exc:
        error = f"cell {exc.exec_count} raised {exc.ename}: {exc.evalue}"
    except CellTimeoutError:
        error = f"a cell ran longer than the cell timeout of {cell_timeout} s"
    except DeadKernelError:
        error = "the kernel died during execution (out of memory?)"
    except PapermillException as exc:
        error = f"papermill could not run it: {exc}"
    except RuntimeError as exc:  # nbclient: the kernel did not start or respond
        error = f"the kernel failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
    if partial.is_file():
        os.replace(partial, output)
    if error is not None:
        raise NotebookError(f"{notebook.name} failed: {error} (executed notebook: {output})")
    return output


# ----------------------------------------------------------------------------- the grid


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
PLACEMENT_FIELDS = ("device", "checkpoint_dir", "results_dir", "amp", "channels_last", "compile")


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


def resume_decision(name: str, parameters: dict[str, Any]) -> tuple[bool, str]:
    """Whether an unfinished grid point continues from its last.pt, and a line saying what happens.

    An interrupted point continues where its last.pt left off. A last.pt of other
    settings (another profile, say) cannot be continued: the grid owns that folder
    and was asked for these settings, so the point is trained afresh, and says so.
    """
    from .train import read_last

    last = Path(parameters["checkpoint_dir"]) / "last.pt"
    if not last.is_file():
        return False, ""
    try:
        model_config, train_config = configs_from_parameters(parameters)
    except ConfigError:
        return False, ""  # an impossible point fails in its own notebook, where the error is recorded
    try:
        epoch = read_last(last, model_config, train_config)["epoch"]
    except CheckpointError as exc:
        return False, f"{name} starts afresh and replaces its checkpoints: {exc}"
    return True, f"{name} continues from its last.pt (epoch {epoch} of {train_config.epochs} done)"


def _execute_configuration(spec: dict) -> dict:
    """Run notebook 01 for one grid point; never raises for a failed notebook (it is recorded)."""
    folder = Path(spec["folder"])
    ensure_dir(folder)
    # A stale success from other parameters must not survive a failed rerun.
    (folder / METRICS_FILE).unlink(missing_ok=True)
    started = time.perf_counter()
    record = {
        "name": spec["name"],
        "num_embeddings": spec["parameters"]["num_embeddings"],
        "embedding_dim": spec["parameters"]["embedding_dim"],
        "seed": spec["parameters"]["seed"],
        "status": "success",
        "error": "",
        "resumed": spec["resume"],
        "threads": spec["threads"],
        "code": paths.code_version(),
        "notebook": str(folder / TRAIN_NOTEBOOK),
        "started": _now(),
    }
    try:
        execute_notebook(
            spec["notebook"],
            folder / TRAIN_NOTEBOOK,
            {**spec["parameters"], "resume": spec["resume"]},
            cwd=spec["cwd"],
            cell_timeout=spec["cell_timeout"],
            threads=spec["threads"],
        )
        if not is_complete(folder, spec["parameters"]):
            raise NotebookError(f"{TRAIN_NOTEBOOK} ended without recording success in {folder / METRICS_FILE}")
    except VqlibError as exc:
        record.update(status="failed", error=str(exc))
    except Exception as exc:  # one bad point must not end the grid (STYLE.md rule 6)
        record.update(status="failed", error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc(limit=5))
    record["seconds"] = time.perf_counter() - started
    record["finished"] = _now()
    write_json(folder / RUN_FILE, record)
    return record


def cpu_cores() -> int:
    """Cores this process may use (its affinity mask, which containers and taskset narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def choose_placement(
    points: int, jobs: Optional[int] = None, threads: Optional[int] = None, device: str = "auto"
) -> tuple[int, int]:
    """(configurations at once, torch threads each) for `points` grid points; given values are kept.

    On a CPU, one configuration per core with one thread each: these small
    convolutions scale poorly across threads, so on 2 cores two single-thread
    trainings finish 1.33x more images per second than one two-thread training
    (`make bench`, section "placement"). On CUDA, one at a time: the GPU is the
    shared resource, and the host threads only feed it.
    """
    import torch

    cores = cpu_cores()
    cuda = device != "cpu" and torch.cuda.is_available()
    if jobs is None:
        jobs = 1 if cuda else max(1, min(cores, points))
    if threads is None:
        threads = max(1, cores // jobs)
    return jobs, threads


def run_grid(
    grid: Optional[GridConfig] = None,
    model: Optional[VQVAEConfig] = None,
    train: Optional[TrainConfig] = None,
    *,
    progress: bool = True,
) -> pd.DataFrame:
    """Train every (K, D) of `grid` through notebook 01; return (and write) the summary table.

    `model` and `train` give every other setting (their K, D, seed and folders
    are replaced per point). Complete points are reused, failed ones recorded;
    `choose_placement` decides how many points run at once, each in its own
    kernel with its share of the cores.
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
    jobs, threads = choose_placement(len(points), grid.jobs, grid.threads_per_config, (train or TrainConfig()).device)
    for k, d, seed in points:
        name = paths.vqvae_run_name(k, d, seed)
        parameters = grid_parameters(k, d, model, train, grid, seed)
        if is_complete(root / name, parameters):
            reused[name] = True
            continue
        resume, note = resume_decision(name, parameters)
        if note:
            notes.append(note)
        specs.append(
            {
                "name": name,
                "folder": str(root / name),
                "notebook": str(notebook),
                "cwd": str(paths.notebooks_dir()),
                "parameters": parameters,
                "resume": resume,
                "cell_timeout": grid.cell_timeout,
                "threads": threads,
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
    bar = progress_bar(
        total=len(specs),
        desc="grid",
        unit="config",
        enabled=progress and bool(specs),
        bar_format="{desc}: {n}/{total} configs done [{elapsed} elapsed, {remaining} left] {postfix}",
    )

    def report(record: dict) -> None:
        bar.update(1)
        if record["status"] == "success":
            metrics = read_json(Path(record["notebook"]).parent / METRICS_FILE)
            bar.write(
                f"{record['name']}: done in {record['seconds']:.0f} s, validation MSE {metrics['val_mse']:.5f}, "
                f"perplexity {metrics['val_perplexity']:.1f}, codes used {metrics['val_usage']:.0%}"
            )
        else:
            bar.write(f"{record['name']}: FAILED after {record['seconds']:.0f} s: {record['error']}")
        summary()

    jobs = min(jobs, max(len(specs), 1))
    if progress and specs:
        print(f"grid: {len(specs)} to run, {jobs} at once with {threads} thread{'s' * (threads > 1)} each")
    if jobs == 1:
        for i, spec in enumerate(specs):
            bar.set_postfix_str(f"running {spec['name']} ({len(specs) - i} left)")
            report(_execute_configuration(spec))
    else:
        # spawn, not fork: the parent may hold threads (tqdm, torch) that fork would copy mid-state.
        with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [pool.submit(_execute_configuration, spec) for spec in specs]
            bar.set_postfix_str(f"{jobs} running at once")
            for future in as_completed(futures):
                report(future.result())
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
        record = _read_or_empty(run_dir / RUN_FILE)
        metrics = _read_or_empty(run_dir / METRICS_FILE)
        k, d, seed = paths.parse_vqvae_run_name(name)
        ok = metrics.get("status") == "success"
        status = "success" if ok else (record.get("status") or "missing")
        if status == "success" and not ok:
            status = "missing"  # the grid said success but the metrics are gone
        train_config = metrics.get("train_config", {})
        rows.append(
            {
                "name": name,
                "num_embeddings": k,
                "embedding_dim": d,
                "seed": seed,
                "status": status,
                "error": "" if ok else record.get("error", "no metrics.json yet"),
                "val_mse": metrics.get("val_mse", math.nan),
                "val_psnr": metrics.get("val_psnr", math.nan),
                "val_perplexity": metrics.get("val_perplexity", math.nan),
                "val_usage": metrics.get("val_usage", math.nan),
                "best_epoch": metrics.get("best_epoch", math.nan),
                "epochs": train_config.get("epochs", math.nan),
                "train_subset": train_config.get("train_subset"),
                "train_seconds": metrics.get("train_seconds", math.nan),
                "run_seconds": record.get("seconds", math.nan),
                "images_per_s": metrics.get("images_per_s", math.nan),
                "peak_rss_mb": metrics.get("peak_rss_mb", math.nan),
                "threads": record.get("threads"),
                "code": " ".join(metrics.get("code", [])),
                "checkpoint": metrics.get("checkpoint", ""),
                "notebook": record.get("notebook", str(run_dir / TRAIN_NOTEBOOK)),
                "history": metrics.get("history", []),
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
        "peak_rss_mb",
        "threads",
        "code",
        "checkpoint",
        "notebook",
        "history",
    ]
    return pd.DataFrame(rows, columns=columns)


def _read_or_empty(path: Path) -> dict:
    try:
        value = read_json(path)
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def load_losses(folder: Optional[str | os.PathLike] = None) -> dict[str, pd.DataFrame]:
    """The seed's `load_losses`: per-epoch history of every successful grid run, by run name."""
    frame = collect_grid(folder)
    return {
        row.name: pd.DataFrame(row.history) for row in frame.itertuples() if row.status == "success" and row.history
    }


def find_best_model_params(frame: pd.DataFrame, *, metric: str = SELECTION_METRIC) -> dict:
    """The seed's `find_best_model_params`: the successful run with the lowest validation MSE, as a dict."""
    done = frame[(frame["status"] == "success") & frame[metric].notna()]
    if done.empty:
        raise TrainingError(
            "no grid configuration finished successfully, so there is no best one; "
            "see the errors in results/grid/summary.csv"
        )
    row = done.loc[done[metric].idxmin()]
    return {
        key: _python(row[key])
        for key in (
            "name",
            "num_embeddings",
            "embedding_dim",
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
            test_psnr=test["psnr"],
            test_perplexity=test["perplexity"],
            test_usage=test["codebook_usage"],
            test_per_class_mse=test["per_class_mse"],
        )
    write_json(Path(folder or grid_dir()) / BEST_FILE, best)
    return best


# ----------------------------------------------------------------------------- profiles

PROFILES: dict[str, dict[str, Any]] = {
    # A CPU laptop: the whole study in <= 10 minutes on 2 cores. Each grid point sees
    # 10,000 training images twice (about 30 s with its kernel start); the code is still
    # good enough for the classifier to pass 85 % test accuracy.
    "quick": {
        "description": "reduced epochs and training subset, the full 3 x 3 grid; about 10 minutes on a 2-core CPU",
        "vqvae": {},
        "train": {"epochs": 2, "train_subset": 10_000},
        "grid": {},
        "summary": {},
        # Label efficiency without the pixel CNN (the slowest baseline) and with one seed.
        # C = 1 was never chosen on validation in a measured quick run, and costs the most iterations;
        # 0.01 was chosen in 5 of 6 fits, so the grid reaches below it.
        "classifier": {
            "label_counts": "10,100,1000",
            "num_seeds": 1,
            "methods": "vq_head,vq_linear,pixel_linear",
            "linear_max_iter": 100,
            "linear_c": "0.003,0.01,0.1",
        },
        "analysis": {"tsne_points": 2000},
    },
    # The seed's protocol: 50 epochs on all 55,000 training images. About 7-10 hours on a
    # 2-core CPU (two configurations at once, one thread each); minutes per configuration on a GPU.
    "full": {
        "description": "the seed's protocol: 50 epochs on all training data, 3 x 3 grid; hours on a CPU, a GPU job",
        "vqvae": {},
        "train": {"epochs": 50, "train_subset": None},
        "grid": {},
        "summary": {},
        "classifier": {"label_counts": "10,100,1000,all", "num_seeds": 3},
        "analysis": {"tsne_points": 10_000},
    },
}
PROFILE_STAGES = ("vqvae", "train", "grid", "summary", "classifier", "analysis")


def get_profile(profile: str | dict) -> dict[str, Any]:
    """A copy of a named profile, or a custom one (a dict of stage -> overrides) filled in with empty stages."""
    if isinstance(profile, str):
        if profile not in PROFILES:
            raise ConfigError(f"profile must be one of {', '.join(PROFILES)}, not {profile!r}")
        profile = PROFILES[profile]
    unknown = sorted(set(profile) - {*PROFILE_STAGES, "description"})
    if unknown:
        raise ConfigError(f"unknown profile stage(s): {', '.join(unknown)}; stages are {', '.join(PROFILE_STAGES)}")
    return {"description": "", **{stage: {} for stage in PROFILE_STAGES}, **copy.deepcopy(profile)}


def classifier_parameters(notebook: str | os.PathLike, overrides: dict[str, Any]) -> dict[str, Any]:
    """Parameters for notebook 03: the profile's overrides, each checked against the notebook's parameters cell.

    The names of that cell are the fields of ClassifierConfig and
    LabelEfficiencyConfig; an override the notebook does not take is an error,
    not a silently ignored setting.
    """
    from .config import ClassifierConfig, LabelEfficiencyConfig

    # The dataclasses are the contract; papermill's reading of the cell is added in
    # case the notebook takes more (it skips lines whose comment holds an '=').
    names = {f.name for cls in (ClassifierConfig, LabelEfficiencyConfig) for f in dataclasses.fields(cls)}
    names |= set(notebook_parameter_names(notebook))
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ConfigError(
            f"the profile sets {', '.join(unknown)}, which {Path(notebook).name} does not take "
            f"(its parameters: {', '.join(sorted(names))})"
        )
    return plain_parameters(overrides)


# ----------------------------------------------------------------------------- the whole study


@dataclass
class StudyResult:
    index: Path
    grid: pd.DataFrame
    failures: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


def run_study(
    profile: str | dict = "quick",
    *,
    with_code: bool = False,
    jobs: Optional[int] = None,
    progress: bool = True,
    classifier: bool = True,
) -> StudyResult:
    """The grid, notebooks 02, 03 and 04, then HTML reports; returns where index.html is.

    A failed notebook after the grid is recorded and reported (its executed
    copy shows the error); the stages that need its output are skipped.
    `classifier=False` leaves notebook 03 out (its own tests run it).
    """
    prof = get_profile(profile)
    grid_config = from_dict(GridConfig, {**prof["grid"], **({"jobs": jobs} if jobs else {})})
    model_config = from_dict(VQVAEConfig, prof["vqvae"])
    train_config = from_dict(TrainConfig, prof["train"])
    summary_config = from_dict(SummaryConfig, {"grid_dir": str(grid_dir(grid_config)), **prof["summary"]})
    analysis_config = from_dict(AnalysisConfig, prof["analysis"])
    notebooks = paths.notebooks_dir()
    classifier_nb = notebooks / CLASSIFIER_NOTEBOOK
    # Check the classifier's settings before an hour of grid, not after.
    classifier_params = (
        classifier_parameters(classifier_nb, prof["classifier"]) if classifier and classifier_nb.is_file() else None
    )

    def say(text: str) -> None:
        if progress:
            print(text, flush=True)

    result = StudyResult(index=reports_dir() / "index.html", grid=pd.DataFrame())
    started = time.perf_counter()
    result.grid = run_grid(grid_config, model_config, train_config, progress=progress)
    result.seconds["grid"] = time.perf_counter() - started
    failed = result.grid[result.grid["status"] != "success"]
    for row in failed.itertuples():
        result.failures.append(f"grid configuration {row.name}: {row.error}")

    def stage(key: str, notebook: Path, output: Path, parameters: dict) -> bool:
        say(f"running {notebook.name} -> {output}")
        t0 = time.perf_counter()
        try:
            execute_notebook(notebook, output, parameters, cwd=notebooks)
            return True
        except NotebookError as exc:
            result.failures.append(str(exc))
            say(f"  failed: {exc}")
            return False
        finally:
            result.seconds[key] = time.perf_counter() - t0
            say(f"  {notebook.name}: {result.seconds[key]:.0f} s")

    have_best = False
    if (result.grid["status"] == "success").any():
        have_best = stage(
            "summary",
            notebooks / SUMMARY_NOTEBOOK,
            grid_dir(grid_config) / SUMMARY_NOTEBOOK,
            dataclasses.asdict(summary_config),
        )
    else:
        result.failures.append("every grid configuration failed, so notebooks 02, 03 and 04 were not run")
    if have_best:
        best = read_best(grid_dir(grid_config))
        if classifier_params is not None:
            stage(
                "classifier",
                classifier_nb,
                classifier_dir() / CLASSIFIER_NOTEBOOK,
                {**classifier_params, "vqvae_checkpoint": best["checkpoint"]},
            )
        elif classifier:
            result.failures.append(f"{classifier_nb} does not exist, so the classifier was not run")
        stage(
            "analysis",
            notebooks / ANALYSIS_NOTEBOOK,
            analysis_dir(analysis_config) / ANALYSIS_NOTEBOOK,
            {**dataclasses.asdict(analysis_config), "vqvae_checkpoint": best["checkpoint"]},
        )
    t0 = time.perf_counter()
    result.index = write_reports(
        with_code=with_code,
        grid_folder=grid_dir(grid_config),
        analysis_folder=analysis_dir(analysis_config),
        failures=result.failures,
        profile_description=prof["description"],
    )
    result.seconds["reports"] = time.perf_counter() - t0
    result.seconds["total"] = time.perf_counter() - started
    return result


# ----------------------------------------------------------------------------- HTML reports


def export_html(notebook: str | os.PathLike, output: str | os.PathLike, *, with_code: bool = False) -> Path:
    """`jupyter nbconvert --to html --no-input` (code kept with `with_code`), written atomically.

    Figures are inline PNG outputs of the executed notebook, so nbconvert embeds
    them as data URIs: the HTML file stands alone.
    """
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(exclude_input=not with_code, exclude_input_prompt=not with_code, exclude_output_prompt=True)
    body, _ = exporter.from_filename(str(notebook))
    with atomic_path(output) as tmp:
        tmp.write_text(body, encoding="utf-8")
    return Path(output)


def executed_notebooks(
    grid_folder: Optional[Path] = None, analysis_folder: Optional[Path] = None
) -> list[tuple[str, Path, str]]:
    """(report name, executed notebook, title) of every executed notebook of the study that exists, in reading order."""
    grid_folder = Path(grid_folder or grid_dir())
    analysis_folder = Path(analysis_folder or analysis_dir())
    found = []
    summary = grid_folder / SUMMARY_NOTEBOOK
    if summary.is_file():
        found.append(("02_grid_summary", summary, "Grid summary: all VQ-VAE configurations, the best one"))
    classifier = classifier_dir() / CLASSIFIER_NOTEBOOK
    if classifier.is_file():
        found.append(("03_classifier", classifier, "Classifier on the frozen discrete code"))
    analysis = analysis_folder / ANALYSIS_NOTEBOOK
    if analysis.is_file():
        found.append(
            ("04_latent_analysis", analysis, "Latent space: t-SNE, codebook usage, reconstructions, interpolation")
        )
    for run in collect_grid(grid_folder).itertuples():
        path = grid_folder / run.name / TRAIN_NOTEBOOK
        if path.is_file():
            found.append(
                (
                    f"01_train_vqvae_{run.name}",
                    path,
                    f"VQ-VAE training, K={run.num_embeddings}, D={run.embedding_dim} ({run.status})",
                )
            )
    return found


def classifier_headline(vqvae_checkpoint: Optional[str] = None) -> dict:
    """The classifier's test accuracy as notebook 03 recorded it in results/classifier/*/metrics.json.

    The newest record on `vqvae_checkpoint` (the chosen VQ-VAE) wins, so a
    classifier left over from an earlier grid is not reported as this one.
    """
    candidates = []
    for path in classifier_dir().glob("*/metrics.json"):
        value = _read_or_empty(path)
        if not isinstance(value.get("test_accuracy"), (int, float)):
            continue
        if vqvae_checkpoint and value.get("vqvae_checkpoint") not in (None, vqvae_checkpoint):
            continue
        candidates.append((path.stat().st_mtime, path, value))
    if not candidates:
        return {}
    _, path, value = max(candidates, key=lambda c: c[0])
    labels = (value.get("config") or {}).get("labels_per_class")
    return {
        "test_accuracy": value["test_accuracy"],
        "source": path,
        "labels": "all labels" if labels is None else f"{labels} labels per class",
    }


def write_reports(
    *,
    with_code: bool = False,
    grid_folder: Optional[Path] = None,
    analysis_folder: Optional[Path] = None,
    failures: Optional[list[str]] = None,
    profile_description: str = "",
) -> Path:
    """Export every executed notebook to results/reports/*.html and write index.html; return its path."""
    grid_folder = Path(grid_folder or grid_dir())
    executed = executed_notebooks(grid_folder, analysis_folder)
    if not executed:
        raise OutputError(f"no executed notebooks found under {paths.results_dir()}; run `vqlib run` first")
    out = ensure_dir(reports_dir())
    reports = [
        (export_html(notebook, out / f"{name}.html", with_code=with_code), title) for name, notebook, title in executed
    ]
    best = _read_or_empty(grid_folder / BEST_FILE)
    grid = collect_grid(grid_folder)
    index = out / "index.html"
    with atomic_path(index) as tmp:
        tmp.write_text(
            _index_html(
                reports, best, classifier_headline(best.get("checkpoint")), grid, failures or [], profile_description
            ),
            encoding="utf-8",
        )
    return index


def _fmt(value: Any, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return format(value, spec)


def _index_html(
    reports: list[tuple[Path, str]],
    best: dict,
    classifier: dict,
    grid: pd.DataFrame,
    failures: list[str],
    description: str,
) -> str:
    esc = html.escape
    headline = [
        (
            "Best configuration (lowest validation MSE)",
            f"K={best['num_embeddings']}, D={best['embedding_dim']}" if best else "–",
        ),
        ("Its validation MSE", _fmt(best.get("val_mse"), ".5f")),
        ("Its test MSE", _fmt(best.get("test_mse"), ".5f")),
        (
            "Its test perplexity",
            _fmt(best.get("test_perplexity"), ".1f")
            + (f" of {best['num_embeddings']} codes" if best.get("test_perplexity") is not None else ""),
        ),
        ("Its test codebook usage", _fmt(best.get("test_usage"), ".0%")),
        (
            "Classifier test accuracy (frozen code" + (f", {classifier['labels']})" if classifier else ")"),
            _fmt(classifier.get("test_accuracy"), ".2%"),
        ),
    ]
    rows = "\n".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in headline)
    links = "\n".join(f'<li><a href="{esc(path.name)}">{esc(title)}</a></li>' for path, title in reports)
    columns = {
        "name": "run",
        "status": "status",
        "val_mse": "val. MSE",
        "val_perplexity": "val. perplexity",
        "val_usage": "codes used",
        "epochs": "epochs",
        "train_subset": "train images",
        "run_seconds": "seconds",
    }
    table = (
        grid[list(columns)].assign(val_usage=grid["val_usage"].map(lambda v: _fmt(v, ".0%"))).rename(columns=columns)
    )
    grid_html = table.to_html(index=False, float_format=lambda v: f"{v:.4g}", na_rep="–", border=0, classes="grid")
    problems = ("<h2>Problems</h2><ul>" + "".join(f"<li>{esc(f)}</li>" for f in failures) + "</ul>") if failures else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>vqlib study</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; padding: 0 1rem; color: #222; }}
table {{ border-collapse: collapse; margin: 1rem 0; }}
th, td {{ border-bottom: 1px solid #ddd; padding: .35rem .8rem; text-align: left; }}
table.grid td, table.grid th {{ font-size: .85rem; text-align: right; }}
.muted {{ color: #666; font-size: .9rem; }}
</style></head><body>
<h1>VQ-VAE on FashionMNIST, and a classifier on its discrete code</h1>
<p class="muted">Profile: {esc(description)}. Generated {esc(_now())}.</p>
<h2>Headline</h2>
<table class="headline">
{rows}
</table>
<h2>Reports</h2>
<ul>
{links}
</ul>
<h2>Grid</h2>
{grid_html}
{problems}
</body></html>
"""
