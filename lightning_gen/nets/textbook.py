"""The convolutional GAN of the textbook chapter on GANs (Foster, "Generative Deep Learning",
2019, Ch. 4: the Keras GAN with UpSampling2D + Conv2D generator and a dropout discriminator).

Defaults give 720,833 trainable parameters in D and 837,377 in G for 28x28x1 images and a
100-d ``z`` ("same" padding; batch-norm scales and shifts are trainable parameters).
"""

from __future__ import annotations

import math

import torch
from torch import nn


class TextbookDiscriminator(nn.Module):
    """Convs (kernel ``k``, "same" padding) with ReLU and dropout, flattened, a dense logit.

    Args:
        image_shape: ``(C, H, W)``.
        filters: Channels of each convolution.
        kernel_size: Kernel side of every convolution.
        strides: Stride of each convolution.
        dropout: Dropout probability after every convolution.
    """

    def __init__(self, image_shape: tuple[int, int, int],
                 filters: tuple[int, ...] = (64, 64, 128, 128), kernel_size: int = 5,
                 strides: tuple[int, ...] = (2, 2, 2, 1), dropout: float = 0.4) -> None:
        super().__init__()
        if len(filters) != len(strides):
            raise ValueError("filters and strides need one entry per convolution")
        channels, size, _ = image_shape
        layers: list[nn.Module] = []
        for f, s in zip(filters, strides, strict=True):
            layers += [nn.Conv2d(channels, f, kernel_size, s, kernel_size // 2), nn.ReLU(),
                       nn.Dropout(dropout)]
            channels, size = f, math.ceil(size / s)  # "same" padding
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(channels * size * size, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))  # (B, 1) logits


class TextbookGenerator(nn.Module):
    """``z`` -> dense -> batch norm -> ReLU -> reshape ``start_shape`` -> for each conv:
    upsample (nearest), conv ("same"), then batch norm + ReLU except after the last conv,
    which ends in ``tanh``.

    Args:
        latent_dim: Size of ``z``.
        image_shape: ``(C, H, W)`` of the output; the last filter count must be ``C``.
        start_shape: ``(C0, H0, W0)`` after the dense layer.
        upsampling: Upsampling factor before each convolution.
        filters: Channels of each convolution.
        kernel_size: Kernel side of every convolution.
        bn_momentum: Keras' batch-norm momentum (0.9), i.e. PyTorch momentum ``1 - 0.9``.
    """

    def __init__(self, latent_dim: int, image_shape: tuple[int, int, int],
                 start_shape: tuple[int, int, int] = (64, 7, 7),
                 upsampling: tuple[int, ...] = (2, 2, 1, 1),
                 filters: tuple[int, ...] = (128, 64, 64, 1), kernel_size: int = 5,
                 bn_momentum: float = 0.9) -> None:
        super().__init__()
        if len(filters) != len(upsampling):
            raise ValueError("filters and upsampling need one entry per convolution")
        side = start_shape[1] * math.prod(upsampling)
        if filters[-1] != image_shape[0] or side != image_shape[1]:
            raise ValueError(f"the generator makes {filters[-1]}x{side}x{side} images, not "
                             f"{tuple(image_shape)}; adjust filters / upsampling / start_shape")
        momentum = 1.0 - bn_momentum  # Keras: running = m * running + (1 - m) * batch
        n = math.prod(start_shape)
        self.dense = nn.Sequential(nn.Linear(latent_dim, n), nn.BatchNorm1d(n, momentum=momentum),
                                   nn.ReLU())
        layers: list[nn.Module] = []
        channels = start_shape[0]
        for i, (f, u) in enumerate(zip(filters, upsampling, strict=True)):
            if u > 1:
                layers.append(nn.Upsample(scale_factor=u, mode="nearest"))
            layers.append(nn.Conv2d(channels, f, kernel_size, 1, kernel_size // 2))
            if i < len(filters) - 1:
                layers += [nn.BatchNorm2d(f, momentum=momentum), nn.ReLU()]
            channels = f
        layers.append(nn.Tanh())
        self.net = nn.Sequential(*layers)
        self.start_shape = tuple(start_shape)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(self.dense(z).view(-1, *self.start_shape))
