"""StyleGAN2: modulated convolution and demodulation, R1 and path length against analytic values,
truncation, shapes, gradients through the lazy steps, the YAMLs and their grids, resume.

(bf16-mixed and the 2-process DDP fit are in tests/test_scaling.py's parametrised lists.)
"""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image
from torch.nn import functional as F

from datamodules import DigitsDataModule
from lightning_gen.callbacks.images import grid_pixels, image_grid
from lightning_gen.callbacks.stylegan2 import style_mixing_images, truncation_images
from lightning_gen.losses import lazy_regularization_adam, path_length_penalty
from lightning_gen.models import StyleGAN2
from lightning_gen.nets.stylegan2 import modulated_conv2d
from tests.zoo_utils import assert_finite_params, fit_yaml

TINY = {"latent_dim": 8, "w_dim": 8, "mapping_layers": 2, "channel_base": 64, "channel_max": 8}


def tiny(shape=(1, 16, 16), **kw) -> StyleGAN2:
    return StyleGAN2(image_shape=shape, **{**TINY, **kw})


def tiny_trainer(**kw) -> L.Trainer:
    return L.Trainer(**{**dict(accelerator="cpu", devices=1, logger=False,
                               enable_checkpointing=False, enable_progress_bar=False,
                               enable_model_summary=False), **kw})


def digits() -> DigitsDataModule:
    return DigitsDataModule(image_size=16, batch_size=8, val_fraction=0.0)


# ----------------------------------------------------------------------------------------------
# Modulated convolution
@pytest.mark.parametrize("demodulate", [True, False])
def test_modulated_conv_equals_explicit_per_sample_convolution(demodulate):
    """Grouped implementation vs one plain conv per sample with w'_oik = s_i w_oik and, with
    demodulation, w'' = w' / sqrt(sum_{i,k} w'^2 + 1e-8); tolerance 1e-5 (float32)."""
    g = torch.Generator().manual_seed(0)
    x, weight = torch.randn(3, 5, 9, 9, generator=g), torch.randn(4, 5, 3, 3, generator=g)
    styles = torch.rand(3, 5, generator=g) + 0.5
    out = modulated_conv2d(x, weight, styles, demodulate=demodulate, padding=1)
    for b in range(3):
        w = weight * styles[b].view(1, 5, 1, 1)
        if demodulate:
            w = w / torch.sqrt((w**2).sum(dim=(1, 2, 3), keepdim=True) + 1e-8)
        torch.testing.assert_close(out[b:b + 1], F.conv2d(x[b:b + 1], w, padding=1),
                                   rtol=1e-5, atol=1e-5)


def test_demodulation_gives_unit_output_variance_for_unit_variance_input():
    """i.i.d. N(0, 1) inputs, arbitrary weights and styles: every output channel's variance is
    sum_{i,k} w''^2 = 1. Estimated over 4 x 30 x 30 interior pixels per channel (no padding);
    tolerance 0.15 per channel, 0.05 for the mean over 16 channels (the estimate's standard
    error is ~0.03 per channel, the pixels' receptive fields overlap). Without demodulation
    the variance is far from 1."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 32, 32, 32, generator=g)
    weight = torch.randn(16, 32, 3, 3, generator=g) * 3.0
    styles = torch.exp(torch.randn(4, 32, generator=g))
    var = modulated_conv2d(x, weight, styles, padding=0).var(dim=(0, 2, 3))  # (16,)
    assert (var - 1).abs().max() < 0.15, var
    assert abs(float(var.mean()) - 1) < 0.05, var.mean()
    plain = modulated_conv2d(x, weight, styles, demodulate=False, padding=0).var(dim=(0, 2, 3))
    assert plain.mean() > 10


# ----------------------------------------------------------------------------------------------
# Regularisers against analytic values
class LinearCritic(torch.nn.Module):
    def __init__(self, numel: int) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.linspace(-1, 1, numel))
        self.b = torch.nn.Parameter(torch.tensor(0.3))

    def forward(self, x):
        return (x.flatten(1) @ self.w + self.b)[:, None]


def test_r1_equals_squared_input_gradient_norm_of_a_linear_critic():
    """D(x) = <w, x> + b: grad_x D = w for every x, so R1 = ||w||^2 and the lazy D-reg loss is
    gamma / 2 * ||w||^2 * k (tolerance 1e-5 relative)."""
    model = tiny(r1_gamma=3.0, r1_interval=16)
    model.discriminator = LinearCritic(256)
    terms = model.r1_terms(torch.randn(5, 1, 16, 16))
    w2 = float(model.discriminator.w.detach().square().sum())
    assert math.isclose(float(terms["r1_penalty"]), w2, rel_tol=1e-5)
    assert math.isclose(float(terms["loss"]), 0.5 * 3.0 * w2 * 16, rel_tol=1e-5)
    terms["loss"].backward()  # the bias is in the graph (zero gradient), as DDP needs
    assert model.discriminator.b.grad is not None and float(model.discriminator.b.grad) == 0


def test_path_length_penalty_of_a_linear_generator():
    """g(w) = A vec(w): J_w^T y = A^T y exactly, the length is sqrt(mean_layers ||.||^2), and
    with y ~ N(0, I) / sqrt(HW), E[length^2] = ||A||_F^2 / (HW * L) (over 4,000 draws:
    tolerance 5%)."""
    model = tiny()
    b, n_ws, d, shape = 4, 3, 5, (2, 4, 4)
    g = torch.Generator().manual_seed(0)
    A = torch.randn(n_ws * d, math.prod(shape), generator=g)
    ws = torch.randn(b, n_ws, d, generator=g, requires_grad=True)
    images = (ws.flatten(1) @ A).view(b, *shape)
    y = torch.randn(b, *shape, generator=g)
    grads = model.pl_grads(images, ws, y)
    expected = (y.flatten(1) @ A.T).view(b, n_ws, d)
    torch.testing.assert_close(grads, expected, rtol=1e-5, atol=1e-5)
    penalty, lengths = path_length_penalty(grads, 1.5)
    by_hand = torch.sqrt((expected**2).sum(2).mean(1))
    torch.testing.assert_close(lengths, by_hand)
    torch.testing.assert_close(penalty, ((by_hand - 1.5) ** 2).mean())
    many = torch.randn(4000, n_ws, d, requires_grad=True)
    images = (many.flatten(1) @ A).view(4000, *shape)
    _, lengths = path_length_penalty(model.pl_grads(images, many), 0.0)
    analytic = float(A.square().sum()) / (16 * n_ws)
    assert abs(float(lengths.square().mean()) / analytic - 1) < 0.05


def test_float16_overflow_in_the_path_length_step_leaves_pl_mean_alone():
    """Under 16-mixed an overflowed penalty (GradScaler scale too high) is a skipped step; the
    running mean a must not become inf/NaN for the rest of the run."""
    model = tiny()
    for scale, overflow in ((2.0**30, True), (1.0, False)):
        scaler = torch.amp.GradScaler("cpu", init_scale=scale)
        model.trainer = SimpleNamespace(precision_plugin=SimpleNamespace(scaler=scaler),
                                        world_size=1)
        before = float(model.pl_mean)
        with torch.autocast("cpu", dtype=torch.float16):
            terms = model.pl_terms(8)
        assert math.isfinite(float(terms["pl_penalty"])) != overflow
        assert math.isfinite(float(model.pl_mean))
        assert (float(model.pl_mean) == before) == overflow


def test_lazy_regularization_adjusts_adam():
    lr, betas = lazy_regularization_adam(0.002, (0.0, 0.99), 16)
    assert math.isclose(lr, 0.002 * 16 / 17) and betas == (0.0, 0.99 ** (16 / 17))
    opt_g, opt_d = tiny(pl_interval=4, r1_interval=16).configure_optimizers()
    assert math.isclose(opt_g.param_groups[0]["lr"], 0.002 * 4 / 5)
    assert math.isclose(opt_d.param_groups[0]["betas"][1], 0.99 ** (16 / 17))


def test_truncation_psi_zero_returns_the_mean_latent():
    model = tiny()
    gen = model.generator
    gen.mapping.w_avg.copy_(torch.randn(8))
    z = torch.randn(6, 8)
    ws = gen.ws(z, truncation=0.0)
    assert ws.shape == (6, gen.num_ws, 8)
    torch.testing.assert_close(ws, gen.mapping.w_avg.expand(6, gen.num_ws, 8))
    torch.testing.assert_close(gen.ws(z, truncation=1.0)[:, 0], gen.mapping(z))
    half = gen.ws(z, truncation=0.5)[:, 0]
    torch.testing.assert_close(half, gen.mapping.w_avg + 0.5 * (gen.mapping(z) - gen.mapping.w_avg))


def test_style_mixing_takes_the_second_latents_styles_from_one_crossover_on():
    """With mixing_prob 1 every batch crosses over at one random layer c in [1, num_ws): layers
    < c carry w(z), layers >= c carry w(z2); with mixing_prob 0 all carry w(z)."""
    gen = tiny().generator
    z, z2 = torch.randn(3, 8), torch.randn(3, 8)
    w, w2 = gen.mapping(z), gen.mapping(z2)
    torch.testing.assert_close(gen.ws(z), w[:, None].expand(3, gen.num_ws, 8))
    cutoffs = set()
    for _ in range(30):
        ws = gen.ws(z, mixing_prob=1.0, z2=z2)
        from_z = [torch.allclose(ws[:, i], w) for i in range(gen.num_ws)]
        cutoff = from_z.index(False)
        assert cutoff >= 1 and all(from_z[:cutoff])
        assert all(torch.allclose(ws[:, i], w2) for i in range(cutoff, gen.num_ws))
        cutoffs.add(cutoff)
    assert len(cutoffs) > 1


# ----------------------------------------------------------------------------------------------
# Networks
@pytest.mark.parametrize("size", [16, 32, 64])
def test_shapes(size):
    model = tiny((3, size, size))
    x = model.generator(torch.randn(4, 8), mixing_prob=1.0)
    assert x.shape == (4, 3, size, size)
    assert model.discriminator(x).shape == (4, 1)
    assert model.sample(3, truncation=0.7).shape == (3, 3, size, size)


def test_28_pixels_is_a_clear_error():
    with pytest.raises(ValueError, match="4 \\* 2\\*\\*n"):
        tiny((1, 28, 28))


class GradientRecorder(L.Callback):
    """Names of the parameters with finite gradients at every optimizer step."""

    def __init__(self) -> None:
        self.steps: list[tuple[str, set[str]]] = []

    def on_train_start(self, trainer, pl_module):
        names = {id(p): n for n, p in pl_module.named_parameters()}
        for which, opt in zip("GD", trainer.optimizers, strict=True):
            def hook(opt, args, kwargs, which=which):
                got = {names[id(p)] for group in opt.param_groups for p in group["params"]
                       if p.grad is not None and torch.isfinite(p.grad).all()}
                self.steps.append((which, got))
            opt.register_step_pre_hook(hook)


def test_every_parameter_gets_a_gradient_in_each_step_lazy_steps_included():
    """Batch 0 takes all four steps (D, D-R1, G, G-path-length): every D parameter has a
    gradient in both D steps, every G parameter in both G steps; the losses are finite."""
    model = tiny(style_mixing_prob=1.0)
    recorder = GradientRecorder()
    trainer = tiny_trainer(max_steps=4, callbacks=[recorder])
    trainer.fit(model, digits())
    assert (model.d_steps, model.g_steps, model.r1_steps, model.pl_steps) == (2, 2, 1, 1)
    d_names = {f"discriminator.{n}" for n, _ in model.discriminator.named_parameters()}
    g_names = {f"generator.{n}" for n, _ in model.generator.named_parameters()}
    assert [w for w, _ in recorder.steps] == ["D", "D", "G", "G"]
    for which, got in recorder.steps:
        assert got == (d_names if which == "D" else g_names), (which, (d_names | g_names) - got)
    logged = {k: float(v) for k, v in trainer.callback_metrics.items()}
    for key in ("train/d_loss", "train/g_loss", "train/d_r1_penalty", "train/g_pl_penalty"):
        assert math.isfinite(logged[key]), logged
    assert_finite_params(model)


# ----------------------------------------------------------------------------------------------
# YAMLs, with their grids read back
TINY_YAML = ("--model.init_args.latent_dim", "8", "--model.init_args.w_dim", "8",
             "--model.init_args.mapping_layers", "2", "--model.init_args.channel_base", "64",
             "--model.init_args.channel_max", "8", "--model.init_args.mbstd_group", "4",
             "--model.init_args.num_fixed_samples", "8")


def _png(name: str) -> np.ndarray:
    return np.asarray(Image.open(Path.cwd() / "images" / f"{name}_last.png"))


@pytest.mark.parametrize("name, fixture, steps", [
    ("stylegan2_celeba.yaml", "celeba_dir", 6),  # batch 0: D, R1, G, PL; batch 1: D, G
    ("stylegan2_cifar10.yaml", "cifar10_dir", 5),  # path length off: D, R1, G; D, G
])
def test_yaml_fits_and_its_grids_hold_the_generators_images(name, fixture, steps, request):
    cli = fit_yaml(name, request.getfixturevalue(fixture), *TINY_YAML, steps=steps)
    model = cli.model
    assert cli.trainer.global_step == steps == model.d_steps + model.g_steps
    assert model.r1_steps == 1 and model.batches == 2
    assert_finite_params(model)
    model.eval()
    with torch.no_grad():
        mixing = style_mixing_images(model, 4, 6, 4, 0, 1.0)
        sweep = truncation_images(model, 6, [1.0, 0.7, 0.5, 0.0, -0.5, -1.0], 0)
    for png, images, nrow in (("style_mixing", mixing, 7), ("truncation", sweep, 6)):
        pixels = _png(png)
        expected = grid_pixels(image_grid(images, nrow))
        assert pixels.shape == expected.shape
        assert np.abs(pixels.astype(int) - expected.astype(int)).max() <= 1, png
        assert pixels.std() > 1, f"{png} is blank"
        # Named like the other grids (epochs done), and saying what its rows and columns are.
        assert sorted(p.name for p in (Path.cwd() / "images").glob(f"{png}_epoch*.png")) == (
            sorted(p.name.replace("samples", png)
                   for p in (Path.cwd() / "images").glob("samples_epoch*.png")))
    assert Image.open(Path.cwd() / "images" / "truncation_last.png").text["Description"] == (
        "row r: latent r; columns: truncation psi = 1, 0.7, 0.5, 0, -0.5, -1 (psi 0: the mean "
        "w), noise off")
    assert "cell (r, c): row r's styles for layers < 4" in Image.open(
        Path.cwd() / "images" / "style_mixing_last.png").text["Description"]
    size = sweep.shape[-1]
    assert (mixing[0] == 1).all()  # the corner is blank (white)
    mean_image = sweep.view(6, 6, *sweep.shape[1:])[:, 3]  # psi = 0: the image of w_avg
    assert all(torch.allclose(mean_image[0], m, atol=1e-5) for m in mean_image)
    assert _png("samples").shape[0] > size


# ----------------------------------------------------------------------------------------------
# Resume
class StartState(L.Callback):
    def on_train_start(self, trainer, pl_module):
        self.ema = {k: v.clone() for k, v in pl_module.generator_ema.state_dict().items()}
        self.counters = (pl_module.batches, pl_module.r1_steps, pl_module.pl_steps,
                         pl_module.d_steps, pl_module.g_steps)
        self.pl_mean = pl_module.pl_mean.clone()


def test_resume_keeps_the_lazy_regularisation_counters_and_the_ema(tmp_path):
    """R1 every 4 batches, path length every 2. Run 1 stops after batch 2 (4 + 2 + 3 optimizer
    steps = 9); run 2 resumes and must regularise at batch 4 (R1 and PL), not at its own first
    batch, and start from the saved EMA and path-length mean."""
    kw = dict(r1_interval=4, pl_interval=2, ema_decay=0.5)
    L.seed_everything(0)
    first = tiny(**kw)
    trainer = tiny_trainer(max_steps=9)
    trainer.fit(first, digits())
    assert (first.batches, first.r1_steps, first.pl_steps) == (3, 1, 2)
    trainer.save_checkpoint(tmp_path / "mid.ckpt")
    saved_ema = {k: v.clone() for k, v in first.generator_ema.state_dict().items()}
    assert float(first.pl_mean) > 0

    start = StartState()
    resumed = tiny(**kw)
    tiny_trainer(max_steps=15, callbacks=[start]).fit(resumed, digits(),
                                                      ckpt_path=tmp_path / "mid.ckpt")
    assert start.counters == (3, 1, 2, 4, 5)
    assert float(start.pl_mean) == float(first.pl_mean)
    for k, v in saved_ema.items():
        assert torch.equal(start.ema[k], v), k
    # batch 3: D, G (11 steps); batch 4: D, R1, G, PL (15 steps)
    assert (resumed.batches, resumed.r1_steps, resumed.pl_steps) == (5, 2, 3)
    assert (resumed.d_steps, resumed.g_steps) == (7, 8)
