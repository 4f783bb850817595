"""Data throughput of the DataModules: images/s of one worker and of N DataLoader workers, from
the raw files and from the decoded-image cache (``--data.cache true``, datamodules/cache.py).

The script writes format-true files at realistic sizes into ``--data-dir`` (a temporary folder
by default): MNIST IDX files (28x28), CIFAR-10 pickles (32x32), CelebA 178x218 aligned-face-sized
JPEGs (smooth content at quality 90, ~8 KB each like the real ones; the mean size is printed).
torchvision's md5 checks are replaced by "the file exists" for these files. For each
DataModule and each mode (``raw``: decode + transform per image, or for MNIST and CIFAR-10 at
their own size the array torchvision holds in memory; ``cached``: read the uint8
memory map + ToTensor/Normalize) it times the training split through a DataLoader
(``--batch-size``, shuffled, as in training):

* ``1 worker``: ``num_workers=0``, the loading done in this process: what one worker delivers.
  Also per CPU-second of this process (``img/CPU-s``), the figure least disturbed by other jobs
  on a shared machine.
* ``N workers``: ``num_workers=N`` (``--workers``, default: the CPU count), persistent workers,
  timed from the first batch (worker start-up excluded), epochs repeated until ``--seconds``.

Unpaired DataModules count both images of an item. The cached rows also give the one-off build
time (with N workers) and the entry's size on disk. Output: a markdown table, and one JSON line
per measurement (``{"benchmark": "data", ...}``) for scripts.

    python benchmarks/data.py                        # ~2-3 min on 2 cores
    python benchmarks/data.py --workers 8 --celeba-images 20000 --seconds 10   # a big machine
    python benchmarks/data.py --only celeba64 --data-dir /tmp/bench-data --keep

To add a DataModule, append a ``Case`` to ``CASES``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from datamodules import (  # noqa: E402
    CelebAColorizationDataModule,
    CelebADataModule,
    CelebASuperResDataModule,
    CelebAUnpairedDataModule,
    CIFAR10ColorizationDataModule,
    CIFAR10DataModule,
    CIFAR10SuperResDataModule,
    DigitsDataModule,
    MNISTDataModule,
    MNISTInvertedDataModule,
)
from datamodules.base import ImageDataModule  # noqa: E402
from tests import fakedata  # noqa: E402


@dataclass
class Case:
    name: str
    folder: str  # sub-folder of --data-dir holding its files
    make: Callable[..., ImageDataModule]  # (data_dir, cache=..., num_workers=...) -> DataModule
    images_per_item: int = 1


CASES = [
    Case("mnist", "mnist", lambda d, **kw: MNISTDataModule(d, download=False, **kw)),
    Case("cifar10", "cifar10", lambda d, **kw: CIFAR10DataModule(d, download=False, **kw)),
    Case("celeba64", "celeba", lambda d, **kw: CelebADataModule(d, download=False, **kw)),
    Case("celeba64_unpaired_smiling", "celeba",
         lambda d, **kw: CelebAUnpairedDataModule("Smiling", data_dir=d, download=False, **kw), 2),
    Case("mnist_inverted_unpaired", "mnist",
         lambda d, **kw: MNISTInvertedDataModule(d, download=False, **kw), 2),
    Case("digits32", "digits", lambda d, **kw: DigitsDataModule(d, **kw)),
    Case("cifar10_superres_x4", "cifar10",
         lambda d, **kw: CIFAR10SuperResDataModule(data_dir=d, download=False, **kw)),
    Case("celeba128_superres_x4", "celeba",
         lambda d, **kw: CelebASuperResDataModule(data_dir=d, image_size=128, download=False,
                                                  **kw)),
    Case("cifar10_colorization", "cifar10",
         lambda d, **kw: CIFAR10ColorizationDataModule(d, download=False, **kw)),
    Case("celeba64_colorization", "celeba",
         lambda d, **kw: CelebAColorizationDataModule(d, download=False, **kw)),
]


# ----------------------------------------------------------------------------------------------
# Format-true files at realistic sizes
def write_celeba_jpegs(root: Path, n: int, seed: int = 0) -> float:
    """CelebA's layout with ``n`` 178x218 JPEGs of smooth, face-like-compressible content;
    returns their mean size in KB. (fakedata writes the annotation lists, with tiny images that
    are then replaced.)"""
    fakedata.write_celeba(root, n=n, seed=seed, size=(4, 4))
    folder = root / "celeba" / "img_align_celeba"
    rng = np.random.default_rng(seed)
    total = 0
    for i in range(n):
        coarse = Image.fromarray(rng.integers(30, 225, size=(7, 6, 3), dtype=np.uint8))
        smooth = np.asarray(coarse.resize((178, 218), Image.BICUBIC), dtype=np.float32)
        pixels = np.clip(smooth + rng.normal(0, 3, size=smooth.shape), 0, 255).astype(np.uint8)
        path = folder / f"{i + 1:06d}.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        total += path.stat().st_size
    return total / n / 1024


def write_data(root: Path, celeba_images: int, mnist_images: int, cifar_per_batch: int) -> dict:
    info = {}
    t = time.perf_counter()
    fakedata.write_mnist(root / "mnist", n_train=mnist_images, n_test=max(1, mnist_images // 6))
    fakedata.write_cifar10(root / "cifar10", n_per_batch=cifar_per_batch)
    info["celeba_jpeg_kb"] = write_celeba_jpegs(root / "celeba", celeba_images)
    (root / "digits").mkdir(exist_ok=True)
    info["write_s"] = time.perf_counter() - t
    return info


@contextlib.contextmanager
def files_exist_only():
    """The written files are format-true but not the published ones: torchvision checks only
    that they exist (restored on exit)."""
    import torchvision.datasets.celeba as celeba
    import torchvision.datasets.cifar as cifar

    def exists(fpath, md5=None):
        return os.path.isfile(fpath)

    saved = cifar.check_integrity, celeba.check_integrity
    cifar.check_integrity = celeba.check_integrity = exists
    try:
        yield
    finally:
        cifar.check_integrity, celeba.check_integrity = saved


# ----------------------------------------------------------------------------------------------
def _items(batch) -> int:
    first = batch[0]
    return len(first)


def time_loader(loader: DataLoader, seconds: float, skip_first: bool) -> tuple[float, float, int]:
    """Iterate ``loader`` (epochs repeated) for about ``seconds``; returns (wall s, process CPU
    s, items), timed from the first batch when ``skip_first``."""
    items, started = 0, None
    if not skip_first:
        started, cpu0 = time.perf_counter(), time.process_time()
    while True:
        for batch in loader:
            if started is None:  # the first batch pays for worker start-up: excluded
                started, cpu0 = time.perf_counter(), time.process_time()
                continue
            items += _items(batch)
            if time.perf_counter() - started >= seconds:
                return time.perf_counter() - started, time.process_time() - cpu0, items


def measure(case: Case, data_dir: Path, cached: bool, workers: int, batch_size: int,
            seconds: float) -> list[dict]:
    rows = []
    build_s, disk_mb = None, None
    t = time.perf_counter()
    dm = case.make(str(data_dir), cache=cached, num_workers=workers)
    dm.prepare_data()
    dm.setup("fit")
    if cached:
        build_s = time.perf_counter() - t  # includes reading any entry that already exists
        cache_root = data_dir / "lightning_gen_cache"
        disk_mb = sum(f.stat().st_size for f in cache_root.rglob("*") if f.is_file()) / 2**20
    dataset = dm.train_set
    common = {"benchmark": "data", "datamodule": case.name, "mode": "cached" if cached else "raw",
              "image_size": dm.image_size, "train_items": len(dataset),
              "images_per_item": case.images_per_item, "batch_size": batch_size}
    for n in (0, workers):
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=n,
                            persistent_workers=n > 0, drop_last=False)
        wall, cpu, items = time_loader(loader, seconds, skip_first=n > 0)
        del loader
        images = items * case.images_per_item
        row = {**common, "workers": max(n, 1) if n == 0 else n, "in_process": n == 0,
               "images_per_s": round(images / wall, 1),
               "images_per_cpu_s": round(images / cpu, 1) if n == 0 and cpu > 0 else None,
               "seconds": round(wall, 2)}
        if cached:
            row.update(build_s=round(build_s, 2), cache_mb=round(disk_mb, 1))
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def table(rows: list[dict], workers: int) -> str:
    out = ["| DataModule | size | mode | 1 worker img/s | 1 worker img/CPU-s | "
           f"{workers} workers img/s | cached / raw (1 worker, CPU-s) | cache build s | "
           "cache MB |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    by = {(r["datamodule"], r["mode"], r["in_process"]): r for r in rows}
    for name in dict.fromkeys(r["datamodule"] for r in rows):
        for mode in ("raw", "cached"):
            one, many = by.get((name, mode, True)), by.get((name, mode, False))
            if one is None:
                continue
            raw = by.get((name, "raw", True))
            ratio = ""
            if mode == "cached" and raw and raw["images_per_cpu_s"] and one["images_per_cpu_s"]:
                ratio = f"{one['images_per_cpu_s'] / raw['images_per_cpu_s']:.1f}x"
            out.append(
                f"| {name} | {one['image_size']} | {mode} | {one['images_per_s']:,.0f} | "
                f"{one['images_per_cpu_s'] or 0:,.0f} | "
                f"{many['images_per_s'] if many else 0:,.0f} | {ratio} | "
                f"{one.get('build_s', '')} | {one.get('cache_mb', '')} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="where the files are written (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep --data-dir's files")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    parser.add_argument("--celeba-images", type=int, default=3000)
    parser.add_argument("--mnist-images", type=int, default=12000)
    parser.add_argument("--cifar-per-batch", type=int, default=2000, help="x5 training images")
    parser.add_argument("--only", default="", help="comma-separated case names")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of this process")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    names = [c.name for c in CASES]
    only = [s for s in args.only.split(",") if s]
    if unknown := set(only) - set(names):
        parser.error(f"unknown --only {sorted(unknown)}; choose from {', '.join(names)}")
    cases = [c for c in CASES if not only or c.name in only]

    root = args.data_dir or Path(tempfile.mkdtemp(prefix="lightning-gen-data-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        with files_exist_only():
            info = write_data(root, args.celeba_images, args.mnist_images, args.cifar_per_batch)
            print(f"# files written in {info['write_s']:.1f} s to {root}; CelebA JPEGs 178x218, "
                  f"mean {info['celeba_jpeg_kb']:.1f} KB; {os.cpu_count()} CPUs; torch "
                  f"{torch.__version__}; load average {os.getloadavg()[0]:.1f}", flush=True)
            rows = []
            for case in cases:
                folder = root / case.folder
                shutil.rmtree(folder / "lightning_gen_cache", ignore_errors=True)
                for cached in (False, True):
                    rows += measure(case, folder, cached, args.workers, args.batch_size,
                                    args.seconds)
        print(f"# load average at the end {os.getloadavg()[0]:.1f}")
        print(table(rows, args.workers))
        return rows
    finally:
        if args.data_dir is None and not args.keep:
            shutil.rmtree(root, ignore_errors=True)

if __name__ == "__main__":
    main()
