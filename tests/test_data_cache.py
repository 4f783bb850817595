"""The decoded-image cache (``--data.cache true``, datamodules/cache.py): byte-equal to the
uncached pipeline, built once, never trusted after an interrupted build, written by one process
when several ask at once."""

from __future__ import annotations

import inspect
import json
import multiprocessing as mp
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import datamodules
from datamodules import cache as cache_mod
from datamodules.base import ImageDataModule
from datamodules.cache import collate
from datamodules.celeba import CelebADataModule
from datamodules.cifar10 import CIFAR10DataModule
from datamodules.mnist import MNISTDataModule
from datamodules.unpaired import CelebAUnpairedDataModule
from tests import fakedata

FORK = mp.get_context("fork")


@pytest.fixture
def celeba(tmp_path, no_md5):
    return fakedata.write_celeba(tmp_path / "celeba", n=15)


def _entries(data_dir: Path) -> list[Path]:
    root = Path(data_dir) / "lightning_gen_cache"
    return sorted(p for p in root.iterdir() if p.is_dir()) if root.exists() else []


def _splits(dm: ImageDataModule):
    dm.prepare_data()
    dm.setup()
    return {"train": dm.train_set, "val": dm.val_set, "test": dm.test_set}


def _assert_same_items(a, b) -> None:
    assert len(a) == len(b) > 0
    for i in range(len(a)):
        (xa, ya), (xb, yb) = a[i], b[i]
        assert xa.dtype == xb.dtype and torch.equal(xa, xb), i
        if isinstance(ya, torch.Tensor):
            assert ya.dtype == yb.dtype and torch.equal(ya, yb), i
        else:
            assert type(ya) is type(yb) and ya == yb, i


@pytest.mark.parametrize("kind", ["celeba", "mnist", "cifar10"])
def test_cached_images_equal_the_uncached_pipeline_to_the_byte(kind, tmp_path, no_md5):
    if kind == "celeba":  # JPEG decode, resize 178x218 -> 24x29, centre crop 24x24
        root, cls, size = fakedata.write_celeba(tmp_path / "d", n=15), CelebADataModule, 24
    elif kind == "mnist":  # resize 28 -> 20
        root, cls, size = fakedata.write_mnist(tmp_path / "d", 24, 8), MNISTDataModule, 20
    else:
        root, cls, size = fakedata.write_cifar10(tmp_path / "d", 4), CIFAR10DataModule, 32
    plain = _splits(cls(str(root), image_size=size, download=False, val_fraction=0.25))
    cached = _splits(cls(str(root), image_size=size, download=False, val_fraction=0.25,
                         cache=True))
    for split in plain:
        _assert_same_items(plain[split], cached[split])
        # DataLoader batches (read through CachedImages.__getitems__) are the same too, with
        # torch's default_collate and with the DataModules' collate (the batch collated once).
        for collate_fn in (None, collate):
            for (xa, ya), (xb, yb) in zip(
                    DataLoader(plain[split], batch_size=4),
                    DataLoader(cached[split], batch_size=4, collate_fn=collate_fn), strict=True):
                assert xa.dtype == xb.dtype and torch.equal(xa, xb)
                assert ya.dtype == yb.dtype and torch.equal(ya, yb)
    # The stored bytes are the resized/cropped images, before ToTensor/Normalize.
    dm = cls(str(root), image_size=size, download=False)
    pil_steps, _ = cache_mod.split_transform(dm.transform())
    source = dm.make_dataset("test", pil_steps, download=False)
    entry = next(p for p in _entries(root) if "-test-" in p.name)
    stored = np.load(entry / "images.npy")
    assert stored.shape == (len(source), size, size, dm.channels) and stored.dtype == np.uint8
    for i in range(len(source)):
        expected = np.asarray(source[i][0])
        assert np.array_equal(stored[i], expected.reshape(stored[i].shape)), i


def test_several_dataloader_workers_read_the_cache(celeba):
    plain = _splits(CelebADataModule(str(celeba), image_size=16, download=False))["train"]
    dm = CelebADataModule(str(celeba), image_size=16, download=False, cache=True)
    cached = _splits(dm)["train"]
    loader = DataLoader(cached, batch_size=3, num_workers=2, collate_fn=collate)
    batches = list(loader)
    assert sum(len(x) for x, _ in batches) == len(plain)
    x = torch.cat([x for x, _ in batches])
    assert torch.equal(x, torch.stack([plain[i][0] for i in range(len(plain))]))
    assert torch.equal(torch.cat([y for _, y in batches]),
                       torch.stack([plain[i][1] for i in range(len(plain))]))


def test_the_cache_is_built_once_and_keyed_by_size(celeba, monkeypatch):
    writes: list[Path] = []
    real_write = cache_mod._write
    monkeypatch.setattr(cache_mod, "_write", lambda src, folder, *a: (writes.append(folder),
                                                                      real_write(src, folder, *a)))
    _splits(CelebADataModule(str(celeba), image_size=16, download=False, cache=True))
    assert len(writes) == 3  # train, valid, test
    entries = _entries(celeba)
    stamps = {p: (p / "images.npy").stat().st_mtime_ns for p in entries}
    # A second run (and the dynamic re-loads within one) reads the entries it finds.
    dm = CelebADataModule(str(celeba), image_size=16, download=False, cache=True)
    _splits(dm)
    assert len(writes) == 3
    assert {p: (p / "images.npy").stat().st_mtime_ns for p in _entries(celeba)} == stamps
    assert isinstance(dm.train_set, cache_mod.CachedImages)
    # Another size is another entry, and the old ones stay.
    _splits(CelebADataModule(str(celeba), image_size=8, download=False, cache=True))
    assert len(writes) == 6 and len(_entries(celeba)) == 6
    assert {"celeba-train-16x16x3", "celeba-train-8x8x3"} <= {p.name.rsplit("-", 1)[0]
                                                                for p in _entries(celeba)}


def test_without_cache_nothing_is_written_and_datasets_are_unchanged(celeba):
    dm = CelebADataModule(str(celeba), image_size=16, download=False)
    splits = _splits(dm)
    assert not (celeba / "lightning_gen_cache").exists()
    assert not any(isinstance(s, cache_mod.CachedImages) for s in splits.values())


def test_the_unpaired_wrapper_reads_attributes_through_the_cache(celeba):
    plain = _splits(CelebAUnpairedDataModule("Smiling", data_dir=str(celeba), image_size=16,
                                             download=False))
    cached = _splits(CelebAUnpairedDataModule("Smiling", data_dir=str(celeba), image_size=16,
                                              download=False, cache=True))
    for split in plain:
        a, b = plain[split], cached[split]
        assert len(a) == len(b)
        for i in range(len(a)):
            assert all(torch.equal(u, v) for u, v in zip(a[i], b[i], strict=True))



@pytest.mark.parametrize("paired", ["superres", "colorization"])
def test_the_paired_wrappers_read_their_pairs_through_the_cache(paired, tmp_path, no_md5):
    from datamodules import CIFAR10ColorizationDataModule, CIFAR10SuperResDataModule

    root = str(fakedata.write_cifar10(tmp_path / "d", 4))

    def make(**kw):
        if paired == "superres":
            return CIFAR10SuperResDataModule(data_dir=root, download=False, **kw)
        return CIFAR10ColorizationDataModule(root, download=False, **kw)

    plain, cached = _splits(make()), _splits(make(cache=True))
    assert _entries(Path(root))  # the cache was written and is what the pairs come from
    for split in plain:
        a, b = plain[split], cached[split]
        assert len(a) == len(b) > 0
        for i in range(len(a)):
            assert all(torch.equal(u, v) for u, v in zip(a[i], b[i], strict=True)), i

def _build_and_die(data_dir: str) -> None:
    """Child process: start building the train entry, SIGKILL itself after the first batch."""
    real = cache_mod.decoded_batches

    def dying(source, num_workers, batch_size=256):
        for i, batch in enumerate(real(source, num_workers, batch_size=4)):
            if i == 1:
                os.kill(os.getpid(), signal.SIGKILL)
            yield batch

    cache_mod.decoded_batches = dying
    CelebADataModule(data_dir, image_size=16, download=False, cache=True)._load("train", False)


def test_an_interrupted_build_leaves_nothing_a_later_run_trusts(celeba):
    child = FORK.Process(target=_build_and_die, args=(str(celeba),))
    child.start()
    child.join(60)
    assert child.exitcode == -signal.SIGKILL
    root = celeba / "lightning_gen_cache"
    leftovers = [p for p in root.iterdir() if ".tmp-" in p.name]
    assert len(leftovers) == 1 and (leftovers[0] / "images.npy").exists()
    assert not (leftovers[0] / "meta.json").exists()
    assert not [p for p in _entries(celeba) if ".tmp-" not in p.name]
    # A later run builds a complete entry, removes the leftover, and serves the right bytes.
    plain = _splits(CelebADataModule(str(celeba), image_size=16, download=False))
    cached = _splits(CelebADataModule(str(celeba), image_size=16, download=False, cache=True))
    assert not [p for p in root.iterdir() if ".tmp-" in p.name]
    _assert_same_items(plain["train"], cached["train"])

    # An entry damaged after the fact (a truncated array) is not trusted either: rebuilt.
    entry = cached["train"].entry
    images = entry / "images.npy"
    images.write_bytes(images.read_bytes()[:-100])
    n = len(cached["train"])
    assert not cache_mod.entry_is_valid(entry, n, (16, 16, 3))
    again = _splits(CelebADataModule(str(celeba), image_size=16, download=False, cache=True))
    assert cache_mod.entry_is_valid(entry, n, (16, 16, 3))
    _assert_same_items(plain["train"], again["train"])
    meta = json.loads((entry / "meta.json").read_text())
    assert meta["complete"] and meta["n"] == n


def _rank(data_dir: str, rank: int, barrier, log: str) -> None:
    """A simulated DDP rank: all ranks ask for the same entry at the same moment."""
    os.environ["LOCAL_RANK"] = os.environ["RANK"] = str(rank)
    real = cache_mod._write

    def slow_write(source, folder, *args):
        with open(log, "a") as f:
            f.write(f"{rank}\n")
        time.sleep(0.5)  # long enough that an unlocked rank would start writing too
        real(source, folder, *args)

    cache_mod._write = slow_write
    dm = CelebADataModule(data_dir, image_size=16, download=False, cache=True)
    barrier.wait(30)
    dataset = dm._load("train", False)
    assert isinstance(dataset, cache_mod.CachedImages) and dataset[0][0].shape == (3, 16, 16)


def test_two_ranks_do_not_both_write_the_cache(celeba, tmp_path):
    log = tmp_path / "writers.log"
    barrier = FORK.Barrier(2)
    ranks = [FORK.Process(target=_rank, args=(str(celeba), r, barrier, str(log)))
             for r in range(2)]
    for p in ranks:
        p.start()
    for p in ranks:
        p.join(60)
    assert [p.exitcode for p in ranks] == [0, 0]
    assert len(log.read_text().split()) == 1  # one writer; the other waited, then read
    assert len(_entries(celeba)) == 1


def test_every_image_datamodule_takes_the_cache_option():
    classes = [getattr(datamodules, n) for n in datamodules.__all__]
    classes = [c for c in classes if isinstance(c, type) and issubclass(c, ImageDataModule)]
    assert len(classes) >= 6
    for cls in classes:
        assert inspect.signature(cls.__init__).parameters["cache"].default is False, cls


def test_unsupported_transforms_raise_a_clear_error(celeba):
    class NoToTensor(CelebADataModule):
        def transform(self):
            return lambda image: image

    with pytest.raises(ValueError, match="drop --data.cache"):
        NoToTensor(str(celeba), download=False, cache=True)._load("test", False)


def test_the_data_benchmark_reports_every_datamodule_raw_and_cached(capsys, tmp_path):
    """benchmarks/data.py at toy sizes: a JSON line per measurement, a table row per mode, and
    torchvision's integrity checks restored afterwards. The figures are not checked."""
    import importlib.util

    import torchvision.datasets.cifar as cifar

    check = cifar.check_integrity
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "data.py"
    spec = importlib.util.spec_from_file_location("bench_data", path)
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench  # dataclasses look their module up there
    spec.loader.exec_module(bench)
    rows = bench.main(["--workers", "1", "--seconds", "0.05", "--celeba-images", "20",
                       "--mnist-images", "120", "--cifar-per-batch", "20",
                       "--data-dir", str(tmp_path / "bench")])
    out = capsys.readouterr().out
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert lines == rows
    cases = {c.name for c in bench.CASES}
    assert {(r["datamodule"], r["mode"], r["in_process"]) for r in rows} == {
        (c, m, p) for c in cases for m in ("raw", "cached") for p in (True, False)}
    assert all(r["images_per_s"] > 0 and (r["mode"] == "raw" or r["cache_mb"] > 0) for r in rows)
    table_modes = [line.split("|")[3].strip() for line in out.splitlines()
                   if line.startswith("| ") and line.split("|")[1].strip() in cases]
    assert table_modes == ["raw", "cached"] * len(cases)
    assert cifar.check_integrity is check


def test_a_read_only_data_folder_is_a_clear_error(celeba, monkeypatch):
    def read_only(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "mkdir", read_only)
    with pytest.raises(ValueError, match="make the data folder writable or drop --data.cache"):
        CelebADataModule(str(celeba), download=False, cache=True)._load("test", False)
