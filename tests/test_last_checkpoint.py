"""``checkpoints/last.ckpt`` holds the state of the last finished epoch while a run goes on (a
run killed without warning keeps it), with and without validation, at ``every_n_epochs``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import torch

from lightning_gen.cli import main

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--data.num_workers", "0", "--trainer.logger", "false",
        "--trainer.default_root_dir", "run", "--images.every_n_epochs", "0"]
VAE = ["--config", str(ROOT / "experiments/vae_mnist.yaml"), "--data", "datamodules.DigitsDataModule",
       "--data.image_size", "28", "--data.batch_size", "16", "--model.init_args.width", "8",
       "--trainer.limit_val_batches", "1"]


class SeenAtEpochStart(L.Callback):
    """Records, as each epoch starts, the ``(epoch, global_step)`` stored in ``last.ckpt``."""

    seen: list[tuple[int, int] | None] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        path = Path("run/checkpoints/last.ckpt")
        ckpt = torch.load(path, weights_only=False) if path.is_file() else None
        SeenAtEpochStart.seen.append(None if ckpt is None else (ckpt["epoch"], ckpt["global_step"]))


def fit(*args: str) -> list:
    SeenAtEpochStart.seen = []
    main(["fit", *args, "--trainer.limit_train_batches", "2", *FAST,
          "--trainer.callbacks+=tests.test_last_checkpoint.SeenAtEpochStart"])
    return SeenAtEpochStart.seen


def test_a_gan_run_has_the_last_epochs_state_in_last_ckpt_at_each_epoch():
    seen = fit("--config", str(ROOT / "experiments/quickstart.yaml"), "--trainer.max_epochs", "3")
    # 2 batches an epoch, a D and a G step each: global_step 4 per epoch.
    assert seen == [None, (0, 4), (1, 8)]


def test_a_run_with_validation_has_the_last_epochs_state_in_last_ckpt_at_each_epoch():
    seen = fit(*VAE, "--trainer.max_epochs", "3")
    assert seen == [None, (0, 2), (1, 4)]


def test_every_n_epochs_spaces_the_saves():
    seen = fit(*VAE, "--trainer.max_epochs", "5", "--checkpoint.every_n_epochs", "2")
    assert seen == [None, None, (1, 4), (1, 4), (3, 8)]


def test_step_checkpoints_of_a_gan_say_nothing_about_pre_optimization_state(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "lightning_gen", "fit", "--config",
         str(ROOT / "experiments/quickstart.yaml"), "--trainer.max_steps", "4",
         "--checkpoint.every_n_train_steps", "2", *FAST],
        cwd=tmp_path, capture_output=True, text=True, timeout=240,
        env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert "pre-optimization" not in result.stderr
    ckpt = torch.load(tmp_path / "run/checkpoints/last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 4


class SeenAtBatchStart(L.Callback):
    """Records, as each training batch starts, the ``global_step`` stored in ``last.ckpt``."""

    seen: list[int | None] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        path = Path("run/checkpoints/last.ckpt")
        SeenAtBatchStart.seen.append(
            torch.load(path, weights_only=False)["global_step"] if path.is_file() else None)


def test_a_gan_saves_by_time_during_an_epoch():
    # Lightning 2.6 skips the time check for manual optimisation: nothing until the end.
    SeenAtBatchStart.seen = []
    main(["fit", "--config", str(ROOT / "experiments/quickstart.yaml"), "--trainer.max_steps",
          "8", "--checkpoint.train_time_interval", "0:00:00", *FAST,
          "--trainer.callbacks+=tests.test_last_checkpoint.SeenAtBatchStart"])
    # A D and a G step per batch: global_step 2 after each; interval 0 saves after every batch.
    assert SeenAtBatchStart.seen == [None, 2, 4, 6]
