"""Codebook health: EMA updates, k-means init, dead-code restarts, float32 under autocast, exact resume.

Pure tensor tests on tiny inputs; the basic quantizer contract (argmin, loss
formula, perplexity range) is in test_quantizer.py.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from vqlib.models.quantizer import VectorQuantizer


def as_latents(flat: torch.Tensor, h: int = 1) -> torch.Tensor:
    """(N, D) vectors -> (1, D, h, N/h), the layout the quantizer reads."""
    n, d = flat.shape
    return flat.reshape(1, h, n // h, d).permute(0, 3, 1, 2).contiguous()


def quantizer(k: int, d: int, **options) -> VectorQuantizer:
    q = VectorQuantizer(k, d, **options)
    q.train()
    return q


def min_distance(codes: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Distance of each code to its nearest point, computed exactly (cdist's matmul path is off by ~1e-3 at 0)."""
    return torch.cdist(codes.detach(), points, compute_mode="donot_use_mm_for_euclid_dist").min(dim=1).values


def set_codebook(q: VectorQuantizer, codes) -> None:
    with torch.no_grad():
        q.codebook.copy_(torch.as_tensor(codes, dtype=torch.float32))


# ----------------------------------------------------------------------------- EMA


def test_ema_update_matches_hand_computation():
    """Two steps with decay 0.5 and Laplace epsilon 0.5, worked out by hand (Sonnet's VectorQuantizerEMA)."""
    q = quantizer(3, 1, codebook_update="ema", ema_decay=0.5, ema_eps=0.5)
    set_codebook(q, [[0.0], [10.0], [100.0]])
    # Step 1: code 0 gets 1 and 3 (count 2, sum 4), code 1 gets 9 (count 1, sum 9), code 2 nothing.
    q(as_latents(torch.tensor([[1.0], [3.0], [9.0], [11.0]])[:3]))
    # ema_count = 0.5 * [2, 1, 0] = [1, 0.5, 0]; debiased by 1 - 0.5 = 0.5 -> [2, 1, 0], total n = 3.
    # Laplace: (c + 0.5) / (3 + 3 * 0.5) * 3 = [5/3, 1, 1/3]; ema_sum debiased = [4, 9, 0].
    assert q.ema_count.tolist() == pytest.approx([1.0, 0.5, 0.0])
    assert q.ema_sum[:, 0].tolist() == pytest.approx([2.0, 4.5, 0.0])
    assert q.codebook[:, 0].tolist() == pytest.approx([4 / (5 / 3), 9 / 1, 100.0])  # unused code 2 stays put
    # Step 2: codebook is [2.4, 9, 100]; input 2 -> code 0, 8 and 12 -> code 1.
    q(as_latents(torch.tensor([[2.0], [8.0], [12.0]])))
    # ema_count = 0.5 * [1, 0.5, 0] + 0.5 * [1, 2, 0] = [1, 1.25, 0]; debias 1 - 0.25 = 0.75.
    count = torch.tensor([1.0, 1.25, 0.0]) / 0.75
    ema_sum = 0.5 * torch.tensor([2.0, 4.5, 0.0]) + 0.5 * torch.tensor([2.0, 20.0, 0.0])
    n = count.sum()
    smoothed = (count + 0.5) / (n + 3 * 0.5) * n
    expected = (ema_sum / 0.75) / smoothed
    assert q.ema_count.tolist() == pytest.approx([1.0, 1.25, 0.0])
    assert q.codebook[:2, 0].tolist() == pytest.approx(expected[:2].tolist(), rel=1e-6)
    assert q.codebook[2, 0].item() == 100.0
    assert int(q.ema_steps) == 2


@pytest.mark.parametrize("eps, rel", [(0.0, 1e-6), (1e-5, 1e-4)])
def test_debiasing_gives_the_true_mean_after_one_step(eps, rel):
    """Without the 1 - decay^t correction the first step would put every code at ~1% of its mean."""
    torch.manual_seed(0)
    q = quantizer(4, 3, codebook_update="ema", ema_decay=0.99, ema_eps=eps)
    set_codebook(q, torch.eye(4, 3) * 5)
    flat = torch.randn(64, 3) + 5 * torch.eye(4, 3)[torch.arange(64) % 4]
    out = q(as_latents(flat, h=8))
    indices = out.indices.reshape(-1)
    for k in range(4):
        members = flat[indices == k]
        assert len(members) > 0
        assert q.codebook[k].tolist() == pytest.approx(members.mean(0).tolist(), rel=rel, abs=rel)


def test_ema_codebook_is_a_buffer_moved_only_by_the_ema():
    q = quantizer(8, 4, codebook_update="ema")
    assert "codebook" not in dict(q.named_parameters())
    assert "codebook" in dict(q.named_buffers())
    q.eval()
    before = q.codebook.clone()
    q(torch.randn(2, 4, 3, 3))
    assert torch.equal(q.codebook, before), "evaluation must not move the codebook"


# ----------------------------------------------------------------------------- k-means init


def test_kmeans_init_places_codes_on_the_data():
    """Four tight clusters, four codes: each code lands on a different cluster, within its spread."""
    torch.manual_seed(0)
    centers = torch.tensor([[4.0, 0.0], [-4.0, 0.0], [0.0, 4.0], [0.0, -4.0]])
    flat = centers.repeat(50, 1) + 0.05 * torch.randn(200, 2)
    q = quantizer(4, 2, codebook_update="ema", init="kmeans")
    assert not bool(q.initialized)
    q(as_latents(flat, h=10))
    assert bool(q.initialized)
    distance = torch.cdist(q.codebook, centers)
    assert distance.min(dim=1).values.max() < 0.1
    assert sorted(distance.argmin(dim=1).tolist()) == [0, 1, 2, 3]


@pytest.mark.parametrize("n", [3, 40])  # fewer and more batch vectors than K = 8
def test_kmeans_init_without_iterations_picks_batch_vectors(n):
    torch.manual_seed(0)
    flat = torch.randn(n, 5)
    # 'loss' mode: no EMA step moves the codes after the init.
    q = quantizer(8, 5, codebook_update="loss", init="kmeans", kmeans_iters=0)
    q(as_latents(flat))
    # Every code is exactly one of the batch vectors, distinct ones when the batch has K of them.
    assert min_distance(q.codebook, flat).max() < 1e-6
    if n >= 8:
        assert len(torch.unique(q.codebook.detach(), dim=0)) == 8


def test_kmeans_init_runs_once():
    torch.manual_seed(0)
    # 'loss' mode: without an optimiser step only k-means can move the codebook.
    q = quantizer(4, 2, codebook_update="loss", init="kmeans")
    q(torch.randn(1, 2, 4, 4))
    after_init = q.codebook.detach().clone()
    q(100 + torch.randn(1, 2, 4, 4))
    assert torch.equal(q.codebook.detach(), after_init), "a second batch must not rerun k-means"


# ----------------------------------------------------------------------------- dead-code restarts


@pytest.mark.parametrize("codebook_update", ["loss", "ema"])
def test_forced_dead_code_is_restarted_and_then_used(codebook_update):
    torch.manual_seed(0)
    flat = torch.randn(48, 3)
    q = quantizer(4, 3, codebook_update=codebook_update, dead_code_threshold=1.0)
    set_codebook(q, [[0.5, 0.0, 0.0], [-0.5, 0.0, 0.0], [0.0, 0.5, 0.0], [1e3, 1e3, 1e3]])
    out = q(as_latents(flat, h=6))
    assert 3 not in out.indices  # code 3 is far from all data: dead on this batch ...
    assert int(q.restarts) == 1  # ... so it was restarted, and only it
    # ... onto one of the batch vectors.
    assert min_distance(q.codebook[3:], flat).item() < 1e-6
    if codebook_update == "ema":
        # The EMA statistics agree with the new code, so the next EMA step does not pull it back.
        debias = 1 - q.ema_decay ** int(q.ema_steps)
        assert q.ema_count[3].item() / debias == pytest.approx(1.0)
        assert (q.ema_sum[3] / q.ema_count[3]).tolist() == pytest.approx(q.codebook[3].tolist(), abs=1e-5)
    out = q(as_latents(flat, h=6))
    assert (out.indices == 3).any(), "the restarted code must be used on the next batch"
    assert int(q.restarts) == 1
    assert torch.isfinite(q.codebook).all()


def test_a_code_that_stops_being_used_is_restarted_within_the_usage_decay():
    """Used ~100 times per batch, then never: below a threshold of 1 after ln(100)/-ln(0.9) ~ 44 steps."""
    torch.manual_seed(0)
    q = quantizer(2, 2, codebook_update="loss", dead_code_threshold=1.0)
    near_0, near_1 = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 0.0])
    set_codebook(q, torch.stack([near_0, near_1]))
    both = torch.cat([near_0 + 0.01 * torch.randn(100, 2), near_1 + 0.01 * torch.randn(100, 2)])
    q(as_latents(both, h=10))
    steps = 0
    only_0 = near_0 + 0.01 * torch.randn(100, 2)
    while int(q.restarts) == 0 and steps < 200:
        q(as_latents(only_0, h=10))
        steps += 1
    expected = math.ceil(math.log(100) / -math.log(q.usage_decay))
    assert abs(steps - expected) <= 2


def test_healthy_codes_are_never_restarted():
    torch.manual_seed(0)
    q = quantizer(4, 2, codebook_update="ema", dead_code_threshold=1.0)
    centers = torch.tensor([[3.0, 0.0], [-3.0, 0.0], [0.0, 3.0], [0.0, -3.0]])
    set_codebook(q, centers)
    for _ in range(30):
        q(as_latents(centers.repeat(16, 1) + 0.1 * torch.randn(64, 2), h=8))
    assert int(q.restarts) == 0


@pytest.mark.parametrize("codebook_update", ["loss", "ema"])
def test_restarts_with_fewer_batch_vectors_than_codes(codebook_update):
    torch.manual_seed(0)
    flat = torch.randn(4, 6)
    q = quantizer(32, 6, codebook_update=codebook_update, init="kmeans", dead_code_threshold=1.0)
    out = q(as_latents(flat, h=2))
    assert out.quantized.shape == (1, 6, 2, 2)
    assert torch.isfinite(q.codebook).all()
    # All codes on data points; EMA codes up to the Laplace shrinkage K * eps / n = 8e-5 of their norm.
    assert min_distance(q.codebook, flat).max() < 1e-3


# ----------------------------------------------------------------------------- contract of every option


OPTIONS = list(itertools.product(["loss", "ema"], ["uniform", "kmeans"], [0.0, 1.0]))


@pytest.mark.parametrize("codebook_update, init, threshold", OPTIONS)
def test_every_option_keeps_shapes_and_straight_through_gradients(codebook_update, init, threshold):
    torch.manual_seed(0)
    q = quantizer(16, 8, codebook_update=codebook_update, init=init, dead_code_threshold=threshold)
    z = torch.randn(3, 8, 5, 5, requires_grad=True)
    for _ in range(3):  # restarts and k-means happen on these steps; the contract must hold after them too
        codebook_before = q.codebook.detach().clone()  # the EMA moves the codebook after the lookup
        out = q(z)
    assert out.quantized.shape == z.shape and out.quantized.dtype == z.dtype
    assert out.indices.shape == (3, 5, 5) and out.indices.dtype == torch.int64
    assert out.loss.shape == () and out.perplexity.shape == () and out.usage.shape == ()
    # Forward: exactly the selected codes.
    selected = codebook_before[out.indices].permute(0, 3, 1, 2)
    assert torch.allclose(out.quantized, selected, atol=1e-6)
    # Backward: the decoder's gradient reaches z unchanged (straight-through estimator).
    weight = torch.randn_like(z)
    (grad,) = torch.autograd.grad((out.quantized * weight).sum(), z, retain_graph=True)
    assert torch.equal(grad, weight)
    # The loss trains the encoder (commitment) and, in 'loss' mode only, the codebook.
    out.loss.backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    if codebook_update == "loss":
        assert q.codebook.grad is not None and q.codebook.grad.abs().sum() > 0
    else:
        assert not q.codebook.requires_grad


@pytest.mark.parametrize("codebook_update, init, threshold", OPTIONS)
def test_distances_and_ema_stay_float32_under_autocast(codebook_update, init, threshold):
    torch.manual_seed(0)
    z = torch.randn(2, 8, 4, 4).to(torch.bfloat16)
    options = dict(codebook_update=codebook_update, init=init, dead_code_threshold=threshold)
    torch.manual_seed(1)
    plain = quantizer(16, 8, **options)
    torch.manual_seed(1)
    mixed = quantizer(16, 8, **options)
    torch.manual_seed(2)
    expected = plain(z.float())
    torch.manual_seed(2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = mixed(z)
    # Same assignments and same codebook state as float32 arithmetic on the same (bf16) inputs.
    assert torch.equal(got.indices, expected.indices)
    for name, buffer in plain.state_dict().items():
        assert mixed.state_dict()[name].dtype == buffer.dtype
        assert torch.allclose(mixed.state_dict()[name].float(), buffer.float(), equal_nan=True), name
    assert mixed.codebook.dtype == torch.float32
    assert got.loss.dtype == torch.float32
    assert got.quantized.dtype == torch.bfloat16  # the straight-through output keeps the encoder's dtype


@pytest.mark.parametrize("codebook_update, init, threshold", [("loss", "uniform", 0.0), ("ema", "kmeans", 1.0)])
def test_state_dict_resumes_exactly(codebook_update, init, threshold):
    """Every piece of codebook state is a buffer: a reloaded quantizer continues bit for bit."""
    torch.manual_seed(0)
    batches = [torch.randn(2, 6, 4, 4) for _ in range(6)]
    options = dict(codebook_update=codebook_update, init=init, dead_code_threshold=threshold)
    first = quantizer(12, 6, **options)
    for z in batches[:3]:
        first(z)
    saved = {name: value.clone() for name, value in first.state_dict().items()}
    assert {"codebook", "usage_count", "initialized", "restarts", "ema_steps"} <= set(saved)
    if codebook_update == "ema":
        assert {"ema_count", "ema_sum"} <= set(saved)

    second = quantizer(12, 6, **options)
    second.load_state_dict(saved)
    torch.manual_seed(5)
    for z in batches[3:]:
        a = first(z)
    torch.manual_seed(5)
    for z in batches[3:]:
        b = second(z)
    assert torch.equal(a.indices, b.indices)
    for name, value in first.state_dict().items():
        assert torch.equal(value, second.state_dict()[name]) or torch.allclose(
            value, second.state_dict()[name], equal_nan=True
        ), name
