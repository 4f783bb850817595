"""PixelCNN networks (van den Oord et al. 2016a, "Pixel Recurrent Neural Networks"; 2016b,
"Conditional Image Generation with PixelCNN Decoders").

Pixels are generated in raster order and, within a pixel, channel by channel (R, G, B). A
convolution stays causal by masking its kernel: weights to pixels below the centre and right of
it in the centre row are zero; at the centre, output channel group ``j`` sees input group ``i``
only if ``i < j`` (mask A, first layer: a pixel cannot see itself) or ``i <= j`` (mask B, later
layers). Channel ``o`` of a hidden layer belongs to group ``o % C`` (``C`` image channels), so
halving a layer's channels (the gates) and the final ``(L, C)`` reshape keep groups intact.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

from lightning_gen.nets.conditioning import label_features


class MaskedConv2d(nn.Conv2d):
    """``Conv2d`` whose kernel is multiplied by a fixed causal mask (``"A"``, ``"B"``) or, for
    the vertical stack of the gated PixelCNN, by ``"V"`` (rows up to the centre row; the stack is
    shifted down one row before the horizontal stack sees it).

    Args:
        in_channels, out_channels: As ``nn.Conv2d``.
        kernel_size: ``k`` or ``(kh, kw)``, odd; padding keeps the image size.
        mask_type: ``"A"``, ``"B"`` or ``"V"``.
        data_channels: Image channels ``C`` (channel groups at the centre pixel).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        mask_type: Literal["A", "B", "V"],
        data_channels: int = 1,
        bias: bool = True,
    ) -> None:
        kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
        if kh % 2 == 0 or kw % 2 == 0:
            raise ValueError(f"masked convolutions need odd kernels, got {kh}x{kw}")
        super().__init__(in_channels, out_channels, (kh, kw), padding=(kh // 2, kw // 2),
                         bias=bias)
        ch, cw = kh // 2, kw // 2
        mask = torch.ones(out_channels, in_channels, kh, kw)
        mask[:, :, ch + 1:, :] = 0  # rows below the centre
        if mask_type in ("A", "B"):
            mask[:, :, ch, cw + 1:] = 0  # right of the centre in its row
            group_out = torch.arange(out_channels) % data_channels
            group_in = torch.arange(in_channels) % data_channels
            if mask_type == "A":
                allowed = group_in[None, :] < group_out[:, None]
            else:
                allowed = group_in[None, :] <= group_out[:, None]
            mask[:, :, ch, cw] = allowed.float()
        elif mask_type != "V":
            raise ValueError(f"mask_type must be 'A', 'B' or 'V', got {mask_type!r}")
        self.register_buffer("mask", mask)
        self.mask_type = mask_type

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.mask, self.bias, self.stride, self.padding)


def _head(hidden: int, data_channels: int, num_levels: int) -> nn.Sequential:
    """ReLU, 1x1 mask B, ReLU, 1x1 mask B -> ``C * L`` logits (channel ``l * C + c``)."""
    return nn.Sequential(
        nn.ReLU(), MaskedConv2d(hidden, hidden, 1, "B", data_channels),
        nn.ReLU(), MaskedConv2d(hidden, num_levels * data_channels, 1, "B", data_channels),
    )


class _ResidualBlock(nn.Module):
    """PixelCNN residual block (van den Oord et al. 2016a, Fig. 5): 1x1 -> kxk -> 1x1, mask B."""

    def __init__(self, hidden: int, kernel_size: int, data_channels: int) -> None:
        super().__init__()
        half = hidden // 2
        self.net = nn.Sequential(
            nn.ReLU(), MaskedConv2d(hidden, half, 1, "B", data_channels),
            nn.ReLU(), MaskedConv2d(half, half, kernel_size, "B", data_channels),
            nn.ReLU(), MaskedConv2d(half, hidden, 1, "B", data_channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x)


class PixelCNNNet(nn.Module):
    """PixelCNN: a 7x7 mask-A convolution, residual blocks of mask-B convolutions, a 1x1 head.

    Returns logits ``(B, L, C, H, W)`` of ``L`` intensity levels for every sub-pixel. With
    ``num_classes > 0`` a learned per-channel bias of the class (or attribute vector) is added
    after the first layer.

    Args:
        data_channels: Image channels ``C``.
        hidden: Channels of the residual stream (``2h`` in the paper), a multiple of ``2 C``.
        n_layers: Residual blocks (15 in the paper's CIFAR-10 model).
        kernel_size: Kernel of the blocks' middle convolution (3 in the paper).
        num_levels: ``L`` (256).
        num_classes: Size of the conditioning vector (0: unconditional).
    """

    def __init__(self, data_channels: int, hidden: int = 64, n_layers: int = 7,
                 kernel_size: int = 3, num_levels: int = 256, num_classes: int = 0) -> None:
        super().__init__()
        if hidden % (2 * data_channels):
            raise ValueError(f"hidden ({hidden}) must be a multiple of 2 * channels")
        self.data_channels, self.num_levels, self.num_classes = data_channels, num_levels, num_classes
        self.input_conv = MaskedConv2d(data_channels, hidden, 7, "A", data_channels)
        self.blocks = nn.Sequential(
            *[_ResidualBlock(hidden, kernel_size, data_channels) for _ in range(n_layers)]
        )
        self.condition = nn.Linear(num_classes, hidden, bias=False) if num_classes else None
        self.head = _head(hidden, data_channels, num_levels)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        h = self.input_conv(x)
        if self.condition is not None and labels is not None:
            h = h + self.condition(label_features(labels, self.num_classes))[:, :, None, None]
        out = self.head(self.blocks(h))  # (B, L * C, H, W)
        b, _, height, width = out.shape
        return out.view(b, self.num_levels, self.data_channels, height, width)


def _gate(x: torch.Tensor) -> torch.Tensor:
    """Gated activation ``tanh(a) * sigmoid(b)`` of the two channel halves (2016b, Eq. 2)."""
    a, b = x.chunk(2, dim=1)
    return torch.tanh(a) * torch.sigmoid(b)


def _shift_down(x: torch.Tensor) -> torch.Tensor:
    """Shift a feature map down one row (zeros on top): row ``r`` then holds row ``r - 1``."""
    return F.pad(x, (0, 0, 1, 0))[:, :, :-1, :]


class GatedBlock(nn.Module):
    """One layer of the gated PixelCNN (2016b, Fig. 2): a vertical stack (rows above) and a
    horizontal stack (the current row, left of the pixel), gated activations with an additive
    class bias ``V^T h`` in both, and a residual connection in the horizontal stack.
    """

    def __init__(self, in_channels: int, hidden: int, kernel_size: int, data_channels: int,
                 first: bool, num_classes: int) -> None:
        super().__init__()
        self.first = first
        self.v_conv = MaskedConv2d(in_channels, 2 * hidden, kernel_size, "V", data_channels)
        self.h_conv = MaskedConv2d(in_channels, 2 * hidden, (1, kernel_size),
                                   "A" if first else "B", data_channels)
        self.v_to_h = nn.Conv2d(2 * hidden, 2 * hidden, 1)  # sees only rows above (shifted)
        self.h_out = MaskedConv2d(hidden, hidden, 1, "B", data_channels)
        self.condition = nn.Linear(num_classes, 4 * hidden, bias=False) if num_classes else None

    def forward(self, v, h, cond: torch.Tensor | None):
        v_feat = self.v_conv(v)  # (B, 2h, H, W)
        h_feat = self.h_conv(h) + self.v_to_h(_shift_down(v_feat))
        if self.condition is not None and cond is not None:
            cv, ch = self.condition(cond)[:, :, None, None].chunk(2, dim=1)
            v_feat, h_feat = v_feat + cv, h_feat + ch
        h_new = self.h_out(_gate(h_feat))
        return _gate(v_feat), h_new if self.first else h + h_new


class GatedPixelCNNNet(nn.Module):
    """Gated PixelCNN (van den Oord et al. 2016b): gated blocks with vertical and horizontal
    stacks (no blind spot), optionally class-conditional. Returns logits ``(B, L, C, H, W)``.

    Args:
        data_channels: Image channels ``C``.
        hidden: Channels of each stack, a multiple of ``C``.
        n_layers: Gated blocks.
        kernel_size: Kernel of the stacks (the first block uses 7, as the paper's first layer).
        num_levels: ``L`` (256).
        num_classes: Size of the conditioning vector (0: unconditional).
    """

    def __init__(self, data_channels: int, hidden: int = 64, n_layers: int = 7,
                 kernel_size: int = 3, num_levels: int = 256, num_classes: int = 0) -> None:
        super().__init__()
        if hidden % data_channels:
            raise ValueError(f"hidden ({hidden}) must be a multiple of the image channels")
        self.data_channels, self.num_levels, self.num_classes = data_channels, num_levels, num_classes
        self.blocks = nn.ModuleList(
            GatedBlock(data_channels if i == 0 else hidden, hidden, 7 if i == 0 else kernel_size,
                       data_channels, first=i == 0, num_classes=num_classes)
            for i in range(n_layers)
        )
        self.head = _head(hidden, data_channels, num_levels)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        cond = None
        if self.num_classes and labels is not None:
            cond = label_features(labels, self.num_classes)
        v = h = x
        for block in self.blocks:
            v, h = block(v, h, cond)
        out = self.head(h)
        b, _, height, width = out.shape
        return out.view(b, self.num_levels, self.data_channels, height, width)
