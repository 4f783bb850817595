"""Decoded-image cache of the image DataModules (``--data.cache true``).

The first run decodes every image of a split once, applies the transform's PIL steps (resize,
centre crop: everything before ``ToTensor``) and writes the result as one uint8 array
``(N, H, W, C)`` (``images.npy``, memory-mapped when read) with the targets (``targets.npy``)
into ``<data_dir>/lightning_gen_cache/<key>/``. Later epochs, runs and DataLoader workers read
the array and apply only the tensor steps (``ToTensor``, ``Normalize``), so a cached image is
the uncached pipeline's to the byte.

* **Key**: dataset, split, ``H x W x C``, and a digest of the PIL steps (sizes, crop,
  interpolation), the number of images, the format version and the size and modification time of
  the dataset's files: another size, crop or a changed dataset gets its own entry.
* **Atomic**: an entry is built in ``<key>.tmp-<host>-<pid>/``, its files fsync'ed, the
  ``meta.json`` written last, then the folder renamed to ``<key>/``. An interrupted build leaves
  only a ``.tmp-`` folder, which nothing reads and the next build removes; an entry is trusted
  only when its ``meta.json`` matches the key and its arrays have the recorded shapes.
* **One writer**: the build holds an exclusive ``flock`` on ``<key>.lock``; other processes
  (DDP ranks, a second run) block on it and then read the finished entry. ``flock`` is per node
  on some network filesystems; Lightning runs ``prepare_data`` on one rank per node, and every
  node's rank 0 then builds under the lock its filesystem gives.
* **Workers**: the memory map is opened lazily in each process (never pickled), so any number
  of DataLoader workers share the page cache.

Cost: ``N x H x W x C`` bytes on disk (CelebA 64x64: 202,599 x 12,288 B ~ 2.5 GB; CIFAR-10
32x32 50k: 154 MB; MNIST 28x28 60k: 47 MB), held in the page cache as far as memory allows.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import socket
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, default_collate
from torchvision import transforms as T

FORMAT_VERSION = 1
CACHE_DIRNAME = "lightning_gen_cache"


class CacheError(ValueError):
    """The cache cannot be used or written (unsupported transform or targets, a full disk);
    the message says what to do."""


def split_transform(transform) -> tuple[T.Compose, T.Compose]:
    """``(pil_steps, tensor_steps)`` of a ``Compose``: the steps before ``ToTensor`` (cached)
    and ``ToTensor`` with what follows (applied when an image is read)."""
    steps = list(getattr(transform, "transforms", []))
    cut = next((i for i, t in enumerate(steps) if isinstance(t, T.ToTensor)), None)
    if cut is None:
        raise CacheError("--data.cache needs a transform that is a torchvision Compose with a "
                         f"ToTensor step, got {transform!r}; drop --data.cache")
    return T.Compose(steps[:cut]), T.Compose(steps[cut:])


def cache_key(name: str, split: str, pil_steps: T.Compose, shape: tuple[int, int, int], n: int,
              fingerprint: list) -> str:
    """Folder name of a cache entry: readable parts and a digest of everything that matters."""
    slug = re.sub(r"[^a-z0-9]+", "", name.lower()) or "dataset"
    h, w, c = shape
    blob = json.dumps([FORMAT_VERSION, name, split, repr(pil_steps), list(shape), n, fingerprint])
    digest = hashlib.sha1(blob.encode()).hexdigest()[:12]
    return f"{slug}-{split}-{h}x{w}x{c}-{digest}"


def files_fingerprint(root: str | os.PathLike, relative: list[str]) -> list:
    """``[path, size, mtime_ns]`` of the dataset's files (a folder's mtime changes when files are
    added, removed or renamed in it)."""
    out = []
    for rel in relative:
        path = Path(root) / rel
        if path.exists():
            st = path.stat()
            out.append([rel, st.st_size, st.st_mtime_ns])
    return out


class ArrayImages(Dataset):
    """``(tensor_steps(images[i]), targets[i])`` from a uint8 array ``(N, H, W, C)`` and its
    targets; other attributes (``attr``, ``targets``, ``classes``, ...) are those of the
    ``source`` dataset, which is not read. Subclasses say where the arrays come from."""

    def __init__(self, source: Dataset, tensor_steps: T.Compose, n: int, target_kind: str,
                 images: np.ndarray | None = None, targets: np.ndarray | None = None) -> None:
        self.source = source
        self.tensor_steps = tensor_steps
        self.n = int(n)
        self.target_kind = target_kind
        self._images = images
        self._targets = targets

    def __len__(self) -> int:
        return self.n

    def __getattr__(self, name: str):
        if name in ("source", "__setstate__"):
            raise AttributeError(name)
        return getattr(self.source, name)

    def _open(self) -> None:
        """Load ``_images`` and ``_targets`` when they are not held yet."""

    def __getitem__(self, index: int):
        if self._images is None:
            self._open()
        if not -self.n <= index < self.n:
            raise IndexError(index)
        image = self.tensor_steps(np.array(self._images[index]))  # copy: a writable (H, W, C)
        return image, self._target(index)

    def __getitems__(self, indices: list[int]) -> Sequence:
        """A DataLoader batch in one read and one conversion (``ToTensor`` [+ ``Normalize``]
        applied to the whole batch: the same elementwise operations, so the same bytes), handed
        over already collated (:class:`CollatedItems`)."""
        steps = self.tensor_steps.transforms
        if not (isinstance(steps[0], T.ToTensor) and len(steps) <= 2 and
                all(isinstance(t, T.Normalize) for t in steps[1:])):
            return [self[i] for i in indices]
        if self._images is None:
            self._open()
        rows = np.asarray(indices, dtype=np.int64)
        batch = torch.from_numpy(self._images[rows])  # (B, H, W, C)
        x = batch.permute(0, 3, 1, 2).contiguous().to(torch.get_default_dtype()).div(255)
        if len(steps) == 2:
            x = steps[1](x)  # Normalize works on (..., C, H, W)
        targets = self._targets[rows]
        if self.target_kind == "int":
            targets = targets.astype(np.int64, copy=False)
        return CollatedItems(x, torch.from_numpy(np.ascontiguousarray(targets)), self.target_kind)

    def _target(self, index: int):
        target = self._targets[index]
        if self.target_kind == "int":
            return int(target)
        return torch.from_numpy(np.array(target))


class CollatedItems(Sequence):
    """A batch's items ``(image, target)`` as :meth:`ArrayImages.__getitems__` returns them: a
    sequence, as a DataLoader's ``collate_fn`` expects (any of them can read it item by item,
    ``default_collate`` included), that already holds the batch collated, ``[images (B, C, H,
    W), targets (B, ...)]``: what ``default_collate`` makes of the items, to the byte.
    :func:`collate`, the DataModules' ``collate_fn``, returns that without making the ``B``
    items and stacking them again (~0.5 ms of a 100-image MNIST batch)."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, target_kind: str) -> None:
        self.images = images
        self.targets = targets
        self.target_kind = target_kind

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, k):
        if isinstance(k, slice):
            return [self[i] for i in range(*k.indices(len(self)))]
        target = int(self.targets[k]) if self.target_kind == "int" else self.targets[k]
        return self.images[k], target

    def collated(self) -> list[torch.Tensor]:
        return [self.images, self.targets]


def collate(items):
    """``default_collate``, except that :class:`CollatedItems` are handed over as they are
    (collated already). The DataModules' loaders use it."""
    if isinstance(items, CollatedItems):
        return items.collated()
    return default_collate(items)


class CachedImages(ArrayImages):
    """The images of a cache entry, memory-mapped (opened lazily in each process)."""

    def __init__(self, source: Dataset, entry: Path, tensor_steps: T.Compose) -> None:
        self.entry = Path(entry)
        meta = json.loads((self.entry / "meta.json").read_text())
        super().__init__(source, tensor_steps, int(meta["n"]), meta["target_kind"])

    def __getstate__(self) -> dict:  # workers open their own memory map
        state = self.__dict__.copy()
        state["_images"] = state["_targets"] = None
        return state

    def _open(self) -> None:
        self._images = np.load(self.entry / "images.npy", mmap_mode="r")
        self._targets = np.load(self.entry / "targets.npy")


class InMemoryImages(ArrayImages):
    """A torchvision dataset that already holds its images as one uint8 array (MNIST's
    ``data``, CIFAR-10's), served from that array: no PIL image per item, the batch converted
    at once. See :func:`in_memory_images`."""


def in_memory_images(source: Dataset, transform, shape: tuple[int, int, int]) -> Dataset:
    """``source`` read straight from its in-memory uint8 array when that gives the same bytes as
    its own ``__getitem__``, else ``source`` itself.

    torchvision's MNIST (and its subclasses) and CIFAR-10 keep every image decoded in memory
    and turn each one into a PIL image and back per item; when ``transform``'s PIL steps leave
    an image of ``shape = (H, W, C)`` unchanged (``Resize``/``CenterCrop`` to the images' own
    size) and the rest is ``ToTensor`` [+ ``Normalize``], :class:`InMemoryImages` does the
    same arithmetic on the array (no copy of it), a batch at a time. This is the
    ``--data.cache`` read path without the disk (the decoded array is already there).
    """
    from torchvision.datasets import CIFAR10, MNIST

    if not isinstance(source, (MNIST, CIFAR10)) or getattr(source, "transform", None) is not \
            transform or getattr(source, "target_transform", None) is not None:
        return source
    if type(source).__getitem__ not in (MNIST.__getitem__, CIFAR10.__getitem__):
        return source  # a subclass that reads its items its own way
    try:
        pil_steps, tensor_steps = split_transform(transform)
    except CacheError:
        return source
    steps = tensor_steps.transforms
    if not (isinstance(steps[0], T.ToTensor) and len(steps) <= 2
            and all(isinstance(t, T.Normalize) for t in steps[1:])):
        return source
    data = source.data
    images = data.numpy() if isinstance(data, torch.Tensor) else np.asarray(data)
    if images.ndim == 3:
        images = images[:, :, :, None]  # (N, H, W) grey -> (N, H, W, 1), a view
    h, w, c = shape
    if images.dtype != np.uint8 or images.shape[1:] != (h, w, c):
        return source
    for step in pil_steps.transforms:  # only steps that leave an (h, w) image as it is
        size = getattr(step, "size", None)
        size = [size] if isinstance(size, int) else list(size or [])
        if not isinstance(step, (T.Resize, T.CenterCrop)) or size not in ([h], [h, w]) or h != w:
            return source
        if isinstance(step, T.Resize) and step.max_size is not None:
            return source
    targets = source.targets
    targets = targets.numpy() if isinstance(targets, torch.Tensor) else np.asarray(targets)
    return InMemoryImages(source, tensor_steps, len(images), "int", images,
                          targets.astype(np.int64, copy=False))


def cached_dataset(source: Dataset, tensor_steps: T.Compose, cache_root: Path, name: str,
                   split: str, pil_steps: T.Compose, shape: tuple[int, int, int],
                   fingerprint: list, num_workers: int = 0) -> CachedImages:
    """The cache entry of ``source`` (items ``(PIL image after pil_steps, target)``), built
    first if no trusted entry exists; see the module docstring."""
    key = cache_key(name, split, pil_steps, shape, len(source), fingerprint)
    entry = Path(cache_root) / key
    if not entry_is_valid(entry, len(source), shape):
        build_entry(source, entry, shape, num_workers)
    return CachedImages(source, entry, tensor_steps)


def entry_is_valid(entry: Path, n: int, shape: tuple[int, int, int]) -> bool:
    """Whether ``entry`` is a complete cache entry of ``n`` images of ``(H, W, C) = shape``."""
    try:
        meta = json.loads((entry / "meta.json").read_text())
        if meta.get("version") != FORMAT_VERSION or meta.get("n") != n or not meta.get("complete"):
            return False
        images = np.load(entry / "images.npy", mmap_mode="r")  # raises when the file is short
        targets = np.load(entry / "targets.npy", mmap_mode="r")
        return images.shape == (n, *shape) and images.dtype == np.uint8 and len(targets) == n
    except (OSError, ValueError, KeyError, TypeError):
        return False


def build_entry(source: Dataset, entry: Path, shape: tuple[int, int, int],
                num_workers: int = 0) -> None:
    """Write ``entry`` once: under an exclusive lock, into a temporary folder renamed at the end.
    A process that finds the lock taken waits, then uses the entry the holder wrote."""
    root = entry.parent
    try:
        root.mkdir(parents=True, exist_ok=True)
        lock = open(root / f"{entry.name}.lock", "a+")  # noqa: SIM115 - closed by the with below
    except OSError as err:  # a read-only dataset folder
        raise CacheError(f"cannot write the image cache in {root} ({type(err).__name__}: {err});"
                         " make the data folder writable or drop --data.cache") from err
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # DDP ranks / concurrent runs wait here
        try:
            if entry_is_valid(entry, len(source), shape):
                return  # another process built it while we waited
            for stale in root.glob(f"{entry.name}.tmp-*"):  # interrupted builds (we hold the lock)
                shutil.rmtree(stale, ignore_errors=True)
            if entry.exists():  # an untrusted leftover
                shutil.rmtree(entry)
            tmp = root / f"{entry.name}.tmp-{socket.gethostname()}-{os.getpid()}"
            tmp.mkdir()
            try:
                _write(source, tmp, shape, num_workers)
            except OSError as err:  # decode errors are CorruptDataError, not OSError
                shutil.rmtree(tmp, ignore_errors=True)
                raise CacheError(f"cannot write the image cache {tmp} ({type(err).__name__}: "
                                 f"{err}); free disk space there or drop --data.cache") from err
            os.rename(tmp, entry)
            _fsync_dir(root)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _write(source: Dataset, folder: Path, shape: tuple[int, int, int], num_workers: int) -> None:
    n = len(source)
    images = np.lib.format.open_memmap(folder / "images.npy", mode="w+", dtype=np.uint8,
                                       shape=(n, *shape))
    targets: list = []
    done = 0
    for batch, batch_targets in decoded_batches(source, num_workers):
        if batch.shape[1:] != shape:
            raise CacheError(f"cache: image {done} has shape {batch.shape[1:]}, expected {shape}"
                             " (the transform must resize and crop to a fixed size)")
        images[done:done + len(batch)] = batch
        targets.extend(batch_targets)
        done += len(batch)
    if done != n:
        raise RuntimeError(f"cache: read {done} of {n} images")
    images.flush()
    del images
    kind, array = _targets_array(targets)
    np.save(folder / "targets.npy", array)
    for name in ("images.npy", "targets.npy"):
        _fsync(folder / name)
    meta = {"version": FORMAT_VERSION, "n": n, "shape": list(shape), "target_kind": kind,
            "complete": True}
    (folder / "meta.json").write_text(json.dumps(meta))
    _fsync(folder / "meta.json")
    _fsync_dir(folder)


def decoded_batches(source: Dataset, num_workers: int, batch_size: int = 256):
    """``(uint8 (B, H, W, C), [targets])`` over ``source`` in order, decoded by ``num_workers``
    DataLoader workers (0: this process)."""
    loader = DataLoader(source, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=_collate_uint8)
    yield from loader


def _collate_uint8(items):
    arrays = []
    for image, _ in items:
        a = np.asarray(image, dtype=np.uint8)
        arrays.append(a[:, :, None] if a.ndim == 2 else a)
    return np.stack(arrays), [target for _, target in items]


def _targets_array(targets: list) -> tuple[str, np.ndarray]:
    if all(isinstance(t, (int, np.integer)) for t in targets):
        return "int", np.asarray(targets, dtype=np.int64)
    if all(isinstance(t, torch.Tensor) for t in targets):
        return "tensor", torch.stack(targets).numpy() if targets else np.zeros((0,), np.int64)
    raise CacheError("--data.cache stores integer or tensor targets; this dataset's are "
                     f"{type(targets[0]).__name__}: drop --data.cache")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    try:
        _fsync(path)
    except OSError:  # some filesystems cannot fsync a folder
        pass
