"""The evaluator classifier: trained by the suite on real data, used to score generators.

Its penultimate features give a "classifier FID" (FID in a domain feature space, practical on
CPUs and for 1-channel data where Inception-v3 is slow and off-domain), its logits a classifier
Inception Score, and its predictions on class-conditional samples the accuracy of those samples
w.r.t. the labels they were asked for (the GAN-test accuracy of Shmelkov et al. 2018, reported as
``gan_test`` by ``lightning-gen evaluate``).

It subclasses :class:`GenerativeModel` only to share the CLI's ``image_shape`` link and the shape
check in ``setup``; it does not sample (``sample`` raises ``NotImplementedError``).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from lightning_gen.models.base import GenerativeModel, check_learning_rates
from lightning_gen.nets.classifier import ConvClassifier


def random_shift_flip(x: torch.Tensor, max_shift: int, flip: bool) -> torch.Tensor:
    """Per-image random translation by up to ``max_shift`` pixels (zero/-1 padding, as in the
    usual pad-and-crop) and, if ``flip``, random horizontal flips. ``x`` in [-1, 1]."""
    b, _, h, w = x.shape
    if max_shift > 0:
        padded = F.pad(x, [max_shift] * 4, value=-1.0)
        dy = torch.randint(0, 2 * max_shift + 1, (b,), device=x.device)
        dx = torch.randint(0, 2 * max_shift + 1, (b,), device=x.device)
        rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]  # (B,1,H,1)
        cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]  # (B,1,1,W)
        batch = torch.arange(b, device=x.device)[:, None, None, None]
        chan = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
        x = padded[batch, chan, rows, cols]
    if flip:
        mask = torch.rand(b, device=x.device) < 0.5
        x = torch.where(mask[:, None, None, None], x.flip(-1), x)
    return x


class Classifier(GenerativeModel):
    """Image classifier trained with cross-entropy; the suite's evaluation feature extractor.

    Args:
        image_shape: ``(C, H, W)`` of the images (linked from the DataModule by the CLI).
        num_classes: Number of classes (10 for MNIST and CIFAR-10).
        width: Channels of the first conv stage.
        feature_dim: Size of the penultimate features used for classifier FID.
        dropout: Dropout before the output layer.
        augment: ``"none"``, ``"shift"`` (random translations; digits) or ``"shift_flip"``
            (translations and horizontal flips; natural images).
        max_shift: Largest translation in pixels.
        lr: AdamW learning rate (cosine-annealed to 0 over training).
        weight_decay: AdamW weight decay.
    """

    def __init__(
        self,
        image_shape: tuple[int, int, int] = (1, 28, 28),
        num_classes: int = 10,
        width: int = 32,
        feature_dim: int = 128,
        dropout: float = 0.0,
        augment: Literal["none", "shift", "shift_flip"] = "shift",
        max_shift: int = 2,
        lr: float = 2e-3,
        weight_decay: float = 5e-4,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        check_learning_rates(lr=lr)
        self.save_hyperparameters()
        self.net = ConvClassifier(image_shape, num_classes, width, feature_dim, dropout)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features ``(B, feature_dim)`` of images in [-1, 1]."""
        return self.net.features(x)

    def head(self, features: torch.Tensor) -> torch.Tensor:
        return self.net.head(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _labels(self, batch) -> torch.Tensor:
        y = batch[1]
        if not torch.is_tensor(y) or y.dim() != 1:
            raise ValueError("the evaluator classifier needs one integer class label per image")
        return y.long()

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y = batch[0], self._labels(batch)
        hp = self.hparams
        if hp.augment != "none":
            x = random_shift_flip(x, hp.max_shift, flip=hp.augment == "shift_flip")
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        self.log_terms({"train/loss": loss, "train/acc": (logits.argmax(1) == y).float().mean()},
                       losses=["train/loss", "train/acc"])  # averaged over DDP ranks
        return loss

    def _eval_step(self, batch, stage: str) -> None:
        x, y = batch[0], self._labels(batch)
        logits = self(x)
        self.log(f"{stage}/loss", F.cross_entropy(logits, y), sync_dist=True)
        self.log(f"{stage}/acc", (logits.argmax(1) == y).float().mean(), prog_bar=True,
                 sync_dist=True)

    def validation_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr,
                                weight_decay=self.hparams.weight_decay)
        total = max(1, int(self.trainer.estimated_stepping_batches)) if self._trainer else 1
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
