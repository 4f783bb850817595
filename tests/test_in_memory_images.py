"""MNIST's and CIFAR-10's images served from the uint8 array torchvision already holds
(datamodules/cache.py, ``in_memory_images``): the same bytes as torchvision's own per-item PIL
path, used only where that path leaves the images unchanged."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Subset
from torchvision.datasets import CIFAR10, MNIST

from datamodules.base import BinarizedDataset
from datamodules.cache import CollatedItems, InMemoryImages, collate
from datamodules.cifar10 import CIFAR10DataModule
from datamodules.heldout import MNISTHeldOutDataModule
from datamodules.mnist import MNISTDataModule
from tests import fakedata


def _setup(dm):
    dm.setup("fit")
    dm.setup("test")
    return dm


def _assert_items_equal_torchvisions_own(dataset: InMemoryImages) -> None:
    source = dataset.source  # the torchvision dataset: PIL image per item, then the transform
    assert isinstance(source, (MNIST, CIFAR10)) and len(dataset) == len(source) > 0
    for i in range(len(dataset)):
        (x, y), (x_ref, y_ref) = dataset[i], source[i]
        assert x.dtype == x_ref.dtype == torch.float32 and x.shape == x_ref.shape
        assert torch.equal(x, x_ref), i
        assert type(y) is type(y_ref) is int and y == y_ref, i
    # DataLoader batches go through __getitems__ (the whole batch converted at once), with
    # torch's default_collate or the DataModules' collate (which takes the batch as converted).
    for collate_fn in (None, collate):
        for (xa, ya), (xb, yb) in zip(DataLoader(dataset, batch_size=5, collate_fn=collate_fn),
                                      DataLoader(source, batch_size=5), strict=True):
            assert xa.dtype == xb.dtype and torch.equal(xa, xb)
            assert ya.dtype == yb.dtype and torch.equal(ya, yb)


def test_mnist_at_its_own_size_is_served_from_memory_to_the_byte(tmp_path):
    root = fakedata.write_mnist(tmp_path / "mnist", 24, 8)
    dm = _setup(MNISTDataModule(str(root), download=False, val_fraction=0.25, batch_size=6))
    assert isinstance(dm.train_set, Subset) and isinstance(dm.train_set.dataset, InMemoryImages)
    assert isinstance(dm.test_set, InMemoryImages)
    _assert_items_equal_torchvisions_own(dm.train_set.dataset)
    _assert_items_equal_torchvisions_own(dm.test_set)
    x = next(iter(dm.train_dataloader()))[0]
    assert x.shape == (6, 1, 28, 28) and x.min() >= -1 and x.max() <= 1 and x.std() > 0.1


def test_cifar10_at_its_own_size_is_served_from_memory_to_the_byte(tmp_path, no_md5):
    root = fakedata.write_cifar10(tmp_path / "cifar", 4)
    dm = _setup(CIFAR10DataModule(str(root), download=False, val_fraction=0.25))
    assert isinstance(dm.test_set, InMemoryImages)
    _assert_items_equal_torchvisions_own(dm.train_set.dataset)
    _assert_items_equal_torchvisions_own(dm.test_set)


def test_a_resizing_transform_keeps_torchvisions_own_path(tmp_path):
    root = fakedata.write_mnist(tmp_path / "mnist", 12, 4)
    dm = _setup(MNISTDataModule(str(root), image_size=32, download=False))
    assert type(dm.test_set) is MNIST
    assert dm.test_set[0][0].shape == (1, 32, 32)


def test_binarization_and_held_out_classes_work_on_top(tmp_path):
    root = fakedata.write_mnist(tmp_path / "mnist", 40, 8)
    static = _setup(MNISTDataModule(str(root), download=False, binarize="static"))
    assert isinstance(static.test_set, BinarizedDataset)
    assert isinstance(static.test_set.dataset, InMemoryImages)
    reference = BinarizedDataset(static.test_set.dataset.source, "static", "test")
    for i in range(len(reference)):  # the same bits as over torchvision's own items
        assert torch.equal(static.test_set[i][0], reference[i][0])

    held = _setup(MNISTHeldOutDataModule(held_out_class=3, data_dir=str(root), download=False,
                                         val_fraction=0.0))
    labels = [y for _, y in held.train_set]
    assert 3 not in labels and len(labels) == int((held.train_set.dataset.targets != 3).sum())


def test_the_datamodules_loaders_take_a_batch_as_converted(tmp_path):
    root = fakedata.write_mnist(tmp_path / "mnist", 24, 8)
    dm = _setup(MNISTDataModule(str(root), download=False, val_fraction=0.25, batch_size=6))
    loader = dm.train_dataloader()
    assert loader.collate_fn is collate
    items = dm.train_set.__getitems__([3, 0, 5])  # through the Subset, as the DataLoader reads
    assert isinstance(items, CollatedItems) and len(items) == 3
    images, labels = collate(items)
    assert images is items.images and labels is items.targets  # not made into items and stacked
    assert images.shape == (3, 1, 28, 28) and labels.dtype == torch.int64
    for k, i in enumerate((3, 0, 5)):
        x, y = dm.train_set[i]
        assert torch.equal(images[k], x) and labels[k].item() == y
