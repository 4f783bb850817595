"""CIFAR-10 (Krizhevsky 2009) through torchvision: 32x32 colour images, 10 classes."""

from __future__ import annotations

from torchvision.datasets import CIFAR10

from datamodules.base import ImageDataModule


class CIFAR10DataModule(ImageDataModule):
    """CIFAR-10 in torchvision's layout ``data_dir/cifar-10-batches-py/`` (pickled batches).

    Args: see :class:`~datamodules.base.ImageDataModule`; ``image_size`` defaults to 32.
    """

    name = "CIFAR-10"
    channels = 3
    num_classes = 10
    default_image_size = 32
    classes = ("airplane", "automobile", "bird", "cat", "deer",
               "dog", "frog", "horse", "ship", "truck")
    download_hint = (
        "Get cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html and unpack "
        "it into that folder, or run once with network access."
    )

    def make_dataset(self, split, transform, download):
        return CIFAR10(self.data_dir, train=split == "train", transform=transform, download=download)

    def expected_files(self) -> list[str]:
        names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]
        return [f"cifar-10-batches-py/{n}" for n in names]
