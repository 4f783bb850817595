"""MNIST with one class held out of training: the setting of autoencoder outlier detection."""

from __future__ import annotations

from typing import Literal

import torch
from torch.utils.data import Dataset, Subset

from datamodules.mnist import MNISTDataModule


class MNISTHeldOutDataModule(MNISTDataModule):
    """MNIST whose training (and validation) split has no image of ``held_out_class``; the
    test split keeps all classes, so the held-out digits are the outliers to detect.

    Args:
        held_out_class: The digit removed from training.
        **kwargs: see :class:`~datamodules.base.ImageDataModule`.
    """

    def __init__(self, held_out_class: int = 0, data_dir: str = "data",
                 image_size: int | None = None, batch_size: int = 64, num_workers: int = 0,
                 val_fraction: float = 0.1, seed: int = 0, download: bool = True,
                 skip_corrupt: bool = False,
                 binarize: Literal["none", "dynamic", "static"] = "none",
                 cache: bool = False) -> None:
        if not 0 <= held_out_class < self.num_classes:
            raise ValueError(f"held_out_class must be in 0..9, got {held_out_class}")
        super().__init__(data_dir=data_dir, image_size=image_size, batch_size=batch_size,
                         num_workers=num_workers, val_fraction=val_fraction, seed=seed,
                         download=download, skip_corrupt=skip_corrupt, binarize=binarize,
                         cache=cache)
        self.held_out_class = held_out_class

    def _load(self, split: str, download: bool) -> Dataset:
        full = super()._load(split, download)
        if split != "train":
            return full
        keep = torch.nonzero(torch.as_tensor(full.targets) != self.held_out_class).flatten()
        return Subset(full, keep.tolist())
