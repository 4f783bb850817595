"""DCGAN (Radford, Metz & Chintala 2016) on the shared GAN base."""

from __future__ import annotations

from typing import Any, Literal

import torch

from lightning_gen.losses import (
    gan_discriminator_loss,
    gan_generator_loss_minimax,
    gan_generator_loss_nonsaturating,
)
from lightning_gen.models.gan_base import GANBase
from lightning_gen.nets.conv import ConvDecoder, ConvEncoder, dcgan_init_


class DCGAN(GANBase):
    """Deep convolutional GAN: strided-conv D, transposed-conv G with batch norm, Adam(2e-4, 0.5).

    Args:
        image_shape: ``(C, H, W)``; 28, 32 or 64 pixels (any side ``b * 2**n`` with ``b <= 7``).
        latent_dim: Dimension of ``z`` (100 in the paper).
        g_width: Channels of G's last hidden layer (``ngf``), doubled towards ``z``.
        d_width: Channels of D's first layer (``ndf``), doubled at each halving.
        generator_loss_type: ``"non_saturating"`` (``-log D(G(z))``, the paper's practice) or
            ``"minimax"`` (``log(1 - D(G(z)))``, Goodfellow's Eq. 1).
        **kwargs: optimisation options of :class:`~lightning_gen.models.gan_base.GANBase`
            (``n_critic``, ``lr_g``, ``lr_d``, ``betas``, ``ema_decay``, ...).
    """

    def __init__(
        self,
        image_shape: tuple[int, int, int] = (1, 28, 28),
        latent_dim: int = 100,
        g_width: int = 64,
        d_width: int = 64,
        generator_loss_type: Literal["non_saturating", "minimax"] = "non_saturating",
        **kwargs: Any,
    ) -> None:
        # GANBase's defaults are the paper's: Adam(2e-4, betas (0.5, 0.999)), k = 1.
        super().__init__(image_shape=image_shape, latent_dim=latent_dim, **kwargs)
        self.generator = ConvDecoder(image_shape, latent_dim, width=g_width, output="tanh")
        self.discriminator = ConvEncoder(image_shape, 1, width=d_width, norm="batch")
        dcgan_init_(self)
        self.init_ema()

    def discriminator_loss(self, real, fake, labels):
        return {"loss": gan_discriminator_loss(self.discriminate(real), self.discriminate(fake))}

    def generator_loss(self, fake, labels):
        logits = self.discriminate(fake)
        if self.hparams.generator_loss_type == "minimax":
            return {"loss": gan_generator_loss_minimax(logits)}
        return {"loss": gan_generator_loss_nonsaturating(logits)}

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.generator(z)
