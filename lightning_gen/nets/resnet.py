"""ResNet generator and discriminator of SNGAN for 32x32 images (Miyato et al. 2018, Table 4;
the same blocks as WGAN-GP's CIFAR-10 ResNet, Gulrajani et al. 2017)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.parametrizations import spectral_norm


def _sn(module: nn.Module, enabled: bool) -> nn.Module:
    return spectral_norm(module) if enabled else module


class GeneratorBlock(nn.Module):
    """BN-ReLU-up2-conv3-BN-ReLU-conv3, plus shortcut up2-conv1."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bn1, self.bn2 = nn.BatchNorm2d(channels), nn.BatchNorm2d(channels)
        self.conv1 = nn.Conv2d(channels, channels, 3, 1, 1)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1)
        self.shortcut = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.interpolate(F.relu(self.bn1(x)), scale_factor=2)
        h = self.conv2(F.relu(self.bn2(self.conv1(h))))
        return h + self.shortcut(F.interpolate(x, scale_factor=2))


class ResNetGenerator(nn.Module):
    """``z`` -> dense ``4x4xch`` -> three up-blocks (8, 16, 32) -> BN-ReLU-conv3-tanh.

    Args:
        latent_dim: Size of ``z`` (128).
        image_shape: ``(C, 32, 32)``.
        channels: Channels of every block (256).
    """

    def __init__(self, latent_dim: int, image_shape: tuple[int, int, int],
                 channels: int = 256) -> None:
        super().__init__()
        if tuple(image_shape[1:]) != (32, 32):
            raise ValueError(f"the SNGAN ResNet makes 32x32 images, not {tuple(image_shape)}")
        self.dense = nn.Linear(latent_dim, 4 * 4 * channels)
        self.blocks = nn.Sequential(*[GeneratorBlock(channels) for _ in range(3)])
        self.out = nn.Sequential(nn.BatchNorm2d(channels), nn.ReLU(),
                                 nn.Conv2d(channels, image_shape[0], 3, 1, 1), nn.Tanh())
        self.channels = channels

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.dense(z).view(-1, self.channels, 4, 4)
        return self.out(self.blocks(h))


class DiscriminatorBlock(nn.Module):
    """(ReLU)-conv3-ReLU-conv3-(avgpool2), plus shortcut conv1-(avgpool2); the first block of
    the network has no leading ReLU and pools before its shortcut conv ("optimized block")."""

    def __init__(self, c_in: int, c_out: int, down: bool, first: bool, sn: bool) -> None:
        super().__init__()
        self.conv1 = _sn(nn.Conv2d(c_in, c_out, 3, 1, 1), sn)
        self.conv2 = _sn(nn.Conv2d(c_out, c_out, 3, 1, 1), sn)
        self.shortcut = _sn(nn.Conv2d(c_in, c_out, 1), sn) if down or c_in != c_out else None
        self.down, self.first = down, first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x if self.first else F.relu(x)
        h = self.conv2(F.relu(self.conv1(h)))
        s = x
        if self.down:
            h = F.avg_pool2d(h, 2)
        if self.first:
            s = self.shortcut(F.avg_pool2d(s, 2))
        elif self.shortcut is not None:
            s = self.shortcut(s)
            s = F.avg_pool2d(s, 2) if self.down else s
        return h + s


class ResNetDiscriminator(nn.Module):
    """Four blocks (down, down, -, -) of ``channels``, ReLU, global sum pooling, dense logit;
    spectral normalisation on every layer when ``spectral_norm`` (SNGAN).

    Args:
        image_shape: ``(C, H, W)``.
        channels: Channels of every block (128).
        spectral_norm: Spectrally normalise every weight (Miyato et al. 2018).
    """

    def __init__(self, image_shape: tuple[int, int, int], channels: int = 128,
                 spectral_norm: bool = True) -> None:
        super().__init__()
        self.blocks = nn.Sequential(
            DiscriminatorBlock(image_shape[0], channels, down=True, first=True, sn=spectral_norm),
            DiscriminatorBlock(channels, channels, down=True, first=False, sn=spectral_norm),
            DiscriminatorBlock(channels, channels, down=False, first=False, sn=spectral_norm),
            DiscriminatorBlock(channels, channels, down=False, first=False, sn=spectral_norm),
        )
        self.head = _sn(nn.Linear(channels, 1), spectral_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.blocks(x)).sum(dim=(2, 3))  # global sum pooling, (B, channels)
        return self.head(h)
