"""The notebooks: clean in git, parameters equal to the configs, and the whole study run tiny through papermill.

One module-scoped study (a single tiny grid point, then notebooks 02, 03, 04 and
06 on a few hundred images) feeds the checks of the files each notebook writes, of
the HTML reports, of the published study (`vqlib publish`) and of the README's
figures drawn from it (`vqlib figures`). Notebook 03 runs here with a few labels
and the cheapest label-efficiency settings; tests/test_classifier.py checks it in depth.
"""

from __future__ import annotations

import dataclasses
import html
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import papermill
import pytest

from vqlib import checkpoints as vqcheckpoints
from vqlib import notebooks as vqnotebooks
from vqlib import publish as vqpublish
from vqlib import reports as vqreports
from vqlib import study as vqstudy
from vqlib.cli import main
from vqlib.config import AnalysisConfig, GenerationConfig, PriorConfig, SummaryConfig, TrainConfig, VQVAEConfig
from vqlib.files import read_json

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
PAPERMILL = Path(sys.executable).parent / "papermill"

TINY_PROFILE = {
    "grid": {"num_embeddings_values": "8", "embedding_dim_values": "4"},
    "vqvae": {"hidden_channels": 16, "residual_channels": 8, "num_residual_blocks": 1},
    "train": {"epochs": 1, "train_subset": 300, "batch_size": 64},
    "summary": {"device": "cpu"},
    "classifier": {
        "labels_per_class": 30,
        "epochs": 2,
        "min_steps_per_epoch": 3,
        "device": "cpu",
        "label_counts": "5",
        "num_seeds": 1,
        "methods": "vq_head,vq_linear",
        "linear_c": "0.1",
        "linear_max_iter": 30,
    },
    "analysis": {
        "test_subset": 300,
        "tsne_points": 100,
        "images_per_class": 3,
        "patches_per_code": 4,
        "interpolation_pairs": 2,
        "interpolation_steps": 4,
        "claim_pairs": 6,
        "label_shuffles": 5,
        "bootstrap_samples": 100,
        "device": "cpu",
    },
    "prior": {
        "class_conditional": True,
        "layers": 1,
        "heads": 2,
        "width": 16,
        "batch_size": 32,
        "warmup_steps": 2,
        "epochs": 1,
        "train_subset": 160,
        "val_subset": 40,
        "device": "cpu",
        "test_subset": 100,
        "num_samples": 100,
        "reference_images": 100,
        "sample_batch_size": 100,
        "feature_train_subset": 200,
        "feature_epochs": 1,
        "cas_train_size": 100,
        "cas_val_size": 50,
        "cas_epochs": 1,
        "nearest_images": 50,
        "guidance_values": "0,1",
        "guidance_samples": 20,
        "samples_per_class": 2,
        "completion_images": 2,
        "completions": 2,
    },
}


def field_names(*classes) -> list[str]:
    return [f.name for cls in classes for f in dataclasses.fields(cls)]


def git_notebooks() -> list[Path]:
    listed = subprocess.run(["git", "ls-files", "notebooks/*.ipynb"], cwd=REPO, capture_output=True, text=True).stdout
    return sorted({*(REPO / line for line in listed.split()), *NOTEBOOKS.glob("*.ipynb")})


@pytest.mark.parametrize(
    "notebook, classes, extra",
    [
        ("01_train_vqvae.ipynb", (VQVAEConfig, TrainConfig), ["resume"]),
        ("02_grid_summary.ipynb", (SummaryConfig,), []),
        ("04_latent_analysis.ipynb", (AnalysisConfig,), []),
        ("06_prior.ipynb", (PriorConfig, GenerationConfig), []),
    ],
)
def test_parameters_cell_equals_the_config_fields(notebook, classes, extra):
    names = list(papermill.inspect_notebook(str(NOTEBOOKS / notebook)))
    assert names == list(dict.fromkeys(field_names(*classes))) + extra
    nb = nbformat.read(NOTEBOOKS / notebook, as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    # Literals only, one per line, each with a comment.
    for line in tagged[0].source.splitlines():
        # A string literal in either quote (ruff format writes double quotes).
        assert re.fullmatch(r"""\w+ = (None|True|False|-?[\d.e+-]+|'[^']*'|"[^"]*")  # .+""", line), line
    assert nb.metadata["kernelspec"]["name"] == vqnotebooks.KERNEL_NAME


def test_notebooks_in_git_carry_no_outputs():
    notebooks = git_notebooks()
    assert {p.name for p in notebooks} >= {
        "01_train_vqvae.ipynb",
        "02_grid_summary.ipynb",
        "04_latent_analysis.ipynb",
        "06_prior.ipynb",
    }
    for path in notebooks:
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, f"{path.name} carries outputs"
        assert "papermill" not in nb.metadata, f"{path.name} is an executed copy"


@pytest.mark.parametrize("notebook", sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")))
def test_no_parameter_shadows_an_imported_name(notebook):
    """A parameter named like an imported function replaces it once papermill injects it."""
    import ast

    nb = nbformat.read(NOTEBOOKS / notebook, as_version=4)
    imported = set()
    for cell in nb.cells:
        if cell.cell_type == "code" and "import" in cell.source:
            source = "\n".join(line for line in cell.source.splitlines() if not line.startswith("%"))
            for node in ast.walk(ast.parse(source)):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    imported |= {(alias.asname or alias.name).split(".")[0] for alias in node.names}
    assert not imported & set(papermill.inspect_notebook(str(NOTEBOOKS / notebook)))


def test_notebooks_define_no_functions():
    for path in NOTEBOOKS.glob("*.ipynb"):
        for cell in nbformat.read(path, as_version=4).cells:
            if cell.cell_type == "code":
                assert not re.search(r"^\s*(def|class) ", cell.source, re.M), f"{path.name} defines a function"


@pytest.mark.skipif(not Path("/proc/self/autogroup").is_file(), reason="no scheduling autogroups on this system")
def test_a_niced_run_keeps_its_niceness_in_the_kernels_session(tmp_path):
    """A kernel starts a session, and so a scheduling autogroup of its own: it gets the niceness of the vqlib that
    started it, and the notebook sees no name of it; a Ray task's kernel (`keep_niceness=False`) does not."""
    notebook = nbformat.v4.new_notebook()
    source = "print(open('/proc/self/autogroup').read().split()[-1], sorted(k for k in globals() if 'vqlib' in k))"
    notebook.cells = [nbformat.v4.new_code_cell(source)]
    nbformat.write(notebook, tmp_path / "nice.ipynb")
    code = (
        "import sys; from vqlib.notebooks import execute_notebook; "
        "execute_notebook(sys.argv[1], sys.argv[2], {}, keep_niceness=sys.argv[3] == 'keep')"
    )
    base = os.nice(0)
    # Niceness stops at 19 (a suite run under `nice -n 15` asks 22 of the kernel).
    for niceness, keep, group in ((0, "keep", base), (7, "keep", min(base + 7, 19)), (7, "no", 0)):
        out = tmp_path / f"nice_{niceness}_{keep}.ipynb"
        subprocess.run(
            ["nice", "-n", str(niceness), sys.executable, "-c", code, str(tmp_path / "nice.ipynb"), str(out), keep],
            check=True,
            cwd=tmp_path,
        )
        printed = nbformat.read(out, as_version=4).cells[0].outputs[0]["text"].split()
        # Under plain `nice` the kernel's group ran at 0 whatever was asked.
        assert printed == [str(group), "[]"], (niceness, keep)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    shutil.copytree(NOTEBOOKS, root / "notebooks")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VQLIB_ROOT", str(root))
        result = vqstudy.run_study(TINY_PROFILE, progress=False)
        yield {"root": root, "result": result, "mp": mp}


def test_study_runs_without_problems(study):
    assert study["result"].failures == []
    assert study["result"].index == study["root"] / "results" / "reports" / "index.html"


def test_a_finished_notebook_03_or_04_is_reused_and_a_changed_one_is_not(study, tmp_path):
    """finished_notebook on the study's executed notebook 04: reused as it is; not with other
    parameters, after its VQ-VAE changed, or when the run had stopped on an error."""
    import os

    root = study["root"]
    output = root / "results" / "analysis" / vqnotebooks.ANALYSIS_NOTEBOOK
    params = nbformat.read(output, as_version=4).metadata["papermill"]["parameters"]
    checkpoint = Path(params["vqvae_checkpoint"])
    source = root / "notebooks" / vqnotebooks.ANALYSIS_NOTEBOOK
    assert vqstudy.finished_notebook(source, output, params, [checkpoint])
    assert not vqstudy.finished_notebook(source, output, {**params, "tsne_points": 7}, [checkpoint])
    assert not vqstudy.finished_notebook(source, tmp_path / "absent.ipynb", params, [checkpoint])
    failed = nbformat.read(output, as_version=4)
    failed.metadata["papermill"]["exception"] = True
    nbformat.write(failed, tmp_path / "failed.ipynb")
    assert not vqstudy.finished_notebook(source, tmp_path / "failed.ipynb", params, [checkpoint])
    stamp = output.stat().st_mtime
    retrained = tmp_path / "best.pt"
    retrained.write_bytes(b"")
    os.utime(retrained, (stamp + 10, stamp + 10))
    assert not vqstudy.finished_notebook(source, output, params, [retrained])


def test_notebook_02_writes_best_json(study):
    grid = study["root"] / "results" / "grid"
    best = read_json(grid / vqcheckpoints.BEST_FILE)
    for key in (
        "num_embeddings",
        "embedding_dim",
        "checkpoint",
        "val_mse",
        "val_perplexity",
        "val_usage",
        "test_mse",
        "test_perplexity",
        "test_usage",
    ):
        assert key in best, key
    assert (best["num_embeddings"], best["embedding_dim"]) == (8, 4)
    assert Path(best["checkpoint"]).is_absolute() and Path(best["checkpoint"]).is_file()
    for name in (*vqnotebooks.SUMMARY_FIGURES, vqnotebooks.SUMMARY_NOTEBOOK):
        assert (grid / name).stat().st_size > 5000, name


def test_notebook_04_writes_figures_and_analysis(study):
    folder = study["root"] / "results" / "analysis"
    for name in (*vqnotebooks.ANALYSIS_FIGURES, vqnotebooks.ANALYSIS_NOTEBOOK):
        assert (folder / name).stat().st_size > 5000, name
    summary = read_json(folder / "analysis.json")
    assert len(summary["per_class_mse"]) == 10 and summary["images"] == 300
    assert summary["receptive_field"]["size"] == 12  # one residual block: 4 + 2*2 + 2*2
    names = ["tsne_clustering", "codebook_usage", "interpolation", "reconstruction"]
    assert [c["name"] for c in summary["claims"]] == names
    for claim in summary["claims"]:
        assert claim["verdict"] in ("agrees", "partly", "disagrees") and claim["sentence"] and claim["seed_words"]
        assert claim["numbers"] and claim["definition"]
    tsne = summary["claims"][0]["numbers"]
    assert tsne["images"] == 100 and set(tsne["knn_accuracy"]) == {"code_map", "code_space", "pixel_map", "pixel_space"}
    assert summary["claims"][2]["numbers"]["paths"] == 6
    # The corrected metrics: each path's own ends out of its nearest-image search, the largest shuffle as the
    # baseline of the most class-specific code, the reconstruction's eight parts under Holm's correction.
    assert summary["claims"][2]["numbers"]["nn_reference_excludes_ends"]
    usage = summary["claims"][1]["numbers"]
    assert usage["max_specificity_shuffled_max"] >= usage["max_specificity_shuffled_mean"]
    reconstruction = summary["claims"][3]["numbers"]
    assert reconstruction["parts_tested"] == 8 and reconstruction["alpha_familywise"] == 0.05
    assert all("p_holm" in p for p in reconstruction["variability_pairs"].values())
    nb = nbformat.read(folder / vqnotebooks.ANALYSIS_NOTEBOOK, as_version=4)
    markdown = [
        o["data"]["text/markdown"]
        for c in nb.cells
        for o in c.get("outputs", [])
        if "text/markdown" in o.get("data", {})
    ]
    for heading in ("**Clustering (", "**Codebook usage (", "**Reconstruction (", "**Interpolation ("):
        assert any(text.startswith(heading) for text in markdown), heading


def test_notebook_06_measures_the_prior_in_bits_and_samples(study):
    """The tiny study's notebook 06: a prior trained on the chosen VQ-VAE's code, every figure, generation.json."""
    folder = study["root"] / "results" / "prior"
    for name in (*vqnotebooks.PRIOR_FIGURES, vqnotebooks.PRIOR_NOTEBOOK):
        assert (folder / name).stat().st_size > 5000, name
    record = read_json(folder / vqnotebooks.GENERATION_FILE)
    assert record["prior"] == "checkpoints/prior/K8_D4_transformer_cond/best.pt"  # trained here, named portably
    assert record["prior_config"]["class_conditional"] and record["prior_config"]["train_subset"] == 160
    assert record["settings"]["num_samples"] == 100 and record["settings"]["prior_checkpoint"] is None
    assert [row["guidance"] for row in record["guidance"]] == [0.0, 1.0]
    assert all(row["samples"] == 20 and 0 <= row["judged_accuracy"] <= 1 for row in record["guidance"])
    bits = {row["model"]: row["bits_per_image"] for row in record["likelihood"]}
    assert list(bits) == [
        "uniform over K=8 codes",
        "per-position model",
        "per-position model, given the class",
        "prior without a class",
        "prior, given the class",
    ]
    assert bits["uniform over K=8 codes"] == pytest.approx(144 * 3)
    assert bits["per-position model"] < bits["uniform over K=8 codes"] and all(b > 0 for b in bits.values())
    frechet = {row["set"]: row for row in record["frechet"]}
    assert list(frechet) == [
        "real test images",
        "VQ-VAE reconstructions of them",
        "per-position samples",
        "prior samples",
    ]
    assert all(row["images"] == 100 and row["frechet_distance"] >= 0 for row in frechet.values())
    assert [row["class"] for row in record["class_accuracy"]][-1] == "all" and len(record["class_accuracy"]) == 11
    assert set(record["class_accuracy"][0]) == {"class", *frechet}
    cas = {row["trained on"]: row for row in record["cas"]}
    assert list(cas) == ["real training images", "prior samples", "per-position samples"]
    assert all(row["train_images"] == 100 and row["selection_images"] == 50 for row in cas.values())
    assert all(0 <= row["test_accuracy"] <= 1 for row in cas.values())
    memorisation = {row["set"]: row for row in record["memorisation"]}
    assert list(memorisation) == [*frechet, "VQ-VAE reconstructions of training images"]  # the last: copies
    assert all(row["images"] == 50 for row in memorisation.values())
    assert set(record["code_copies"]) == {"prior samples", "per-position samples"}
    assert record["feature_classifier"]["train_images"] == 200 and "history" not in record["feature_classifier"]
    index = (study["root"] / "results" / "reports" / "index.html").read_text()
    assert f"{bits['prior without a class']:.1f} ({bits['per-position model']:.1f})" in index
    # The classifier on pixels is cached for the next run; the prior sits in its default folder.
    assert (study["root"] / "checkpoints" / "pixel-classifier").is_dir()
    assert (study["root"] / "checkpoints" / "prior" / "K8_D4_transformer_cond" / "best.pt").is_file()


def test_the_index_shows_the_prior_of_the_chosen_vqvae_only(tmp_path):
    from vqlib.files import write_json

    record = {
        "prior_config": {"vqvae_checkpoint": "results/grid/K8_D4/best.pt"},
        "likelihood": [
            {"model": "per-position model", "bits_per_image": 700.0},
            {"model": "prior", "bits_per_image": 600.0},
        ],
        "frechet": [
            {"set": "real test images", "frechet_distance": 0.3},
            {"set": "prior samples", "frechet_distance": 9.0},
        ],
    }
    write_json(tmp_path / vqnotebooks.GENERATION_FILE, record)
    shown = vqreports.prior_headline(tmp_path, "results/grid/K8_D4/best.pt")
    assert shown == {"prior_bits": 600.0, "baseline_bits": 700.0, "prior_frechet": 9.0, "real_frechet": 0.3}
    # A class-conditional prior: the headline's bits are its bits without a class, as a codec sends the code.
    record["likelihood"] = [
        {"model": "per-position model", "bits_per_image": 700.0},
        {"model": "per-position model, given the class", "bits_per_image": 690.0},
        {"model": "prior without a class", "bits_per_image": 610.0},
        {"model": "prior, given the class", "bits_per_image": 590.0},
    ]
    write_json(tmp_path / vqnotebooks.GENERATION_FILE, record)
    assert vqreports.prior_headline(tmp_path)["prior_bits"] == 610.0
    assert vqreports.prior_headline(tmp_path, "results/grid/K100_D64/best.pt") == {}  # left over from another grid
    assert vqreports.prior_headline(tmp_path / "absent") == {}


def test_profiles_give_notebook_06_only_what_it_takes():
    from vqlib.errors import ConfigError

    for name in vqstudy.PROFILES:
        params = vqstudy.prior_parameters(NOTEBOOKS / vqnotebooks.PRIOR_NOTEBOOK, vqstudy.get_profile(name)["prior"])
        assert params["class_conditional"] is True, name
    with pytest.raises(ConfigError, match="does not take"):
        vqstudy.prior_parameters(NOTEBOOKS / vqnotebooks.PRIOR_NOTEBOOK, {"sample_count": 10})
    with pytest.raises(ConfigError, match="cas_train_size must be at most 55,000"):
        vqstudy.prior_parameters(NOTEBOOKS / vqnotebooks.PRIOR_NOTEBOOK, {"cas_train_size": 60_000})


# Inline PNG figures each report must hold, at least.
EXPECTED_IMAGES = {
    "02_grid_summary": 2,
    "03_classifier": 3,
    "04_latent_analysis": 9,
    "06_prior": 7,
    "01_train_vqvae_K8_D4": 2,
}


def test_html_reports_hold_their_figures_and_no_code(study):
    reports = study["root"] / "results" / "reports"
    names = {p.stem for p in reports.glob("*.html")} - {"index"}
    assert names == set(EXPECTED_IMAGES)
    for name in names:
        text = (reports / f"{name}.html").read_text()
        assert len(re.findall(r'<img [^>]*src="data:image/png;base64,', text)) >= EXPECTED_IMAGES[name], name
        assert "from vqlib" not in text, f"{name}: code cells should be hidden"
        # The report's own stylesheet, not the 256 KB of JupyterLab's that nbconvert would inline into each file.
        assert vqreports.REPORT_CSS in text and "Copyright (c) Jupyter Development Team" not in text, name
        assert len(text.encode()) - sum(map(len, re.findall(r"data:image/png;base64,[A-Za-z0-9+/=]+", text))) < 60_000
    index = (reports / "index.html").read_text()
    for name in names:
        assert f'href="{name}.html"' in index
    best = read_json(study["root"] / "results" / "grid" / vqcheckpoints.BEST_FILE)
    assert "K=8, D=4" in index and f"{best['test_mse']:.5f}" in index and f"{best['test_perplexity']:.1f}" in index
    classifier = read_json(study["root"] / "results" / "classifier" / "K8_D4_30pc_frozen" / "metrics.json")
    assert f"{classifier['test_accuracy']:.2%}" in index and "30 labels per class" in index


def test_index_shows_a_thumbnail_of_each_headline_figure_linking_to_its_report(study):
    import base64
    import io

    from PIL import Image

    reports = study["root"] / "results" / "reports"
    index = (reports / "index.html").read_text()
    thumbnails = re.findall(r'<a href="([^"]+)"><img src="data:image/png;base64,([^"]+)" alt="([^"]+)">', index)
    assert [alt for _, _, alt in thumbnails] == [caption for *_, caption in vqreports.HEADLINE_FIGURES]
    for href, data, alt in thumbnails:
        assert (reports / href).is_file(), alt
        with Image.open(io.BytesIO(base64.b64decode(data))) as image:
            assert image.format == "PNG"
            assert 50 <= image.width <= vqreports.THUMBNAIL_SIZE[0] and image.height <= vqreports.THUMBNAIL_SIZE[1]
    assert len(index) < 400_000  # thumbnails, not the figures


def test_report_command_names_the_profile_only_when_told(study):
    """`vqlib report` alone cannot know the study's profile: it names none (no empty 'Profile: .'); with --profile
    the index describes it as `vqlib run` does."""
    index = study["root"] / "results" / "reports" / "index.html"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VQLIB_ROOT", str(study["root"]))
        assert main(["report"]) == 0
        assert "Profile:" not in index.read_text() and "Generated " in index.read_text()
        assert main(["report", "--profile", "full"]) == 0
        assert html.escape(f"Profile: {vqstudy.PROFILES['full']['description']}.") in index.read_text()
        assert main(["report"]) == 0  # as the study left it, for the tests after this one


def test_reports_with_code_keep_the_code(study):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VQLIB_ROOT", str(study["root"]))
        index = vqreports.write_reports(with_code=True)
    assert "analysis_summary" in (index.parent / "04_latent_analysis.html").read_text()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VQLIB_ROOT", str(study["root"]))
        vqreports.write_reports(with_code=False)


# ----------------------------------------------------------------------------- the published study, its figures


@pytest.fixture(scope="module")
def published(study):
    """The tiny study published as `vqlib publish` does: the grid run, then the stages after it."""
    root = study["root"]
    names = vqpublish.publish_runs(root / "results" / "grid", root / "checkpoints" / "grid")
    return {"root": root, "names": names, "stages": vqpublish.publish_stages(root / "results" / "grid")}


def test_publish_copies_every_stage_after_the_grid_without_machine_paths(published, tmp_path, data):
    from vqlib.classify import evaluate_classifier, load_classifier
    from vqlib.errors import CheckpointError

    root = published["root"]
    assert published["names"] == ["K8_D4"]
    assert [(s.stage, s.published) for s in published["stages"]] == [
        ("grid summary", True),
        ("classifier", True),
        ("analysis", True),
        ("prior", True),
        ("reports", True),
        ("codec", False),
    ], [s.line() for s in published["stages"]]
    assert "results/codec/rate_distortion.csv and 1 more file(s) missing" in published["stages"][-1].note
    out = root / "results" / "published"
    for name in vqnotebooks.SUMMARY_FIGURES:
        assert (out / "grid" / name).read_bytes() == (root / "results" / "grid" / name).read_bytes()
    classifier = out / "classifier" / "K8_D4_30pc_frozen"
    for name in (*vqpublish.CLASSIFIER_RESULT_FILES, "metrics.json", "label_efficiency.runs.jsonl"):
        assert (classifier / name).stat().st_size > 0, name
    assert str(root) not in (classifier / "label_efficiency.runs.jsonl").read_text()
    for name in (*vqnotebooks.ANALYSIS_FIGURES, vqnotebooks.ANALYSIS_FILE):
        assert (out / "analysis" / name).stat().st_size > 0, name
    for name in (*vqnotebooks.PRIOR_FIGURES, vqnotebooks.GENERATION_FILE):
        assert (out / "prior" / name).stat().st_size > 0, name
    assert read_json(out / "prior" / vqnotebooks.GENERATION_FILE)["vqvae"] == "pretrained:K8_D4"
    # The pixel classifier that record measured in, published beside the models (the same training, by its record).
    judges = list((root / "checkpoints" / "pretrained" / "pixel-classifier").glob("*/best.pt"))
    assert len(judges) == 1, judges
    judge_record = vqcheckpoints.load_checkpoint(judges[0], kind="pixel_classifier")["record"]
    assert (
        judge_record["written"]
        == read_json(out / "prior" / vqnotebooks.GENERATION_FILE)["feature_classifier"]["written"]
    )
    assert {p.name for p in (out / "reports").iterdir()} == {f"{n}.html" for n in EXPECTED_IMAGES} | {"index.html"}
    # Checkpoints by their published names, no path of this machine in any published JSON.
    metrics = read_json(classifier / "metrics.json")
    assert metrics["vqvae_checkpoint"] == "pretrained:K8_D4"
    assert metrics["classifier_checkpoint"] == "pretrained:K8_D4_30pc_frozen"
    assert read_json(out / "analysis" / vqnotebooks.ANALYSIS_FILE)["checkpoint"] == "pretrained:K8_D4"
    published_json = [*out.rglob("*.json"), *(root / "checkpoints" / "pretrained").rglob("*.json")]
    assert len(published_json) >= 8
    for path in published_json:
        assert str(root) not in path.read_text() and '"/' not in path.read_text(), path
    # Nor in the executed notebooks and HTML reports, which print configs and folders as text.
    texts = [*(out / "reports").glob("*.html"), *(out / "grid").rglob("*.ipynb")]
    assert len(texts) >= 6
    for path in texts:
        assert str(root) not in path.read_text(), path
    # The published classifier loads by name, paired with the published VQ-VAE it reads, and no other.
    model, ckpt = load_classifier("pretrained:K8_D4_30pc_frozen", vqvae_checkpoint="pretrained:K8_D4")
    assert ckpt["vqvae_checkpoint"] == "pretrained:K8_D4" and ckpt["results_dir"] is None
    assert not (root / "checkpoints" / "pretrained" / "K8_D4_30pc_frozen" / "last.pt").exists()
    # eval-cls on it writes where this project keeps that run's results, not where it was trained.
    evaluation = evaluate_classifier("pretrained:K8_D4_30pc_frozen", data, split="val", device="cpu")
    assert evaluation["files"]["metrics"] == root / "results" / "classifier" / "K8_D4_30pc_frozen" / "metrics_val.json"
    # The same configuration with other weights (another run) is refused.
    other = vqcheckpoints.load_checkpoint("pretrained:K8_D4", kind="vqvae")
    key = next(k for k in other["state_dict"] if k.startswith("encoder.") and k.endswith("weight"))
    other["state_dict"][key] = other["state_dict"][key] + 0.01
    other_path = vqcheckpoints.save_checkpoint(tmp_path / "other.pt", "vqvae", other)
    with pytest.raises(CheckpointError, match="another VQ-VAE run"):
        load_classifier("pretrained:K8_D4_30pc_frozen", vqvae_checkpoint=other_path)


def test_publish_says_what_it_published_and_leaves_an_incomplete_stage_out(published, capsys):
    """Again: every stage is up to date (nothing rewritten); a missing figure keeps its stage and the reports out."""
    root = published["root"]
    tsne = root / "results" / "analysis" / "tsne.png"
    before = {p: p.stat().st_mtime_ns for p in (root / "results" / "published").rglob("*") if p.is_file()}
    assert main(["publish"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "published 0 new or updated run(s): all up to date"
    stage_names = ["grid summary", "classifier", "analysis", "prior", "reports", "codec"]
    assert [line.split(":")[0] for line in lines[1:7]] == stage_names
    assert all(line.endswith("(up to date)") for line in lines[1:6]), lines
    assert lines[6].startswith("codec: not published: ")
    assert lines[7].startswith("the published study holds ")
    assert {p: p.stat().st_mtime_ns for p in before} == before
    tsne.rename(tsne.with_suffix(".aside"))
    try:
        stages = {s.stage: s for s in vqpublish.publish_stages(root / "results" / "grid")}
    finally:
        tsne.with_suffix(".aside").rename(tsne)
    assert not stages["analysis"].published and "results/analysis/tsne.png missing" in stages["analysis"].note
    assert not stages["reports"].published and "analysis stage is not published" in stages["reports"].note
    assert stages["classifier"].published


def test_figures_are_drawn_from_the_published_study_alone(published, tmp_path, monkeypatch, capsys):
    """All twelve from the whole published study, byte-identical on a rerun; from a partial one
    (one grid run, nothing after it) the grid's two, the others named as skipped; from none, exit 2."""
    from vqlib.figures import (
        ANALYSIS_README_FIGURES,
        CODEC_README_FIGURE,
        PAIRED_DIFFERENCES_FIGURE,
        PRIOR_README_FIGURES,
        SEED_SPREAD_FIGURE,
        write_figures,
    )

    out = tmp_path / "figures"
    result = write_figures(out)
    prior_figures = list(PRIOR_README_FIGURES.values())
    expected = [
        "loss_curves.png",
        "grid_heatmaps.png",
        *ANALYSIS_README_FIGURES,
        "label_efficiency.png",
        PAIRED_DIFFERENCES_FIGURE,
        *prior_figures,
    ]
    assert [p.name for p in result.written] == expected
    # The seed spread and the codec are published by their own commands (tests/test_grid.py, test_codec.py): here
    # they are named as skipped.
    assert [line.split(":")[0] for line in result.skipped] == [SEED_SPREAD_FIGURE, CODEC_README_FIGURE]
    prior = published["root"] / "results" / "published" / "prior"
    assert (out / "prior_samples.png").read_bytes() == (prior / "samples_per_class.png").read_bytes()
    drawn = (out / "loss_curves.png").read_bytes()
    assert drawn.startswith(b"\x89PNG") and b"Matplotlib" not in drawn  # no version in the file
    assert (out / "tsne.png").read_bytes() == (published["root"] / "results" / "analysis" / "tsne.png").read_bytes()
    assert sum(p.stat().st_size for p in out.iterdir()) < 5_000_000
    assert write_figures(out).changed == []

    partial = tmp_path / "partial"
    shutil.copytree(
        published["root"] / "results" / "published" / "grid" / "K8_D4",
        partial / "results" / "published" / "grid" / "K8_D4",
    )
    monkeypatch.setenv("VQLIB_ROOT", str(partial))
    assert main(["figures"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("2 figure(s) in docs/figures (2 changed): loss_curves.png, grid_heatmaps.png")
    assert sorted(line.split(":")[0] for line in lines[1:]) == sorted(
        f"skipped {name}"
        for name in [
            SEED_SPREAD_FIGURE,
            *ANALYSIS_README_FIGURES,
            "label_efficiency.png",
            PAIRED_DIFFERENCES_FIGURE,
            *prior_figures,
            CODEC_README_FIGURE,
        ]
    )
    assert sorted(p.name for p in (partial / "docs" / "figures").iterdir()) == ["grid_heatmaps.png", "loss_curves.png"]

    monkeypatch.setenv("VQLIB_ROOT", str(tmp_path / "empty"))
    assert main(["figures"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.strip().splitlines()) == 1
    assert "nothing is published" in captured.err and not (tmp_path / "empty" / "docs").exists()


def test_notebook_01_runs_through_the_papermill_cli(tmp_path):
    """From outside the package: the plain papermill command, the project's kernel, real data."""
    out = tmp_path / "out.ipynb"
    args = {
        "num_embeddings": 8,
        "embedding_dim": 4,
        "hidden_channels": 16,
        "residual_channels": 8,
        "num_residual_blocks": 1,
        "epochs": 1,
        "train_subset": 200,
        "batch_size": 100,
        "checkpoint_dir": str(tmp_path / "ckpt"),
        "results_dir": str(tmp_path / "res"),
    }
    command = [
        str(PAPERMILL),
        str(NOTEBOOKS / "01_train_vqvae.ipynb"),
        str(out),
        "-k",
        vqnotebooks.KERNEL_NAME,
        "--no-progress-bar",
    ]
    for name, value in args.items():
        command += ["-p", name, str(value)]
    env = dict(os.environ, TQDM_DISABLE="1", VQLIB_ROOT=str(tmp_path))
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    metrics = read_json(tmp_path / "res" / "metrics.json")
    assert metrics["status"] == "success" and metrics["train_config"]["train_subset"] == 200
    assert (tmp_path / "ckpt" / "best.pt").is_file() and (tmp_path / "res" / "loss_curves.png").is_file()


def test_running_the_study_again_reuses_notebooks_03_04_and_06(study, capsys):
    """The second `run_study` reuses the grid and the finished notebooks 03, 04 and 06 (last in this
    module: it runs notebook 02 and the reports again in the shared study)."""
    result = vqstudy.run_study(TINY_PROFILE, progress=True)
    out = capsys.readouterr().out
    assert result.failures == []
    assert result.seconds["classifier"] == 0.0 and result.seconds["analysis"] == 0.0 and result.seconds["prior"] == 0.0
    assert f"{vqnotebooks.CLASSIFIER_NOTEBOOK}: reused" in out and f"{vqnotebooks.ANALYSIS_NOTEBOOK}: reused" in out
    assert f"{vqnotebooks.PRIOR_NOTEBOOK}: reused" in out
    assert f"running {vqnotebooks.SUMMARY_NOTEBOOK}" in out
