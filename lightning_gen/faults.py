"""What a run does when something goes wrong: a signal, a damaged data file, a full disk, a path
that cannot work. The last good state is saved where that is possible, and the user reads one
line that says what happened and what to do.

* :func:`configure_trainer` gives every run the suite's :class:`~lightning_gen.checkpoint_io.
  AtomicCheckpointIO` (atomic, durable checkpoints) and the :class:`SaveOnInterrupt` callback.
* :class:`SaveOnInterrupt`: SIGTERM (a scheduler, ``timeout``, ``docker stop``) or SIGINT
  (Ctrl-C) during ``fit`` stops at the next batch boundary with a checkpoint of that state; a
  damaged data file met during training stops the run after saving the state before it.
* :func:`check_ckpt_path`, :func:`check_run_folder` and :func:`check_new_run_folder`: user
  errors reported before the run folder and the W&B run exist.
* :func:`report`: the one line (and exit status) the CLI prints for each of these.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import CheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from datamodules.base import CorruptDataError
from lightning_gen.callbacks.metrics_file import METRICS_FILE
from lightning_gen.checkpoint_io import AtomicCheckpointIO, CheckpointWriteError
from lightning_gen.run_record import logging_step
from lightning_gen.runs import logger_dir, run_dir

#: ``--ckpt_path`` values Lightning resolves itself (not file paths).
SPECIAL_CKPT_PATHS = ("last", "best", "hpc")


def configure_trainer(trainer_config: dict, kwargs: dict) -> dict:
    """Add the suite's checkpoint IO plugin and :class:`SaveOnInterrupt` to the Trainer's
    arguments (``kwargs`` override ``trainer_config``, as in ``LightningCLI.instantiate_trainer``).
    A config that brings its own ``CheckpointIO`` keeps it; DeepSpeed and XLA strategies, which
    save through their own IO, get none."""
    callbacks = kwargs.get("callbacks", trainer_config.get("callbacks")) or []
    callbacks = list(callbacks) if isinstance(callbacks, (list, tuple)) else [callbacks]
    kwargs["callbacks"] = [*callbacks, SaveOnInterrupt()]
    plugins = kwargs.get("plugins", trainer_config.get("plugins")) or []
    plugins = list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
    strategy = str(kwargs.get("strategy", trainer_config.get("strategy", ""))).lower()
    if (not any(isinstance(p, CheckpointIO) for p in plugins)
            and not any(name in strategy for name in ("deepspeed", "xla"))):
        kwargs["plugins"] = [*plugins, AtomicCheckpointIO()]
    return kwargs


class SaveOnInterrupt(Callback):
    """Save the state a run reached when it is stopped from outside or by a damaged file.

    While training runs, SIGTERM (a scheduler, ``timeout``, ``docker stop``) and SIGINT
    (Ctrl-C) only set a flag here; at the end of the current training batch (Lightning's own
    mid-epoch checkpoint point, so ``--ckpt_path last`` continues at the next batch) the state
    is saved as the run's ``last.ckpt`` and the run stops with ``SIGTERMException`` carrying
    the signal, the step and the checkpoint; Lightning then finishes the loggers (the W&B run)
    and the CLI prints :func:`report`'s line and exits 143 / 130. A second Ctrl-C stops at once.
    Under DDP the ranks agree on the flag at every batch end (one small all-reduce; Lightning's
    own SIGTERM handling stops rank 0 alone, and a checkpoint there would wait for the others
    forever), so all ranks save and stop at the same batch. SIGUSR1 (SLURM's requeue signal,
    Lightning's ``hpc_ckpt`` save and requeue) is left alone. A signal during validation takes
    effect at the next training batch end.

    A :class:`~datamodules.base.CorruptDataError` raised while training saves the state before
    the batch that could not be loaded (single process only: under DDP the other ranks wait in
    a collective and could not join the save).
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    # ------------------------------------------------------------------------------------------
    # Signals
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.signum = None
        self._resumed = trainer.ckpt_path is not None
        if threading.current_thread() is threading.main_thread():
            self._previous = {signum: signal.getsignal(signum) for signum in self.SIGNALS}
            for signum in self.SIGNALS:
                signal.signal(signum, self._on_signal)

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any,
                             batch_idx: int) -> None:
        # The first batch of a fit resumed from a mid-epoch checkpoint (SIGTERM, Ctrl-C, a
        # step or time interval): say once what the rest of that epoch is. This replaces
        # Lightning's warning of "unreliable results", which it decides from optimizer steps,
        # so a GAN with n_critic > 1 got it after end-of-epoch checkpoints too (cli.py).
        if not getattr(self, "_resumed", False):
            return
        self._resumed = False
        done = trainer.fit_loop.epoch_loop.batch_progress.current.ready - 1
        total = trainer.num_training_batches
        if done > 0 and rank_zero_only.rank == 0 and total != float("inf"):
            print(f"lightning-gen: resumed after batch {done} of {int(total)} of epoch "
                  f"{trainer.current_epoch + 1}: the data loaders keep no position, so its other "
                  f"{int(total) - done} batches come from a new shuffle of the training data "
                  "(some images twice, some not at all); the next epochs are whole",
                  file=sys.stderr, flush=True)

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt  # the second Ctrl-C: stop now, without a checkpoint
            return
        self.signum = signum
        # Ctrl-C reaches every process of the terminal's group, each DDP rank too: rank 0 says
        # it once (it was one line per rank).
        if signum == signal.SIGINT and rank_zero_only.rank == 0:
            print("\nlightning-gen: interrupted: saving a checkpoint at the end of this batch "
                  "(press Ctrl-C again to stop at once)", file=sys.stderr, flush=True)

    def _restore_signals(self) -> None:
        if self._previous and threading.current_thread() is threading.main_thread():
            for signum, handler in self._previous.items():
                signal.signal(signum, handler)
        self._previous = {}

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        stop = self.signum is not None
        if trainer.world_size > 1:
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if not stop:
            return
        stopped = SIGTERMException()
        stopped.signum = self.signum or signal.SIGTERM  # a rank the signal did not reach
        _save_for(stopped, trainer, batch_counted=False)
        raise stopped

    # Lightning calls on_train_end before it restores the handlers it found (success), and
    # on_exception before its teardown (failure): give back ours first in both cases.
    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._restore_signals()

    def on_exception(self, trainer: Trainer, pl_module: LightningModule,
                     exception: BaseException) -> None:
        self._restore_signals()
        if hasattr(exception, "step"):
            return  # raised (and saved) by on_train_batch_end
        if isinstance(exception, SIGTERMException):  # Lightning's own, outside training batches
            exception.signum = signal.SIGTERM
        elif not isinstance(exception, CorruptDataError):
            return
        if trainer.world_size > 1:
            exception.checkpoint, exception.save_error = None, None
            _record_step(exception, trainer, batch_counted=True)
            return
        _save_for(exception, trainer, batch_counted=True)


def _record_step(exception: BaseException, trainer: Trainer, batch_counted: bool) -> None:
    """The step :func:`report` names: the one W&B and metrics.csv file the last finished
    batch's values at (batches from 0; Lightning counts a batch after ``on_train_batch_end``:
    ``batch_counted`` False there), and Lightning's ``global_step``, the optimizer steps (two per
    batch for a GAN) that ``--trainer.max_steps`` counts."""
    exception.step = logging_step(trainer) - (1 if batch_counted else 0)
    exception.optimizer_steps = trainer.global_step


def _save_for(exception: BaseException, trainer: Trainer, batch_counted: bool) -> None:
    """Save the trainer's state for ``exception`` (while fitting, after a training step) and
    record the step, the checkpoint (or why it could not be saved) on it for :func:`report`."""
    _record_step(exception, trainer, batch_counted)
    exception.checkpoint, exception.save_error = None, None
    if trainer.state.fn != "fit" or trainer.sanity_checking or trainer.global_step == 0:
        return
    try:
        exception.checkpoint = save_last(trainer)
    except CheckpointWriteError as err:
        exception.save_error = str(err)


def save_last(trainer: Trainer) -> str:
    """Save the trainer's current state as the run's ``last.ckpt`` (the ModelCheckpoint's
    folder, else ``<run dir>/checkpoints``) unless it is already saved at this step; returns
    its path."""
    callback = next((c for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint)),
                    None)
    folder = Path(callback.dirpath) if callback is not None and callback.dirpath else (
        run_dir(trainer) / "checkpoints")
    name = (callback.CHECKPOINT_NAME_LAST if callback is not None else None) or "last"
    path = folder / f"{name}{ModelCheckpoint.FILE_EXTENSION}"
    if (callback is not None and callback.last_model_path == str(path) and path.is_file()
            and callback._last_global_step_saved == trainer.global_step):
        return str(path)
    if callback is None:
        trainer.save_checkpoint(path, weights_only=False)
        return str(path)
    # Recorded before the save, so the checkpoint's own ModelCheckpoint state owns last.ckpt:
    # after a resume it is overwritten, not left beside a new last-v1.ckpt.
    previous, callback.last_model_path = callback.last_model_path, str(path)
    try:
        trainer.save_checkpoint(path, weights_only=False)
    except BaseException:
        callback.last_model_path = previous
        raise
    return str(path)


# ----------------------------------------------------------------------------------------------
# Checks before anything is written
def check_ckpt_path(config: Any) -> None:
    """``--ckpt_path`` naming no file: one line before the run folder and W&B run exist."""
    ckpt_path = config.get("ckpt_path") if hasattr(config, "get") else None
    if not ckpt_path:
        return
    ckpt_path = str(ckpt_path)
    if ckpt_path in SPECIAL_CKPT_PATHS or "://" in ckpt_path or ckpt_path.startswith("registry"):
        return
    if not Path(ckpt_path).exists():
        raise FileNotFoundError(
            f"--ckpt_path {ckpt_path}: no such file. Give the path of a checkpoint (e.g. "
            "runs/<project>/<run>/checkpoints/last.ckpt), or `last` to continue the latest run "
            "of this experiment")


def check_run_folder(trainer: Trainer) -> None:
    """The run folder must be creatable: say so in one line before the run starts, instead of
    a PermissionError / OSError traceback from the first write."""
    folder = run_dir(trainer).absolute()
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        why = "a file, not a folder"
    elif not os.access(existing, os.W_OK | os.X_OK):
        read_only = hasattr(os, "statvfs") and os.statvfs(existing).f_flag & os.ST_RDONLY
        why = "on a read-only file system" if read_only else "not writable by this user"
    else:
        return
    raise ValueError(
        f"cannot create the run folder {folder}: {existing} is {why}. Choose a writable "
        "folder with --trainer.logger.init_args.save_dir (or --trainer.default_root_dir)")


def check_new_run_folder(trainer: Trainer, config_filename: str = "config.yaml") -> None:
    """A new run (``fit`` with no checkpoint to go on from) must not write into an earlier run's
    folder: its ``config.yaml`` would be replaced and its rows appended to the earlier run's
    ``metrics.csv`` (steps from 0 again, the summary's best values taken over both runs).

    Runs of the suite's W&B logger and of Lightning's CSV/TensorBoard loggers get a fresh folder
    each; a run without a logger writes into ``--trainer.default_root_dir`` (the working
    directory by default), where the previous such run did. Checked on global rank 0 only:
    under Lightning's own DDP launcher the other ranks start after rank 0 has begun writing."""
    if not trainer.is_global_zero:
        return
    folder = run_dir(trainer).absolute()
    found = [name for name in (config_filename, METRICS_FILE) if (folder / name).is_file()]
    if not found:
        return
    last = folder / "checkpoints" / "last.ckpt"
    go_on = (f", or continue that run: the same command with --ckpt_path {last}"
             if last.is_file() else "")
    own = ("another --trainer.logger.init_args.version, or none for a fresh one"
           if logger_dir(trainer.loggers) is not None else
           "--trainer.default_root_dir DIR (the run folder when --trainer.logger is false; the "
           "working directory by default)")
    raise ValueError(
        f"the run folder {folder} already holds a run ({', '.join(found)}); a new run would "
        "replace its config and mix its metrics with this one's. Give the new run a folder of "
        f"its own: {own}{go_on}")


# ----------------------------------------------------------------------------------------------
# What the user reads
def report(err: BaseException) -> tuple[str, int]:
    """The line the CLI prints for ``err`` (empty: nothing to print) and the exit status."""
    if isinstance(err, SIGTERMException):
        signum = getattr(err, "signum", signal.SIGTERM)
        if rank_zero_only.rank != 0:
            return "", 128 + int(signum)  # all ranks stopped together; rank 0 says so
        name = signal.Signals(signum).name
        return f"lightning-gen: stopped by {name}{_saved(err)}", 128 + int(signum)
    if isinstance(err, CorruptDataError):
        if not hasattr(err, "step"):  # before the run started
            return f"lightning-gen: error: {err}", 2
        checkpoint = getattr(err, "checkpoint", None)
        if checkpoint:
            saved = (f"Saved the state before it: {checkpoint}. Resume: the same command with "
                     "--ckpt_path last")
        elif getattr(err, "save_error", None):
            saved = f"The checkpoint could not be saved: {err.save_error}"
        else:
            saved = "No checkpoint was saved"
        return f"lightning-gen: training stopped{_at_step(err)}: {err}. {saved}", 1
    return f"lightning-gen: training stopped: {err}", 1


def _at_step(err: BaseException) -> str:
    """`` at step N`` (W&B's ``trainer/global_step`` of the last batch's values), with the
    optimizer steps where they are not the batches (``--trainer.max_steps`` counts those)."""
    step, optimizer_steps = getattr(err, "step", 0), getattr(err, "optimizer_steps", None)
    if optimizer_steps is None or optimizer_steps == step + 1:
        return f" at step {step}"
    return f" at step {step} ({optimizer_steps} optimizer steps)"


def _saved(err: BaseException) -> str:
    checkpoint = getattr(err, "checkpoint", None)
    if checkpoint:
        return (f"{_at_step(err)}; saved {checkpoint}. Resume: the same command with "
                "--ckpt_path last")
    if getattr(err, "save_error", None):
        return f"{_at_step(err)}; the checkpoint could not be saved: {err.save_error}"
    if not getattr(err, "optimizer_steps", 0):
        return " before the first training step; nothing to resume"
    return f"{_at_step(err)}; no checkpoint was saved"


def one_line(err: BaseException) -> str:
    """A user error's message in one line. jsonargparse reports a constructor's ValueError
    inside a "Does not validate against any of the Union subtypes" listing (model and data are
    ``Optional[...]`` subclass options); the constructor's own message is the line that says
    what to do."""
    text = str(err)
    if "Does not validate against any of the Union subtypes" in text:
        reasons = [line.strip()[2:] for line in text.splitlines()
                   if line.strip().startswith("- ") and "Expected a <class 'NoneType'>" not in line]
        if len(reasons) == 1:
            return reasons[0]
    return text


#: The exceptions :func:`report` words (the CLI catches these).
REPORTED = (SIGTERMException, CorruptDataError, CheckpointWriteError)
