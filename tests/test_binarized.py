"""Binarized MNIST/digits for likelihood models, the chunked IWAE bound, and the binarized
experiment YAMLs (fit a few steps, then ``lightning-gen evaluate``'s likelihood numbers)."""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.special import logsumexp

from datamodules import CIFAR10DataModule, DigitsDataModule, MNISTDataModule, MNISTHeldOutDataModule
from lightning_gen.cli import main
from lightning_gen.models import VAE
from tests import fakedata
from tests.metrics_helpers import classifier_checkpoint
from tests.zoo_utils import assert_finite_params, fit_yaml

ROOT = Path(__file__).resolve().parents[1]


def _images(dataset, n=None) -> torch.Tensor:
    return torch.stack([dataset[i][0] for i in range(len(dataset) if n is None else n)])


@pytest.fixture
def mnist(tmp_path):
    return fakedata.write_mnist(tmp_path / "mnist", n_train=40, n_test=24)


def _dm(root, binarize, **kwargs):
    dm = MNISTDataModule(data_dir=str(root), binarize=binarize, download=False,
                         val_fraction=0.25, **kwargs)
    dm.setup()
    return dm


def test_binarized_pixels_are_exactly_minus_one_or_one_in_every_split(mnist):
    for mode in ("static", "dynamic"):
        dm = _dm(mnist, mode)
        for split in (dm.train_set, dm.val_set, dm.test_set):
            x = _images(split)
            assert x.shape[1:] == (1, 28, 28)
            assert set(x.unique().tolist()) == {-1.0, 1.0}
            # The VAE's and the PixelCNN's likelihoods read them as exactly 0 / 1.
            assert set(((x + 1) / 2).unique().tolist()) == {0.0, 1.0}
    assert _dm(mnist, "none").binarization("test") == "none"


def test_the_batches_a_model_trains_and_is_scored_on_are_binarized(mnist):
    # What the model sees comes through the DataLoaders, which read MNIST held in memory a
    # batch at a time (``__getitems__``): those batches were the grey images, so every
    # "binarized" run trained and was scored on grey levels (a PixelCNN's 2 levels by rounding).
    for mode in ("static", "dynamic"):
        dm = _dm(mnist, mode, batch_size=8, num_workers=0)
        for split, loader in ((dm.train_set, dm.train_dataloader()),
                              (dm.val_set, dm.val_dataloader()), (dm.test_set, dm.test_dataloader())):
            batch = next(iter(loader))[0]
            assert set(batch.unique().tolist()) == {-1.0, 1.0}, (mode, split)
        # Static bits are the items' bits, batch by batch.
        if mode == "static":
            batches = torch.cat([b[0] for b in dm.test_dataloader()])
            assert torch.equal(batches, _images(dm.test_set))


def test_dynamic_bits_are_bernoulli_draws_with_the_grey_level_as_mean(mnist):
    dm = _dm(mnist, "dynamic")
    draws = torch.stack([_images(dm.train_set.dataset, 4) for _ in range(200)])  # full split
    grey = _images(_dm(mnist, "none").train_set.dataset, 4)
    p = (grey + 1) / 2
    freq = ((draws + 1) / 2).mean(0)
    # 200 draws: standard error <= 0.035 per pixel; 5 sigma.
    assert (freq - p).abs().max() < 0.18
    assert freq[p == 1].min() == 1 and freq[p == 0].max() == 0
    assert 0.05 < freq[(p > 0.05) & (p < 0.2)].mean() < 0.2


def test_dynamic_training_images_differ_between_draws_and_evaluation_images_do_not(mnist):
    dm = _dm(mnist, "dynamic")
    assert not torch.equal(_images(dm.train_set), _images(dm.train_set))
    assert torch.equal(_images(dm.val_set), _images(dm.val_set))
    assert torch.equal(_images(dm.test_set), _images(dm.test_set))
    # The validation images are the static ones of the same training images.
    static = _dm(mnist, "static")
    assert torch.equal(_images(dm.val_set), _images(static.val_set))


def test_static_binarization_is_the_same_in_two_datamodules_whatever_the_rng_state(mnist):
    torch.manual_seed(1)
    a = _images(_dm(mnist, "static").test_set)
    torch.manual_seed(2)
    torch.rand(1000)
    b = _images(_dm(mnist, "static").test_set)
    assert torch.equal(a, b)
    # Other images get other bits (seeded by index), train and test splits other seeds.
    train = _images(_dm(mnist, "static").train_set.dataset, 24)
    assert not torch.equal(a, train)


STATIC_DIGEST = """
import hashlib, sys, torch
from datamodules import MNISTDataModule
torch.manual_seed(int(sys.argv[2]))
dm = MNISTDataModule(data_dir=sys.argv[1], binarize="static", download=False)
dm.setup("test")
x = torch.stack([dm.test_set[i][0] for i in range(len(dm.test_set))])
print(hashlib.sha256(x.numpy().tobytes()).hexdigest())
"""


def test_static_binarization_is_the_same_in_two_processes(mnist):
    # This process and a fresh one with another global seed read the same bits.
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    other = subprocess.run([sys.executable, "-c", STATIC_DIGEST, str(mnist), "12345"],
                           capture_output=True, text=True, timeout=120, env=env, check=True)
    torch.manual_seed(0)
    here = _images(_dm(mnist, "static").test_set).numpy().tobytes()
    assert other.stdout.strip() == hashlib.sha256(here).hexdigest()


def test_digits_and_held_out_mnist_binarize_too(mnist):
    digits = DigitsDataModule(binarize="static")
    digits.setup("test")
    assert set(_images(digits.test_set, 8).unique().tolist()) == {-1.0, 1.0}
    held = MNISTHeldOutDataModule(held_out_class=0, data_dir=str(mnist), binarize="static",
                                  download=False)
    held.setup("fit")
    assert set(_images(held.train_set, 8).unique().tolist()) == {-1.0, 1.0}


def test_binarize_on_colour_data_or_unknown_mode_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="binarize=static is for grey digit data"):
        CIFAR10DataModule(data_dir=str(tmp_path), binarize="static")
    with pytest.raises(ValueError, match="binarize must be none, dynamic or static"):
        MNISTDataModule(data_dir=str(tmp_path), binarize="otsu")


def test_binarize_on_cifar10_from_the_cli_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["fit", "--config", str(ROOT / "experiments/dcgan_cifar10.yaml"),
              "--data.data_dir", str(tmp_path), "--data.binarize", "dynamic"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lightning-gen: error: ") and "\n" not in err
    assert "grey digit data" in err


# ----------------------------------------------------------------------------------------------
# IWAE bound in chunks


def _tiny_vae() -> tuple[VAE, torch.Tensor]:
    torch.manual_seed(0)
    model = VAE((1, 8, 8), latent_dim=3, width=4).eval()
    x = (torch.rand(5, 1, 8, 8) < 0.3).float() * 2 - 1
    return model, x


def _direct_iwae(model: VAE, x: torch.Tensor, k: int, seed: int) -> np.ndarray:
    """log 1/K sum_k w_k, one sample at a time, NumPy float64 logsumexp over all K weights."""
    torch.manual_seed(seed)
    with torch.no_grad():
        mu, logvar = model.encode(x)
        std = torch.exp(0.5 * logvar)
        log_w = []
        for _ in range(k):
            eps = torch.randn_like(mu)
            z = mu + std * eps
            log_q = torch.distributions.Normal(mu, std).log_prob(z).sum(1)
            log_p = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(1)
            log_px = model.log_likelihood(model.decode(z), x)
            log_w.append((log_px + log_p - log_q).double().numpy())
    return logsumexp(np.stack(log_w), axis=0) - math.log(k)


@pytest.mark.parametrize("chunk", [1, 4, 13, None])
def test_chunked_iwae_bound_equals_a_direct_logsumexp(chunk):
    model, x = _tiny_vae()
    torch.manual_seed(7)
    got = model.importance_weighted_bound(x, k=13, chunk=chunk).double().numpy()
    expected = _direct_iwae(model, x, 13, seed=7)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)  # float32 sums of ~45 nats


def test_iwae_memory_is_one_chunk_whatever_k():
    # The decoder never sees more than chunk * B images at once, and sees each sample once: an
    # implementation decoding all K * B images in one call (or keeping them) fails here.
    model, x = _tiny_vae()
    rows: list[int] = []
    hook = model.decoder.register_forward_pre_hook(lambda _, args: rows.append(args[0].shape[0]))
    try:
        for k in (50, 2000):
            rows.clear()
            model.importance_weighted_bound(x, k=k, chunk=8)
            assert len(rows) == math.ceil(k / 8)
            assert max(rows) == 8 * len(x) and sum(rows) == k * len(x)
        rows.clear()
        model.iwae_decode_rows = 100  # default chunk = rows // B = 20 samples
        model.importance_weighted_bound(x, k=2000)
        assert max(rows) == 20 * len(x) and len(rows) == 100
    finally:
        hook.remove()


def test_iwae_with_k_one_is_the_elbo_estimate_and_k_must_be_positive():
    model, x = _tiny_vae()
    torch.manual_seed(3)
    one = model.importance_weighted_bound(x, k=1).double().numpy()
    np.testing.assert_allclose(one, _direct_iwae(model, x, 1, seed=3), rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError, match="k \\(importance samples\\) must be >= 1"):
        model.importance_weighted_bound(x, k=0)


# ----------------------------------------------------------------------------------------------
# The experiment YAMLs: fit a few steps, evaluate the likelihood on the static test bits


def _evaluate(ckpt: Path, out: Path, *extra: str) -> dict:
    clf = classifier_checkpoint(out.parent / "clf.ckpt", image_shape=(1, 8, 8))
    main(["evaluate", "--ckpt_path", str(ckpt), "--num_samples", "8", "--reference", "test",
          "--feature_extractor", f"classifier:{clf}", "--batch_size", "8",
          "--kid_subset_size", "4", "--isc_splits", "2", "--accelerator", "cpu",
          "--progress", "false", "--cache_dir", str(out.parent / "cache"), "--out", str(out),
          *extra])
    return json.loads(out.read_text())


TINY = ("--data.image_size", "8", "--data.val_fraction", "0.25", "--trainer.limit_val_batches", "1")


def test_vae_binarized_mnist_yaml_fits_and_reports_the_iwae_bound(mnist, tmp_path):
    cli = fit_yaml("vae_binarized_mnist.yaml", mnist, "--model.init_args.width", "4",
                   "--model.init_args.latent_dim", "4", *TINY)
    assert cli.datamodule.binarize == "dynamic" and cli.model.hparams.likelihood == "bernoulli"
    assert_finite_params(cli.model)
    ckpt = Path.cwd() / "checkpoints" / "last.ckpt"
    result = _evaluate(ckpt, tmp_path / "vae.json", "--iw_samples", "16")
    assert result["binarize"] == "dynamic" and result["iwae_k"] == 16
    assert result["likelihood_of"].startswith("Bernoulli decoder on binarized pixels (binarize: "
                                              "dynamic)")
    assert -64 * 10 < result["test_elbo_nats"] <= result["test_iwae_nats"] < 0


def test_pixelcnn_binarized_mnist_yaml_fits_and_reports_the_test_nll(mnist, tmp_path):
    cli = fit_yaml("pixelcnn_binarized_mnist.yaml", mnist, "--model.init_args.hidden", "8",
                   "--model.init_args.n_layers", "1", "--model.init_args.num_fixed_samples", "0",
                   *TINY)
    assert cli.model.hparams.num_levels == 2 and cli.datamodule.binarize == "static"
    ckpt = Path.cwd() / "checkpoints" / "last.ckpt"
    result = _evaluate(ckpt, tmp_path / "pixelcnn.json")
    # A 2-level softmax on 0/1 pixels: at most 64 ln 2 nats per 8x8 image for a fair coin,
    # and bits/dim is nats / (64 ln 2).
    model = cli.model.eval()
    dm = _dm(mnist, "static", image_size=8)
    with torch.no_grad():
        expected = model.nll(_images(dm.test_set)).mean().item()
    assert result["test_nll_nats"] == pytest.approx(expected, rel=1e-5)
    assert result["test_bits_per_dim"] == pytest.approx(expected / (64 * math.log(2)), rel=1e-6)
    assert result["binarize"] == "static"


def test_binarized_data_has_its_own_reference_cache_key(mnist):
    from lightning_gen.metrics.evaluator import GenerativeEvaluator
    from lightning_gen.metrics.extractors import build_extractor

    clf = classifier_checkpoint(Path.cwd() / "clf.ckpt", image_shape=(1, 28, 28))
    ev = GenerativeEvaluator(build_extractor(f"classifier:{clf}"))
    grey = ev.reference_key(_dm(mnist, "none"), "test", 24)
    assert "binarize" not in grey  # the keys of grey data, and so their cache entries, unchanged
    # ("bits": 2: entries cached while the loaders handed over grey batches are not reused.)
    assert ev.reference_key(_dm(mnist, "dynamic"), "test", 24) == {**grey, "binarize": "static",
                                                                   "bits": 2}
    assert ev.reference_key(_dm(mnist, "dynamic"), "train", 24)["binarize"] == "dynamic"
