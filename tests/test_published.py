"""The published study in the repository: every pretrained checkpoint reproduces what it recorded."""

from __future__ import annotations

import pytest

from vqlib.checkpoints import load_vqvae, pretrained_names
from vqlib.files import read_json
from vqlib.paths import published_dir
from vqlib.train import METRICS_FILE, evaluate_vqvae


@pytest.mark.parametrize("name", pretrained_names())
def test_published_checkpoint_reproduces_its_validation_mse(name, data, monkeypatch):
    """Loaded by name, the checkpoint measures the validation MSE its run recorded for its best epoch."""
    monkeypatch.delenv("VQLIB_ROOT", raising=False)
    metrics = read_json(published_dir() / "grid" / name / METRICS_FILE)
    assert metrics["checkpoint"] == f"pretrained:{name}"
    model, ckpt = load_vqvae(f"pretrained:{name}")
    assert ckpt["epoch"] == metrics["best_epoch"]
    measured = evaluate_vqvae(model, data.val_images)
    # Another thread count sums in another order: float32 agreement, not bitwise.
    assert measured["mse"] == pytest.approx(metrics["val_mse"], rel=1e-4)
    assert measured["perplexity"] == pytest.approx(metrics["val_perplexity"], rel=1e-3)
