"""Builders for the memorization and mode-coverage tests: a generator that returns given
images, tiny format-true data, and the evaluator run those tests share."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from lightning_gen.cli import main
from lightning_gen.metrics import GenerativeEvaluator, build_extractor, load_split
from lightning_gen.models import GenerativeModel


class CopyGenerator(GenerativeModel):
    """'Samples' are stored images (a buffer, so a checkpoint carries them), drawn uniformly
    with the sampling seed: a generator that copies its training data."""

    def __init__(self, image_shape: tuple[int, int, int] = (1, 16, 16), num_images: int = 1
                 ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.register_buffer("images", torch.zeros(num_images, *image_shape))

    @classmethod
    def of(cls, images: torch.Tensor) -> CopyGenerator:
        model = cls(tuple(images.shape[1:]), len(images))
        model.images.copy_(images)
        return model

    def drawn(self, n: int) -> torch.Tensor:
        """Which stored images ``sample(n)`` returns (under the same seed)."""
        return torch.randint(len(self.images), (n,), device=self.images.device)

    @torch.no_grad()
    def sample(self, n: int, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.images[self.drawn(n)]


class NoiseGenerator(GenerativeModel):
    """Gaussian noise images (clamped to [-1, 1])."""

    def __init__(self, image_shape: tuple[int, int, int] = (1, 16, 16)) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.register_buffer("dummy", torch.zeros(1))

    @torch.no_grad()
    def sample(self, n: int, labels: torch.Tensor | None = None) -> torch.Tensor:
        return torch.randn(n, *self.hparams.image_shape).clamp(-1, 1)


def split_images(datamodule, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images in [-1, 1], labels)`` of a whole split, through the DataModule's transform."""
    dataset = load_split(datamodule, split)
    images, labels = zip(*(dataset[i] for i in range(len(dataset))), strict=True)
    return torch.stack(images), torch.tensor([int(y) for y in labels])


def evaluator(classifier_ckpt, cache_dir, batch_size: int = 16) -> GenerativeEvaluator:
    ev = GenerativeEvaluator(build_extractor(f"classifier:{classifier_ckpt}"),
                             batch_size=batch_size, cache_dir=str(cache_dir), isc_splits=2,
                             kid_subsets=2, kid_subset_size=8)
    ev.keep_generated = True
    return ev


def run_evaluate(setup: dict, ckpt, out: Path, *extra: str, batch_size: int = 8) -> dict:
    """``lightning-gen evaluate`` of ``ckpt`` on 20 samples vs the test split, in the space of
    ``setup["clf"]`` (a tiny classifier), with ``extra`` options; the JSON it wrote."""
    main(["evaluate", "--ckpt_path", str(ckpt), "--num_samples", "20", "--reference", "test",
          "--feature_extractor", f"classifier:{setup['clf']}", "--batch_size", str(batch_size),
          "--kid_subset_size", "8", "--kid_subsets", "2", "--isc_splits", "2",
          "--accelerator", "cpu", "--progress", "false", "--trust_checkpoint", "true",
          "--cache_dir", str(out.parent / "cache"), "--out", str(out), *extra])
    return json.loads(out.read_text())
