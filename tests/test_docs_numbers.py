"""The numbers the README and docs/results.md show in their tables are those of the published files, to the last
digit shown: a republished study whose documents were not updated fails here."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest

from vqlib.label_efficiency import paired_differences

REPO = Path(__file__).resolve().parents[1]
PUBLISHED = REPO / "results" / "published"
METHODS = ["vq_head", "vq_linear", "z_linear", "pixel_convnet", "pixel_linear"]  # the tables' column order


def table(doc: str, header: str) -> list[list[str]]:
    """The body rows of the Markdown table of `doc` whose header row starts with `header`, as stripped cells with
    their bold marks and backticks removed."""
    lines = (REPO / doc).read_text().splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("| " + header)]
    assert len(starts) == 1, f"{doc} has {len(starts)} tables whose header starts with {header!r}"
    rows = []
    for line in lines[starts[0] + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip().replace("**", "").replace("`", "") for cell in line.strip("|").split("|")])
    assert rows, f"the table {header!r} of {doc} is empty"
    return rows


def shown(value: float, cell: str) -> str:
    """`value` rounded to as many decimals as `cell` shows."""
    decimals = len(cell.split(".")[1]) if "." in cell else 0
    return f"{value:.{decimals}f}"


def number(cell: str) -> str:
    """The first number of a cell ('0.693 ± 0.009' -> '0.693'; '15.5 of 25' -> '15.5')."""
    match = re.search(r"-?\d[\d,]*(?:\.\d+)?", cell)
    assert match, f"no number in {cell!r}"
    return match.group().replace(",", "")


def test_the_table_reader_and_rounding_can_tell_a_wrong_digit():
    assert shown(0.0016387, "0.00164") == "0.00164" and shown(0.0016387, "0.00163") != "0.00163"
    assert number("test accuracy 0.8968") == "0.8968" and number("5,500 (all)") == "5500"
    with pytest.raises(AssertionError, match="0 tables"):
        table("README.md", "no such header")


def test_the_readme_pretrained_table_is_the_published_grid():
    grid = pd.read_csv(PUBLISHED / "grid" / "summary.csv").set_index("name")
    rows = [r for r in table("README.md", "name | K | D |") if r[0].split()[0] in grid.index]
    assert len(rows) == len(grid) == 9
    for name, k, d, mse, psnr, _size in (r[:6] for r in rows):
        run = grid.loc[name.split()[0]]
        assert (int(k), int(d)) == (run.num_embeddings, run.embedding_dim), name
        assert shown(run.val_mse, mse) == mse and shown(run.val_psnr, psnr) == psnr, name
    for row in table("README.md", "name | K | D |"):  # the size column: best.pt in MB (10^6 bytes), as list_pretrained
        checkpoint = REPO / "checkpoints" / "pretrained" / row[0].split()[0] / "best.pt"
        assert shown(checkpoint.stat().st_size / 1e6, row[-1]) == row[-1], row[0]


def test_the_grid_table_of_the_results_is_the_published_grid():
    grid = pd.read_csv(PUBLISHED / "grid" / "summary.csv").set_index("name")
    rows = table("docs/results.md", "run | val. MSE |")
    assert [r[0] for r in rows] == list(grid.index)
    for name, mse, epoch, perplexity, usage, *_ in rows:
        run = grid.loc[name]
        assert shown(run.val_mse, mse) == mse, name
        assert int(epoch) == run.best_epoch, name
        assert shown(run.val_perplexity, number(perplexity)) == number(perplexity), name
        assert f"{run.val_usage:.0%}" == usage, name


def test_the_protocol_seed_table_is_the_published_seed_spread():
    runs = pd.read_csv(PUBLISHED / "protocol_seeds" / "summary.csv")
    rows = table("docs/results.md", "K=100, seeds 0 / 1 / 2 |")
    assert len(rows) == 3
    for label, per_seed, mean, std, epochs in rows:
        d = int(label.removeprefix("D="))
        row = runs[runs.embedding_dim == d].sort_values("seed")
        assert list(row.seed) == [0, 1, 2], label
        cells = [c.strip() for c in per_seed.split("/")]
        assert [shown(v, c) for v, c in zip(row.val_mse, cells, strict=True)] == cells, label
        assert shown(row.val_mse.mean(), mean) == mean, label
        assert shown(row.val_mse.std(), number(std)) == number(std), label  # pandas: n - 1, as published
        assert [int(e) for e in epochs.split("/")] == list(row.best_epoch), label


LABEL_EFFICIENCY = {"matched": "classifier/K100_D64_all_frozen", "full_val": "label_efficiency_full_val"}


def label_efficiency_rows(selection: str = "matched") -> pd.DataFrame:
    """The published label-efficiency rows of a selection protocol, the ConvNet on pixels by its current name."""
    frame = pd.read_csv(PUBLISHED / LABEL_EFFICIENCY[selection] / "label_efficiency.csv")
    return frame.replace({"method": {"pixel_cnn": "pixel_convnet"}})


@pytest.mark.parametrize(
    "header", ["labels per class | selection images |", "labels per class | selection | head on frozen code |"]
)
def test_the_label_efficiency_tables_are_the_published_rows(header):
    """Each cell: the mean ± standard deviation (n - 1) over the seeds of that method and label count; the all-labels
    row, one seed, its value. A table with a selection column takes each row from that protocol's published rows."""
    rows = table("docs/results.md", header)
    frames = {selection: label_efficiency_rows(selection) for selection in LABEL_EFFICIENCY}
    by_protocol = "selection |" in header
    if not by_protocol:
        assert {int(number(r[0])) for r in rows} == set(frames["matched"].labels_per_class)
    for row in rows:
        per_class = int(number(row[0]))
        frame = frames[row[1].split(":")[0] if by_protocol else "matched"]
        for method, cell in zip(METHODS, row[-len(METHODS) :], strict=True):
            acc = frame[(frame.method == method) & (frame.labels_per_class == per_class)].test_acc
            assert len(acc) >= 1, (per_class, method)
            mean, _, std = cell.partition(" ± ")
            assert shown(acc.mean(), mean) == mean, (per_class, method, cell)
            if std:
                assert len(acc) > 1 and shown(acc.std(), std) == std, (per_class, method, cell)
            else:
                assert len(acc) == 1, (per_class, method, "a single value shown for several seeds")


def test_the_readme_classifier_row_is_its_published_test_accuracy():
    metrics = json.loads((PUBLISHED / "classifier" / "K100_D64_all_frozen" / "metrics_test.json").read_text())
    (row,) = [r for r in table("README.md", "name | K | D |") if r[0].startswith("K100_D64_all_frozen")]
    cell = number(row[3])
    assert shown(metrics["accuracy"], cell) == cell


def test_the_classifier_table_of_the_results_is_notebook_03s_published_comparison():
    """Validation and test accuracy and test macro F1 of the classifiers notebook 03 trained (its metrics.json's
    comparison), each shown or marked absent ('–') only where the record has none."""
    metrics = json.loads((PUBLISHED / "classifier" / "K100_D64_all_frozen" / "metrics.json").read_text())
    trained = {r["classifier"]: r for r in metrics["comparison"] if r["source"].startswith("this run")}
    rows = {r[0].split(" (")[0]: r for r in table("docs/results.md", "classifier, all 55,000 labels |")}
    assert set(trained) <= set(rows)
    for name, record in trained.items():
        for key, cell in zip(("val_accuracy", "test_accuracy", "test_macro_f1"), rows[name][1:4], strict=True):
            value = record.get(key)
            if value is None and record["source"] == "this run (K100_D64_all_frozen)":
                value = metrics.get(key)  # the published classifier's own record (older comparisons lack the F1)
            if cell == "–":
                assert value is None or value != value, (name, key, "published but not shown")
            else:
                assert shown(value, cell) == cell, (name, key, cell)


def glance() -> str:
    """The README's "Results at a glance" section, lines joined (a number may sit at a line break), bold marks
    removed."""
    text = (REPO / "README.md").read_text()
    section = text.split("## Results at a glance", 1)[1].split("\n## ", 1)[0]
    return " ".join(section.replace("**", "").split())


def test_the_results_at_a_glance_are_the_published_numbers():
    """The grid's, the prior's, the codec's and the OOD flag's numbers in the README's summary, each formatted as
    the README shows it from the published file it cites."""
    text = glance()
    best = json.loads((PUBLISHED / "grid" / "best.json").read_text())
    generation = json.loads((PUBLISHED / "prior" / "generation.json").read_text())
    bits = {r["model"]: r["bits_per_image"] for r in generation["likelihood"]}
    frechet = {r["set"]: r["frechet_distance"] for r in generation["frechet"]}
    (recognised,) = [r["prior samples"] for r in generation["class_accuracy"] if r["class"] == "all"]
    cas = {r["trained on"]: r["test_accuracy"] for r in generation["cas"]}
    codec = pd.read_csv(PUBLISHED / "codec" / "rate_distortion.csv")
    vq = codec[codec.setting == "K50_D64_transformer_cond"].iloc[0]

    def cheapest(name):
        """The codec's cheapest quality at least as sharp as the K50_D64 code (the README's comparison)."""
        rows = codec[(codec.codec == name) & (codec.psnr >= vq.psnr)]
        return rows.loc[rows.payload_bits_per_image.idxmin()]

    webp, jpeg = cheapest("WEBP"), cheapest("JPEG")
    ood = pd.read_csv(PUBLISHED / "ood" / "ood_eval.csv").set_index("set")
    auroc = lambda name: ood.loc[[s for s in ood.index if s.startswith(name)][0], "auroc_detector"]  # noqa: E731
    expected = [
        f"MSE {best['test_mse']:.5f}, PSNR {best['test_psnr']:.2f} dB",
        f"({best['test_psnr_mean_per_image']:.2f} dB as the mean of per-image PSNRs)",
        f"perplexity {best['test_perplexity']:.1f} of 100 codes",
        f"{bits['prior without a class']:.0f} bits per test image without its class",
        f"{bits['prior without a class'] / bits['per-position model']:.1%} of the per-position model's "
        f"{bits['per-position model']:.0f}",
        f"(test accuracy {cas['real training images']:.1%})",
        f"Fréchet distance {frechet['prior samples']:.1f} from the validation images",
        f"(per-position samples {frechet['per-position samples']:.1f}, two real sets {frechet['real test images']:.1f})",
        f"names the class of {recognised:.1%} of them",
        f"reaches {cas['prior samples']:.1%} on the real test set ({cas['real training images']:.1%} on real images)",
        f"codes a test image in {vq.bits_per_image:.1f} bits at {vq.psnr:.2f} dB",
        f"WebP needs {webp.payload_bits_per_image:,.1f} bits without its header ({webp.bits_per_image:,.1f} with it) "
        f"for {webp.psnr:.2f} dB",
        f"JPEG {jpeg.payload_bits_per_image:,.1f} for {jpeg.psnr:.2f} dB",
        f"flags {ood.loc['FashionMNIST test', 'flagged']:.1%} of the test set",
        f"handwritten digits (AUROC {auroc('digits'):.3f}), printed glyphs ({auroc('glyphs'):.3f}), "
        f"blank ({auroc('blank'):.3f}) or inverted ({auroc('inverted'):.3f})",
        f"Mahalanobis on the code does better on digits ({ood.loc[ood.index.str.startswith('digits')].auroc_mahalanobis.iloc[0]:.3f})",
    ]
    missing = [e for e in expected if e not in text]
    assert not missing, f"the README's summary does not show: {missing}"


def test_the_classifier_and_few_label_summaries_are_the_published_numbers():
    """The README's classifier and few-labels bullets: the test accuracies of notebook 03's two classifiers and the
    benchmark CNN, the head's and the pixel ConvNet's mean at 10 and 100 labels per class, and the points between
    them (from the unrounded means) at 1,000 and all labels, and the paired interval of the gap at 10."""
    text = glance()
    folder = PUBLISHED / "classifier" / "K100_D64_all_frozen"
    comparison = {r["classifier"]: r for r in json.loads((folder / "metrics.json").read_text())["comparison"]}
    frame = label_efficiency_rows()
    means = frame.groupby(["labels_per_class", "method"]).test_acc.mean().unstack()
    head, cnn = means["vq_head"], means["pixel_convnet"]
    (benchmark,) = [r for name, r in comparison.items() if name.endswith("(Fashion-MNIST benchmark)")]
    gap = lambda count: abs(cnn[count] - head[count]) * 100  # noqa: E731
    expected = [
        f"the head on the frozen code reaches {comparison['head on the frozen code']['test_accuracy']:.2%}",
        f"the encoder fine-tuned {comparison['fine-tuned encoder + head']['test_accuracy']:.2%}",
        f"a small CNN on pixels reaches {benchmark['test_accuracy']:.1%}",
        f"the head on the code reaches {head[10]:.1%} and a CNN trained from scratch on pixels {cnn[10]:.1%}",
        f"({head[100]:.1%} and {cnn[100]:.1%})",
        f"the CNN leads by {gap(1000):.1f} and {gap(5500):.1f} points",
    ]
    at_10 = paired_differences(frame).set_index(["labels_per_class", "method"]).loc[(10, "pixel_convnet")]
    expected.append(f"(paired 95% interval {100 * at_10.low:.1f} to {100 * at_10.high:+.1f} points)".replace("-", "−"))
    missing = [e for e in expected if e not in text]
    assert not missing, f"the README's summary does not show: {missing}"


def test_the_learning_rate_comparison_is_the_published_one():
    """The cosine-against-constant table of the results (each seed's value, the paired difference with its interval
    and the verdict) and the README's sentence on it."""
    runs = pd.read_csv(PUBLISHED / "lr_schedule" / "summary.csv")
    comparison = pd.read_csv(PUBLISHED / "lr_schedule" / "comparison.csv").set_index("metric")
    rows = table("docs/results.md", "K100_D64, validation | seed 0 |")
    assert len(rows) == 4
    for label, *seeds, difference, verdict in rows:
        metric = "val_mse" if label.startswith("MSE") else "val_perplexity"
        schedule = "cosine" if label.endswith("cosine") else "constant"
        values = runs[runs.schedule == schedule].sort_values("seed")[metric]
        assert [shown(v, c) for v, c in zip(values, seeds, strict=True)] == seeds, label
        if schedule == "cosine":
            row = comparison.loc[metric]
            mean, low, high = re.findall(r"[−+-]?\d+\.\d+", difference)
            for value, cell in ((row.mean_difference, mean), (row.ci_low, low), (row.ci_high, high)):
                cell = cell.replace("−", "-").lstrip("+")
                assert shown(value, cell) == cell, (label, difference)
            assert verdict == row.verdict, label
    row = comparison.loc["val_mse"]
    sentence = (
        f"validation MSE by {row.mean_difference:.7f} over {row.seeds} seeds (interval {row.ci_low:.7f} to "
        f"+{row.ci_high:.7f}): {row.verdict}"
    ).replace("-", "−")
    assert sentence in glance()


def test_the_paired_differences_of_the_results_are_the_published_ones():
    """The label-efficiency bullets of the results quote paired differences (points, the mean over seeds with its 95%
    interval); each is recomputed from the published rows with `paired_differences`."""
    paired = paired_differences(label_efficiency_rows(), reference=None).set_index(
        ["labels_per_class", "method", "reference"]
    )

    def quoted(method: str, reference: str, count: int, sign: int = 1, digits: int = 2) -> tuple[str, str, str]:
        """Mean, low and high of `method` − `reference` in points (`sign` -1: reference − method), signed."""
        row = paired.loc[(count, method, reference)]
        low, high = sorted((sign * row.low * 100, sign * row.high * 100))
        return f"{sign * row.mean_difference * 100:+.2f}", f"{low:+.{digits}f}", f"{high:+.{digits}f}"

    text = " ".join((REPO / "docs" / "results.md").read_text().split()).replace("−", "-")
    mean, low, high = quoted("pixel_convnet", "vq_head", 10, digits=1)
    expected = [f"{mean.lstrip('+')} at 10 labels per class (interval {low} to {high}"]
    for method, reference, count, label in (
        ("pixel_convnet", "vq_head", 100, "100"),
        ("pixel_convnet", "vq_head", 1000, "1,000"),
        ("z_linear", "vq_linear", 10, "10"),
        ("z_linear", "vq_linear", 100, "100"),
        ("z_linear", "vq_linear", 1000, "1,000"),
    ):
        mean, low, high = quoted(method, reference, count)
        expected.append(f"{mean} at {label} ({low} to {high}")
    mean, low, high = quoted("vq_linear", "vq_head", 1000, sign=-1)
    expected.append(f"{mean.lstrip('+')} points ahead at 1,000 (interval {low} to {high})")
    missing = [e for e in expected if e not in text]
    assert not missing, f"docs/results.md does not show: {missing}"
