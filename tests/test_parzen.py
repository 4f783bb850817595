"""Parzen-window log-likelihood (Goodfellow et al. 2014): the estimator against a direct
NumPy/SciPy computation, the bandwidth choice, and ``lightning-gen evaluate --parzen true``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.special import logsumexp

from datamodules import MNISTDataModule
from lightning_gen.cli import main
from lightning_gen.evaluate import load_run
from lightning_gen.metrics.parzen import (
    MNIST_SIGMA_GRID,
    parzen_evaluate,
    parzen_log_likelihoods,
)
from lightning_gen.models import GAN
from tests import fakedata
from tests.metrics_helpers import classifier_checkpoint, save_module_checkpoint


def direct_parzen(x: np.ndarray, centres: np.ndarray, sigma: float) -> np.ndarray:
    """log p(x) = logsumexp_i(-||x - mu_i||^2 / (2 sigma^2)) - log N - D log(sigma sqrt(2 pi)),
    every difference formed explicitly, float64."""
    x, centres = x.reshape(len(x), -1).astype(np.float64), centres.reshape(len(centres), -1)
    sq = ((x[:, None, :] - centres[None].astype(np.float64)) ** 2).sum(-1)
    d = x.shape[1]
    return (logsumexp(-sq / (2 * sigma**2), axis=1) - math.log(len(centres))
            - d * math.log(sigma * math.sqrt(2 * math.pi)))


def test_goodfellows_mnist_grid():
    assert MNIST_SIGMA_GRID == pytest.approx(np.logspace(-1, 0, 10).tolist(), rel=1e-15)


@pytest.mark.parametrize("batch_size, chunk_size", [(3, 7), (100, 1000), (1, 1)])
def test_log_likelihoods_equal_a_direct_logsumexp(batch_size, chunk_size):
    g = torch.Generator().manual_seed(0)
    centres = torch.rand(37, 1, 4, 5, generator=g)  # float32 images on [0, 1]
    x = torch.rand(11, 1, 4, 5, generator=g)
    sigmas = [0.05, 0.2, 1.0]
    got = parzen_log_likelihoods(x, centres, sigmas, batch_size=batch_size,
                                 chunk_size=chunk_size).numpy()
    assert got.shape == (11, 3) and got.dtype == np.float64
    for j, sigma in enumerate(sigmas):
        np.testing.assert_allclose(got[:, j], direct_parzen(x.numpy(), centres.numpy(), sigma),
                                   rtol=0, atol=1e-6)


def test_sigma_is_the_validation_best_of_the_grid_and_the_test_mean_uses_it():
    # Real points scattered around the samples with std 0.3: the best bandwidth is inside the
    # grid, neither end, so a choice by position (first, last) or by the test set would differ.
    rng = np.random.default_rng(0)
    samples = rng.random((60, 6))
    val = samples[rng.integers(0, 60, 40)] + rng.normal(0, 0.3, (40, 6))
    test = samples[rng.integers(0, 60, 30)] + rng.normal(0, 0.1, (30, 6))
    grid = list(MNIST_SIGMA_GRID)
    val_means = [direct_parzen(val, samples, s).mean() for s in grid]
    best = int(np.argmax(val_means))
    assert 0 < best < len(grid) - 1
    test_best = int(np.argmax([direct_parzen(test, samples, s).mean() for s in grid]))
    assert test_best != best  # choosing on the test images would give another sigma

    t = lambda a: torch.from_numpy(a)  # noqa: E731
    for order in (grid, grid[::-1], grid[3:] + grid[:3]):
        result = parzen_evaluate(t(samples), t(val), t(test), order, batch_size=7, chunk_size=13)
        assert result["parzen_sigma"] == grid[best]
        assert result["parzen_sigma_grid"] == order
        np.testing.assert_allclose(result["parzen_validation_ll"],
                                   [val_means[grid.index(s)] for s in order], atol=1e-6)
    ll = direct_parzen(test, samples, grid[best])
    assert result["parzen_ll_nats"] == pytest.approx(ll.mean(), abs=1e-6)
    assert result["parzen_ll_stderr"] == pytest.approx(ll.std() / math.sqrt(30), abs=1e-9)
    assert result["parzen_num_samples"] == 60


def test_bad_inputs_are_value_errors():
    x = torch.rand(3, 4)
    with pytest.raises(ValueError, match="4 dimensions but the kernel centres 5"):
        parzen_log_likelihoods(x, torch.rand(2, 5), [0.1])
    with pytest.raises(ValueError, match="bandwidths must be positive"):
        parzen_log_likelihoods(x, torch.rand(2, 4), [0.1, 0.0])
    with pytest.raises(ValueError, match="at least one kernel centre"):
        parzen_log_likelihoods(x, torch.rand(0, 4), [0.1])


# ----------------------------------------------------------------------------------------------
# lightning-gen evaluate --parzen true


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("parzen")
    data = fakedata.write_mnist(root / "mnist", n_train=40, n_test=24)
    dm = MNISTDataModule(data_dir=str(data), image_size=8, val_fraction=0.25, seed=3)
    ckpts = {}
    for classes in (0, 10):
        torch.manual_seed(classes)
        model = GAN((1, 8, 8), latent_dim=4, g_hidden=(16,), d_hidden=(8,), maxout_pieces=2,
                    num_classes=classes, num_fixed_samples=4)
        ckpts[classes] = save_module_checkpoint(model, root / f"ckpts/gan{classes}.ckpt", dm)
    clf = classifier_checkpoint(root / "clf.ckpt", image_shape=(1, 8, 8))
    return {"root": root, "ckpts": ckpts, "clf": clf}


def _evaluate(setup, ckpt, out, *extra) -> dict:
    main(["evaluate", "--ckpt_path", str(ckpt), "--num_samples", "8", "--reference", "test",
          "--feature_extractor", f"classifier:{setup['clf']}", "--batch_size", "16",
          "--kid_subset_size", "4", "--isc_splits", "2", "--accelerator", "cpu",
          "--progress", "false", "--cache_dir", str(Path(out).parent / "cache"),
          "--out", str(out), "--seed", "5", *extra])
    return json.loads(Path(out).read_text())


@pytest.mark.parametrize("classes", [0, 10], ids=["gan", "cgan"])
def test_evaluate_parzen_equals_the_protocol_computed_by_hand(setup, tmp_path, classes):
    result = _evaluate(setup, setup["ckpts"][classes], tmp_path / "r.json", "--parzen", "true",
                       "--parzen_samples", "50", "--parzen_val_images", "8")
    # By hand: samples i of batch b = i // 16 drawn with seed 5 + b (labels i % 10 for the
    # cGAN); sigma on the first 8 images of the DataModule's validation split; all test images.
    model, dm = load_run(str(setup["ckpts"][classes]))
    parts = []
    for b, (start, end) in enumerate([(0, 16), (16, 32), (32, 48), (48, 50)]):
        labels = torch.arange(start, end) % 10 if classes else None
        torch.manual_seed(5 + b)
        parts.append(model.sample(end - start, labels))
    samples = ((torch.cat(parts) + 1) / 2).numpy()
    dm.setup("fit")
    dm.setup("test")
    val = ((torch.stack([dm.val_set[i][0] for i in range(8)]) + 1) / 2).numpy()
    test = ((torch.stack([dm.test_set[i][0] for i in range(24)]) + 1) / 2).numpy()
    grid = np.logspace(-1, 0, 10)
    sigma = grid[int(np.argmax([direct_parzen(val, samples, s).mean() for s in grid]))]
    ll = direct_parzen(test, samples, sigma)
    assert result["parzen_sigma"] == pytest.approx(sigma, rel=1e-12)
    assert result["parzen_ll_nats"] == pytest.approx(ll.mean(), abs=1e-6)
    assert result["parzen_ll_stderr"] == pytest.approx(ll.std() / math.sqrt(24), abs=1e-6)
    assert result["parzen_num_samples"] == 50 and result["parzen_test_images"] == 24
    assert result["parzen_sigma_grid"] == pytest.approx(grid.tolist())
    assert "first 8 images of the validation split of MNISTDataModule" in result["parzen_validation"]
    assert "seed 3" in result["parzen_validation"]
    assert "binarize" not in result and "fid" in result


def test_parzen_options_that_cannot_work_are_one_line_errors(setup, tmp_path, capsys):
    def error(*extra) -> str:
        with pytest.raises(SystemExit) as info:
            _evaluate(setup, setup["ckpts"][0], tmp_path / "x.json", "--parzen", "true", *extra)
        assert info.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("lightning-gen: error: ") and "\n" not in err
        return err

    assert "--parzen_samples must be at least 1" in error("--parzen_samples", "0")
    assert "--parzen_val_images must be at least 1" in error("--parzen_val_images", "0")
    err = error("--parzen_val_images", "11")  # 25% of 40 training images are held out
    assert "11 held-out images" in err and "has 10" in err and "--parzen_val_images" in err
    assert not (tmp_path / "x.json").exists()


def test_without_held_out_images_sigma_is_picked_on_seeded_training_images(setup, tmp_path,
                                                                          capsys):
    # gan_mnist.yaml trains on the whole split (val_fraction 0): a seeded subset of the
    # training split stands in, with a warning, and the JSON says so.
    data = setup["root"] / "mnist"
    dm = MNISTDataModule(data_dir=str(data), image_size=8, val_fraction=0.0, seed=4)
    torch.manual_seed(0)
    model = GAN((1, 8, 8), latent_dim=4, g_hidden=(16,), d_hidden=(8,), maxout_pieces=2,
                num_fixed_samples=4)
    ckpt = save_module_checkpoint(model, tmp_path / "ckpts" / "gan.ckpt", dm)
    result = _evaluate(setup, ckpt, tmp_path / "r.json", "--parzen", "true",
                       "--parzen_samples", "20", "--parzen_val_images", "6")
    assert "holds no validation images" in capsys.readouterr().err
    assert "6 images of the training split of MNISTDataModule drawn with seed 4" in \
        result["parzen_validation"]
    model, dm = load_run(str(ckpt))
    parts = []
    for b, (start, end) in enumerate([(0, 16), (16, 20)]):
        torch.manual_seed(5 + b)
        parts.append(model.sample(end - start))
    samples = ((torch.cat(parts) + 1) / 2).numpy()
    train = dm._load("train", download=False)
    order = torch.randperm(40, generator=torch.Generator().manual_seed(4))[:6]
    val = ((torch.stack([train[int(i)][0] for i in order]) + 1) / 2).numpy()
    expected = [direct_parzen(val, samples, s).mean() for s in np.logspace(-1, 0, 10)]
    np.testing.assert_allclose(result["parzen_validation_ll"], expected, atol=1e-6)
