"""How fast vqlib trains and infers on this machine, against the machine's own fp32 matmul peak.

`make bench` runs the full measurement (a few minutes on 2 CPU cores); `--smoke`
runs every section on tiny sizes in seconds, so the test suite keeps it alive.
Prints a table and writes results/bench/bench.json (atomically):

1. fp32 matmul GFLOP/s at a few sizes, before and after the training
   measurements; the best is the reference peak.
2. VQ-VAE training images/s for the default architecture and the grid's extremes,
   and model FLOP utilisation: FLOPs per image (torch.utils.flop_counter, forward
   and backward) x images/s / the matmul peak. Also the real `train_vqvae` loop,
   what each non-model part of a step costs, and each layer of the step timed
   alone (which layers run near the peak and which are memory-bound).
3. Training images/s against batch size and hidden width.
4. The quantizer's nearest-neighbour step against torch.cdist and broadcasting.
5. Inference: encoding the test set to code indices, and classifier predictions.
6. One classifier-head epoch on the code-index cache against running the frozen
   encoder every epoch.
7. Grid placement: one epoch of `train_vqvae` (K50_D32) in one process with all
   cores' threads, against one process per core with one thread each, all at
   once; and which one `vqlib.executors.choose_placement` picks.
8. The explorer (notebook 05) on the default-size model: one edit (one decode of
   one image), one update of the classifier's probabilities, one occlusion map,
   and one edit as the widgets make it (decode, paste preview, PNG drawing,
   probabilities, occlusion map); the issue's budget is 100 ms per edit.
9. The label-efficiency regressions (`vqlib.label_efficiency.logistic_regression`,
   three values of C) on the encoder's continuous output at D = 64, after torch has
   run in the same process, with every core's BLAS threads and with one.
10. The bf16 roof: bf16 matmul and 3x3 conv GFLOP/s beside the fp32 ones; the
   default training step in fp32 and in bf16, each as a share of its own
   precision's matmul and conv roofs, and its bf16 variants (NCHW; with
   --compile, torch.compile); the bf16 step's layers timed alone; encoding the
   test set in each precision, eager and with batch norm folded into the convs
   (with --compile, also compiled), with the share of codes equal to fp32's
   (docs/precision.md). bf16 is measured only where the CPU has native bf16
   units (`vqlib.device.native_bf16_cpu`) or on CUDA, unless --force-bf16;
   `--only-bf16` runs this section alone.
11. The prior over the code (the default `PriorConfig` network on real codes of
   the published K100_D64): (11a) training sequences/s, in the precision
   `PriorConfig().precision` resolves to (and, where that is bf16, the same
   steps in fp32 beside them), and its FLOPs x sequences/s as a share of
   that precision's matmul peak; (11b) 64 samples, sampled and
   decoded (the target: at most 1 s); (11c) the log-likelihood of all 10,000
   test codes, (11d) the explorer's 3 x 3 resampling, exact and top_k=20. `--only-prior` runs this
   section alone.

Every training row runs in the precision `TrainConfig().precision` resolves to
here ('auto': bf16 on CUDA and on a CPU with native bf16 units, else fp32), and
its MFU is a share of that precision's matmul roof.

Timings are medians over repeats; the load average before and after each
section is recorded, because other processes on a 2-core machine change every
number here.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch.utils.flop_counter import FlopCounterMode

from vqlib import paths
from vqlib.checkpoints import save_checkpoint
from vqlib.config import GridConfig, TrainConfig, VQVAEConfig
from vqlib.data import FashionMNIST, load_fashion_mnist, to_float
from vqlib.device import autocast, cpu_cores, native_bf16_cpu, resolve_device, resolve_precision, seed_everything
from vqlib.errors import VqlibError
from vqlib.files import write_json
from vqlib.models import VQVAE
from vqlib.models.quantizer import code_histogram, perplexity_and_usage
from vqlib.progress import progress_bar
from vqlib.train import apply_speed_switches, make_optimizer, train_step, train_vqvae

LATENT_POSITIONS = 12 * 12


@dataclasses.dataclass
class Profile:
    """Sizes of one benchmark run; `smoke` shrinks every section to seconds."""

    matmul_sizes: tuple[int, ...] = (512, 1024, 2048)
    batch_size: Optional[int] = None  # of the training measurements; None: TrainConfig's default
    repeats: int = 5
    train_images: int = 1024  # images per timed repeat of a training measurement
    batch_sizes: tuple[int, ...] = (64, 128, 256, 512, 1024)
    hidden_widths: tuple[int, ...] = (32, 64, 128)
    nearest_ks: tuple[int, ...] = (25, 50, 100, 512)
    nearest_batch: Optional[int] = None  # images whose latents are quantized; None: the default batch size
    loop_subset: int = 5120  # training images of the real-loop measurement (2 epochs)
    val_images: Optional[int] = None  # validation images of that loop; None: all 5,000
    encode_images: Optional[int] = None  # test images encoded; None: all 10,000
    classifier_labels_per_class: Optional[int] = None  # None: all 5,500 per class
    classifier_batch_size: int = 128
    placement_images: int = 12_000  # training images of each placement process (one epoch)
    explorer_repeats: int = 50  # timed updates of each explorer measurement
    explorer_images: Optional[int] = 2000  # codebook sample of the explorer; None: the whole test split
    regression_images: int = 1000  # labelled images of the timed logistic regressions (100 per class)
    regression_dim: int = 64  # D of the encoder whose continuous output they read (12 x 12 x D features)
    regression_max_iter: int = 100  # L-BFGS iterations at most (the quick profile's linear_max_iter)
    conv_shape: tuple[int, int, int] = (64, 128, 14)  # batch, channels in = out, side of the roof's 3x3 conv
    prior_shape: Optional[tuple[int, int, int]] = None  # the prior's (layers, heads, width); None: PriorConfig's
    prior_train_sequences: int = 256  # code sequences per timed repeat of the prior's training
    prior_samples: int = 64  # samples drawn and decoded at once
    prior_test_codes: Optional[int] = None  # test codes whose likelihood is timed; None: all 10,000


SMOKE = Profile(
    matmul_sizes=(64, 128),
    batch_size=16,
    repeats=2,
    train_images=32,
    batch_sizes=(16, 32),
    hidden_widths=(16,),
    nearest_ks=(25, 50),
    nearest_batch=8,
    loop_subset=40,
    val_images=100,
    encode_images=200,
    classifier_labels_per_class=10,
    classifier_batch_size=50,
    placement_images=200,
    explorer_repeats=5,
    explorer_images=100,
    regression_images=50,
    regression_dim=16,
    regression_max_iter=10,
    conv_shape=(4, 16, 8),
    prior_shape=(1, 2, 32),
    prior_train_sequences=64,
    prior_samples=8,
    prior_test_codes=200,
)


# ----------------------------------------------------------------------------- timing


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(
    fn: Callable[[], Any], *, repeats: int, device: torch.device, warmup: int = 1
) -> tuple[float, list[float]]:
    """Median wall time of `fn()` over `repeats` calls after `warmup` calls, and every time."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - started)
    return statistics.median(times), times


def load_average() -> Optional[float]:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:  # not every platform has it
        return None


# ----------------------------------------------------------------------------- 1. matmul peak


def matmul_gflops(
    sizes: tuple[int, ...], *, repeats: int, device: torch.device, dtype: torch.dtype = torch.float32
) -> dict[int, float]:
    """GFLOP/s of an n x n by n x n matmul (2 n^3 FLOPs) for each n."""
    result = {}
    for n in sizes:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        seconds, _ = median_seconds(lambda a=a, b=b: torch.mm(a, b), repeats=repeats, device=device)
        result[n] = 2 * n**3 / seconds / 1e9
    return result


# ----------------------------------------------------------------------------- 2-3. training


def flops_per_image(
    model_config: VQVAEConfig, train_config: TrainConfig, images: torch.Tensor, device: torch.device
) -> float:
    """Forward + backward FLOPs of one training batch, per image (matmuls and convolutions).

    One step runs first, outside the counter: it holds the one-off k-means
    initialisation of the codebook, which is not a per-step cost.
    """
    seed_everything(0)
    model = VQVAE(model_config).to(device).train()
    x = images[: train_config.batch_size]
    with autocast(resolve_precision(train_config.precision, device), device):
        model(x)
        with FlopCounterMode(display=False) as counter:
            out = model(x)
            (torch.nn.functional.mse_loss(out.reconstruction.float(), x) + out.vq.loss).backward()
    return counter.get_total_flops() / len(x)


def train_throughput(
    model_config: VQVAEConfig,
    train_config: TrainConfig,
    images: torch.Tensor,
    *,
    profile: Profile,
    device: torch.device,
) -> dict:
    """Images/s of `vqlib.train.train_step`, the step the training loop runs, on real images."""
    seed_everything(0)
    model = apply_speed_switches(VQVAE(model_config).to(device).train(), train_config)
    optimizer = make_optimizer(model, train_config)
    bs = train_config.batch_size
    steps = max(1, profile.train_images // bs)
    generator = torch.Generator().manual_seed(0)
    batches = [torch.randint(len(images), (bs,), generator=generator).to(device) for _ in range(steps)]

    def run() -> None:
        for idx in batches:
            train_step(model, optimizer, images[idx], train_config, device)

    seconds, times = median_seconds(run, repeats=profile.repeats, device=device)
    return {"images_per_s": steps * bs / seconds, "step_ms": 1e3 * seconds / steps, "repeat_seconds": times}


def train_row(
    name: str,
    model_config: VQVAEConfig,
    train_config: TrainConfig,
    images: torch.Tensor,
    *,
    profile: Profile,
    device: torch.device,
) -> dict:
    """Speed and FLOPs of one configuration; its MFU is added once the peak is known (`add_mfu`)."""
    load_before = load_average()
    speed = train_throughput(model_config, train_config, images, profile=profile, device=device)
    flops = flops_per_image(model_config, train_config, images, device)
    return {
        "name": name,
        "K": model_config.num_embeddings,
        "D": model_config.embedding_dim,
        "hidden": model_config.hidden_channels,
        "batch_size": train_config.batch_size,
        "channels_last": train_config.channels_last,
        "compile": train_config.compile,
        "precision": resolve_precision(train_config.precision, device),
        "gflop_per_image": flops / 1e9,
        **speed,
        "load_before": load_before,
        "load_after": load_average(),
    }


def add_mfu(row: dict, peak_gflops: float | dict[str, Optional[float]]) -> dict:
    """Model FLOP utilisation: FLOPs per image x images/s / the matmul peak.

    `peak_gflops` is one peak, or the roof of each precision ({'fp32': ..., 'bf16': ...}),
    of which the row's own precision is taken; a roof not measured leaves the MFU None.
    """
    if isinstance(peak_gflops, dict):
        peak_gflops = peak_gflops.get(row.get("precision", "fp32"))
    row["mfu"] = row["gflop_per_image"] * row["images_per_s"] / peak_gflops if peak_gflops else None
    return row


def loop_overhead(
    model_config: VQVAEConfig,
    train_config: TrainConfig,
    data: FashionMNIST,
    step_ms: float,
    *,
    profile: Profile,
    device: torch.device,
) -> dict:
    """What a training step spends outside the model's own compute, in ms and as a share of `step_ms`.

    Each non-model part of the loop is timed alone: slicing the batch out of the
    training tensor, accumulating the step's metrics, reading them back (every
    25 steps), the progress bar, and the quantizer's bookkeeping (code
    histogram, perplexity, usage EMA, EMA codebook update, dead-code restarts:
    its training-mode forward minus its eval-mode forward, plus the histogram
    and perplexity that both modes compute).
    """
    from tqdm.auto import tqdm

    bs = train_config.batch_size
    train_x = to_float(data.train_images, device)
    idx = torch.randperm(len(train_x))[:bs].to(device)
    reps = max(3, profile.repeats)
    seed_everything(0)
    model = apply_speed_switches(VQVAE(model_config).to(device), train_config)
    with torch.no_grad():
        model.train()(train_x[:bs])  # the k-means initialisation, once
        z = model.encoder(train_x[idx])
    quantizer = model.quantizer
    sums = torch.zeros(4, device=device)
    metrics = torch.rand(4, device=device)
    devnull = open(os.devnull, "w")
    bar = tqdm(total=10**9, file=devnull)

    def quantize(training: bool) -> Callable[[], Any]:
        def run() -> None:
            quantizer.train(training)
            quantizer(z.detach().requires_grad_())

        return run

    def histogram() -> None:
        indices = quantizer.nearest(z.detach().permute(0, 2, 3, 1).reshape(-1, z.shape[1]))
        perplexity_and_usage(code_histogram(indices, quantizer.num_embeddings))

    def nearest_only() -> None:
        quantizer.nearest(z.detach().permute(0, 2, 3, 1).reshape(-1, z.shape[1]))

    ms = {}
    for name, fn in {
        "batch slicing": lambda: train_x[idx],
        "metric accumulation": lambda: sums.add_(metrics),
        "progress bar": lambda: bar.update(1),
        "loss read-back (1 in 25 steps)": lambda: (sums / 2).tolist(),
    }.items():
        inner = 200
        seconds, _ = median_seconds(
            lambda fn=fn, inner=inner: [fn() for _ in range(inner)], repeats=reps, device=device
        )
        ms[name] = 1e3 * seconds / inner
    ms["loss read-back (1 in 25 steps)"] /= 25
    train_q, _ = median_seconds(quantize(True), repeats=reps, device=device)
    eval_q, _ = median_seconds(quantize(False), repeats=reps, device=device)
    hist, _ = median_seconds(histogram, repeats=reps, device=device)
    near, _ = median_seconds(nearest_only, repeats=reps, device=device)
    ms["quantizer bookkeeping"] = 1e3 * (max(train_q - eval_q, 0.0) + max(hist - near, 0.0))
    bar.close()
    devnull.close()
    total = sum(ms.values())
    return {
        "step_ms": step_ms,
        "parts_ms": ms,
        "parts_share": {k: v / step_ms for k, v in ms.items()},
        "total_ms": total,
        "total_share": total / step_ms,
    }


def real_loop(model_config: VQVAEConfig, train_config: TrainConfig, data: FashionMNIST, *, profile: Profile) -> dict:
    """Images/s of `train_vqvae` itself, epoch 2 of 2 (epoch 1 holds the k-means initialisation)."""
    if profile.val_images is not None:
        data = dataclasses.replace(
            data, val_images=data.val_images[: profile.val_images], val_labels=data.val_labels[: profile.val_images]
        )
    with tempfile.TemporaryDirectory() as tmp:
        config = dataclasses.replace(
            train_config, epochs=2, train_subset=profile.loop_subset, checkpoint_dir=tmp, results_dir=tmp
        )
        load_before = load_average()
        run = train_vqvae(model_config, config, data, progress=False)
    row = run.history[-1]
    return {
        "images": profile.loop_subset,
        "epoch_seconds": row["epoch_seconds"],
        "images_per_s": row["images_per_s"],
        "load_before": load_before,
        "load_after": load_average(),
    }


# One epoch of train_vqvae in a fresh process, torch threads set by OMP_NUM_THREADS as the grid's
# executors set them; prints the epoch's seconds (data loading and start-up left out).
PLACEMENT_SCRIPT = """
import json, sys, tempfile
from vqlib.config import TrainConfig, VQVAEConfig
from vqlib.data import load_fashion_mnist
from vqlib.train import train_vqvae
images, seed = int(sys.argv[1]), int(sys.argv[2])
with tempfile.TemporaryDirectory() as tmp:
    run = train_vqvae(VQVAEConfig(num_embeddings=50, embedding_dim=32),
                      TrainConfig(epochs=1, train_subset=images, seed=seed, checkpoint_dir=tmp, results_dir=tmp),
                      load_fashion_mnist(allow_download=False), progress=False)
print(json.dumps({"seconds": run.history[0]["epoch_seconds"], "threads": run.history[0]["threads"]}))
"""


def placement(*, profile: Profile) -> dict:
    """Images/s of the grid's two ways to use the cores: one process with every thread, or one per core."""
    import json
    import subprocess

    from vqlib.executors import choose_placement

    cores = cpu_cores()

    def together(processes: int, threads: int) -> dict:
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), TQDM_DISABLE="1")
        load_before = load_average()
        running = [
            subprocess.Popen(
                [sys.executable, "-c", PLACEMENT_SCRIPT, str(profile.placement_images), str(i)],
                env=env,
                stdout=subprocess.PIPE,
                text=True,
            )  # fmt: skip
            for i in range(processes)
        ]
        outs = [json.loads(proc.communicate()[0].strip().splitlines()[-1]) for proc in running]
        assert all(o["threads"] == threads for o in outs), outs
        # The epochs ran side by side: the slowest one sets the time all the images took.
        seconds = max(o["seconds"] for o in outs)
        return {
            "processes": processes,
            "threads": threads,
            "images": processes * profile.placement_images,
            "seconds": seconds,
            "images_per_s": processes * profile.placement_images / seconds,
            "load_before": load_before,
            "load_after": load_average(),
        }

    rows = [together(1, cores), together(cores, 1)]
    best = max(rows, key=lambda r: r["images_per_s"])
    jobs, threads = choose_placement(cores, device="cpu")
    return {
        "cores": cores,
        "rows": rows,
        "speedup_one_per_core": rows[1]["images_per_s"] / rows[0]["images_per_s"],
        "fastest": {"processes": best["processes"], "threads": best["threads"]},
        "chosen": {"processes": jobs, "threads": threads},
    }


def layer_kind(module: torch.nn.Module) -> Optional[str]:
    """The group a layer of the VQ-VAE is reported in, or None for layers not timed alone."""
    if isinstance(module, torch.nn.BatchNorm2d):
        return "batch norm + ReLU"
    if isinstance(module, torch.nn.ConvTranspose2d):
        return "transposed conv"
    if isinstance(module, torch.nn.Conv2d):
        return f"{module.kernel_size[0]}x{module.kernel_size[1]} conv" + (" (stride 2)" if module.stride[0] > 1 else "")
    return None


def layer_breakdown(
    model_config: VQVAEConfig,
    train_config: TrainConfig,
    images: torch.Tensor,
    step_ms: float,
    *,
    profile: Profile,
    device: torch.device,
) -> dict:
    """Where a training step's time goes: every conv and batch norm of the model timed alone.

    Each layer runs forward and backward on an input of the shape and layout it
    gets in training (batch norm with the ReLU that follows it), grouped by
    kind; shares are of the layers' summed time. Their GFLOP/s
    (torch.utils.flop_counter) against the matmul peak says which layers are
    compute-bound and which are not. Timed alone, a layer loses the cache reuse
    it has inside a whole step, so the sum can exceed `step_ms`, which also
    holds the quantizer, residual additions, the loss and Adam.
    """
    seed_everything(0)
    model = apply_speed_switches(VQVAE(model_config).to(device).train(), train_config)
    precision = resolve_precision(train_config.precision, device)
    inputs: dict[str, tuple[torch.nn.Module, torch.Tensor]] = {}

    def keep_input(name: str) -> Callable:
        def hook(module: torch.nn.Module, args: tuple) -> None:  # returns None: the forward pass is unchanged
            inputs.setdefault(name, (module, args[0].detach().clone()))

        return hook

    hooks = [
        module.register_forward_pre_hook(keep_input(name))
        for name, module in model.named_modules()
        if layer_kind(module)
    ]
    with torch.no_grad(), autocast(precision, device):  # each layer gets the dtype it gets in training
        model(images[: train_config.batch_size])
    for hook in hooks:
        hook.remove()
    groups: dict[str, dict] = {}
    for module, x in inputs.values():
        # The first layer's input is the image batch: no gradient flows into it in training either.
        x.requires_grad_(x.shape[1] > 1)

        def run(module=module, x=x) -> None:
            with autocast(precision, device):
                y = module(x)
                if isinstance(module, torch.nn.BatchNorm2d):
                    y = torch.relu(y)
            y.backward(torch.ones_like(y))

        with FlopCounterMode(display=False) as counter:
            run()
        seconds, _ = median_seconds(run, repeats=profile.repeats, device=device)
        group = groups.setdefault(layer_kind(module), {"layers": 0, "ms": 0.0, "gflop": 0.0})
        group["layers"] += 1
        group["ms"] += 1e3 * seconds
        group["gflop"] += counter.get_total_flops() / 1e9
    timed = sum(g["ms"] for g in groups.values())
    for group in groups.values():
        group["share"] = group["ms"] / timed
        group["gflops"] = group["gflop"] / (group["ms"] / 1e3) if group["gflop"] else None
    return {
        "precision": precision,
        "step_ms": step_ms,
        "groups": groups,
        "layers_ms": timed,
        "layers_over_step": timed / step_ms,
    }


# ----------------------------------------------------------------------------- 4. nearest neighbour


def nearest_rows(ks: tuple[int, ...], num_vectors: int, dim: int, *, repeats: int, device: torch.device) -> list[dict]:
    """`VectorQuantizer.nearest` against the naive torch.cdist and broadcast versions."""
    from vqlib.models import VectorQuantizer

    rows = []
    generator = torch.Generator().manual_seed(0)
    flat = torch.randn(num_vectors, dim, generator=generator).to(device)
    for k in ks:
        quantizer = VectorQuantizer(k, dim).to(device)
        with torch.no_grad():
            quantizer.codebook.copy_(torch.randn(k, dim, generator=generator).to(device))
        codebook = quantizer.codebook.detach()
        ways = {
            "vqlib": lambda quantizer=quantizer: quantizer.nearest(flat),
            "cdist": lambda codebook=codebook: torch.cdist(flat, codebook).argmin(dim=1),
            # N x K x D floats at once: 1.2 GB for 128 images at K=512, D=32.
            "broadcast": lambda codebook=codebook: (flat[:, None, :] - codebook[None]).pow(2).sum(-1).argmin(dim=1),
        }
        row: dict[str, Any] = {"K": k, "vectors": num_vectors, "D": dim}
        with torch.no_grad():
            reference = ways["broadcast"]()
            for name, fn in ways.items():
                seconds, _ = median_seconds(
                    fn, repeats=repeats if name != "broadcast" else max(2, repeats // 2), device=device
                )
                row[f"{name}_ms"] = 1e3 * seconds
                row[f"{name}_agrees"] = float((fn() == reference).float().mean())
        row["speedup_vs_cdist"] = row["cdist_ms"] / row["vqlib_ms"]
        row["speedup_vs_broadcast"] = row["broadcast_ms"] / row["vqlib_ms"]
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------- 5-6. inference and classifier


def inference(model_config: VQVAEConfig, data: FashionMNIST, *, profile: Profile, device: torch.device) -> dict:
    """Test-set encoding (`vqlib.classify.encode_codes`) and classification (`vqlib.classify.predict`)."""
    try:
        from vqlib.classify import build_classifier, encode_codes, predict
        from vqlib.config import ClassifierConfig
    except ImportError as exc:
        return {"error": f"n/a: vqlib.classify is not importable ({exc})"}
    images = data.test_images[: profile.encode_images]
    result: dict[str, Any] = {"images": len(images)}
    for layout in ("channels_last", "contiguous"):  # the model's default first
        seed_everything(0)
        model = VQVAE(model_config).to(device).eval()
        if layout == "contiguous":
            model.to(memory_format=torch.contiguous_format)
        seconds, _ = median_seconds(
            lambda model=model: encode_codes(model, images), repeats=max(3, profile.repeats // 2 + 1), device=device
        )
        result[f"encode_images_per_s_{layout}"] = len(images) / seconds
        classifier = build_classifier(ClassifierConfig(), model).to(device).eval()
        seconds, _ = median_seconds(
            lambda classifier=classifier: predict(classifier, images),
            repeats=max(3, profile.repeats // 2 + 1),
            device=device,
        )
        result[f"infer_cls_images_per_s_{layout}"] = len(images) / seconds
    return result


def classifier_epochs(model_config: VQVAEConfig, data: FashionMNIST, *, profile: Profile, device: torch.device) -> dict:
    """One head epoch with the code-index cache against the frozen encoder run every epoch (`train_classifier`)."""
    try:
        from vqlib.classify import train_classifier
        from vqlib.config import ClassifierConfig
    except ImportError as exc:
        return {"error": f"n/a: vqlib.classify is not importable ({exc})"}
    if profile.val_images is not None:
        data = dataclasses.replace(
            data, val_images=data.val_images[: profile.val_images], val_labels=data.val_labels[: profile.val_images]
        )
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        seed_everything(0)
        model = VQVAE(model_config)
        checkpoint = save_checkpoint(
            Path(tmp) / "vqvae.pt",
            "vqvae",
            {
                "model_config": dataclasses.asdict(model_config),
                "train_config": dataclasses.asdict(TrainConfig()),
                "state_dict": model.state_dict(),
                "epoch": 0,
                "history": [],
            },
        )
        for cache in (True, False):
            config = ClassifierConfig(
                vqvae_checkpoint=str(checkpoint),
                labels_per_class=profile.classifier_labels_per_class,
                epochs=1,
                patience=1,
                min_steps_per_epoch=1,
                batch_size=profile.classifier_batch_size,
                cache_codes=cache,
                device=device.type,
                checkpoint_dir=str(Path(tmp) / f"c{cache}"),
                results_dir=str(Path(tmp) / f"r{cache}"),
            )
            run = train_classifier(config, data, progress=False)
            name = "cached" if cache else "encoder_every_epoch"
            result[f"{name}_epoch_seconds"] = run.history[0]["epoch_seconds"]
            result[f"{name}_images_per_s"] = run.history[0]["images_per_s"]
            if cache:
                result["cache_encode_seconds"] = run.encode_seconds
            result["images"] = run.train_images
    result["speedup"] = result["encoder_every_epoch_epoch_seconds"] / result["cached_epoch_seconds"]
    return result


# ----------------------------------------------------------------------------- 7. explorer


def regression_threads(data: FashionMNIST, *, profile: Profile) -> dict:
    """Seconds of one label-efficiency regression (three values of C, 100 iterations at most), in a
    process where torch has run, as in notebook 03: the values of C one after the other with every
    core's BLAS threads, then with one, then as vqlib fits them (one process per core, one thread each)."""
    from sklearn.preprocessing import StandardScaler

    from vqlib.label_efficiency import _fit, continuous_features, logistic_regression

    seed_everything(0)
    model = VQVAE(VQVAEConfig(embedding_dim=profile.regression_dim)).eval()  # the time depends on sizes, not values
    n = profile.regression_images
    train_x, val_x = (continuous_features(model, images[:n]) for images in (data.train_images, data.val_images))
    train_y, val_y = data.train_labels[:n].numpy(), data.val_labels[:n].numpy()
    cs, cores, max_iter = [0.003, 0.01, 0.1], cpu_cores(), profile.regression_max_iter

    def sequential(threads: int) -> float:
        scaler = StandardScaler().fit(train_x)  # as logistic_regression does
        x, vx = scaler.transform(train_x), scaler.transform(val_x)
        fits = [_fit(x, train_y, vx, val_y, c, max_iter, 0, blas_threads=threads) for c in cs]
        return max(f["val_acc"] for f in fits)

    ways = [
        (f"C one by one, {cores} BLAS threads", 1, cores, lambda: sequential(cores)),
        ("C one by one, 1 BLAS thread", 1, 1, lambda: sequential(1)),
        (
            f"C side by side (vqlib), {cores} processes x 1 thread",
            cores,
            1,
            lambda: logistic_regression(train_x, train_y, val_x, val_y, val_x, val_y, cs, max_iter, 0)["val_acc"],
        ),
    ]
    # The first call starts the worker processes (joblib's loky pool); later calls reuse them.
    ways.append((ways[-1][0].replace("(vqlib)", "(vqlib), again"), *ways[-1][1:]))
    rows = []
    for name, processes, threads, run in ways:
        load_before = load_average()
        started = time.perf_counter()
        val_acc = run()
        rows.append(
            {
                "way": name,
                "processes": processes,
                "blas_threads": threads,
                "seconds": time.perf_counter() - started,
                "val_acc": val_acc,
                "load_before": load_before,
                "load_after": load_average(),
            }
        )
    return {
        "images": n,
        "features": train_x.shape[1],
        "torch_threads": torch.get_num_threads(),
        "rows": rows,
        "speedup_vqlib": rows[0]["seconds"] / rows[2]["seconds"],
    }


def explorer_latency(model_config: VQVAEConfig, data: FashionMNIST, *, profile: Profile) -> dict:
    """Median and worst ms of the explorer's updates (`vqlib.explore.Explorer`, and its widgets when ipywidgets is
    installed), on the CPU, with untrained weights of the given size: the time does not depend on their values."""
    from vqlib.classify import build_classifier
    from vqlib.config import ClassifierConfig
    from vqlib.explore import Explorer

    seed_everything(0)
    model = VQVAE(model_config).eval()
    classifier = build_classifier(ClassifierConfig(), model).eval()
    explorer = Explorer(
        model,
        data.test_images,
        data.test_labels,
        classifier=classifier,
        codebook_images=profile.explorer_images,
    )
    # The occlusion map runs the head on one map per cell that is not blank, and an untrained
    # encoder gives blank codes almost everywhere: time the worst case, no cell blank.
    generator = torch.Generator().manual_seed(0)
    worst = torch.randint(model_config.num_embeddings - 1, (12, 12), generator=generator)
    explorer.codes = explorer.original_codes = worst + (worst >= explorer.blank_code).long()
    codes = iter(range(10**9))
    next_code = lambda: next(codes) % model_config.num_embeddings  # a new code each time: every edit decodes

    def timed(fn: Callable[[], Any]) -> dict:
        seconds, times = median_seconds(fn, repeats=profile.explorer_repeats, device=torch.device("cpu"))
        return {"median_ms": 1e3 * seconds, "max_ms": 1e3 * max(times)}

    load_before = load_average()
    result: dict[str, Any] = {
        "K": model_config.num_embeddings,
        "D": model_config.embedding_dim,
        "hidden": model_config.hidden_channels,
        "repeats": profile.explorer_repeats,
        "edit": timed(lambda: explorer.edit(next_code(), (5, 6), (5, 6))),
        "probabilities": timed(explorer.probabilities),
        "occlusion_map": timed(explorer.occlusion_map),
    }
    try:
        from vqlib.explore_ui import ExplorerUI

        ui = ExplorerUI(explorer)
    except (ImportError, VqlibError) as exc:
        result["widget_edit"] = result["widget_edit_image"] = {"error": f"n/a: the widgets cannot be built ({exc})"}
    else:
        shown: list[float] = []
        ui.edited_image.observe(lambda _change: shown.append(time.perf_counter()), names="value")
        until_image: list[float] = []

        def widget_edit() -> None:
            ui.code.value = next_code()
            started = time.perf_counter()
            ui.apply.click()
            until_image.append(shown[-1] - started)

        result["widget_edit"] = timed(widget_edit)
        # The callback sends each widget's value as it sets it: the decoded image reaches the
        # browser before the slower panels (paste preview, occlusion map) are drawn.
        times = until_image[-profile.explorer_repeats :]
        result["widget_edit_image"] = {"median_ms": 1e3 * statistics.median(times), "max_ms": 1e3 * max(times)}
    result.update(load_before=load_before, load_after=load_average())
    return result


# ----------------------------------------------------------------------------- 10. bf16 roof

BF16_SKIPPED = "no native bf16 on this CPU: bf16 roof not measured (--force-bf16 measures it emulated)"


def conv_gflops(shape: tuple[int, int, int], *, repeats: int, device: torch.device, dtype: torch.dtype) -> float:
    """GFLOP/s of a 3x3 conv (padding 1), channels-last, forward only: batch x C x side^2 in and out."""
    batch, channels, side = shape
    seed_everything(0)
    conv = torch.nn.Conv2d(channels, channels, 3, padding=1, bias=False).to(device, dtype)
    conv = conv.to(memory_format=torch.channels_last)
    x = torch.randn(batch, channels, side, side, device=device, dtype=dtype).to(memory_format=torch.channels_last)
    with torch.no_grad():
        seconds, _ = median_seconds(lambda: conv(x), repeats=repeats, device=device)
    return 2 * batch * channels * channels * 9 * side * side / seconds / 1e9


def fold_batch_norm(model: VQVAE) -> VQVAE:
    """A copy of an eval-mode VQ-VAE whose encoder has each batch norm that follows a conv folded into that
    conv's weights (`torch.fx.experimental.optimization.fuse`); the other batch norms stay. Inference only."""
    import copy

    from torch.fx.experimental.optimization import fuse

    folded = copy.deepcopy(model).eval()
    folded.encoder = fuse(folded.encoder).to(memory_format=torch.channels_last)
    return folded


def encode_rows(
    model_config: VQVAEConfig,
    test_images: torch.Tensor,
    *,
    profile: Profile,
    device: torch.device,
    precisions: tuple[str, ...],
    compile_variant: bool = False,
) -> list[dict]:
    """Encoding `test_images` to code indices (`vqlib.classify.encode_codes`) in each precision: eager, with
    the batch norms folded into the convs, and (`compile_variant`) under `torch.compile`; each row with the
    share of codes equal to the eager fp32 encoding's (a tie between two nearest codes can flip)."""
    from vqlib.classify import encode_codes

    seed_everything(0)
    # A trained model's statistics, not a fresh one's: the default architecture after one pass over the images.
    model = VQVAE(model_config).to(device)
    with torch.no_grad():
        model.train()(to_float(test_images[:512], device))
    model.eval()
    variants = {"eager": model, "batch norm folded": fold_batch_norm(model)}
    if compile_variant:
        compiled = fold_batch_norm(model)
        compiled.encoder = torch.compile(compiled.encoder)
        variants["folded + torch.compile"] = compiled
    repeats = max(3, profile.repeats // 2 + 1)
    rows: list[dict] = []
    reference = None
    for precision in precisions:
        for name, variant in variants.items():
            start = time.perf_counter()
            with torch.no_grad():
                codes = encode_codes(variant, test_images, precision=precision)  # warm-up (and compilation)
            first = time.perf_counter() - start
            seconds, _ = median_seconds(
                lambda variant=variant, precision=precision: encode_codes(variant, test_images, precision=precision),
                repeats=repeats,
                device=device,
            )
            reference = codes if reference is None else reference
            rows.append(
                {
                    "name": f"{precision}, {name}",
                    "precision": precision,
                    "variant": name,
                    "images": len(test_images),
                    "images_per_s": len(test_images) / seconds,
                    "first_call_seconds": first,
                    "codes_equal_to_fp32": float((codes == reference).float().mean()),
                }
            )
    return rows


def add_conv_share(row: dict, conv_roofs: dict[str, Optional[float]]) -> dict:
    """The row's FLOPs x images/s as a share of the 3x3-conv roof of its precision (None where not measured)."""
    roof = conv_roofs.get(row.get("precision", "fp32"))
    row["conv_roof_share"] = row["gflop_per_image"] * row["images_per_s"] / roof if roof else None
    return row


def bf16_roof(
    model_config: VQVAEConfig,
    train_config: TrainConfig,
    images: torch.Tensor,
    *,
    profile: Profile,
    device: torch.device,
    force: bool = False,
    matmul: Optional[dict] = None,
    test_images: Optional[torch.Tensor] = None,
    compile_variant: bool = False,
) -> dict:
    """The fp32 and bf16 roofs (matmul and 3x3 conv), the default step in each precision against both roofs of
    its own precision, the step's bf16 variants (NCHW; `torch.compile` with `compile_variant`), the step's
    layers timed alone in bf16, and (`test_images`) encoding the test set in each precision.

    `matmul` holds matmul peaks already measured this run (`matmul_gflops`,
    `matmul_bf16_gflops`); those missing are measured here. bf16 is measured
    only with native units (or CUDA), or with `force`: emulated bf16 runs
    tens of times slower than fp32, which would make this section take minutes.
    """
    native = device.type == "cuda" or native_bf16_cpu()
    result: dict[str, Any] = {"native_bf16": native, "forced": force and not native}
    matmul = matmul or {}
    result["matmul_fp32_gflops"] = matmul.get("matmul_gflops") or max(
        matmul_gflops(profile.matmul_sizes, repeats=profile.repeats, device=device).values()
    )
    result["conv_fp32_gflops"] = conv_gflops(
        profile.conv_shape, repeats=profile.repeats, device=device, dtype=torch.float32
    )
    fp32 = dataclasses.replace(train_config, precision="fp32")
    steps = {"fp32": train_row("default, fp32", model_config, fp32, images, profile=profile, device=device)}
    precisions: tuple[str, ...] = ("fp32",)
    if native or force:
        precisions = ("fp32", "bf16")
        result["matmul_bf16_gflops"] = matmul.get("matmul_bf16_gflops") or max(
            matmul_gflops(profile.matmul_sizes, repeats=profile.repeats, device=device, dtype=torch.bfloat16).values()
        )
        result["conv_bf16_gflops"] = conv_gflops(
            profile.conv_shape, repeats=profile.repeats, device=device, dtype=torch.bfloat16
        )
        bf16 = dataclasses.replace(train_config, precision="bf16")
        steps["bf16"] = train_row("default, bf16", model_config, bf16, images, profile=profile, device=device)
        steps["bf16, NCHW"] = train_row(
            "default, bf16, NCHW",
            model_config,
            dataclasses.replace(bf16, channels_last=False),
            images,
            profile=profile,
            device=device,
        )
        if compile_variant:
            steps["bf16, compiled"] = train_row(
                "default, bf16, compiled",
                model_config,
                dataclasses.replace(bf16, compile=True),
                images,
                profile=profile,
                device=device,
            )
        result["matmul_bf16_over_fp32"] = result["matmul_bf16_gflops"] / result["matmul_fp32_gflops"]
        result["conv_bf16_over_fp32"] = result["conv_bf16_gflops"] / result["conv_fp32_gflops"]
        result["step_bf16_speedup"] = steps["bf16"]["images_per_s"] / steps["fp32"]["images_per_s"]
        result["layers_bf16"] = layer_breakdown(
            model_config, bf16, images, steps["bf16"]["step_ms"], profile=profile, device=device
        )
    else:
        result["skipped"] = BF16_SKIPPED
    roofs = {"fp32": result["matmul_fp32_gflops"], "bf16": result.get("matmul_bf16_gflops")}
    conv_roofs = {"fp32": result["conv_fp32_gflops"], "bf16": result.get("conv_bf16_gflops")}
    result["steps"] = [add_conv_share(add_mfu(row, roofs), conv_roofs) for row in steps.values()]
    if test_images is not None:
        result["encode"] = encode_rows(
            model_config,
            test_images,
            profile=profile,
            device=device,
            precisions=precisions,
            compile_variant=compile_variant,
        )
        rate = {row["name"]: row["images_per_s"] for row in result["encode"]}
        if "bf16, eager" in rate:
            result["encode_bf16_speedup"] = rate["bf16, eager"] / rate["fp32, eager"]
    return result


def print_bf16(r: dict, p) -> None:
    native = "native bf16 units" if r["native_bf16"] else "NO native bf16 units"
    p(f"\n10. bf16 roof ({native}{', bf16 forced: emulated' if r['forced'] else ''})")
    bf16_matmul, bf16_conv = r.get("matmul_bf16_gflops"), r.get("conv_bf16_gflops")
    p(f"   {'':<22}{'fp32':>10}{'bf16':>10}{'bf16/fp32':>11}")
    for name, fp32, bf16 in (
        ("matmul GFLOP/s", r["matmul_fp32_gflops"], bf16_matmul),
        ("3x3 conv GFLOP/s", r["conv_fp32_gflops"], bf16_conv),
    ):
        ratio = f"{bf16 / fp32:.2f}x" if bf16 else ""
        p(f"   {name:<22}{fp32:>10.1f}{_fmt(bf16):>10}{ratio:>11}")
    if "skipped" in r:
        p(f"   {r['skipped']}")
    p(f"   {'training step':<26}{'images/s':>10}{'step ms':>9}{'of matmul roof':>16}{'of conv roof':>14}")
    for row in r["steps"]:
        share = f"{row['mfu']:.0%}" if row["mfu"] is not None else "n/a"
        conv = f"{row['conv_roof_share']:.0%}" if row.get("conv_roof_share") is not None else "n/a"
        p(f"   {row['name']:<26}{row['images_per_s']:>10.0f}{row['step_ms']:>9.1f}{share:>16}{conv:>14}")
    if "step_bf16_speedup" in r:
        p(f"   bf16 step: {r['step_bf16_speedup']:.2f}x the fp32 step's images/s")
    if "layers_bf16" in r:
        p("   the bf16 step's convolutions and batch norms, each timed alone, forward + backward (of the bf16 roof):")
        print_layers(r["layers_bf16"], r.get("matmul_bf16_gflops"), lambda text: p("  " + text))
    if r.get("encode"):
        p(f"   {'encoding the test set':<34}{'images/s':>10}{'first call s':>14}{'codes = fp32':>14}")
        for row in r["encode"]:
            p(
                f"   {row['name']:<34}{row['images_per_s']:>10.0f}{row['first_call_seconds']:>14.2f}"
                f"{row['codes_equal_to_fp32']:>14.2%}"
            )
        if "encode_bf16_speedup" in r:
            p(f"   bf16 encoding: {r['encode_bf16_speedup']:.2f}x fp32's images/s")


# ----------------------------------------------------------------------------- 11. the prior

PRIOR_VQVAE = "pretrained:K100_D64"  # the protocol model, whose code the published prior models
SAMPLES_TARGET_SECONDS = 1.0  # 64 samples on 2 cores
RESAMPLE_TARGET_SECONDS = 0.3  # the explorer's 3 x 3 resampling


def prior_speed(
    data: FashionMNIST, *, profile: Profile, device: torch.device, peaks: dict[str, Optional[float]]
) -> dict:
    """The prior over the code: training throughput against the peak, 64 samples, the test set's likelihood.

    The network is the default `PriorConfig`'s (or the profile's smaller one),
    untrained but for the timed steps: none of the three costs depends on what
    the weights are. Its training steps run as `train_prior` runs them, in the
    precision `PriorConfig().precision` resolves to here, with this process's
    threads, and their share is taken of that precision's matmul peak (`peaks`:
    'fp32' and, where measured, 'bf16'); sampling and likelihoods stay fp32,
    sampling in one thread, as `PriorTransformer` does on the CPU.
    """
    from vqlib.checkpoints import load_vqvae, resolve_vqvae_checkpoint
    from vqlib.config import PriorConfig
    from vqlib.prior import bits_per_image, build_prior, resample, sample_images, split_codes

    result: dict[str, Any] = {"load_before": load_average(), "vqvae": PRIOR_VQVAE}
    config = PriorConfig()
    if profile.prior_shape:
        layers, heads, width = profile.prior_shape
        config = dataclasses.replace(config, layers=layers, heads=heads, width=width)
    vqvae, _ = load_vqvae(resolve_vqvae_checkpoint(PRIOR_VQVAE), device=device)
    k = vqvae.config.num_embeddings
    seed_everything(0)
    model = build_prior(config, k).to(device)
    result["network"] = {
        "architecture": config.architecture,
        "layers": config.layers,
        "heads": config.heads,
        "width": config.width,
        "parameters": sum(p.numel() for p in model.parameters()),
    }

    # 11a. training: whole Adam steps of the default batch on real codes (the first batches of the split).
    batch = config.batch_size
    precision = resolve_precision(config.precision, device)
    steps = max(1, profile.prior_train_sequences // batch)
    codes, _ = split_codes(vqvae, data, "train", max(steps * batch, 10))
    codes = codes[: steps * batch].long().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate, fused=True)
    model.train()

    def train_row(precision: str) -> dict:
        def train_steps() -> None:
            for i in range(steps):
                with autocast(precision, device):
                    loss = model.loss(codes[i * batch : (i + 1) * batch])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()

        seconds, _ = median_seconds(train_steps, repeats=profile.repeats, device=device)
        with FlopCounterMode(display=False) as counter:
            with autocast(precision, device):
                loss = model.loss(codes[:batch])
            loss.backward()
        optimizer.zero_grad(set_to_none=True)
        flops_per_sequence = counter.get_total_flops() / batch
        sequences_per_s = steps * batch / seconds
        peak = peaks.get(precision)
        return {
            "batch_size": batch,
            "steps_per_repeat": steps,
            "threads": torch.get_num_threads(),
            "precision": precision,
            "sequences_per_s": sequences_per_s,
            "step_ms": 1000 * seconds / steps,
            "gflop_per_sequence": flops_per_sequence / 1e9,
            "share_of_peak": flops_per_sequence * sequences_per_s / (peak * 1e9) if peak else None,
            "peak_gflops": peak,
        }

    result["train"] = train_row(precision)
    if precision == "bf16":  # the same steps in fp32 beside them: what bf16 gains on the prior
        result["train_fp32"] = train_row("fp32")
        result["train_bf16_speedup"] = result["train"]["sequences_per_s"] / result["train_fp32"]["sequences_per_s"]

    # 11b. 64 samples: the prior's sampler and the VQ-VAE's decoder, as `vqlib sample` runs them.
    # Beside the wall time, this process's CPU time: sampling runs in one thread, so on a busy machine the CPU
    # seconds are what the wall time would be on an idle one.
    model.eval()
    num = profile.prior_samples
    cpu_times = []

    def draw() -> None:
        started = time.process_time()
        sample_images(model, vqvae, num, seed=0)
        cpu_times.append(time.process_time() - started)

    seconds, times = median_seconds(draw, repeats=max(3, profile.repeats // 2), device=device)
    result["samples"] = {
        "num": num,
        "median_seconds": seconds,
        "max_seconds": max(times),
        "median_cpu_seconds": statistics.median(cpu_times[1:]),  # the first call is the warm-up
        "target_seconds": SAMPLES_TARGET_SECONDS,
        "within_target": seconds <= SAMPLES_TARGET_SECONDS,
    }

    # 11c. the log-likelihood of the test codes (encoded once and cached, as `vqlib rate-distortion` reads them).
    test_codes, _ = split_codes(vqvae, data, "test", profile.prior_test_codes)
    started, cpu_started = time.perf_counter(), time.process_time()
    bits = bits_per_image(model, test_codes)
    seconds = time.perf_counter() - started
    result["test_likelihood"] = {
        "codes": len(test_codes),
        "seconds": seconds,
        "cpu_seconds": time.process_time() - cpu_started,
        "threads": torch.get_num_threads(),
        "codes_per_s": len(test_codes) / seconds,
        "mean_bits_per_image": bits.mean().item(),
        "uniform_bits_per_image": model.length * math.log2(k),
    }

    # 11d. The explorer's 3 x 3 resampling: one Gibbs sweep over a 3 x 3 selection in the middle of the map, each
    # cell drawn from its exact full conditional (K candidates scored at once), and with top_k=20, in one thread as
    # the explorer computes it and with this process's threads.
    mask = torch.zeros(model.grid_size, dtype=torch.bool)
    middle = model.grid_size[0] // 2 - 1
    mask[middle : middle + 3, middle : middle + 3] = True
    one_code = test_codes[0].reshape(model.grid_size)
    rows = []
    for top_k in (None, 20):
        for threads in sorted({1, torch.get_num_threads()}):
            before = torch.get_num_threads()
            torch.set_num_threads(threads)
            try:
                seeds = iter(range(1000))
                seconds, times = median_seconds(
                    lambda seeds=seeds, top_k=top_k: resample(model, one_code, mask, seed=next(seeds), top_k=top_k),
                    repeats=max(3, profile.repeats // 2),
                    device=device,
                )
            finally:
                torch.set_num_threads(before)
            rows.append({"top_k": top_k, "threads": threads, "median_seconds": seconds, "max_seconds": max(times)})
    result["resample"] = {
        "cells": f"rows and columns {middle}-{middle + 2}",
        "rows": rows,
        "target_seconds": RESAMPLE_TARGET_SECONDS,
    }
    result["load_after"] = load_average()
    return result


def print_prior(r: dict, p) -> None:
    net, t = r["network"], r["train"]
    p(
        f"\n11. the prior over the code of {r['vqvae']}: {net['architecture']} {net['layers']} x {net['width']}, "
        f"{net['heads']} heads, {net['parameters']:,} parameters (load {_fmt(r['load_before'])} -> "
        f"{_fmt(r['load_after'])})"
    )
    share = (
        f"{t['share_of_peak']:.0%} of the {t['peak_gflops']:.0f} GFLOP/s {t['precision']} matmul peak"
        if t["share_of_peak"] is not None
        else f"no {t['precision']} matmul peak measured"
    )
    p(
        f"   11a. training in {t['precision']}, batch {t['batch_size']}, {t['threads']} "
        f"thread{'s' * (t['threads'] > 1)}: {t['sequences_per_s']:.1f} sequences/s, {t['step_ms']:.0f} ms per step, "
        f"{t['gflop_per_sequence']:.3f} GFLOP per sequence forward and backward: {share}"
    )
    if "train_fp32" in r:
        f = r["train_fp32"]
        fp32_share = f"{f['share_of_peak']:.0%} of the fp32 matmul peak" if f["share_of_peak"] is not None else ""
        p(
            f"        the same steps in fp32: {f['sequences_per_s']:.1f} sequences/s, {f['step_ms']:.0f} ms per step, "
            f"{fp32_share}: bf16 is {r['train_bf16_speedup']:.2f}x"
        )
    s = r["samples"]
    verdict = "within" if s["within_target"] else "OVER"
    p(
        f"   11b. {s['num']} samples, sampled and decoded: {s['median_seconds']:.2f} s median ({s['max_seconds']:.2f} s "
        f"worst; {s['median_cpu_seconds']:.2f} CPU s), {verdict} the {s['target_seconds']:.0f} s target"
    )
    ll = r["test_likelihood"]
    p(
        f"   11c. log-likelihood of {ll['codes']:,} test codes: {ll['seconds']:.1f} s ({ll['cpu_seconds']:.1f} CPU s, "
        f"{ll['threads']} thread{'s' * (ll['threads'] > 1)}), {ll['codes_per_s']:,.0f} codes/s "
        f"({ll['mean_bits_per_image']:.0f} bits per image after the timed steps; uniform {ll['uniform_bits_per_image']:.0f})"
    )
    rs = r["resample"]
    for row in rs["rows"]:
        how = "exact (all K candidates)" if row["top_k"] is None else f"top_k={row['top_k']}"
        verdict = "within" if row["median_seconds"] <= rs["target_seconds"] else "OVER"
        p(
            f"   11d. resampling a 3 x 3 selection ({rs['cells']}), one sweep, {how}, {row['threads']} "
            f"thread{'s' * (row['threads'] > 1)}: {1e3 * row['median_seconds']:.0f} ms median "
            f"({1e3 * row['max_seconds']:.0f} ms worst), {verdict} the {1e3 * rs['target_seconds']:.0f} ms target"
        )


# ----------------------------------------------------------------------------- the run


def grid_extremes() -> list[tuple[int, int]]:
    pairs = GridConfig().configurations()
    return [min(pairs), max(pairs)]


def run_benchmark(profile: Profile, *, compile_variant: bool = False, force_bf16: bool = False) -> dict:
    device = resolve_device("auto")
    data = load_fashion_mnist(allow_download=False)
    base_model = VQVAEConfig()
    base_train = TrainConfig(device=device.type)
    if profile.batch_size:
        base_train = dataclasses.replace(base_train, batch_size=profile.batch_size)
    pool = max(profile.train_images, max(profile.batch_sizes), base_train.batch_size)
    images = to_float(data.train_images[:pool], device)
    result: dict[str, Any] = {
        "environment": {
            "torch": torch.__version__,
            "device": str(device),
            "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
            "smoke": profile is SMOKE,
            "load_start": load_average(),
            "cuda_device": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        }
    }

    sections = [
        "1. matmul peak",
        "2. training step",
        "3a. batch size",
        "3b. hidden width",
        "2b. train_vqvae loop",
        "2c. non-model parts",
        "2d. layers",
        "1. matmul peak again",
        "4. nearest code",
        "5. inference",
        "6. classifier head",
        "7. grid placement",
        "8. explorer",
        "9. regression threads",
        "10. bf16 roof",
        "11. prior",
    ]
    bar = progress_bar(
        total=len(sections), unit="section", leave=False, bar_format="{l_bar}{bar}| {n}/{total} sections"
    )
    todo = iter(sections)

    def section() -> None:
        """Advance the bar to the next section (stderr; the table comes at the end)."""
        if bar.n or bar.desc:
            bar.update(1)
        bar.set_description_str(f"bench: {next(todo)}")

    # The peak is measured before and after the training measurements, and the best of both
    # is used: a shared machine's speed drifts within a run, and a low peak would flatter the MFU.
    section()
    measure_bf16 = device.type == "cuda" or native_bf16_cpu() or force_bf16
    peak_dtypes = {"matmul": torch.float32, **({"matmul_bf16": torch.bfloat16} if measure_bf16 else {})}
    for key, dtype in peak_dtypes.items():
        result[key] = matmul_gflops(profile.matmul_sizes, repeats=profile.repeats, device=device, dtype=dtype)

    section()
    rows = [
        train_row("default", base_model, base_train, images, profile=profile, device=device),
        train_row(
            "default, NCHW",
            base_model,
            dataclasses.replace(base_train, channels_last=False),
            images,
            profile=profile,
            device=device,
        ),
    ]
    if compile_variant:
        rows.append(
            train_row(
                "default, compiled",
                base_model,
                dataclasses.replace(base_train, compile=True),
                images,
                profile=profile,
                device=device,
            )
        )
    for k, d in grid_extremes():
        rows.append(
            train_row(
                f"grid K{k} D{d}",
                dataclasses.replace(base_model, num_embeddings=k, embedding_dim=d),
                base_train,
                images,
                profile=profile,
                device=device,
            )
        )
    result["train"] = rows
    default = rows[0]

    section()
    result["batch_sweep"] = [
        train_row(
            f"batch {bs}",
            base_model,
            dataclasses.replace(base_train, batch_size=bs),
            images,
            profile=profile,
            device=device,
        )
        for bs in profile.batch_sizes
    ]
    section()
    result["width_sweep"] = [
        train_row(
            f"hidden {h}",
            dataclasses.replace(base_model, hidden_channels=h, residual_channels=max(1, h // 2)),
            base_train,
            images,
            profile=profile,
            device=device,
        )
        for h in profile.hidden_widths
    ]

    section()
    loop = real_loop(base_model, base_train, data, profile=profile)
    loop.update(
        gflop_per_image=default["gflop_per_image"],
        share_of_step_throughput=loop["images_per_s"] / default["images_per_s"],
    )
    result["train_loop"] = loop
    section()
    result["overhead"] = loop_overhead(base_model, base_train, data, default["step_ms"], profile=profile, device=device)
    section()
    result["layers"] = layer_breakdown(
        base_model, base_train, images, default["step_ms"], profile=profile, device=device
    )

    section()
    for key, dtype in peak_dtypes.items():
        result[f"{key}_end"] = matmul_gflops(profile.matmul_sizes, repeats=profile.repeats, device=device, dtype=dtype)
        result[f"{key}_gflops"] = max(*result[key].values(), *result[f"{key}_end"].values())
    # Each row against the roof of the precision it ran in (the loop runs the default's).
    loop["precision"] = default["precision"]
    roofs = {"fp32": result["matmul_gflops"], "bf16": result.get("matmul_bf16_gflops")}
    for row in [*rows, *result["batch_sweep"], *result["width_sweep"], loop]:
        add_mfu(row, roofs)
    result.update(
        train_images_per_s=default["images_per_s"],
        train_mfu=default["mfu"],
        train_gflop_per_image=default["gflop_per_image"],
        train_batch_size=base_train.batch_size,
        train_loop_images_per_s=loop["images_per_s"],
        train_loop_mfu=loop["mfu"],
    )

    nearest_batch = profile.nearest_batch or base_train.batch_size
    section()
    result["nearest"] = nearest_rows(
        profile.nearest_ks,
        nearest_batch * LATENT_POSITIONS,
        base_model.embedding_dim,
        repeats=profile.repeats,
        device=device,
    )

    section()
    result["inference"] = inference(base_model, data, profile=profile, device=device)
    result["encode_images_per_s"] = result["inference"].get("encode_images_per_s_channels_last")
    result["encode_images_per_s_nchw"] = result["inference"].get("encode_images_per_s_contiguous")
    result["infer_cls_images_per_s"] = result["inference"].get("infer_cls_images_per_s_channels_last")
    section()
    result["classifier_epoch"] = classifier_epochs(base_model, data, profile=profile, device=device)
    section()
    result["placement"] = placement(profile=profile) if device.type == "cpu" else {"error": "CPU only"}
    result["explorer"] = explorer_latency(base_model, data, profile=profile)
    result["explorer_edit_ms"] = result["explorer"]["edit"]["median_ms"]
    result["explorer_widget_edit_ms"] = result["explorer"]["widget_edit"].get("median_ms")
    result["explorer_widget_image_ms"] = result["explorer"]["widget_edit_image"].get("median_ms")
    section()
    result["regression"] = regression_threads(data, profile=profile)
    section()
    result["bf16"] = bf16_roof(
        base_model,
        base_train,
        images,
        profile=profile,
        device=device,
        force=force_bf16,
        matmul=result,
        test_images=data.test_images[: profile.encode_images],
        compile_variant=compile_variant,
    )
    section()
    result["prior"] = prior_speed(
        data,
        profile=profile,
        device=device,
        peaks={"fp32": result["matmul_gflops"], "bf16": result.get("matmul_bf16_gflops")},
    )
    result["prior_sequences_per_s"] = result["prior"]["train"]["sequences_per_s"]
    result["prior_samples_seconds"] = result["prior"]["samples"]["median_seconds"]
    result["prior_test_likelihood_seconds"] = result["prior"]["test_likelihood"]["seconds"]
    bar.update(1)
    bar.close()
    result["environment"]["load_end"] = load_average()
    return result


# ----------------------------------------------------------------------------- the table


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def print_layers(lay: dict, peak: Optional[float], p) -> None:
    """The per-layer table of `layer_breakdown`, each kind's GFLOP/s against `peak` (the roof of its precision)."""
    p(f"   {'layer kind':<24}{'layers':>7}{'ms':>8}{'share':>8}{'GFLOP/s':>9}{'of peak':>9}")
    for kind, g in lay["groups"].items():
        of_peak = f"{g['gflops'] / peak:.0%}" if g["gflops"] and peak else ""
        p(f"   {kind:<24}{g['layers']:>7}{g['ms']:>8.1f}{g['share']:>8.0%}{_fmt(g['gflops']):>9}{of_peak:>9}")
    p(
        f"   {'all of them':<24}{'':>7}{lay['layers_ms']:>8.1f}   ({lay['layers_over_step']:.0%} of the whole step's "
        f"{lay['step_ms']:.1f} ms: alone, a layer loses the step's cache reuse)"
    )


def print_table(result: dict, out=sys.stdout) -> None:
    env = result["environment"]
    p = lambda *a: print(*a, file=out)  # noqa: E731
    p(
        f"vqlib benchmark: torch {env['torch']} on {env['device']}, {env['threads']} threads, "
        f"load average {env['load_start']} -> {env['load_end']}{' (smoke)' if env['smoke'] else ''}"
    )
    p("\n1. fp32 matmul, before and after the training measurements (the peak is the best of all)")
    for n, g in result["matmul"].items():
        p(f"   {n:>5} x {n:<5} {g:8.1f} {result['matmul_end'][n]:8.1f} GFLOP/s")
    p(f"   peak        {result['matmul_gflops']:8.1f} GFLOP/s")
    if result.get("matmul_bf16_gflops"):
        p(f"   bf16 peak   {result['matmul_bf16_gflops']:8.1f} GFLOP/s (the roof of the rows that run in bf16)")
    header = (
        f"   {'configuration':<20}{'batch':>6}{'GFLOP/img':>10}{'images/s':>10}{'step ms':>9}{'MFU':>7}{'load':>11}"
    )
    for title, key in (
        ("2. VQ-VAE training step (vqlib.train.train_step)", "train"),
        ("3a. batch size (default architecture)", "batch_sweep"),
        ("3b. hidden width (residual width = hidden / 2)", "width_sweep"),
    ):
        p(f"\n{title}, in {result[key][0]['precision']}; MFU of the {result[key][0]['precision']} roof")
        p(header)
        for r in result[key]:
            mfu = f"{r['mfu']:.0%}" if r["mfu"] is not None else "n/a"
            p(
                f"   {r['name']:<20}{r['batch_size']:>6}{r['gflop_per_image']:>10.3f}{r['images_per_s']:>10.0f}"
                f"{r['step_ms']:>9.1f}{mfu:>7}{_fmt(r['load_before']):>6}->{_fmt(r['load_after'])}"
            )
    loop = result["train_loop"]
    p(
        f"\n2b. train_vqvae loop (epoch 2 of 2 over {loop['images']} images): {loop['images_per_s']:.0f} images/s, "
        f"MFU {'n/a' if loop['mfu'] is None else format(loop['mfu'], '.0%')}, "
        f"{loop['share_of_step_throughput']:.0%} of the bare step's throughput"
    )
    o = result["overhead"]
    p(f"2c. non-model parts of one step ({o['step_ms']:.1f} ms):")
    for name, ms in o["parts_ms"].items():
        p(f"   {name:<32}{ms:8.3f} ms {o['parts_share'][name]:7.2%}")
    p(f"   {'all of them':<32}{o['total_ms']:8.3f} ms {o['total_share']:7.2%}")
    lay = result["layers"]
    precision = lay.get("precision", "fp32")
    p(f"2d. the default step's convolutions and batch norms, each timed alone, forward + backward, in {precision}:")
    peak = result["matmul_bf16_gflops"] if precision == "bf16" else result["matmul_gflops"]
    print_layers(lay, peak, p)
    p("\n4. nearest code (ms per batch; agreement with the broadcast reference)")
    p(f"   {'K':>5}{'vectors':>9}{'vqlib':>9}{'cdist':>9}{'broadcast':>11}{'x cdist':>9}{'x bcast':>9}{'agree':>7}")
    for r in result["nearest"]:
        p(
            f"   {r['K']:>5}{r['vectors']:>9}{r['vqlib_ms']:>9.2f}{r['cdist_ms']:>9.2f}{r['broadcast_ms']:>11.2f}"
            f"{r['speedup_vs_cdist']:>9.1f}{r['speedup_vs_broadcast']:>9.1f}{r['vqlib_agrees']:>7.1%}"
        )
    inf = result["inference"]
    p("\n5. inference (images/s)")
    if "error" in inf:
        p(f"   {inf['error']}")
    else:
        for layout in ("channels_last", "contiguous"):
            p(
                f"   {layout:<14} encode {inf['images']} test images {inf[f'encode_images_per_s_{layout}']:>9.0f}   "
                f"infer-cls (predict) {inf[f'infer_cls_images_per_s_{layout}']:>8.0f}"
            )
    c = result["classifier_epoch"]
    p("\n6. classifier head, one epoch")
    if "error" in c:
        p(f"   {c['error']}")
    else:
        p(
            f"   {c['images']} images: cached codes {c['cached_epoch_seconds']:.2f} s "
            f"(+ {c['cache_encode_seconds']:.2f} s encoding once), frozen encoder every epoch "
            f"{c['encoder_every_epoch_epoch_seconds']:.2f} s: {c['speedup']:.1f}x"
        )
    print_placement(result, p)
    print_explorer(result["explorer"], out)
    print_regression(result["regression"], p)
    print_bf16(result["bf16"], p)
    print_prior(result["prior"], p)


def print_placement(result: dict, p) -> None:
    pl = result["placement"]
    p("\n7. grid placement: one epoch of train_vqvae, K50_D32, all processes at once")
    if "error" in pl:
        p(f"   {pl['error']}")
        return
    p(f"   {'processes x threads':<22}{'images':>8}{'seconds':>9}{'images/s':>10}{'load':>11}")
    for r in pl["rows"]:
        p(
            f"   {str(r['processes']) + ' x ' + str(r['threads']):<22}{r['images']:>8}{r['seconds']:>9.1f}"
            f"{r['images_per_s']:>10.0f}{_fmt(r['load_before']):>6}->{_fmt(r['load_after'])}"
        )
    chosen, fastest = pl["chosen"], pl["fastest"]
    verdict = "the fastest" if chosen == fastest else f"NOT the fastest ({fastest['processes']} x {fastest['threads']})"
    p(
        f"   one per core: {pl['speedup_one_per_core']:.2f}x the throughput; the grid's choice on this CPU, "
        f"{chosen['processes']} x {chosen['threads']}, is {verdict}"
    )


def print_regression(r: dict, p) -> None:
    p(
        f"\n9. label-efficiency regression: {r['images']} images x {r['features']} features, 3 values of C, "
        f"torch with {r['torch_threads']} threads in the same process"
    )
    for row in r["rows"]:
        p(
            f"   {row['way']:<48}{row['seconds']:>8.1f} s   "
            f"(load {_fmt(row['load_before'])} -> {_fmt(row['load_after'])})"
        )
    p(f"   vqlib's way: {r['speedup_vqlib']:.1f}x faster than the first")


def print_explorer(e: dict, out=sys.stdout) -> None:
    p = lambda *a: print(*a, file=out)  # noqa: E731
    p(
        f"\n8. explorer, K={e['K']} D={e['D']} hidden {e['hidden']}, one thread, median (worst) of {e['repeats']} "
        f"updates; budget 100 ms per edit (load {_fmt(e['load_before'])} -> {_fmt(e['load_after'])})"
    )
    for name, label in (
        ("edit", "one edit: decode of one image"),
        ("probabilities", "classifier probabilities"),
        ("occlusion_map", "occlusion map (head only, 145 maps)"),
        ("widget_edit_image", "one edit in the widgets, until the image"),
        ("widget_edit", "one edit in the widgets, all panels"),
    ):
        row = e[name]
        text = row["error"] if "error" in row else f"{row['median_ms']:8.2f} ms ({row['max_ms']:.2f})"
        p(f"   {label:<44}{text}")


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="every section on tiny sizes (seconds), for the tests")
    parser.add_argument("--out", default=None, help="JSON output (default: results/bench/bench.json)")
    parser.add_argument("--compile", action="store_true", help="also time the default training step with torch.compile")
    parser.add_argument(
        "--threads", type=int, default=None, help="CPU threads of PyTorch (default: its own choice, one per core)"
    )
    parser.add_argument(
        "--only-explorer",
        action="store_true",
        help="section 8 alone (seconds), into explorer.json beside bench.json unless --out is given",
    )
    parser.add_argument(
        "--only-placement",
        action="store_true",
        help="section 7 alone (a few minutes), into placement.json beside bench.json unless --out is given",
    )
    parser.add_argument(
        "--only-regression",
        action="store_true",
        help="section 9 alone (a minute), into regression.json beside bench.json unless --out is given",
    )
    parser.add_argument(
        "--only-bf16",
        action="store_true",
        help="section 10 alone (a minute with native bf16 units), into bf16.json beside bench.json unless --out is given",
    )
    parser.add_argument(
        "--only-prior",
        action="store_true",
        help="section 11 alone (a few minutes: the test set's likelihood is most of it), into prior.json beside "
        "bench.json unless --out is given",
    )
    parser.add_argument(
        "--force-bf16",
        action="store_true",
        help="measure the bf16 roof even where the CPU has no native bf16 units (emulated: slow)",
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    profile = SMOKE if args.smoke else Profile()
    if args.only_explorer:
        # The whole run takes tens of minutes on a shared 2-core machine; the explorer's
        # latency is one section that needs no training measurement before it.
        result = {
            "environment": {"torch": torch.__version__, "threads": torch.get_num_threads(), "smoke": args.smoke},
            "explorer": explorer_latency(VQVAEConfig(), load_fashion_mnist(allow_download=False), profile=profile),
        }
        out = Path(args.out) if args.out else paths.results_dir() / "bench" / "explorer.json"
        write_json(out, result)
        print_explorer(result["explorer"])
        print(f"\nwrote {out}")
        return 0
    if args.only_placement:
        result = {
            "environment": {"torch": torch.__version__, "smoke": args.smoke},
            "placement": placement(profile=profile),
        }
        out = Path(args.out) if args.out else paths.results_dir() / "bench" / "placement.json"
        write_json(out, result)
        print_placement(result, print)
        print(f"\nwrote {out}")
        return 0
    if args.only_regression:
        torch.ones(512, 512) @ torch.ones(512, 512)  # torch's threads started, as in notebook 03
        result = {
            "environment": {"torch": torch.__version__, "smoke": args.smoke},
            "regression": regression_threads(load_fashion_mnist(allow_download=False), profile=profile),
        }
        out = Path(args.out) if args.out else paths.results_dir() / "bench" / "regression.json"
        write_json(out, result)
        print_regression(result["regression"], print)
        print(f"\nwrote {out}")
        return 0
    if args.only_bf16:
        device = resolve_device("auto")
        data = load_fashion_mnist(allow_download=False)
        train_config = TrainConfig(device=device.type, batch_size=profile.batch_size or TrainConfig().batch_size)
        images = to_float(data.train_images[: max(profile.train_images, train_config.batch_size)], device)
        result = {
            "environment": {
                "torch": torch.__version__,
                "device": str(device),
                "threads": torch.get_num_threads(),
                "smoke": args.smoke,
                "load_start": load_average(),
            },
            "bf16": bf16_roof(
                VQVAEConfig(),
                train_config,
                images,
                profile=profile,
                device=device,
                force=args.force_bf16,
                test_images=data.test_images[: profile.encode_images],
                compile_variant=args.compile,
            ),
        }
        result["environment"]["load_end"] = load_average()
        out = Path(args.out) if args.out else paths.results_dir() / "bench" / "bf16.json"
        write_json(out, result)
        print_bf16(result["bf16"], print)
        print(f"\nwrote {out}")
        return 0
    if args.only_prior:
        device = resolve_device("auto")
        result = {
            "environment": {
                "torch": torch.__version__,
                "device": str(device),
                "threads": torch.get_num_threads(),
                "smoke": args.smoke,
                "load_start": load_average(),
            },
        }
        # The section's own peaks: its share is taken against this run's machine, not another run's.
        from vqlib.config import PriorConfig

        peaks: dict[str, Optional[float]] = {"fp32": None, "bf16": None}
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            if name == "fp32" or resolve_precision(PriorConfig().precision, device) == "bf16":
                gflops = matmul_gflops(profile.matmul_sizes, repeats=profile.repeats, device=device, dtype=dtype)
                result["matmul" if name == "fp32" else "matmul_bf16"] = gflops
                peaks[name] = max(gflops.values())
        result["matmul_gflops"], result["matmul_bf16_gflops"] = peaks["fp32"], peaks["bf16"]
        data = load_fashion_mnist(allow_download=False)
        result["prior"] = prior_speed(data, profile=profile, device=device, peaks=peaks)
        result["environment"]["load_end"] = load_average()
        out = Path(args.out) if args.out else paths.results_dir() / "bench" / "prior.json"
        write_json(out, result)
        print_prior(result["prior"], print)
        print(f"\nwrote {out}")
        return 0
    result = run_benchmark(profile, compile_variant=args.compile, force_bf16=args.force_bf16)
    out = Path(args.out) if args.out else paths.results_dir() / "bench" / "bench.json"
    write_json(out, result)
    print_table(result)
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
