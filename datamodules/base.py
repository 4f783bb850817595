"""Shared machinery of the image DataModules: split, normalisation, shapes and clear errors."""

from __future__ import annotations

import os
import shutil
import signal
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Subset, random_split
from torchvision import transforms as T

from datamodules.cache import (
    ArrayImages,
    CacheError,
    cached_dataset,
    collate,
    files_fingerprint,
    in_memory_images,
    split_transform,
)


class DatasetNotFoundError(FileNotFoundError):
    """Raised when a dataset's files are missing and cannot be downloaded.

    The CLI prints its message without a traceback.
    """


class CorruptDataError(RuntimeError):
    """A data file exists but cannot be read (truncated, not an image, ...); the message names
    the file and the dataset in one line.

    Raised in a DataLoader worker, it reaches the main process re-created from a message that
    holds the worker's traceback; only the original one-line message is kept.
    """

    def __init__(self, message: str) -> None:
        prefix = f"{type(self).__name__}: "
        if message.startswith("Caught ") and "Original Traceback" in message:
            lines = [line for line in message.splitlines() if prefix in line]
            if lines:
                message = lines[-1].split(prefix, 1)[1]
        super().__init__(message)


#: Base seed of the static binarization: part of its definition, the same in every run.
STATIC_BINARIZATION_SEED = 20160000
_SPLIT_SEED_OFFSET = {"train": 0, "val": 1 << 32, "test": 2 << 32}


class BinarizedDataset(Dataset):
    """The images of ``dataset`` (grey levels on [-1, 1]) as Bernoulli draws, pixels -1 or +1
    (0 or 1 on the [0, 1] scale), each pixel on with probability its intensity.

    ``"dynamic"``: drawn anew every time an image is read (global torch RNG, so seeded by
    ``seed_everything`` and by the DataLoader's per-worker seeds): each epoch sees other bits.
    ``"static"``: image ``i`` of ``split`` is drawn with its own generator, seeded with
    ``STATIC_BINARIZATION_SEED + offset(split) + i``, so every run, process and worker reads the
    same bits whatever the global RNG state.
    """

    def __init__(self, dataset: Dataset, mode: Literal["dynamic", "static"], split: str) -> None:
        if mode not in ("dynamic", "static"):
            raise ValueError(f"binarization must be 'dynamic' or 'static', got {mode!r}")
        self.dataset = dataset
        self.mode = mode
        self.split = split

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name: str):  # targets, attr, ... of the wrapped torchvision dataset
        # Not the wrapped dataset's protocols: its ``__getitems__`` (a batch read at once, the
        # images held in memory) would hand a DataLoader the grey images, past the draw.
        if name == "dataset" or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, index: int):
        x, y = self.dataset[index]
        p = ((x + 1) / 2).clamp(0, 1)
        if self.mode == "dynamic":
            bits = torch.rand(p.shape) < p
        else:
            seed = STATIC_BINARIZATION_SEED + _SPLIT_SEED_OFFSET.get(self.split, 3 << 32) + index
            bits = torch.rand(p.shape, generator=torch.Generator().manual_seed(seed)) < p
        return bits.to(x.dtype) * 2 - 1, y


#: Exceptions a damaged file raises while it is decoded (PIL: OSError/UnidentifiedImageError
#: for truncated or unknown data, SyntaxError/ValueError for broken headers).
DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError)


class CorruptFiles:
    """What a dataset of one file per image does with a file it cannot decode: raise
    :class:`CorruptDataError` naming it, or (``skip=True``) count it, say so on stderr (once per
    file and process) and let the dataset serve the next image instead. The counts live in a
    small shared-memory tensor, one slot per DataLoader worker, so the main process can report
    the total (a file met by two workers counts twice)."""

    max_consecutive = 100  # a folder where everything fails is not "a few corrupt files"

    def __init__(self, dataset: str, skip: bool) -> None:
        self.dataset = dataset
        self.skip = skip
        self.counts = torch.zeros(256, dtype=torch.int64).share_memory_()
        self.seen: set[str] = set()  # per process

    def failed(self, path: str, err: BaseException, attempt: int) -> None:
        """Record that ``path`` could not be read; raises unless it is to be skipped."""
        reason = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        if not self.skip or attempt >= self.max_consecutive:
            raise CorruptDataError(
                f"{self.dataset}: cannot read {path} ({reason}). Replace or delete the file, "
                "or pass --data.skip_corrupt true to skip files that cannot be read")
        if path in self.seen:
            return
        self.seen.add(path)
        info = torch.utils.data.get_worker_info()
        self.counts[0 if info is None else 1 + info.id % 255] += 1
        print(f"lightning-gen: warning: {self.dataset}: skipping {path} ({reason})",
              file=sys.stderr, flush=True)

    @property
    def total(self) -> int:
        return int(self.counts.sum())


class ImageDataModule(L.LightningDataModule):
    """Base class for image DataModules whose images are normalised to [-1, 1].

    Subclasses set ``name``, ``channels``, ``num_classes``, ``default_image_size`` and implement
    ``make_dataset`` (and ``expected_files`` for the error message).

    Batches are ``(image, target)`` with ``image`` of shape ``(B, C, H, W)`` in [-1, 1]; with
    ``binarize`` every pixel is exactly -1 or +1 (0/1 on the [0, 1] scale likelihood models use).

    Args:
        data_dir: Root folder of the dataset (torchvision's layout below it).
        image_size: Side of the square images the models see; ``None`` keeps the default.
        batch_size: Batch size of every loader.
        num_workers: DataLoader worker processes.
        val_fraction: Fraction of the training split held out for validation.
        seed: Seed of the deterministic train/val split.
        download: Download the files when missing (needs network access).
        skip_corrupt: Skip image files that cannot be decoded (each is named on stderr, the
            total at the end of the run) instead of stopping with an error naming the file.
        binarize: Grey datasets only (MNIST, digits): ``"dynamic"`` draws Bernoulli pixels anew
            each time a training image is read, validation/test images are binarized
            statically; ``"static"`` binarizes every split once, seeded by the image's index
            (:class:`BinarizedDataset`); ``"none"`` keeps the grey levels.
        cache: Decode each split once into a uint8 array of ``image_size`` images beside the
            data (``data_dir/lightning_gen_cache/``, memory-mapped; see
            :mod:`datamodules.cache`), and read that in every later epoch and run. Costs
            ``N x image_size^2 x channels`` bytes of disk (CelebA 64x64: ~2.5 GB).
    """

    name: str = "dataset"
    channels: int = 1
    num_classes: int = 0
    #: What the targets are: ``"class"`` (an integer in ``0..num_classes-1``) or
    #: ``"attributes"`` (a 0/1 vector of length ``num_classes``, CelebA).
    label_kind: str = "class"
    default_image_size: int = 32
    download_hint: str = ""
    #: How to get a good copy of one damaged file (see ``corrupt_file``).
    replace_hint: str = ""
    #: The dataset has its own validation partition (CelebA); otherwise ``val_fraction`` of the
    #: training split is held out.
    official_val_split: bool = False
    #: Grey images whose intensities read as Bernoulli means (``binarize`` is allowed).
    binarizable: bool = False

    def __init__(
        self,
        data_dir: str = "data",
        image_size: int | None = None,
        batch_size: int = 64,
        num_workers: int = 0,
        val_fraction: float = 0.1,
        seed: int = 0,
        download: bool = True,
        skip_corrupt: bool = False,
        binarize: Literal["none", "dynamic", "static"] = "none",
        cache: bool = False,
    ) -> None:
        super().__init__()
        if binarize not in ("none", "dynamic", "static"):
            raise ValueError(f"binarize must be none, dynamic or static, got {binarize!r}")
        if binarize != "none" and not self.binarizable:
            raise ValueError(f"binarize={binarize} is for grey digit data (MNIST, digits); "
                             f"{type(self).__name__} images are not Bernoulli means: drop "
                             "--data.binarize")
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.save_hyperparameters()
        # Plain strings in checkpoints: a pathlib path there (data_dir=Path(...) from Python)
        # made Lightning's own `load_from_checkpoint` fail under torch's default
        # weights_only=True (torch >= 2.6, Lightning >= 2.6).
        for key, value in self.hparams.items():
            if isinstance(value, os.PathLike):
                self.hparams[key] = os.fspath(value)
        self.data_dir = str(data_dir)
        self.image_size = int(image_size or self.default_image_size)
        if self.image_size < 4:
            raise ValueError(f"image_size must be at least 4, got {self.image_size}")
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.val_fraction = val_fraction
        self.seed = seed
        self.download = download
        self.skip_corrupt = skip_corrupt
        self.binarize = binarize
        self.cache = cache
        self._said_workers = False  # the worker cap was announced
        self._static_only = False  # set while the dynamic data's static validation copy loads
        self._corrupt_files: list[CorruptFiles] = []
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None

    # ----------------------------------------------------------------------------------------
    # What models need to know to build themselves
    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the images in a batch."""
        return (self.channels, self.image_size, self.image_size)

    # ----------------------------------------------------------------------------------------
    # Subclass interface
    def make_dataset(self, split: str, transform, download: bool) -> Dataset:
        """Build the torchvision dataset of ``split`` ("train" or "test")."""
        raise NotImplementedError

    def expected_files(self) -> list[str]:
        """Paths (relative to ``data_dir``) of the files the dataset reads."""
        return []

    def corrupt_file(self) -> tuple[str, str] | None:
        """The first of the dataset's files that exists but cannot be read, with the reason,
        or ``None``; consulted when loading fails although every expected file is there."""
        return None

    def corrupt_files(self) -> CorruptFiles:
        """The :class:`CorruptFiles` record a per-image-file dataset reports to."""
        record = CorruptFiles(self.name, self.skip_corrupt)
        self._corrupt_files.append(record)
        return record

    def transform(self):
        return T.Compose(
            [
                T.Resize(self.image_size, antialias=True),
                T.CenterCrop(self.image_size),
                T.ToTensor(),
                T.Normalize([0.5] * self.channels, [0.5] * self.channels),
            ]
        )

    # ----------------------------------------------------------------------------------------
    # Lightning hooks
    def prepare_data(self) -> None:
        for split in ("train", "test"):
            self._load(split, download=self.download)

    def setup(self, stage: str | None = None) -> None:
        self._setup_splits(stage)
        if getattr(self, "trainer", None) is not None:
            # Say a changed worker count now, not over the progress bar.
            self._workers(self.train_set if self.train_set is not None else self.test_set)

    def _setup_splits(self, stage: str | None) -> None:
        if self.train_set is None and stage in (None, "fit", "validate"):
            if self.official_val_split:
                self.train_set = self._load("train", download=False)
                self.val_set = self._load("val", download=False)
                return self._setup_splits("test") if stage is None else None
            full = self._load("train", download=False)
            n_val = int(round(len(full) * self.val_fraction))
            if n_val == 0:
                self.train_set, self.val_set = full, Subset(full, [])
            else:
                generator = torch.Generator().manual_seed(self.seed)
                self.train_set, self.val_set = random_split(
                    full, [len(full) - n_val, n_val], generator=generator
                )
                if self.binarize == "dynamic":  # validate on fixed bits, as the test split
                    with self._static_binarization():
                        static = self._load("train", download=False)
                    self.val_set = Subset(static, self.val_set.indices)
        if self.test_set is None and stage in (None, "test", "predict"):
            self.test_set = self._load("test", download=False)

    def teardown(self, stage: str) -> None:
        skipped = sum(record.total for record in self._corrupt_files)
        if skipped:
            print(f"lightning-gen: warning: {self.name}: skipped {skipped} image file(s) that "
                  "could not be read (--data.skip_corrupt true; each is named above)",
                  file=sys.stderr, flush=True)
            for record in self._corrupt_files:
                record.counts.zero_()

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False)

    # ----------------------------------------------------------------------------------------
    def _loader(self, dataset: Dataset | None, shuffle: bool, drop_last: bool = False,
                sampler=None) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"{type(self).__name__}.setup() must run before asking for a loader")
        # Never drop the only batch of a small dataset.
        drop_last = drop_last and len(dataset) >= self.batch_size
        workers = self._workers(dataset)
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            sampler=sampler,
            drop_last=drop_last,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=torch.cuda.is_available(),
            worker_init_fn=_ignore_sigint if workers > 0 else None,
            collate_fn=collate,
        )

    def _workers(self, dataset: Dataset | None) -> int:
        """The DataLoader workers of this run for ``dataset`` (:func:`usable_workers`), said
        once in one line when fewer than ``num_workers`` (from ``setup``, before a progress bar
        is drawn)."""
        on_cpu = self._trains_on_cpu()
        from_array = reads_batches_from_array(dataset)
        workers = usable_workers(self.num_workers, on_cpu, from_array)
        if (workers != self.num_workers and not getattr(self, "_said_workers", False)
                and self._first_process_of_machine()):
            self._said_workers = True
            if on_cpu and from_array:
                why = ("training on the CPU from images held in one array: a batch is read "
                       "faster in the training process than handed over by a worker")
            elif on_cpu:
                why = (f"{usable_cores()} usable core(s), training on the CPU with "
                       f"{torch.get_num_threads()} torch thread(s)")
            else:
                why = f"{usable_cores()} usable core(s), the training process keeps a core"
            print(f"lightning-gen: {workers} DataLoader worker(s) instead of {self.num_workers} "
                  f"({why}; LIGHTNING_GEN_EXACT_WORKERS=1 keeps the number given)",
                  file=sys.stderr, flush=True)
        return workers

    def _first_process_of_machine(self) -> bool:
        """Whether this process is the first (local rank 0) of its machine: under DDP every
        process sets its data up, and a machine's notice is said once, not once per process."""
        trainer = getattr(self, "trainer", None)
        rank = trainer.local_rank if trainer is not None else os.environ.get("LOCAL_RANK", 0)
        return int(rank) == 0

    def _trains_on_cpu(self) -> bool:
        """Whether the attached Trainer (else: this machine) trains on the CPU."""
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            from lightning.pytorch.accelerators import CPUAccelerator

            return isinstance(trainer.accelerator, CPUAccelerator)
        return not torch.cuda.is_available()

    def binarization(self, split: str) -> str:
        """How ``split``'s images are binarized: ``none``, ``dynamic`` (training images of
        ``binarize=dynamic``) or ``static``."""
        if self.binarize == "dynamic" and (split != "train" or self._static_only):
            return "static"
        return self.binarize

    @contextmanager
    def _static_binarization(self):
        self._static_only = True
        try:
            yield
        finally:
            self._static_only = False

    def _load(self, split: str, download: bool) -> Dataset:
        """Build a split, turning torchvision's missing-file/URL errors into one clear error.

        Folders created by a failed download attempt are removed again, so a failure leaves
        nothing on disk.
        """
        root = Path(self.data_dir)
        existed = _existing_dirs(root)
        try:
            if self.cache:
                dataset = self._cached_dataset(split, download)
            else:
                transform = self.transform()
                dataset = in_memory_images(self.make_dataset(split, transform, download),
                                           transform, self.image_shape[1:] + self.image_shape[:1])
            mode = self.binarization(split)
            return dataset if mode == "none" else BinarizedDataset(dataset, mode, split)
        except (DatasetNotFoundError, CorruptDataError, CacheError):
            _remove_new_dirs(root, existed)
            raise
        except Exception as err:  # URLError is an OSError; a truncated pickle an UnpicklingError
            _remove_new_dirs(root, existed)
            if isinstance(err, ValueError) and "split" in str(err).lower():
                raise
            if self._files_present():
                corrupt = self.corrupt_file()
                if corrupt is not None:
                    path, reason = corrupt
                    raise CorruptDataError(
                        f"{self.name}: cannot read {path} ({reason}): the file is damaged or "
                        f"truncated. {self.replace_hint or 'Replace it with a good copy.'}"
                    ) from err
            if not isinstance(err, (RuntimeError, OSError, ValueError)):
                raise
            raise DatasetNotFoundError(self._missing_message(err)) from err

    def _cached_dataset(self, split: str, download: bool) -> Dataset:
        """``split`` read from its decoded-image cache, built first when missing."""
        pil_steps, tensor_steps = split_transform(self.transform())
        source = self.make_dataset(split, pil_steps, download)
        return cached_dataset(
            source, tensor_steps, Path(self.data_dir) / "lightning_gen_cache", self.name, split,
            pil_steps, (self.image_size, self.image_size, self.channels),
            files_fingerprint(self.data_dir, self.expected_files()), self.num_workers)

    def _files_present(self) -> bool:
        expected = [Path(self.data_dir) / f for f in self.expected_files()]
        return bool(expected) and all(p.exists() for p in expected)

    def _missing_message(self, err: Exception) -> str:
        files = "\n".join(f"  {os.path.join(self.data_dir, f)}" for f in self.expected_files())
        if self._files_present():
            how = "its files could not be read"
        else:
            how = "the download failed" if self.download else "download=False"
        return (
            f"{self.name} not found in '{os.path.abspath(self.data_dir)}' and {how} "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}).\n"
            f"Expected files:\n{files}\n"
            f"{self.download_hint or 'Run once with network access (download=True), or copy the files there.'}"
        )


def usable_workers(num_workers: int, on_cpu: bool = False, from_array: bool = False) -> int:
    """``num_workers`` capped at the CPU cores a worker would not take from training.

    The training process keeps one core (a GPU run), or as many as torch's intra-op threads
    when the model trains on the CPU (``on_cpu``): there every core already computes, and a
    worker only takes time from the step it is to feed (on a 2-core machine one MNIST worker
    made a 3-epoch run 2-3 s slower; ``benchmarks/end_to_end.py``, ``-workers``). A CPU run
    whose images are read a batch at a time from one uint8 array (``from_array``: MNIST and
    CIFAR-10 in memory, the decoded-image cache; :func:`reads_batches_from_array`) gets no
    worker even with cores to spare: receiving a batch from a worker costs the training
    process more than reading it (vae_mnist, 1 torch thread on 2 cores: 1.6 against 0.55 ms
    per batch, 3.2-3.4 against 2.9-3.0 s per epoch; ``benchmarks/README.md``, "no worker for
    images in memory"). ``LIGHTNING_GEN_EXACT_WORKERS=1`` keeps the number given."""
    if num_workers <= 0 or os.environ.get("LIGHTNING_GEN_EXACT_WORKERS") == "1":
        return max(0, num_workers)
    if on_cpu and from_array:
        return 0
    busy = max(1, torch.get_num_threads()) if on_cpu else 1
    return min(num_workers, max(0, usable_cores() - busy))


def reads_batches_from_array(dataset: Dataset | None) -> bool:
    """Whether ``dataset`` (through any ``Subset``) serves its batches from one uint8 array,
    a batch as one read and one conversion (:class:`~datamodules.cache.ArrayImages`: images
    held in memory, or the memory-mapped decoded-image cache)."""
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    return isinstance(dataset, ArrayImages)


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity), at least 1."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return cores or 1


def _ignore_sigint(worker_id: int) -> None:
    """Ctrl-C reaches the whole process group: a worker that died of it would fail the batch
    the main process is still finishing before it saves (lightning_gen.faults). The main
    process stops the workers itself."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _existing_dirs(root: Path) -> set[Path]:
    if not root.exists():
        return set()
    return {p for p in [root, *root.rglob("*")] if p.is_dir()}


def _remove_new_dirs(root: Path, existed: set[Path]) -> None:
    """Remove folders under ``root`` (and ``root`` itself) that did not exist before."""
    if not root.exists():
        return
    candidates = [p for p in [root, *root.rglob("*")] if p.is_dir() and p not in existed]
    for path in sorted(candidates, key=lambda p: len(p.parts)):
        if path.exists() and not any(parent in candidates for parent in path.parents):
            shutil.rmtree(path, ignore_errors=True)
