"""WGAN-GP: the penalty against its analytic value, and the paper's YAML fits."""

from __future__ import annotations

import torch
from torch import nn

from lightning_gen.losses import gradient_penalty, interpolate, wasserstein_critic_loss
from lightning_gen.models import WGANGP
from tests.zoo_utils import assert_finite_params, fit_yaml


def test_gradient_penalty_of_linear_critic_equals_analytic_value():
    # D(x) = w . vec(x) + b has grad_x D = w everywhere, so the penalty is (||w||_2 - 1)^2
    # whatever the interpolation points.
    torch.manual_seed(0)
    model = WGANGP(image_shape=(1, 8, 8), latent_dim=4, g_width=4, d_width=4)
    linear = nn.Linear(64, 1)
    model.discriminator = nn.Sequential(nn.Flatten(), linear)
    real, fake = torch.randn(16, 1, 8, 8), torch.randn(16, 1, 8, 8)
    expected = (linear.weight.norm() - 1).pow(2)
    assert torch.allclose(model.penalty(real, fake), expected, rtol=1e-5, atol=1e-7)


def test_gradient_penalty_backpropagates_into_the_critic():
    # create_graph=True: the penalty is a function of the critic's weights, with gradient
    # d/dw (||w|| - 1)^2 = 2 (||w|| - 1) w / ||w|| for a linear critic.
    model = WGANGP(image_shape=(1, 8, 8), latent_dim=4, g_width=4, d_width=4)
    linear = nn.Linear(64, 1)
    model.discriminator = nn.Sequential(nn.Flatten(), linear)
    model.penalty(torch.randn(4, 1, 8, 8), torch.randn(4, 1, 8, 8)).backward()
    w = linear.weight.detach()
    expected = 2 * (w.norm() - 1) * w / w.norm()
    assert torch.allclose(linear.weight.grad, expected, rtol=1e-5, atol=1e-7)


def test_gradient_penalty_at_known_points():
    # Per-sample norms 3 and 1 -> mean of (3-1)^2 and (1-1)^2 = 2.
    grads = torch.zeros(2, 1, 2, 2)
    grads[0, 0, 0, 0], grads[1, 0, 1, 1] = 3.0, 1.0
    assert gradient_penalty(grads).item() == 2.0


def test_interpolation_lies_between_real_and_fake():
    real, fake = torch.ones(3, 1, 2, 2), torch.zeros(3, 1, 2, 2)
    x_hat = interpolate(real, fake, torch.tensor([0.0, 0.25, 1.0]))
    assert x_hat[:, 0, 0, 0].tolist() == [0.0, 0.25, 1.0]


def test_critic_loss_is_negative_wasserstein_estimate():
    assert wasserstein_critic_loss(torch.tensor([2.0, 4.0]), torch.tensor([1.0])).item() == -2.0


def test_wgan_gp_yaml_fits_cifar10(cifar10_dir):
    # 12 optimizer steps = 2 generator iterations of 5 critic steps + 1 generator step.
    cli = fit_yaml("wgan_gp_cifar10.yaml", cifar10_dir, "--model.init_args.g_width", "8",
                   "--model.init_args.d_width", "8", steps=12)
    model = cli.model
    assert (model.d_steps, model.g_steps) == (10, 2)
    assert model.hparams.n_critic == 5 and model.hparams.gp_weight == 10.0
    assert tuple(model.hparams.betas) == (0.0, 0.9)
    assert_finite_params(model)
