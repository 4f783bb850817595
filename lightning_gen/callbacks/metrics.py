"""FID / IS / KID / precision-recall during training and at ``test``, on one device or many."""

from __future__ import annotations

import re
import warnings

from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.utilities.warnings import PossibleUserWarning

from lightning_gen.metrics.evaluator import GenerativeEvaluator
from lightning_gen.metrics.extractors import build_extractor
from lightning_gen.metrics.fidelity import PROTOCOL_KEYS


class GenerativeMetricsCallback(Callback):
    """Every ``every_n_epochs`` training epochs, and at the end of ``test``, draw ``num_samples``
    samples, extract their features in float32 (whatever the training precision), and log
    ``<prefix>fid``, ``is_mean``, ``is_std``, ``kid_mean``, ``kid_std``, ``precision``,
    ``recall``, ``density``, ``coverage`` (and ``gan_test`` for class-conditional models with a
    classifier extractor; no ``is_*`` with ``vgg16``, ``clip-vit-b-32`` or ``dinov2-vit-l-14``,
    which have no class logits).

    Under DDP each rank generates its share of the batches and the features are gathered
    (every rank takes part; the values are those of one process with the same seeds). Real
    features of the reference split come from the reference cache after the first time.

    Args:
        every_n_epochs: Interval in training epochs (0: only at ``test``).
        num_samples: Generated samples per evaluation (papers: 50,000; keep it smaller while
            training, and name the protocol when you compare numbers).
        reference: Real split to compare with (``train`` or ``test``).
        feature_extractor: ``inception``, ``vgg16``, ``clip-vit-b-32``, ``dinov2-vit-l-14`` or
            ``classifier:<checkpoint>`` (see :func:`~lightning_gen.metrics.build_extractor`).
        weights_path: Local weights file (Inception-v3, VGG-16, CLIP) or pre-filled torch hub
            folder (DINOv2) for offline machines.
        batch_size: Samples per generated batch.
        seed: Base seed of the samples (the same samples every evaluation, up to the weights).
        cache_dir: Reference-feature cache folder.
        kid_subset_size: KID subset size (capped at the sample count).
        isc_splits: Inception Score splits.
        prefix: Prefix of the logged names.
    """

    def __init__(
        self,
        every_n_epochs: int = 1,
        num_samples: int = 10_000,
        reference: str = "train",
        feature_extractor: str = "inception",
        weights_path: str | None = None,
        batch_size: int = 100,
        seed: int = 0,
        cache_dir: str | None = None,
        kid_subset_size: int = 1000,
        isc_splits: int = 10,
        prefix: str = "metrics/",
    ) -> None:
        if every_n_epochs < 0:
            raise ValueError(f"every_n_epochs must be >= 0, got {every_n_epochs}")
        self.every_n_epochs = every_n_epochs
        self.num_samples = num_samples
        self.reference = reference
        self.seed = seed
        self.prefix = prefix
        self.spec = (feature_extractor, weights_path)
        self.options = {"batch_size": batch_size, "cache_dir": cache_dir,
                        "kid_subset_size": kid_subset_size, "isc_splits": isc_splits}
        self.evaluator: GenerativeEvaluator | None = None
        self.last_metrics: dict[str, float] = {}

    def check_datamodule(self, datamodule) -> None:
        """Build the feature extractor before a fit's run folder and W&B run exist (the CLI
        calls this first), so a missing classifier checkpoint or weights file is one line, not
        a run folder left behind."""
        if self.every_n_epochs > 0:
            self.setup(None, None, "fit")  # type: ignore[arg-type]

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        # The values are computed from features gathered over all ranks, the same on each, so
        # they are logged without a reduction; Lightning's advice to add sync_dist=True, nine
        # lines at every evaluation of a DDP run, would only cost an all-reduce. Here, not in
        # __init__: every process (ddp_spawn unpickles the callback) sets up the callback.
        warnings.filterwarnings(
            "ignore", category=PossibleUserWarning,
            message=rf"It is recommended to use `self\.log\('{re.escape(self.prefix)}")
        # Built once (extractor weights and torchmetrics states), not per evaluation.
        if self.evaluator is None:
            self.evaluator = GenerativeEvaluator(build_extractor(*self.spec), **self.options)

    def compute(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, float]:
        datamodule = trainer.datamodule
        if datamodule is None:
            raise ValueError("GenerativeMetricsCallback needs a DataModule for the reference data")
        metrics = self.evaluator.evaluate(pl_module, datamodule, self.reference, self.num_samples,
                                          seed=self.seed, device=pl_module.device)
        self.last_metrics = metrics
        return metrics

    def _log(self, pl_module: LightningModule, metrics: dict[str, float]) -> None:
        # Every rank holds the same gathered values: no further reduction.
        # Numbers only: the protocol keys and `not_computed` (reasons) are not metrics.
        values = {f"{self.prefix}{k}": float(v) for k, v in metrics.items()
                  if isinstance(v, (int, float)) and k not in PROTOCOL_KEYS}
        pl_module.log_dict(values, sync_dist=False, rank_zero_only=False)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        n = self.every_n_epochs
        if n > 0 and (trainer.current_epoch + 1) % n == 0 and not trainer.sanity_checking:
            self._log(pl_module, self.compute(trainer, pl_module))

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._log(pl_module, self.compute(trainer, pl_module))
