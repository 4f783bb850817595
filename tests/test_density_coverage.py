"""Density and coverage (Naeem et al. 2020) against the authors' ``prdc`` package, and their
place in :func:`fidelity_metrics` (same real subset as precision/recall, k = 5)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from prdc import compute_prdc

from lightning_gen.metrics import fidelity_metrics
from lightning_gen.metrics.fidelity import density_coverage


def _sets(n_real: int, n_fake: int, d: int, seed: int, shift: float = 0.4):
    rng = np.random.default_rng(seed)
    real = rng.normal(size=(n_real, d)).astype(np.float32)
    # Generated: a shifted, narrower cloud, so density differs from 1 and coverage from 1.
    fake = (0.7 * rng.normal(size=(n_fake, d)) + shift).astype(np.float32)
    return real, fake


def _prdc(real: np.ndarray, fake: np.ndarray, k: int) -> dict:
    return compute_prdc(real_features=real, fake_features=fake, nearest_k=k)


@pytest.mark.parametrize("n_real, n_fake, d, k", [(300, 300, 16, 5), (257, 190, 64, 3),
                                                  (120, 120, 8, 1)])
def test_density_coverage_equal_prdc(n_real, n_fake, d, k, capsys):
    real, fake = _sets(n_real, n_fake, d, seed=d + k)
    theirs = _prdc(real, fake, k)
    ours = density_coverage(torch.from_numpy(real), torch.from_numpy(fake), k)
    # The sets differ, so neither number is trivially 0 or 1 (or density exactly 1).
    assert 0.05 < theirs["coverage"] < 0.99 and abs(theirs["density"] - 1) > 0.05
    assert ours["density"] == pytest.approx(theirs["density"], abs=1e-6)
    assert ours["coverage"] == pytest.approx(theirs["coverage"], abs=1e-6)


def test_blocks_do_not_change_the_result():
    """Blocks of a few real rows (the 50k x 50k memory bound) give the same counts."""
    real, fake = _sets(97, 83, 12, seed=1)
    real, fake = torch.from_numpy(real), torch.from_numpy(fake)
    whole = density_coverage(real, fake, 5)
    for max_elements in (1, 97 * 7, 97 * 40):  # 1, 7 and 40 rows per block
        assert density_coverage(real, fake, 5, max_elements=max_elements) == whole


def test_identical_sets_are_fully_covered():
    real = torch.randn(50, 4)
    out = density_coverage(real, real.clone(), 5)
    assert out["coverage"] == 1.0  # each point lies in its own ball (distance 0 < radius)
    assert out["density"] >= 1.0  # and in its k neighbours' balls or more, on average


def test_too_few_real_samples_are_refused():
    with pytest.raises(ValueError, match="more than 5 real samples"):
        density_coverage(torch.randn(5, 3), torch.randn(10, 3), 5)


def test_fidelity_metrics_uses_the_precision_recall_subset(capsys):
    """More real than generated features: density/coverage use the same seeded subset of the
    real features as precision/recall (equal set sizes), so they equal prdc on that subset."""
    real, fake = _sets(160, 60, 8, seed=3)
    out = fidelity_metrics({"features": torch.from_numpy(fake)},
                           {"features": torch.from_numpy(real)}, kid_subsets=5,
                           kid_subset_size=30, rng_seed=7)
    keep = np.sort(np.random.RandomState(7).permutation(160)[:60])
    theirs = _prdc(real[keep], fake, 5)
    assert out["prc_num_real"] == 60 and out["dc_neighborhood"] == 5
    assert out["density"] == pytest.approx(theirs["density"], abs=1e-6)
    assert out["coverage"] == pytest.approx(theirs["coverage"], abs=1e-6)
    # No logits: the Inception Score is named as not computed, not a crash or a number.
    assert "is_mean" not in out and "not applicable" in out["not_computed"]["IS"]
    assert out["precision"] == pytest.approx(theirs["precision"], abs=1e-6)


def test_density_coverage_are_named_when_the_sets_are_too_small():
    out = fidelity_metrics({"features": torch.randn(4, 3), "logits": torch.randn(4, 5)},
                           {"features": torch.randn(4, 3)}, isc_splits=2, kid_subsets=2,
                           kid_subset_size=4)
    assert "density" not in out and "k = 5" in out["not_computed"]["density/coverage"]
    assert "is_mean" in out
