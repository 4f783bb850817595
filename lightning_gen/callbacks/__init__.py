"""Callbacks: image grids, what the lectures show about latent-variable models, evaluation
metrics (FID / IS / KID / precision-recall), speed options and the progress bar."""

from lightning_gen.callbacks.images import ImageGridCallback, image_grid, log_grid, save_grid
from lightning_gen.callbacks.latent import (
    CompletionCallback,
    LatentArithmeticCallback,
    LatentInterpolationCallback,
    LatentTraversalCallback,
    OutlierAUROCCallback,
)
from lightning_gen.callbacks.metrics import GenerativeMetricsCallback
from lightning_gen.callbacks.performance import Performance
from lightning_gen.callbacks.progress import ProgressBar

__all__ = [
    "CompletionCallback",
    "GenerativeMetricsCallback",
    "ImageGridCallback",
    "LatentArithmeticCallback",
    "LatentInterpolationCallback",
    "LatentTraversalCallback",
    "OutlierAUROCCallback",
    "Performance",
    "ProgressBar",
    "image_grid",
    "log_grid",
    "save_grid",
]
