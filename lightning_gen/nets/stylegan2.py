"""StyleGAN2's networks (Karras et al. 2020, "Analyzing and Improving the Image Quality of
StyleGAN"): mapping network, modulated convolutions with weight demodulation, per-pixel noise,
the skip generator and the residual discriminator with minibatch standard deviation.

Every layer uses the equalized learning rate of Karras et al. (2018): weights are drawn from
``N(0, 1) / lr_mul`` and scaled at runtime by ``lr_mul / sqrt(fan_in)``. Up- and downsampling
are bilinear interpolation and 2x2 average pooling (the official code uses a [1, 3, 3, 1] FIR
filter with transposed / strided convolutions; docs/models.md).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

_GAIN = math.sqrt(2.0)  # leaky ReLU(0.2) gain: keeps activations' second moment


def lrelu(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, 0.2) * _GAIN


class EqualLinear(nn.Module):
    """Dense layer with equalized learning rate; ``lr_mul`` scales its effective learning
    rate (0.01 in the mapping network)."""

    def __init__(self, c_in: int, c_out: int, bias_init: float = 0.0, lr_mul: float = 1.0,
                 activate: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(c_out, c_in) / lr_mul)
        self.bias = nn.Parameter(torch.full((c_out,), float(bias_init)) / lr_mul)
        self.scale, self.lr_mul, self.activate = lr_mul / math.sqrt(c_in), lr_mul, activate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.linear(x, self.weight * self.scale, self.bias * self.lr_mul)
        return lrelu(x) if self.activate else x


class EqualConv2d(nn.Module):
    """Convolution with equalized learning rate (the discriminator's layers)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, bias: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(c_out, c_in, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(c_out)) if bias else None
        self.scale, self.padding = 1 / math.sqrt(c_in * kernel * kernel), kernel // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.scale, self.bias, padding=self.padding)


def modulated_conv2d(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor,
                     demodulate: bool = True, padding: int = 0, eps: float = 1e-8
                     ) -> torch.Tensor:
    """Modulated convolution (Karras et al. 2020, Sec. 2.2, Eqs. 1-3) as one grouped conv.

    ``w'_ijk = s_i w_ijk`` (Eq. 1); with demodulation ``w''_ijk = w'_ijk /
    sqrt(sum_{i,k} w'_ijk^2 + eps)`` (Eq. 3), so unit-variance inputs give unit-variance
    outputs. Each sample's weights are one group of a ``groups=B`` convolution.

    Args:
        x: ``(B, I, H, W)``.
        weight: ``(O, I, k, k)``, already scaled (equalized learning rate).
        styles: ``(B, I)``, the per-sample scales ``s``.
    """
    b, c_in, h, w = x.shape
    wgt = weight[None] * styles[:, None, :, None, None]  # (B, O, I, k, k)
    if demodulate:
        wgt = wgt * torch.rsqrt(wgt.square().sum(dim=(2, 3, 4), keepdim=True) + eps)
    wgt = wgt.reshape(-1, c_in, *weight.shape[2:])  # (B*O, I, k, k)
    out = F.conv2d(x.reshape(1, b * c_in, h, w), wgt.to(x.dtype), padding=padding, groups=b)
    return out.reshape(b, -1, *out.shape[2:])  # (B, O, H', W')


class StyleConv(nn.Module):
    """Upsample (optional) -> modulated 3x3 conv -> per-pixel noise -> bias -> leaky ReLU."""

    def __init__(self, c_in: int, c_out: int, w_dim: int, up: bool = False) -> None:
        super().__init__()
        self.affine = EqualLinear(w_dim, c_in, bias_init=1.0)  # styles start at 1
        self.weight = nn.Parameter(torch.randn(c_out, c_in, 3, 3))
        self.noise_strength = nn.Parameter(torch.zeros(()))
        self.bias = nn.Parameter(torch.zeros(c_out))
        self.scale, self.up = 1 / math.sqrt(c_in * 9), up

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise: bool = True) -> torch.Tensor:
        if self.up:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        x = modulated_conv2d(x, self.weight * self.scale, self.affine(w), padding=1)
        if noise:  # per-pixel noise, one map per sample broadcast over channels (Fig. 2)
            x = x + self.noise_strength * torch.randn_like(x[:, :1])
        return lrelu(x + self.bias[None, :, None, None])


class ToRGB(nn.Module):
    """Modulated 1x1 conv to RGB without demodulation (the skip generator's outputs)."""

    def __init__(self, c_in: int, channels: int, w_dim: int) -> None:
        super().__init__()
        self.affine = EqualLinear(w_dim, c_in, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(channels, c_in, 1, 1))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.scale = 1 / math.sqrt(c_in)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        out = modulated_conv2d(x, self.weight * self.scale, self.affine(w), demodulate=False)
        return out + self.bias[None, :, None, None]


def _num_blocks(resolution: int) -> int:
    n = int(round(math.log2(resolution))) - 2
    if resolution < 4 or 4 * 2**n != resolution:
        raise ValueError(f"StyleGAN2 makes 4 * 2**n pixel images (16, 32, 64, ...), "
                         f"not {resolution}")
    return n


def channels_at(res: int, channel_base: int, channel_max: int) -> int:
    """Channels at resolution ``res``: ``min(channel_base / res, channel_max)``."""
    return max(1, min(channel_base // res, channel_max))


class MappingNetwork(nn.Module):
    """``z`` -> ``w``: pixel norm of ``z``, then ``num_layers`` dense layers with leaky ReLU at
    ``lr_mul`` (0.01) times the learning rate. Keeps the running mean ``w_avg`` (truncation)."""

    def __init__(self, z_dim: int, w_dim: int, num_layers: int = 8, lr_mul: float = 0.01,
                 w_avg_beta: float = 0.995) -> None:
        super().__init__()
        dims = [z_dim] + [w_dim] * num_layers
        self.layers = nn.Sequential(*[EqualLinear(a, b, lr_mul=lr_mul, activate=True)
                                      for a, b in zip(dims[:-1], dims[1:], strict=True)])
        self.register_buffer("w_avg", torch.zeros(w_dim))
        self.w_avg_beta = w_avg_beta

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        z = z * torch.rsqrt(z.square().mean(dim=1, keepdim=True) + 1e-8)
        return self.layers(z)

    @torch.no_grad()
    def update_w_avg(self, w_mean: torch.Tensor) -> None:
        """``w_avg <- lerp(w_avg, mean w, 1 - beta)`` (the model passes the rank-averaged mean)."""
        self.w_avg.lerp_(w_mean.to(self.w_avg.dtype), 1.0 - self.w_avg_beta)


def truncate(ws: torch.Tensor, w_avg: torch.Tensor, psi: float) -> torch.Tensor:
    """Truncation trick in W (Karras et al. 2019, Sec. B): ``w' = w_avg + psi (w - w_avg)``;
    ``psi = 0`` gives the mean latent, ``psi = 1`` leaves ``w`` unchanged."""
    return ws if psi == 1.0 else torch.lerp(w_avg.to(ws.dtype), ws, psi)


class SynthesisNetwork(nn.Module):
    """Skip generator (Fig. 7b): learned 4x4 constant, two style convs per resolution (one at
    4x4), and the sum of upsampled ToRGB outputs. ``num_ws`` styles: conv ``i`` reads ``ws[:, i]``,
    each ToRGB the index of the next conv (as in the official code)."""

    def __init__(self, resolution: int, channels: int, w_dim: int, channel_base: int,
                 channel_max: int) -> None:
        super().__init__()
        n = _num_blocks(resolution)
        ch = [channels_at(4 * 2**i, channel_base, channel_max) for i in range(n + 1)]
        self.const = nn.Parameter(torch.randn(ch[0], 4, 4))
        self.convs = nn.ModuleList([StyleConv(ch[0], ch[0], w_dim)])
        self.to_rgbs = nn.ModuleList([ToRGB(ch[0], channels, w_dim)])
        for i in range(1, n + 1):
            self.convs.append(StyleConv(ch[i - 1], ch[i], w_dim, up=True))
            self.convs.append(StyleConv(ch[i], ch[i], w_dim))
            self.to_rgbs.append(ToRGB(ch[i], channels, w_dim))
        self.num_ws = len(self.convs) + 1

    def forward(self, ws: torch.Tensor, noise: bool = True) -> torch.Tensor:
        x = self.const[None].expand(ws.shape[0], -1, -1, -1)  # (B, C, 4, 4)
        x = self.convs[0](x, ws[:, 0], noise)
        img = self.to_rgbs[0](x, ws[:, 1])
        for i, to_rgb in enumerate(self.to_rgbs[1:], start=1):
            x = self.convs[2 * i - 1](x, ws[:, 2 * i - 1], noise)
            x = self.convs[2 * i](x, ws[:, 2 * i], noise)
            img = F.interpolate(img, scale_factor=2, mode="bilinear", align_corners=False)
            img = img + to_rgb(x, ws[:, 2 * i + 1])
        return img


class StyleGAN2Generator(nn.Module):
    """Mapping network + synthesis network; ``forward(z)`` gives images (linear output, as in
    the paper: no tanh; samples are clamped to [-1, 1] for viewing and metrics).

    Args:
        latent_dim: Size of ``z``.
        image_shape: ``(C, H, W)``, ``H = W = 4 * 2**n``.
        w_dim: Size of ``w`` (512 in the paper).
        mapping_layers: Depth of the mapping network (8).
        mapping_lr_mul: Learning-rate multiplier of the mapping network (0.01).
        channel_base, channel_max: Channels ``min(channel_base / res, channel_max)``.
        w_avg_beta: Decay of the tracked mean ``w`` used by truncation (0.995).
    """

    def __init__(self, latent_dim: int, image_shape: tuple[int, int, int], w_dim: int = 512,
                 mapping_layers: int = 8, mapping_lr_mul: float = 0.01,
                 channel_base: int = 16384, channel_max: int = 512,
                 w_avg_beta: float = 0.995) -> None:
        super().__init__()
        if image_shape[1] != image_shape[2]:
            raise ValueError(f"StyleGAN2 makes square images, not {tuple(image_shape)}")
        self.mapping = MappingNetwork(latent_dim, w_dim, mapping_layers, mapping_lr_mul,
                                      w_avg_beta)
        self.synthesis = SynthesisNetwork(image_shape[1], image_shape[0], w_dim, channel_base,
                                          channel_max)
        self.num_ws = self.synthesis.num_ws

    def ws(self, z: torch.Tensor, truncation: float = 1.0, mixing_prob: float = 0.0,
           z2: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, num_ws, w_dim)`` styles. With probability ``mixing_prob`` the layers from a
        random crossover point on take the styles of ``z2`` (style mixing regularisation,
        Karras et al. 2019, Sec. 3.1; one crossover per batch, as in the official code)."""
        ws = truncate(self.mapping(z), self.mapping.w_avg, truncation)
        ws = ws[:, None].repeat(1, self.num_ws, 1)
        if mixing_prob > 0 and float(torch.rand(())) < mixing_prob:
            cutoff = int(torch.randint(1, self.num_ws, ()))
            z2 = torch.randn_like(z) if z2 is None else z2
            w2 = truncate(self.mapping(z2), self.mapping.w_avg, truncation)
            ws[:, cutoff:] = w2[:, None]
        return ws

    def forward(self, z: torch.Tensor, truncation: float = 1.0, mixing_prob: float = 0.0,
                noise: bool = True) -> torch.Tensor:
        return self.synthesis(self.ws(z, truncation, mixing_prob), noise)


def minibatch_stddev(x: torch.Tensor, group_size: int = 4, num_channels: int = 1
                     ) -> torch.Tensor:
    """Append the minibatch standard deviation (Karras et al. 2018, Sec. 3): within groups of
    ``G`` samples, the std of each feature over the group, averaged over features and pixels
    (per ``num_channels`` channel groups), as extra constant channels. ``G = min(group_size,
    B)``, reduced to a divisor of ``B`` if needed."""
    b, c, h, w = x.shape
    g = math.gcd(min(group_size, b), b)
    y = x.reshape(g, -1, num_channels, c // num_channels, h, w).float()  # (G, M, F, c, H, W)
    y = (y - y.mean(dim=0)).square().mean(dim=0).add(1e-8).sqrt()  # (M, F, c, H, W)
    y = y.mean(dim=(2, 3, 4)).reshape(-1, num_channels, 1, 1)  # (M, F, 1, 1)
    y = y.repeat(g, 1, h, w).to(x.dtype)  # (B, F, H, W)
    return torch.cat([x, y], dim=1)


class ResidualBlock(nn.Module):
    """conv3 -> lrelu -> conv3 -> lrelu -> down2, plus a 1x1 down2 skip; the sum is scaled by
    ``1/sqrt(2)`` (Fig. 7c)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv0 = EqualConv2d(c_in, c_in, 3)
        self.conv1 = EqualConv2d(c_in, c_out, 3)
        self.skip = EqualConv2d(c_in, c_out, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.skip(F.avg_pool2d(x, 2))
        h = F.avg_pool2d(lrelu(self.conv1(lrelu(self.conv0(x)))), 2)
        return (h + s) / math.sqrt(2.0)


class StyleGAN2Discriminator(nn.Module):
    """Residual discriminator: FromRGB at full resolution, residual blocks down to 4x4,
    minibatch stddev, conv3, dense, dense logit.

    Args:
        image_shape: ``(C, H, W)``, ``H = W = 4 * 2**n``.
        channel_base, channel_max: As the generator's.
        mbstd_group: Group size of the minibatch stddev (4; 32 in StyleGAN2-ADA's CIFAR config).
    """

    def __init__(self, image_shape: tuple[int, int, int], channel_base: int = 16384,
                 channel_max: int = 512, mbstd_group: int = 4) -> None:
        super().__init__()
        n = _num_blocks(image_shape[1])
        ch = [channels_at(4 * 2**i, channel_base, channel_max) for i in range(n + 1)]
        self.from_rgb = EqualConv2d(image_shape[0], ch[n], 1)
        self.blocks = nn.Sequential(*[ResidualBlock(ch[i], ch[i - 1]) for i in range(n, 0, -1)])
        self.conv = EqualConv2d(ch[0] + 1, ch[0], 3)
        self.fc = EqualLinear(ch[0] * 16, ch[0], activate=True)
        self.out = EqualLinear(ch[0], 1)
        self.mbstd_group = mbstd_group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.blocks(lrelu(self.from_rgb(x)))  # (B, C, 4, 4)
        h = lrelu(self.conv(minibatch_stddev(h, self.mbstd_group)))
        return self.out(self.fc(h.flatten(1)))  # (B, 1)
