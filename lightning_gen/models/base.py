"""What every generative LightningModule of the suite shares.

* ``image_shape`` is a constructor argument (the CLI links it from the DataModule); ``setup``
  checks it against the data before the first step, with a clear error.
* ``sample(n)`` returns ``n`` images in [-1, 1]: the one interface the evaluation code, the image
  callbacks and ``lightning-gen sample`` use.
* ``log_images(batch)`` returns named image batches for the grids the callbacks write.
* Every loss that reaches ``backward`` is watched: a non-finite loss stops the run with
  :class:`NonFiniteLossError` at the next logging step or checkpoint, and no checkpoint is
  written from a state that saw it.
* ``log_terms`` logs a step's training terms, averaged across DDP ranks with one collective:
  the losses every step, every term at the steps Lightning writes logs (``train_logging``).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Literal

import lightning as L
import torch
from lightning.pytorch.trainer.states import TrainerFn

# GenerativeModel overrides on_after_batch_transfer (channels_last batches) for every model; the
# warning that a DataModule's own hook is then not used does not apply to ours.
warnings.filterwarnings("ignore", message=".*overridden `on_after_batch_transfer`.*")


class ImageShapeMismatchError(ValueError):
    """The model was built for other images than the DataModule provides."""


class LabelMismatchError(ValueError):
    """A conditional model was built for other labels than the DataModule provides."""


class NonFiniteLossError(RuntimeError):
    """A loss became NaN or infinite; training stopped before the update it would have made."""


def check_learning_rates(**rates: float) -> None:
    """Raise a ValueError naming the option of a learning rate that is not a positive number
    (torch's optimizers would say only "Invalid learning rate", once the run has started)."""
    for name, value in rates.items():
        if not value > 0:  # also catches NaN
            raise ValueError(f"{name} must be a positive learning rate, got {value} "
                             f"(--model.init_args.{name})")


class GenerativeModel(L.LightningModule):
    image_shape: tuple[int, int, int]
    #: Set by :class:`~lightning_gen.callbacks.performance.Performance`: batches are converted
    #: to ``torch.channels_last`` like the parameters.
    channels_last: bool = False
    #: Under float16 AMP, consecutive non-finite losses left to the GradScaler (each skips its
    #: update and halves the scale) before the run is stopped as diverged.
    max_skipped_amp_steps: int = 20
    #: Which training terms ``log_terms`` logs at every step (``--performance.train_logging``):
    #: ``"losses"`` (the losses, shown in the progress bar; every term at the steps Lightning
    #: writes logs and at the last step), ``"all"`` (every term every step, Lightning's
    #: convention) or ``"written"`` (every term, only at the steps Lightning writes logs).
    train_logging: Literal["all", "losses", "written"] = "losses"

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer else None
        if datamodule is not None:
            self.check_datamodule(datamodule)

    def check_datamodule(self, datamodule) -> None:
        """Raise a clear error if the model was built for other data than ``datamodule``
        yields (here: the image shape). Runs in ``setup``; the CLI calls it before the run
        folder is created."""
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

    # The guard records each loss's finiteness on the device (one op per backward, no host
    # sync) and reads the records (one host sync) only when Lightning writes logs, before every
    # checkpoint is written and at the end of training: a host sync per backward would stall
    # the GPU queue. A checkpoint is never written from a state that saw a non-finite loss, so
    # the last one on disk is the last good state.
    def on_before_backward(self, loss: torch.Tensor) -> None:
        # Runs for automatic optimisation and for every manual_backward alike.
        name = getattr(self, "_current_loss_name", None) or "train/loss"
        records = self.__dict__.setdefault("_non_finite", {})
        record = records.get(name) or records.setdefault(name, NonFiniteRecord())
        finite = torch.isfinite(loss.detach())
        step = self._trainer.global_step if self._trainer is not None else 0
        record.add(step, finite if finite.dim() == 0 else finite.all())

    def check_finite(self) -> None:
        """Raise :class:`NonFiniteLossError` if a loss was NaN/inf since training started.

        Under float16 AMP an overflow is routine: the GradScaler skips that update and halves
        its scale (a gradient penalty's scaled input gradients can overflow; PyTorch's AMP
        recipe relies on this), so only more than ``max_skipped_amp_steps`` consecutive
        non-finite losses count as divergence. Under DDP the record is reduced over ranks, so
        all ranks stop together.
        """
        records = self.__dict__.get("_non_finite")
        if not records:
            return
        scaler = getattr(self.trainer.precision_plugin, "scaler", None) if self._trainer else None
        limit = self.max_skipped_amp_steps if scaler is not None else 0
        for record in records.values():
            record.fold()
        stats = [[r.max_streak, r.first_step] for r in records.values()]
        if self._trainer is not None and self.trainer.world_size > 1:
            stats = self.trainer.strategy.reduce(
                torch.tensor(stats, device=self.device), reduce_op="max").tolist()
        for name, (max_streak, first_step) in zip(records, stats, strict=True):
            if max_streak > limit:
                self._raise_non_finite(name, int(first_step))

    def _raise_non_finite(self, name: str, first_step: int) -> None:
        trainer = self._trainer
        ckpt = getattr(trainer.checkpoint_callback, "last_model_path", "") if (
            trainer is not None and trainer.checkpoint_callback is not None) else ""
        kept = (f"the last good checkpoint is {ckpt}" if ckpt
                else "no checkpoint had been written")
        now = f" (detected at step {trainer.global_step})" if trainer is not None else ""
        precision = str(getattr(trainer, "precision", "")) if trainer is not None else ""
        # float16 overflows where float32 does not: suggest other precisions only under it.
        other = (", or --trainer.precision 32-true / bf16-mixed" if precision.startswith("16")
                 else "")
        raise NonFiniteLossError(
            f"{name} became non-finite at optimizer step {first_step}{now}; {kept}. Try a "
            f"lower learning rate or gradient clipping{other}."
        )

    def on_fit_start(self) -> None:
        self.__dict__.pop("_non_finite", None)

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        """Check the losses for non-finite values where Lightning writes logs; at the fit's last
        step, if Lightning would not write its logs there (a fit shorter than
        ``log_every_n_steps``, a ``max_steps`` between two logging steps), write them as at a
        logging step: a short run (a smoke test, ``--trainer.max_steps 10``) otherwise left no
        training values at all in ``metrics.csv``, ``summary.json`` or W&B. Subclasses log
        their step's values before calling this."""
        if self._logs_written_now():
            self.check_finite()
        elif self._last_step_of_fit(pending=0):
            connector = self.trainer._logger_connector
            connector.log_metrics(connector.metrics["log"])
            self.check_finite()

    def on_train_end(self) -> None:
        self.check_finite()

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        self.check_finite()  # raising here writes no file: the previous checkpoint stays

    def _logs_written_now(self) -> bool:
        """Whether Lightning writes logged training values at this step (every
        ``log_every_n_steps``)."""
        trainer = self._trainer
        if trainer is None or not trainer.training:
            return True
        connector = getattr(trainer, "_logger_connector", None)
        return connector is None or bool(connector.should_update_logs or trainer.fast_dev_run)

    def log_every_term_now(self) -> bool:
        """Whether this training step logs every term: Lightning writes logs now, or it is the
        last step of an epoch or of the fit (``max_steps``), so ``trainer.callback_metrics``
        holds every term when training stops."""
        trainer = self._trainer
        if trainer is None or not trainer.training or self._logs_written_now():
            return True
        if trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            return True
        # Manual optimisation logs after its optimizer steps (global_step counts them already);
        # automatic optimisation logs in training_step, before its step.
        return self._last_step_of_fit(pending=1 if self.automatic_optimization else 0)

    def _last_step_of_fit(self, pending: int) -> bool:
        """Whether this training step is the fit's last: ``max_steps`` reached (``pending``:
        optimizer steps of this batch not yet counted in ``global_step``), or the last batch of
        the last epoch."""
        trainer = self._trainer
        if trainer is None or not trainer.training:
            return False
        if 0 < trainer.max_steps <= trainer.global_step + pending:
            return True
        max_epochs = trainer.max_epochs
        return (bool(trainer.fit_loop.epoch_loop.batch_progress.is_last_batch)
                and max_epochs is not None and 0 < max_epochs <= trainer.current_epoch + 1)

    def log_terms(self, terms: dict[str, torch.Tensor],
                  losses: Iterable[str] = ("train/loss",)) -> None:
        """Log one training step's terms, the ``losses`` among them in the progress bar.

        Each ``self.log`` costs ~0.2 ms of Python, which on a fast GPU is time the hand-written
        loop does not spend, so by default (``train_logging = "losses"``) only the losses are
        logged at every step, and every term at the steps Lightning writes logs (what loggers
        store is the same as with ``"all"``) and at the last step. With the suite's progress
        bar, which reads the logged values at most every ``metrics_interval`` seconds, the
        losses are logged only at the steps it reads them (single process). Values are averaged
        over DDP ranks in one collective (``sync_dist=True`` would all-reduce each value
        separately).
        """
        losses = set(losses)
        if self.train_logging == "all" or self.log_every_term_now():
            chosen = terms
        elif self.train_logging == "losses" and self._progress_bar_reads_now():
            chosen = {k: v for k, v in terms.items() if k in losses}
        else:
            return
        if not chosen:
            return
        values = {k: v.detach().float() for k, v in chosen.items()}
        if self._trainer is not None and self.trainer.world_size > 1:
            stacked = self.trainer.strategy.reduce(torch.stack(list(values.values())),
                                                   reduce_op="mean")
            values = dict(zip(values, stacked.unbind(0), strict=True))
        for key, value in values.items():
            self.log(key, value, prog_bar=key in losses)

    def _progress_bar_reads_now(self) -> bool:
        """Whether the losses logged at this step can be read before the next step logs them
        again: always, unless the progress bar is the suite's, which reads the logged values at
        most every ``metrics_interval`` seconds and says when it will (``reads_metrics_next``);
        a ``self.log`` call costs ~0.2-0.5 ms of Lightning's Python, ~1% of a small CPU step."""
        trainer = self._trainer
        if trainer is None or trainer.world_size > 1:  # ranks must agree: log_terms reduces
            return True
        bar = trainer.progress_bar_callback
        reads_next = getattr(bar, "reads_metrics_next", None)
        return reads_next is None or reads_next()

    # --- fixed images of image-to-image models (grids, ``sample``) ------------------------------
    def _keep_fixed_images(self, *pairs: tuple[torch.Tensor, torch.Tensor]) -> None:
        """Fill fixed image buffers from the first training batches, in order, until full.

        ``pairs``: ``(buffer, batch images)``, the buffers ``num_fixed_samples`` rows each and
        filled alike (a source and its target). A batch of one image (CycleGAN's and pix2pix's
        paper setting) adds one row: the grids show ``num_fixed_samples`` different images, not
        copies of the first. The ``_fixed_set`` buffer (saved in checkpoints) marks them full.
        """
        if bool(self._fixed_set):
            return
        done = getattr(self, "_fixed_filled", 0)
        n = pairs[0][0].shape[0]
        take = min(n - done, pairs[0][1].shape[0])
        for buffer, images in pairs:
            buffer[done:done + take].copy_(images[:take])
        self._fixed_filled = done + take
        if self._fixed_filled >= n:
            self._fixed_set.fill_(True)

    def _fixed_count(self, buffer: torch.Tensor) -> int:
        """Rows of a fixed image buffer filled so far (all of them once ``_fixed_set``)."""
        return buffer.shape[0] if bool(self._fixed_set) else getattr(self, "_fixed_filled", 0)

    def _grid_images(self, batch, *buffers: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The images a grid of ``num_fixed_samples`` shows: the first of the callback's
        ``batch`` when it holds that many, else the fixed images kept so far (a small batch),
        else what the batch has."""
        n = buffers[0].shape[0]
        if batch is not None and batch[0].shape[0] >= n:
            return tuple(x[:n] for x in batch[:len(buffers)])
        filled = self._fixed_count(buffers[0])
        if filled > 0:
            return tuple(b[:filled] for b in buffers)
        return tuple(batch[:len(buffers)]) if batch is not None else buffers

    def _repeat_fixed(self, buffer: torch.Tensor, n: int) -> torch.Tensor:
        """``n`` images cycling through the fixed images kept so far (``sample`` of an
        image-to-image model)."""
        kept = buffer[:max(self._fixed_count(buffer), 1)]
        return kept.repeat(-(-n // kept.shape[0]), 1, 1, 1)[:n]

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        saved = checkpoint.get("hyper_parameters", {}).get("image_shape")
        if saved is not None and tuple(saved) != tuple(self.hparams.image_shape):
            raise ImageShapeMismatchError(
                f"the checkpoint was trained on images of shape (C, H, W) = {tuple(saved)} but "
                f"this {type(self).__name__} is built for {tuple(self.hparams.image_shape)} "
                "(from the data). Use the data the checkpoint was trained on."
            )
        self._evaluate_at_checkpoint_step(checkpoint)

    def _evaluate_at_checkpoint_step(self, checkpoint: dict) -> None:
        """``validate`` / ``test`` / ``predict`` with a checkpoint log at its step and epoch.

        Lightning restores no loop state outside ``fit``, and its loggers take the step and
        epoch of the fit loop (``_batches_that_stepped``, ``current_epoch``): 0 and 0, so a
        trained checkpoint's validation or test results went into W&B, TensorBoard and
        ``metrics.csv`` (and its image grids were captioned) as if measured before any
        training. For this call they are the checkpoint's, the step its training logged at;
        ``teardown`` puts the fit loop back.
        """
        trainer = self._trainer
        if trainer is None or trainer.state.fn in (None, TrainerFn.FITTING):
            return
        loop = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_loop.state_dict", {})
        if "_batches_that_stepped" not in loop and "global_step" not in checkpoint:
            return
        epoch_loop, epochs = trainer.fit_loop.epoch_loop, trainer.fit_loop.epoch_progress.current
        if getattr(self, "_fit_loop_before_checkpoint", None) is None:
            self._fit_loop_before_checkpoint = (epoch_loop._batches_that_stepped, epochs.completed)
        epoch_loop._batches_that_stepped = int(
            loop.get("_batches_that_stepped", checkpoint.get("global_step", 0)))
        epochs.completed = int(checkpoint.get("epoch", 0))

    def teardown(self, stage: str) -> None:
        saved = getattr(self, "_fit_loop_before_checkpoint", None)
        if saved is not None and self._trainer is not None:
            fit_loop = self.trainer.fit_loop
            fit_loop.epoch_loop._batches_that_stepped, fit_loop.epoch_progress.current.completed = saved
        self._fit_loop_before_checkpoint = None

    @torch.no_grad()
    def sample(self, n: int, labels: torch.Tensor | None = None) -> torch.Tensor:
        """``n`` images ``(n, C, H, W)`` in [-1, 1] (class-conditional where ``labels`` is given)."""
        raise NotImplementedError

    def log_images(self, batch) -> dict[str, torch.Tensor]:
        """Named image batches in [-1, 1] for the grid callback."""
        return {}

    def grid_layouts(self) -> dict[str, str]:
        """What the rows and columns of each ``log_images`` grid are, by name (the W&B caption
        and the PNG's description)."""
        return {}

    def _label_layout(self) -> str:
        """How a conditional model's fixed samples are labelled (empty if unconditional)."""
        k = self.hparams.get("num_classes", 0)
        if not k:
            return ""
        if self.hparams.get("condition_on", "class") == "attributes":
            return "; each drawn for the attribute vector of a training image"
        return f"; sample i drawn for class i mod {k} (column = class when {k} per row)"


class NonFiniteRecord:
    """Whether one loss stayed finite: per backward, ``add`` keeps the device flag ``finite``
    (no host sync); ``fold`` reads the kept flags with one host sync into the longest run of
    consecutive non-finite values (``max_streak``) and the optimizer step of the first one
    (``first_step``, -1 if none). Flags are folded every ``fold_every`` additions as well, so a
    run that never logs keeps a bounded list."""

    fold_every = 1024

    def __init__(self) -> None:
        self.pending: list[tuple[int, torch.Tensor]] = []
        self.streak = 0
        self.max_streak = 0
        self.first_step = -1

    def add(self, step: int, finite: torch.Tensor) -> None:
        self.pending.append((step, finite))
        if len(self.pending) >= self.fold_every:
            self.fold()

    def fold(self) -> None:
        if not self.pending:
            return
        flags = torch.stack([f for _, f in self.pending]).tolist()  # the one host sync
        for (step, _), finite in zip(self.pending, flags, strict=True):
            if finite:
                self.streak = 0
                continue
            self.streak += 1
            self.max_streak = max(self.max_streak, self.streak)
            if self.first_step < 0:
                self.first_step = step
        self.pending.clear()


def _channels_last(batch):
    if isinstance(batch, (list, tuple)):
        return type(batch)(_channels_last(b) for b in batch)
    if isinstance(batch, torch.Tensor) and batch.dim() == 4:
        return batch.contiguous(memory_format=torch.channels_last)
    return batch


class SingleObjectiveModel(GenerativeModel):
    """A generative model trained on one loss with one Adam optimizer (automatic optimisation):
    the autoencoders and likelihood models. Subclasses implement ``_step(batch, stage)``, which
    logs its terms under ``stage/`` and returns the loss; they have an ``lr`` hyperparameter."""

    def _step(self, batch, stage: str) -> torch.Tensor:
        raise NotImplementedError

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "test")

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
