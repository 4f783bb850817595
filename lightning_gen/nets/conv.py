"""DCGAN-style convolutional stacks (Radford et al. 2016) that adapt to the image shape.

A square image of side ``S`` is halved by stride-2 convolutions until the side is at most 7 or
odd (64 -> 4, 32 -> 4, 28 -> 7); one more convolution with a kernel of that base size maps the
feature map to a vector. The decoder mirrors it. These stacks are the DCGAN discriminator and
generator, and the encoder and decoder of the autoencoders.
"""

from __future__ import annotations

import torch
from torch import nn


def base_size(image_size: int) -> tuple[int, int]:
    """Return ``(base, n_halvings)`` with ``image_size == base * 2**n_halvings``."""
    base, n = image_size, 0
    while base % 2 == 0 and base > 7:
        base //= 2
        n += 1
    if n == 0:
        raise ValueError(
            f"image side {image_size} cannot be halved by the conv stack; use a side such as "
            "28, 32 or 64"
        )
    return base, n


def dcgan_init_(module: nn.Module) -> None:
    """DCGAN initialisation: conv weights ~ N(0, 0.02), batch-norm scales ~ N(1, 0.02)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


class ConvEncoder(nn.Module):
    """Image ``(B, C, S, S)`` -> vector ``(B, out_features)``; the DCGAN discriminator.

    Args:
        image_shape: ``(C, H, W)`` of the input, square.
        out_features: Size of the output vector (1 for a discriminator).
        width: Channels of the first convolution; doubled at each halving.
        norm: Normalisation after every convolution but the first: batch norm (DCGAN), layer
            norm of the feature map (for critics with gradient penalties) or none.
        spectral_norm: Wrap every conv in spectral normalisation (Miyato et al. 2018).
    """

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        out_features: int,
        width: int = 64,
        norm: str = "batch",
        spectral_norm: bool = False,
    ) -> None:
        super().__init__()
        channels, height, side = image_shape
        if height != side:
            raise ValueError(f"square images expected, got {height}x{side}")
        base, n = base_size(side)
        sn = nn.utils.parametrizations.spectral_norm if spectral_norm else (lambda m: m)
        layers: list[nn.Module] = []
        c_in, c_out, size = channels, width, side
        for i in range(n):
            layers.append(sn(nn.Conv2d(c_in, c_out, 4, 2, 1, bias=norm == "none" or i == 0)))
            size //= 2
            if i > 0 and norm == "batch":
                layers.append(nn.BatchNorm2d(c_out))
            elif i > 0 and norm == "layer":
                layers.append(nn.GroupNorm(1, c_out))  # layer norm over (C, H, W)
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            c_in, c_out = c_out, c_out * 2
        self.features = nn.Sequential(*layers)
        self.head = sn(nn.Conv2d(c_in, out_features, base, 1, 0))
        self.feature_channels = c_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x)).flatten(1)  # (B, out_features)


class ConvDecoder(nn.Module):
    """Vector ``(B, in_features)`` -> image ``(B, C, S, S)``; the DCGAN generator.

    Args:
        image_shape: ``(C, H, W)`` of the output, square.
        in_features: Size of the input vector (the latent dimension).
        width: Channels of the last hidden layer; doubled towards the input.
        output: ``"tanh"`` for images in [-1, 1], ``"none"`` for logits or means.
    """

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        in_features: int,
        width: int = 64,
        output: str = "tanh",
    ) -> None:
        super().__init__()
        channels, height, side = image_shape
        if height != side:
            raise ValueError(f"square images expected, got {height}x{side}")
        base, n = base_size(side)
        c = width * 2 ** (n - 1)
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(in_features, c, base, 1, 0, bias=False),  # (B, c, base, base)
            nn.BatchNorm2d(c),
            nn.ReLU(inplace=True),
        ]
        for _ in range(n - 1):
            layers += [
                nn.ConvTranspose2d(c, c // 2, 4, 2, 1, bias=False),
                nn.BatchNorm2d(c // 2),
                nn.ReLU(inplace=True),
            ]
            c //= 2
        layers.append(nn.ConvTranspose2d(c, channels, 4, 2, 1))  # (B, C, S, S)
        if output == "tanh":
            layers.append(nn.Tanh())
        elif output != "none":
            raise ValueError(f"output must be 'tanh' or 'none', got {output!r}")
        self.net = nn.Sequential(*layers)
        self.in_features = in_features

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z.view(z.shape[0], self.in_features, 1, 1))


def num_parameters(module: nn.Module, trainable: bool = True) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable)


__all__ = ["ConvDecoder", "ConvEncoder", "base_size", "dcgan_init_", "num_parameters"]
