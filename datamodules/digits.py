"""scikit-learn's 8x8 handwritten digits (UCI optdigits test set): 1,797 images, no network.

It ships inside scikit-learn, so the quickstart runs on an air-gapped laptop.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from datamodules.base import ImageDataModule


class _DigitsDataset(Dataset):
    def __init__(self, images: np.ndarray, labels: np.ndarray, transform) -> None:
        self.images = images  # (N, 8, 8) uint8
        self.labels = labels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        image = Image.fromarray(self.images[index], mode="L")
        return self.transform(image), int(self.labels[index])


class DigitsDataModule(ImageDataModule):
    """The 8x8 digits of ``sklearn.datasets.load_digits``, upsampled to ``image_size`` (32).

    A fixed permutation (independent of ``seed``) holds out 297 images as the test split.

    Args: see :class:`~datamodules.base.ImageDataModule`; ``data_dir`` and ``download`` are unused.
    """

    name = "sklearn digits"
    channels = 1
    num_classes = 10
    default_image_size = 32
    binarizable = True
    num_test = 297

    def make_dataset(self, split, transform, download):
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = np.clip(digits.images * (255.0 / 16.0), 0, 255).round().astype(np.uint8)
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(1234)).numpy()
        index = order[self.num_test:] if split == "train" else order[: self.num_test]
        return _DigitsDataset(images[index], digits.target[index], transform)

    def prepare_data(self) -> None:  # nothing to download
        pass
