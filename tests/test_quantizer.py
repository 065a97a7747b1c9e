"""The quantizer's lookup, loss, straight-through gradients and statistics (paper settings)."""

from __future__ import annotations

import pytest
import torch

from vqlib.models import VectorQuantizer


def _paper_vq(k: int, d: int, beta: float = 0.25) -> VectorQuantizer:
    return VectorQuantizer(k, d, beta=beta, codebook_update="loss", init="uniform", dead_code_threshold=0.0)


@pytest.mark.parametrize("k,d", [(25, 16), (50, 32), (100, 64), (512, 8)])
def test_nearest_matches_brute_force_argmin(k, d):
    torch.manual_seed(k + d)
    vq = _paper_vq(k, d)
    vq.codebook.data.normal_()
    z = torch.randn(4, d, 12, 12)
    out = vq(z)
    flat = z.permute(0, 2, 3, 1).reshape(-1, d)
    distances = ((flat[:, None, :] - vq.codebook[None, :, :]) ** 2).sum(-1).detach()
    brute = distances.argmin(1)
    chosen = out.indices.reshape(-1)
    # The matmul form rounds differently from the broadcast: it may break a near-tie
    # the other way, but never picks a code farther than float32 rounding allows.
    assert (chosen == brute).float().mean() > 0.995
    picked = distances.gather(1, chosen[:, None]).squeeze(1)
    assert torch.allclose(picked, distances.min(1).values, rtol=1e-5, atol=1e-5)
    assert torch.allclose(out.quantized.permute(0, 2, 3, 1).reshape(-1, d), vq.codebook[chosen], atol=1e-6)


def test_straight_through_copies_the_gradient_to_the_encoder():
    torch.manual_seed(0)
    vq = _paper_vq(10, 4)
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    upstream = torch.randn(2, 4, 3, 3)
    (vq(z).quantized * upstream).sum().backward()
    assert torch.equal(z.grad, upstream)  # identity backward through the lookup
    assert vq.codebook.grad is None or torch.all(vq.codebook.grad == 0)  # decoder path does not train the codebook


def test_beta_weights_the_commitment_term_not_the_codebook_term():
    """loss = ||sg[z] - e||^2 + beta ||z - sg[e]||^2 (van den Oord et al. 2017, eq. 3).

    Both terms have the same value; only their gradients tell them apart: the
    codebook gets weight 1, the encoder output gets weight beta.
    """
    beta = 0.25
    vq = _paper_vq(2, 2, beta=beta)
    vq.codebook.data = torch.tensor([[0.0, 0.0], [10.0, 10.0]])
    # z (B=1, D=2, H=2, W=1): two vectors, (1, 2) -> code 0 and (9, 8) -> code 1
    z = torch.tensor([[1.0, 2.0], [9.0, 8.0]]).t().reshape(1, 2, 2, 1).contiguous().requires_grad_()
    out = vq(z)
    assert out.indices.reshape(-1).tolist() == [0, 1]
    sq = torch.tensor([1.0 + 4.0, 1.0 + 4.0])  # squared distances to their codes
    mse = sq.sum() / 4  # mean over N * D = 4 elements
    assert out.loss.item() == pytest.approx((1 + beta) * mse.item())
    out.loss.backward()
    flat = torch.tensor([[1.0, 2.0], [9.0, 8.0]])
    codes = torch.tensor([[0.0, 0.0], [10.0, 10.0]])
    assert torch.allclose(vq.codebook.grad, 2 * (codes - flat) / 4)  # weight 1
    z_grad = z.grad.permute(0, 2, 3, 1).reshape(-1, 2)
    assert torch.allclose(z_grad, beta * 2 * (flat - codes) / 4)  # weight beta


@pytest.mark.parametrize("k", [1, 7, 50])
def test_perplexity_lies_between_one_and_k(k):
    torch.manual_seed(k)
    vq = _paper_vq(k, 3)
    vq.codebook.data.normal_()
    vq.eval()
    out = vq(torch.randn(8, 3, 6, 6))
    assert 1.0 - 1e-5 <= out.perplexity.item() <= k + 1e-4
    assert 0 < out.usage.item() <= 1
    # all vectors on one code: perplexity 1; each code equally often: perplexity K
    same = vq.codebook[0].view(1, 3, 1, 1).expand(2, 3, 4, 4)
    assert vq(same).perplexity.item() == pytest.approx(1.0)
    spread = vq.codebook.detach().t().reshape(1, 3, 1, k)
    assert vq(spread).perplexity.item() == pytest.approx(k, rel=1e-4)
    assert vq(spread).usage.item() == pytest.approx(1.0)


def test_lookup_inverts_nearest():
    torch.manual_seed(3)
    vq = _paper_vq(30, 5).eval()
    out = vq(torch.randn(2, 5, 12, 12))
    # equal up to the straight-through's z + (e - z) rounding
    assert torch.allclose(vq.lookup(out.indices), out.quantized, atol=1e-6)


def test_distances_stay_float32_under_autocast():
    torch.manual_seed(4)
    vq = _paper_vq(40, 8).eval()
    vq.codebook.data.normal_()
    z = torch.randn(2, 8, 5, 5)
    reference = vq(z).indices
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(
            vq(z.bfloat16()).indices, vq.nearest(z.bfloat16().permute(0, 2, 3, 1).reshape(-1, 8)).view(2, 5, 5)
        )
        assert torch.equal(vq(z).indices, reference)
