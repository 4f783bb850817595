"""What every generative LightningModule of the suite shares.

* ``image_shape`` is a constructor argument (the CLI links it from the DataModule); ``setup``
  checks it against the data before the first step, with a clear error.
* ``sample(n)`` returns ``n`` images in [-1, 1]: the one interface the evaluation code, the image
  callbacks and ``lightning-gen sample`` use.
* ``log_images(batch)`` returns named image batches for the grids the callbacks write.
"""

from __future__ import annotations

import torch
import lightning as L


class ImageShapeMismatchError(ValueError):
    """The model was built for other images than the DataModule provides."""


class GenerativeModel(L.LightningModule):
    image_shape: tuple[int, int, int]

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer else None
        data_shape = getattr(datamodule, "image_shape", None)
        if data_shape is not None and tuple(data_shape) != tuple(self.hparams.image_shape):
            raise ImageShapeMismatchError(
                f"{type(self).__name__} was built for images of shape (C, H, W) = "
                f"{tuple(self.hparams.image_shape)} but {type(datamodule).__name__} yields "
                f"{tuple(data_shape)}. Set the model's image_shape (or the data's image_size) "
                "so they agree, or drop model.image_shape from the config to take the data's."
            )

    @torch.no_grad()
    def sample(self, n: int, labels: torch.Tensor | None = None) -> torch.Tensor:
        """``n`` images ``(n, C, H, W)`` in [-1, 1] (class-conditional where ``labels`` is given)."""
        raise NotImplementedError

    def log_images(self, batch) -> dict[str, torch.Tensor]:
        """Named image batches in [-1, 1] for the grid callback."""
        return {}
