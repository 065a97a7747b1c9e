"""The speed switches change nothing but speed, and the benchmark runs (smoke mode) and writes its keys.

The fast paths (channels-last, the fused Adam of `make_optimizer`, the
`train_step` the loop runs) are compared with a plain NCHW step written here,
on real images: same codes chosen, same losses and weights within float
tolerance. bf16 autocast runs on the CPU too, through the same code a CUDA run
takes, so the GPU path is exercised without a GPU.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from vqlib.config import TrainConfig, VQVAEConfig
from vqlib.data import to_float
from vqlib.device import autocast, resolve_precision
from vqlib.errors import ConfigError
from vqlib.models import VQVAE
from vqlib.train import (
    RESUMABLE_CHANGES,
    _config_problem,
    apply_speed_switches,
    make_optimizer,
    train_step,
)

from .conftest import REPO

SMALL = dict(hidden_channels=32, residual_channels=16)


def _start_state(model_config, x):
    """A model whose codebook is initialised (k-means on `x`): both paths start from this state.

    The k-means initialisation is chaotic in its input (Lloyd's iterations amplify
    a 1e-7 difference of the encoder output into another codebook), so the
    paths are compared from the same initialised state, one step at a time.
    """
    torch.manual_seed(0)
    model = VQVAE(model_config)
    with torch.no_grad():
        model.train()(x)
    return model.state_dict()


def _plain_step(model, optimizer, x):
    """The straightforward step: NCHW, torch's default (for-each) Adam, no autocast.

    Also returns, for each position, how much nearer its code is than the
    runner-up (float64, from the quantizer's input and its codebook before the step).
    """
    seen = {}
    pre = model.quantizer.register_forward_pre_hook(
        lambda m, i: seen.update(z=i[0].detach().double(), codebook=m.codebook.detach().double().clone())
    )
    out = model(x)
    pre.remove()
    recon = F.mse_loss(out.reconstruction, x)
    loss = recon + out.vq.loss
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    flat = seen["z"].permute(0, 2, 3, 1).reshape(-1, seen["z"].shape[1])
    two = torch.cdist(flat, seen["codebook"]).pow(2).topk(2, dim=1, largest=False).values
    return out.vq.indices, recon.item(), out.vq.loss.item(), (two[:, 1] - two[:, 0]).view_as(out.vq.indices)


def _fast_step(model, optimizer, x, train_config):
    codes = []  # train_step returns metrics only; the codes come from the same forward, by a hook
    handle = model.quantizer.register_forward_hook(lambda m, i, o: codes.append(o.indices))
    metrics = train_step(model, optimizer, x, train_config, torch.device("cpu"))
    handle.remove()
    return codes[0], metrics[0].item(), metrics[1].item()


@pytest.fixture(scope="module")
def batches(data):
    return [to_float(data.train_images[i * 64 : (i + 1) * 64]) for i in range(5)]


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("codebook_update", ["ema", "loss"])
def test_fast_step_equals_the_plain_step(batches, channels_last, codebook_update):
    """One step from the same initialised state: same codes, losses and gradients within float tolerance.

    One step, because the next one cannot be compared: Adam's first update is
    about lr * sign(gradient), so a weight whose gradient is ~0 moves by +-lr on
    float noise alone, and the paths part ways for good reasons.
    """
    model_config = VQVAEConfig(codebook_update=codebook_update, **SMALL)
    train_config = TrainConfig(channels_last=channels_last, precision="fp32")
    start = _start_state(model_config, batches[0])
    compared = 0
    for x in batches[1:]:
        plain, fast = VQVAE(model_config).to(memory_format=torch.contiguous_format), VQVAE(model_config)
        plain.load_state_dict(start)
        fast.load_state_dict(start)
        apply_speed_switches(fast, train_config)
        plain_opt = torch.optim.Adam(plain.parameters(), lr=train_config.learning_rate)
        fast_opt = make_optimizer(fast, train_config)
        torch.manual_seed(1)  # the same dead-code restart draws on both paths
        p_codes, p_recon, p_vq, margin = _plain_step(plain, plain_opt, x)
        torch.manual_seed(1)
        f_codes, f_recon, f_vq = _fast_step(fast, fast_opt, x, train_config)
        # Another summation order moves the encoder output by ~1e-5, which can flip a
        # code only where the runner-up is that close.
        assert torch.equal(p_codes[margin > 1e-4], f_codes[margin > 1e-4])
        assert (p_codes != f_codes).float().mean() <= 0.01
        assert f_recon == pytest.approx(p_recon, rel=1e-4)
        assert f_vq == pytest.approx(p_vq, rel=1e-3, abs=1e-6)
        assert fast.encoder.net[3].weight.is_contiguous(memory_format=torch.channels_last) == channels_last
        if not torch.equal(p_codes, f_codes):
            # One flipped code of 9,216 moves the encoder's gradients by ~2% (measured with one
            # thread): the gradients are compared on batches where both paths chose the same codes.
            continue
        compared += 1
        # The plain fp32 gradients are themselves off a float64 run of the same step, by
        # ~1e-3 of their norm and up to ~5e-3 for some batch-norm weights (their gradients
        # subtract nearly equal sums): the fast path may differ from the plain one by a
        # few times that rounding error, or by that ~5e-3 of the norm (measured on a fresh
        # clone, 2026-11-27: 4.2e-3 for encoder.net.4.block.0.weight, where the plain
        # path happened to sit nearer the float64 one), no more. A wrong gradient is off by
        # its own size.
        exact = VQVAE(model_config).to(memory_format=torch.contiguous_format)
        exact.load_state_dict(start)
        exact.encoder.double(), exact.decoder.double()  # the quantizer computes in float32 by design
        torch.manual_seed(1)
        _plain_step(exact, torch.optim.Adam(exact.parameters(), lr=train_config.learning_rate), x.double())
        for (name, p), f, e in zip(plain.named_parameters(), fast.parameters(), exact.parameters(), strict=True):
            rounding = (p.grad.double() - e.grad).norm()
            assert (p.grad - f.grad).norm() <= 4 * rounding + 5e-3 * e.grad.norm() + 1e-8, name
        if not channels_last:  # the same gradients in the same layout: the fused Adam gives the same weights
            for name, value in plain.state_dict().items():
                assert torch.allclose(value.float(), fast.state_dict()[name].float(), rtol=1e-5, atol=1e-7), name
    assert compared >= 2, "the paths chose other codes on most batches"


def test_channels_last_is_the_default_and_its_flattening_a_view(data):
    """With channels-last activations, the quantizer's (B, D, H, W) -> (B*H*W, D) costs no copy."""
    model = VQVAE(VQVAEConfig(**SMALL)).eval()
    with torch.no_grad():
        z = model.encoder(to_float(data.test_images[:8]))
    flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
    assert flat.data_ptr() == z.data_ptr()
    plain = apply_speed_switches(VQVAE(VQVAEConfig(**SMALL)).eval(), TrainConfig(channels_last=False))
    with torch.no_grad():
        z = plain.encoder(to_float(data.test_images[:8]))
    assert z.permute(0, 2, 3, 1).reshape(-1, z.shape[1]).data_ptr() != z.data_ptr()


def test_precision_auto_is_bf16_on_cuda_and_explicit_values_are_kept():
    """The CPU's side of 'auto' depends on its bf16 units: tests/test_precision.py checks it."""
    assert resolve_precision(TrainConfig().precision, torch.device("cuda")) == "bf16"
    assert resolve_precision(TrainConfig(precision="fp32").precision, torch.device("cuda")) == "fp32"
    assert resolve_precision(TrainConfig(precision="bf16").precision, torch.device("cpu")) == "bf16"
    assert not TrainConfig().compile


def test_bf16_autocast_step_is_close_and_keeps_distances_float32(data):
    """The bf16 path (bf16 convolutions, fp32 distances) run on the CPU, on 8 real images.

    The CPU may lack native bf16 units (then bf16 runs emulated at about 1 GFLOP/s),
    so the model and batch are tiny.
    """
    model_config = VQVAEConfig(hidden_channels=16, residual_channels=8, num_residual_blocks=1, embedding_dim=16)
    x = to_float(data.train_images[:8])
    amp = TrainConfig(precision="bf16", channels_last=True)
    device = torch.device("cpu")
    torch.manual_seed(0)
    model = VQVAE(model_config)
    with torch.no_grad():
        model.train()(x)  # k-means initialisation on this batch
    model.eval()
    with torch.no_grad():
        reference = model(x)
        with autocast("bf16", device):
            z = model.encoder(x)
            mixed = model(x)
    assert z.dtype == torch.bfloat16  # the convolutions did run in bf16
    # The codes are those of fp32 distances to the bf16 encoder output.
    flat = z.float().permute(0, 2, 3, 1).reshape(-1, z.shape[1])
    assert torch.equal(mixed.vq.indices.reshape(-1), model.quantizer.nearest(flat))
    # ...and nearly those of the fp32 model: only near-ties may flip.
    assert (mixed.vq.indices == reference.vq.indices).float().mean() > 0.9
    assert torch.allclose(mixed.reconstruction.float(), reference.reconstruction, atol=0.05)

    torch.manual_seed(0)
    model = apply_speed_switches(VQVAE(model_config), amp)
    optimizer = make_optimizer(model, amp)
    first = train_step(model, optimizer, x, amp, device)
    for _ in range(3):
        last = train_step(model, optimizer, x, amp, device)
    assert first.dtype == torch.float32 and torch.isfinite(last).all()
    assert last[0] < first[0]  # a few bf16 steps on one batch still learn it


def test_compile_switch_keeps_the_checkpoint_keys():
    """nn.Module.compile wraps in place: checkpoints of compiled runs load into plain models."""
    model = VQVAE(VQVAEConfig(**SMALL))
    keys = list(model.state_dict())
    apply_speed_switches(model, TrainConfig(compile=True, channels_last=False))
    assert list(model.state_dict()) == keys


def test_speed_switches_may_change_on_resume_but_training_settings_may_not():
    assert {"precision", "channels_last", "compile"} <= RESUMABLE_CHANGES
    model_config = VQVAEConfig()
    saved = TrainConfig()
    ckpt = {"model_config": dataclasses.asdict(model_config), "train_config": dataclasses.asdict(saved)}
    assert (
        _config_problem(
            ckpt, model_config, dataclasses.replace(saved, channels_last=False, precision="bf16", compile=True)
        )
        is None
    )
    # A checkpoint written before the switches existed still resumes.
    old = {k: v for k, v in dataclasses.asdict(saved).items() if k not in ("precision", "channels_last", "compile")}
    assert _config_problem({**ckpt, "train_config": old}, model_config, saved) is None
    assert "batch_size" in _config_problem(ckpt, model_config, dataclasses.replace(saved, batch_size=64))


@pytest.mark.parametrize(
    "values", [dict(precision="fast"), dict(precision="on"), dict(channels_last="yes"), dict(compile=1)]
)
def test_bad_switch_values_are_refused(values):
    with pytest.raises(ConfigError):
        TrainConfig(**values)


def test_smoke_benchmark_writes_its_keys_and_table(tmp_path):
    out = tmp_path / "bench" / "bench.json"
    # One thread: the smoke run's tiny ops are what OpenMP handles worst on a busy 2-core machine.
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench.py"), "--smoke", "--threads", "1", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    for key in (
        "matmul_gflops",
        "train_images_per_s",
        "train_mfu",
        "encode_images_per_s",
        "infer_cls_images_per_s",
        "train_loop_images_per_s",
        "explorer_edit_ms",
        "explorer_widget_edit_ms",
    ):
        assert isinstance(result[key], float) and result[key] > 0, key
    assert result["environment"]["smoke"] is True
    assert {row["name"] for row in result["train"]} >= {"default", "default, NCHW", "grid K25 D16", "grid K100 D64"}
    assert all(row["gflop_per_image"] > 0 for row in result["train"] + result["batch_sweep"] + result["width_sweep"])
    # The fast nearest-neighbour step picks the same codes as the naive ones.
    assert all(row["vqlib_agrees"] == 1.0 and row["cdist_agrees"] == 1.0 for row in result["nearest"])
    assert set(result["overhead"]["parts_ms"]) >= {"batch slicing", "quantizer bookkeeping"}
    assert result["classifier_epoch"]["cached_epoch_seconds"] > 0
    explorer = result["explorer"]
    assert all(explorer[k]["median_ms"] <= explorer[k]["max_ms"] for k in ("edit", "probabilities", "occlusion_map"))
    # The peak is the best matmul of both passes; each MFU is taken against the roof of the precision
    # its row ran in ('auto' is bf16 on a CPU with native bf16 units, whose roof is the bf16 matmul's).
    assert result["matmul_gflops"] == max(*result["matmul"].values(), *result["matmul_end"].values())
    default = result["train"][0]
    roof = result["matmul_gflops"] if default["precision"] == "fp32" else result["matmul_bf16_gflops"]
    assert result["train_mfu"] == pytest.approx(default["gflop_per_image"] * default["images_per_s"] / roof)
    groups = result["layers"]["groups"]
    assert {"3x3 conv", "1x1 conv", "batch norm + ReLU", "transposed conv"} <= set(groups)
    assert all(g["ms"] > 0 for g in groups.values()) and groups["3x3 conv"]["gflops"] > 0
    for heading in (
        "1. fp32 matmul",
        "MFU",
        "2d. the default step's convolutions",
        "4. nearest code",
        "6. classifier head",
        "7. grid placement",
        "8. explorer",
        "9. label-efficiency regression",
        "10. bf16 roof",
        "11. the prior over the code",
    ):
        assert heading in proc.stdout
    # Both placements really ran with their threads, on the same number of images per process.
    placement = result["placement"]
    one, per_core = placement["rows"]
    assert (one["processes"], per_core["threads"]) == (1, 1) and one["threads"] == placement["cores"]
    assert per_core["images"] == placement["cores"] * one["images"] and all(
        r["images_per_s"] > 0 for r in (one, per_core)
    )
    assert placement["chosen"] == {"processes": placement["cores"], "threads": 1}
    # The regression ran on a real code's width (12 x 12 x 16 in smoke mode), with every core's BLAS threads, then one.
    regression = result["regression"]
    assert regression["features"] == 12 * 12 * 16 and regression["images"] == 50
    cores = placement["cores"]
    assert [(r["processes"], r["blas_threads"]) for r in regression["rows"]] == [
        (1, cores),
        (1, 1),
        (cores, 1),
        (cores, 1),
    ]
    assert all(r["seconds"] > 0 and 0 <= r["val_acc"] <= 1 for r in regression["rows"])
    # Three ways of fitting the same models: the same best validation accuracy.
    assert len({round(r["val_acc"], 6) for r in regression["rows"]}) == 1
    # The bf16 roof: measured with native units, else skipped with its note, and the fp32 step beside it.
    bf16 = result["bf16"]
    assert bf16["conv_fp32_gflops"] > 0 and bf16["steps"][0]["precision"] == "fp32"
    if bf16["native_bf16"]:
        assert bf16["conv_bf16_gflops"] > 0 and bf16["steps"][1]["precision"] == "bf16"
        # Each step's share of the 3x3-conv roof of its own precision; the bf16 step's layers timed in bf16.
        for row in bf16["steps"]:
            conv_roof = bf16["conv_bf16_gflops" if row["precision"] == "bf16" else "conv_fp32_gflops"]
            assert row["conv_roof_share"] == pytest.approx(row["gflop_per_image"] * row["images_per_s"] / conv_roof)
        assert bf16["layers_bf16"]["precision"] == "bf16" and bf16["layers_bf16"]["groups"]["3x3 conv"]["ms"] > 0
        assert bf16["encode_bf16_speedup"] > 0
    else:
        assert "bf16 roof not measured" in proc.stdout and "conv_bf16_gflops" not in bf16
    # Encoding the test set, eager and with batch norm folded, in each precision measured; folding changes no code.
    encode = {row["name"]: row for row in bf16["encode"]}
    assert {"fp32, eager", "fp32, batch norm folded"} <= set(encode)
    assert all(row["images_per_s"] > 0 for row in encode.values())
    assert encode["fp32, batch norm folded"]["codes_equal_to_fp32"] > 0.99
    # The prior's section takes its share against this run's peak of the precision it trained in.
    prior = result["prior"]["train"]
    roof = result["matmul_gflops"] if prior["precision"] == "fp32" else result.get("matmul_bf16_gflops")
    assert prior["peak_gflops"] == roof and result["prior_sequences_per_s"] > 0
    if prior["precision"] == "bf16":  # the fp32 steps beside the bf16 ones
        fp32 = result["prior"]["train_fp32"]
        assert fp32["precision"] == "fp32" and result["prior"]["train_bf16_speedup"] == pytest.approx(
            prior["sequences_per_s"] / fp32["sequences_per_s"]
        )


def test_only_prior_measures_training_samples_and_the_test_likelihood(tmp_path):
    out = tmp_path / "prior.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench.py"), "--only-prior", "--smoke", "--threads", "1"]
        + ["--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    prior = json.loads(out.read_text())["prior"]
    train, samples, likelihood = prior["train"], prior["samples"], prior["test_likelihood"]
    assert train["sequences_per_s"] > 0 and train["gflop_per_sequence"] > 0
    assert train["share_of_peak"] == pytest.approx(
        train["gflop_per_sequence"] * train["sequences_per_s"] / train["peak_gflops"]
    )
    assert samples["num"] == 8 and 0 < samples["median_seconds"] <= samples["max_seconds"]
    assert likelihood["codes"] == 200 and likelihood["codes_per_s"] > 0
    # A network that trained a few steps is no worse than the uniform code, and far from 0 bits.
    assert 0.5 * likelihood["uniform_bits_per_image"] < likelihood["mean_bits_per_image"]
    assert likelihood["mean_bits_per_image"] < 1.05 * likelihood["uniform_bits_per_image"]
    # It trains as train_prior does, in the precision PriorConfig's default resolves to, against that roof.
    from vqlib.config import PriorConfig
    from vqlib.device import resolve_precision

    assert train["precision"] == resolve_precision(PriorConfig().precision, "cpu")
    # The explorer's 3 x 3 resampling: exact and top_k=20, each in one thread, medians within their own runs.
    resampled = prior["resample"]
    assert {row["top_k"] for row in resampled["rows"]} == {None, 20} and resampled["target_seconds"] == 0.3
    assert all(0 < row["median_seconds"] <= row["max_seconds"] and row["threads"] == 1 for row in resampled["rows"])
    for heading in ("11a. training in", "11b. 8 samples", "11c. log-likelihood of 200 test codes", "11d. resampling"):
        assert heading in proc.stdout


def test_code_histogram_equals_bincount():
    """The sync-free histogram (scatter_add) counts like torch.bincount, unused top codes included."""
    from vqlib.models.quantizer import code_histogram

    indices = torch.tensor([[0, 3, 3], [7, 0, 3]])
    assert code_histogram(indices, 12).tolist() == torch.bincount(indices.reshape(-1), minlength=12).tolist()
    assert code_histogram(indices, 12)[8:].sum() == 0 and len(code_histogram(indices, 12)) == 12


def test_precision_quality_verdicts_pair_the_seeds(tmp_path):
    """benchmarks/precision_quality.py: verdicts on paired seeds, and nothing written where nothing was trained."""
    import importlib.util

    import pandas as pd

    spec = importlib.util.spec_from_file_location("precision_quality", REPO / "benchmarks" / "precision_quality.py")
    pq = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pq)
    seeds = [0, 1, 2]

    def frame(fp32, bf16):
        return pd.DataFrame({"precision": ["fp32"] * 3 + ["bf16"] * 3, "seed": seeds * 2, "m": [*fp32, *bf16]})

    # Seeds move both precisions alike: a shift that the unpaired spread would hide is a paired difference.
    assert pq.agreement(frame([1.0, 2.0, 3.0], [1.1, 2.1, 3.1]), "m")["verdict"] == (
        "a paired difference, within the seed spread"
    )
    assert pq.agreement(frame([1.0, 2.0, 3.0], [1.2, 1.9, 3.0]), "m")["verdict"] == "no difference shown"
    assert pq.agreement(frame([1.0, 1.1, 1.2], [3.0, 3.1, 3.2]), "m")["verdict"] == "differs beyond the seed spread"
    row = pq.agreement(frame([1.0, 2.0, 3.0], [1.1, 2.1, 3.1]), "m")
    assert row["difference"] == pytest.approx(0.1) and row["seeds"] == 3
    # Nothing trained under the root: one sentence, exit code 2, nothing written.
    out = tmp_path / "out"
    assert pq.main(["--runs", str(tmp_path), "--out", str(out)]) == 2 and not out.exists()


def test_precision_quality_labels_a_prior_by_its_recorded_config(tmp_path):
    """A prior's row names its network and budget from config.json as train_prior writes it ({"prior": ...})."""
    import dataclasses
    import importlib.util

    from vqlib.config import PriorConfig
    from vqlib.files import write_json

    spec = importlib.util.spec_from_file_location("precision_quality", REPO / "benchmarks" / "precision_quality.py")
    pq = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pq)
    config = PriorConfig(layers=2, width=64, heads=2, train_subset=8000, epochs=2)
    for precision in ("fp32", "bf16"):
        folder = tmp_path / "checkpoints" / "precision" / "prior" / f"{precision}_s0"
        write_json(folder / "config.json", {"prior": dataclasses.asdict(config), "vqvae_checkpoint": "x"})
        write_json(
            folder / "history.json", [{"epoch": 1, "val_bits_per_code": 4.0}, {"epoch": 2, "val_bits_per_code": 3.5}]
        )
        (folder / "best.pt").write_bytes(b"")
    runs = pq.prior_runs(tmp_path)
    assert set(runs["config"]) == {"2 x 64 transformer, 8000 codes x 2 epochs"}
    assert list(runs["val_bits_per_code"]) == [3.5, 3.5] and list(runs["best_epoch"]) == [2, 2]
    # A run with fewer epochs than its config asks for is still training: left out.
    write_json(folder / "history.json", [{"epoch": 1, "val_bits_per_code": 4.0}])
    assert list(pq.prior_runs(tmp_path)["precision"]) == ["fp32"]
