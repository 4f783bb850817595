"""SNGAN (Miyato et al. 2018, "Spectral Normalization for Generative Adversarial Networks")."""

from __future__ import annotations

from typing import Any

from lightning_gen.losses import hinge_discriminator_loss, hinge_generator_loss
from lightning_gen.models.gan_base import GANBase
from lightning_gen.nets.resnet import ResNetDiscriminator, ResNetGenerator


class SNGAN(GANBase):
    """Spectrally normalised ResNet discriminator with the hinge loss, ResNet generator with
    batch norm (the paper's CIFAR-10 setting, Table 4 and Sec. 4: Adam lr 2e-4, betas (0, 0.9),
    ``n_dis = 5``, batch 64).

    Every discriminator weight ``W`` is used as ``W / sigma(W)``, ``sigma`` the largest singular
    value estimated by one power iteration per training step (``torch``'s spectral_norm), so
    every layer is 1-Lipschitz.

    Args:
        image_shape: ``(C, 32, 32)``.
        latent_dim: Size of ``z`` (128).
        g_channels: Generator block channels (256).
        d_channels: Discriminator block channels (128).
        spectral_norm: Spectral normalisation in D (switch off for an ablation).
        n_critic: ``n_dis`` (5).
        betas: Adam's betas ((0, 0.9)); lr 2e-4 is GANBase's default.
        **kwargs: further options of ``GANBase`` (``lr_g``, ``lr_d``, ``ema_decay``, ...).
    """

    def __init__(
        self,
        image_shape: tuple[int, int, int] = (3, 32, 32),
        latent_dim: int = 128,
        g_channels: int = 256,
        d_channels: int = 128,
        spectral_norm: bool = True,
        n_critic: int = 5,
        betas: tuple[float, float] = (0.0, 0.9),
        **kwargs: Any,
    ) -> None:
        super().__init__(image_shape=image_shape, latent_dim=latent_dim, n_critic=n_critic,
                         betas=betas, **kwargs)
        self.generator = ResNetGenerator(latent_dim, image_shape, g_channels)
        self.discriminator = ResNetDiscriminator(image_shape, d_channels, spectral_norm)

    def discriminator_loss(self, real, fake, labels):
        return {"loss": hinge_discriminator_loss(self.discriminate(real, labels),
                                                 self.discriminate(fake, labels))}

    def generator_loss(self, fake, labels):
        return {"loss": hinge_generator_loss(self.discriminate(fake, labels))}
