"""A small VGG-style image classifier: the suite's domain feature extractor for evaluation."""

from __future__ import annotations

import torch
from torch import nn


class ConvClassifier(nn.Module):
    """Image ``(B, C, H, W)`` -> penultimate features ``(B, feature_dim)`` -> logits.

    Three stages of two 3x3 conv + batch-norm + ReLU layers, each followed by 2x2 max pooling
    (28 -> 14 -> 7 -> 3, 32 -> 16 -> 8 -> 4), global average pooling and one hidden linear
    layer whose ReLU output is the feature vector used for "classifier FID".

    Args:
        image_shape: ``(C, H, W)`` of the input (any side >= 8).
        num_classes: Number of classes.
        width: Channels of the first stage; doubled at each stage.
        feature_dim: Size of the penultimate feature vector.
        dropout: Dropout before the last linear layer (training only).
    """

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        num_classes: int,
        width: int = 32,
        feature_dim: int = 128,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        channels, height, side = image_shape
        if min(height, side) < 8:
            raise ValueError(f"images must be at least 8x8 for the classifier, got {height}x{side}")
        layers: list[nn.Module] = []
        c_in = channels
        for stage in range(3):
            c_out = width * 2**stage
            for _ in range(2):
                layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                           nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
                c_in = c_out
            layers.append(nn.MaxPool2d(2))
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())  # (B, c_in)
        self.embed = nn.Sequential(nn.Linear(c_in, feature_dim), nn.ReLU(inplace=True))
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(self.body(x))  # (B, feature_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(x)))  # (B, num_classes)
