"""HTML reports: every executed notebook of the study through nbconvert, and an index page.

Reports are a mechanical last step (STYLE.md rule 12): `nbconvert --to html
--no-input` over the executed notebooks; figures are inline PNG outputs, so
each HTML file stands alone. The index shows small inline thumbnails of the
headline figures, each linking to its report, so it stands alone too and
keeps working when the reports folder is copied (results/published/reports/).
"""

from __future__ import annotations

import base64
import html
import io
import math
import numbers
import os
from pathlib import Path
from typing import Any, Optional

import pandas as pd

from . import paths
from .checkpoints import BEST_FILE
from .errors import OutputError
from .files import atomic_path, ensure_dir, read_json_or_empty, utc_timestamp
from .grid import collect_grid, grid_dir
from .notebooks import (
    ANALYSIS_NOTEBOOK,
    CLASSIFIER_NOTEBOOK,
    GENERATION_FILE,
    LABEL_EFFICIENCY_FIGURE,
    PRIOR_NOTEBOOK,
    SUMMARY_NOTEBOOK,
    TRAIN_NOTEBOOK,
)

# The index's thumbnails: (report it links to, folder of the figure, figure, caption).
HEADLINE_FIGURES = (
    ("02_grid_summary", "grid", "heatmaps.png", "Validation MSE, perplexity and codebook usage over K x D"),
    ("02_grid_summary", "grid", "loss_curves.png", "Loss curves of every configuration"),
    ("03_classifier", "classifier", LABEL_EFFICIENCY_FIGURE, "Label efficiency"),
    ("04_latent_analysis", "analysis", "tsne.png", "t-SNE of the code and of the pixels"),
    ("04_latent_analysis", "analysis", "reconstructions_per_class.png", "Reconstructions per class"),
    ("06_prior", "prior", "samples_per_class.png", "Samples of the prior per class, beside real test images"),
    ("06_prior", "prior", "frechet.png", "Fréchet distance of samples, reconstructions and real images"),
)
THUMBNAIL_SIZE = (360, 240)  # pixels, at most; the aspect ratio is kept


# The reports' stylesheet, in place of the 256 KB of JupyterLab's that nbconvert's lab template inlines into every
# file (half of a report's size): the elements a report holds (markdown, text and error outputs, figures, pandas
# tables, code when kept), in the index's style.
REPORT_CSS = """
body.jp-Notebook { font-family: system-ui, sans-serif; max-width: 64rem; margin: 2rem auto; padding: 0 1rem;
  color: #222; line-height: 1.5; }
.jp-Collapser, .jp-mod-noOutputs.jp-mod-noInput, a.anchor-link { display: none; }
.jp-Cell { margin: 0 0 .6rem; }
.jp-InputArea, .jp-OutputArea-child { display: flex; gap: .5rem; }
.jp-InputArea-editor, .jp-OutputArea-output { flex: 1; min-width: 0; }
.jp-InputPrompt, .jp-OutputPrompt { flex: 0 0 5rem; color: #888; font: .8rem ui-monospace, monospace;
  text-align: right; padding-top: .4rem; }
.jp-RenderedMarkdown h1 { font-size: 1.9rem; margin: 1.5rem 0 .5rem; }
.jp-RenderedMarkdown h2 { font-size: 1.4rem; margin: 1.6rem 0 .4rem; border-bottom: 1px solid #ddd; }
.jp-RenderedMarkdown h3 { font-size: 1.15rem; margin: 1.2rem 0 .3rem; }
pre, code { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; }
code { font-size: .9em; background: #f3f3f3; padding: 0 .2em; border-radius: 3px; }
.jp-RenderedText pre, .jp-InputArea pre { font-size: .8rem; line-height: 1.4; margin: 0; padding: .5rem .75rem;
  background: #f7f7f7; border-radius: 4px; overflow-x: auto; white-space: pre-wrap; }
.jp-InputArea pre { background: #f4f6fa; }
.jp-RenderedImage img { max-width: 100%; height: auto; }
table { border: 0; border-collapse: collapse; margin: .6rem 0; font-size: .85rem; }
th, td { border: 0; border-bottom: 1px solid #e4e4e4; padding: .3rem .7rem; }
.jp-RenderedHTML th, .jp-RenderedHTML td { text-align: right; }
thead th { border-bottom: 1px solid #999; }
tbody tr:nth-child(odd) { background: #f7f7f7; }
.jp-RenderedHTML { overflow-x: auto; }
.jp-RenderedText[data-mime-type="application/vnd.jupyter.stderr"] pre { background: #fdf1f1; }
.ansi-red-fg { color: #c0392b; } .ansi-green-fg { color: #1e8449; } .ansi-yellow-fg { color: #9a7d0a; }
.ansi-blue-fg { color: #1f5fa8; } .ansi-magenta-fg { color: #8e44ad; } .ansi-cyan-fg { color: #117a8b; }
.ansi-bold { font-weight: bold; }
"""
_REPORT_TEMPLATE = """{%- extends 'lab/index.html.j2' -%}
{% block notebook_css %}<style type="text/css">{{ resources.vqlib_css }}</style>{% endblock notebook_css %}
"""


def export_html(notebook: str | os.PathLike, output: str | os.PathLike, *, with_code: bool = False) -> Path:
    """`jupyter nbconvert --to html --no-input` (code kept with `with_code`), written atomically.

    Figures are inline PNG outputs of the executed notebook, so nbconvert embeds
    them as data URIs: the HTML file stands alone. The lab template's layout, with
    the report's own small stylesheet (`REPORT_CSS`) for JupyterLab's.
    """
    from jinja2 import DictLoader
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(
        template_name="lab",
        extra_loaders=[DictLoader({"vqlib_report.html.j2": _REPORT_TEMPLATE})],
        template_file="vqlib_report.html.j2",
        exclude_input=not with_code,
        exclude_input_prompt=not with_code,
        exclude_output_prompt=True,
    )
    body, _ = exporter.from_filename(str(notebook), resources={"vqlib_css": REPORT_CSS})
    with atomic_path(output) as tmp:
        tmp.write_text(body, encoding="utf-8")
    return Path(output)


def executed_notebooks(
    grid_folder: Optional[Path] = None, analysis_folder: Optional[Path] = None, prior_folder: Optional[Path] = None
) -> list[tuple[str, Path, str]]:
    """(report name, executed notebook, title) of every executed notebook of the study that exists, in reading order."""
    grid_folder = Path(grid_folder or grid_dir())
    analysis_folder = Path(analysis_folder or paths.analysis_dir())
    prior_folder = Path(prior_folder or paths.prior_dir())
    found = []
    summary = grid_folder / SUMMARY_NOTEBOOK
    if summary.is_file():
        found.append(("02_grid_summary", summary, "Grid summary: all VQ-VAE configurations, the best one"))
    classifier = paths.classifier_dir() / CLASSIFIER_NOTEBOOK
    if classifier.is_file():
        found.append(("03_classifier", classifier, "Classifier on the frozen discrete code"))
    analysis = analysis_folder / ANALYSIS_NOTEBOOK
    if analysis.is_file():
        found.append(
            ("04_latent_analysis", analysis, "Latent space: t-SNE, codebook usage, reconstructions, interpolation")
        )
    prior = prior_folder / PRIOR_NOTEBOOK
    if prior.is_file():
        found.append(("06_prior", prior, "The prior over the code: bits, samples, Fréchet distance, CAS, memorisation"))
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


def classifier_record(vqvae_checkpoint: Optional[str] = None) -> Optional[tuple[Path, dict]]:
    """(path, content) of the newest results/classifier/*/metrics.json with a test accuracy, on
    `vqvae_checkpoint` (the chosen VQ-VAE) when given; None when there is none.

    The newest record on the chosen VQ-VAE wins, so a classifier left over from
    an earlier grid is not taken for this one.
    """
    candidates = []
    for path in paths.classifier_dir().glob("*/metrics.json"):
        value = read_json_or_empty(path)
        if not isinstance(value.get("test_accuracy"), (int, float)):
            continue
        if vqvae_checkpoint and value.get("vqvae_checkpoint") not in (None, vqvae_checkpoint):
            continue
        candidates.append((path.stat().st_mtime, path, value))
    if not candidates:
        return None
    _, path, value = max(candidates, key=lambda c: c[0])
    return path, value


def classifier_headline(vqvae_checkpoint: Optional[str] = None) -> dict:
    """The classifier's test accuracy as notebook 03 recorded it (`classifier_record`), or {}."""
    found = classifier_record(vqvae_checkpoint)
    if found is None:
        return {}
    path, value = found
    labels = (value.get("config") or {}).get("labels_per_class")
    return {
        "test_accuracy": value["test_accuracy"],
        "source": path,
        "labels": "all labels" if labels is None else f"{labels} labels per class",
    }


def prior_headline(prior_folder: Optional[Path] = None, vqvae_checkpoint: Optional[str] = None) -> dict:
    """What notebook 06 recorded (generation.json), as the index's headline shows it: the prior's test bits per
    image without a class beside the per-position model's, and the Fréchet distances of its samples and of real test images;
    {} when it did not run, or ran on another VQ-VAE than `vqvae_checkpoint` (the chosen one) when given."""
    record = read_json_or_empty(Path(prior_folder or paths.prior_dir()) / GENERATION_FILE)
    trained_on = (record.get("prior_config") or {}).get("vqvae_checkpoint")
    if vqvae_checkpoint and trained_on not in (None, vqvae_checkpoint):
        return {}
    rows = {
        row.get("model"): row.get("bits_per_image") for row in record.get("likelihood") or [] if isinstance(row, dict)
    }
    distances = {
        row.get("set"): row.get("frechet_distance") for row in record.get("frechet") or [] if isinstance(row, dict)
    }
    if not rows:
        return {}
    # Without a class, as a codec would send the code: a class-conditional prior's "prior without a class".
    unconditional = "prior" if "prior" in rows else "prior without a class"
    return {
        "prior_bits": rows.get(unconditional),
        "baseline_bits": rows.get("per-position model"),
        "prior_frechet": distances.get("prior samples"),
        "real_frechet": distances.get("real test images"),
    }


def thumbnail_uri(figure: str | os.PathLike, size: tuple[int, int] = THUMBNAIL_SIZE) -> str:
    """A PNG data URI of `figure` shrunk to fit `size`: inline, so the index needs no other file."""
    from PIL import Image

    with Image.open(figure) as image:
        image = image.convert("RGB")
        image.thumbnail(size, Image.Resampling.LANCZOS)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def headline_thumbnails(report_names: set[str], folders: dict[str, Optional[Path]]) -> list[tuple[str, str, str]]:
    """(report file, thumbnail data URI, caption) of every headline figure that exists and whose report exists."""
    found = []
    for report, folder_key, name, caption in HEADLINE_FIGURES:
        folder = folders.get(folder_key)
        if report in report_names and folder is not None and (folder / name).is_file():
            found.append((f"{report}.html", thumbnail_uri(folder / name), caption))
    return found


def write_reports(
    *,
    with_code: bool = False,
    grid_folder: Optional[Path] = None,
    analysis_folder: Optional[Path] = None,
    prior_folder: Optional[Path] = None,
    failures: Optional[list[str]] = None,
    profile_description: str = "",
) -> Path:
    """Export every executed notebook to results/reports/*.html and write index.html; return its path."""
    grid_folder = Path(grid_folder or grid_dir())
    analysis_folder = Path(analysis_folder or paths.analysis_dir())
    prior_folder = Path(prior_folder or paths.prior_dir())
    executed = executed_notebooks(grid_folder, analysis_folder, prior_folder)
    if not executed:
        raise OutputError(f"no executed notebooks found under {paths.results_dir()}; run `vqlib run` first")
    out = ensure_dir(paths.reports_dir())
    reports = [
        (export_html(notebook, out / f"{name}.html", with_code=with_code), title) for name, notebook, title in executed
    ]
    best = read_json_or_empty(grid_folder / BEST_FILE)
    grid = collect_grid(grid_folder)
    classifier = classifier_headline(best.get("checkpoint"))
    thumbnails = headline_thumbnails(
        {name for name, _, _ in executed},
        {
            "grid": grid_folder,
            "classifier": classifier["source"].parent if classifier else None,
            "analysis": analysis_folder,
            "prior": prior_folder,
        },
    )
    index = out / "index.html"
    with atomic_path(index) as tmp:
        tmp.write_text(
            _index_html(
                reports,
                best,
                classifier,
                grid,
                failures or [],
                profile_description,
                thumbnails,
                prior_headline(prior_folder, best.get("checkpoint")),
            ),
            encoding="utf-8",
        )
    return index


def _duration(seconds: Any) -> str:
    """'95 s', '45.9 min' or '3.45 h'; '–' when missing."""
    if not _is_number(seconds):
        return "–"
    if seconds < 600:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def grid_table(grid: pd.DataFrame) -> pd.DataFrame:
    """The index's table of grid runs, one row per run, formatted for reading.

    Training time is the sum of the epochs' own times (``train_seconds``), so a run
    resumed several times shows all of its training, not only its last stretch;
    an empty training subset means every training image.
    """

    def column(name: str) -> pd.Series:
        return grid[name] if name in grid else pd.Series([None] * len(grid), index=grid.index, dtype=object)

    def images(subset: Any) -> str:
        return f"{int(subset):,}" if _is_number(subset) else "all"

    return pd.DataFrame(
        {
            "run": column("name"),
            "status": column("status"),
            "val. MSE": column("val_mse").map(lambda v: _fmt(v, ".5f")),
            "val. perplexity": column("val_perplexity").map(lambda v: _fmt(v, ".1f")),
            "codes used": column("val_usage").map(lambda v: _fmt(v, ".0%")),
            "epochs": column("epochs").map(lambda v: _fmt(v, ".0f")),
            "train images": column("train_subset").map(images),
            "training time": column("train_seconds").map(_duration),
            "images/s": column("images_per_s").map(lambda v: _fmt(v, ".0f")),
            "peak RSS": column("peak_rss_mb").map(lambda v: f"{v / 1024:.2f} GB" if _is_number(v) else "–"),
        }
    )


def _is_number(value: Any) -> bool:
    # best.json, metrics.json and summary.csv may be edited by hand or damaged: what is not a number is missing.
    return (
        not isinstance(value, bool)
        and isinstance(value, numbers.Real)
        and not (isinstance(value, float) and math.isnan(value))
    )


def _fmt(value: Any, spec: str) -> str:
    return format(value, spec) if _is_number(value) else "–"


def _index_html(
    reports: list[tuple[Path, str]],
    best: dict,
    classifier: dict,
    grid: pd.DataFrame,
    failures: list[str],
    description: str,
    thumbnails: list[tuple[str, str, str]] = (),
    prior: Optional[dict] = None,
) -> str:
    esc = html.escape
    headline = [
        (
            "Best configuration (lowest validation MSE)",
            f"K={best.get('num_embeddings', '?')}, D={best.get('embedding_dim', '?')}" if best else "–",
        ),
        ("Its validation MSE", _fmt(best.get("val_mse"), ".5f")),
        ("Its test MSE", _fmt(best.get("test_mse"), ".5f")),
        (
            "Its test perplexity",
            _fmt(best.get("test_perplexity"), ".1f")
            + (f" of {best.get('num_embeddings', '?')} codes" if best.get("test_perplexity") is not None else ""),
        ),
        ("Its test codebook usage", _fmt(best.get("test_usage"), ".0%")),
        (
            "Classifier test accuracy (frozen code" + (f", {classifier['labels']})" if classifier else ")"),
            _fmt(classifier.get("test_accuracy"), ".2%"),
        ),
    ]
    if prior:
        headline += [
            (
                "Prior: test bits per image, without the class (per-position model)",
                f"{_fmt(prior.get('prior_bits'), '.1f')} ({_fmt(prior.get('baseline_bits'), '.1f')})",
            ),
            (
                "Fréchet distance to validation images: prior samples (real test images)",
                f"{_fmt(prior.get('prior_frechet'), '.3f')} ({_fmt(prior.get('real_frechet'), '.3f')})",
            ),
        ]
    rows = "\n".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in headline)
    links = "\n".join(f'<li><a href="{esc(path.name)}">{esc(title)}</a></li>' for path, title in reports)
    # Every number is formatted by grid_table already.
    grid_html = grid_table(grid).to_html(index=False, na_rep="–", border=0, classes="grid")
    figures = (
        '<h2>Figures</h2>\n<div class="thumbs">\n'
        + "\n".join(
            f'<figure><a href="{esc(href)}"><img src="{uri}" alt="{esc(caption)}"></a>'
            f"<figcaption>{esc(caption)}</figcaption></figure>"
            for href, uri, caption in thumbnails
        )
        + "\n</div>"
        if thumbnails
        else ""
    )
    problems = ("<h2>Problems</h2><ul>" + "".join(f"<li>{esc(f)}</li>" for f in failures) + "</ul>") if failures else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>vqlib study</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; padding: 0 1rem; color: #222; }}
table {{ border-collapse: collapse; margin: 1rem 0; }}
th, td {{ border-bottom: 1px solid #ddd; padding: .35rem .8rem; text-align: left; }}
table.grid td, table.grid th {{ font-size: .85rem; text-align: right; }}
.muted {{ color: #666; font-size: .9rem; }}
.thumbs {{ display: flex; flex-wrap: wrap; gap: 1rem; }}
.thumbs figure {{ margin: 0; max-width: 22rem; }}
.thumbs img {{ max-width: 100%; border: 1px solid #ddd; }}
.thumbs figcaption {{ font-size: .85rem; color: #444; }}
</style></head><body>
<h1>VQ-VAE on FashionMNIST, and a classifier on its discrete code</h1>
<p class="muted">{esc(f"Profile: {description}. " if description else "")}Generated {esc(utc_timestamp())}.</p>
<h2>Headline</h2>
<table class="headline">
{rows}
</table>
{figures}
<h2>Reports</h2>
<ul>
{links}
</ul>
<h2>Grid</h2>
{grid_html}
{problems}
</body></html>
"""
