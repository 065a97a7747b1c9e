"""Every reader of outside data, fuzzed: each bad input ends in a VqlibError, never another exception.

Property-based tests with Hypothesis over the IDX reader (gzip and raw), the photo
loader, the checkpoint loader, the readers of the project's own result files
(metrics.json, run.json, best.json) and the CLI's option parsing: random bytes,
truncations, bit flips, headers that promise more than the file holds, absurd
sizes, wrong dtypes. Then a corpus of crafted bad files (tests/corpus/, the
decompression bomb included) through the CLI.

Deterministic (derandomize, no example database) and sized for `make test`;
`make fuzz` runs the same properties with VQLIB_FUZZ_SCALE=50 times the examples.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import json
import os
import shutil
import struct
import subprocess
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vqlib import checkpoints, classify, data, grid, infer
from vqlib.cli import build_parser, config_from_args, main
from vqlib.config import TrainConfig, VQVAEConfig
from vqlib.errors import CheckpointError, ConfigError, DataError, ResultFileError, VqlibError
from vqlib.files import read_json

from .conftest import VQLIB

CORPUS = Path(__file__).resolve().parent / "corpus"
TINY_CLASSIFIER = CORPUS / "tiny-classifier.pt"
SCALE = int(os.environ.get("VQLIB_FUZZ_SCALE", "1"))


def fuzz(examples: int, deadline_ms: int = 2000):
    """Hypothesis settings: `examples` x VQLIB_FUZZ_SCALE examples, the same ones on every run."""
    return settings(
        max_examples=examples * SCALE,
        derandomize=True,
        database=None,
        deadline=deadline_ms,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
    )


def one_line(error: VqlibError) -> None:
    """A VqlibError is one sentence: the CLI prints it on one line."""
    text = str(error)
    assert text and "\n" not in text and "Traceback" not in text, text


def flip_bits(blob: bytes, positions: list[int]) -> bytes:
    out = bytearray(blob)
    for p in positions:
        if out:
            out[(p // 8) % len(out)] ^= 1 << (p % 8)
    return bytes(out)


def idx_bytes(magic: int, dims: tuple[int, ...], payload: bytes) -> bytes:
    return struct.pack(f">I{len(dims)}I", magic, *dims) + payload


VALID_IDX = idx_bytes(0x803, (3, 28, 28), bytes(range(256)) * 9 + bytes(48))
mutations = st.lists(st.integers(0, 10**6), min_size=1, max_size=8)


# ----------------------------------------------------------------------------- IDX files


def _read_idx_or_data_error(path: Path):
    try:
        array = data.read_idx(path)
    except DataError as exc:
        one_line(exc)
        return None
    assert array.dtype == np.uint8 and array.ndim in (1, 3)
    return array


@fuzz(150)
@given(blob=st.binary(max_size=4096), compressed=st.booleans())
def test_idx_reader_on_random_bytes(tmp_path_factory, blob, compressed):
    path = tmp_path_factory.mktemp("idx") / "x-idx3-ubyte"
    path.write_bytes(gzip.compress(blob, mtime=0) if compressed else blob)
    _read_idx_or_data_error(path)


@fuzz(150)
@given(
    magic=st.sampled_from([0x801, 0x803, 0x802, 0x804, 0xD03, 0x903, 0x0B01, 0x1F8B0803, 0xFFFFFFFF]),
    dims=st.lists(st.one_of(st.integers(0, 40), st.integers(0, 2**32 - 1)), min_size=3, max_size=3),
    payload=st.integers(0, 5000),
    compressed=st.booleans(),
)
def test_idx_header_never_allocates_what_it_promises(tmp_path_factory, magic, dims, payload, compressed):
    """Headers promising up to 2^32 images of 2^32 x 2^32 pixels: refused after reading what the file holds."""
    blob = idx_bytes(magic, tuple(dims if magic & 0xFF == 3 else dims[:1]), bytes(payload))
    path = tmp_path_factory.mktemp("idx") / "h-idx3-ubyte"
    path.write_bytes(gzip.compress(blob, mtime=0) if compressed else blob)
    tracemalloc.start()
    try:
        array = _read_idx_or_data_error(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * len(blob) + (2 << 20)  # what the file holds (and a chunk), not what the header claims
    if array is not None:
        assert array.size == payload


@fuzz(150)
@given(flips=mutations, cut=st.integers(0, len(VALID_IDX)), compressed=st.booleans())
def test_idx_reader_on_bit_flips_and_truncations(tmp_path_factory, flips, cut, compressed):
    blob = gzip.compress(VALID_IDX, mtime=0) if compressed else VALID_IDX
    path = tmp_path_factory.mktemp("idx") / "f-idx3-ubyte"
    path.write_bytes(flip_bits(blob, flips)[: max(cut, 1) if cut < len(blob) else None])
    _read_idx_or_data_error(path)


# ----------------------------------------------------------------------------- photos


def _photo(fmt: str, mode: str, size: tuple[int, int]) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(size[0] * 31 + size[1])
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    image = Image.fromarray(pixels).convert(mode if not (fmt == "JPEG" and mode in ("RGBA", "P", "LA")) else "RGB")
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


PHOTO_FORMATS = {"PNG": ".png", "JPEG": ".jpg", "GIF": ".gif", "BMP": ".bmp", "TIFF": ".tif", "WEBP": ".webp"}


def _load_or_data_error(path: Path):
    try:
        images, names = infer.load_images([path])
    except DataError as exc:
        one_line(exc)
        return
    assert images.dtype == torch.uint8 and images.shape[1:] == (28, 28) and len(names) == len(images)


@fuzz(120)
@given(blob=st.binary(max_size=3000), suffix=st.sampled_from([*PHOTO_FORMATS.values(), ".gz", ""]))
def test_photo_loader_on_random_bytes(tmp_path_factory, blob, suffix):
    path = tmp_path_factory.mktemp("photo") / f"p{suffix}"
    path.write_bytes(blob)
    _load_or_data_error(path)


@fuzz(150, deadline_ms=5000)
@given(
    fmt=st.sampled_from(list(PHOTO_FORMATS)),
    mode=st.sampled_from(["L", "RGB", "RGBA", "P", "1", "LA", "I", "F"]),
    size=st.tuples(st.integers(1, 40), st.integers(1, 40)),
    flips=mutations,
    cut=st.floats(0.05, 1.0),
)
def test_photo_loader_on_damaged_real_images(tmp_path_factory, fmt, mode, size, flips, cut):
    """Real photos of every format and mode Pillow writes, with bits flipped and the end cut off."""
    try:
        blob = _photo(fmt, mode, size)
    except (OSError, ValueError, KeyError):
        return  # this format cannot hold this mode: nothing to fuzz
    damaged = flip_bits(blob, flips)[: max(1, int(len(blob) * cut))]
    path = tmp_path_factory.mktemp("photo") / f"p{PHOTO_FORMATS[fmt]}"
    path.write_bytes(damaged)
    _load_or_data_error(path)


@pytest.mark.parametrize("fmt", list(PHOTO_FORMATS))
def test_undamaged_photos_of_every_format_load(tmp_path, fmt):
    """The property above must not pass by refusing everything."""
    path = tmp_path / f"ok{PHOTO_FORMATS[fmt]}"
    path.write_bytes(_photo(fmt, "RGB", (33, 21)))
    images, _ = infer.load_images([path])
    assert images.shape == (1, 28, 28)


# ----------------------------------------------------------------------------- checkpoints


def _load_classifier_or_checkpoint_error(path: Path):
    try:
        model, _ = classify.load_classifier(path)
    except CheckpointError as exc:
        one_line(exc)
        return None
    return model


@fuzz(60)
@given(flips=mutations, cut=st.floats(0.0, 1.0))
def test_checkpoint_loader_on_bit_flips_and_truncations(tmp_path_factory, flips, cut):
    blob = TINY_CLASSIFIER.read_bytes()
    path = tmp_path_factory.mktemp("ckpt") / "c.pt"
    path.write_bytes(flip_bits(blob, flips)[: int(len(blob) * cut) or None])
    _load_classifier_or_checkpoint_error(path)


@fuzz(60)
@given(blob=st.binary(max_size=2000))
def test_checkpoint_loader_on_random_bytes(tmp_path_factory, blob):
    path = tmp_path_factory.mktemp("ckpt") / "r.pt"
    path.write_bytes(blob)
    _load_classifier_or_checkpoint_error(path)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8,
)
tensors = st.builds(
    lambda shape, dtype: torch.zeros(shape, dtype=dtype),
    st.lists(st.integers(0, 5), max_size=3),
    st.sampled_from([torch.float32, torch.float64, torch.int64, torch.uint8, torch.bool, torch.complex64]),
)


@fuzz(80)
@given(
    key=st.sampled_from(["kind", "format_version", "model_config", "vqvae_config", "state_dict", "vqvae_checkpoint"]),
    value=json_values | tensors,
    field=st.sampled_from([f.name for f in dataclasses.fields(VQVAEConfig)]),
    field_value=json_values,
    tensor_name=st.integers(0, 40),
    tensor=tensors | json_values,
)
def test_checkpoint_loader_on_wrong_types_and_shapes(
    tmp_path_factory, key, value, field, field_value, tensor_name, tensor
):
    """Checkpoints that load (weights_only) but hold wrong types in their config, wrong shapes or dtypes in their
    state_dict, or a wrong value in any top-level key."""
    ckpt = torch.load(TINY_CLASSIFIER, weights_only=True)
    folder = tmp_path_factory.mktemp("ckpt")
    variants = []
    variants.append({**ckpt, key: value})
    variants.append({**ckpt, "vqvae_config": {**ckpt["vqvae_config"], field: field_value}})
    names = sorted(ckpt["state_dict"])
    variants.append({**ckpt, "state_dict": {**ckpt["state_dict"], names[tensor_name % len(names)]: tensor}})
    for i, variant in enumerate(variants):
        torch.save(variant, folder / f"v{i}.pt")
        model = _load_classifier_or_checkpoint_error(folder / f"v{i}.pt")
        if model is not None:
            assert infer.predict(model, torch.zeros(1, 28, 28, dtype=torch.uint8)).shape == (1, 10)


# ----------------------------------------------------------------------------- the project's own result files


@fuzz(100)
@given(blob=st.binary(max_size=500) | json_values.map(lambda v: json.dumps(v).encode()))
def test_result_file_readers(tmp_path_factory, blob):
    """metrics.json / run.json (collect_grid, is_complete), best.json (read_best) and read_json itself."""
    root = tmp_path_factory.mktemp("grid")
    run = root / "K25_D16"
    run.mkdir()
    for name in ("metrics.json", "run.json", "best.json"):
        (run / name).write_bytes(blob)
    shutil.copy(run / "best.json", root / "best.json")
    try:
        read_json(run / "metrics.json")
    except ResultFileError as exc:
        one_line(exc)
    try:
        best = checkpoints.read_best(root)
        assert isinstance(best["checkpoint"], str)
    except CheckpointError as exc:
        one_line(exc)
    frame = grid.collect_grid(root)  # a broken record is a run not done, never an exception
    assert len(frame) == 1 and frame["val_mse"].dtype.kind in "iuf"  # numbers, never strings or lists
    parameters = grid.grid_parameters(25, 16)
    assert grid.is_complete(run, parameters) is False


# ----------------------------------------------------------------------------- the CLI's option parsing

OPTION_VALUES = st.sampled_from(
    ["0", "-1", "1", "3", "1e9", "nan", "inf", "-inf", "1.5", "abc", "", "none", "all", "auto", "cuda", "x" * 50]
)
TRAIN_OPTIONS = [
    "--" + f.name.replace("_", "-") for cls in (VQVAEConfig, TrainConfig) for f in dataclasses.fields(cls)
] + ["--bogus", "--resume", "--no-channels-last"]


@fuzz(150, deadline_ms=3000)
@given(pairs=st.lists(st.tuples(st.sampled_from(TRAIN_OPTIONS), OPTION_VALUES), max_size=5))
def test_cli_options_parse_into_a_config_or_one_sentence(pairs, capsys):
    """Parsing `vqlib train-vqvae` options ends in a valid config, or exit 2 with one line, or a ConfigError."""
    capsys.readouterr()  # the fixture lives across examples: start each with nothing captured
    argv = ["train-vqvae"] + [part for option, value in pairs for part in (option, value)]
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        err = capsys.readouterr().err
        assert exc.code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
        return
    try:
        config_from_args(VQVAEConfig, args), config_from_args(TrainConfig, args)
    except ConfigError as exc:
        one_line(exc)


@fuzz(40, deadline_ms=3000)
@given(argv=st.lists(OPTION_VALUES | st.sampled_from(["--checkpoint", "--output", "--invert", "--device"]), max_size=6))
def test_cli_infer_cls_arguments(argv, capsys, tmp_path_factory):
    """`vqlib infer-cls` with arbitrary arguments and the tiny classifier: exit 0, or exit 2 with one line."""
    capsys.readouterr()
    os.chdir(tmp_path_factory.mktemp("cwd"))
    try:
        code = main(["infer-cls", "--checkpoint", str(TINY_CLASSIFIER), "--device", "cpu", *argv])
    except SystemExit as exc:  # argparse's own exit: our parser makes its message one line too
        code = exc.code
    err = capsys.readouterr().err
    assert code in (0, 2) and "Traceback" not in err
    if code == 2 and err:
        assert len(err.strip().splitlines()) == 1, err


# ----------------------------------------------------------------------------- the crafted corpus, through the CLI

# (file, command) -> a phrase of the one-sentence error
INPUT_CASES = {
    "bomb_16000x16000.png": "decompression bomb",
    "truncated-idx3-ubyte.gz": "not a readable gzip file",
    "truncated-content-idx3-ubyte.gz": "truncated or corrupt",
    "promises-1e9-images-idx3-ubyte": "promises",
    "promises-1e9-images-idx3-ubyte.gz": "promises",
    "promises-4e9-pixels-each-idx3-ubyte.gz": "promises",
    "zero-pixel-images-idx3-ubyte.gz": "at least one pixel",
    "no-images-idx3-ubyte.gz": "holds no image",
    "wrong-magic-idx3-ubyte.gz": "not an IDX file",
    "float32-idx3-ubyte.gz": "IDX file of float32",
    "labels-not-images-idx1-ubyte.gz": "a file of images",
    "header-only-idx3-ubyte": "too short",
    "gzip-bomb-idx3-ubyte.gz": "more than 7856 bytes",
    "not-gzip.gz": "not an IDX file",
    "gzip-then-garbage-idx3-ubyte.gz": "not a readable gzip file",
    "empty.png": "neither an IDX file nor an image",
    "text.png": "neither an IDX file nor an image",
    "truncated.png": "neither an IDX file nor an image",
    "truncated.jpg": "neither an IDX file nor an image",
    "png-header-only.png": "neither an IDX file nor an image",
}
CHECKPOINT_CASES = {
    "code-running-global.pt": "refuses to run",
    "random-bytes.pt": "not a readable checkpoint",
    "truncated.pt": "not a readable checkpoint",
    "list.pt": "not a vqlib checkpoint",
    "wrong-kind.pt": "a classifier checkpoint is needed",
    "wrong-shape-state-dict.pt": "head.classifier.5.weight is (3, 3)",
    "integer-weights.pt": "torch.int64",
    "nan-weights.pt": "NaN or infinite",
    "string-in-state-dict.pt": "head.classifier.5.weight is str",
    "state-dict-is-a-list.pt": "state_dict is not a dict",
    "config-wrong-types.pt": "impossible VQ-VAE config",
    "config-is-a-list.pt": "not a dict",
    "config-absurd-size.pt": "impossible classifier config",
    "format-version-string.pt": "checkpoint format one",
}
# Files of results/grid/ (under VQLIB_ROOT) and the command that reads them.
RESULT_CASES = {
    "list.json": "names no VQ-VAE checkpoint",
    "corrupt.json": "not valid JSON",
    "nested.json": "nested too deeply",
    "latin1.json": "not valid JSON",
    "best-without-checkpoint.json": "names no VQ-VAE checkpoint",
}


def _assert_one_sentence(code: int, err: str, phrase: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert phrase in err, err


@pytest.mark.parametrize("name", sorted(INPUT_CASES))
def test_corpus_inputs_to_infer_cls(name, capsys):
    tracemalloc.start()
    try:
        code = main(["infer-cls", "--checkpoint", str(TINY_CLASSIFIER), str(CORPUS / name), "--device", "cpu"])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    _assert_one_sentence(code, capsys.readouterr().err, INPUT_CASES[name])
    assert peak < 64 << 20, f"{name} made the reader hold {peak >> 20} MB"


@pytest.mark.parametrize("name", sorted(CHECKPOINT_CASES))
def test_corpus_checkpoints_to_infer_cls(name, capsys, tmp_path):
    code = main(["infer-cls", "--checkpoint", str(CORPUS / name), str(CORPUS / "text.png"), "--device", "cpu"])
    _assert_one_sentence(code, capsys.readouterr().err, CHECKPOINT_CASES[name])


@pytest.mark.parametrize("name", sorted(RESULT_CASES))
def test_corpus_best_json_to_ood_eval(name, capsys, project):
    (project / "results" / "grid").mkdir(parents=True)
    shutil.copy(CORPUS / name, project / "results" / "grid" / "best.json")
    code = main(["ood-eval"])
    _assert_one_sentence(code, capsys.readouterr().err, RESULT_CASES[name])


def test_corpus_through_the_console_script(tmp_path, cli_env):
    """The real console script in subprocesses (run at once): exit code 2, one line on stderr, no traceback."""
    (tmp_path / "results" / "grid").mkdir(parents=True)
    shutil.copy(CORPUS / "nested.json", tmp_path / "results" / "grid" / "best.json")
    tiny = ["infer-cls", "--device", "cpu", "--checkpoint"]
    runs = {
        "bomb_16000x16000.png": tiny + [str(TINY_CLASSIFIER), str(CORPUS / "bomb_16000x16000.png")],
        "promises-1e9-images-idx3-ubyte.gz": tiny
        + [str(TINY_CLASSIFIER), str(CORPUS / "promises-1e9-images-idx3-ubyte.gz")],
        "code-running-global.pt": tiny + [str(CORPUS / "code-running-global.pt"), str(CORPUS / "text.png")],
        "nested.json": ["ood-eval"],
        "bad option": ["infer-cls", "--checkpoint", str(TINY_CLASSIFIER), "--device", "tpu", "x.png"],
    }
    procs = {
        name: subprocess.Popen(VQLIB + argv, env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name, argv in runs.items()
    }
    phrases = {**INPUT_CASES, **CHECKPOINT_CASES, **RESULT_CASES, "bad option": "invalid choice: 'tpu'"}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        _assert_one_sentence(proc.returncode, err, phrases[name])
        assert "ran code" not in out + err


def test_a_checkpoint_that_passes_every_check_still_loads():
    """The refusals above must not come from refusing everything."""
    model, ckpt = classify.load_classifier(TINY_CLASSIFIER)
    assert ckpt["kind"] == "classifier" and infer.predict(model, torch.zeros(2, 28, 28, dtype=torch.uint8)).shape == (
        2,
        10,
    )


def test_a_header_promising_a_billion_images_costs_what_the_file_holds():
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match="promises"):
            data.read_idx(CORPUS / "promises-1e9-images-idx3-ubyte.gz")
        with pytest.raises(DataError, match="more than 7856 bytes"):
            data.read_idx(CORPUS / "gzip-bomb-idx3-ubyte.gz")  # 51 kB that inflate to 50 MB
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20
