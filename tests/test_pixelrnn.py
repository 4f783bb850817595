"""PixelRNN (van den Oord et al. 2016a): skew/unskew, the LSTM layers against per-pixel
recurrences, causality checked with autograd for the Row LSTM and the Diagonal BiLSTM, the
shared PixelCNN likelihood / sampling / completion, and the two YAMLs (fit, bf16-mixed,
evaluate, sample). (bf16-mixed of the model alone: tests/test_scaling.py's OTHERS list.)"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from datamodules import MNISTDataModule
from lightning_gen.cli import main
from lightning_gen.models import PixelCNN, PixelRNN
from lightning_gen.nets import pixelrnn as nets
from lightning_gen.nets.pixelrnn import DiagonalLSTM, PixelRNNNet, RowLSTM, skew, unskew
from tests import fakedata
from tests.metrics_helpers import classifier_checkpoint
from tests.zoo_utils import assert_finite_params, fit_yaml

ARCHS = ["row_lstm", "diagonal_bilstm"]


# ----------------------------------------------------------------------------------------------
# Skewing


@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (1, 1, 5, 2), (1, 2, 1, 3), (1, 1, 3, 1)])
def test_skew_matches_its_definition_and_unskew_inverts_it_exactly(shape):
    x = torch.randn(*shape, dtype=torch.float64)
    b, c, h, w = shape
    expected = torch.zeros(b, c, h, w + h - 1, dtype=torch.float64)
    for r in range(h):
        for col in range(w):
            expected[:, :, r, r + col] = x[:, :, r, col]  # row r shifted right by r
    assert torch.equal(skew(x), expected)
    assert torch.equal(unskew(skew(x), w), x)
    # unskew reads only the diagonal band: whatever lies in the padding is dropped.
    noisy = expected + (expected == 0) * torch.randn_like(expected)
    assert torch.equal(unskew(noisy, w), x)
    with pytest.raises(ValueError, match="columns"):
        unskew(expected, w + 1)


# ----------------------------------------------------------------------------------------------
# The LSTM layers against explicit per-pixel recurrences (float64, tolerance 1e-12)


def _lstm(gates: torch.Tensor, cell: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    o, f, i, g = gates.chunk(4)
    cell = torch.sigmoid(f) * cell + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(cell), cell


def test_row_lstm_is_the_row_recurrence_of_the_paper():
    # [o, f, i, g] at (r, c) = K^is (masked, the row up to c) + sum_k K^ss_k h(r - 1, c + k - 1)
    torch.manual_seed(0)
    hid, size = 2, 4
    layer = RowLSTM(2 * hid, hid, 3, 1).double()
    x = torch.randn(1, 2 * hid, size, size, dtype=torch.float64)
    gates_is = layer.input_to_state(x)[0]
    w = layer.state_to_state.weight  # (4h, h, 3)
    h = torch.zeros(size + 2, size + 2, hid, dtype=torch.float64)  # padded by one all round
    c = torch.zeros(size, size, hid, dtype=torch.float64)
    for r in range(size):
        for col in range(size):
            gates = gates_is[:, r, col] + sum(w[:, :, k] @ h[r, col + k] for k in range(3))
            h[r + 1, col + 1], c[r, col] = _lstm(gates, c[r - 1, col] if r else c[r, col] * 0)
    states = h[1:-1, 1:-1].permute(2, 0, 1)[None]
    expected = x + layer.output(states)
    assert torch.allclose(layer(x), expected, rtol=0, atol=1e-12)


def test_diagonal_lstm_is_the_recurrence_over_the_pixel_above_and_the_pixel_to_the_left():
    # [o, f, i, g] at (r, c) = K^is x(r, c) + K^ss_0 h(r - 1, c) + K^ss_1 h(r, c - 1),
    # c(r, c) from the cell to the left (the previous column of the skewed map, same row).
    torch.manual_seed(0)
    hid, height, width = 2, 4, 3
    layer = DiagonalLSTM(2 * hid, hid, 1).double()
    x = torch.randn(1, 2 * hid, height, width, dtype=torch.float64)
    gates_is = layer.input_to_state(x)[0]
    w = layer.state_to_state.weight  # (4h, h, 2)
    zero = torch.zeros(hid, dtype=torch.float64)
    h = {}
    c = {}
    for r in range(height):
        for col in range(width):
            above, left = h.get((r - 1, col), zero), h.get((r, col - 1), zero)
            gates = gates_is[:, r, col] + w[:, :, 0] @ above + w[:, :, 1] @ left
            h[r, col], c[r, col] = _lstm(gates, c.get((r, col - 1), zero))
    expected = torch.stack([torch.stack([h[r, col] for col in range(width)], -1)
                            for r in range(height)], -2)[None]
    assert torch.allclose(layer(x), expected, rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------------------------
# Causality by autograd


def _jacobian_rows(net, x, c, row, col) -> torch.Tensor:
    """d (sum of the logits of sub-pixel (c, row, col)) / d x, shape (C, H, W)."""
    x = x.clone().requires_grad_(True)
    net(x)[0, :, c, row, col].sum().backward()
    return x.grad[0]


def _seen_through_the_input_layer(channels: int, size: int, row: int, col: int) -> torch.Tensor:
    """(C, H, W) bool: the sub-pixels whose values reach some 7x7 mask-A feature at or before
    (row, col) in raster order. Pixel (r, c) enters the features right of it in its row
    (c + 1 .. c + 3) and those of the next three rows (c - 3 .. c + 3), and, except for its
    last channel, its own (mask A at the centre): so the last channel of a row's last pixel
    reaches no feature before pixel W - 4 of the next row."""
    seen = torch.zeros(channels, size, size, dtype=torch.bool)
    for r in range(size):
        for c in range(size):
            features = [(r, c + d) for d in (1, 2, 3)]
            features += [(r + dr, c + dc) for dr in (1, 2, 3) for dc in range(-3, 4)]
            seen[:, r, c] = any(0 <= fc < size and fr < size and (fr, fc) <= (row, col)
                                for fr, fc in features)
            seen[:-1, r, c] |= (r, c) <= (row, col)
    return seen


def _all_input_gradients(net, x: torch.Tensor) -> torch.Tensor:
    """(C, H, W, C, H, W): |d (sum of the logits of sub-pixel (c, r, col)) / d x| summed over
    the images of ``x``, for every sub-pixel at once: one copy of each image per sub-pixel in
    one batch (the images of a batch are independent), one backward pass. Several random
    images keep a ReLU that happens to be off at one pixel from hiding a dependence."""
    k, channels, height, width = x.shape
    n = channels * height * width
    xs = x.repeat_interleave(n, 0).clone().requires_grad_(True)  # (k n, C, H, W)
    logits = net(xs).sum(1).flatten(1)  # (k n, C H W): summed over the levels
    own = torch.arange(n).repeat(k)
    logits[torch.arange(k * n), own].sum().backward()
    return xs.grad.abs().view(k, channels, height, width, channels, height, width).sum(0)


def _check_causal(net, channels: int, size: int, full_context: bool) -> None:
    grads = _all_input_gradients(net, torch.randn(3, channels, size, size, dtype=torch.float64))
    pixel = torch.arange(size * size).view(size, size)
    for row in range(size):
        for col in range(size):
            i = row * size + col
            for c in range(channels):
                grad = grads[c, row, col]
                later = (pixel > i).expand(channels, size, size).clone()
                later[c:, row, col] = True  # the sub-pixel itself and later channels
                assert torch.all(grad[later] == 0), f"sub-pixel ({c}, {row}, {col}) sees the future"
                if c > 0:  # and its earlier channels
                    assert grad[:c, row, col].abs().sum() > 0, (c, row, col)
                if full_context:  # exactly the earlier pixels that the input layer passes on
                    seen = _seen_through_the_input_layer(channels, size, row, col) & (pixel < i)
                    assert torch.equal((grad != 0) & (pixel < i), seen), (c, row, col)
                elif i > 0:
                    assert grad[:, pixel < i].abs().sum() > 0, (c, row, col)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("channels", [1, 3])
def test_no_output_depends_on_a_later_pixel_or_a_later_channel(arch, channels):
    # Raster order over pixels, R -> G -> B within a pixel: the gradient of the logits of
    # sub-pixel (c, r, col) to every later input must be exactly zero, for every sub-pixel of
    # a 5x5 image (float64). The Diagonal BiLSTM's context is the whole past (Sec. 3.2): every
    # earlier pixel that the 7x7 mask-A input layer passes to a feature at or before the pixel.
    torch.manual_seed(0)
    net = PixelRNNNet(channels, arch, hidden=4 * channels, n_layers=2, num_levels=3).double()
    _check_causal(net, channels, 5, full_context=arch == "diagonal_bilstm")


def test_unshifted_right_to_left_direction_would_leak_the_next_pixel(monkeypatch):
    # The check above can fail: without the one-row shift of the right-to-left output, a pixel
    # sees the pixel to its right.
    torch.manual_seed(0)
    monkeypatch.setattr(nets, "_shift_down", lambda x: x)
    net = PixelRNNNet(1, "diagonal_bilstm", hidden=4, n_layers=1, num_levels=2).double()
    grad = _jacobian_rows(net, torch.randn(1, 1, 4, 4, dtype=torch.float64), 0, 2, 1)
    assert grad[0, 2, 2] != 0  # the next pixel, through the 7x7 feature of (2, 3)


def test_row_lstm_context_is_a_triangle_wider_than_its_kernels():
    # One Row LSTM layer (k = 3) after the 7x7 mask-A convolution: pixel (6, 0) sees row q < 6
    # up to column 8 - q (the state reaches one more column per row up; the 7x7 features of
    # row q + 1 add 3 columns), so a triangle, not the whole past, and far wider than the
    # convolution's 3 rows.
    torch.manual_seed(0)
    net = PixelRNNNet(1, "row_lstm", hidden=2, n_layers=1, num_levels=2).double()
    grad = _jacobian_rows(net, torch.randn(1, 1, 12, 12, dtype=torch.float64), 0, 6, 0)[0]
    rows, cols = torch.meshgrid(torch.arange(12), torch.arange(12), indexing="ij")
    assert torch.equal(grad != 0, (rows < 6) & (cols <= 8 - rows))


def test_hidden_must_split_into_the_rgb_groups():
    with pytest.raises(ValueError, match="multiple of the image channels"):
        PixelRNN(image_shape=(3, 8, 8), hidden=4)
    with pytest.raises(ValueError, match="architecture"):
        PixelRNNNet(1, "grid_lstm")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------
# The PixelCNN's likelihood, sampling and completion


def test_binary_output_nll_is_the_bernoulli_log_likelihood():
    # num_levels = 2: a 2-way softmax with logits (l0, l1) is a Bernoulli with logit l1 - l0;
    # -log p(x) = -sum_i [x_i log s_i + (1 - x_i) log(1 - s_i)] in nats (tolerance 1e-5 rel).
    torch.manual_seed(0)
    model = PixelRNN(image_shape=(1, 6, 6), hidden=2, n_layers=1, num_levels=2).eval()
    x = (torch.rand(3, 1, 6, 6) > 0.5).float() * 2 - 1
    with torch.no_grad():
        logits = model(x)  # (B, 2, 1, H, W); the input of 0/1 images is the image itself
        s = torch.sigmoid(logits[:, 1] - logits[:, 0])
        bits = (x + 1) / 2
        expected = -(bits * s.log() + (1 - bits) * (1 - s).log()).flatten(1).sum(1)
        assert torch.allclose(model.nll(x), expected, rtol=1e-5)
    assert isinstance(model, PixelCNN)  # evaluate's NLL path and the callbacks see a PixelCNN


@pytest.mark.parametrize("arch", ARCHS)
def test_sample_and_completion_keep_the_contract(arch):
    torch.manual_seed(0)
    model = PixelRNN(image_shape=(3, 3, 3), architecture=arch, hidden=3, n_layers=1,
                     num_classes=10)
    samples = model.sample(3)
    assert samples.shape == (3, 3, 3, 3) and samples.dtype == torch.float32
    assert samples.min() >= -1 and samples.max() <= 1
    levels = (samples + 1) / 2 * 255
    assert torch.allclose(levels, levels.round(), atol=1e-4)  # on the 256 levels
    x = torch.rand(2, 3, 3, 3) * 2 - 1
    completed = model.complete(x, torch.tensor([1, 2]))
    _, snapped = model.quantize(x)
    assert torch.equal(completed[:, :, :1], snapped[:, :, :1])  # the upper half is kept
    assert not torch.equal(completed[:, :, 1:], snapped[:, :, 1:])  # the rest is sampled


@pytest.mark.parametrize("arch", ARCHS)
def test_loss_falls_on_a_fixed_batch_of_binarized_mnist(arch, mnist_dir):
    dm = MNISTDataModule(data_dir=str(mnist_dir), binarize="static", download=False,
                         image_size=8, batch_size=8, val_fraction=0.25, num_workers=0)
    dm.setup()
    x = next(iter(dm.train_dataloader()))[0]
    assert set(x.unique().tolist()) == {-1.0, 1.0}
    torch.manual_seed(0)
    model = PixelRNN(image_shape=(1, 8, 8), architecture=arch, hidden=4, n_layers=1,
                     num_levels=2, lr=3e-2)
    opt = model.configure_optimizers()
    losses = []
    for _ in range(20):  # a 2-level softmax starts below 64 ln 2 = 44 nats
        loss = model.nll(x).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


# ----------------------------------------------------------------------------------------------
# The YAMLs

TINY = ("--model.init_args.n_layers", "1", "--model.init_args.num_fixed_samples", "0",
        "--trainer.callbacks.init_args.num_images", "2",
        "--trainer.callbacks.init_args.num_completions", "1")


def test_pixelrnn_binarized_mnist_yaml_fits_evaluates_and_samples(tmp_path):
    mnist = fakedata.write_mnist(tmp_path / "mnist", n_train=40, n_test=24)
    cli = fit_yaml("pixelrnn_binarized_mnist.yaml", mnist, "--model.init_args.hidden", "4",
                   *TINY, "--data.image_size", "8", "--data.val_fraction", "0.25")
    model = cli.model
    assert isinstance(model, PixelRNN) and cli.trainer.global_step == 4
    assert (model.hparams.architecture, model.hparams.num_levels) == ("diagonal_bilstm", 2)
    assert cli.datamodule.binarize == "static"
    assert_finite_params(model)
    assert (Path.cwd() / "images" / "completions_test_last.png").is_file()
    ckpt = Path.cwd() / "checkpoints" / "last.ckpt"
    clf = classifier_checkpoint(tmp_path / "clf.ckpt", image_shape=(1, 8, 8))
    out = tmp_path / "eval.json"
    # Few samples: each costs 64 network passes (the NLL is exact and needs none).
    main(["evaluate", "--ckpt_path", str(ckpt), "--num_samples", "4", "--reference", "test",
          "--feature_extractor", f"classifier:{clf}", "--batch_size", "8",
          "--kid_subset_size", "2", "--isc_splits", "2", "--accelerator", "cpu",
          "--progress", "false", "--cache_dir", str(tmp_path / "cache"), "--out", str(out)])
    result = json.loads(out.read_text())
    dm = MNISTDataModule(data_dir=str(mnist), binarize="static", download=False, image_size=8,
                         val_fraction=0.25)
    dm.setup()
    test_images = torch.stack([dm.test_set[i][0] for i in range(len(dm.test_set))])
    with torch.no_grad():
        expected = model.eval().nll(test_images).mean().item()
    assert result["test_nll_nats"] == pytest.approx(expected, rel=1e-5)
    assert result["test_bits_per_dim"] == pytest.approx(expected / (64 * math.log(2)), rel=1e-6)
    main(["sample", "--ckpt_path", str(ckpt), "--num_samples", "2", "--out",
          str(tmp_path / "samples"), "--accelerator", "cpu", "--progress", "false"])
    assert any((tmp_path / "samples").iterdir())


def test_pixelrnn_cifar10_yaml_fits_and_writes_completions(cifar10_dir):
    cli = fit_yaml("pixelrnn_cifar10.yaml", cifar10_dir, "--model.init_args.hidden", "3",
                   *TINY, "--data.image_size", "4", "--trainer.limit_val_batches", "0")
    assert cli.model.hparams.num_levels == 256 and cli.model.hparams.hidden == 3
    assert cli.trainer.global_step == 4
    assert_finite_params(cli.model)
    assert (Path.cwd() / "images" / "completions_test_last.png").is_file()


@pytest.mark.parametrize("name", ["pixelrnn_binarized_mnist.yaml", "pixelrnn_cifar10.yaml"])
def test_yamls_fit_in_bf16_mixed(name, request):
    data = request.getfixturevalue("mnist_dir" if "mnist" in name else "cifar10_dir")
    cli = fit_yaml(name, data, "--model.init_args.hidden", "3" if "cifar" in name else "2",
                   *TINY, "--data.image_size", "4", "--trainer.limit_val_batches", "0",
                   "--trainer.precision", "bf16-mixed", steps=2)
    assert cli.trainer.precision == "bf16-mixed" and cli.trainer.global_step == 2
    assert_finite_params(cli.model)
    assert math.isfinite(float(cli.trainer.callback_metrics["train/loss"]))
