"""Unpaired two-domain data for image-to-image translation (CycleGAN, Zhu et al. 2017).

Batches are ``(x_a, x_b)``: an image of domain A and an unrelated image of domain B, both
``(B, C, H, W)`` in [-1, 1]. Pairs are drawn by a fixed random permutation of B, so nothing
links ``x_a[i]`` to ``x_b[i]``.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset, Subset

from datamodules.celeba import CelebADataModule
from datamodules.mnist import MNISTDataModule


class UnpairedDataset(Dataset):
    """``(a[i], b[perm[i % len(b)]])`` for ``i < max(len(a), len(b))``; ``a`` indexed cyclically."""

    def __init__(self, a: Dataset, b: Dataset, seed: int = 0) -> None:
        if len(a) == 0 or len(b) == 0:
            raise ValueError(f"both domains need images, got {len(a)} (A) and {len(b)} (B); "
                             "choose another attribute or split")
        self.a, self.b = a, b
        self.perm = torch.randperm(len(b), generator=torch.Generator().manual_seed(seed))

    def __len__(self) -> int:
        return max(len(self.a), len(self.b))

    def __getitem__(self, i: int):
        x_a = _image(self.a[i % len(self.a)])
        x_b = _image(self.b[int(self.perm[i % len(self.b)])])
        return x_a, x_b


def _image(item):
    return item[0] if isinstance(item, (list, tuple)) else item


class _Inverted(Dataset):
    """The images of ``dataset`` with inverted intensities (``-x`` on the [-1, 1] scale)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        x, y = self.dataset[i]
        return -x, y


class CelebAUnpairedDataModule(CelebADataModule):
    """CelebA split by one attribute: A = faces without it, B = faces with it (e.g. not smiling
    -> smiling, male -> female with ``invert_attribute``), per official partition.

    Args:
        attribute: CelebA attribute name that defines the domains (``"Smiling"``).
        invert_attribute: Swap the domains (A = with the attribute).
        **kwargs: see :class:`~datamodules.base.ImageDataModule`.
    """

    def __init__(self, attribute: str = "Smiling", invert_attribute: bool = False,
                 data_dir: str = "data", image_size: int | None = None, batch_size: int = 1,
                 num_workers: int = 0, val_fraction: float = 0.1, seed: int = 0,
                 download: bool = True, skip_corrupt: bool = False, cache: bool = False) -> None:
        super().__init__(data_dir=data_dir, image_size=image_size, batch_size=batch_size,
                         num_workers=num_workers, val_fraction=val_fraction, seed=seed,
                         download=download, skip_corrupt=skip_corrupt, cache=cache)
        self.attribute_idx = self.attribute_index(attribute)
        self.invert_attribute = invert_attribute

    def _load(self, split: str, download: bool) -> Dataset:
        full = super()._load(split, download)
        has = full.attr[:, self.attribute_idx].bool()
        if self.invert_attribute:
            has = ~has
        a = Subset(full, torch.nonzero(~has).flatten().tolist())
        b = Subset(full, torch.nonzero(has).flatten().tolist())
        return UnpairedDataset(a, b, seed=self.seed)


class MNISTInvertedDataModule(MNISTDataModule):
    """A = MNIST digits, B = colour-inverted MNIST digits (white on black -> black on white),
    unpaired: a translation problem with a known answer (``G(x) = -x``), small enough for tests.

    Args: see :class:`~datamodules.base.ImageDataModule`.
    """

    def _load(self, split: str, download: bool) -> Dataset:
        full = super()._load(split, download)
        return UnpairedDataset(full, _Inverted(full), seed=self.seed)
