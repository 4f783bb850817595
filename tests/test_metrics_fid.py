"""The metric formulas: FID against an independent scipy computation; the uint8 step; the store."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from lightning_gen.metrics import (
    FeatureStore,
    fid_statistics,
    fidelity_metrics,
    frechet_distance,
    to_uint8,
)


def scipy_frechet(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance of Gaussians fitted to the rows of ``a`` and ``b``, via sqrtm."""
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


@pytest.mark.parametrize("n, d", [(400, 16), (300, 64)])
def test_fid_equals_scipy_sqrtm_frechet_distance(n, d):
    rng = np.random.default_rng(d)
    a = rng.normal(size=(n, d)).astype(np.float32)
    mix = np.eye(d) + 0.3 * rng.normal(size=(d, d))
    b = (rng.normal(size=(n, d)) @ mix + 0.5).astype(np.float32)
    ours = frechet_distance(fid_statistics(torch.from_numpy(a)), fid_statistics(torch.from_numpy(b)))
    reference = scipy_frechet(a.astype(np.float64), b.astype(np.float64))
    assert reference > 1.0  # the sets differ: the check is not trivially 0 == 0
    assert abs(ours - reference) / reference < 1e-5


def test_fid_of_a_set_with_itself_is_zero():
    a = torch.randn(200, 8)
    assert abs(frechet_distance(fid_statistics(a), fid_statistics(a))) < 1e-8


def test_to_uint8_rounds_and_inverts_the_datamodule_normalisation():
    u = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)
    x = (u.float() / 255 - 0.5) / 0.5  # ToTensor + Normalize(0.5, 0.5), as the DataModules do
    assert torch.equal(to_uint8(x), u)
    # Rounding, not truncation: 0.999 of a grey level above 10 is 11.
    assert to_uint8(torch.tensor([(10.999 / 127.5) - 1])).item() == 11
    assert to_uint8(torch.tensor([-3.0, 3.0])).tolist() == [0, 255]


def test_feature_store_returns_batches_sorted_by_sample_index():
    store = FeatureStore()
    for start in (4, 0, 8):  # out of order, as ranks' shares arrive
        index = torch.arange(start, start + 4)
        store.update(index, index[:, None].float().repeat(1, 3), torch.zeros(4, 2))
    out = store.compute()
    assert out["index"].tolist() == list(range(12))
    assert out["features"][:, 0].tolist() == [float(i) for i in range(12)]
    assert (out["labels"] == -1).all()


def test_class_accuracy_of_conditional_samples():
    logits = torch.eye(4).repeat(5, 1)  # predicts classes 0,1,2,3,0,1,...
    labels = torch.arange(20) % 4
    labels[:5] = 3  # 5 wrong but one (index 3 predicts 3)
    fake = {"features": torch.randn(20, 6), "logits": logits, "labels": labels}
    real = {"features": torch.randn(30, 6)}
    out = fidelity_metrics(fake, real, isc_splits=2, kid_subset_size=10, kid_subsets=5)
    assert out["gan_test"] == pytest.approx(16 / 20)
    assert {"fid", "is_mean", "is_std", "kid_mean", "kid_std", "precision", "recall"} <= set(out)
