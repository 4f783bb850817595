"""Callbacks: image grids (and, later, evaluation metrics)."""

from lightning_gen.callbacks.images import ImageGridCallback, image_grid, save_grid

__all__ = ["ImageGridCallback", "image_grid", "save_grid"]
