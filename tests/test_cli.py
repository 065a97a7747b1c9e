"""The `vqlib` command line on the real data: data, train-vqvae, infer-vqvae, and its error handling."""

from __future__ import annotations

import subprocess

import matplotlib.image as mpimg
import pytest

from vqlib.cli import main
from vqlib.files import read_json

from .conftest import VQLIB

TINY = [
    "--num-embeddings",
    "25",
    "--embedding-dim",
    "16",
    "--hidden-channels",
    "32",
    "--residual-channels",
    "16",
    "--num-residual-blocks",
    "1",
    "--epochs",
    "1",
    "--train-subset",
    "500",
    "--batch-size",
    "50",
]


def test_data_command_says_where_the_data_is(capsys):
    assert main(["data", "--no-download"]) == 0
    out = capsys.readouterr().out
    assert "FashionMNIST verified in" in out and "55000 train, 5000 validation, 10000 test" in out


def test_train_then_infer_on_a_tiny_subset(project, capsys):
    assert main(["train-vqvae", *TINY]) == 0
    out = capsys.readouterr().out
    assert "validation MSE" in out and "validation perplexity" in out
    ckpt = project / "checkpoints" / "vqvae" / "K25_D16" / "best.pt"
    assert ckpt.is_file()
    assert main(["infer-vqvae", "--checkpoint", str(ckpt), "--num-images", "10"]) == 0
    out = capsys.readouterr().out
    png = project / "results" / "vqvae" / "K25_D16" / "reconstructions.png"
    assert "test MSE" in out and str(png) in out
    image = mpimg.imread(png)
    assert image.shape[0] > 100 and image.shape[1] > 400  # two rows of ten images
    assert image[..., :3].std() > 0.1  # not a blank canvas
    metrics = read_json(png.with_suffix(".json"))
    assert metrics["split"] == "test" and 0 < metrics["mse"] < 0.2


@pytest.mark.parametrize(
    "args,message",
    [
        (["--num-embeddings", "0"], "num_embeddings must be an integer between 1 and 65536"),
        (["--num-embeddings", "70000"], "num_embeddings must be an integer between 1 and 65536"),
        (["--embedding-dim", "0"], "embedding_dim must be a positive integer"),
        (["--epochs", "0"], "epochs must be a positive integer"),
        (["--learning-rate", "0"], "learning_rate must be positive"),
        (["--learning-rate=-1e-3"], "learning_rate must be positive"),
        (["--batch-size", "0"], "batch_size must be a positive integer"),
        (["--train-subset", "100000"], "train_subset is 100000, but the split has only 55000"),
    ],
)
def test_impossible_hyperparameters_end_in_one_sentence(project, capsys, args, message):
    assert main(["train-vqvae", *args]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (project / "checkpoints").exists()  # refused before anything was written


def test_console_script_exit_code_and_debug_traceback(tmp_path, cli_env):
    bad = tmp_path / "not-a-checkpoint.pt"
    bad.write_text("hello")
    result = subprocess.run(
        VQLIB + ["infer-vqvae", "--checkpoint", str(bad)], env=cli_env, capture_output=True, text=True
    )
    assert result.returncode == 2
    assert result.stderr.startswith("vqlib infer-vqvae: error:") and "Traceback" not in result.stderr
    debug = subprocess.run(
        VQLIB + ["--debug", "infer-vqvae", "--checkpoint", str(bad)], env=cli_env, capture_output=True, text=True
    )
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "CheckpointError" in debug.stderr


def test_help_documents_every_hyperparameter(capsys):
    with pytest.raises(SystemExit):
        main(["train-vqvae", "--help"])
    out = capsys.readouterr().out
    for option in (
        "--num-embeddings",
        "--embedding-dim",
        "--hidden-channels",
        "--residual-channels",
        "--num-residual-blocks",
        "--beta",
        "--epochs",
        "--batch-size",
        "--learning-rate",
        "--seed",
        "--train-subset",
        "--device",
        "--resume",
        "--data-dir",
    ):
        assert option in out, option


def test_grid_options_override_only_what_they_name():
    """`vqlib grid`'s options start unset, so the profile keeps every setting not given."""
    from vqlib.cli import build_parser
    from vqlib.cli.study import _profile_overrides
    from vqlib.study import get_profile

    args = build_parser().parse_args(["grid", "--epochs", "3", "--jobs", "2", "--no-channels-last"])
    profile = _profile_overrides(args, get_profile(args.profile))
    assert profile["train"] == {**get_profile("quick")["train"], "epochs": 3, "channels_last": False}
    assert profile["grid"] == {"jobs": 2} and profile["vqvae"] == {}
    args = build_parser().parse_args(["grid", "--profile", "full"])
    assert _profile_overrides(args, get_profile("full")) == get_profile("full")


# ----------------------------------------------------------------------------- what a new user meets first


def test_version_is_the_packages(capsys):
    import importlib.metadata

    import vqlib

    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f"vqlib {vqlib.__version__}"
    # One source: pyproject reads vqlib.__version__ (the installed metadata says the same after `pip install -e .`).
    assert importlib.metadata.version("vqlib") == vqlib.__version__


def test_every_device_option_says_what_it_does_and_its_default():
    import argparse

    from vqlib.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    with_device = {}
    for name, sub in commands.items():
        for action in sub._actions:
            if "--device" in action.option_strings:
                with_device[name] = action.help or ""
    assert len(with_device) >= 5
    for name, text in with_device.items():
        assert "default:" in text and "cpu" in text, f"vqlib {name} --device: {text!r}"


def test_run_help_states_the_measured_time_of_the_quick_profile(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "about 14 minutes on a 2-core CPU" in out and "10 minutes" not in out


@pytest.fixture
def published_copy(project, monkeypatch):
    """A project root holding the published K100_D64 and its classifier, the way a fresh clone has them; the
    command runs from an unrelated folder."""
    import shutil

    from .conftest import REPO

    for name in ("K100_D64", "K100_D64_all_frozen"):
        shutil.copytree(REPO / "checkpoints" / "pretrained" / name, project / "checkpoints" / "pretrained" / name)
    elsewhere = project / "somewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    return project


def test_infer_vqvae_names_its_folder_after_the_run(published_copy, capsys):
    assert main(["infer-vqvae", "--checkpoint", "pretrained:K100_D64", "--num-images", "2"]) == 0
    assert (published_copy / "results" / "vqvae" / "K100_D64" / "reconstructions.png").is_file()
    assert not (published_copy / "results" / "vqvae" / "somewhere").exists()
    assert "PSNR" in capsys.readouterr().out


def test_an_unknown_pretrained_vqvae_offers_only_vqvaes(published_copy, capsys):
    assert main(["infer-vqvae", "--checkpoint", "pretrained:NOPE"]) == 2
    err = capsys.readouterr().err
    assert "no pretrained VQ-VAE checkpoint 'NOPE'; the published ones are pretrained:K100_D64" in err
    assert "K100_D64_all_frozen" not in err and len(err.strip().splitlines()) == 1


def test_publish_on_a_fresh_clone_says_once_that_there_is_nothing_new(project, capsys):
    assert main(["publish"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("nothing new to publish: results/grid holds no finished grid run")


def test_the_command_list_and_a_mistyped_command_answer_without_torch():
    """`vqlib --help` configures no command's options, so it imports neither torch nor pandas; a command's own
    --help still lists every option."""
    code = (
        "import sys\n"
        "from vqlib.cli import main\n"
        "for argv in (['--help'], ['trian-vqvae']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print(sorted(m for m in ('torch', 'pandas', 'matplotlib') if m in sys.modules))\n"
    )
    done = subprocess.run([VQLIB[0], "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip().splitlines()[-1] == "[]"
    assert "invalid choice: 'trian-vqvae'" in done.stderr and "train-vqvae" in done.stdout
    ablation = subprocess.run([*VQLIB, "ablation", "--help"], capture_output=True, text=True, check=True).stdout
    assert "ema+kmeans+restarts" in ablation and "--restart-thresholds" in ablation
