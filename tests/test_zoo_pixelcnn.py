"""PixelCNN: causal masks checked with autograd, likelihood units, sampling, completion, YAMLs."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image

from datamodules import DigitsDataModule
from lightning_gen.callbacks.images import ImageGridCallback
from lightning_gen.losses import categorical_nll, discretize
from lightning_gen.models import PixelCNN
from lightning_gen.nets.pixelcnn import GatedPixelCNNNet, MaskedConv2d, PixelCNNNet
from tests.zoo_utils import assert_finite_params, fit_yaml

NETS = {"pixelcnn": PixelCNNNet, "gated": GatedPixelCNNNet}


def _input_gradient(net, x, c, row, col) -> torch.Tensor:
    """d (sum of the logits of sub-pixel (c, row, col)) / d x, shape (C, H, W)."""
    x = x.clone().requires_grad_(True)
    net(x)[0, :, c, row, col].sum().backward()
    return x.grad[0]


@pytest.mark.parametrize("arch", ["pixelcnn", "gated"])
@pytest.mark.parametrize("channels", [1, 3])
def test_output_never_depends_on_current_or_later_inputs(arch, channels):
    # Raster order over pixels, then R -> G -> B within a pixel: the logits of sub-pixel
    # (c, i) may depend only on pixels before i and on channels < c of pixel i. The gradient to
    # every other input must be exactly zero, for every sub-pixel of an 5x5 image.
    torch.manual_seed(0)
    size = 5
    net = NETS[arch](channels, hidden=6 * channels, n_layers=3, num_levels=4).double()
    x = torch.randn(1, channels, size, size, dtype=torch.float64)
    pixel = torch.arange(size * size).view(size, size)
    for row in range(size):
        for col in range(size):
            i = row * size + col
            for c in range(channels):
                grad = _input_gradient(net, x, c, row, col)
                later = (pixel > i).expand(channels, size, size).clone()
                later[c:, row, col] = True  # the sub-pixel itself and later channels
                assert torch.all(grad[later] == 0), f"sub-pixel ({c}, {row}, {col}) sees the future"
                if i > 0:  # and the receptive field is not empty
                    assert grad[~later].abs().sum() > 0


def test_gated_pixelcnn_has_no_blind_spot():
    # With 3x3 masked convolutions the plain PixelCNN never sees the pixels up and to the right
    # (the blind spot, 2016b Fig. 1); the vertical stack of the gated PixelCNN does.
    torch.manual_seed(0)
    x = torch.randn(1, 1, 7, 7, dtype=torch.float64)
    gated = GatedPixelCNNNet(1, hidden=4, n_layers=4, num_levels=4).double()
    plain = PixelCNNNet(1, hidden=4, n_layers=4, num_levels=4).double()
    plain.input_conv = MaskedConv2d(1, 4, 3, "A").double()  # 3x3 everywhere, as in Fig. 1
    up_right = (2, 6)  # two rows above (4, 3), three columns to the right
    assert _input_gradient(gated, x, 0, 4, 3)[0][up_right] != 0
    assert _input_gradient(plain, x, 0, 4, 3)[0][up_right] == 0


def test_class_conditioning_changes_the_logits():
    torch.manual_seed(0)
    net = GatedPixelCNNNet(1, hidden=4, n_layers=2, num_levels=4, num_classes=10)
    for block in net.blocks:
        torch.nn.init.normal_(block.condition.weight)
    x = torch.randn(2, 1, 5, 5)
    out0, out1 = net(x, torch.tensor([0, 0])), net(x, torch.tensor([3, 3]))
    assert not torch.allclose(out0, out1)


def test_nll_matches_an_explicit_sum_of_log_probabilities():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 1, 3, 3)  # (B, L, C, H, W)
    levels = torch.randint(0, 4, (2, 1, 3, 3))
    log_p = torch.log_softmax(logits, dim=1)
    expected = -torch.stack([
        sum(log_p[b, levels[b, 0, i, j], 0, i, j] for i in range(3) for j in range(3))
        for b in range(2)])
    assert torch.allclose(categorical_nll(logits, levels), expected, atol=1e-5)


def test_uniform_model_has_eight_bits_per_dim():
    # Zero logits = uniform over 256 levels: -log p = C H W log 256 nats = 8 bits per dim.
    model = PixelCNN(image_shape=(1, 4, 4), hidden=2, n_layers=1)
    for p in model.net.head[-1].parameters():
        torch.nn.init.zeros_(p)
    nats = model.nll(torch.rand(3, 1, 4, 4) * 2 - 1)
    assert torch.allclose(nats, torch.full((3,), 16 * math.log(256)), rtol=1e-6)
    assert torch.allclose(nats / (16 * math.log(2)), torch.full((3,), 8.0), rtol=1e-6)


def test_discretize_maps_endpoints_to_first_and_last_level():
    assert discretize(torch.tensor([-1.0, 0.0, 1.0])).tolist() == [0, 128, 255]


def test_sample_and_completion_keep_the_contract():
    torch.manual_seed(0)
    model = PixelCNN(image_shape=(1, 6, 6), hidden=4, n_layers=1, num_classes=10)
    samples = model.sample(3)
    assert samples.shape == (3, 1, 6, 6) and samples.min() >= -1 and samples.max() <= 1
    levels = (samples + 1) / 2 * 255
    assert torch.allclose(levels, levels.round(), atol=1e-4)  # on the 256 levels
    x = torch.rand(2, 1, 6, 6) * 2 - 1
    completed = model.complete(x, torch.tensor([1, 2]))
    _, snapped = model.quantize(x)
    assert torch.equal(completed[:, :, :3], snapped[:, :, :3])  # the upper half is kept


def test_nll_falls_when_fitting_one_batch():
    torch.manual_seed(0)
    model = PixelCNN(image_shape=(1, 8, 8), hidden=8, n_layers=2, lr=3e-3)
    x = (torch.rand(8, 1, 8, 8) > 0.5).float() * 2 - 1
    opt = model.configure_optimizers()
    losses = []
    # Uniform guessing costs 64 ln 256 = 355 nats; two levels at most 64 ln 2 = 44 nats.
    for _ in range(50):
        loss = model.nll(x).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_pixelcnn_mnist_yaml_fits(mnist_dir):
    cli = fit_yaml("pixelcnn_mnist.yaml", mnist_dir, "--model.init_args.hidden", "8",
                   "--model.init_args.n_layers", "1", "--trainer.limit_val_batches", "0",
                   "--model.init_args.num_fixed_samples", "0", "--data.image_size", "8",
                   "--trainer.callbacks.init_args.num_images", "2",
                   "--trainer.callbacks.init_args.num_completions", "1")
    assert cli.trainer.global_step == 4
    assert_finite_params(cli.model)
    assert torch.isfinite(cli.trainer.callback_metrics["train/nll_bits_per_dim"])
    assert (Path.cwd() / "images" / "completions_test_last.png").is_file()


@pytest.mark.parametrize("name", ["pixelcnn_cifar10.yaml", "gated_pixelcnn_cifar10.yaml"])
def test_pixelcnn_cifar10_yamls_fit(name, cifar10_dir):
    cli = fit_yaml(name, cifar10_dir, "--model.init_args.hidden", "12",
                   "--model.init_args.n_layers", "2", "--model.init_args.kernel_size", "3",
                   "--trainer.limit_val_batches", "0", "--model.init_args.num_fixed_samples", "0",
                   "--data.image_size", "4", "--trainer.callbacks.init_args.num_images", "2",
                   "--trainer.callbacks.init_args.num_completions", "1")
    assert (Path.cwd() / "images" / "completions_test_last.png").is_file()
    assert cli.trainer.global_step == 4
    assert_finite_params(cli.model)


def test_log_images_gives_samples_and_three_rows_of_completions():
    model = PixelCNN(image_shape=(1, 4, 4), hidden=2, n_layers=1, num_fixed_samples=2)
    x = torch.rand(3, 1, 4, 4) * 2 - 1
    images = model.log_images((x, torch.zeros(3, dtype=torch.long)))
    assert images["samples"].shape == (2, 1, 4, 4)
    assert images["completions"].shape == (3, 2, 1, 4, 4)  # originals, given, completions


def tile(png: np.ndarray, row: int, col: int, size: int = 8) -> np.ndarray:
    """Tile ``(row, col)`` of a grid PNG of ``size``-px tiles (torchvision's 2-px padding), as
    ints in 0..255 (the first channel: the grids of grey images are grey RGB)."""
    top, left = 2 + row * (size + 2), 2 + col * (size + 2)
    return png[top:top + size, left:left + size, 0].astype(int)


def pixels(image: torch.Tensor) -> np.ndarray:
    """A ``(1, H, W)`` image in [-1, 1] as the ints 0..255 of its PNG."""
    return ((image[0] + 1) / 2 * 255).round().numpy().astype(int)


def completion_grid(folder: Path) -> tuple[np.ndarray, torch.Tensor]:
    """Fit a tiny PixelCNN one batch on the 8x8 digits with the image grids on: the pixels of
    ``images/completions_epoch0001.png`` and the three images the grid completes."""
    torch.manual_seed(0)
    model = PixelCNN(image_shape=(1, 8, 8), hidden=4, n_layers=1, num_fixed_samples=3)
    grids = ImageGridCallback(every_n_epochs=1)
    trainer = L.Trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=0,
                        accelerator="cpu", logger=False, callbacks=[grids],
                        default_root_dir=folder, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, datamodule=DigitsDataModule(image_size=8, batch_size=4))
    png = np.asarray(Image.open(folder / "images" / "completions_epoch0001.png"))
    return png, grids.batch[0][:3]


def test_completion_grid_has_aligned_rows_of_originals_given_halves_and_completions(tmp_path):
    # Three images, 8 per row in the ImageGridCallback: still three rows of three, column i
    # holding image i's original, its given upper half, and its completion.
    png, x = completion_grid(tmp_path)
    assert png.shape[:2] == (3 * 10 + 2, 3 * 10 + 2)
    for i in range(3):
        assert np.abs(tile(png, 0, i) - pixels(x[i])).max() <= 1
        for row in (1, 2):  # the given half, and the completion, keep the upper half
            assert np.abs(tile(png, row, i)[:4] - pixels(x[i])[:4]).max() <= 1


def test_completion_grid_shows_the_hidden_half_mid_grey_not_black(tmp_path):
    # The digits' background is black (-1): a black lower half would read as a shorter digit.
    png, _ = completion_grid(tmp_path)
    for i in range(3):
        assert (tile(png, 1, i)[4:] == 128).all(), tile(png, 1, i)


def test_long_sampling_shows_progress_unless_the_run_turned_progress_bars_off(capsys,
                                                                             monkeypatch):
    from types import SimpleNamespace

    model = PixelCNN(image_shape=(1, 8, 8), hidden=6, n_layers=1, num_fixed_samples=0)
    monkeypatch.setattr(PixelCNN, "progress_min_passes", 64)  # 8x8 = 64 passes
    model.sample(2)
    assert "PixelCNN sampling" in capsys.readouterr().err
    model.complete(torch.zeros(2, 1, 8, 8))  # 32 passes: below the threshold
    assert "PixelCNN sampling" not in capsys.readouterr().err
    model._trainer = SimpleNamespace(progress_bar_callback=None, global_rank=0)
    model.sample(2)
    assert "PixelCNN sampling" not in capsys.readouterr().err
