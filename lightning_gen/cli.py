"""``lightning-gen``: LightningCLI with the suite's defaults, run folders and clear errors.

    lightning-gen fit --config experiments/quickstart.yaml
    lightning-gen fit --config experiments/dcgan_mnist.yaml --data.data_dir DIR --trainer.max_steps 20
    lightning-gen evaluate --ckpt_path RUN/checkpoints/last.ckpt --num_samples 50000
    lightning-gen sample --ckpt_path RUN/checkpoints/last.ckpt --num_samples 1000 --out DIR

Model and data are chosen by class path in the YAML; every constructor argument is an option.
The model's ``image_shape`` is taken from the DataModule. Each run writes its resolved
``config.yaml``, ``checkpoints/`` (with ``last.ckpt``), ``images/`` and, with W&B,
``wandb/`` into one folder (see :mod:`lightning_gen.loggers`).
"""

from __future__ import annotations

import os
import sys
import traceback

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback

from datamodules.base import DatasetNotFoundError, ImageDataModule
from lightning_gen.callbacks.images import ImageGridCallback
from lightning_gen.loggers import WandbLogger
from lightning_gen.models.base import GenerativeModel
from lightning_gen.runs import atomic_write, run_dir

DEBUG_ENV = "LIGHTNING_GEN_DEBUG"


class RunConfigCallback(SaveConfigCallback):
    """Save the fully resolved config as ``<run dir>/config.yaml`` (atomically), on rank 0."""

    def __init__(self, parser, config, **kwargs) -> None:
        kwargs["save_to_log_dir"] = False
        super().__init__(parser, config, **kwargs)

    def save_config(self, trainer, pl_module, stage: str) -> None:
        path = run_dir(trainer) / self.config_filename
        atomic_write(path, lambda tmp: self.parser.save(
            self.config, tmp, skip_none=False, overwrite=True, multifile=False,
            format="yaml"))
        self.saved_path = path


class LightningGenCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # Build the model for the data it will see.
        parser.link_arguments("data.image_shape", "model.init_args.image_shape",
                              apply_on="instantiate")
        # Callbacks every run gets, configurable as --images.* and --checkpoint.*.
        parser.add_lightning_class_args(ImageGridCallback, "images")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.save_last": True, "checkpoint.save_top_k": 0})

    # Missing data is reported before anything is written (no run folder, no W&B run).
    def _check_data(self) -> None:
        if self.datamodule is not None:
            self.datamodule.prepare_data()

    before_fit = before_validate = before_test = before_predict = _check_data

    def after_fit(self) -> None:
        trainer = self.trainer
        if not trainer.is_global_zero:
            return
        lines = [f"Run folder:  {run_dir(trainer)}"]
        images = next((c for c in trainer.callbacks if isinstance(c, ImageGridCallback)), None)
        for name, path in (images.last_paths if images else {}).items():
            lines.append(f"Images ({name}): {path}")
        ckpt = trainer.checkpoint_callback
        if ckpt is not None and ckpt.last_model_path:
            lines.append(f"Checkpoint:  {ckpt.last_model_path}")
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                offline_dir = logger.offline_run_dir() if logger.offline else None
                if offline_dir is not None:
                    lines.append(f"W&B offline run: {offline_dir}  (upload: wandb sync {offline_dir})")
                elif logger._experiment is not None and getattr(logger._experiment, "url", None):
                    lines.append(f"W&B run: {logger._experiment.url}")
        print("\n".join(lines), flush=True)


def default_logger() -> dict:
    return {"class_path": "lightning_gen.loggers.WandbLogger", "init_args": {"save_dir": "runs"}}


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``lightning-gen`` console script."""
    argv = sys.argv[1:] if args is None else list(args)
    try:
        if argv[:1] and argv[0] in ("evaluate", "sample"):
            # Evaluation commands (lightning_gen.evaluate), not LightningCLI subcommands.
            from lightning_gen.evaluate import main as evaluate_main

            return evaluate_main(argv)
        LightningGenCLI(
            model_class=GenerativeModel,
            datamodule_class=ImageDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_callback=RunConfigCallback,
            save_config_kwargs={"overwrite": True},
            trainer_defaults={"logger": default_logger()},
            args=args,
        )
    except (DatasetNotFoundError, FileNotFoundError, ValueError) as err:
        # Errors a user can cause (missing data, shapes that do not fit, bad values): one
        # message, no traceback, unless LIGHTNING_GEN_DEBUG=1.
        if os.environ.get(DEBUG_ENV):
            traceback.print_exc()
        print(f"lightning-gen: error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
