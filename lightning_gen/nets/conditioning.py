"""Class labels or attribute vectors as the float vectors conditional networks take."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def label_features(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``(B,)`` integer classes -> one-hot ``(B, K)``; ``(B, K)`` attribute vectors (CelebA's 40
    0/1 attributes) -> float ``(B, K)`` as they are."""
    if labels.dim() == 1:
        if labels.dtype.is_floating_point:
            raise ValueError("class labels must be integers (or (B, K) attribute vectors)")
        return F.one_hot(labels.long(), num_classes).float()
    if labels.shape[1] != num_classes:
        raise ValueError(
            f"attribute vectors of size {labels.shape[1]} but num_classes={num_classes}; set the "
            "model's num_classes to the number of attributes (40 for CelebA)"
        )
    return labels.float()
