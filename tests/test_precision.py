"""Precision (fp32 / bf16): detected from the CPU, decided in vqlib.device, recorded in every checkpoint.

The machine that runs these tests may or may not have native bf16 units; the
rules are checked against what /proc/cpuinfo says, and the forced-bf16 runs
are tiny because emulated bf16 is slow (about 1 GFLOP/s).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from vqlib import device as vqdevice
from vqlib.checkpoints import checkpoint_precision, load_checkpoint, load_vqvae, save_checkpoint
from vqlib.cli import main
from vqlib.config import TrainConfig, VQVAEConfig, from_dict, with_defaults
from vqlib.device import BF16_CPU_FLAGS, autocast, cpu_flags, native_bf16_cpu, resolve_precision
from vqlib.errors import CheckpointError, ConfigError
from vqlib.models.quantizer import VectorQuantizer
from vqlib.train import read_last, record_vqvae_run, train_vqvae

from .conftest import REPO

TINY = VQVAEConfig(num_embeddings=16, embedding_dim=8, hidden_channels=16, residual_channels=8, num_residual_blocks=1)
FALLBACK = "precision: fp32 (this CPU has no native bfloat16 units: no avx512_bf16 or amx_bf16)"


@pytest.fixture
def fresh_notices(monkeypatch):
    """Each notice prints once per process: forget those printed by earlier tests."""
    monkeypatch.setattr(vqdevice, "_NOTICES", set())


@pytest.fixture
def small_val(data):
    """The real data with 500 validation images: validation runs every epoch, in fp32."""
    return dataclasses.replace(data, val_images=data.val_images[:500], val_labels=data.val_labels[:500])


def test_detection_agrees_with_proc_cpuinfo():
    flags = cpu_flags()
    if flags is None:
        pytest.skip("no /proc/cpuinfo on this system")
    assert native_bf16_cpu() == bool(flags & set(BF16_CPU_FLAGS))


def test_resolve_precision_rules():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_precision("auto", cpu) == ("bf16" if native_bf16_cpu() else "fp32")
    assert resolve_precision("auto", cuda) == "bf16"
    for explicit in ("fp32", "bf16"):
        assert resolve_precision(explicit, cpu) == explicit and resolve_precision(explicit, cuda) == explicit
    # Resuming: auto keeps the run's precision, whatever this machine would choose; the same one is fine.
    assert resolve_precision("auto", cpu, recorded="bf16") == "bf16"
    assert resolve_precision("auto", cuda, recorded="fp32") == "fp32"
    assert resolve_precision("fp32", cpu, recorded="fp32") == "fp32"
    with pytest.raises(ConfigError, match="trained in fp32 and cannot continue in bf16"):
        resolve_precision("bf16", cpu, recorded="fp32")
    with pytest.raises(ConfigError, match="precision must be one of auto, fp32, bf16"):
        resolve_precision("fp16", cpu)
    with pytest.raises(ConfigError):
        autocast("auto", cpu)  # autocast takes a resolved precision only


def test_the_fallback_and_the_forced_bf16_say_so_once(fresh_notices, capsys):
    resolve_precision("auto", "cpu")
    resolve_precision("auto", "cpu")
    resolve_precision("auto", "cuda")  # CUDA: bf16, nothing to say
    lines = capsys.readouterr().out.splitlines()
    assert lines == ([] if native_bf16_cpu() else [FALLBACK])
    resolve_precision("bf16", "cpu")
    resolve_precision("bf16", "cpu")
    lines = capsys.readouterr().out.splitlines()
    if native_bf16_cpu():
        assert lines == []
    else:
        assert len(lines) == 1 and "bf16 as asked" in lines[0] and "slower than fp32" in lines[0]


def test_quantizer_stays_fp32_under_bf16_autocast():
    """Well-separated codes: bf16 encoder outputs pick the codes fp32 ones pick, through fp32 distances and loss."""
    torch.manual_seed(0)
    quantizer = VectorQuantizer(8, 4, codebook_update="ema", init="uniform").eval()
    with torch.no_grad():
        quantizer.codebook.copy_(torch.randn(8, 4) * 4)
    chosen = torch.randint(8, (2, 3, 3))
    z = quantizer.codebook[chosen].permute(0, 3, 1, 2) + 0.01 * torch.randn(2, 4, 3, 3)
    conv = torch.nn.Conv2d(4, 4, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.eye(4)[:, :, None, None])
    reference = quantizer(conv(z))
    with autocast("bf16", "cpu"):
        mixed_input = conv(z)
        mixed = quantizer(mixed_input)
    assert mixed_input.dtype == torch.bfloat16  # the conv did run in bf16
    assert mixed.loss.dtype == torch.float32 and mixed.perplexity.dtype == torch.float32
    assert mixed.indices.dtype == torch.int64
    assert torch.equal(mixed.indices, reference.indices) and torch.equal(mixed.indices, chosen)
    assert quantizer.codebook.dtype == torch.float32


def test_a_tiny_bf16_run_records_bf16_and_keeps_fp32_state(small_val, tmp_path):
    run = train_vqvae(
        TINY,
        TrainConfig(
            epochs=1, batch_size=32, train_subset=32, precision="bf16", device="cpu", checkpoint_dir=str(tmp_path)
        ),
        small_val,
        progress=False,
    )
    assert run.precision == "bf16"
    assert [row["precision"] for row in run.history] == ["bf16"]
    assert all(isinstance(run.history[0][k], float) for k in ("train_mse", "train_vq_loss", "val_mse"))
    for name in ("best.pt", "last.pt"):
        ckpt = load_checkpoint(tmp_path / name, kind="vqvae")
        assert ckpt["precision"] == "bf16" and ckpt["train_config"]["precision"] == "bf16"
        # Weights, the codebook, its EMA statistics and Adam's moments stay fp32.
        assert all(v.dtype == torch.float32 for v in ckpt["state_dict"].values() if v.is_floating_point())
    adam = load_checkpoint(tmp_path / "last.pt")["optimizer"]["state"]
    assert all(t.dtype == torch.float32 for s in adam.values() for k, t in s.items() if k != "step")
    assert record_vqvae_run(run, tmp_path / "results")["precision"] == "bf16"


def _train_args(folder, *extra):
    return [
        "train-vqvae",
        *("--num-embeddings", "16", "--embedding-dim", "8", "--hidden-channels", "16", "--residual-channels", "8"),
        *("--num-residual-blocks", "1", "--batch-size", "32", "--train-subset", "64", "--device", "cpu"),
        *("--checkpoint-dir", str(folder)),
        *extra,
    ]


def test_a_fp32_run_records_fp32_and_refuses_to_resume_in_bf16(project, tmp_path, capsys):
    folder = tmp_path / "run"
    assert main(_train_args(folder, "--epochs", "1", "--precision", "fp32")) == 0
    last = load_checkpoint(folder / "last.pt")
    assert last["precision"] == "fp32" and last["history"][0]["precision"] == "fp32"
    capsys.readouterr()
    assert main(_train_args(folder, "--epochs", "2", "--precision", "bf16", "--resume")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "was trained in fp32 and cannot continue in bf16" in err[0], err
    assert load_checkpoint(folder / "last.pt")["epoch"] == 1  # nothing was trained
    # auto keeps the run's own precision, whatever this CPU would choose for a new run.
    assert main(_train_args(folder, "--epochs", "2", "--precision", "auto", "--resume")) == 0
    history = load_checkpoint(folder / "last.pt")["history"]
    assert [row["precision"] for row in history] == ["fp32", "fp32"]


def test_old_checkpoints_without_the_field_are_fp32(small_val, tmp_path):
    published = REPO / "checkpoints" / "pretrained" / "K25_D16" / "best.pt"
    ckpt = load_checkpoint(published, kind="vqvae")
    assert "precision" not in ckpt and checkpoint_precision(ckpt, published) == "fp32"
    # Its config says amp (the option precision replaced): it still reads, as the same 'auto'.
    assert ckpt["train_config"]["amp"] == "auto"
    assert from_dict(TrainConfig, ckpt["train_config"]).precision == "auto"
    assert with_defaults(TrainConfig, {"amp": "on"})["precision"] == "bf16"
    assert from_dict(TrainConfig, {"amp": "off"}).precision == "fp32"

    # A last.pt written before precision was recorded resumes as fp32: bf16 is refused, fp32 and auto go on.
    config = TrainConfig(epochs=1, batch_size=32, train_subset=64, precision="fp32", device="cpu")
    train_vqvae(TINY, dataclasses.replace(config, checkpoint_dir=str(tmp_path)), small_val, progress=False)
    old = load_checkpoint(tmp_path / "last.pt")
    old.pop("precision")
    old["train_config"] = {
        ("amp" if k == "precision" else k): ("off" if k == "precision" else v) for k, v in old["train_config"].items()
    }
    save_checkpoint(
        tmp_path / "last.pt", "vqvae", {k: v for k, v in old.items() if k not in ("kind", "format_version")}
    )
    wanted = dataclasses.replace(config, checkpoint_dir=str(tmp_path), epochs=2)
    with pytest.raises(CheckpointError, match="trained in fp32 and cannot continue in bf16"):
        read_last(tmp_path / "last.pt", TINY, dataclasses.replace(wanted, precision="bf16"))
    assert read_last(tmp_path / "last.pt", TINY, dataclasses.replace(wanted, precision="auto"))["epoch"] == 1
    with pytest.raises(CheckpointError, match="records the precision"):
        checkpoint_precision({"precision": "fp16"}, "x.pt")


def test_the_classifier_records_its_precision_and_inference_runs_in_bf16(data, vqvae_checkpoint, tmp_path):
    from vqlib.classify import predict, train_classifier
    from vqlib.config import ClassifierConfig
    from vqlib.infer import reconstruct

    config = ClassifierConfig(
        vqvae_checkpoint=str(vqvae_checkpoint),
        labels_per_class=10,
        epochs=1,
        min_steps_per_epoch=2,
        precision="fp32",
        device="cpu",
        checkpoint_dir=str(tmp_path / "cls"),
        results_dir=str(tmp_path / "results"),
    )
    run = train_classifier(config, data, progress=False)
    assert run.precision == "fp32" and run.history[0]["precision"] == "fp32"
    assert load_checkpoint(tmp_path / "cls" / "best.pt")["precision"] == "fp32"
    with pytest.raises(CheckpointError, match="trained in fp32 and cannot continue in bf16"):
        train_classifier(dataclasses.replace(config, precision="bf16"), data, resume=True, progress=False)

    images = data.test_images[:8]
    fp32, bf16 = predict(run.model, images), predict(run.model, images, precision="bf16")
    assert bf16.dtype == torch.float32 and torch.allclose(bf16.sum(1), torch.ones(8))
    assert (bf16 - fp32).abs().max() < 0.1  # bf16 rounding, not another model
    recon = reconstruct(load_vqvae(vqvae_checkpoint)[0], images, precision="bf16")
    assert recon.dtype == torch.float32 and recon.shape == (8, 1, 28, 28)
