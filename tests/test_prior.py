"""The prior over the VQ-VAE's code: exact likelihoods, causality, sampling, resumption, the checkpoint, the CLI,
resampling given all other cells, the per-position baseline and the reuse of a prior trained with the same settings.

Real data throughout: the published protocol VQ-VAE (K100_D64) encodes small
subsets of FashionMNIST, and the priors are tiny so that each test takes seconds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import REPO, tiny_prior_config
from vqlib.config import PriorConfig
from vqlib.errors import CheckpointError, ConfigError
from vqlib.models.prior import GatedPixelCNN, PriorTransformer

PROTOCOL = str(REPO / "checkpoints" / "pretrained" / "K100_D64" / "best.pt")
OTHER_K = str(REPO / "checkpoints" / "pretrained" / "K50_D64" / "best.pt")
SAME_K_OTHER_WEIGHTS = str(REPO / "checkpoints" / "pretrained" / "K100_D32" / "best.pt")
ARCHITECTURES = {
    "transformer": lambda k, grid: PriorTransformer(k, grid_size=grid, layers=2, heads=2, width=16, dropout=0.0),
    "pixelcnn": lambda k, grid: GatedPixelCNN(k, grid_size=grid, layers=3, width=16, kernel=3),
}


def tiny_config(tmp_path, **overrides) -> PriorConfig:
    return tiny_prior_config(tmp_path / "prior", **{"vqvae_checkpoint": PROTOCOL, **overrides})


@pytest.fixture(scope="module")
def tiny_prior(data, tmp_path_factory):
    """A class-conditional prior trained for one epoch on 160 real codes of the protocol VQ-VAE."""
    from vqlib.prior import train_prior

    folder = tmp_path_factory.mktemp("prior")
    run = train_prior(tiny_config(folder, class_conditional=True), data, progress=False)
    return run.best_checkpoint


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("cls", [None, 3])
def test_probabilities_sum_to_one_over_every_code(architecture, cls):
    torch.manual_seed(0)
    model = ARCHITECTURES[architecture](3, (2, 2)).eval()
    every = torch.tensor(list(itertools.product(range(3), repeat=4))).view(-1, 2, 2)
    with torch.no_grad():
        total = model.log_prob(every, cls).double().exp().sum().item()
    assert total == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_a_later_cell_never_changes_an_earlier_conditional(architecture):
    torch.manual_seed(0)
    model = ARCHITECTURES[architecture](10, (4, 5)).eval()
    codes = torch.randint(0, 10, (1, 20))
    with torch.no_grad():
        logits = model.logits(codes)
        for j in range(20):
            changed = codes.clone()
            changed[0, j] = (changed[0, j] + 1) % 10
            other = model.logits(changed)
            assert torch.equal(logits[0, : j + 1], other[0, : j + 1]), f"position <= {j} saw position {j}"
            if (j + 1) % 5:  # its right neighbour does depend on it: the test can tell a model that sees nothing
                assert not torch.allclose(logits[0, j + 1], other[0, j + 1])


def test_kv_cached_steps_give_the_uncached_logits():
    torch.manual_seed(0)
    model = PriorTransformer(10, grid_size=(3, 4), layers=2, heads=2, width=16, dropout=0.1).eval()
    codes = torch.randint(0, 10, (2, 12))
    classes = torch.tensor([4, 10])
    with torch.no_grad():
        full = model.logits(codes, classes)
        for known in (0, 5):  # from the class token alone, and after a prefix fed in one piece
            state = model._start(2, classes)
            steps = [model._next_logits(state, codes[:, :known])]
            for i in range(known, 11):
                steps.append(model._next_logits(state, codes[:, i : i + 1]))
            torch.testing.assert_close(torch.stack(steps, 1), full[:, known:], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_seeded_sampling_is_reproducible_and_keeps_the_prefix(architecture):
    torch.manual_seed(0)
    model = ARCHITECTURES[architecture](10, (3, 4)).eval()
    prefix = torch.tensor([[1, 2, 3, 4]])
    draw = lambda seed: model.sample(  # noqa: E731
        6, 2, generator=torch.Generator().manual_seed(seed), prefix=prefix, temperature=1.5
    )
    first = draw(1)
    assert torch.equal(first, draw(1))
    assert not torch.equal(first, draw(2))
    assert first.shape == (6, 3, 4) and torch.equal(first.view(6, -1)[:, :4], prefix.expand(6, 4))
    top1 = model.sample(3, generator=torch.Generator().manual_seed(0), top_k=1)
    assert torch.equal(top1[0], top1[1])  # top_k=1 is greedy: every sample is the same


def test_resume_after_an_interruption_is_bitwise_equal(data, tmp_path):
    from vqlib.prior import train_prior

    # Class-conditional with dropout: both draw from the RNG, which last.pt must carry over.
    whole = train_prior(tiny_config(tmp_path / "a", epochs=2, class_conditional=True), data, progress=False)
    train_prior(tiny_config(tmp_path / "b", epochs=1, class_conditional=True), data, progress=False)
    resumed = train_prior(
        tiny_config(tmp_path / "b", epochs=2, class_conditional=True), data, resume=True, progress=False
    )
    a = torch.load(tmp_path / "a" / "prior" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "prior" / "last.pt", weights_only=True)
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for name, tensor in a["state_dict"].items():
        assert torch.equal(tensor, b["state_dict"][name]), name
    assert [row["val_nll"] for row in whole.history] == [row["val_nll"] for row in resumed.history]
    assert len(resumed.history) == 2 and math.isfinite(resumed.best_val_bits_per_image)


def test_precision_is_recorded_and_kept_for_life(data, tmp_path):
    from vqlib.prior import train_prior

    fp32 = train_prior(tiny_config(tmp_path, precision="fp32"), data, progress=False)
    last = torch.load(tmp_path / "prior" / "last.pt", weights_only=True)
    assert fp32.precision == last["precision"] == "fp32"
    assert [row["precision"] for row in fp32.history] == ["fp32"]
    # An explicit other precision would make the continued run another run: refused in one sentence.
    with pytest.raises(CheckpointError, match="fp32"):
        train_prior(tiny_config(tmp_path, precision="bf16", epochs=2), data, resume=True, progress=False)
    # 'auto' keeps the run's own, whatever this CPU would choose for a new run.
    resumed = train_prior(tiny_config(tmp_path, precision="auto", epochs=2), data, resume=True, progress=False)
    assert [row["precision"] for row in resumed.history] == ["fp32", "fp32"]
    # bf16 as asked (emulated on a CPU without bf16 units, still correct): recorded, and the loss stays finite.
    bf16 = train_prior(tiny_config(tmp_path / "b", precision="bf16"), data, progress=False)
    assert bf16.precision == "bf16" and math.isfinite(bf16.best_val_bits_per_image)


def test_the_checkpoint_loads_weights_only_and_refuses_another_vqvae(tiny_prior):
    from vqlib.checkpoints import load_vqvae
    from vqlib.prior import bits_per_image, load_pair, load_prior

    raw = torch.load(tiny_prior, weights_only=True)
    assert raw["kind"] == "prior" and raw["network"] == {"num_codes": 100, "grid_size": [12, 12], "num_classes": 10}
    vqvae, _ = load_vqvae(PROTOCOL)
    prior, _ = load_prior(tiny_prior, vqvae=vqvae)
    codes = prior.sample(3, generator=torch.Generator().manual_seed(0))
    bits = bits_per_image(prior, codes)
    assert bits.shape == (3,) and bool((bits > 0).all())
    torch.testing.assert_close(bits, -prior.log_prob(codes).double() / math.log(2))
    other, _ = load_vqvae(SAME_K_OTHER_WEIGHTS)
    with pytest.raises(CheckpointError, match="weights differ") as refused:
        load_prior(tiny_prior, vqvae=other)
    assert "\n" not in str(refused.value)
    with pytest.raises(CheckpointError, match="K=100 .* K=50"):
        load_pair(tiny_prior, OTHER_K)


def test_completion_keeps_the_image_rows(data, tiny_prior):
    from vqlib.classify import encode_codes
    from vqlib.prior import complete, load_pair, sample_images

    prior, vqvae, _ = load_pair(tiny_prior)
    image = data.test_images[0]
    images, codes = complete(prior, vqvae, image, 5, num=3, seed=0)
    own = encode_codes(vqvae, image[None]).long()[0]
    assert images.shape == (3, 1, 28, 28) and torch.equal(codes[:, :5], own[:5].expand(3, 5, 12))
    assert torch.equal(complete(prior, vqvae, image, 12, num=2)[1], own.expand(2, 12, 12))  # nothing left to sample
    images, codes = sample_images(prior, vqvae, 2, classes="Trouser", seed=0)
    assert images.shape == (2, 1, 28, 28) and float(images.min()) >= 0 and float(images.max()) <= 1


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    return err


def test_cli_samples_and_completes(tiny_prior, tmp_path, capsys):
    from vqlib.cli import main

    out = tmp_path / "grid.png"
    assert main(["sample", "--prior", str(tiny_prior), "--num", "4", "--class", "trouser", "--output", str(out)]) == 0
    saved = torch.load(out.with_suffix(".pt"), weights_only=True)
    assert out.stat().st_size > 0 and saved["codes"].shape == (4, 12, 12) and saved["class_id"] == 1
    out = tmp_path / "completed.png"
    args = ["sample", "--prior", str(tiny_prior), "--num", "3", "--complete", "test:7", "--keep-rows", "4"]
    assert main([*args, "--output", str(out)]) == 0
    assert torch.load(out.with_suffix(".pt"), weights_only=True)["keep_rows"] == 4


def test_cli_refuses_a_bad_class_and_a_prior_of_another_k(tiny_prior, tmp_path, capsys):
    from vqlib.cli import main

    out = str(tmp_path / "x.png")
    assert main(["sample", "--prior", str(tiny_prior), "--class", "Hat", "--output", out]) == 2
    assert "no FashionMNIST class 'Hat'" in _error_line(capsys)
    assert main(["sample", "--prior", str(tiny_prior), "--vqvae-checkpoint", OTHER_K, "--output", out]) == 2
    assert "K=100" in _error_line(capsys)
    assert main(["sample", "--prior", str(tiny_prior), "--complete", "test:99999", "--output", out]) == 2
    assert "test:INDEX" in _error_line(capsys)


def test_a_prior_trained_without_classes_refuses_to_draw_one(data, tmp_path, capsys):
    """Its class embeddings were never trained: asking it for a class is an error, not a silent draw."""
    from vqlib.checkpoints import load_vqvae
    from vqlib.cli import main
    from vqlib.prior import load_prior, sample_images, train_prior

    run = train_prior(tiny_config(tmp_path, class_conditional=False), data, progress=False)
    prior, _ = load_prior(run.best_checkpoint)
    assert prior.class_conditional is False
    vqvae, _ = load_vqvae(PROTOCOL)
    images, codes = sample_images(prior, vqvae, 2, seed=0)  # without a class it samples
    assert codes.shape == (2, 12, 12)
    with pytest.raises(ConfigError, match="trained without classes"):
        sample_images(prior, vqvae, 2, classes="Trouser", seed=0)
    out = str(tmp_path / "x.png")
    assert main(["sample", "--prior", str(run.best_checkpoint), "--class", "Trouser", "--output", out]) == 2
    assert "trained without classes" in _error_line(capsys) and not Path(out).exists()


# ----------------------------------------------------------------------------- resampling given all other cells


@contextlib.contextmanager
def one_thread():
    """Tiny tensors: on the busy 2-core machine a second thread only waits. Training the toy prior below
    took 78-125 s with two threads and 1-4 s with one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module", params=list(ARCHITECTURES))
def toy_prior(request):
    """A tiny prior on a 2 x 2 grid with K = 3, trained on codes whose four cells mostly agree: a later
    cell then says much about an earlier one, which a conditional on the earlier cells alone cannot know."""
    with one_thread():
        return train_toy_prior(request.param)


def train_toy_prior(architecture: str):
    torch.manual_seed(0)
    model = ARCHITECTURES[architecture](3, (2, 2))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        codes = torch.randint(0, 3, (64, 1)).expand(64, 4).clone()
        noise = torch.rand(64, 4) < 0.15
        codes[noise] = torch.randint(0, 3, (int(noise.sum()),))
        loss = model.loss(codes.view(64, 2, 2), torch.randint(0, 11, (64,)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


EVERY_2X2 = torch.tensor(list(itertools.product(range(3), repeat=4))).view(-1, 2, 2)


def exhaustive_conditional(model, codes: torch.Tensor, position: int, cls) -> torch.Tensor:
    """p(c_position = v, rest) / sum over v, from the joint of every code: (N, 3)."""
    joint = model.log_prob(EVERY_2X2, cls).double().exp().view(3, 3, 3, 3)
    flat = codes.view(-1, 4)
    rows = []
    for code in flat.tolist():
        index = list(code)
        index[position] = slice(None)
        rows.append(joint[tuple(index)] / joint[tuple(index)].sum())
    return torch.stack(rows)


@pytest.mark.parametrize("cls", [None, 3])
def test_the_full_conditional_is_the_exhaustive_joint_normalised(toy_prior, cls):
    from vqlib.prior import full_conditional

    with torch.no_grad():
        before_only = torch.softmax(toy_prior.logits(EVERY_2X2, cls).double(), dim=-1)
    gap = 0.0
    for position in range(4):
        got = full_conditional(toy_prior, EVERY_2X2, divmod(position, 2), classes=cls).double()
        want = exhaustive_conditional(toy_prior, EVERY_2X2, position, cls)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
        gap = max(gap, (before_only[:, position] - want).abs().max().item())
    assert gap > 0.3  # the later cells matter: a conditional on the earlier cells alone would fail above


def test_top_k_scores_the_k_likeliest_values_given_the_earlier_cells(toy_prior):
    from vqlib.prior import full_conditional

    codes = EVERY_2X2[[5, 40, 77]]
    exact = full_conditional(toy_prior, codes, (1, 0))
    truncated = full_conditional(toy_prior, codes, (1, 0), top_k=2)
    with torch.no_grad():
        kept = toy_prior.logits(codes)[:, 2].topk(2, dim=-1).indices
    assert torch.equal((truncated > 0).nonzero()[:, 1].view(3, 2).sort().values, kept.sort().values)
    renormalised = exact.gather(1, kept) / exact.gather(1, kept).sum(1, keepdim=True)
    torch.testing.assert_close(truncated.gather(1, kept), renormalised, rtol=0, atol=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_gibbs_sweeps_draw_the_masked_cells_from_their_joint_given_the_rest(toy_prior, temperature):
    """2,000 chains over the two cells of the first row, the second row fixed: their empirical distribution
    after 4 sweeps is p(first row | second row)^(1/T), normalised (total variation under 0.04)."""
    from vqlib.prior import resample

    start = torch.tensor([[0, 1], [2, 2]]).expand(2000, 2, 2)
    mask = torch.tensor([[True, True], [False, False]])
    with one_thread():
        drawn = resample(toy_prior, start, mask, sweeps=4, temperature=temperature, seed=0)
    assert torch.equal(drawn[:, 1], start[:, 1])
    counts = torch.bincount(drawn[:, 0, 0] * 3 + drawn[:, 0, 1], minlength=9).double() / 2000
    with torch.no_grad():
        joint = toy_prior.log_prob(EVERY_2X2).double().view(9, 9)[:, 2 * 3 + 2]  # second row = (2, 2)
        first_row_alone = toy_prior.log_prob(EVERY_2X2).double().exp().view(9, 9).sum(1)
    want = torch.softmax(joint / temperature, dim=0)
    assert 0.5 * (counts - want).abs().sum().item() < 0.04, (counts, want)
    # Drawing the first row as if the second did not exist lands far off: the check has teeth.
    assert 0.5 * (first_row_alone - want).abs().sum().item() > 0.2


def test_resample_redraws_only_the_mask_is_seeded_and_checks_its_input(data, tiny_prior):
    from vqlib.classify import encode_codes
    from vqlib.prior import load_pair

    prior, vqvae, _ = load_pair(tiny_prior)
    codes = encode_codes(vqvae, data.test_images[:3]).long()
    mask = torch.zeros(12, 12, dtype=torch.bool)
    mask[4:7, 5:8] = True
    with one_thread():
        check_resample(prior, codes, mask)


def check_resample(prior, codes, mask):
    from vqlib.prior import resample

    first = resample(prior, codes, mask, classes=[0, 1, 2], temperature=2.0, seed=1)
    assert first.shape == (3, 12, 12) and first.dtype == torch.long
    assert torch.equal(first[:, ~mask], codes[:, ~mask]) and not torch.equal(first, codes)
    assert torch.equal(first, resample(prior, codes, mask, classes=[0, 1, 2], temperature=2.0, seed=1))
    assert not torch.equal(first, resample(prior, codes, mask, classes=[0, 1, 2], temperature=2.0, seed=2))
    one = resample(prior, codes[0].to(torch.int16), mask, sweeps=2, top_k=5, seed=0)
    assert one.shape == (12, 12) and torch.equal(one[~mask], codes[0][~mask])
    assert torch.equal(resample(prior, codes, torch.zeros(12, 12, dtype=torch.bool), seed=0), codes)  # no cell: as is
    for kwargs, pattern in [
        (dict(codes=codes, mask=mask[:6]), r"boolean \(12, 12\) array"),
        (dict(codes=codes, mask=mask.int()), "boolean"),
        (dict(codes=codes + 100, mask=mask), "lie in 0 to 99"),
        (dict(codes=codes.float(), mask=mask), "integer code maps"),
        (dict(codes=codes, mask=mask, sweeps=0), "sweeps must be a positive integer"),
        (dict(codes=codes, mask=mask, temperature=0.0), "temperature must be a positive number"),
        (dict(codes=codes, mask=mask, classes=[1, 2]), "one class for all samples or one per sample"),
    ]:
        with pytest.raises(ConfigError, match=pattern) as refused:
            resample(prior, **kwargs)
        assert "\n" not in str(refused.value)


# ----------------------------------------------------------------------------- the per-position model


@pytest.fixture(scope="module")
def protocol(data):
    """The protocol VQ-VAE and the codes of 2,000 training images (classes balanced) and 500 test images."""
    from vqlib.checkpoints import load_vqvae
    from vqlib.prior import split_codes

    vqvae, _ = load_vqvae(PROTOCOL)
    return vqvae, split_codes(vqvae, data, "train", 2000, 0), split_codes(vqvae, data, "test", 500, 0)


def test_the_per_position_model_counts_its_codes(protocol):
    """Its bits are the add-one count formula, per class and over all codes; each row of its table sums to 1."""
    from vqlib.prior import bits_per_image, fit_position_prior, position_bits

    _, (train_codes, train_labels), (test_codes, test_labels) = protocol
    model = fit_position_prior(train_codes, 100, train_labels)
    assert model.log_probs.shape == (11, 144, 100)
    torch.testing.assert_close(model.log_probs.exp().sum(-1), torch.ones(11, 144, dtype=torch.float64))
    flat, test_flat = train_codes.reshape(len(train_codes), -1).long().numpy(), test_codes.reshape(500, -1).numpy()

    def count_bits(codes: np.ndarray) -> np.ndarray:
        counts = np.stack([np.bincount(codes[:, p], minlength=100) for p in range(144)]).astype(float)
        log2 = np.log2((counts + 1) / (counts.sum(1, keepdims=True) + 100))
        return -log2[np.arange(144)[None, :], test_flat].sum(1)

    np.testing.assert_allclose(bits_per_image(model, test_codes).numpy(), count_bits(flat), rtol=1e-12)
    trousers = train_labels.numpy() == 1
    np.testing.assert_allclose(
        bits_per_image(model, test_codes, torch.ones(500, dtype=torch.long)).numpy(), count_bits(flat[trousers])
    )
    given = position_bits(model, test_codes, test_labels)
    torch.testing.assert_close(given.sum(1), bits_per_image(model, test_codes, test_labels))
    assert float(given.sum(1).mean()) < float(bits_per_image(model, test_codes).mean())  # the class helps
    with pytest.raises(ConfigError, match="outside 0-49"):
        fit_position_prior(train_codes, 50)


def test_the_per_position_sampler_draws_each_positions_marginal(protocol):
    from vqlib.prior import fit_position_prior

    _, (train_codes, train_labels), _ = protocol
    model = fit_position_prior(train_codes, 100, train_labels)
    drawn = model.sample(2500, 7, generator=torch.Generator().manual_seed(0)).reshape(2500, -1)
    for position in (0, 30, 77, 143):
        expected = model.log_probs[7, position].exp().numpy()
        found = np.bincount(drawn[:, position].numpy(), minlength=100) / 2500
        # Total variation of 2,500 draws from their own distribution: 0.05-0.07 measured (many rare codes, each
        # smoothed from 200 sneakers); another class's table lies 0.36 away at position 77.
        assert 0.5 * np.abs(found - expected).sum() < 0.12, position
    # Without a class: the pooled counts, which differ from the sneakers' (class 7) at the centre.
    pooled = model.sample(2500, generator=torch.Generator().manual_seed(1)).reshape(2500, -1)
    found = np.bincount(pooled[:, 77].numpy(), minlength=100) / 2500
    assert 0.5 * np.abs(found - model.log_probs[10, 77].exp().numpy()).sum() < 0.12
    assert 0.5 * float((model.log_probs[10, 77].exp() - model.log_probs[7, 77].exp()).abs().sum()) > 0.2


def test_guidance_draws_from_the_guided_logits_and_zero_is_the_model_itself(protocol):
    """Classifier-free guidance on the per-position model, whose logits are known: each position is drawn from
    softmax(c + w (c - u)) of the class's table c and the pooled table u; w = 0 repeats plain sampling bitwise."""
    from vqlib.prior import fit_position_prior

    _, (train_codes, train_labels), _ = protocol
    model = fit_position_prior(train_codes, 100, train_labels)
    plain = model.sample(300, 7, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(model.sample(300, 7, generator=torch.Generator().manual_seed(3), guidance=0.0), plain)
    w, n = 2.0, 4000
    drawn = model.sample(n, 7, generator=torch.Generator().manual_seed(0), guidance=w).reshape(n, -1)
    for position in (0, 77):
        given, free = model.log_probs[7, position], model.log_probs[10, position]
        expected = torch.softmax(given + w * (given - free), 0).numpy()
        found = np.bincount(drawn[:, position].numpy(), minlength=100) / n
        assert 0.5 * np.abs(found - expected).sum() < 0.08, position
        # Guidance moves the draw away from the plain class table, measurably.
        assert 0.5 * np.abs(expected - given.exp().numpy()).sum() > 0.1
    with pytest.raises(ValueError, match="guidance needs a class"):
        model.sample(4, None, guidance=1.0)
    with pytest.raises(ValueError, match="guidance must be a number >= 0"):
        model.sample(4, 7, guidance=-1.0)


def test_cli_samples_with_guidance_and_refuses_it_without_a_class(tiny_prior, tmp_path, capsys):
    from vqlib.cli import main

    out = tmp_path / "guided.png"
    args = ["sample", "--prior", str(tiny_prior), "--num", "3", "--class", "Bag", "--guidance", "1.5"]
    assert main([*args, "--output", str(out)]) == 0
    assert torch.load(out.with_suffix(".pt"), weights_only=True)["guidance"] == 1.5
    assert main(["sample", "--prior", str(tiny_prior), "--guidance", "1", "--output", str(out)]) == 2
    assert "give a class" in _error_line(capsys)
    assert main(["sample", "--prior", str(tiny_prior), "--class", "Bag", "--guidance", "-2", "--output", str(out)]) == 2
    assert "guidance must be a number of at least 0" in _error_line(capsys)


# ----------------------------------------------------------------------------- the prior notebook 06 measures


def test_a_prior_trained_with_the_same_settings_is_reused_and_another_is_not_overwritten(project, data):
    from vqlib.prior import prior_for

    settings = dict(checkpoint_dir=None, class_conditional=True)  # the default folder: the notebook's case
    first = prior_for(tiny_config(project, **settings), data, progress=False)
    assert first.checkpoint_dir == project / "checkpoints" / "prior" / "K100_D64_transformer_cond"
    stamp = first.best_checkpoint.stat().st_mtime_ns
    again = prior_for(tiny_config(project, **settings), data, progress=False)
    assert again.checkpoint_dir == first.checkpoint_dir and first.best_checkpoint.stat().st_mtime_ns == stamp
    assert again.history == first.history
    other = prior_for(tiny_config(project, width=16, **settings), data, progress=False)
    assert other.checkpoint_dir.name.startswith("K100_D64_transformer_cond_") and other.best_checkpoint.is_file()
    assert first.best_checkpoint.stat().st_mtime_ns == stamp  # left alone


def test_a_published_prior_is_measured_by_name_beside_its_published_vqvae(project, data):
    """The notebook's `prior_checkpoint="pretrained:K100_D64_prior"` with `vqvae_checkpoint="pretrained:K100_D64"`."""
    from vqlib.prior import prior_to_measure, train_prior

    pretrained = project / "checkpoints" / "pretrained"
    shutil.copytree(REPO / "checkpoints" / "pretrained" / "K100_D64", pretrained / "K100_D64")
    shutil.copytree(REPO / "checkpoints" / "pretrained" / "K50_D64", pretrained / "K50_D64")
    config = tiny_config(
        project, vqvae_checkpoint="pretrained:K100_D64", checkpoint_dir=str(pretrained / "K100_D64_prior")
    )
    train_prior(config, data, progress=False)
    wanted = PriorConfig(vqvae_checkpoint="pretrained:K100_D64", device="cpu")
    prior, vqvae, ckpt, name = prior_to_measure("pretrained:K100_D64_prior", wanted, data)
    assert name == "pretrained:K100_D64_prior" and ckpt["vqvae_checkpoint"] == "pretrained:K100_D64"
    assert prior.num_codes == vqvae.config.num_embeddings == 100
    _, _, _, name = prior_to_measure("pretrained:K100_D64_prior", PriorConfig(device="cpu"), data)  # its own VQ-VAE
    assert name == "pretrained:K100_D64_prior"
    with pytest.raises(CheckpointError, match="K=100 .* K=50"):
        prior_to_measure("pretrained:K100_D64_prior", PriorConfig(vqvae_checkpoint="pretrained:K50_D64"), data)


def test_perturbation_replaces_the_stated_share_of_positions_and_names_a_background(tmp_path):
    from vqlib.prior import perturb_codes, run_name

    codes = torch.zeros(2000, 12, 12, dtype=torch.long)
    perturbed = perturb_codes(codes, 0.1, 100, generator=torch.Generator().manual_seed(0))
    changed = (perturbed != codes).double().mean().item()
    assert changed == pytest.approx(0.1 * 0.99, abs=0.005)  # a drawn code may be the one already there
    assert int(perturbed.min()) >= 0 and int(perturbed.max()) == 99 and codes.abs().sum() == 0  # a copy
    assert perturb_codes(codes, 0.0, 100) is codes
    assert run_name(tiny_config(tmp_path, perturbation=0.1), PROTOCOL) == "K100_D64_transformer_uncond_background"
    assert run_name(tiny_config(tmp_path), PROTOCOL) == "K100_D64_transformer_uncond"
    with pytest.raises(ValueError, match="perturbation must lie in"):
        tiny_config(tmp_path, perturbation=1.0)


def test_a_prior_is_snapshotted_while_training_and_published_by_name_when_finished(project, data):
    """`vqlib publish --prior DIR`: an unfinished prior goes to checkpoints/inprogress/prior/ and comes back
    with `--restore` where --resume continues it; a finished one loads as pretrained:K100_D64_prior, no path
    of this machine in its files; a background model publishes beside it as ..._prior_background."""
    import dataclasses
    import json

    from vqlib.checkpoints import load_checkpoint, save_checkpoint
    from vqlib.files import read_json, write_json
    from vqlib.prior import load_prior, train_prior
    from vqlib.publish import publish_prior, restore_priors

    pretrained = project / "checkpoints" / "pretrained"
    shutil.copytree(REPO / "checkpoints" / "pretrained" / "K100_D64", pretrained / "K100_D64")
    config = tiny_config(project, vqvae_checkpoint="pretrained:K100_D64", checkpoint_dir=None, epochs=2)
    folder = project / "checkpoints" / "prior" / "K100_D64_transformer_uncond"
    # What a 2-epoch run killed after its first epoch leaves: last.pt and config.json of a 2-epoch run, 1 row.
    train_prior(dataclasses.replace(config, epochs=1), data, progress=False)
    last = load_checkpoint(folder / "last.pt", kind="prior")
    save_checkpoint(folder / "last.pt", "prior", {**last, "model_config": dataclasses.asdict(config)})
    write_json(folder / "config.json", {**read_json(folder / "config.json"), "prior": dataclasses.asdict(config)})

    result = publish_prior(folder)
    snapshot = project / "checkpoints" / "inprogress" / "prior" / "K100_D64_transformer_uncond"
    assert not result.published and "1 of 2 epochs" in result.note
    assert sorted(p.name for p in snapshot.iterdir()) == ["best.pt", "config.json", "history.json", "last.pt"]
    assert not (pretrained / "K100_D64_prior").exists()

    # Another machine: only the tracked folders. Restore, resume, publish.
    shutil.rmtree(folder)
    assert restore_priors() == ["K100_D64_transformer_uncond"] and restore_priors() == []
    run = train_prior(config, data, resume=True, progress=False)
    assert len(run.history) == 2
    result = publish_prior(folder)
    assert result.published and not snapshot.exists()
    published = pretrained / "K100_D64_prior"
    assert sorted(p.name for p in published.iterdir()) == ["best.pt", "config.json", "history.json"]
    for path in published.iterdir():
        text = (
            json.dumps(torch.load(path, weights_only=True), default=str) if path.suffix == ".pt" else path.read_text()
        )
        assert str(project) not in text and "/work" not in text and str(REPO) not in text, path.name
    prior, ckpt = load_prior("pretrained:K100_D64_prior")
    assert ckpt["vqvae_checkpoint"] == "pretrained:K100_D64" and len(ckpt["history"]) in (1, 2)
    assert torch.equal(
        prior.state_dict()["head.weight"],
        load_checkpoint(folder / "best.pt", kind="prior")["state_dict"]["head.weight"],
    )

    background = dataclasses.replace(config, epochs=1, perturbation=0.1)
    train_prior(background, data, progress=False)
    result = publish_prior(project / "checkpoints" / "prior" / "K100_D64_transformer_uncond_background")
    assert result.published and (pretrained / "K100_D64_prior_background" / "best.pt").is_file()


def test_a_published_prior_with_the_asked_settings_is_measured_instead_of_trained(project, data):
    """Notebook 06 without `prior_checkpoint` (as `vqlib run` calls it): the published prior of these settings on
    this VQ-VAE's weights is measured; other settings, or another VQ-VAE, train their own."""
    from vqlib.prior import prior_to_measure, published_prior_for, train_prior

    pretrained = project / "checkpoints" / "pretrained"
    for name in ("K100_D64", "K100_D32"):
        shutil.copytree(REPO / "checkpoints" / "pretrained" / name, pretrained / name)
    config = tiny_config(project, vqvae_checkpoint="pretrained:K100_D64", checkpoint_dir=None)
    train_prior(dataclasses.replace(config, checkpoint_dir=str(pretrained / "K100_D64_prior")), data, progress=False)
    assert published_prior_for(config) == "pretrained:K100_D64_prior"
    # By the VQ-VAE's weights, not its name: the same file given by path finds it too.
    by_path = dataclasses.replace(config, vqvae_checkpoint=str(pretrained / "K100_D64" / "best.pt"))
    assert published_prior_for(by_path) == "pretrained:K100_D64_prior"
    _, _, _, name = prior_to_measure(None, config, data, progress=False)
    assert name == "pretrained:K100_D64_prior" and not (project / "checkpoints" / "prior").exists()
    assert published_prior_for(dataclasses.replace(config, epochs=2)) is None
    assert published_prior_for(dataclasses.replace(config, vqvae_checkpoint="pretrained:K100_D32")) is None
    _, _, _, name = prior_to_measure(None, dataclasses.replace(config, epochs=2), data, progress=False)
    assert name != "pretrained:K100_D64_prior" and (project / "checkpoints" / "prior").is_dir()
