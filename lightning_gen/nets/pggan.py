"""Progressive GAN networks (Karras et al. 2018, "Progressive Growing of GANs for Improved
Quality, Stability, and Variation", Sec. 2-4 and Table 2).

Both networks hold every resolution's block from the start; ``forward(x, level, alpha)`` runs
only the blocks of resolution ``4 * 2**level`` (``level`` 0 is 4x4). While a new block fades in
(``alpha < 1``) the output is ``(1 - alpha) * old_path + alpha * new_path``, the old path
running at the previous resolution through its own ``toRGB`` / ``fromRGB`` with nearest-neighbour
upsampling (G) or 2x2 average pooling (D) (Fig. 2). Blocks above ``level`` take no part in the
forward pass: their parameters get no gradient (``None``), Adam skips them, and under DDP the
suite's ``find_unused_parameters=True`` (``GANBase.setup``) lets them go unused.

Equalized learning rate (Sec. 4.1): weights are stored ~N(0, 1) and multiplied at runtime by
He's constant ``gain / sqrt(fan_in)``. Pixel norm (Sec. 4.2) follows every conv of G. The
minibatch standard deviation (Sec. 3) feeds D's last block.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def num_levels(size: int) -> int:
    """Levels ``4, 8, ..., size`` of a PGGAN for square images of side ``size``."""
    if size < 4 or size & (size - 1):
        raise ValueError(
            f"PGGAN grows from 4x4 by doubling, so the image side must be a power of two >= 4 "
            f"(8, 16, 32, 64, ...); got {size}. Resize the data, e.g. --data.image_size 32.")
    return int(math.log2(size)) - 1


def channels_at(resolution: int, width: int) -> int:
    """Feature maps at ``resolution``: ``min(width, width * 32 / resolution)``, the paper's
    ``min(8192 / (resolution / 2), 512)`` for ``width = 512`` (512 up to 32x32, 256 at 64x64)."""
    return max(1, min(width, width * 32 // resolution))


class EqualizedLinear(nn.Module):
    """``y = x W^T * c + b`` with ``W ~ N(0, 1)`` and ``c = gain / sqrt(fan_in)`` (Sec. 4.1)."""

    def __init__(self, in_features: int, out_features: int, gain: float = math.sqrt(2)) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features))
        self.scale = gain / math.sqrt(in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.scale, self.bias)


class EqualizedConv2d(nn.Module):
    """Same-padded conv with ``W ~ N(0, 1)`` scaled by ``gain / sqrt(in * k * k)`` at runtime."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int,
                 gain: float = math.sqrt(2)) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size,
                                               kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.scale = gain / math.sqrt(in_channels * kernel_size * kernel_size)
        self.padding = kernel_size // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.scale, self.bias, padding=self.padding)


class PixelNorm(nn.Module):
    """``b = a / sqrt(mean_j a_j^2 + 1e-8)`` over the channels at each pixel (Sec. 4.2)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + 1e-8)


def minibatch_stddev(x: torch.Tensor, group_size: int = 4) -> torch.Tensor:
    """Append one feature map: the standard deviation of each feature and pixel over a group of
    samples, averaged over features and pixels (Sec. 3). As the authors' code: groups of
    ``group_size`` (sample ``i`` is in group ``i mod (B / G)``), biased variance, ``+1e-8``.
    ``G`` is the largest divisor of the batch not above ``group_size``."""
    b, c, h, w = x.shape
    g = min(group_size, b)
    while b % g:
        g -= 1
    y = x.float().reshape(g, b // g, c, h, w)  # (G, M, C, H, W)
    std = (y.var(dim=0, unbiased=False) + 1e-8).sqrt().mean(dim=(1, 2, 3))  # (M,)
    feature = std.repeat(g).view(b, 1, 1, 1).expand(b, 1, h, w).to(x.dtype)
    return torch.cat([x, feature], dim=1)


def _conv_act(in_ch: int, out_ch: int, kernel: int, pixel_norm: bool) -> list[nn.Module]:
    layers = [EqualizedConv2d(in_ch, out_ch, kernel), nn.LeakyReLU(0.2)]
    return layers + [PixelNorm()] if pixel_norm else layers


def _fade(old: torch.Tensor, new: torch.Tensor, alpha: float) -> torch.Tensor:
    return new if alpha >= 1.0 else torch.lerp(old, new, alpha)


class ProgressiveGenerator(nn.Module):
    """G of Table 2: ``z`` (pixel-normalised) -> dense to 4x4 -> conv 3x3, then per doubling
    upsample -> 2 x conv 3x3, every conv followed by leaky ReLU (0.2) and pixel norm; a 1x1
    ``toRGB`` per resolution (linear output).

    Args:
        latent_dim: Dimension of ``z`` (512 in the paper).
        image_shape: ``(C, H, W)``, ``H = W`` a power of two >= 4.
        width: Feature maps at the low resolutions (512 in the paper), see :func:`channels_at`.
    """

    def __init__(self, latent_dim: int, image_shape: tuple[int, int, int], width: int = 512) -> None:
        super().__init__()
        c, h, w = image_shape
        if h != w:
            raise ValueError(f"PGGAN needs square images, got {h}x{w}")
        self.num_levels = num_levels(h)
        res = [4 * 2**i for i in range(self.num_levels)]
        ch = [channels_at(r, width) for r in res]
        self.latent_norm = PixelNorm()
        # The paper's 4x4 conv on a 1x1 input is a dense layer; the authors use gain sqrt(2)/4.
        self.dense = EqualizedLinear(latent_dim, ch[0] * 16, gain=math.sqrt(2) / 4)
        self.initial = nn.Sequential(nn.LeakyReLU(0.2), PixelNorm(), *_conv_act(ch[0], ch[0], 3, True))
        self.blocks = nn.ModuleList([nn.Sequential(
            nn.Upsample(scale_factor=2, mode="nearest"),
            *_conv_act(ch[i - 1], ch[i], 3, True), *_conv_act(ch[i], ch[i], 3, True),
        ) for i in range(1, self.num_levels)])
        self.to_rgb = nn.ModuleList([EqualizedConv2d(k, c, 1, gain=1.0) for k in ch])

    def forward(self, z: torch.Tensor, level: int | None = None, alpha: float = 1.0) -> torch.Tensor:
        level = self.num_levels - 1 if level is None else level
        x = self.dense(self.latent_norm(z)).view(z.shape[0], -1, 4, 4)  # (B, C0, 4, 4)
        x = self.initial(x)
        for i in range(1, level):
            x = self.blocks[i - 1](x)
        if level == 0:
            return self.to_rgb[0](x)
        new = self.to_rgb[level](self.blocks[level - 1](x))
        if alpha >= 1.0:
            return new
        old = F.interpolate(self.to_rgb[level - 1](x), scale_factor=2, mode="nearest")
        return _fade(old, new, alpha)


class ProgressiveDiscriminator(nn.Module):
    """D of Table 2, mirroring G: a 1x1 ``fromRGB`` per resolution, per halving 2 x conv 3x3
    and 2x2 average pooling; at 4x4 minibatch stddev, conv 3x3, conv 4x4 (a dense layer here) and
    a linear output. Leaky ReLU (0.2), no normalisation.

    Args:
        image_shape: ``(C, H, W)``, ``H = W`` a power of two >= 4.
        width: Feature maps at the low resolutions (512 in the paper).
        mbstd_group_size: Group size of the minibatch standard deviation (4, the authors' code).
    """

    def __init__(self, image_shape: tuple[int, int, int], width: int = 512,
                 mbstd_group_size: int = 4) -> None:
        super().__init__()
        c, h, w = image_shape
        if h != w:
            raise ValueError(f"PGGAN needs square images, got {h}x{w}")
        self.num_levels = num_levels(h)
        self.mbstd_group_size = mbstd_group_size
        res = [4 * 2**i for i in range(self.num_levels)]
        ch = [channels_at(r, width) for r in res]
        self.from_rgb = nn.ModuleList([
            nn.Sequential(EqualizedConv2d(c, k, 1), nn.LeakyReLU(0.2)) for k in ch])
        # blocks[i - 1] takes level i's resolution to level i - 1's.
        self.blocks = nn.ModuleList([nn.Sequential(
            *_conv_act(ch[i], ch[i], 3, False), *_conv_act(ch[i], ch[i - 1], 3, False),
            nn.AvgPool2d(2),
        ) for i in range(1, self.num_levels)])
        self.final_conv = nn.Sequential(*_conv_act(ch[0] + 1, ch[0], 3, False))
        self.final_dense = nn.Sequential(EqualizedLinear(ch[0] * 16, ch[0]), nn.LeakyReLU(0.2))
        self.output = EqualizedLinear(ch[0], 1, gain=1.0)

    def forward(self, x: torch.Tensor, level: int | None = None, alpha: float = 1.0) -> torch.Tensor:
        level = self.num_levels - 1 if level is None else level
        h = self.from_rgb[level](x)
        if level > 0:
            h = self.blocks[level - 1](h)
            if alpha < 1.0:
                old = self.from_rgb[level - 1](F.avg_pool2d(x, 2))
                h = _fade(old, h, alpha)
            for i in range(level - 1, 0, -1):
                h = self.blocks[i - 1](h)
        h = self.final_conv(minibatch_stddev(h, self.mbstd_group_size))  # (B, C0, 4, 4)
        return self.output(self.final_dense(h.flatten(1)))  # (B, 1)
