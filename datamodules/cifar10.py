"""CIFAR-10 (Krizhevsky 2009) through torchvision: 32x32 colour images, 10 classes."""

from __future__ import annotations

import os
import pickle

from torchvision.datasets import CIFAR10, cifar

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

    replace_hint = ("Unpack cifar-10-python.tar.gz again (https://www.cs.toronto.edu/~kriz/"
                    "cifar.html), or delete the folder and run once with network access.")

    def make_dataset(self, split, transform, download):
        return CIFAR10(self.data_dir, train=split == "train", transform=transform, download=download)

    def expected_files(self) -> list[str]:
        names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]
        return [f"cifar-10-batches-py/{n}" for n in names]

    def corrupt_file(self) -> tuple[str, str] | None:
        for name, md5 in [*CIFAR10.train_list, *CIFAR10.test_list, (CIFAR10.meta["filename"],
                                                                    CIFAR10.meta["md5"])]:
            path = os.path.join(self.data_dir, CIFAR10.base_folder, name)
            try:
                with open(path, "rb") as f:
                    pickle.load(f, encoding="latin1")
            except Exception as err:  # noqa: BLE001 - any failure means this file is damaged
                return path, f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            if not cifar.check_integrity(path, md5):
                return path, "its md5 sum is not the published one"
        return None
