"""PixelRNN networks (van den Oord, Kalchbrenner & Kavukcuoglu 2016a, "Pixel Recurrent Neural
Networks", Sec. 3): the Row LSTM and the Diagonal BiLSTM.

Both keep the PixelCNN's ordering (raster order over pixels, R -> G -> B within a pixel) and
its masked convolutions (``nets.pixelcnn.MaskedConv2d``): a 7x7 mask-A convolution in, LSTM
layers with residual connections, a ReLU / 1x1 mask-B head out. Inside an LSTM layer the
input-to-state convolution carries the channel mask B, and channel ``o`` of every gate, cell and
hidden map belongs to group ``o % C`` (the state size ``h`` is a multiple of ``C``, so the four
gate chunks and the elementwise LSTM updates keep groups intact). The state-to-state
convolution only reads states of earlier pixels, so it is unmasked.

- **Row LSTM** (Sec. 3.1): rows top to bottom; the gates of row ``i`` are
  ``[o, f, i, g] = sigma(K^ss * h_{i-1} + K^is * x_i)`` with a ``k``-wide 1-D ``K^ss`` over the
  previous row and a ``1 x k`` mask-B ``K^is`` over the current row (left and centre);
  ``c_i = f . c_{i-1} + i . g``, ``h_i = o . tanh(c_i)`` (``g`` through ``tanh``). Its context
  above the pixel is a triangle.
- **Diagonal BiLSTM** (Sec. 3.2): the input map is *skewed* (row ``r`` shifted right by ``r``)
  so that each column of the skewed map is a diagonal of the image; an LSTM runs over the
  columns with a 1x1 mask-B ``K^is`` and a 2x1 ``K^ss`` (the state above and the state left of
  the pixel). The right-to-left direction runs on the mirrored image, and its output is shifted
  down one row before it is added, so no pixel sees the pixel to its right in its own row.
  One layer already covers the whole past.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

from lightning_gen.nets.conditioning import label_features
from lightning_gen.nets.pixelcnn import MaskedConv2d, _head, _shift_down


def skew(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W) -> (B, C, H, W + H - 1)``: row ``r`` shifted right by ``r``, zeros around.

    Pixel ``(r, c)`` lands at ``(r, r + c)``, so column ``j`` of the result holds the diagonal
    ``r + c = j``. Done with one pad and one reshape: padding each row to ``W + H`` and reading
    the flat buffer in rows of ``W + H - 1`` moves row ``r`` right by ``r``.
    """
    b, ch, h, w = x.shape
    flat = F.pad(x, (0, h)).flatten(2)  # (B, C, H (W + H))
    return flat[:, :, : h * (w + h - 1)].reshape(b, ch, h, w + h - 1)


def unskew(x: torch.Tensor, width: int) -> torch.Tensor:
    """Inverse of ``skew``: ``(B, C, H, W + H - 1) -> (B, C, H, W)``, ``(r, r + c) -> (r, c)``."""
    b, ch, h, skewed = x.shape
    if skewed != width + h - 1:
        raise ValueError(f"a skewed map of height {h} and width {width} has {width + h - 1} "
                         f"columns, got {skewed}")
    flat = F.pad(x.flatten(2), (0, h))  # (B, C, H (W + H)); (r, r + c) at r (W + H) + c
    return flat.reshape(b, ch, h, width + h)[:, :, :, :width]


def _lstm_update(gates: torch.Tensor, cell: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``[o, f, i, g]`` pre-activations ``(B, 4h, N)`` -> ``(h, c)``; Eq. 3 of the paper:
    ``c = sigma(f) . c + sigma(i) . tanh(g)``, ``h = sigma(o) . tanh(c)``."""
    hidden = cell.shape[1]
    o, f, i = torch.sigmoid(gates[:, : 3 * hidden]).chunk(3, dim=1)  # one kernel for 3 gates
    cell = torch.addcmul(f * cell, i, torch.tanh(gates[:, 3 * hidden:]))
    return o * torch.tanh(cell), cell


class RowLSTM(nn.Module):
    """One Row LSTM layer with its residual connection: ``x + conv1x1_B(h)``.

    Args:
        channels: Channels of the residual stream (``2h``).
        hidden: LSTM state channels ``h``, a multiple of ``data_channels``.
        kernel_size: Width ``k`` of the input-to-state and state-to-state kernels (3).
        data_channels: Image channels ``C``.
    """

    def __init__(self, channels: int, hidden: int, kernel_size: int, data_channels: int) -> None:
        super().__init__()
        self.hidden = hidden
        self.input_to_state = MaskedConv2d(channels, 4 * hidden, (1, kernel_size), "B",
                                           data_channels)
        self.state_to_state = nn.Conv1d(hidden, 4 * hidden, kernel_size,
                                        padding=kernel_size // 2, bias=False)
        self.output = MaskedConv2d(hidden, channels, 1, "B", data_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, height, width = x.shape
        gates_is = self.input_to_state(x)  # (B, 4h, H, W), all rows at once
        h = c = gates_is.new_zeros(b, self.hidden, width)
        rows = []
        for r in range(height):  # top to bottom: row r sees the states of row r - 1
            h, c = _lstm_update(gates_is[:, :, r] + self.state_to_state(h), c)
            rows.append(h)
        return x + self.output(torch.stack(rows, dim=2))  # (B, 2h, H, W)


class DiagonalLSTM(nn.Module):
    """One direction of the Diagonal BiLSTM (left to right): skew, an LSTM over the skewed
    columns with a 2x1 state-to-state kernel, unskew. Returns the states ``(B, h, H, W)``.

    The input-to-state 1x1 convolution runs before skewing, so the padding of the skewed map is
    exactly zero; with a bias-free ``K^ss`` the states there stay zero too.
    """

    def __init__(self, channels: int, hidden: int, data_channels: int) -> None:
        super().__init__()
        self.hidden = hidden
        self.input_to_state = MaskedConv2d(channels, 4 * hidden, 1, "B", data_channels)
        # Output row i reads states i - 1 (the pixel above) and i (the pixel to the left).
        self.state_to_state = nn.Conv1d(hidden, 4 * hidden, 2, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, height, width = x.shape
        gates_is = skew(self.input_to_state(x))  # (B, 4h, H, W + H - 1)
        h = c = gates_is.new_zeros(b, self.hidden, height)
        columns = []
        for j in range(gates_is.shape[3]):  # one diagonal of the image per step
            h, c = _lstm_update(gates_is[:, :, :, j] + self.state_to_state(h)[:, :, :height], c)
            columns.append(h)
        return unskew(torch.stack(columns, dim=3), width)


class DiagonalBiLSTM(nn.Module):
    """Diagonal BiLSTM layer: both directions, the right-to-left one shifted down one row, and
    the residual connection ``x + conv1x1_B(h_lr + shift_down(h_rl))``.

    Args:
        channels: Channels of the residual stream (``2h``).
        hidden: LSTM state channels ``h`` per direction, a multiple of ``data_channels``.
        data_channels: Image channels ``C``.
    """

    def __init__(self, channels: int, hidden: int, data_channels: int) -> None:
        super().__init__()
        self.left_to_right = DiagonalLSTM(channels, hidden, data_channels)
        self.right_to_left = DiagonalLSTM(channels, hidden, data_channels)
        self.output = MaskedConv2d(hidden, channels, 1, "B", data_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left = self.left_to_right(x)
        # Mirrored, its state at (r, c) has seen (r, c + 1): shifted down, (r, c) gets row r - 1.
        right = _shift_down(self.right_to_left(x.flip(3)).flip(3))
        return x + self.output(left + right)


class PixelRNNNet(nn.Module):
    """PixelRNN: a 7x7 mask-A convolution, ``n_layers`` Row LSTM or Diagonal BiLSTM layers with
    residual connections, the PixelCNN's ReLU / 1x1 mask-B head.

    Returns logits ``(B, L, C, H, W)``; ``L = 2`` is the binary output for binarized MNIST (a
    2-way softmax is a Bernoulli), ``L = 256`` the paper's 256-way softmax. With
    ``num_classes > 0`` a learned per-channel bias of the class (or attribute vector) is added
    after the first layer, as in ``PixelCNNNet``.

    Args:
        data_channels: Image channels ``C``.
        architecture: ``"row_lstm"`` or ``"diagonal_bilstm"``.
        hidden: LSTM state channels ``h`` (the residual stream has ``2h``), a multiple of ``C``.
        n_layers: LSTM layers (7 for MNIST, 12 for CIFAR-10 in the paper).
        kernel_size: Row LSTM kernel width ``k`` (3); the Diagonal BiLSTM's kernels are fixed
            (1x1 input-to-state, 2x1 state-to-state).
        num_levels: ``L``.
        num_classes: Size of the conditioning vector (0: unconditional).
    """

    def __init__(self, data_channels: int,
                 architecture: Literal["row_lstm", "diagonal_bilstm"] = "diagonal_bilstm",
                 hidden: int = 16, n_layers: int = 7, kernel_size: int = 3,
                 num_levels: int = 256, num_classes: int = 0) -> None:
        super().__init__()
        if hidden <= 0 or hidden % data_channels:
            raise ValueError(f"hidden ({hidden}) must be a positive multiple of the image "
                             f"channels ({data_channels}), e.g. 129 instead of 128 for RGB")
        if architecture not in ("row_lstm", "diagonal_bilstm"):
            raise ValueError(f"architecture must be 'row_lstm' or 'diagonal_bilstm', "
                             f"got {architecture!r}")
        self.data_channels, self.num_levels, self.num_classes = data_channels, num_levels, num_classes
        width = 2 * hidden
        self.input_conv = MaskedConv2d(data_channels, width, 7, "A", data_channels)
        if architecture == "row_lstm":
            layers = [RowLSTM(width, hidden, kernel_size, data_channels) for _ in range(n_layers)]
        else:
            layers = [DiagonalBiLSTM(width, hidden, data_channels) for _ in range(n_layers)]
        self.layers = nn.Sequential(*layers)
        self.condition = nn.Linear(num_classes, width, bias=False) if num_classes else None
        self.head = _head(width, data_channels, num_levels)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        h = self.input_conv(x)  # (B, 2h, H, W)
        if self.condition is not None and labels is not None:
            h = h + self.condition(label_features(labels, self.num_classes))[:, :, None, None]
        out = self.head(self.layers(h))  # (B, L * C, H, W)
        b, _, height, width = out.shape
        return out.view(b, self.num_levels, self.data_channels, height, width)
