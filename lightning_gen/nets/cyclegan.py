"""CycleGAN's networks (Zhu et al. 2017, Appendix 7.2): a ResNet generator after Johnson et al.
(2016) with instance norm and reflection padding, and a 70x70 PatchGAN discriminator."""

from __future__ import annotations

import torch
from torch import nn


class ResidualBlock(nn.Module):
    """``x + [pad-conv3-IN-ReLU-pad-conv3-IN](x)`` (the paper's ``R256``)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), nn.InstanceNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), nn.InstanceNorm2d(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x)


class ResNetTranslator(nn.Module):
    """``c7s1-64, d128, d256, R256 x n_blocks, u128, u64, c7s1-C`` with ``tanh`` out.

    Args:
        channels: Image channels (in and out).
        width: Channels of the first layer (64).
        n_blocks: Residual blocks (6 for 128x128 images, 9 for 256x256).
        n_down: Stride-2 down- (and up-) samplings (2); the side must divide by ``2**n_down``.
    """

    def __init__(self, channels: int, width: int = 64, n_blocks: int = 9, n_down: int = 2) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(channels, width, 7),
                                   nn.InstanceNorm2d(width), nn.ReLU(inplace=True)]
        c = width
        for _ in range(n_down):
            layers += [nn.Conv2d(c, 2 * c, 3, 2, 1), nn.InstanceNorm2d(2 * c), nn.ReLU(inplace=True)]
            c *= 2
        layers += [ResidualBlock(c) for _ in range(n_blocks)]
        for _ in range(n_down):
            layers += [nn.ConvTranspose2d(c, c // 2, 3, 2, 1, output_padding=1),
                       nn.InstanceNorm2d(c // 2), nn.ReLU(inplace=True)]
            c //= 2
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(c, channels, 7), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        self.n_down = n_down

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % 2**self.n_down or x.shape[-2] % 2**self.n_down:
            raise ValueError(f"image sides must divide by {2**self.n_down}, got {tuple(x.shape[-2:])}")
        return self.net(x)


class PatchDiscriminator(nn.Module):
    """70x70 PatchGAN: ``C64-C128-C256-C512`` (4x4 convs, stride 2 but the last, LeakyReLU 0.2,
    instance norm but on the first), then a 4x4 conv to one score per patch ``(B, 1, h, w)``.

    Args:
        channels: Image channels.
        width: Channels of the first layer (64).
        n_layers: Stride-2 layers (3 for 70x70 patches).
        norm: Normalisation layer class (instance norm; pix2pix uses batch norm).
    """

    def __init__(self, channels: int, width: int = 64, n_layers: int = 3,
                 norm: type[nn.Module] = nn.InstanceNorm2d) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(channels, width, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        c = width
        for i in range(1, n_layers + 1):
            stride = 2 if i < n_layers else 1
            c_out = width * min(2**i, 8)
            layers += [nn.Conv2d(c, c_out, 4, stride, 1), norm(c_out),
                       nn.LeakyReLU(0.2, True)]
            c = c_out
        layers.append(nn.Conv2d(c, 1, 4, 1, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
