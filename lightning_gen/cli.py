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

import json
import logging
import os
import sys
import traceback
import warnings
from pathlib import Path

from lightning.fabric.plugins.environments import LightningEnvironment
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.callbacks import ProgressBar as ProgressBarBase
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.utilities.model_helpers import is_overridden

from datamodules.base import DatasetNotFoundError, ImageDataModule, usable_cores
from lightning_gen import faults
from lightning_gen.callbacks.checkpoint import LastCheckpoint
from lightning_gen.callbacks.images import ImageGridCallback
from lightning_gen.callbacks.metrics_file import SUMMARY_FILE, MetricsFile
from lightning_gen.callbacks.performance import Performance, flush_denormals_before_threads
from lightning_gen.callbacks.progress import ProgressBar
from lightning_gen.callbacks.training_metrics import TrainingMetrics
from lightning_gen.checkpoints import safe_globals
from lightning_gen.commands import DEBUG_ENV, run_without_torch
from lightning_gen.loggers import WandbLogger, slurm_job_step, slurm_restarts
from lightning_gen.models.base import GenerativeModel, NonFiniteLossError
from lightning_gen.resume import (
    ApplyOptimizerOverrides,
    checkpoint_to_resume,
    merge_last,
    parse_ckpt_path,
)
from lightning_gen.run_record import ImagesSeen, record_run, set_wandb_defaults
from lightning_gen.runs import atomic_write, logger_dir, run_dir

SWEEP_TRIAL_ENV = "LIGHTNING_GEN_SWEEP_TRIAL"  # lightning_gen.sweep_trial.ENV


class _NoLightningTips(logging.Filter):
    """Lightning 2.6 prints an advertisement ("💡 Tip: ... litlogger", "... litmodels") at every
    Trainer it builds: once per run, once per sweep trial, nothing the user asked about."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("\N{ELECTRIC LIGHT BULB} Tip:")


logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_NoLightningTips())
# Lightning 2.6.6's own pytree helper trips torch's LeafSpec deprecation at every fit: a line
# of Lightning's source in every run's output that no user setting can change.
warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
# The GANs have no validation step by design (they are scored by `evaluate` and the metrics
# callback), while their DataModules, shared with the VAEs, offer a validation split: Lightning
# said so at the start of every GAN run, the quickstart's first included.
warnings.filterwarnings("ignore", message="You passed in a `val_dataloader` but have no `validation_step`")
# Resuming from a mid-epoch checkpoint (the one SIGTERM / Ctrl-C save) is said in one line of
# our own (lightning_gen.faults.SaveOnInterrupt): Lightning's "unreliable results" warning
# counts optimizer steps, so it also came after end-of-epoch checkpoints of GANs with n_critic > 1.
warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before")
DESCRIPTION = (
    "Train and evaluate generative models: `lightning-gen fit --config experiments/NAME.yaml`. "
    "Also `lightning-gen evaluate --help` (FID/IS/KID/precision-recall, ELBO of a checkpoint) "
    "and `lightning-gen sample --help` (write samples as PNGs)."
    " `lightning-gen compare --help`: runs side by side (table, curves, sample grids)."
    " `lightning-gen sweep --help`: hyperparameter search (Optuna), every trial a run."
)


class RunConfigCallback(SaveConfigCallback):
    """Save the fully resolved config as ``<run dir>/config.yaml`` (atomically), on rank 0.

    ``validate``/``test``/``predict`` into a folder that already holds a config (without a
    logger the run folder is ``--trainer.default_root_dir``, often the trained run's own) write
    ``config_<subcommand>.yaml`` beside it instead of replacing the run's config."""

    def __init__(self, parser, config, **kwargs) -> None:
        kwargs["save_to_log_dir"] = False
        super().__init__(parser, config, **kwargs)

    def save_config(self, trainer, pl_module, stage: str) -> None:
        path = run_dir(trainer) / self.config_filename
        stage = str(getattr(stage, "value", stage))  # Lightning passes a TrainerFn
        if stage != "fit" and path.is_file():
            path = path.with_name(f"{path.stem}_{stage}{path.suffix}")
        atomic_write(path, lambda tmp: self.parser.save(
            self.config, tmp, skip_unset=False, overwrite=True, multifile=False,
            format="yaml"))
        self.saved_path = path
        record_run(trainer, pl_module, path)  # the resolved config, and more, into W&B


class LightningGenCLI(LightningCLI):
    def __init__(self, *args, **kwargs) -> None:
        # `lightning-gen fit ...` needs only fit's parser: building the other three subcommands'
        # (validate, test, predict) cost ~0.3 s of every run's start-up (benchmarks/README.md,
        # "One subcommand's parser"). Any other first argument gets all four, so errors and
        # top-level options read as LightningCLI's.
        argv = kwargs.get("args")
        argv = sys.argv[1:] if argv is None else argv
        first = argv[0] if isinstance(argv, (list, tuple)) and argv else None
        self._only_subcommand = first if first in LightningCLI.subcommands() else None
        # True from the `lightning-gen` process's entry point: torch has started no thread yet.
        self._new_process = kwargs.pop("new_process", False)
        super().__init__(*args, **kwargs)

    def subcommands(self) -> dict[str, set[str]]:
        every = LightningCLI.subcommands()
        only = self._only_subcommand
        return {only: every[only]} if only else every

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # Build the model for the data it will see.
        parser.link_arguments("data.image_shape", "model.init_args.image_shape",
                              apply_on="instantiate")
        # Callbacks every run gets, configurable as --images.* and --checkpoint.*.
        parser.add_lightning_class_args(ImageGridCallback, "images")
        # ModelCheckpoint, with last.ckpt at every epoch under Lightning 2.6 too.
        parser.add_lightning_class_args(LastCheckpoint, "checkpoint")
        # --performance.channels_last / --performance.compile (off by default).
        parser.add_lightning_class_args(Performance, "performance")
        # --metrics.every_n_epochs N: FID/IS/KID/PR while training (off by default).
        parser.add_lightning_class_args(TrainingMetrics, "metrics")
        parser.set_defaults({"checkpoint.save_last": True, "checkpoint.save_top_k": 0})
        parser.add_argument("--trust_checkpoint", type=bool, default=False,
                            help="Load --ckpt_path even if it holds more than the suite's "
                            "checkpoints do (full unpickling: it can run code); only for files "
                            "whose origin you trust")

    # --ckpt_path: loaded safely, of the config's model class, options given with it applied or
    # refused, all before anything is written (lightning_gen.resume).
    def parse_arguments(self, parser: LightningArgumentParser, args) -> None:
        self._argv = [] if isinstance(args, dict) else list(sys.argv[1:] if args is None else args)
        super().parse_arguments(parser, args)

    def _parse_ckpt_path(self) -> None:
        subcommand = self.config.get("subcommand")
        if subcommand:  # --ckpt_path naming no file: one line before anything is written
            faults.check_ckpt_path(self.config[subcommand])
        parse_ckpt_path(self, getattr(self, "_argv", []))

    def _run_subcommand(self, subcommand: str) -> None:
        with safe_globals():  # Lightning's own weights_only load of --ckpt_path
            super()._run_subcommand(subcommand)

    def instantiate_trainer(self, **kwargs):
        # The suite's progress bar (no host sync per step) unless the config brings its own or
        # turns the bar off.
        trainer_config = dict(self._get(self.config_init, "trainer", default={}))
        callbacks = trainer_config.get("callbacks") or []
        callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
        if ("callbacks" not in kwargs and trainer_config.get("enable_progress_bar") is not False
                and not any(isinstance(c, ProgressBarBase) for c in callbacks)):
            kwargs["callbacks"] = [*callbacks, ProgressBar()]
        # Lightning's own files of a run (the checkpoint it writes when SLURM signals a
        # preemption, hpc_ckpt_N.ckpt, and looks for after a requeue; lr-finder scratch files)
        # go into the run folder too, not into the working directory where the next job would
        # find them.
        if trainer_config.get("default_root_dir") is None and "default_root_dir" not in kwargs:
            folder = logger_dir(trainer_config.get("logger"))
            if folder is not None:
                kwargs["default_root_dir"] = str(folder)
        # Atomic checkpoints; a checkpoint at SIGTERM/SIGINT (lightning_gen.faults).
        kwargs = faults.configure_trainer(trainer_config, kwargs)
        try:
            trainer = super().instantiate_trainer(**kwargs)
        except TypeError as err:
            # Lightning checks --trainer.devices on the CPU with a TypeError (a traceback).
            if "devices" not in str(err):
                raise
            raise ValueError(f"--trainer.devices {trainer_config.get('devices')}: {err}") from err
        trainer.callbacks.insert(0, ImagesSeen())  # W&B's `images_seen` x-axis
        MetricsFile().attach(trainer)  # <run>/metrics.csv and summary.json, whatever the logger
        if os.environ.get(SWEEP_TRIAL_ENV):  # a sweep's trial: report the objective, prune
            from lightning_gen.sweep_trial import attach_from_env

            attach_from_env(trainer)
        _check_launch(trainer)
        faults.check_run_folder(trainer)
        return trainer

    def before_instantiate_classes(self) -> None:
        if self.subcommand is None:
            return
        config = self.config[self.subcommand]
        if self._new_process:
            # Before the model is built (which can start torch's intra-op threads), so that
            # every thread flushes denormals (lightning_gen.callbacks.performance).
            flush_denormals_before_threads(config)
            if config.get("performance.float32_matmul_precision"):
                import torch

                # Before the Trainer sets up the GPU, where Lightning hints at it otherwise.
                torch.set_float32_matmul_precision(config["performance.float32_matmul_precision"])
        _wandb_agent_run(config)
        _resume_latest_run(config)
        merge_last(self, getattr(self, "_argv", []))
        set_wandb_defaults(self.config[self.subcommand], job_type=self.subcommand)

    # Missing data, and a model built for other images or labels, are reported before anything
    # is written (no run folder, no W&B run).
    def _check_data(self) -> None:
        if self.datamodule is not None:
            self.datamodule.prepare_data()
            if isinstance(self.model, GenerativeModel):
                self.model.check_datamodule(self.datamodule)

    # validate/test/predict need the model's step for it (GANs have no validation/test step and
    # no model has a predict_step): say so in one line instead of Lightning's traceback.
    def _check_step(self) -> None:
        step = {"validate": "validation_step", "test": "test_step",
                "predict": "predict_step"}[self.subcommand]
        if not is_overridden(step, self.model):
            raise ValueError(
                f"{type(self.model).__name__} defines no {step}(), so `lightning-gen "
                f"{self.subcommand}` cannot run it; use `lightning-gen evaluate` (FID/IS/KID, "
                "ELBO) or `lightning-gen sample` for generated images")
        self._check_data()
        checkpoint_to_resume(self, self.config[self.subcommand].get("ckpt_path"))

    # A checkpoint of other images is reported before the run folder and W&B run are created
    # (the model's on_load_checkpoint would say the same, but only once the run has started).
    def _check_fit(self) -> None:
        self._check_data()
        # Callbacks that need something of the data (LatentArithmeticCallback: attribute
        # labels) say so now, not in their setup once the run folder and W&B run exist.
        if self.datamodule is not None:
            for callback in self.trainer.callbacks:
                check = getattr(callback, "check_datamodule", None)
                if callable(check):
                    check(self.datamodule)
        ckpt_path = self.config[self.subcommand].get("ckpt_path")
        if ckpt_path is None:
            ckpt_path = _requeued_checkpoint(self.trainer)
            if ckpt_path is not None:
                self.config_init[self.subcommand]["ckpt_path"] = ckpt_path
        if ckpt_path is None and not _requeued_job() and not self.trainer.fast_dev_run:
            # A new run: not into an earlier run's folder. (A requeued SLURM job with no
            # checkpoint yet starts again in its own folder; a fast_dev_run writes nothing.)
            faults.check_new_run_folder(self.trainer, self.save_config_kwargs.get(
                "config_filename", "config.yaml"))
        ckpt = checkpoint_to_resume(self, ckpt_path)
        if ckpt is not None and isinstance(self.model, GenerativeModel):
            # Only the base class's shape check (subclasses also restore state there).
            GenerativeModel.on_load_checkpoint(
                self.model, {"hyper_parameters": ckpt.get("hyper_parameters") or {}})
        if getattr(self, "_ckpt_overrides", None):
            self.trainer.callbacks.append(ApplyOptimizerOverrides(self._ckpt_overrides))

    before_fit = _check_fit
    before_validate = before_test = before_predict = _check_step

    def after_fit(self) -> None:
        trainer = self.trainer
        if not trainer.is_global_zero:
            return
        if trainer.fast_dev_run:
            print("fast_dev_run: every step ran once; nothing was written (no run folder, "
                  "checkpoint, metrics, images or W&B run)", flush=True)
            return
        folder = run_dir(trainer)
        lines = [f"Run folder:  {folder}"]
        # Every grid of the run (the model's and the callbacks': traversals, completions, ...).
        for path in sorted((folder / "images").glob("*_last.png")):
            lines.append(f"Images ({path.name.removesuffix('_last.png')}): {path}")
        lines += _final_values(folder)
        ckpt = trainer.checkpoint_callback
        if ckpt is not None and ckpt.last_model_path:
            lines.append(f"Checkpoint:  {ckpt.last_model_path}")
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger) and logger.summary_line():
                lines.append(logger.summary_line())
        print("\n".join(lines), flush=True)


def _final_values(folder: Path) -> list[str]:
    """``Final: name last (best b at step s), ...`` of the run's evaluation values (validation,
    test, sample metrics, outlier AUROC: not the training losses), read back from its
    ``summary.json``."""
    path = folder / SUMMARY_FILE
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    shown = []
    for name, entry in summary.items():
        if name.startswith("train/") or "last" not in entry or "goal" not in entry:
            continue
        text = f"{name} {entry['last']:.6g}"
        if entry.get("best") is not None and entry["best"] != entry["last"]:
            text += f" (best {entry['best']:.6g} at step {entry['best_step']})"
        shown.append(text)
    return [f"Final:       {', '.join(shown)}"] if shown else []


def _resume_latest_run(config) -> None:
    """``--ckpt_path last`` continues the latest run of the same experiment in its own folder.

    Each invocation gets a fresh run folder, so Lightning's ``ckpt_path="last"`` would look for
    ``last.ckpt`` in an empty folder. For the suite's W&B logger without an explicit
    ``version``, pick the newest ``save_dir/project/<name>-*/checkpoints/last.ckpt`` and reuse
    that run's version: checkpoints, images and the W&B run (resumed by id) continue there.
    """
    if config.get("ckpt_path") != "last":
        return
    logger = config.get("trainer", {}).get("logger")
    if not hasattr(logger, "get") or not str(logger.get("class_path", "")).endswith(
        "lightning_gen.loggers.WandbLogger"
    ):
        return
    args = logger.get("init_args")
    if args is None or args.get("version"):
        return
    root = Path(args.get("save_dir") or "runs") / (args.get("project") or "lightning-gen")
    name = args.get("name") or "run"
    runs = sorted(root.glob(f"{name}-*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
    if not runs:
        raise FileNotFoundError(
            f"--ckpt_path last: no earlier run of '{name}' with checkpoints/last.ckpt under "
            f"'{root}'. Start one without --ckpt_path, or pass the checkpoint's path."
        )
    args["version"] = runs[-1].parent.parent.name


def _wandb_agent_run(config) -> None:
    """Started by a W&B sweep agent (``WANDB_SWEEP_ID`` and ``WANDB_RUN_ID`` set): the run
    is the agent's run, so the suite's W&B logger takes its id as ``version`` (run folder
    ``<save_dir>/<project>/<run id>``) unless one is given (docs/sweeps.md, "W&B Sweeps")."""
    run_id = os.environ.get("WANDB_RUN_ID")
    if not (os.environ.get("WANDB_SWEEP_ID") and run_id):
        return
    logger = config.get("trainer", {}).get("logger")
    if hasattr(logger, "get") and str(logger.get("class_path", "")).endswith(
            "lightning_gen.loggers.WandbLogger"):
        args = logger.get("init_args")
        if args is not None and not args.get("version"):
            args["version"] = run_id


def _check_launch(trainer) -> None:
    """``--trainer.num_nodes N`` (N > 1) started without a launcher would wait for the other
    nodes until the process group times out (30 minutes), silently; say so instead. On the CPU
    each of ``--trainer.devices N`` is a training process: more than the machine's cores took
    minutes to start each (``--trainer.devices 64`` on 2 cores had not begun training after 5
    minutes) and shares the cores anyway."""
    cores = usable_cores()
    if isinstance(trainer.accelerator, CPUAccelerator) and trainer.num_devices > cores:
        raise ValueError(
            f"--trainer.devices {trainer.num_devices} on the CPU starts {trainer.num_devices} "
            f"training processes, and this machine has {cores} CPU cores: use "
            f"--trainer.devices {cores} or fewer (or --trainer.accelerator gpu on a GPU machine)")
    environment = getattr(trainer.strategy, "cluster_environment", None)
    if (trainer.num_nodes > 1 and type(environment) is LightningEnvironment
            and "MASTER_ADDR" not in os.environ):
        raise ValueError(
            f"--trainer.num_nodes {trainer.num_nodes} needs a process on every node: start the "
            "command with torchrun or srun on each (docs/scaling.md, 'Multi-node'), or set "
            "MASTER_ADDR, MASTER_PORT and NODE_RANK on each node yourself")


def _requeued_job() -> bool:
    """This process is a SLURM job that SLURM requeued (it goes on in its own run folder)."""
    return slurm_restarts() > 0 and slurm_job_step() is not None


def _requeued_checkpoint(trainer) -> str | None:
    """In a SLURM job that was requeued (preempted, or a node failed), the checkpoint to go on
    from: the newest of the run folder's ``hpc_ckpt_N.ckpt`` (Lightning writes one when SLURM
    sends the requeue signal, ``#SBATCH --signal=SIGUSR1@90``) and ``checkpoints/last.ckpt``.
    The run folder is the job's own (``<name>-slurm<job>.<step>``, see
    :func:`lightning_gen.loggers.slurm_version`); ``None`` outside such a job or before any
    checkpoint exists, and the run starts from scratch."""
    if not _requeued_job():
        return None
    restarts, job_step = slurm_restarts(), slurm_job_step()
    folder = Path(trainer.default_root_dir)
    candidates = [*folder.glob("hpc_ckpt_*.ckpt"), run_dir(trainer) / "checkpoints/last.ckpt"]
    found = [p for p in candidates if p.is_file()]
    if not found:
        return None
    newest = max(found, key=lambda p: p.stat().st_mtime)
    if trainer.is_global_zero:
        print(f"lightning-gen: SLURM job {job_step} was requeued ({restarts}x): "
              f"continuing from {newest}", file=sys.stderr, flush=True)
    return str(newest)


def default_logger() -> dict:
    return {"class_path": "lightning_gen.loggers.WandbLogger", "init_args": {"save_dir": "runs"}}


def main(args: list[str] | None = None, *, new_process: bool = False) -> None:
    """Run ``lightning-gen`` (``args``: default ``sys.argv[1:]``). ``new_process``: called by the
    process's entry point (:mod:`lightning_gen.__main__`), before torch has started any thread."""
    argv = sys.argv[1:] if args is None else list(args)
    # The top-level help (every command, LightningCLI's and ours) and `compare` (run folders
    # side by side, offline): lightning_gen.commands.
    if run_without_torch(argv):
        return
    try:
        if argv[:1] and argv[0] in ("evaluate", "sample"):
            # Evaluation commands (lightning_gen.evaluate), not LightningCLI subcommands.
            from lightning_gen.evaluate import main as evaluate_main

            return evaluate_main(argv)
        if argv[:1] == ["sweep"]:
            # Hyperparameter search on Optuna (lightning_gen.sweep), each trial a `fit`.
            from lightning_gen.sweep import main as sweep_main

            return sweep_main(argv[1:])
        LightningGenCLI(
            model_class=GenerativeModel,
            datamodule_class=ImageDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_callback=RunConfigCallback,
            save_config_kwargs={"overwrite": True},
            trainer_defaults={"logger": default_logger()},
            parser_kwargs={"description": DESCRIPTION},
            args=args,
            new_process=new_process,
        )
    except faults.REPORTED as err:
        # A signal, a damaged data file, a checkpoint that could not be written: one line
        # saying what was saved where (lightning_gen.faults), exit 143/130/1/2.
        if os.environ.get(DEBUG_ENV):
            traceback.print_exc()
        line, code = faults.report(err)
        if line:
            print(line, file=sys.stderr, flush=True)
        sys.exit(code)
    except (DatasetNotFoundError, FileNotFoundError, ValueError,
            MisconfigurationException) as err:
        # Errors a user can cause (missing data, shapes that do not fit, bad values, trainer
        # flags this machine cannot honour): one message, no traceback, unless
        # LIGHTNING_GEN_DEBUG=1.
        if os.environ.get(DEBUG_ENV):
            traceback.print_exc()
        print(f"lightning-gen: error: {faults.one_line(err)}", file=sys.stderr)
        sys.exit(2)
    except NonFiniteLossError as err:
        # Divergence is not a usage error: exit 1, one line, last good checkpoint named.
        if os.environ.get(DEBUG_ENV):
            traceback.print_exc()
        print(f"lightning-gen: training stopped: {err}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
