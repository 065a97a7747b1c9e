"""Autoregressive priors over the VQ-VAE's grid of code indices: the network only.

The code of an image is an H x W grid (12 x 12 for the project's VQ-VAE) of
indices in [0, K). A prior factorises its probability in raster order,
p(c) = prod_i p(c_i | c_<i, class), so the log-likelihood of a code is exact
(a sum of H*W log-softmaxes) and sampling goes one position at a time.

Two networks share that contract:

- `PriorTransformer`: a small causal (GPT-style, pre-LayerNorm) transformer
  over the H*W positions with token and position embeddings, as the second
  stage of taming-transformers and nanoGPT. Sampling keeps a key-value cache,
  so each new position costs one token's forward, not the whole sequence's.
- `GatedPixelCNN`: the gated PixelCNN with vertical and horizontal stacks
  (van den Oord et al. 2016, "Conditional Image Generation with PixelCNN
  Decoders"), the prior the VQ-VAE paper trains (van den Oord et al. 2017,
  section 4.1). Sampling recomputes the whole grid for every position.

Both take an optional class (0..num_classes-1) per sequence: the class is the
transformer's start token and the PixelCNN's per-layer bias. The index
`num_classes` means "no class": a model trained with some sequences shown
that token (class dropout) is conditional and unconditional at once, and
`classes=None` asks for the unconditional distribution.

Both also give the exact full conditional of one position given all the
others (`full_conditional_logits`): the K values of that position scored as K
whole codes, which `vqlib.prior.resample` draws from in Gibbs sweeps.

All log-probabilities are natural logarithms (nats); divide by ln 2 for bits.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

ARCHITECTURES = ("transformer", "pixelcnn")


class _Prior(nn.Module):
    """What both networks share: the contract of `logits`, the log-likelihoods and sampling."""

    num_codes: int
    grid_size: tuple[int, int]
    num_classes: int
    sample_in_one_thread = False  # the key-value cached transformer steps one token at a time

    @property
    def length(self) -> int:
        return self.grid_size[0] * self.grid_size[1]

    def _classes(self, classes: Optional[torch.Tensor], n: int, device) -> torch.Tensor:
        """Class indices (n,) with `num_classes` ("no class") where none is given."""
        if classes is None:
            return torch.full((n,), self.num_classes, dtype=torch.long, device=device)
        classes = torch.as_tensor(classes, device=device).long().reshape(-1)
        if classes.numel() == 1 and n != 1:
            classes = classes.expand(n)
        if len(classes) != n or bool(((classes < 0) | (classes > self.num_classes)).any()):
            raise ValueError(f"classes must be {n} indices in [0, {self.num_classes}], one per code")
        return classes

    def _flat(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes (N, H, W) or (N, H*W), any integer type -> (N, H*W) long."""
        codes = codes.reshape(len(codes), -1).long()
        if codes.shape[1] != self.length:
            raise ValueError(f"codes must hold {self.length} positions ({self.grid_size}), not {codes.shape[1]}")
        return codes

    def logits(self, codes: torch.Tensor, classes: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Codes (N, H, W) -> logits (N, H*W, K): position i's distribution given the codes before i (raster order)."""
        raise NotImplementedError

    def position_log_probs(self, codes: torch.Tensor, classes: Optional[torch.Tensor] = None) -> torch.Tensor:
        """log p(c_i | c_<i, class) in nats for every position: (N, H*W)."""
        flat = self._flat(codes)
        log_p = F.log_softmax(self.logits(flat, classes).float(), dim=-1)
        return log_p.gather(-1, flat.unsqueeze(-1)).squeeze(-1)

    def log_prob(self, codes: torch.Tensor, classes: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Exact log-likelihood of each code in nats: (N,). Bits per image are -log_prob / ln 2."""
        return self.position_log_probs(codes, classes).sum(dim=1)

    def loss(self, codes: torch.Tensor, classes: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Mean negative log-likelihood per position in nats (the training objective)."""
        flat = self._flat(codes)
        logits = self.logits(flat, classes)
        return F.cross_entropy(logits.reshape(-1, self.num_codes).float(), flat.reshape(-1))

    # ------------------------------------------------------------------ sampling

    def _start(self, n: int, classes: torch.Tensor) -> object:
        """A fresh sampling state for n sequences (the network's cache)."""
        raise NotImplementedError

    def _next_logits(self, state: object, tokens: torch.Tensor) -> torch.Tensor:
        """Feed the next codes `tokens` (N, L), L >= 0, after those fed before; return the logits (N, K) of the
        position after them."""
        raise NotImplementedError

    def full_conditional_logits(
        self,
        codes: torch.Tensor,
        position: int,
        classes: Optional[torch.Tensor] = None,
        *,
        top_k: Optional[int] = None,
    ) -> torch.Tensor:
        """Unnormalised log-probabilities (N, K) of the code at `position` given every other code.

        Entry v is log p(c_i = v | c_<i) + sum over j > i of log p(c_j | c_<j, with c_i = v): the
        joint log p(c with c_i = v) less the terms before i, which do not depend on v. A softmax
        over v is the exact full conditional p(c_i | all other codes). With `top_k`, only the k
        values likeliest under p(c_i | c_<i) are scored and the others get -inf: k/K of the cost,
        no longer exact. This general form scores each candidate with a whole forward; the
        transformer overrides it.
        """
        flat = self._flat(codes)
        n, k = flat.shape[0], self.num_codes
        classes = self._classes(classes, n, flat.device)
        if top_k is None or top_k >= k:
            candidates = torch.arange(k, device=flat.device).expand(n, k)
        else:
            candidates = self.logits(flat, classes)[:, position].topk(top_k, dim=-1).indices
        m = candidates.shape[1]
        sequences = flat.repeat_interleave(m, dim=0)
        sequences[:, position] = candidates.reshape(-1)
        scores = self.position_log_probs(sequences, classes.repeat_interleave(m))[:, position:].sum(dim=1)
        return self._scatter(scores.view(n, m), candidates)

    def _scatter(self, scores: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """Scores (N, m) of the candidate values (N, m) -> (N, K), -inf for the values not scored."""
        if candidates.shape[1] == self.num_codes:  # all of them, in order (an arange)
            return scores
        out = torch.full((len(scores), self.num_codes), -math.inf, dtype=scores.dtype, device=scores.device)
        return out.scatter(1, candidates, scores)

    @torch.no_grad()
    def sample(
        self,
        num: int,
        classes: Optional[torch.Tensor | int] = None,
        *,
        temperature: float = 1.0,
        top_k: Optional[int] = None,
        generator: Optional[torch.Generator] = None,
        prefix: Optional[torch.Tensor] = None,
        guidance: float = 0.0,
    ) -> torch.Tensor:
        """`num` codes (num, H, W) drawn from the prior, long.

        `classes`: None (unconditional), one class for all, or one per sample.
        `temperature` divides the logits; `top_k` keeps the k likeliest codes at each
        position. `prefix` (num or 1, R) holds the first R codes in raster order
        (R = rows * W keeps whole rows), which are kept and conditioned on: completion.
        `guidance` w > 0 draws with classifier-free guidance (Ho and Salimans 2022): the
        logits c + w (c - u) of the model given the class (c) and given "no class" (u),
        which a model trained with class dropout answers both; 0 is the model itself.
        """
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, not {temperature}")
        if not (math.isfinite(guidance) and guidance >= 0):
            raise ValueError(f"guidance must be a number >= 0, not {guidance}")
        device = next(self.parameters()).device
        classes = self._classes(classes, num, device)
        guided = guidance > 0
        if guided and bool((classes == self.num_classes).any()):
            raise ValueError("guidance needs a class for every sample: it pushes each one towards its class")
        out = torch.zeros(num, self.length, dtype=torch.long, device=device)
        known = 0
        if prefix is not None:
            prefix = prefix.reshape(prefix.shape[0], -1).long().to(device)
            known = prefix.shape[1]
            if known > self.length:
                raise ValueError(f"the prefix holds {known} codes, more than the {self.length} positions")
            out[:, :known] = prefix.expand(num, known)
        if known == self.length:  # nothing left to sample
            return out.view(num, *self.grid_size)
        was_training, threads = self.training, torch.get_num_threads()
        self.eval()
        if self.sample_in_one_thread and device.type == "cpu":
            # One token's step is a few small matmuls: a second thread only waits on the first, and on a
            # busy 2-core machine 64 samples took 32-39 s with 2 threads against 3.3-6.8 s with one.
            torch.set_num_threads(1)
        try:
            if guided:  # the same codes fed twice: given the class, then given "no class"
                state = self._start(2 * num, torch.cat([classes, torch.full_like(classes, self.num_classes)]))

                def next_logits(tokens: torch.Tensor) -> torch.Tensor:
                    both = self._next_logits(state, torch.cat([tokens, tokens])).float()
                    given, free = both[:num], both[num:]
                    return given + guidance * (given - free)

            else:
                state = self._start(num, classes)

                def next_logits(tokens: torch.Tensor) -> torch.Tensor:
                    return self._next_logits(state, tokens)

            logits = next_logits(out[:, :known])
            for i in range(known, self.length):
                logits = logits.float() / temperature
                if top_k is not None and top_k < self.num_codes:
                    kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
                    logits = logits.masked_fill(logits < kth, -math.inf)
                probs = torch.softmax(logits, dim=-1)
                out[:, i] = torch.multinomial(probs, 1, generator=generator).squeeze(1)
                if i + 1 < self.length:
                    logits = next_logits(out[:, i : i + 1])
        finally:
            torch.set_num_threads(threads)
            self.train(was_training)
        return out.view(num, *self.grid_size)


# ----------------------------------------------------------------------------- transformer


class CausalSelfAttention(nn.Module):
    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        if width % heads:
            raise ValueError(f"width ({width}) must be a multiple of heads ({heads})")
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.dropout = dropout
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, cache: Optional[list] = None) -> torch.Tensor:
        """x (N, L, C). With `cache` (a list [keys, values] or [None, None]), x continues the cached
        sequence: its keys and values are appended, and x attends to all of them.

        A third entry, the sequence's whole length (an int), makes the cache preallocate keys and values
        for all positions at the first call and write each new position in place: sampling one token at
        a time then copies nothing (growing the cache by concatenation copied all of it at every step,
        most of the sampler's time)."""
        n, length, c = x.shape
        q, k, v = self.qkv(x).view(n, length, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        past = 0
        if cache is not None:
            if cache[0] is not None:
                past = cache[0].shape[2]
            if len(cache) > 2 and cache[2] is not None:
                if isinstance(cache[2], int):
                    cache[2] = tuple(k.new_empty(n, self.heads, cache[2], c // self.heads) for _ in range(2))
                keys, values = cache[2]
                keys[:, :, past : past + length], values[:, :, past : past + length] = k, v
                k, v = keys[:, :, : past + length], values[:, :, : past + length]
            elif past:
                k, v = torch.cat([cache[0], k], dim=2), torch.cat([cache[1], v], dim=2)
            cache[0], cache[1] = k, v
        if past == 0:
            # The whole (or the first part of the) sequence: the plain causal mask.
            y = F.scaled_dot_product_attention(
                q, k, v, is_causal=length > 1, dropout_p=self.dropout if self.training else 0.0
            )
        elif length == 1:
            # One new query (a sampling step) sees every key: no mask, and two small batched matmuls, which
            # on the CPU take a fraction of the fused kernel's time at this size.
            weights = torch.softmax((q @ k.transpose(-2, -1)) * (q.shape[-1] ** -0.5), dim=-1)
            y = weights @ v
        else:
            # New queries see every cached key and the new keys up to their own position.
            mask = torch.ones(length, past + length, dtype=torch.bool, device=x.device).tril(diagonal=past)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.resid_dropout(self.proj(y.transpose(1, 2).reshape(n, length, c)))


class Block(nn.Module):
    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        self.ln1 = nn.LayerNorm(width)
        self.attn = CausalSelfAttention(width, heads, dropout)
        self.ln2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width), nn.Dropout(dropout)
        )

    def forward(self, x: torch.Tensor, cache: Optional[list] = None) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), cache)
        return x + self.mlp(self.ln2(x))


class PriorTransformer(_Prior):
    """A causal transformer over the H*W code positions in raster order.

    The input at position i is the code at i - 1 (the class token at i = 0)
    plus a learned embedding of i; the output at i is the distribution of
    code i. Weight init as nanoGPT (normal, std 0.02; residual projections
    scaled by 1/sqrt(2 * layers), GPT-2's rule).
    """

    sample_in_one_thread = True

    def __init__(
        self,
        num_codes: int,
        *,
        grid_size: tuple[int, int] = (12, 12),
        num_classes: int = 10,
        layers: int = 4,
        heads: int = 4,
        width: int = 128,
        dropout: float = 0.1,
    ):
        super().__init__()
        self.num_codes, self.grid_size, self.num_classes = int(num_codes), tuple(grid_size), int(num_classes)
        self.token = nn.Embedding(num_codes, width)
        self.start = nn.Embedding(num_classes + 1, width)  # the class token; index num_classes: no class
        self.position = nn.Embedding(self.length, width)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(width, heads, dropout) for _ in range(layers))
        self.ln = nn.LayerNorm(width)
        self.head = nn.Linear(width, num_codes, bias=False)
        self.apply(self._init)
        for name, p in self.named_parameters():
            if name.endswith("proj.weight") or name.endswith("mlp.2.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * layers))

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def _embed(self, tokens: torch.Tensor, position: int, classes: Optional[torch.Tensor]) -> torch.Tensor:
        """Inputs of positions [position, position + L): class token at 0, else the previous code."""
        x = self.token(tokens)  # tokens are the codes at positions - 1
        if position == 0:
            x = torch.cat([self.start(classes).unsqueeze(1), x], dim=1)
        return self.drop(x + self.position.weight[position : position + x.shape[1]])

    def logits(self, codes: torch.Tensor, classes: Optional[torch.Tensor] = None) -> torch.Tensor:
        flat = self._flat(codes)
        x = self._embed(flat[:, :-1], 0, self._classes(classes, len(flat), flat.device))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln(x))

    def _start(self, n: int, classes: torch.Tensor) -> dict:
        return {"classes": classes, "caches": [[None, None, self.length] for _ in self.blocks], "fed": 0}

    def _feed(self, state: dict, tokens: torch.Tensor) -> torch.Tensor:
        """The last block's outputs (N, L', C) for the next inputs; their keys and values join the cache."""
        # Position p's input is code p - 1, so the first call feeds the class token too;
        # later calls feed only the new codes.
        fed = state["fed"]
        if fed == 0:
            x = self._embed(tokens, 0, state["classes"])
        else:
            x = self.token(tokens) + self.position.weight[fed : fed + tokens.shape[1]]
        state["fed"] = fed + x.shape[1]
        for block, cache in zip(self.blocks, state["caches"], strict=True):
            x = block(x, cache)
        return x

    def _next_logits(self, state: dict, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.ln(self._feed(state, tokens)[:, -1]))

    def full_conditional_logits(
        self,
        codes: torch.Tensor,
        position: int,
        classes: Optional[torch.Tensor] = None,
        *,
        top_k: Optional[int] = None,
    ) -> torch.Tensor:
        # Positions up to i see only the codes before i, the same for every candidate: that prefix runs
        # once per code and the candidates share its keys and values; only positions i+1 .. L-1 run once
        # per candidate. The cost is K x (L - 1 - i) token steps: a cell near the end is cheap.
        flat = self._flat(codes)
        n, k = flat.shape[0], self.num_codes
        state = self._start(n, self._classes(classes, n, flat.device))
        first = F.log_softmax(self._next_logits(state, flat[:, :position]).float(), dim=-1)
        if top_k is None or top_k >= k:
            candidates = torch.arange(k, device=flat.device).expand(n, k)
        else:
            candidates = first.topk(top_k, dim=-1).indices
        scores = first.gather(1, candidates)
        if position < self.length - 1:
            m = candidates.shape[1]
            for cache in state["caches"]:  # the candidates' caches grow once, by concatenation
                cache[0], cache[1] = cache[0].repeat_interleave(m, dim=0), cache[1].repeat_interleave(m, dim=0)
                cache[2] = None
            inputs = flat[:, position:-1].repeat_interleave(m, dim=0)  # the inputs of positions i+1 .. L-1
            inputs[:, 0] = candidates.reshape(-1)
            logits = self.head(self.ln(self._feed(state, inputs))).float()
            targets = flat[:, position + 1 :].repeat_interleave(m, dim=0).unsqueeze(-1)
            later = logits.gather(-1, targets).squeeze(-1) - torch.logsumexp(logits, dim=-1)
            scores = scores + later.sum(dim=1).view(n, m)
        return self._scatter(scores, candidates)


# ----------------------------------------------------------------------------- gated PixelCNN


class GatedMaskedConv(nn.Module):
    """One gated layer with a vertical and a horizontal stack (van den Oord et al. 2016, figure 2).

    The vertical stack's output at row r depends on input rows < r only: its kernel
    covers rows r-k//2..r, and the first layer masks row r. The horizontal stack at
    (r, c) adds the vertical stack's row r (all columns of the rows above) to
    columns c-k//2..c of its own row, masked to < c in the first layer. Together
    they see every earlier position: no blind spot, unlike the original PixelCNN.
    """

    def __init__(self, width: int, kernel: int, first: bool, num_classes: int):
        super().__init__()
        self.first = first
        half = kernel // 2
        self.vertical = nn.Conv2d(width, 2 * width, (half + 1, kernel), padding=(half, half))
        self.horizontal = nn.Conv2d(width, 2 * width, (1, half + 1), padding=(0, half))
        self.vertical_to_horizontal = nn.Conv2d(2 * width, 2 * width, 1)
        self.horizontal_out = nn.Conv2d(width, width, 1)
        self.class_bias = nn.Embedding(num_classes + 1, 2 * width)
        vmask = torch.ones_like(self.vertical.weight)
        hmask = torch.ones_like(self.horizontal.weight)
        if first:  # the first layer must not see the position it predicts
            vmask[:, :, -1] = 0
            hmask[:, :, :, -1] = 0
        self.register_buffer("vmask", vmask, persistent=False)
        self.register_buffer("hmask", hmask, persistent=False)

    @staticmethod
    def _gate(x: torch.Tensor) -> torch.Tensor:
        a, b = x.chunk(2, dim=1)
        return torch.tanh(a) * torch.sigmoid(b)

    def forward(self, v: torch.Tensor, h: torch.Tensor, classes: torch.Tensor):
        height, width = v.shape[-2:]
        bias = self.class_bias(classes)[:, :, None, None]
        v_pre = F.conv2d(v, self.vertical.weight * self.vmask, self.vertical.bias, padding=self.vertical.padding)
        v_pre = v_pre[:, :, :height]  # the padding's extra rows below: keep rows that see only rows above
        h_weight = self.horizontal.weight * self.hmask
        h_pre = F.conv2d(h, h_weight, self.horizontal.bias, padding=self.horizontal.padding)[:, :, :, :width]
        v_out = self._gate(v_pre + bias)
        h_out = self.horizontal_out(self._gate(h_pre + self.vertical_to_horizontal(v_pre) + bias))
        return v_out, (h_out if self.first else h + h_out)


class GatedPixelCNN(_Prior):
    """The gated PixelCNN over the H x W code grid: code embeddings, `layers` gated layers, a 1x1 head."""

    def __init__(
        self,
        num_codes: int,
        *,
        grid_size: tuple[int, int] = (12, 12),
        num_classes: int = 10,
        layers: int = 8,
        width: int = 64,
        kernel: int = 5,
    ):
        super().__init__()
        self.num_codes, self.grid_size, self.num_classes = int(num_codes), tuple(grid_size), int(num_classes)
        self.token = nn.Embedding(num_codes, width)
        self.layers = nn.ModuleList(GatedMaskedConv(width, kernel, i == 0, num_classes) for i in range(layers))
        self.head = nn.Sequential(nn.Conv2d(width, 4 * width, 1), nn.ReLU(), nn.Conv2d(4 * width, num_codes, 1))

    def logits(self, codes: torch.Tensor, classes: Optional[torch.Tensor] = None) -> torch.Tensor:
        flat = self._flat(codes)
        classes = self._classes(classes, len(flat), flat.device)
        x = self.token(flat.view(-1, *self.grid_size)).permute(0, 3, 1, 2)
        v, h = x, x
        for layer in self.layers:
            v, h = layer(v, h, classes)
        return self.head(h).flatten(2).transpose(1, 2)

    def _start(self, n: int, classes: torch.Tensor) -> dict:
        codes = torch.zeros(n, self.length, dtype=torch.long, device=classes.device)
        return {"classes": classes, "codes": codes, "fed": 0}

    def _next_logits(self, state: dict, tokens: torch.Tensor) -> torch.Tensor:
        # No cache: the whole grid is recomputed for each position (the reference's sampler).
        fed = state["fed"]
        state["codes"][:, fed : fed + tokens.shape[1]] = tokens
        state["fed"] = fed + tokens.shape[1]
        return self.logits(state["codes"], state["classes"])[:, min(state["fed"], self.length - 1)]


# ----------------------------------------------------------------------------- per-position categorical


class PositionPrior(_Prior):
    """Every position drawn on its own from a categorical table: p(c | class) = prod_i p_i(c_i | class).

    The baseline any autoregressive prior must beat: it knows which codes each
    position (and each class, at each position) uses, and nothing of their
    neighbours. The table is its only parameter (log-probabilities in nats, one
    row per class plus row `num_classes` for "no class"), set by counting
    (`vqlib.prior.fit_position_prior`), never by gradients. Its logits do not
    depend on the codes, so it shares the contract of the networks above:
    log_prob, sample, temperature and top-k, prefixes.
    """

    def __init__(self, log_probs: torch.Tensor, *, grid_size: tuple[int, int] = (12, 12)):
        super().__init__()
        if log_probs.ndim != 3 or log_probs.shape[1] != grid_size[0] * grid_size[1]:
            raise ValueError(
                f"log_probs must be (classes + 1, {grid_size[0] * grid_size[1]}, K), not {log_probs.shape}"
            )
        self.num_codes, self.grid_size = int(log_probs.shape[2]), tuple(grid_size)
        self.num_classes = int(log_probs.shape[0]) - 1
        self.log_probs = nn.Parameter(log_probs.double(), requires_grad=False)

    def logits(self, codes: torch.Tensor, classes: Optional[torch.Tensor] = None) -> torch.Tensor:
        flat = self._flat(codes)
        return self.log_probs[self._classes(classes, len(flat), flat.device)]

    def position_log_probs(self, codes: torch.Tensor, classes: Optional[torch.Tensor] = None) -> torch.Tensor:
        # A gather from the table: the (N, H*W, K) logits above would be 58 MB for 1,000 codes of K=100.
        flat = self._flat(codes)
        rows = self._classes(classes, len(flat), flat.device)
        positions = torch.arange(self.length, device=flat.device)
        return self.log_probs[rows[:, None], positions[None, :], flat]

    def _start(self, n: int, classes: torch.Tensor) -> dict:
        return {"classes": classes, "fed": 0}

    def _next_logits(self, state: dict, tokens: torch.Tensor) -> torch.Tensor:
        state["fed"] += tokens.shape[1]
        return self.log_probs[state["classes"], state["fed"]]
