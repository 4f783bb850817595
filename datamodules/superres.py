"""Paired super-resolution data (SRGAN, Ledig et al. 2017): ``(low-res, high-res)`` pairs made
from any image DataModule by bicubic downsampling of its images.

Batches are ``(source, target)``: ``target`` the DataModule's image ``(B, C, H, W)`` in [-1, 1],
``source`` the same image bicubically downsampled by ``scale_factor`` to ``(B, C, H/s, W/s)``
(antialiased, as MATLAB's ``imresize`` the paper used; clamped to [-1, 1]). ``image_shape`` is
the target's: the model's output shape.

:class:`SuperResolutionMixin` makes the paired variant of any
:class:`~datamodules.base.ImageDataModule` subclass (``class X(SuperResolutionMixin, Base)`` whose
constructor calls ``_init_superres(scale_factor)``); :class:`CIFAR10SuperResDataModule` and
:class:`CelebASuperResDataModule` are the two the experiments use.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from datamodules.celeba import CelebADataModule
from datamodules.cifar10 import CIFAR10DataModule


def bicubic_downsample(x: torch.Tensor, scale_factor: int) -> torch.Tensor:
    """``(..., C, H, W)`` in [-1, 1] -> ``(..., C, H/s, W/s)`` by antialiased bicubic
    interpolation, clamped to [-1, 1]."""
    h, w = x.shape[-2:]
    batched = x.reshape(-1, *x.shape[-3:]).float()
    low = F.interpolate(batched, size=(h // scale_factor, w // scale_factor), mode="bicubic",
                        align_corners=False, antialias=True)
    return low.clamp(-1, 1).reshape(*x.shape[:-2], h // scale_factor, w // scale_factor)


class DownsampledPairs(Dataset):
    """``(bicubic_downsample(x_i), x_i)`` for the images ``x_i`` of ``dataset`` (labels dropped)."""

    def __init__(self, dataset: Dataset, scale_factor: int) -> None:
        self.dataset = dataset
        self.scale_factor = scale_factor

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        item = self.dataset[i]
        target = item[0] if isinstance(item, (list, tuple)) else item
        return bicubic_downsample(target, self.scale_factor), target


class SuperResolutionMixin:
    """Turns an :class:`ImageDataModule` subclass into its paired super-resolution variant.

    The subclass's constructor takes ``scale_factor`` (4 in the paper) before the usual options.
    """

    scale_factor: int = 4
    paired: bool = True

    def _init_superres(self, scale_factor: int) -> None:
        if scale_factor < 2:
            raise ValueError(f"scale_factor must be at least 2, got {scale_factor}")
        if self.image_size % scale_factor:
            raise ValueError(f"image_size {self.image_size} is not divisible by scale_factor "
                             f"{scale_factor}; choose a multiple of {scale_factor}")
        self.scale_factor = scale_factor

    @property
    def source_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the low-resolution inputs."""
        c, h, w = self.image_shape
        return (c, h // self.scale_factor, w // self.scale_factor)

    def _load(self, split: str, download: bool) -> Dataset:
        return DownsampledPairs(super()._load(split, download), self.scale_factor)


class CIFAR10SuperResDataModule(SuperResolutionMixin, CIFAR10DataModule):
    """CIFAR-10 as ``(8x8, 32x32)`` pairs at ``scale_factor=4``.

    Args:
        scale_factor: Downsampling factor (4).
        **kwargs: see :class:`~datamodules.base.ImageDataModule`.
    """

    def __init__(self, scale_factor: int = 4, data_dir: str = "data",
                 image_size: int | None = None, batch_size: int = 16, num_workers: int = 0,
                 val_fraction: float = 0.1, seed: int = 0, download: bool = True,
                 skip_corrupt: bool = False, cache: bool = False) -> None:
        super().__init__(data_dir=data_dir, image_size=image_size, batch_size=batch_size,
                         num_workers=num_workers, val_fraction=val_fraction, seed=seed,
                         download=download, skip_corrupt=skip_corrupt, cache=cache)
        self._init_superres(scale_factor)


class CelebASuperResDataModule(SuperResolutionMixin, CelebADataModule):
    """CelebA faces as ``(H/s, H)`` pairs (``image_size`` 128, ``scale_factor`` 4: 32 -> 128).

    Args:
        scale_factor: Downsampling factor (4).
        **kwargs: see :class:`~datamodules.base.ImageDataModule`.
    """

    default_image_size = 128

    def __init__(self, scale_factor: int = 4, data_dir: str = "data",
                 image_size: int | None = None, batch_size: int = 16, num_workers: int = 0,
                 val_fraction: float = 0.1, seed: int = 0, download: bool = True,
                 skip_corrupt: bool = False, cache: bool = False) -> None:
        super().__init__(data_dir=data_dir, image_size=image_size, batch_size=batch_size,
                         num_workers=num_workers, val_fraction=val_fraction, seed=seed,
                         download=download, skip_corrupt=skip_corrupt, cache=cache)
        self._init_superres(scale_factor)

