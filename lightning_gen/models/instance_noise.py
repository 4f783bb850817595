"""DCGAN with instance noise (Sønderby et al. 2017; Arjovsky & Bottou 2017): "add noise to
real samples", and to fake ones, before the discriminator sees them."""

from __future__ import annotations

from typing import Any

import torch

from lightning_gen.losses import linear_anneal
from lightning_gen.models.dcgan import DCGAN


class InstanceNoiseDCGAN(DCGAN):
    """DCGAN whose discriminator sees ``x + sigma * eps``, ``eps ~ N(0, I)``, for real and
    generated images alike (in D's and G's steps), with ``sigma`` annealed linearly from
    ``noise_std`` to 0 over ``anneal_steps`` discriminator steps. The noise makes the supports
    of the real and fake distributions overlap, so D cannot separate them perfectly and G's
    gradients do not vanish early in training; annealing it removes the bias it adds later.

    Args:
        noise_std: ``sigma`` at the start (0.1 on the [-1, 1] scale).
        anneal_steps: Discriminator steps over which ``sigma`` decays to 0 (0: constant).
        image_shape: ``(C, H, W)`` (linked from the DataModule by the CLI).
        **kwargs: the options of ``DCGAN`` (``latent_dim``, ``g_width``, ...) and ``GANBase``.
    """

    def __init__(
        self,
        image_shape: tuple[int, int, int] = (3, 32, 32),
        noise_std: float = 0.1,
        anneal_steps: int = 50_000,
        **kwargs: Any,
    ) -> None:
        if noise_std < 0 or anneal_steps < 0:
            raise ValueError("noise_std and anneal_steps must be >= 0")
        super().__init__(image_shape=image_shape, **kwargs)

    @property
    def noise_level(self) -> float:
        return linear_anneal(self.d_steps, self.hparams.noise_std, self.hparams.anneal_steps)

    def discriminate(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        sigma = self.noise_level if self.training else 0.0
        if sigma > 0:
            x = x + sigma * torch.randn_like(x)
        return super().discriminate(x, labels)

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if self.log_every_term_now():  # logging steps, and the fit's last step
            # A CPU tensor: no host-to-device copy per step.
            self.log("train/instance_noise_std", torch.tensor(self.noise_level), on_step=True,
                     on_epoch=False)
        super().on_train_batch_end(outputs, batch, batch_idx)  # after it: the base writes logs
