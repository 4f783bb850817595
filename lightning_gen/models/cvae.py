"""Conditional VAE (Sohn, Lee & Yan 2015; Kingma et al. 2014's M2 with observed labels)."""

from __future__ import annotations

from typing import Any, Literal

import torch

from lightning_gen.models.conditional import ConditionalMixin
from lightning_gen.models.vae import VAE
from lightning_gen.nets.conditioning import label_features
from lightning_gen.nets.conv import ConvDecoder, ConvEncoder


class CVAE(ConditionalMixin, VAE):
    """VAE of ``p(x | z, y)`` with posterior ``q(z | x, y)``: the label vector ``y`` (one-hot
    class or attribute vector) enters the encoder as constant extra image channels and the
    decoder concatenated to ``z``. The objective is the conditional ELBO
    ``E_q[log p(x|z,y)] - beta * KL(q(z|x,y) || N(0, I))``; sampling a class means decoding
    prior samples with that class's ``y``.

    Args:
        num_classes: Size of ``y`` (10 classes, or 40 CelebA attributes).
        condition_on: ``"class"`` (integer labels) or ``"attributes"`` (0/1 vectors).
        image_shape: ``(C, H, W)`` (linked from the DataModule by the CLI).
        num_fixed_samples: Size of the fixed prior (and label) batch of the sample grids.
        **kwargs: the options of ``VAE`` (``latent_dim``, ``width``, ``beta``, ``likelihood``,
            ``gaussian_std``, ``lr``, ...).
    """

    def __init__(
        self,
        image_shape: tuple[int, int, int] = (1, 28, 28),
        num_classes: int = 10,
        condition_on: Literal["class", "attributes"] = "class",
        num_fixed_samples: int = 64,
        **kwargs: Any,
    ) -> None:
        if num_classes < 1:
            raise ValueError(f"the conditional VAE needs num_classes >= 1, got {num_classes}")
        super().__init__(image_shape=image_shape, num_fixed_samples=num_fixed_samples, **kwargs)
        self._init_conditioning(num_fixed_samples)

    def build_networks(self) -> tuple[ConvEncoder, ConvDecoder]:
        # y enters the encoder as K constant channels and the decoder concatenated to z.
        hp = self.hparams
        c, h, w = hp.image_shape
        k = hp.num_classes
        return (ConvEncoder((c + k, h, w), 2 * hp.latent_dim, width=hp.width, norm="batch"),
                ConvDecoder(hp.image_shape, hp.latent_dim + k, width=hp.width, output="none"))

    def _y(self, labels: torch.Tensor | None, n: int) -> torch.Tensor:
        labels = self.default_labels(n) if labels is None else labels
        return label_features(labels, self.hparams.num_classes).to(self.device)

    def encoder_input(self, x, labels):
        y = self._y(labels, x.shape[0])[:, :, None, None].expand(-1, -1, *x.shape[2:])
        return torch.cat([x, y], dim=1)  # (B, C + K, H, W)

    def decoder_input(self, z, labels):
        return torch.cat([z, self._y(labels, z.shape[0])], dim=1)  # (B, latent + K)
