"""LightningDataModules of lightning-gen: images normalised to [-1, 1], batches ``(x, y)``."""

from datamodules.base import DatasetNotFoundError, ImageDataModule
from datamodules.celeba import CelebADataModule
from datamodules.cifar10 import CIFAR10DataModule
from datamodules.digits import DigitsDataModule
from datamodules.mnist import MNISTDataModule

__all__ = [
    "CIFAR10DataModule",
    "CelebADataModule",
    "DatasetNotFoundError",
    "DigitsDataModule",
    "ImageDataModule",
    "MNISTDataModule",
]
