"""MNIST (LeCun et al. 1998) through torchvision: 28x28 grey digits, 10 classes."""

from __future__ import annotations

import os

from torchvision.datasets import MNIST
from torchvision.datasets.mnist import read_sn3_pascalvincent_tensor

from datamodules.base import ImageDataModule


class MNISTDataModule(ImageDataModule):
    """MNIST in torchvision's layout ``data_dir/MNIST/raw/*-ubyte`` (downloaded when missing).

    Args: see :class:`~datamodules.base.ImageDataModule`; ``image_size`` defaults to 28.
    """

    name = "MNIST"
    channels = 1
    num_classes = 10
    default_image_size = 28
    binarizable = True
    download_hint = (
        "Get them from http://yann.lecun.com/exdb/mnist/ (or any MNIST mirror), gunzip them "
        "into that folder, or run once with network access."
    )

    replace_hint = ("Unpack it again from its .gz (http://yann.lecun.com/exdb/mnist/ or a "
                    "mirror), or delete it and run once with network access.")

    def make_dataset(self, split, transform, download):
        return MNIST(self.data_dir, train=split == "train", transform=transform, download=download)

    def expected_files(self) -> list[str]:
        names = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                 "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
        return [f"MNIST/raw/{n}" for n in names]

    def corrupt_file(self) -> tuple[str, str] | None:
        # torchvision's own reader: a truncated file fails its shape check.
        for name in self.expected_files():
            path = os.path.join(self.data_dir, name)
            try:
                read_sn3_pascalvincent_tensor(path, strict=False)
            except Exception as err:  # noqa: BLE001 - any failure means this file is damaged
                return path, f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        return None
