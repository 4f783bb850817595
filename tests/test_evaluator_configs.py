"""The evaluator-classifier experiments instantiate and fit a few steps on format-true data,
and the checkpoint they write serves as a feature extractor."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lightning_gen.cli import main
from lightning_gen.metrics import build_extractor

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name, data_fixture, shape", [
    ("evaluator_mnist.yaml", "mnist_dir", (1, 28, 28)),
    ("evaluator_cifar10.yaml", "cifar10_dir", (3, 32, 32)),
    ("evaluator_digits.yaml", None, (1, 32, 32)),  # scikit-learn's digits: no data folder
])
def test_evaluator_config_fits_and_its_checkpoint_extracts_features(
        name, data_fixture, shape, request, tmp_path):
    data_dir = request.getfixturevalue(data_fixture) if data_fixture else tmp_path / "unused"
    main(["fit", "--config", str(ROOT / "experiments" / name),
          "--data.data_dir", str(data_dir), "--data.batch_size", "8", "--model.width", "4",
          "--trainer.max_steps", "2", "--trainer.limit_val_batches", "1",
          "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
          "--trainer.default_root_dir", str(tmp_path / "run")])
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    extractor = build_extractor(f"classifier:{ckpt}")
    features, logits = extractor(torch.randint(0, 256, (3, *shape), dtype=torch.uint8))
    assert features.shape == (3, extractor.net.hparams.feature_dim)
    assert logits.shape == (3, 10) and torch.isfinite(logits).all()
    with pytest.raises(ValueError, match="trained on images of shape"):
        extractor(torch.zeros(1, shape[0], 16, 16, dtype=torch.uint8))
