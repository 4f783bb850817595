"""What every generative LightningModule of the suite shares.

* ``image_shape`` is a constructor argument (the CLI links it from the DataModule); ``setup``
  checks it against the data before the first step, with a clear error.
* ``sample(n)`` returns ``n`` images in [-1, 1]: the one interface the evaluation code, the image
  callbacks and ``lightning-gen sample`` use.
* ``log_images(batch)`` returns named image batches for the grids the callbacks write.
* Every loss that reaches ``backward`` is checked: a non-finite loss stops the run with
  :class:`NonFiniteLossError` *before* the update, so no checkpoint holds the broken state.
* ``log_terms`` logs a dict of scalars reduced across DDP ranks with one collective.
"""

from __future__ import annotations

import warnings

import lightning as L
import torch

# GenerativeModel overrides on_after_batch_transfer (channels_last batches) for every model; the
# warning that a DataModule's own hook is then not used does not apply to ours.
warnings.filterwarnings("ignore", message=".*overridden `on_after_batch_transfer`.*")


class ImageShapeMismatchError(ValueError):
    """The model was built for other images than the DataModule provides."""


class NonFiniteLossError(RuntimeError):
    """A loss became NaN or infinite; training stopped before the update it would have made."""


class GenerativeModel(L.LightningModule):
    image_shape: tuple[int, int, int]
    #: Set by :class:`~lightning_gen.callbacks.performance.Performance`: batches are converted
    #: to ``torch.channels_last`` like the parameters.
    channels_last: bool = False
    #: Under float16 AMP, consecutive non-finite losses left to the GradScaler (each skips its
    #: update and halves the scale) before the run is stopped as diverged.
    max_skipped_amp_steps: int = 20

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

    # ------------------------------------------------------------------------------------------
    # Scaling: channels_last batches, the non-finite-loss guard, metrics reduced across ranks
    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        if self.channels_last:
            batch = _channels_last(batch)
        return batch

    def on_before_backward(self, loss: torch.Tensor) -> None:
        # Runs for automatic optimisation and for every manual_backward alike. Under DDP the
        # flag is summed over ranks, so all ranks stop together (no rank waits in a collective
        # for one that raised). The check costs one host sync per backward.
        bad = (~torch.isfinite(loss.detach())).any().float()
        if self._trainer is not None and self.trainer.world_size > 1:
            bad = self.trainer.strategy.reduce(bad, reduce_op="sum")
        if bad.item() == 0:
            self._non_finite_streak = 0
            return
        # Under float16 AMP an overflow is routine: the GradScaler skips that update and lowers
        # its scale (a gradient penalty's scaled input gradients can overflow, PyTorch's AMP
        # recipe relies on this). Only a loss that stays non-finite while the scale keeps
        # halving is divergence.
        scaler = getattr(self.trainer.precision_plugin, "scaler", None) if self._trainer else None
        self._non_finite_streak = getattr(self, "_non_finite_streak", 0) + 1
        if scaler is None or self._non_finite_streak > self.max_skipped_amp_steps:
            self._raise_non_finite(loss)

    def _raise_non_finite(self, loss: torch.Tensor) -> None:
        step = self.trainer.global_step if self._trainer is not None else -1
        where = getattr(self, "_current_loss_name", None) or "the training loss"
        ckpt = getattr(self.trainer.checkpoint_callback, "last_model_path", "") if (
            self._trainer is not None and self.trainer.checkpoint_callback is not None) else ""
        kept = (f"the last good checkpoint is {ckpt}" if ckpt
                else "no checkpoint was written before it")
        raise NonFiniteLossError(
            f"{where} became non-finite ({loss.detach().float().flatten()[0].item()}) at "
            f"optimizer step {step}; training stopped before that update, {kept}. Try a lower "
            "learning rate, gradient clipping, or --trainer.precision 32-true / bf16-mixed."
        )

    def log_terms(self, terms: dict[str, torch.Tensor], **kwargs) -> None:
        """``self.log_dict(terms)`` with the values averaged over DDP ranks in one collective
        (``sync_dist=True`` would all-reduce each value separately, every step)."""
        terms = {k: v.detach().float() for k, v in terms.items()}
        if terms and self._trainer is not None and self.trainer.world_size > 1:
            stacked = self.trainer.strategy.reduce(torch.stack(list(terms.values())),
                                                   reduce_op="mean")
            terms = dict(zip(terms, stacked.unbind(0), strict=True))
        self.log_dict(terms, **kwargs)

    @torch.no_grad()
    def sample(self, n: int, labels: torch.Tensor | None = None) -> torch.Tensor:
        """``n`` images ``(n, C, H, W)`` in [-1, 1] (class-conditional where ``labels`` is given)."""
        raise NotImplementedError

    def log_images(self, batch) -> dict[str, torch.Tensor]:
        """Named image batches in [-1, 1] for the grid callback."""
        return {}


def _channels_last(batch):
    if isinstance(batch, (list, tuple)):
        return type(batch)(_channels_last(b) for b in batch)
    if isinstance(batch, torch.Tensor) and batch.dim() == 4:
        return batch.contiguous(memory_format=torch.channels_last)
    return batch
