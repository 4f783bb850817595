"""The run's ``checkpoints/last.ckpt``, written at every epoch boundary the checkpoint trigger
names, as the suite's defaults (``save_last=True, save_top_k=0``) promise.

Lightning 2.6 writes ``last.ckpt`` at the end of an epoch (or validation) only when a top-k
checkpoint was saved at the same step (2.5 wrote it whenever the trigger fired). With
``save_top_k=0`` no top-k checkpoint is ever saved, so a run kept nothing between its start and
its end: a process killed by the kernel's OOM killer, a node failure or ``kill -9`` lost every
epoch it had trained. :class:`LastCheckpoint` writes ``last.ckpt`` there itself when Lightning
did not; under Lightning 2.5 (which does) it adds nothing. Step-triggered saves
(``every_n_train_steps``) and the end of training are Lightning's own, as before, except that a
``fast_dev_run`` writes none.

Lightning 2.6 also never saves by time (``train_time_interval``) for a manually optimised model
(every GAN of the suite): its branch for manual optimisation returns before the time check
(Lightning-AI/pytorch-lightning#21699), so a GAN run given ``--checkpoint.train_time_interval``
wrote nothing until it ended. :class:`LastCheckpoint` does that check itself there.
"""

from __future__ import annotations

import time
import warnings
from typing import Any

from lightning import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

# Lightning 2.6 warns, at every step checkpoint (`every_n_train_steps`) of a manually optimised
# model (the GANs), that the checkpoint holds the weights *after* the step and shows code to save
# them before it. After is what resuming needs: the weights, optimizer states and counters of
# step N together. Not a problem of the suite's models, so not shown to its users.
warnings.filterwarnings(
    "ignore", message="Using ModelCheckpoint with manual optimization and every_n_train_steps")


class LastCheckpoint(ModelCheckpoint):
    """Lightning's :class:`~lightning.pytorch.callbacks.ModelCheckpoint` with ``last.ckpt``
    saved at every epoch trigger (``every_n_epochs``), top-k or not. Same arguments, same
    files, same state in the checkpoint (saved under ``ModelCheckpoint``'s key, so checkpoints
    stay interchangeable with Lightning's callback)."""

    @property
    def state_key(self) -> str:
        key = super().state_key
        return ModelCheckpoint.__qualname__ + key[len(type(self).__qualname__):]

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Lightning 2.6 writes last.ckpt here even in a fast_dev_run ("checkpointing is
        # suppressed"), and `--ckpt_path last` then took that one-batch checkpoint for the
        # experiment's latest run.
        if not trainer.fast_dev_run:
            super().on_train_end(trainer, pl_module)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        checked = self._last_time_checked
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        # Under 2.5 (or once Lightning checks the time for manual optimisation) a save by time
        # moved the clock: nothing left to do.
        if (pl_module.automatic_optimization or self._train_time_interval is None
                or self._last_time_checked != checked
                or self._should_skip_saving_checkpoint(trainer)):
            return
        now = time.monotonic()
        skip = checked is None or now - checked < self._train_time_interval.total_seconds()
        # Rank 0 decides, so that every rank saves (a collective) or none does.
        if trainer.strategy.broadcast(skip):
            return
        self._last_time_checked = now
        candidates = self._monitor_candidates(trainer)
        self._save_topk_checkpoint(trainer, candidates)
        self._save_last_checkpoint(trainer, candidates)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_missed(trainer)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_missed(trainer)

    def _save_last_if_missed(self, trainer: Trainer) -> None:
        if (not self.save_last or self._should_skip_saving_checkpoint(trainer)
                or self._every_n_epochs < 1
                or (trainer.current_epoch + 1) % self._every_n_epochs != 0):
            return
        # _should_skip_saving_checkpoint is true once anything was saved at this step.
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
