"""What class-conditional models share: which labels a batch carries and which labels the
sample grids use.

Batches are ``(x, y)`` with ``y`` an integer class ``(B,)`` (MNIST, CIFAR-10, digits) or a 0/1
attribute vector ``(B, K)`` (CelebA's 40 attributes). Fixed grid labels are classes ``0..K-1``
in turn; for attribute vectors they are the first training batch's attributes (an all-zero
vector is not a face anyone has), copied once and then kept in the checkpoint.
"""

from __future__ import annotations

from typing import Literal

import torch

from lightning_gen.models.base import LabelMismatchError


class ConditionalMixin:
    """Mix into a :class:`~lightning_gen.models.base.GenerativeModel` with ``num_classes`` and
    ``condition_on`` hyperparameters; call ``_init_conditioning(num_fixed)`` in ``__init__``."""

    def _init_conditioning(self, num_fixed: int) -> None:
        k = self.hparams.num_classes
        if k < 0:
            raise ValueError(f"num_classes must be >= 0, got {k}")
        if self.condition_on == "attributes":
            labels = torch.zeros(num_fixed, k)
        else:
            labels = torch.arange(num_fixed) % max(k, 1)
        self.register_buffer("_fixed_labels", labels)
        self.register_buffer("_fixed_labels_set", torch.tensor(self.condition_on == "class"))

    @property
    def condition_on(self) -> Literal["class", "attributes"]:
        return self.hparams.get("condition_on", "class")

    @property
    def conditional(self) -> bool:
        return self.hparams.num_classes > 0

    def check_datamodule(self, datamodule) -> None:
        super().check_datamodule(datamodule)  # the image shape
        if not self.conditional or not hasattr(datamodule, "num_classes"):
            return
        kind = getattr(datamodule, "label_kind", "class")
        if (datamodule.num_classes, kind) != (self.hparams.num_classes, self.condition_on):
            raise LabelMismatchError(
                f"{type(self).__name__} is conditioned on {_describe(self.hparams.num_classes, self.condition_on)} "
                f"but {type(datamodule).__name__} yields "
                f"{_describe(datamodule.num_classes, kind)}. Set the model's num_classes and "
                "condition_on to match the data (or num_classes: 0 for an unconditional model)."
            )

    def conditioning(self, batch) -> torch.Tensor | None:
        if not self.conditional:
            return None
        if not isinstance(batch, (list, tuple)) or len(batch) < 2:
            raise ValueError(f"{type(self).__name__} is conditional (num_classes > 0) and needs "
                             "(image, label) batches")
        return batch[1]

    def fixed_labels(self) -> torch.Tensor | None:
        return self._fixed_labels if self.conditional else None

    def default_labels(self, n: int) -> torch.Tensor | None:
        """Labels for ``sample(n)`` without labels: the fixed ones, repeated to ``n``."""
        if not self.conditional:
            return None
        reps = -(-n // self._fixed_labels.shape[0])
        return self._fixed_labels.repeat(reps, *([1] * (self._fixed_labels.dim() - 1)))[:n]

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        super().on_train_batch_start(batch, batch_idx)  # keep the base classes' hooks
        if self.conditional and not bool(self._fixed_labels_set):
            y = batch[1][: self._fixed_labels.shape[0]].to(self._fixed_labels)
            reps = -(-self._fixed_labels.shape[0] // y.shape[0])
            self._fixed_labels.copy_(y.repeat(reps, 1)[: self._fixed_labels.shape[0]])
            self._fixed_labels_set.fill_(True)


def _describe(num_classes: int, kind: str) -> str:
    if num_classes == 0:
        return "no labels"
    if kind == "attributes":
        return f"{num_classes} binary attributes"
    return f"{num_classes} classes"
