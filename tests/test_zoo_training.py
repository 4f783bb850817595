"""Losses that must fall, on one fixed batch (a statement each model's optimisation makes):

* a discriminator / critic trained against a *frozen* generator's fixed samples lowers its
  loss (it is plain supervised learning of real vs. fake);
* a generator trained against a *frozen* discriminator lowers its loss;
* the conditional VAE's negative ELBO and CycleGAN's generator objective fall.
"""

from __future__ import annotations

import pytest
import torch

from lightning_gen.models import (
    CVAE,
    DRAGAN,
    GAN,
    SNGAN,
    WGANGP,
    CycleGAN,
    InstanceNoiseDCGAN,
    TextbookGAN,
)

MNIST, CIFAR = (1, 28, 28), (3, 32, 32)
GANS = {
    "gan": lambda: GAN(MNIST, g_hidden=(32,), d_hidden=(32,), lr_g=0.05, lr_d=0.05),
    "cgan": lambda: GAN(MNIST, g_hidden=(32,), d_hidden=(32,), num_classes=10, lr_g=0.05,
                        lr_d=0.05),
    "textbook_gan": lambda: TextbookGAN(MNIST, d_filters=(8, 8, 8, 8), g_filters=(8, 8, 8, 1)),
    "wgan_gp": lambda: WGANGP(CIFAR, g_width=8, d_width=8),
    "dragan": lambda: DRAGAN(CIFAR, g_width=8, d_width=8, lr_d=1e-3, lr_g=1e-3),
    "instance_noise": lambda: InstanceNoiseDCGAN(CIFAR, g_width=8, d_width=8),
    "sngan": lambda: SNGAN(CIFAR, g_channels=8, d_channels=8),
}
STEPS = 30


def _fit(loss_fn, optimizer) -> list[float]:
    losses = []
    for _ in range(STEPS):
        loss = loss_fn()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def _falls(losses: list[float]) -> bool:
    # Mean of the last five below the mean of the first five (dropout and noise make single
    # steps noisy).
    return sum(losses[-5:]) / 5 < sum(losses[:5]) / 5


def _setup(name):
    torch.manual_seed(0)
    model = GANS[name]()
    shape = tuple(model.hparams.image_shape)
    real = torch.rand(16, *shape) * 2 - 1
    labels = torch.arange(16) % 10 if model.hparams.get("num_classes") else None
    z = model.sample_noise(16)
    opt_g, opt_d = model.configure_optimizers()
    return model, real, labels, z, opt_g, opt_d


@pytest.mark.parametrize("name", sorted(GANS))
def test_discriminator_loss_falls_against_a_frozen_generator(name):
    model, real, labels, z, _, opt_d = _setup(name)
    with torch.no_grad():
        fake = model.generate(z, labels)
    losses = _fit(lambda: model.discriminator_loss(real, fake, labels)["loss"], opt_d)
    assert _falls(losses), losses


@pytest.mark.parametrize("name", sorted(GANS))
def test_generator_loss_falls_against_a_frozen_discriminator(name):
    model, _, labels, z, opt_g, _ = _setup(name)
    # Frozen: no gradient and a fixed function (no dropout draws; batch norm's statistics).
    model.discriminator.requires_grad_(False).eval()
    losses = _fit(lambda: model.generator_loss(model.generate(z, labels), labels)["loss"], opt_g)
    assert _falls(losses), losses


def test_cvae_negative_elbo_falls():
    torch.manual_seed(0)
    model = CVAE(MNIST, num_classes=10, width=8)
    x, y = torch.rand(16, *MNIST) * 2 - 1, torch.arange(16) % 10
    opt = model.configure_optimizers()

    def loss():
        out = model(x, y)
        return (out["kl"] - out["log_px"]).mean()

    assert _falls(_fit(loss, opt))


def test_cyclegan_generator_objective_falls_against_frozen_discriminators():
    torch.manual_seed(0)
    model = CycleGAN((1, 32, 32), g_width=8, n_res_blocks=1, d_width=8)
    a = torch.rand(4, 1, 32, 32) * 2 - 1
    b = -a.flip(0)
    opt_g, _ = model.configure_optimizers()
    model.discriminator.requires_grad_(False)
    assert _falls(_fit(lambda: model.cycle_terms(a, b)["loss"], opt_g))
