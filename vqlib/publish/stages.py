"""The stages after the grid, each published only when all its outputs exist: the grid summary, the chosen
classifier, the analysis, notebook 06's measures of the prior, the reports, and the codec's comparison."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Optional

from .. import paths
from ..checkpoints import BEST_FILE, PRETRAINED_PREFIX
from ..errors import CheckpointError
from ..files import read_json, read_json_or_empty
from ..notebooks import (
    ANALYSIS_FIGURES,
    ANALYSIS_FILE,
    GENERATION_FILE,
    PRIOR_FIGURES,
    SUMMARY_FIGURES,
)
from ..train import METRICS_FILE
from .common import (
    CHECKPOINT_FILES,
    CLASSIFIER_RESULT_FILES,
    StageResult,
    _missing,
    _Writer,
    portable,
    published_analysis_dir,
    published_classifier_dir,
    published_grid_dir,
    published_reports_dir,
    run_renames,
)
from .runs import finished_runs


def publish_stages(
    grid_folder: str | os.PathLike, checkpoint_root: Optional[str | os.PathLike] = None
) -> list[StageResult]:
    """Publish the grid summary's figures, the chosen classifier, the analysis, notebook 06's measures of the
    prior and the reports, each only when the grid's best.json names a published run and all the stage's outputs
    exist; then the codec's rate-distortion comparison, when it measures published priors."""
    grid_folder = Path(grid_folder)
    stages = ("grid summary", "classifier", "analysis", "prior", "reports")
    best = read_json_or_empty(grid_folder / BEST_FILE)
    name, checkpoint = best.get("name"), best.get("checkpoint")
    # The codec's comparison reads published models only, whatever the grid chose.
    if not isinstance(name, str) or not isinstance(checkpoint, str):
        why = f"the grid has no best configuration yet (no {paths.shown(grid_folder / BEST_FILE)}: notebook 02 runs after the grid)"
        return [*(StageResult(stage, False, why) for stage in stages), _publish_codec()]
    if name not in finished_runs(published_grid_dir()):
        why = f"the grid's best configuration, {name}, is not a published run"
        return [*(StageResult(stage, False, why) for stage in stages), _publish_codec()]
    done = [
        _publish_summary(grid_folder),
        _publish_classifier(name, checkpoint),
        _publish_analysis(name, checkpoint),
        _publish_prior_measures(name, checkpoint),
    ]
    reports = _publish_reports(grid_folder, done, Path(checkpoint_root) if checkpoint_root else None)
    return [*done, reports, _publish_codec()]


def _publish_summary(grid_folder: Path) -> StageResult:
    stage = "grid summary"
    missing = _missing([grid_folder / f for f in SUMMARY_FIGURES])
    if missing:
        return StageResult(stage, False, f"{missing} (notebook 02 writes them)")
    writer = _Writer()
    for file in SUMMARY_FIGURES:
        writer.copy(grid_folder / file, published_grid_dir() / file)
    return StageResult(stage, True, writer.note(f"{', '.join(SUMMARY_FIGURES)} in {paths.shown(published_grid_dir())}"))


def _publish_classifier(vqvae_name: str, vqvae_checkpoint: str) -> StageResult:
    """The classifier notebook 03 recorded on the best VQ-VAE: its checkpoint (as ``pretrained:RUN``,
    paired with ``pretrained:<vqvae_name>``), then its results, metrics.json last."""
    from ..checkpoints import load_checkpoint
    from ..classify import load_classifier
    from ..label_efficiency import RUNS_FILE
    from ..reports import classifier_record

    stage = "classifier"
    found = classifier_record(vqvae_checkpoint)
    if found is None:
        return StageResult(
            stage,
            False,
            f"no classifier record on {vqvae_name} in {paths.shown(paths.classifier_dir())} (notebook 03 writes it)",
        )
    record_path, record = found
    source = record_path.parent
    checkpoint = Path(str(record.get("classifier_checkpoint") or ""))
    run = checkpoint.parent.name
    missing = _missing(
        [checkpoint.parent / f for f in CHECKPOINT_FILES] + [source / f for f in CLASSIFIER_RESULT_FILES]
    )
    if missing:
        return StageResult(stage, False, missing)
    if paths.parse_vqvae_run_name(run):
        return StageResult(stage, False, f"its checkpoint folder, {run}, is named like a VQ-VAE run")
    vqvae_published = PRETRAINED_PREFIX + vqvae_name
    try:
        # Published, the classifier must read the code of the published VQ-VAE, weight for weight.
        load_classifier(checkpoint, vqvae_checkpoint=vqvae_published)
        ckpt = load_checkpoint(checkpoint, kind="classifier")
    except CheckpointError as exc:
        return StageResult(stage, False, str(exc))
    renames = {vqvae_checkpoint: vqvae_published, str(checkpoint): PRETRAINED_PREFIX + run}
    target_checkpoints, target_results = paths.pretrained_dir() / run, published_classifier_dir() / run
    writer = _Writer()
    # A published checkpoint names its VQ-VAE as published and no folder of this machine: eval-cls
    # writes into results/classifier/RUN of whoever runs it, infer-cls finds pretrained:NAME.
    payload = portable({k: v for k, v in ckpt.items() if k not in ("kind", "format_version", "state_dict")}, renames)
    # load_classifier has just checked that its VQ-VAE is the published one, whatever path it recorded.
    placement = {"vqvae_checkpoint": vqvae_published, "checkpoint_dir": None, "results_dir": None}
    payload.update(
        vqvae_checkpoint=vqvae_published,
        results_dir=None,
        model_config={**payload["model_config"], **placement},
        state_dict=ckpt["state_dict"],
    )
    writer.checkpoint(target_checkpoints / "best.pt", "classifier", payload)
    config = portable(read_json(checkpoint.parent / "config.json"), renames)
    config["vqvae_checkpoint"] = vqvae_published
    if isinstance(config.get("classifier"), dict):
        config["classifier"] = {**config["classifier"], **placement}
    writer.json(target_checkpoints / "config.json", config)
    writer.copy(checkpoint.parent / "history.json", target_checkpoints / "history.json")
    for file in CLASSIFIER_RESULT_FILES:
        if file.endswith(".json"):
            writer.json(target_results / file, portable(read_json(source / file), renames))
        else:
            writer.copy(source / file, target_results / file)
    writer.json(target_results / METRICS_FILE, portable(record, renames))
    # Its label efficiency's finished rows: a rerun with other settings for some methods reuses the others'.
    if (source / RUNS_FILE).is_file():
        writer.text(source / RUNS_FILE, target_results / RUNS_FILE, renames)
    writer.remove_others(target_results)
    # One classifier is published: the one of the current choice.
    for other in published_classifier_dir().iterdir():
        if other.is_dir() and other.name != run:
            shutil.rmtree(other)
            if not paths.parse_vqvae_run_name(other.name):
                shutil.rmtree(paths.pretrained_dir() / other.name, ignore_errors=True)
            writer.changed += 1
    return StageResult(
        stage,
        True,
        writer.note(
            f"{run} as {PRETRAINED_PREFIX}{run} (on {vqvae_published}), its results in {paths.shown(target_results)}"
        ),
    )


def _publish_analysis(vqvae_name: str, vqvae_checkpoint: str) -> StageResult:
    stage = "analysis"
    source = paths.analysis_dir()
    missing = _missing([source / ANALYSIS_FILE] + [source / f for f in ANALYSIS_FIGURES])
    if missing:
        return StageResult(stage, False, f"{missing} (notebook 04 writes them)")
    summary = read_json_or_empty(source / ANALYSIS_FILE)
    if summary.get("checkpoint") != vqvae_checkpoint:
        return StageResult(
            stage,
            False,
            f"{paths.shown(source / ANALYSIS_FILE)} analyses {summary.get('checkpoint')}, not the grid's best, {vqvae_name} "
            "(notebook 04 runs on it in `vqlib run`)",
        )
    writer = _Writer()
    target = published_analysis_dir()
    for file in ANALYSIS_FIGURES:
        writer.copy(source / file, target / file)
    writer.json(target / ANALYSIS_FILE, portable(summary, {vqvae_checkpoint: PRETRAINED_PREFIX + vqvae_name}))
    writer.remove_others(target)
    return StageResult(
        stage, True, writer.note(f"{ANALYSIS_FILE} and {len(ANALYSIS_FIGURES)} figures in {paths.shown(target)}")
    )


def published_prior_measures_dir() -> Path:
    return paths.published_dir() / "prior"


def _publish_prior_measures(vqvae_name: str, vqvae_checkpoint: str) -> StageResult:
    """Notebook 06's record (generation.json) and figures, when they measure a prior over the grid's best VQ-VAE."""
    stage = "prior"
    source = paths.prior_dir()
    missing = _missing([source / GENERATION_FILE] + [source / f for f in PRIOR_FIGURES])
    if missing:
        return StageResult(stage, False, f"{missing} (notebook 06 writes them)")
    record = read_json_or_empty(source / GENERATION_FILE)
    published_vqvae = PRETRAINED_PREFIX + vqvae_name
    measured = str(record.get("vqvae"))
    # A prior records its VQ-VAE as pretrained:NAME or as an absolute path; the grid's choice may name the same file
    # by another spelling of its path.
    local = not measured.startswith(PRETRAINED_PREFIX) and Path(measured).resolve() == Path(vqvae_checkpoint).resolve()
    if measured != published_vqvae and not local:
        return StageResult(
            stage,
            False,
            f"{paths.shown(source / GENERATION_FILE)} measures a prior over {record.get('vqvae')}, not over the "
            f"grid's best, {vqvae_name} (notebook 06 runs on it in `vqlib run`)",
        )
    writer = _Writer()
    target = published_prior_measures_dir()
    for file in PRIOR_FIGURES:
        writer.copy(source / file, target / file)
    writer.json(
        target / GENERATION_FILE, portable(record, {vqvae_checkpoint: published_vqvae, measured: published_vqvae})
    )
    writer.remove_others(target)
    judge = _publish_judge(writer, record.get("feature_classifier"))
    return StageResult(
        stage,
        True,
        writer.note(
            f"{GENERATION_FILE} of {record.get('prior')} and {len(PRIOR_FIGURES)} figures in {paths.shown(target)}"
            f"; {judge}"
        ),
    )


def _publish_judge(writer: _Writer, summary: Any) -> str:
    """The pixel classifier whose features notebook 06's record measures in (its `feature_classifier`), beside the
    published models, so that a clone measures in the same space without training it (it is also CAS's real twin).
    Other published ones are removed; when it is not cached here, what is published stays."""
    from ..generation import cached_pixel_classifier, pixel_classifier_cache, published_pixel_classifiers

    found = cached_pixel_classifier(summary)
    if found is None:
        return f"its pixel classifier is not in {paths.shown(pixel_classifier_cache())} (what is published stays)"
    target = published_pixel_classifiers() / found.parent.name / "best.pt"
    writer.copy(found, target)
    for other in published_pixel_classifiers().glob("*/best.pt"):
        if other != target:
            shutil.rmtree(other.parent)
            writer.changed += 1
    return f"its pixel classifier in {paths.shown(target.parent)}"


def published_codec_dir() -> Path:
    return paths.published_dir() / "codec"


def _publish_codec() -> StageResult:
    """`vqlib rate-distortion`'s table and figure (results/codec/). Every prior in them is a published one
    (``pretrained:NAME``) or a file of this project whose weights are those the table records
    (`prior_weights_sha256`): such a prior is published by its path under the project and its digest, and a clone
    trains it again with the command of docs/codec.md. A prior outside the project, or changed since it was
    measured, is refused: the table would name what nobody can find."""
    import pandas as pd

    from ..codec import FIGURE_FILE, TABLE_FILE
    from ..prior import load_prior, weights_digest

    stage = "codec"
    source = paths.results_dir() / "codec"
    missing = _missing([source / TABLE_FILE, source / FIGURE_FILE])
    if missing:
        return StageResult(stage, False, f"{missing} (vqlib rate-distortion writes them)")
    frame = pd.read_csv(source / TABLE_FILE)
    priors = frame[frame["kind"] == "prior"]
    renames, local = {}, []
    recorded_digests = priors["prior_weights_sha256"] if "prior_weights_sha256" in priors else [None] * len(priors)
    root = paths.project_root().resolve()
    for name, recorded in zip(priors["source"].astype(str), recorded_digests, strict=True):
        if name.startswith(PRETRAINED_PREFIX) or name in renames:
            continue
        path = Path(name).resolve()
        if not path.is_relative_to(root):
            return StageResult(
                stage,
                False,
                f"{paths.shown(source / TABLE_FILE)} measures the prior {name}, outside this project: publish it with "
                "`vqlib publish --prior DIR` and run `vqlib rate-distortion --prior pretrained:NAME ...` again",
            )
        try:
            digest = weights_digest(load_prior(path)[0])
        except (CheckpointError, OSError) as exc:
            return StageResult(stage, False, f"the prior {name} of {paths.shown(source / TABLE_FILE)}: {exc}")
        if not isinstance(recorded, str):  # a table written before the digests were recorded, or a blank cell
            return StageResult(
                stage,
                False,
                f"{paths.shown(source / TABLE_FILE)} does not record the weights of the prior {paths.shown(path)} "
                "(it predates prior_weights_sha256); run `vqlib rate-distortion` again",
            )
        if digest != recorded:
            return StageResult(
                stage,
                False,
                f"the prior {paths.shown(path)} has other weights than {paths.shown(source / TABLE_FILE)} measured; "
                "run `vqlib rate-distortion` again",
            )
        renames[name] = path.relative_to(root).as_posix()
        local.append(renames[name])
    writer = _Writer()
    target = published_codec_dir()
    writer.text(source / TABLE_FILE, target / TABLE_FILE, renames)  # as written, the priors' paths made relative
    writer.copy(source / FIGURE_FILE, target / FIGURE_FILE)
    writer.remove_others(target)
    unpublished = f"; {len(local)} prior(s) by their files, not published ({', '.join(local)})" if local else ""
    return StageResult(
        stage, True, writer.note(f"{TABLE_FILE} and {FIGURE_FILE} in {paths.shown(target)}{unpublished}")
    )


def _publish_reports(
    grid_folder: Path, earlier: list[StageResult], checkpoint_root: Optional[Path] = None
) -> StageResult:
    from ..reports import executed_notebooks

    stage = "reports"
    waiting = [r.stage for r in earlier if not r.published]
    if waiting:
        return StageResult(
            stage, False, f"they describe the whole study, and the {' and '.join(waiting)} stage is not published"
        )
    source = paths.reports_dir()
    reports = [(source / f"{name}.html", notebook) for name, notebook, _ in executed_notebooks(grid_folder)]
    index = source / "index.html"
    missing = _missing([report for report, _ in reports] + [index])
    if missing:
        return StageResult(stage, False, f"{missing} (`vqlib report` writes them)")
    stale = [report for report, notebook in reports if report.stat().st_mtime < notebook.stat().st_mtime]
    if not stale and any(index.stat().st_mtime < report.stat().st_mtime for report, _ in reports):
        stale = [index]
    if stale:
        return StageResult(
            stage, False, f"{paths.shown(stale[0])} is older than what it reports on (`vqlib report` writes it again)"
        )
    writer = _Writer()
    target = published_reports_dir()
    # The reports print checkpoints and folders: the runs' checkpoints become pretrained:NAME.
    renames = run_renames(checkpoint_root or paths.checkpoints_dir() / "grid", finished_runs(published_grid_dir()))
    for report, _ in reports:
        writer.text(report, target / report.name, renames)
    writer.text(index, target / index.name, renames)  # last: the index names the reports
    writer.remove_others(target, "*.html")
    return StageResult(stage, True, writer.note(f"{len(reports)} reports and index.html in {paths.shown(target)}"))
