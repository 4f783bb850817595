"""Paired colorization data (grayscale -> colour) from any colour image DataModule, for pix2pix
(Isola et al. 2017) as in Nazeri, Ng & Ebrahimi (2018), "Image Colorization using Generative
Adversarial Networks" (a conditional DCGAN on CIFAR-10 and Places365).

Batches are ``(source, target)``: the grayscale image ``(B, 1, H, W)`` and the colour image
``(B, 3, H, W)``, both in [-1, 1]. The colour image is the wrapped DataModule's (its 8-bit
levels, resized/cropped as that DataModule does); the grayscale image is its ITU-R 601-2 luma
computed as PIL's ``convert("L")`` does, in integers, so both convert back to 8-bit images
exactly (:func:`to_uint8`). Labels are dropped.

Nazeri et al. predict the a*b* channels of L*a*b*; here the generator predicts RGB directly (as
pix2pix's other tasks), so the evaluation metrics (PSNR, SSIM, LPIPS, FID) read its output
unchanged.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from datamodules.celeba import CelebADataModule
from datamodules.cifar10 import CIFAR10DataModule

# PIL's ImageConvert.c, RGB -> L: L = (R * 19595 + G * 38470 + B * 7471 + 0x8000) >> 16,
# i.e. 0.299 R + 0.587 G + 0.114 B rounded, in 16-bit fixed point.
_LUMA = (19595, 38470, 7471)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] images (as the DataModules normalise 8-bit levels ``v``: ``(v/255 - 0.5)/0.5``)
    back to their 8-bit levels."""
    return ((x.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


def from_uint8(v: torch.Tensor) -> torch.Tensor:
    """8-bit levels to [-1, 1] exactly as ``ToTensor`` + ``Normalize(0.5, 0.5)`` do."""
    return (v.float() / 255 - 0.5) / 0.5


def rgb_to_gray(x: torch.Tensor) -> torch.Tensor:
    """Luma of RGB images ``(..., 3, H, W)`` in [-1, 1] (8-bit levels) as ``(..., 1, H, W)`` in
    [-1, 1]: PIL's ``Image.convert("L")`` on the same 8-bit image, bit for bit."""
    if x.shape[-3] != 3:
        raise ValueError(f"colorization needs RGB images, got {x.shape[-3]} channel(s)")
    v = to_uint8(x).to(torch.int64)
    r, g, b = v.unbind(-3)
    luma = (r * _LUMA[0] + g * _LUMA[1] + b * _LUMA[2] + 0x8000) >> 16  # (..., H, W)
    return from_uint8(luma.unsqueeze(-3))


class ColorizationDataset(Dataset):
    """``(rgb_to_gray(x), x)`` for the images ``x`` of ``dataset`` (labels dropped)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        item = self.dataset[i]
        x = item[0] if isinstance(item, (list, tuple)) else item
        return rgb_to_gray(x), x


class ColorizationMixin:
    """Turns a colour :class:`~datamodules.base.ImageDataModule` into paired colorization data:
    every split (``load_split`` included) yields ``(gray, colour)``. ``image_shape`` stays the
    colour target's ``(3, H, W)`` (the model's output); ``source_shape`` is ``(1, H, W)``."""

    num_classes = 0  # the pairs carry no labels

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if getattr(cls, "channels", 3) != 3:
            raise TypeError(f"{cls.__name__}: colorization needs a colour (3-channel) dataset")

    @property
    def source_shape(self) -> tuple[int, int, int]:
        return (1, self.image_size, self.image_size)

    def _load(self, split: str, download: bool) -> Dataset:
        return ColorizationDataset(super()._load(split, download))


class CIFAR10ColorizationDataModule(ColorizationMixin, CIFAR10DataModule):
    """CIFAR-10 as (grayscale, colour) pairs, 32x32 (Nazeri et al. 2018's CIFAR-10 setting).

    Args: see :class:`~datamodules.base.ImageDataModule`.
    """


class CelebAColorizationDataModule(ColorizationMixin, CelebADataModule):
    """CelebA faces as (grayscale, colour) pairs, 64x64 by default; official partitions.

    Args: see :class:`~datamodules.base.ImageDataModule`.
    """
