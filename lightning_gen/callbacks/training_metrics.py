"""Sample quality while training, one switch: the CLI's ``--metrics.*`` options.

    lightning-gen fit --config experiments/dcgan_cifar10.yaml --metrics.every_n_epochs 5 \\
        --metrics.num_samples 10000 --metrics.reference train

Off by default (``every_n_epochs 0``): then nothing is built, loaded or downloaded and no hook
does any work. On, it is :class:`~lightning_gen.callbacks.GenerativeMetricsCallback`: every
``every_n_epochs`` epochs it logs ``metrics/fid``, ``metrics/is_mean``, ``metrics/kid_mean``,
``metrics/precision``, ``metrics/recall`` (and ``metrics/gan_test`` for class-conditional models with
a classifier extractor). The protocol (extractor, reference split, number of samples) is in the
run's ``config.yaml`` (``metrics.*``), in ``summary.json`` (``"protocol":
"inception-train-10000"`` beside each value) and in W&B's summary (``metrics/protocol``).
"""

from __future__ import annotations

from lightning import LightningModule, Trainer

from lightning_gen.callbacks.metrics import GenerativeMetricsCallback


class TrainingMetrics(GenerativeMetricsCallback):
    """FID / IS / KID / precision-recall every ``every_n_epochs`` epochs; off when 0.

    On, the extractor is built before the CLI creates the run folder and W&B run (a missing
    weights file or classifier checkpoint is one line and leaves nothing behind), and the
    reference features are computed (or read from the cache) when fitting starts, so a
    reference split smaller than ``num_samples`` stops the run before the first epoch, not
    after it.

    Args:
        every_n_epochs: Interval in training epochs; 0 (default): off, also at ``test``.
        **kwargs: The options of :class:`GenerativeMetricsCallback` (``num_samples``,
            ``reference``, ``feature_extractor``, ``weights_path``, ``batch_size``, ``seed``,
            ``cache_dir``, ``kid_subset_size``, ``isc_splits``, ``prefix``); the CLI lists them
            as ``--metrics.*``. Fewer samples while training are cheaper, but FID is biased
            upwards at small N: compare numbers of the same protocol only.
    """

    def __init__(self, every_n_epochs: int = 0, **kwargs) -> None:
        super().__init__(every_n_epochs=every_n_epochs, **kwargs)
        minimum = max(2, self.options["isc_splits"])
        if self.num_samples < minimum:
            raise ValueError(f"metrics.num_samples must be at least {minimum} (FID needs 2, the "
                             f"Inception Score one per split), got {self.num_samples}")

    @property
    def enabled(self) -> bool:
        return self.every_n_epochs > 0

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.enabled:
            super().setup(trainer, pl_module, stage)

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.enabled:
            if trainer.datamodule is None:
                raise ValueError("--metrics.every_n_epochs needs a DataModule for the reference "
                                 "images")
            # Fail before training on a split too small; compute (and cache) its features now.
            self.evaluator.reference(trainer.datamodule, self.reference, pl_module.device,
                                     min_images=self.num_samples)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.enabled:
            super().on_train_epoch_end(trainer, pl_module)

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.enabled:
            super().on_test_epoch_end(trainer, pl_module)
