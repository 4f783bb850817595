"""CelebA for attribute classifiers whose training set is resampled each epoch (DB-VAE).

Batches are CelebADataModule's ``(image, attributes)``; only the training order differs: it is
drawn, with replacement, by a :class:`ResamplingSampler` whose per-image probabilities the model
sets before each epoch (uniform until then). Validation and test loaders are unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Sampler

from datamodules.celeba import CelebADataModule


class ResamplingSampler(Sampler[int]):
    """Draws ``num_samples`` indices of ``range(num_items)`` with replacement, index ``i`` with
    probability ``weights[i]`` (uniform until :meth:`set_weights`).

    Epoch ``e`` draws with a generator seeded ``seed + e`` (:meth:`set_epoch`), so every DDP rank
    draws the same sequence from the same weights; under DDP Lightning wraps this sampler in its
    ``DistributedSamplerWrapper``, which gives each rank its share of that sequence.

    Args:
        num_items: Size of the dataset.
        num_samples: Indices per epoch (``None``: ``num_items``).
        seed: Base seed of the draws.
    """

    def __init__(self, num_items: int, num_samples: int | None = None, seed: int = 0) -> None:
        if num_items < 1:
            raise ValueError(f"the resampled dataset is empty (num_items={num_items})")
        self.num_items = num_items
        self.num_samples = num_items if num_samples is None else num_samples
        self.seed = seed
        self.epoch = 0
        self.weights = torch.full((num_items,), 1.0 / num_items, dtype=torch.float64)

    def set_weights(self, weights: torch.Tensor) -> None:
        weights = torch.as_tensor(weights, dtype=torch.float64).detach().cpu().flatten()
        if weights.numel() != self.num_items:
            raise ValueError(f"got {weights.numel()} sampling weights for {self.num_items} images")
        if not (torch.isfinite(weights).all() and (weights >= 0).all() and weights.sum() > 0):
            raise ValueError("sampling weights must be finite, non-negative and not all zero")
        self.weights = weights / weights.sum()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        drawn = torch.multinomial(self.weights, self.num_samples, replacement=True,
                                  generator=generator)
        return iter(drawn.tolist())


class CelebAAttributesDataModule(CelebADataModule):
    """CelebA (``(image, 40 attributes)`` batches) with a training set resampled each epoch by
    the model (:class:`~lightning_gen.models.DBVAE`): ``sampler`` draws images with the
    probabilities set by ``set_sampling_weights``, and ``encoding_dataloader`` gives the
    training images in order (no shuffling, no resampling) for the model to encode.

    Args: see :class:`~datamodules.base.ImageDataModule`.
    """

    sampler: ResamplingSampler | None = None

    def train_dataloader(self) -> DataLoader:
        if self.train_set is None:
            raise RuntimeError(f"{type(self).__name__}.setup() must run before asking for a loader")
        if self.sampler is None or self.sampler.num_items != len(self.train_set):
            self.sampler = ResamplingSampler(len(self.train_set), seed=self.seed)
        return self._loader(self.train_set, shuffle=False, drop_last=True, sampler=self.sampler)

    def encoding_dataloader(self) -> DataLoader:
        """The training images in dataset order, for the per-epoch encoding."""
        return self._loader(self.train_set, shuffle=False)

    def set_sampling_weights(self, weights: torch.Tensor, epoch: int) -> None:
        """Draw epoch ``epoch``'s training images with probabilities ``weights`` (one per
        training image, in dataset order)."""
        if self.sampler is None:
            self.train_dataloader()
        self.sampler.set_weights(weights)
        self.sampler.set_epoch(epoch)
