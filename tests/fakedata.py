"""Small datasets written in the real on-disk formats torchvision reads.

* MNIST: IDX files (big-endian magic, dims, uint8 data) in ``root/MNIST/raw/``.
* CIFAR-10: pickled batch dicts in ``root/cifar-10-batches-py/``.
* CelebA: JPEG folder plus the whitespace-separated annotation lists in ``root/celeba/``.

Images carry a simple class-dependent pattern so models have something to learn.
"""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np
from PIL import Image

from datamodules.celeba import ATTRIBUTES


def _patterned_images(n: int, size: int, channels: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(n, size, size, channels)`` uint8 images and labels in 0..9: a bright bar whose
    position encodes the label, plus noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, size=n)
    images = rng.integers(0, 40, size=(n, size, size, channels), dtype=np.uint8)
    band = max(1, size // 10)
    for i, y in enumerate(labels):
        start = int(y) * size // 10
        images[i, start:start + band, :, :] = 255
    return images, labels.astype(np.uint8)


def write_idx(path: Path, array: np.ndarray) -> None:
    """IDX format: magic ``0x00 0x00 0x08 ndim`` (uint8 data), big-endian int32 dims, data."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_mnist(root: str | Path, n_train: int = 128, n_test: int = 64, seed: int = 0) -> Path:
    raw = Path(root) / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images, labels = _patterned_images(n, 28, 1, seed + (prefix == "t10k"))
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images[..., 0])
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    return Path(root)


def write_cifar10(root: str | Path, n_per_batch: int = 16, seed: int = 0) -> Path:
    """Five training batches and a test batch of ``n_per_batch`` images each, as
    ``{"data": (N, 3072) uint8 row-major CHW, "labels": [...]}`` pickles (str keys, as the
    original Python 2 pickles load), plus batches.meta."""
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for k, name in enumerate(names):
        images, labels = _patterned_images(n_per_batch, 32, 3, seed + k)
        data = images.transpose(0, 3, 1, 2).reshape(n_per_batch, -1)  # (N, 3*32*32)
        entry = {"batch_label": name, "labels": labels.tolist(), "data": data,
                 "filenames": [f"{name}_{i}.png" for i in range(n_per_batch)]}
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f)
    meta = {"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                            "horse", "ship", "truck"], "num_cases_per_batch": n_per_batch,
            "num_vis": 3072}
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump(meta, f)
    return Path(root)


def write_celeba(root: str | Path, n: int = 30, seed: int = 0, size: tuple[int, int] = (178, 218)
                 ) -> Path:
    """``n`` aligned-face-sized JPEGs and the five annotation lists in CelebA's formats.

    Partition: first 60% train (0), next 20% valid (1), rest test (2). Attribute ``Smiling`` is
    1 for even indices, and those images are brighter.
    """
    folder = Path(root) / "celeba"
    images_dir = folder / "img_align_celeba"
    images_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    width, height = size
    names = [f"{i + 1:06d}.jpg" for i in range(n)]
    attrs = rng.choice([-1, 1], size=(n, len(ATTRIBUTES)))
    smiling = ATTRIBUTES.index("Smiling")
    attrs[:, smiling] = [1 if i % 2 == 0 else -1 for i in range(n)]
    for i, name in enumerate(names):
        base = 170 if attrs[i, smiling] == 1 else 60
        pixels = np.clip(rng.normal(base, 20, size=(height, width, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(images_dir / name, quality=90)

    def table(path: Path, header: list[str] | None, rows: list[list]) -> None:
        lines = [str(len(rows))] if header is not None else []
        if header is not None:
            lines.append(" ".join(header))
        lines += [" ".join(str(v) for v in row) for row in rows]
        path.write_text("\n".join(lines) + "\n")

    table(folder / "list_attr_celeba.txt", list(ATTRIBUTES),
          [[name, *attrs[i].tolist()] for i, name in enumerate(names)])
    n_train, n_val = int(0.6 * n), int(0.2 * n)
    split = [0 if i < n_train else 1 if i < n_train + n_val else 2 for i in range(n)]
    table(folder / "list_eval_partition.txt", None, [[name, split[i]] for i, name in enumerate(names)])
    table(folder / "identity_CelebA.txt", None, [[name, i % 7 + 1] for i, name in enumerate(names)])
    table(folder / "list_bbox_celeba.txt", ["image_id", "x_1", "y_1", "width", "height"],
          [[name, 10, 20, 100, 120] for name in names])
    landmarks = ["lefteye_x", "lefteye_y", "righteye_x", "righteye_y", "nose_x", "nose_y",
                 "leftmouth_x", "leftmouth_y", "rightmouth_x", "rightmouth_y"]
    table(folder / "list_landmarks_align_celeba.txt", landmarks,
          [[name, 69, 109, 106, 113, 77, 142, 73, 152, 108, 154] for name in names])
    return Path(root)
