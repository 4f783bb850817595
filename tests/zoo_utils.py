"""Helpers of the model-zoo tests: fit a YAML of ``experiments/`` for a few CPU steps."""

from __future__ import annotations

from pathlib import Path

import torch

from datamodules.base import ImageDataModule
from lightning_gen.cli import LightningGenCLI
from lightning_gen.models.base import GenerativeModel

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def fit_yaml(name: str, data_dir: str | Path | None, *overrides: str, steps: int = 4):
    """Run ``lightning-gen fit --config experiments/<name>`` for ``steps`` optimizer steps on
    CPU, no logger, batch 8, with ``overrides`` (CLI flags) on top; return the CLI."""
    args = ["fit", "--config", str(EXPERIMENTS / name),
            "--trainer.max_steps", str(steps), "--trainer.max_epochs", "1",
            "--trainer.accelerator", "cpu", "--trainer.devices", "1",
            "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false", "--trainer.limit_val_batches", "1",
            "--data.batch_size", "8", "--data.num_workers", "0", "--images.every_n_epochs", "0"]
    if data_dir is not None:
        args += ["--data.data_dir", str(data_dir)]
    return LightningGenCLI(
        model_class=GenerativeModel, datamodule_class=ImageDataModule,
        subclass_mode_model=True, subclass_mode_data=True,
        save_config_kwargs={"overwrite": True}, args=[*args, *overrides],
    )


def assert_finite_params(model: torch.nn.Module) -> None:
    for name, p in model.named_parameters():
        assert torch.isfinite(p).all(), f"{name} is not finite after fitting"
