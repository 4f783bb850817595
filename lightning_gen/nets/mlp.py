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


def uniform_init_(module: nn.Module, irange: float) -> None:
    """Every linear weight ``U(-irange, irange)``, every bias 0: pylearn2's ``irange``
    initialisation, which the original GAN's code uses (generator .05, discriminator .005).
    PyTorch's default (``U(+-1/sqrt(fan_in))``: +-.036 for the discriminator's 784 inputs) with
    the paper's SGD at learning rate 0.1 made the discriminator's weights blow up within two
    epochs of MNIST."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.uniform_(m.weight, -irange, irange)
            nn.init.zeros_(m.bias)


class MLPGenerator(nn.Module):
    """``[z, y]`` -> ReLU hidden layers -> ``tanh`` image ``(B, C, H, W)``; weights
    ``U(-.05, .05)`` as the paper's code.

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
        uniform_init_(self, 0.05)

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        h = z if y is None else torch.cat([z, y], dim=1)
        return self.net(h).view(-1, *self.image_shape)


class MLPDiscriminator(nn.Module):
    """``[x, y]`` -> maxout layers with dropout -> one logit per image; as the paper's code, it
    sees pixels on [0, 1] (``(x + 1) / 2`` of the suite's [-1, 1] images: the background is 0,
    not -1 in every input) and starts from weights ``U(-.005, .005)``.

    Args:
        image_shape: ``(C, H, W)`` of the input.
        hidden: Widths of the maxout layers (the paper's MNIST model: 240, 240).
        pieces: Linear pieces per maxout unit (5).
        dropout: Dropout probability before the later layers (0.5).
        cond_features: Size of the label vector ``y`` concatenated to the image (0: none).
        input_dropout: Dropout probability of the input (0.2: the code's include probability
            0.8).
    """

    def __init__(self, image_shape: tuple[int, int, int], hidden: tuple[int, ...] = (240, 240),
                 pieces: int = 5, dropout: float = 0.5, cond_features: int = 0,
                 input_dropout: float = 0.2) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = math.prod(image_shape) + cond_features
        for i, h in enumerate(hidden):
            layers += [nn.Dropout(input_dropout if i == 0 else dropout), Maxout(width, h, pieces)]
            width = h
        layers += [nn.Dropout(dropout if hidden else input_dropout), nn.Linear(width, 1)]
        self.net = nn.Sequential(*layers)
        uniform_init_(self, 0.005)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        pixels = (x.flatten(1) + 1) / 2  # [0, 1], the scale of the paper's data
        h = pixels if y is None else torch.cat([pixels, y], dim=1)
        return self.net(h)  # (B, 1) logits
