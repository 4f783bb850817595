"""WGAN-GP (Gulrajani et al. 2017): a Wasserstein critic with a gradient penalty."""

from __future__ import annotations

from typing import Any, Literal

import torch

from lightning_gen.losses import (
    gradient_penalty,
    interpolate,
    wasserstein_critic_loss,
    wasserstein_generator_loss,
)
from lightning_gen.models.gan_base import GANBase
from lightning_gen.nets.conv import ConvDecoder, ConvEncoder
from lightning_gen.nets.resnet import ResNetDiscriminator, ResNetGenerator


class WGANGP(GANBase):
    """Improved Wasserstein GAN: critic ``D`` trained on ``E[D(G(z))] - E[D(x)]`` plus
    ``lambda * E[(||grad D(x_hat)||_2 - 1)^2]`` at random points ``x_hat`` between real and fake
    samples; ``n_critic`` critic steps per generator step (Algorithm 1).

    The critic has no batch norm (the penalty is per sample); the paper recommends layer norm.

    Args:
        image_shape: ``(C, H, W)`` (linked from the DataModule by the CLI).
        latent_dim: Dimension of ``z`` (128 in the paper's CIFAR-10 models).
        architecture: ``"dcgan"`` (DCGAN-like conv stacks) or ``"resnet"`` (the paper's CIFAR-10
            ResNet, 32x32 only: G and critic blocks of ``g_width`` / ``d_width`` channels,
            128 each in the paper, no normalisation in the critic).
        g_width: Channels of G's last hidden layer, doubled towards ``z`` (ResNet: per block).
        d_width: Channels of the critic's first layer, doubled at each halving (ResNet: per block).
        critic_norm: ``"layer"`` (the paper's advice) or ``"none"`` (DCGAN-like critic only).
        gp_weight: ``lambda`` (10 in the paper).
        n_critic: Critic steps per generator step (5 in the paper).
        lr_g, lr_d, betas: Adam settings (paper: 1e-4, (0, 0.9)).
        **kwargs: further options of :class:`~lightning_gen.models.gan_base.GANBase`.
    """

    twice_differentiated = ("discriminator",)  # the gradient penalty

    def __init__(
        self,
        image_shape: tuple[int, int, int] = (3, 32, 32),
        latent_dim: int = 128,
        architecture: Literal["dcgan", "resnet"] = "dcgan",
        g_width: int = 64,
        d_width: int = 64,
        critic_norm: Literal["layer", "none"] = "layer",
        gp_weight: float = 10.0,
        n_critic: int = 5,
        lr_g: float = 1e-4,
        lr_d: float = 1e-4,
        betas: tuple[float, float] = (0.0, 0.9),
        **kwargs: Any,
    ) -> None:
        super().__init__(image_shape=image_shape, latent_dim=latent_dim, n_critic=n_critic,
                         lr_g=lr_g, lr_d=lr_d, betas=betas, **kwargs)
        if gp_weight < 0:
            raise ValueError(f"gp_weight must be >= 0, got {gp_weight}")
        if architecture == "resnet":
            self.generator = ResNetGenerator(latent_dim, image_shape, channels=g_width)
            self.discriminator = ResNetDiscriminator(image_shape, d_width, spectral_norm=False)
        else:
            self.generator = ConvDecoder(image_shape, latent_dim, width=g_width, output="tanh")
            self.discriminator = ConvEncoder(image_shape, 1, width=d_width, norm=critic_norm)
        self.init_ema()

    def penalty(self, real: torch.Tensor, fake: torch.Tensor, labels=None) -> torch.Tensor:
        """``E[(||grad_x D(x_hat)||_2 - 1)^2]`` at ``x_hat`` uniformly between real and fake."""
        alpha = torch.rand(real.shape[0], device=real.device, dtype=real.dtype)
        x_hat = interpolate(real, fake.detach(), alpha).requires_grad_(True)
        grads = self.input_gradients(self.discriminate(x_hat, labels), x_hat)
        return gradient_penalty(grads)

    def discriminator_loss(self, real, fake, labels):
        wasserstein = wasserstein_critic_loss(self.discriminate(real, labels),
                                              self.discriminate(fake, labels))
        gp = self.penalty(real, fake, labels)
        return {"loss": wasserstein + self.hparams.gp_weight * gp,
                "wasserstein_estimate": -wasserstein, "gradient_penalty": gp}

    def generator_loss(self, fake, labels):
        return {"loss": wasserstein_generator_loss(self.discriminate(fake, labels))}

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.generator(z)
