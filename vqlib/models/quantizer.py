"""Vector quantizer: nearest-neighbour lookup in a K x D codebook with straight-through gradients.

Follows van den Oord et al. 2017 ("Neural Discrete Representation Learning"),
with the codebook-health options of the public VQ libraries (EMA updates,
k-means initialisation, dead-code restarts) switchable from `VQVAEConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class QuantizerOutput:
    """The fixed return contract of the quantizer.

    quantized:  (B, D, H, W) code vectors, with straight-through gradients to the input
    indices:    (B, H, W) int64 code indices
    loss:       scalar, codebook term + beta * commitment term (commitment only with EMA)
    perplexity: scalar, exp(entropy) of the code histogram of this batch, in [1, K]
    usage:      scalar, fraction of the K codes used at least once in this batch
    """

    quantized: torch.Tensor
    indices: torch.Tensor
    loss: torch.Tensor
    perplexity: torch.Tensor
    usage: torch.Tensor


def code_histogram(indices: torch.Tensor, num_embeddings: int) -> torch.Tensor:
    # scatter_add, not bincount: CUDA's bincount reads the smallest and largest index back
    # to the host, a device sync on every training step; on the CPU both take ~30 us here.
    flat = indices.reshape(-1)
    return torch.zeros(num_embeddings, dtype=torch.long, device=flat.device).scatter_add_(
        0, flat, torch.ones_like(flat)
    )


def perplexity_and_usage(counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Perplexity exp(H(p)) and the fraction of codes used, from a code histogram."""
    p = counts.float() / counts.sum().clamp(min=1)
    entropy = -(p * torch.log(p.clamp(min=1e-10))).sum()
    return entropy.exp(), (counts > 0).float().mean()


class VectorQuantizer(nn.Module):
    """Maps each D-vector of a (B, D, H, W) tensor to its nearest code vector.

    Options (keyword-only, as in vector-quantize-pytorch):
      beta:                weight of the commitment term
      codebook_update:     'loss' learns the codebook by its loss term; 'ema' by
                           exponential moving averages of the assigned vectors
      ema_decay, ema_eps:  EMA decay and Laplace smoothing epsilon
      init:                'uniform' U(-1/K, 1/K) as in the paper, or 'kmeans' on
                           the first training batch
      dead_code_threshold: a code whose EMA count per batch falls below this is
                           moved onto a random encoder output of the batch
      usage_decay:         decay of that usage EMA, faster than ema_decay so that a
                           dead code is noticed within tens of steps, not hundreds
    """

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        *,
        beta: float = 0.25,
        codebook_update: str = "loss",
        ema_decay: float = 0.99,
        ema_eps: float = 1e-5,
        init: str = "uniform",
        dead_code_threshold: float = 0.0,
        kmeans_iters: int = 10,
        usage_decay: float = 0.9,
    ):
        super().__init__()
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.beta = beta
        self.codebook_update = codebook_update
        self.ema_decay = ema_decay
        self.ema_eps = ema_eps
        self.init = init
        self.dead_code_threshold = dead_code_threshold
        self.kmeans_iters = kmeans_iters
        self.usage_decay = usage_decay

        weight = torch.empty(num_embeddings, embedding_dim).uniform_(-1.0 / num_embeddings, 1.0 / num_embeddings)
        if codebook_update == "ema":
            # The codebook is a buffer: it changes only by the EMA rule, never by Adam.
            self.register_buffer("codebook", weight)
            self.register_buffer("ema_count", torch.zeros(num_embeddings))
            self.register_buffer("ema_sum", torch.zeros(num_embeddings, embedding_dim))
        else:
            self.codebook = nn.Parameter(weight)
        self.register_buffer("ema_steps", torch.zeros((), dtype=torch.long))
        # Usage EMA (counts per batch) drives dead-code restarts in both modes.
        self.register_buffer("usage_count", torch.full((num_embeddings,), float("nan")))
        self.register_buffer("initialized", torch.tensor(init != "kmeans"))
        self.register_buffer("restarts", torch.zeros((), dtype=torch.long))

    def extra_repr(self) -> str:
        return (
            f"{self.num_embeddings}, {self.embedding_dim}, beta={self.beta}, update={self.codebook_update}, "
            f"init={self.init}, dead_code_threshold={self.dead_code_threshold}"
        )

    # ------------------------------------------------------------------ lookup

    def nearest(self, flat: torch.Tensor) -> torch.Tensor:
        """Index of the nearest code for each row of `flat` (N, D), by squared L2.

        ||z - e||^2 = ||z||^2 - 2 z.e + ||e||^2 as one matmul: memory N x K, never
        the N x K x D broadcast. Computed in float32 even under autocast, because
        bf16 distances tie and flip assignments.
        """
        with torch.autocast(device_type=flat.device.type, enabled=False):
            flat = flat.float()
            codebook = self.codebook.float()
            distances = torch.addmm(
                (flat.pow(2).sum(1, keepdim=True) + codebook.pow(2).sum(1)), flat, codebook.t(), beta=1.0, alpha=-2.0
            )
            # min(dim).indices picks the same first minimum as argmin in about half its time
            # on this CPU (18,432 x K distances, one thread: 1.0 vs 1.8 ms at K=25, 15.8 vs 30.7 ms at K=512).
            return distances.min(dim=1).indices

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """Code vectors of `indices` (B, H, W) as a (B, D, H, W) tensor."""
        return F.embedding(indices, self.codebook).permute(0, 3, 1, 2).contiguous()

    # ------------------------------------------------------------------ forward

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        b, d, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, d)
        if self.training and not self._initialized():
            self._kmeans_init(flat.detach().float())
        indices = self.nearest(flat.detach())
        quantized = F.embedding(indices, self.codebook)

        flat32 = flat.float()
        # beta weights the commitment term, not the codebook term: van den Oord et al. 2017, eq. 3.
        commitment = F.mse_loss(flat32, quantized.detach().float())
        if self.codebook_update == "ema":
            loss = self.beta * commitment
        else:
            codebook_term = F.mse_loss(quantized.float(), flat32.detach())
            loss = codebook_term + self.beta * commitment

        counts = code_histogram(indices, self.num_embeddings)
        if self.training:
            with torch.no_grad():
                self._update_usage(counts)
                if self.codebook_update == "ema":
                    self._ema_update(flat32.detach(), indices, counts)
                if self.dead_code_threshold > 0:
                    self._restart_dead_codes(flat.detach().float())

        # Straight-through estimator: forward uses the code, backward copies the gradient to z.
        quantized = flat + (quantized.to(flat.dtype) - flat).detach()
        quantized = quantized.view(b, h, w, d).permute(0, 3, 1, 2)
        perplexity, usage = perplexity_and_usage(counts)
        return QuantizerOutput(quantized, indices.view(b, h, w), loss, perplexity, usage)

    # ------------------------------------------------------------------ codebook health

    def _initialized(self) -> bool:
        # Read the buffer once, not on every step: on CUDA each read is a device sync.
        if not getattr(self, "_init_seen", False):
            self._init_seen = bool(self.initialized)
        return self._init_seen

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        # A loaded state brings its own `initialized` flag: forget the cached one,
        # or a module that ran before loading would skip (or redo) the k-means init.
        self._init_seen = False
        super()._load_from_state_dict(*args, **kwargs)

    def _kmeans_init(self, flat: torch.Tensor) -> None:
        """A few Lloyd iterations (vector-quantize-pytorch's kmeans init) from k-means++ seeds."""
        with torch.no_grad():
            centroids = self._kmeans_plus_plus(flat)
            for _ in range(self.kmeans_iters):
                self.codebook.data.copy_(centroids)
                assign = self.nearest(flat)
                sums = torch.zeros_like(centroids).index_add_(0, assign, flat)
                counts = torch.bincount(assign, minlength=self.num_embeddings).float()
                # An empty cluster keeps its centroid (a data point), so codes stay on the data.
                centroids = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None], centroids)
            self.codebook.data.copy_(centroids)
            if self.codebook_update == "ema":
                # The statistics start afresh with the new codebook, and so does their debiasing.
                self.ema_count.zero_()
                self.ema_sum.zero_()
                self.ema_steps.zero_()
            self.initialized.fill_(True)
            self._init_seen = True

    def _kmeans_plus_plus(self, flat: torch.Tensor) -> torch.Tensor:
        """K batch vectors by D^2 sampling (Arthur & Vassilvitskii 2007).

        Seeds drawn uniformly often put two codes in one cluster; Lloyd then parks
        one of them between two clusters, away from every data point (measured in
        test_codebook.py::test_kmeans_init_places_codes_on_the_data). With fewer
        distinct vectors than K, the distances all reach 0 and the remaining codes
        repeat batch vectors uniformly; restarts separate them later.
        """
        n = flat.shape[0]
        chosen = [torch.randint(n, (1,), device=flat.device)]
        closest = (flat - flat[chosen[0]]).pow(2).sum(1)
        for _ in range(1, self.num_embeddings):
            weights = torch.where(closest.sum() > 0, closest, torch.ones_like(closest))
            chosen.append(torch.multinomial(weights, 1))
            closest = torch.minimum(closest, (flat - flat[chosen[-1]]).pow(2).sum(1))
        return flat[torch.cat(chosen)].clone()

    def _update_usage(self, counts: torch.Tensor) -> None:
        counts = counts.float()
        first = torch.isnan(self.usage_count)
        # With decay 0.99 a code that served ~700 vectors per batch (K=25, 128 images) needs
        # ln(700)/0.01 ~ 650 steps of zero use to fall below 1: longer than a short run, so
        # restarts never fired. 0.9 notices within ~60 steps (vector-quantize-pytorch uses 0.8).
        decay = self.usage_decay
        self.usage_count.copy_(torch.where(first, counts, decay * self.usage_count + (1 - decay) * counts))

    def _ema_update(self, flat: torch.Tensor, indices: torch.Tensor, counts: torch.Tensor) -> None:
        """EMA codebook (van den Oord et al. 2017, appendix A.1) with zero-debiased statistics.

        The running count and sum start at zero; dividing by (1 - decay^t), as
        Adam does for its moments, removes that bias, so after one step the code
        is exactly the mean of its assigned vectors rather than ~1% of it.
        """
        decay = self.ema_decay
        sums = torch.zeros_like(self.ema_sum).index_add_(0, indices, flat)
        self.ema_count.mul_(decay).add_(counts.float(), alpha=1 - decay)
        self.ema_sum.mul_(decay).add_(sums, alpha=1 - decay)
        self.ema_steps.add_(1)
        debias = 1.0 - torch.pow(self.ema_count.new_tensor(decay), self.ema_steps)
        count = self.ema_count / debias
        total = count.sum()
        # Laplace smoothing keeps an unused code from dividing by zero (Sonnet's VectorQuantizerEMA).
        smoothed = (count + self.ema_eps) / (total + self.num_embeddings * self.ema_eps) * total
        used = count > 0
        new = (self.ema_sum / debias) / smoothed[:, None]
        self.codebook.copy_(torch.where(used[:, None], new, self.codebook))

    def _restart_dead_codes(self, flat: torch.Tensor) -> None:
        """Move codes whose usage EMA fell below the threshold onto random batch vectors.

        Written with `torch.where` over all K codes, so it never reads a value back
        to the host (no device sync per step on CUDA).
        """
        dead = self.usage_count < self.dead_code_threshold
        n = flat.shape[0]
        # Distinct vectors when the batch has enough, so two dead codes never land on the same
        # point (one of them would stay unused and die again).
        choice = (
            torch.randperm(n, device=flat.device)[: self.num_embeddings]
            if n >= self.num_embeddings
            else torch.randint(n, (self.num_embeddings,), device=flat.device)
        )
        pick = flat[choice]
        self.codebook.data.copy_(torch.where(dead[:, None], pick.to(self.codebook.dtype), self.codebook.data))
        # A restarted code starts as if used at twice the threshold, so it has time to attract vectors.
        self.usage_count.copy_(torch.where(dead, 2.0 * max(self.dead_code_threshold, 1.0), self.usage_count))
        if self.codebook_update == "ema":
            debias = 1.0 - torch.pow(self.ema_count.new_tensor(self.ema_decay), self.ema_steps.clamp(min=1))
            # A debiased count of 1 whose mean is the new code.
            self.ema_count.copy_(torch.where(dead, debias, self.ema_count))
            self.ema_sum.copy_(torch.where(dead[:, None], pick * debias, self.ema_sum))
        self.restarts.add_(dead.sum())
