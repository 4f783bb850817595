"""Every experiment YAML instantiates and fits a few CPU steps on format-true data, and writes
the images it promises."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lightning_gen.callbacks import LatentArithmeticCallback
from tests.zoo_utils import EXPERIMENTS, assert_finite_params, fit_yaml

TINY_MLP = ("--model.init_args.g_hidden", "[16]", "--model.init_args.d_hidden", "[8]")
TINY_CONV = ("--model.init_args.g_width", "8", "--model.init_args.d_width", "8")
TINY_CYCLE = ("--model.init_args.g_width", "4", "--model.init_args.n_res_blocks", "1",
              "--model.init_args.d_width", "4", "--model.init_args.num_fixed_samples", "2")

# yaml -> (data fixture, overrides, optimizer steps, images the run must write)
CASES = {
    "quickstart.yaml": (None, TINY_CONV, 4, ["samples"]),
    "gan_mnist.yaml": ("mnist_dir", TINY_MLP, 4, ["samples", "latent_interpolation"]),
    "cgan_mnist.yaml": ("mnist_dir", TINY_MLP, 4, ["samples"]),
    "cgan_celeba.yaml": ("celeba_dir", TINY_MLP, 4, ["samples"]),
    "cvae_mnist.yaml": ("mnist_dir", ("--model.init_args.width", "8"), 4,
                        ["samples", "reconstructions", "latent_interpolation"]),
    "cvae_celeba.yaml": ("celeba_dir", ("--model.init_args.width", "8"), 4, ["samples"]),
    "beta_vae_celeba.yaml": ("celeba_dir", ("--model.init_args.width", "8"), 4,
                             ["samples", "latent_traversal", "latent_interpolation",
                              "latent_arithmetic_Smiling"]),
    "autoencoder_outlier_mnist.yaml": ("mnist_dir", ("--model.init_args.width", "8"), 4,
                                       ["reconstructions", "outliers_highest_error"]),
    "gan_textbook_mnist.yaml": ("mnist_dir", (), 4, ["samples", "latent_interpolation"]),
    "dragan_cifar10.yaml": ("cifar10_dir", TINY_CONV, 4, ["samples"]),
    "instance_noise_cifar10.yaml": ("cifar10_dir", TINY_CONV, 4, ["samples"]),
    "sngan_cifar10.yaml": ("cifar10_dir", ("--model.init_args.g_channels", "8",
                                           "--model.init_args.d_channels", "8"), 12, ["samples"]),
    "cyclegan_celeba_smiling.yaml": ("celeba_dir", TINY_CYCLE, 4, ["a_to_b_to_a", "b_to_a_to_b"]),
    "cyclegan_mnist_inverted.yaml": ("mnist_dir", TINY_CYCLE, 4, ["a_to_b_to_a"]),
}


def test_every_experiment_yaml_is_fitted_by_a_test():
    tests = "".join(p.read_text() for p in Path(__file__).parent.glob("test_*.py"))
    missing = [p.name for p in EXPERIMENTS.glob("*.yaml") if p.name not in tests]
    assert not missing, f"no fit test names {missing}"


@pytest.mark.parametrize("name", sorted(CASES))
def test_yaml_fits_and_writes_its_images(name, request):
    fixture, overrides, steps, images = CASES[name]
    data_dir = request.getfixturevalue(fixture) if fixture else None
    cli = fit_yaml(name, data_dir, *overrides, steps=steps)
    assert cli.trainer.global_step == steps
    assert_finite_params(cli.model)
    for image in images:
        assert (Path.cwd() / "images" / f"{image}_last.png").is_file(), image


def test_outlier_callback_reports_an_auroc(mnist_dir):
    cli = fit_yaml("autoencoder_outlier_mnist.yaml", mnist_dir, "--model.init_args.width", "8")
    auroc = next(c for c in cli.trainer.callbacks if type(c).__name__ == "OutlierAUROCCallback")
    assert 0.0 <= auroc.auroc <= 1.0 and not math.isnan(auroc.auroc)
    # The grid says which of its images are the held-out digit, and the AUROC.
    text = Image.open(Path.cwd() / "images" / "outliers_highest_error_last.png").text["Description"]
    assert text.startswith(f"the {auroc.num_show} test images of highest outlier score")
    assert "of the held-out class 0 (positions " in text and f"{auroc.auroc:.3f}" in text
    # The held-out digit never reaches training.
    assert all(int(y) != 0 for _, y in cli.datamodule.train_set)


def test_conditional_gan_on_celeba_takes_its_grid_labels_from_the_data(celeba_dir):
    cli = fit_yaml("cgan_celeba.yaml", celeba_dir, *TINY_MLP)
    labels = cli.model.fixed_labels()
    assert labels.shape == (64, 40) and set(labels.unique().tolist()) <= {0.0, 1.0}
    assert labels.sum() > 0
    assert torch.isfinite(cli.model.sample(3)).all()


@pytest.mark.parametrize("name", ["cgan_celeba.yaml", "cvae_celeba.yaml",
                                  "cyclegan_celeba_smiling.yaml"])
def test_checkpoint_reloads_without_the_yaml(name, celeba_dir):
    # Hyperparameters and buffers (fixed labels / images) travel in the checkpoint, so the
    # reloaded model samples exactly what the trained one does.
    fixture, overrides, steps, _ = CASES[name]
    cli = fit_yaml(name, celeba_dir, *overrides, steps=steps)
    path = cli.trainer.checkpoint_callback.last_model_path
    reloaded = type(cli.model).load_from_checkpoint(path, map_location="cpu")
    torch.manual_seed(0)
    expected = cli.model.eval().sample(2)
    torch.manual_seed(0)
    assert torch.allclose(reloaded.eval().sample(2), expected, atol=1e-6)
    if getattr(cli.model, "conditional", False):
        assert torch.equal(reloaded.fixed_labels(), cli.model.fixed_labels())


def test_cyclegan_at_its_papers_batch_of_one_shows_and_samples_different_images(mnist_dir):
    # The YAML trains on batches of 1 image per domain. The grids and sample() used the first
    # batch only: 8 copies of one digit, and the triplets ran across the grid's rows.
    cli = fit_yaml("cyclegan_mnist_inverted.yaml", mnist_dir, *TINY_CYCLE, "--data.batch_size",
                   "1", "--model.init_args.num_fixed_samples", "8",
                   steps=18)  # 9 batches: one G and one D step each
    model = cli.model
    assert bool(model._fixed_set)
    assert len({x.numpy().tobytes() for x in model.fixed_a}) == 8  # the first 8 batches' digits
    grid = np.asarray(Image.open(Path.cwd() / "images" / "a_to_b_to_a_last.png").convert("L"))
    _, h, w = model.hparams.image_shape
    assert grid.shape == (3 * (h + 2) + 2, 8 * (w + 2) + 2)  # rows a / G(a) / F(G(a)), 8 columns
    for i, image in enumerate(model.fixed_a):  # column i: image i on top
        tile = grid[2:2 + h, 2 + i * (w + 2):2 + i * (w + 2) + w].astype(int)
        expected = ((image[0].double() + 1) * 127.5 + 0.5).floor().clamp(0, 255).numpy()
        assert np.abs(tile - expected).max() <= 1
    samples = model.eval().sample(16)  # G(a) of the 8 kept images, then again
    assert len({x.numpy().tobytes() for x in samples[:8]}) == 8
    torch.testing.assert_close(samples[8:], samples[:8])


def test_latent_arithmetic_rows_start_with_the_face_and_say_their_alphas(celeba_dir):
    cli = fit_yaml("beta_vae_celeba.yaml", celeba_dir, "--model.init_args.width", "8", steps=4)
    png = Image.open(Path.cwd() / "images" / "latent_arithmetic_Smiling_last.png")
    callback = next(c for c in cli.trainer.callbacks if isinstance(c, LatentArithmeticCallback))
    faces = min(callback.num_faces, len(cli.datamodule.val_set))  # the fake data's few faces
    side = 64 + 2  # CelebA at the YAML's 64 px, 2 px padding
    assert png.size == ((1 + len(callback.alphas)) * side + 2, faces * side + 2)
    assert png.text["Description"] == (
        "row r: face r, then decode(mu + alpha * v) with v the Smiling vector, alpha = -1, "
        "-0.5, 0, 0.5, 1, 1.5, 2 (alpha 0: its reconstruction)")


def test_every_grid_a_model_logs_says_what_its_rows_and_columns_are(mnist_dir):
    cli = fit_yaml("vae_mnist.yaml", mnist_dir, "--model.init_args.width", "8",
                   "--images.every_n_epochs", "1", steps=4)
    for name in ("reconstructions", "samples"):
        text = Image.open(Path.cwd() / "images" / f"{name}_last.png").text["Description"]
        assert text == cli.model.grid_layouts()[name] and text
    assert Image.open(Path.cwd() / "images" / "reconstructions_last.png").text[
        "Description"] == "pairs left to right: input, its reconstruction (decoded posterior mean)"


def test_sample_draws_the_class_asked_for_and_refuses_one_the_model_lacks(mnist_dir, tmp_path,
                                                                          capsys):
    from lightning_gen.cli import main

    cli = fit_yaml("cgan_mnist.yaml", mnist_dir, *TINY_MLP, steps=2)
    ckpt = cli.trainer.checkpoint_callback.last_model_path
    main(["sample", "--ckpt_path", ckpt, "--num_samples", "5", "--class_label", "3",
          "--out", str(tmp_path / "threes"), "--accelerator", "cpu", "--progress", "false"])
    assert len(list((tmp_path / "threes").glob("*.png"))) == 5
    assert (tmp_path / "threes" / "labels.txt").read_text().split() == ["3"] * 5
    for label in ("12", "-1"):  # a traceback from the embedding, and an empty folder, before
        with pytest.raises(SystemExit) as stop:
            main(["sample", "--ckpt_path", ckpt, "--num_samples", "5", "--class_label", label,
                  "--out", str(tmp_path / "bad"), "--accelerator", "cpu", "--progress", "false"])
        assert stop.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err == (f"lightning-gen: error: --class_label {label} is not a class of this GAN: "
                       "its classes are 0...9")
        assert not (tmp_path / "bad").exists()


def test_the_papers_gan_trains_at_its_sgd_learning_rate_without_blowing_up(tmp_path):
    # gan_mnist / cgan_mnist (SGD, lr 0.1, momentum 0.5) stopped on a non-finite D loss within
    # ~120 steps: PyTorch's default init and [-1, 1] pixels put the maxout discriminator far
    # from the paper code's start (weights U(+-.005), pixels on [0, 1]).
    from tests import fakedata

    data = fakedata.write_mnist(tmp_path / "mnist", n_train=512)
    cli = fit_yaml("gan_mnist.yaml", data, "--data.batch_size", "100", steps=240)
    assert cli.trainer.global_step == 240
    assert_finite_params(cli.model)
    d_loss = float(cli.trainer.callback_metrics["train/d_loss"])
    assert 0 < d_loss < 10  # not the 10^3-10^4 of a discriminator on its way to inf
