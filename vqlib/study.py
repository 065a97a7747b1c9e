"""The whole study: named profiles and `vqlib run` (grid, notebooks 02-04 and 06, reports).

A profile is a dict of overrides per stage (vqvae, train, grid, summary,
classifier, analysis, prior); `run_study` runs the grid with it, then notebook 02
(summary and choice), 03 (classifier), 04 (analysis) and 06 (the prior over the
code: bits and samples) on the chosen VQ-VAE, and exports every executed
notebook to HTML.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import pandas as pd

from . import paths
from .checkpoints import read_best
from .config import AnalysisConfig, GridConfig, SummaryConfig, TrainConfig, VQVAEConfig, from_dict
from .errors import ConfigError
from .grid import grid_dir, run_grid
from .notebooks import (
    ANALYSIS_NOTEBOOK,
    CLASSIFIER_NOTEBOOK,
    PRIOR_NOTEBOOK,
    SUMMARY_NOTEBOOK,
    NotebookError,
    execute_notebook,
    notebook_parameter_names,
    plain_parameters,
)
from .profiles import PROFILE_STAGES, PROFILES, get_profile  # noqa: F401 (the study's names)
from .reports import write_reports


def classifier_parameters(notebook: str | os.PathLike, overrides: dict[str, Any]) -> dict[str, Any]:
    """Parameters for notebook 03: the profile's overrides, each checked against the notebook's parameters cell.

    The names of that cell are the fields of ClassifierConfig and
    LabelEfficiencyConfig; an override the notebook does not take is an error,
    not a silently ignored setting.
    """
    from .config import ClassifierConfig, ClassifierStudyConfig, LabelEfficiencyConfig

    # The dataclasses are the contract; papermill's reading of the cell is added in
    # case the notebook takes more (it skips lines whose comment holds an '=').
    names = {
        f.name
        for cls in (ClassifierConfig, LabelEfficiencyConfig, ClassifierStudyConfig)
        for f in dataclasses.fields(cls)
    }
    names |= set(notebook_parameter_names(notebook))
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ConfigError(
            f"the profile sets {', '.join(unknown)}, which {Path(notebook).name} does not take "
            f"(its parameters: {', '.join(sorted(names))})"
        )
    return plain_parameters(overrides)


def prior_parameters(notebook: str | os.PathLike, overrides: dict[str, Any]) -> dict[str, Any]:
    """Parameters for notebook 06: the profile's overrides, each checked against PriorConfig, GenerationConfig and
    the notebook's parameters cell (an override it does not take is an error, not an ignored setting)."""
    from .config import GenerationConfig, PriorConfig

    names = {f.name for cls in (PriorConfig, GenerationConfig) for f in dataclasses.fields(cls)}
    names |= set(notebook_parameter_names(notebook))
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ConfigError(
            f"the profile sets {', '.join(unknown)}, which {Path(notebook).name} does not take "
            f"(its parameters: {', '.join(sorted(names))})"
        )
    # Every value checked before the grid's hours, as the dataclasses check them.
    PriorConfig(**{k: v for k, v in overrides.items() if k in {f.name for f in dataclasses.fields(PriorConfig)}})
    GenerationConfig(
        **{k: v for k, v in overrides.items() if k in {f.name for f in dataclasses.fields(GenerationConfig)}}
    )
    return plain_parameters(overrides)


# ----------------------------------------------------------------------------- the whole study


@dataclass
class StudyResult:
    index: Path
    grid: pd.DataFrame
    failures: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


def finished_notebook(notebook: Path, output: Path, parameters: dict[str, Any], inputs: list[Path]) -> bool:
    """Whether `output` is an executed copy of `notebook` that ran to its end without an error, with
    these parameters, after the notebook and every file in `inputs` (the VQ-VAE it reads) last changed.

    Such a stage is reused by `run_study`, as a finished grid point is: the full profile's
    classifier stage is an hour of CPU, and a study that spans sessions must not pay it twice.
    """
    import json

    import nbformat

    if not output.is_file():
        return False
    try:
        meta = nbformat.read(output, as_version=4).metadata.get("papermill", {})
    except (OSError, ValueError):  # unreadable, not JSON (nbformat's NotJSONError is a ValueError), or invalid
        return False
    if meta.get("exception") or not meta.get("end_time"):
        return False
    # Compared as JSON, the form papermill stores them in (tuples become lists, and so on).
    if json.loads(json.dumps(meta.get("parameters"))) != json.loads(json.dumps(plain_parameters(parameters))):
        return False
    changed = [p.stat().st_mtime for p in (notebook, *inputs) if p.exists()]
    return output.stat().st_mtime > max(changed, default=0.0)


def run_study(
    profile: str | dict = "quick",
    *,
    with_code: bool = False,
    grid_overrides: Optional[dict[str, Any]] = None,
    progress: bool = True,
    classifier: bool = True,
    prior: bool = True,
) -> StudyResult:
    """The grid, notebooks 02, 03, 04 and 06, then HTML reports; returns where index.html is.

    Like the grid's finished points, a notebook 03, 04 or 06 that already ran to its end on the
    chosen VQ-VAE with the same parameters is reused (`finished_notebook`); notebook 02 always
    runs again (seconds), since the grid may have changed.

    A failed notebook after the grid is recorded and reported (its executed
    copy shows the error); the stages that need its output are skipped.
    `classifier=False` leaves notebook 03 out (its own tests run it), `prior=False` notebook 06.
    """
    prof = get_profile(profile)
    # The grid's options given on the command line (executor, placement, seeds) override the profile's.
    grid_config = from_dict(GridConfig, {**prof["grid"], **(grid_overrides or {})})
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
    prior_nb = notebooks / PRIOR_NOTEBOOK
    prior_params = prior_parameters(prior_nb, prof["prior"]) if prior and prior_nb.is_file() else None
    prior_folder = Path(prof["prior"].get("results_dir") or paths.prior_dir())

    def say(text: str) -> None:
        if progress:
            print(text, flush=True)

    result = StudyResult(index=paths.reports_dir() / "index.html", grid=pd.DataFrame())
    started = time.perf_counter()
    result.grid = run_grid(grid_config, model_config, train_config, progress=progress)
    result.seconds["grid"] = time.perf_counter() - started
    failed = result.grid[result.grid["status"] != "success"]
    for row in failed.itertuples():
        result.failures.append(f"grid configuration {row.name}: {row.error}")

    def stage(key: str, notebook: Path, output: Path, parameters: dict, inputs: Optional[list[Path]] = None) -> bool:
        if inputs is not None and finished_notebook(notebook, output, parameters, inputs):
            say(
                f"{notebook.name}: reused {paths.shown(output)} (finished with these parameters; delete it to run again)"
            )
            result.seconds[key] = 0.0
            return True
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
        result.failures.append("every grid configuration failed, so notebooks 02, 03, 04 and 06 were not run")
    if have_best:
        best = read_best(grid_dir(grid_config))
        # Notebooks 03 and 04 read only the chosen VQ-VAE: a finished run on the same one is reused.
        chosen = [Path(best["checkpoint"])]
        if classifier_params is not None:
            stage(
                "classifier",
                classifier_nb,
                paths.classifier_dir() / CLASSIFIER_NOTEBOOK,
                {**classifier_params, "vqvae_checkpoint": best["checkpoint"]},
                chosen,
            )
        elif classifier:
            result.failures.append(f"{classifier_nb} does not exist, so the classifier was not run")
        stage(
            "analysis",
            notebooks / ANALYSIS_NOTEBOOK,
            (Path(analysis_config.results_dir or paths.analysis_dir())) / ANALYSIS_NOTEBOOK,
            {**dataclasses.asdict(analysis_config), "vqvae_checkpoint": best["checkpoint"]},
            chosen,
        )
        if prior_params is not None:
            stage(
                "prior",
                prior_nb,
                prior_folder / PRIOR_NOTEBOOK,
                {**prior_params, "vqvae_checkpoint": best["checkpoint"]},
                chosen,
            )
        elif prior:
            result.failures.append(f"{prior_nb} does not exist, so the prior was not measured")
    t0 = time.perf_counter()
    result.index = write_reports(
        with_code=with_code,
        grid_folder=grid_dir(grid_config),
        analysis_folder=(Path(analysis_config.results_dir or paths.analysis_dir())),
        prior_folder=prior_folder,
        failures=result.failures,
        profile_description=prof["description"],
    )
    result.seconds["reports"] = time.perf_counter() - t0
    result.seconds["total"] = time.perf_counter() - started
    return result
