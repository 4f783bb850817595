"""Callbacks: image grids and evaluation metrics (FID / IS / KID / precision-recall)."""

from lightning_gen.callbacks.images import ImageGridCallback, image_grid, save_grid
from lightning_gen.callbacks.metrics import GenerativeMetricsCallback

__all__ = ["GenerativeMetricsCallback", "ImageGridCallback", "image_grid", "save_grid"]
