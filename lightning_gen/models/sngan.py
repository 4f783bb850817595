"""SNGAN (Miyato et al. 2018, "Spectral Normalization for Generative Adversarial Networks")."""

from __future__ import annotations

from typing import Literal

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
        n_critic, lr_g, lr_d, betas, ...: see ``GANBase``.
    """

    def __init__(
        self,
        image_shape: tuple[int, int, int] = (3, 32, 32),
        latent_dim: int = 128,
        g_channels: int = 256,
        d_channels: int = 128,
        spectral_norm: bool = True,
        n_critic: int = 5,
        lr_g: float = 2e-4,
        lr_d: float = 2e-4,
        betas: tuple[float, float] = (0.0, 0.9),
        optimizer: Literal["adam", "rmsprop"] = "adam",
        grad_clip: float = 0.0,
        num_fixed_samples: int = 64,
        sample_seed: int = 0,
    ) -> None:
        super().__init__(
            image_shape=image_shape, latent_dim=latent_dim, n_critic=n_critic, lr_g=lr_g,
            lr_d=lr_d, betas=betas, optimizer=optimizer, grad_clip=grad_clip,
            num_fixed_samples=num_fixed_samples, sample_seed=sample_seed,
        )
        self.save_hyperparameters()
        self.generator = ResNetGenerator(latent_dim, image_shape, g_channels)
        self.discriminator = ResNetDiscriminator(image_shape, d_channels, spectral_norm)

    def discriminator_loss(self, real, fake, labels):
        return {"loss": hinge_discriminator_loss(self.discriminate(real, labels),
                                                 self.discriminate(fake, labels))}

    def generator_loss(self, fake, labels):
        return {"loss": hinge_generator_loss(self.discriminate(fake, labels))}
