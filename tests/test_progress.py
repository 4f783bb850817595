"""The suite's progress bar: Lightning's TQDM bar that reads logged values (a host sync per read
on a GPU) at most every ``metrics_interval`` seconds, and always at the end of an epoch."""

from __future__ import annotations

import re
from pathlib import Path

import lightning as L
import pytest
from lightning.pytorch.callbacks import TQDMProgressBar

from datamodules import DigitsDataModule
from lightning_gen.callbacks import ProgressBar
from lightning_gen.cli import LightningGenCLI
from lightning_gen.models import DCGAN

ROOT = Path(__file__).resolve().parents[1]


def fit_with(bar: ProgressBar, epochs: int = 2, batches: int = 6) -> L.Trainer:
    L.seed_everything(0)
    trainer = L.Trainer(accelerator="cpu", max_epochs=epochs, limit_train_batches=batches,
                        logger=False, enable_checkpointing=False, enable_model_summary=False,
                        callbacks=[bar])
    model = DCGAN((1, 16, 16), latent_dim=8, g_width=8, d_width=8)
    trainer.fit(model, DigitsDataModule(image_size=16, batch_size=8, val_fraction=0.0))
    return trainer


def test_values_are_read_once_per_interval_and_at_every_epoch_end():
    slow = ProgressBar(metrics_interval=3600.0)
    trainer = fit_with(slow)
    # 12 steps in 2 epochs: the first refresh (nothing shown yet) and the 2 epoch ends.
    assert slow.metrics_reads == 3
    # What the bar shows at the end is the last logged loss, not a value cached at step 1.
    assert slow._metrics["train/d_loss"] == pytest.approx(
        float(trainer.progress_bar_metrics["train/d_loss"]))


def test_interval_zero_reads_at_every_refresh_like_lightning():
    every = ProgressBar(metrics_interval=0.0, draw_interval=0.0)
    fit_with(every)
    assert every.metrics_reads >= 12


def drawn_counts(capsys) -> set[int]:
    """The step counts ``k/6`` the training bars showed (every redraw writes the bar again)."""
    out = capsys.readouterr()
    return {int(k) for k in re.findall(r"Epoch \d+: .*?\b(\d)/6\b", out.out + out.err)}


@pytest.mark.parametrize("draw_interval, drawn",
                         [(0.0, {0, 1, 2, 3, 4, 5, 6}), (3600.0, {0, 1, 6})])
def test_bar_redraws_at_most_every_draw_interval_and_always_at_the_epoch_end(
        capsys, draw_interval, drawn):
    """Within the interval only the epoch starts (0/6), the first step and each epoch's last are
    drawn; with 0, every step (Lightning's behaviour)."""
    fit_with(ProgressBar(draw_interval=draw_interval))
    assert drawn_counts(capsys) == drawn


@pytest.mark.parametrize("name", ["metrics_interval", "draw_interval"])
def test_negative_interval_is_a_clear_error(name):
    with pytest.raises(ValueError, match=f"{name} must be >= 0"):
        ProgressBar(**{name: -1})


def cli_trainer(*args: str) -> L.Trainer:
    cli = LightningGenCLI(args=["--config", str(ROOT / "experiments/quickstart.yaml"), *args],
                          run=False, save_config_callback=None)
    return cli.trainer


def test_cli_runs_use_the_suite_progress_bar():
    assert type(cli_trainer().progress_bar_callback) is ProgressBar


def test_cli_keeps_a_progress_bar_the_config_brings_or_none_when_turned_off():
    own = cli_trainer("--trainer.callbacks+=lightning.pytorch.callbacks.TQDMProgressBar",
                      "--trainer.callbacks.refresh_rate=5")
    assert type(own.progress_bar_callback) is TQDMProgressBar
    assert own.progress_bar_callback.refresh_rate == 5
    assert cli_trainer("--trainer.enable_progress_bar", "false").progress_bar_callback is None
