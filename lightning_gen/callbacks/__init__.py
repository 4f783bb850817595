"""Callbacks: image grids and what the lectures show about latent-variable models."""

from lightning_gen.callbacks.images import ImageGridCallback, image_grid, log_grid, save_grid
from lightning_gen.callbacks.latent import (
    CompletionCallback,
    LatentArithmeticCallback,
    LatentInterpolationCallback,
    LatentTraversalCallback,
    OutlierAUROCCallback,
)

__all__ = [
    "CompletionCallback",
    "ImageGridCallback",
    "LatentArithmeticCallback",
    "LatentInterpolationCallback",
    "LatentTraversalCallback",
    "OutlierAUROCCallback",
    "image_grid",
    "log_grid",
    "save_grid",
]
