"""DRAGAN (Kodali et al. 2017, "On Convergence and Stability of GANs")."""

from __future__ import annotations

from typing import Any, Literal

import torch

from lightning_gen.losses import dragan_perturb, gan_discriminator_loss, gradient_penalty
from lightning_gen.models.gan import _BinaryGANLosses
from lightning_gen.models.gan_base import GANBase
from lightning_gen.nets.conv import ConvDecoder, ConvEncoder


class DRAGAN(_BinaryGANLosses, GANBase):
    """The GAN game (Goodfellow et al. 2014, Eq. 1) with a gradient penalty in a neighbourhood of the *real* data:
    ``L_D = L_GAN + lambda * E[(||grad_x D(x + delta)||_2 - k)^2]``, which keeps the
    discriminator from forming sharp gradients around real points (mode collapse).

    Args:
        image_shape: ``(C, H, W)`` (linked from the DataModule by the CLI).
        latent_dim: Size of ``z``.
        g_width, d_width: Widths of the DCGAN-style generator and discriminator.
        d_norm: Discriminator normalisation; ``"layer"`` or ``"none"`` (the penalty is per
            sample, so no batch norm).
        gp_weight: ``lambda`` (10).
        target_norm: ``k`` (1).
        perturb_scale: ``c`` of the perturbation ``c * std(x) * U[0, 1)`` (0.5).
        generator_loss_type: ``"non_saturating"`` or ``"minimax"``.
        lr_g, lr_d, betas: Adam (the authors: 1e-4, (0.5, 0.9)).
        **kwargs: further options of ``GANBase`` (``n_critic``, ``ema_decay``, ...).
    """

    twice_differentiated = ("discriminator",)  # the gradient penalty

    def __init__(
        self,
        image_shape: tuple[int, int, int] = (3, 32, 32),
        latent_dim: int = 100,
        g_width: int = 64,
        d_width: int = 64,
        d_norm: Literal["layer", "none"] = "layer",
        gp_weight: float = 10.0,
        target_norm: float = 1.0,
        perturb_scale: float = 0.5,
        generator_loss_type: Literal["non_saturating", "minimax"] = "non_saturating",
        lr_g: float = 1e-4,
        lr_d: float = 1e-4,
        betas: tuple[float, float] = (0.5, 0.9),
        **kwargs: Any,
    ) -> None:
        super().__init__(image_shape=image_shape, latent_dim=latent_dim, lr_g=lr_g, lr_d=lr_d,
                         betas=betas, **kwargs)
        self.generator = ConvDecoder(image_shape, latent_dim, width=g_width, output="tanh")
        self.discriminator = ConvEncoder(image_shape, 1, width=d_width, norm=d_norm)

    def penalty(self, real: torch.Tensor, labels=None) -> torch.Tensor:
        """``E[(||grad_x D(x_p)||_2 - k)^2]`` at perturbed real points ``x_p``."""
        x_p = dragan_perturb(real, self.hparams.perturb_scale).detach().requires_grad_(True)
        grads = self.input_gradients(self.discriminate(x_p, labels), x_p)
        return gradient_penalty(grads, self.hparams.target_norm)

    def discriminator_loss(self, real, fake, labels):
        real_logits, fake_logits = self.discriminate(real, labels), self.discriminate(fake, labels)
        gan = gan_discriminator_loss(real_logits, fake_logits)
        gp = self.penalty(real, labels)
        return {"loss": gan + self.hparams.gp_weight * gp, "gan_loss": gan,
                "gradient_penalty": gp}
