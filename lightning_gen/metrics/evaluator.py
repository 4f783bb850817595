"""Generate, extract, gather, compare: the one evaluation loop the callback and the CLI share.

Sample ``i`` belongs to batch ``b = i // batch_size``; batch ``b`` is generated with seed
``seed + b`` (a forked RNG, so training randomness is untouched) and handled by rank
``b % world_size``. Every rank extracts features of its batches in float32 and streams them into a
:class:`~lightning_gen.metrics.fidelity.FeatureStore`; no more than one batch of images exists at
a time. Gathered and sorted by sample index, the features -- and so every metric -- are those of
a single process with the same seed and batch size.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from lightning_gen.metrics.extractors import ClassifierExtractor, FeatureExtractor, to_uint8
from lightning_gen.metrics.fidelity import FeatureStore, fid_statistics, fidelity_metrics
from lightning_gen.metrics.reference import PREPROCESSING, ReferenceCache


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_ranks_agree(flag: bool, device: torch.device) -> bool:
    """``flag`` on every rank (a collective under DDP; ``flag`` itself otherwise)."""
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    value = torch.tensor([int(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item())


def load_split(datamodule, split: str) -> Dataset:
    """The full ``split`` of an :class:`~datamodules.base.ImageDataModule` (``train`` is the
    whole training split, before any validation hold-out)."""
    splits = ["train", "test"] + (["val"] if getattr(datamodule, "official_val_split", False) else [])
    if split not in splits:
        raise ValueError(f"reference split {split!r} does not exist for "
                         f"{type(datamodule).__name__}; choose one of {', '.join(splits)}")
    return datamodule._load(split, download=getattr(datamodule, "download", False))


def is_conditional(model) -> bool:
    """A model is class-conditional when its hyperparameters name a positive ``num_classes``."""
    return int(getattr(model, "hparams", {}).get("num_classes", 0) or 0) > 0


class GenerativeEvaluator:
    """FID / IS / KID / precision-recall of a generator against a DataModule split.

    Create it once (it owns the torchmetrics states) and call :meth:`evaluate` as often as needed.

    Args:
        extractor: Feature extractor (Inception-v3 or the suite's classifier).
        batch_size: Images per generated / extracted batch (also fixes the per-batch seeds).
        cache_dir: Reference-feature cache folder (``None``: ``$LIGHTNING_GEN_CACHE`` or
            ``~/.cache/lightning-gen/reference``).
        isc_splits: Splits of the Inception Score (10 in the papers).
        kid_subsets: Subsets of KID (100 in torch-fidelity).
        kid_subset_size: Subset size of KID (1000 in torch-fidelity; capped at the sample count).
        prc_neighborhood: ``k`` of precision/recall (3 in Kynkaanniemi et al. 2019).
    """

    #: Keep the generated features and logits of the last :meth:`evaluate` in
    #: ``last_generated`` (``lightning-gen evaluate --neighbours / --mode_coverage`` read them).
    keep_generated: bool = False

    def __init__(
        self,
        extractor: FeatureExtractor,
        batch_size: int = 100,
        cache_dir: str | None = None,
        isc_splits: int = 10,
        kid_subsets: int = 100,
        kid_subset_size: int = 1000,
        prc_neighborhood: int = 3,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.extractor = extractor.eval()
        self.batch_size = batch_size
        self.cache = ReferenceCache(cache_dir)
        self.options = {"isc_splits": isc_splits, "kid_subsets": kid_subsets,
                        "kid_subset_size": kid_subset_size, "prc_neighborhood": prc_neighborhood}
        self.fake_store = FeatureStore()
        self.real_store = FeatureStore()
        # Set by reference(): its cache key, whether it came from the cache, and the file.
        self.reference_info: dict = {}

    # ------------------------------------------------------------------------------------------
    def _extract(self, images: torch.Tensor, device: torch.device):
        self.extractor.to(device)
        return self.extractor(to_uint8(images).to(device))

    def _my_batches(self, n: int) -> Iterator[tuple[int, int, int]]:
        rank, world = rank_and_world()
        n_batches = math.ceil(n / self.batch_size)
        if n_batches < world:  # every rank must contribute to the gather
            raise ValueError(f"{n} images in batches of {self.batch_size} give {n_batches} "
                             f"batches for {world} processes; lower batch_size")
        for b in range(rank, n_batches, world):
            yield b, b * self.batch_size, min(n, (b + 1) * self.batch_size)

    def generated(self, model, num_samples: int, seed: int = 0, device=None,
                  progress: bool = False) -> dict[str, torch.Tensor]:
        """Features of ``num_samples`` samples of ``model.sample``, gathered over ranks."""
        device = torch.device(device) if device is not None else model.device
        conditional = is_conditional(model)
        num_classes = int(model.hparams.num_classes) if conditional else 0
        store = self.fake_store.to(device)
        batches = list(self._my_batches(num_samples))
        rank, _ = rank_and_world()
        fork = [device] if device.type == "cuda" else []
        was_training = model.training
        model.eval()
        try:
            for b, start, end in tqdm(batches, desc="generated", unit="batch",
                                      disable=not progress or rank != 0):
                index = torch.arange(start, end, device=device)
                labels = index % num_classes if conditional else None
                with torch.random.fork_rng(devices=fork), torch.no_grad():
                    torch.manual_seed(seed + b)
                    images = model.sample(end - start, labels)
                features, logits = self._extract(images, device)
                store.update(index, features, logits, labels)
            out = store.compute()
        finally:
            store.reset()
            model.train(was_training)
        return out

    def reference_key(self, datamodule, split: str, num_images: int) -> dict:
        return {
            "dataset": type(datamodule).__name__,
            "data_dir": str(getattr(datamodule, "data_dir", "")),
            "split": split,
            "num_images": num_images,
            "image_shape": list(getattr(datamodule, "image_shape", ())),
            "preprocessing": PREPROCESSING,
            "extractor": self.extractor.name,
            # The library code around the weights (torch-fidelity's resize, layer taps): an
            # upgrade recomputes the features. The suite's own classifier keeps its old keys.
            **({"extractor_code": self.extractor.code} if self.extractor.code else {}),
            # Binarized images are other data; grey data keeps its old keys (and cache entries).
            # "bits": 2 since the loaders hand over the drawn bits (7010e21); features cached
            # before came from grey batches and are not reused.
            **({"binarize": datamodule.binarization(split), "bits": 2}
               if getattr(datamodule, "binarize", "none") != "none" else {}),
        }

    def reference(self, datamodule, split: str = "train", device=None, num_images: int | None = None,
                  min_images: int = 0, progress: bool = False) -> dict:
        """Features and FID statistics of the real ``split`` (from the cache when its key
        matches; else computed over all ranks, written by rank 0, read by all).

        ``num_images``: the first ``num_images`` of the split (``None``: all). ``min_images``:
        fail early, with a clear error, if the split has fewer real images than that.
        """
        dataset = load_split(datamodule, split)
        n = len(dataset) if num_images is None else int(num_images)
        if max(n, min_images) > len(dataset) or n < min_images:
            raise ValueError(
                f"the {split} split of {type(datamodule).__name__} has {len(dataset)} real images, "
                f"fewer than the {max(n, min_images)} requested; ask for fewer samples or use "
                "another split"
            )
        key = self.reference_key(datamodule, split, n)
        device = torch.device(device or "cpu")
        cached = self.cache.load(key)
        if not all_ranks_agree(cached is not None, device):  # all load, or all compute
            cached = None
        self.reference_info = {**key, "from_cache": cached is not None,
                               "cache_file": str(self.cache.path(key))}
        if cached is not None:
            return cached
        batches = list(self._my_batches(n))
        indices = [i for _, start, end in batches for i in range(start, end)]
        loader = DataLoader(Subset(dataset, indices), batch_size=self.batch_size, shuffle=False,
                            num_workers=getattr(datamodule, "num_workers", 0))
        store = self.real_store.to(device)
        rank, _ = rank_and_world()
        try:
            for (_, start, end), batch in zip(
                batches, tqdm(loader, desc=f"reference ({split})", unit="batch",
                              disable=not progress or rank != 0), strict=True):
                images = batch[0] if isinstance(batch, (list, tuple)) else batch
                features, logits = self._extract(images, device)
                store.update(torch.arange(start, end, device=device), features, logits)
            out = store.compute()
        finally:
            store.reset()
        out["stats"] = fid_statistics(out["features"])
        if rank == 0:
            out["path"] = self.cache.save(key, out["features"], out["stats"])
        barrier()
        return out

    def evaluate(self, model, datamodule, split: str = "train", num_samples: int = 50_000,
                 seed: int = 0, device=None, progress: bool = False) -> dict[str, float]:
        """Metrics of ``num_samples`` samples of ``model`` against ``split`` of ``datamodule``."""
        device = torch.device(device) if device is not None else model.device
        real = self.reference(datamodule, split, device, min_images=num_samples,
                              progress=progress)
        fake = self.generated(model, num_samples, seed, device, progress=progress)
        if not isinstance(self.extractor, ClassifierExtractor):
            fake.pop("labels")  # accuracy of conditional samples needs the data's own classes
        if self.keep_generated:
            self.last_generated = fake
        return fidelity_metrics(fake, real, real_stats=real["stats"], device=device,
                                **self.options)
