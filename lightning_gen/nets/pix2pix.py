"""pix2pix's networks (Isola, Zhu, Zhou & Efros 2017, Appendix 6.1): a U-Net generator with
skip connections whose dropout is the noise ``z``, and the 70x70 PatchGAN discriminator
conditioned on the input image (``D(x, y)`` sees the two concatenated along channels)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from lightning_gen.nets.cyclegan import PatchDiscriminator


class UNetGenerator(nn.Module):
    """Encoder ``C64-C128-C256-C512-C512-...`` (4x4 convs, stride 2, LeakyReLU 0.2, batch norm
    but on the first), decoder mirrored with 4x4 stride-2 transposed convs (ReLU, batch norm,
    dropout 0.5 on the first ``n_dropout`` layers), each decoder layer fed the concatenation of
    the previous decoder output and the encoder output of the same size; ``tanh`` out.

    ``n_down`` halvings take a ``2**n_down`` side down to 1x1 (8 for the paper's 256x256; 5 for
    32x32, 6 for 64x64). As in the authors' implementation the innermost (1x1) encoder layer has
    no normalisation (batch statistics of one pixel of one image would zero it).

    Args:
        in_channels: Channels of the input ``x`` (1 for colorization).
        out_channels: Channels of the output ``y`` (3).
        width: Channels of the first layer (64); layer ``i`` has ``width * min(2**i, 8)``.
        n_down: Stride-2 downsamplings; the sides must divide by ``2**n_down``.
        dropout: Dropout probability of the first decoder layers (0.5).
        n_dropout: Decoder layers with dropout (3).
    """

    def __init__(self, in_channels: int = 1, out_channels: int = 3, width: int = 64,
                 n_down: int = 8, dropout: float = 0.5, n_dropout: int = 3) -> None:
        super().__init__()
        if n_down < 2:
            raise ValueError(f"n_down must be >= 2, got {n_down}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        widths = [width * min(2**i, 8) for i in range(n_down)]
        self.down = nn.ModuleList()
        c = in_channels
        for i, w in enumerate(widths):
            layers: list[nn.Module] = [] if i == 0 else [nn.LeakyReLU(0.2)]
            has_norm = 0 < i < n_down - 1
            layers.append(nn.Conv2d(c, w, 4, 2, 1, bias=not has_norm))
            if has_norm:
                layers.append(nn.BatchNorm2d(w))
            self.down.append(nn.Sequential(*layers))
            c = w
        self.up = nn.ModuleList()
        for j in range(n_down):
            i = n_down - 1 - j  # the encoder level this decoder layer starts from
            c_in = widths[i] if j == 0 else 2 * widths[i]
            if i == 0:
                layers = [nn.ReLU(), nn.ConvTranspose2d(c_in, out_channels, 4, 2, 1), nn.Tanh()]
            else:
                layers = [nn.ReLU(), nn.ConvTranspose2d(c_in, widths[i - 1], 4, 2, 1, bias=False),
                          nn.BatchNorm2d(widths[i - 1])]
                if j < n_dropout and dropout > 0:
                    layers.append(nn.Dropout(dropout))
            self.up.append(nn.Sequential(*layers))
        self.n_down = n_down

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        side = 2**self.n_down
        if x.shape[-1] % side or x.shape[-2] % side:
            raise ValueError(f"image sides must divide by 2**n_down = {side}, got "
                             f"{tuple(x.shape[-2:])}; choose a smaller n_down")
        skips = []
        h = x
        for layer in self.down:
            h = layer(h)
            skips.append(h)
        h = self.up[0](skips[-1])
        for j in range(1, self.n_down):
            h = self.up[j](torch.cat([h, skips[self.n_down - 1 - j]], dim=1))  # (B, 2C, H, W)
        return h


class ConditionalPatchDiscriminator(nn.Module):
    """70x70 PatchGAN ``C64-C128-C256-C512`` with batch norm (the suite's
    :class:`~lightning_gen.nets.cyclegan.PatchDiscriminator`) on ``cat(x, y)``: one logit per
    overlapping 70x70 patch, ``(B, 1, h, w)``.

    Args:
        in_channels: Channels of the condition ``x``.
        out_channels: Channels of the image ``y`` judged.
        width: Channels of the first layer (64).
        n_layers: Stride-2 layers (3 gives 70x70 patches, 1 gives 16x16, 4 gives 142x142).
    """

    def __init__(self, in_channels: int = 1, out_channels: int = 3, width: int = 64,
                 n_layers: int = 3) -> None:
        super().__init__()
        self.patch = PatchDiscriminator(in_channels + out_channels, width, n_layers,
                                        norm=nn.BatchNorm2d)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.patch(torch.cat([x, y], dim=1))


def receptive_field(module: nn.Module) -> int:
    """Side of the input region one output unit of a chain of convolutions sees:
    ``r = 1 + sum_l (k_l - 1) * prod_{m<l} s_m`` over the module's convolutions in order."""
    r, jump = 1, 1
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            r += (m.kernel_size[0] - 1) * m.dilation[0] * jump
            jump *= m.stride[0]
    return r


@contextmanager
def paper_inference(module: nn.Module) -> Iterator[None]:
    """Run ``module`` as pix2pix does at test time (Sec. 3.1.1 and 6.1): dropout on (the noise)
    and batch norm with the statistics of the test batch; running statistics are left as they
    are (``track_running_stats`` off for the block)."""
    saved = [(m, m.training, getattr(m, "track_running_stats", None)) for m in module.modules()]
    module.eval()
    try:
        for m in module.modules():
            if isinstance(m, nn.Dropout):
                m.train()
            elif isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.train()
                m.track_running_stats = False
        yield
    finally:
        for m, training, track in saved:
            m.training = training
            if track is not None:
                m.track_running_stats = track
