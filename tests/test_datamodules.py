"""DataModules read torchvision's real on-disk formats, written small by tests/fakedata.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from datamodules import (
    CelebADataModule,
    CIFAR10DataModule,
    DatasetNotFoundError,
    DigitsDataModule,
    MNISTDataModule,
)
from datamodules.celeba import ATTRIBUTES
from tests import fakedata


def first_batch(dm):
    dm.prepare_data()
    dm.setup("fit")
    return next(iter(dm.train_dataloader()))


def test_mnist_reads_idx_files_into_normalised_batches(mnist_dir):
    dm = MNISTDataModule(str(mnist_dir), batch_size=16)
    x, y = first_batch(dm)
    assert dm.image_shape == (1, 28, 28) and dm.num_classes == 10
    assert x.shape == (16, 1, 28, 28) and x.dtype == torch.float32
    assert x.min() >= -1.0 and x.max() <= 1.0 and x.min() < -0.9 and x.max() > 0.9
    assert y.dtype == torch.int64 and int(y.max()) <= 9


def test_mnist_pixels_match_the_idx_bytes(mnist_dir):
    dm = MNISTDataModule(str(mnist_dir), batch_size=4)
    dm.prepare_data()
    dm.setup("test")
    x, y = dm.test_set[0]
    raw = (mnist_dir / "MNIST/raw/t10k-images-idx3-ubyte").read_bytes()[16:16 + 28 * 28]
    expected = torch.tensor(np.frombuffer(raw, np.uint8).reshape(1, 28, 28) / 255.0 * 2 - 1)
    assert torch.allclose(x.double(), expected, atol=1e-6)
    label = (mnist_dir / "MNIST/raw/t10k-labels-idx1-ubyte").read_bytes()[8]
    assert y == label


def test_cifar10_reads_pickled_batches(cifar10_dir):
    dm = CIFAR10DataModule(str(cifar10_dir), batch_size=8, val_fraction=0.25)
    x, y = first_batch(dm)
    assert dm.image_shape == (3, 32, 32) and x.shape == (8, 3, 32, 32)
    assert len(dm.train_set) + len(dm.val_set) == 5 * 16 and len(dm.val_set) == 20
    dm.setup("test")
    assert len(dm.test_set) == 16


def test_celeba_reads_folder_and_attribute_lists(celeba_dir):
    dm = CelebADataModule(str(celeba_dir), batch_size=4)
    x, y = first_batch(dm)
    assert dm.image_shape == (3, 64, 64) and x.shape == (4, 3, 64, 64)
    assert y.shape == (4, 40) and set(y.unique().tolist()) <= {0, 1}
    assert dm.attribute_names == ATTRIBUTES and len(ATTRIBUTES) == 40
    # The official partition: 60% train, 20% valid, 20% test of the 30 written images.
    assert (len(dm.train_set), len(dm.val_set)) == (18, 6)
    # Smiling (written for even-numbered files) comes through at its index, in file order.
    smiling = dm.attribute_index("Smiling")
    _, target = dm.train_set[0]
    assert target[smiling] == 1
    _, target = dm.train_set[1]
    assert target[smiling] == 0


def test_celeba_default_is_a_64px_centre_crop_of_the_aligned_face(celeba_dir):
    dm = CelebADataModule(str(celeba_dir))
    image = Image.open(celeba_dir / "celeba/img_align_celeba/000001.jpg")
    assert image.size == (178, 218)
    out = dm.transform()(image)
    assert out.shape == (3, 64, 64)


def test_image_size_option_resizes(mnist_dir):
    dm = MNISTDataModule(str(mnist_dir), image_size=32, batch_size=4)
    x, _ = first_batch(dm)
    assert dm.image_shape == (1, 32, 32) and x.shape == (4, 1, 32, 32)


def test_train_val_split_is_deterministic_in_the_seed(mnist_dir):
    def val_indices(seed):
        dm = MNISTDataModule(str(mnist_dir), val_fraction=0.25, seed=seed)
        dm.setup("fit")
        return sorted(dm.val_set.indices)

    assert val_indices(0) == val_indices(0)
    assert val_indices(0) != val_indices(1)
    assert len(val_indices(0)) == 32  # 25% of 128


def test_digits_ship_with_scikit_learn():
    dm = DigitsDataModule(batch_size=32, val_fraction=0.1)
    x, y = first_batch(dm)
    assert dm.image_shape == (1, 32, 32) and x.shape == (32, 1, 32, 32)
    dm.setup("test")
    assert len(dm.train_set) + len(dm.val_set) + len(dm.test_set) == 1797


@pytest.mark.parametrize("cls", [MNISTDataModule, CIFAR10DataModule, CelebADataModule])
def test_missing_files_without_network_give_one_clear_error_and_write_nothing(cls, tmp_path):
    root = tmp_path / "nothing-here"
    with pytest.raises(DatasetNotFoundError) as info:
        cls(str(root), download=False).prepare_data()
    message = str(info.value)
    assert str(root) in message and "Expected files" in message
    assert not root.exists()


def test_failed_download_removes_the_folders_it_created(tmp_path, monkeypatch):
    import torchvision.datasets.mnist as mnist

    def no_network(*args, **kwargs):
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setattr(mnist, "download_and_extract_archive", no_network)
    root = tmp_path / "data"
    with pytest.raises(DatasetNotFoundError, match="MNIST/raw/train-images-idx3-ubyte"):
        MNISTDataModule(str(root), download=True).prepare_data()
    assert not root.exists()


def test_bad_options_are_rejected_early():
    with pytest.raises(ValueError, match="val_fraction"):
        MNISTDataModule(val_fraction=1.5)
    with pytest.raises(ValueError, match="batch_size"):
        MNISTDataModule(batch_size=0)


def test_fake_idx_writer_matches_the_idx_spec(tmp_path):
    path = tmp_path / "x"
    fakedata.write_idx(path, np.arange(6, dtype=np.uint8).reshape(2, 3))
    data = path.read_bytes()
    assert data[:4] == bytes([0, 0, 8, 2])
    assert int.from_bytes(data[4:8], "big") == 2 and int.from_bytes(data[8:12], "big") == 3
    assert list(data[12:]) == [0, 1, 2, 3, 4, 5]


@pytest.mark.parametrize("make", [
    lambda d: MNISTDataModule(str(d["mnist"]), binarize="static", val_fraction=0.25),
    lambda d: MNISTDataModule(str(d["mnist"]), cache=True, val_fraction=0.25),
    lambda d: DigitsDataModule(image_size=16, val_fraction=0.25),
    lambda d: CIFAR10DataModule(str(d["cifar10"]), val_fraction=0.25),
    lambda d: CelebADataModule(str(d["celeba"]), image_size=32),
], ids=["mnist-binarized", "mnist-cached", "digits", "cifar10", "celeba"])
def test_loader_batches_are_the_datasets_items(make, mnist_dir, cifar10_dir, celeba_dir):
    # A model sees the DataLoaders' batches, which may be read a batch at a time past the
    # items (in-memory and cached images): they must be the items, to the byte.
    from torch.utils.data import default_collate

    dm = make({"mnist": mnist_dir, "cifar10": cifar10_dir, "celeba": celeba_dir})
    dm.batch_size, dm.num_workers = 4, 0
    dm.setup("fit")
    dm.setup("test")
    for dataset, loader in ((dm.val_set, dm.val_dataloader()), (dm.test_set, dm.test_dataloader())):
        x, y = next(iter(loader))
        want_x, want_y = default_collate([dataset[i] for i in range(4)])
        assert x.dtype == want_x.dtype and torch.equal(x, want_x)
        assert torch.equal(torch.as_tensor(y), torch.as_tensor(want_y))
