"""Callbacks: image grids, the run's metrics.csv / summary.json, what the lectures show about latent-variable models, evaluation
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
from lightning_gen.callbacks.metrics_file import MetricsFile
from lightning_gen.callbacks.performance import Performance
from lightning_gen.callbacks.progress import ProgressBar
from lightning_gen.callbacks.training_metrics import TrainingMetrics

__all__ = [
    "CompletionCallback",
    "GenerativeMetricsCallback",
    "ImageGridCallback",
    "LatentArithmeticCallback",
    "LatentInterpolationCallback",
    "LatentTraversalCallback",
    "MetricsFile",
    "OutlierAUROCCallback",
    "Performance",
    "ProgressBar",
    "TrainingMetrics",
    "image_grid",
    "log_grid",
    "save_grid",
]
