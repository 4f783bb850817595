"""LightningDataModules of lightning-gen: images normalised to [-1, 1], batches ``(x, y)``."""

from datamodules.base import DatasetNotFoundError, ImageDataModule
from datamodules.celeba import CelebADataModule
from datamodules.celeba_attributes import CelebAAttributesDataModule, ResamplingSampler
from datamodules.cifar10 import CIFAR10DataModule
from datamodules.colorization import (
    CelebAColorizationDataModule,
    CIFAR10ColorizationDataModule,
    ColorizationDataset,
)
from datamodules.digits import DigitsDataModule
from datamodules.heldout import MNISTHeldOutDataModule
from datamodules.mnist import MNISTDataModule
from datamodules.superres import CelebASuperResDataModule, CIFAR10SuperResDataModule
from datamodules.unpaired import CelebAUnpairedDataModule, MNISTInvertedDataModule, UnpairedDataset

__all__ = [
    "CIFAR10DataModule",
    "CelebADataModule",
    "CelebAUnpairedDataModule",
    "DatasetNotFoundError",
    "DigitsDataModule",
    "ImageDataModule",
    "MNISTDataModule",
    "MNISTHeldOutDataModule",
    "MNISTInvertedDataModule",
    "UnpairedDataset",
    "CIFAR10SuperResDataModule",
    "CelebASuperResDataModule",
    "CIFAR10ColorizationDataModule",
    "CelebAColorizationDataModule",
    "ColorizationDataset",
    "CelebAAttributesDataModule",
    "ResamplingSampler",
]
