"""Fully connected generator and maxout discriminator of the original GAN (Goodfellow et al.
2014) and of the conditional GAN (Mirza & Osindero 2014), which feed a label vector in beside
``z`` and beside the image."""

from __future__ import annotations

import math

import torch
from torch import nn


class Maxout(nn.Module):
    """``max_k (W_k x + b_k)`` over ``pieces`` linear pieces (Goodfellow et al. 2013)."""

    def __init__(self, in_features: int, out_features: int, pieces: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, out_features * pieces)
        self.out_features, self.pieces = out_features, pieces

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x).view(-1, self.out_features, self.pieces).max(dim=2).values


class MLPGenerator(nn.Module):
    """``[z, y]`` -> ReLU hidden layers -> ``tanh`` image ``(B, C, H, W)``.

    Args:
        latent_dim: Size of ``z``.
        image_shape: ``(C, H, W)`` of the output.
        hidden: Widths of the hidden layers (the paper's MNIST model: 1200, 1200).
        cond_features: Size of the label vector ``y`` concatenated to ``z`` (0: none).
    """

    def __init__(self, latent_dim: int, image_shape: tuple[int, int, int],
                 hidden: tuple[int, ...] = (1200, 1200), cond_features: int = 0) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = latent_dim + cond_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(inplace=True)]
            width = h
        layers += [nn.Linear(width, math.prod(image_shape)), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        self.image_shape = tuple(image_shape)

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        h = z if y is None else torch.cat([z, y], dim=1)
        return self.net(h).view(-1, *self.image_shape)


class MLPDiscriminator(nn.Module):
    """``[x, y]`` -> maxout layers with dropout -> one logit per image.

    Args:
        image_shape: ``(C, H, W)`` of the input.
        hidden: Widths of the maxout layers (the paper's MNIST model: 240, 240).
        pieces: Linear pieces per maxout unit (5).
        dropout: Dropout probability before every maxout layer (0.5).
        cond_features: Size of the label vector ``y`` concatenated to the image (0: none).
    """

    def __init__(self, image_shape: tuple[int, int, int], hidden: tuple[int, ...] = (240, 240),
                 pieces: int = 5, dropout: float = 0.5, cond_features: int = 0) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = math.prod(image_shape) + cond_features
        for h in hidden:
            layers += [nn.Dropout(dropout), Maxout(width, h, pieces)]
            width = h
        layers += [nn.Dropout(dropout), nn.Linear(width, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        h = x.flatten(1) if y is None else torch.cat([x.flatten(1), y], dim=1)
        return self.net(h)  # (B, 1) logits
