"""Callbacks: image grids, speed options (and, later, evaluation metrics)."""

from lightning_gen.callbacks.images import ImageGridCallback, image_grid, save_grid
from lightning_gen.callbacks.performance import Performance

__all__ = ["ImageGridCallback", "Performance", "image_grid", "save_grid"]
