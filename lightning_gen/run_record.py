"""What a run records about itself in W&B: the resolved config, what it trained, where, with what.

* :func:`logging_step` is the one x-axis of a run: the step Lightning logs scalars at (W&B's
  ``trainer/global_step``), used for images and anything else logged with an explicit step.
* :func:`set_wandb_defaults` fills the W&B logger's ``group`` (the experiment's name), ``tags``
  (model family, dataset, precision) and ``job_type`` (the subcommand) where the YAML or the
  command line left them unset, before the logger is built, so the saved ``config.yaml`` holds
  the effective values at ``trainer.logger.init_args.{group,tags,job_type}``.
* :func:`record_run` sends the resolved config (as saved in ``config.yaml``) plus the
  experiment's name, model family, dataset, parameter counts, git commit and versions to the
  run's W&B config, in place of the flat hyperparameter dump Lightning would send.
* :class:`ImagesSeen` counts training images, an alternative x-axis (``images_seen``).
"""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path
from typing import Any

import lightning
import torch
import yaml
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.utilities.data import extract_batch_size
from torch import nn

import lightning_gen
from lightning_gen.loggers import WandbLogger

# Lightning's default when the config leaves `trainer.precision` unset.
DEFAULT_PRECISION = "32-true"
# Sub-networks whose parameters are counted separately, where a model has them.
NETWORKS = ("generator", "discriminator", "encoder", "decoder")


def logging_step(trainer: Trainer) -> int:
    """The step Lightning logs scalars at (``trainer/global_step`` in W&B): training batches
    that stepped the optimizers. Not ``trainer.global_step``, which counts optimizer steps (two
    per batch for a GAN with one D and one G update). An object without Lightning's fit loop (a
    stand-in trainer) gives its ``global_step``."""
    epoch_loop = getattr(getattr(trainer, "fit_loop", None), "epoch_loop", None)
    if epoch_loop is None:
        return getattr(trainer, "global_step", 0)
    return epoch_loop._batches_that_stepped


def class_name(class_path: str | None) -> str | None:
    return str(class_path).rsplit(".", 1)[-1] if class_path else None


def model_family(class_path: str | None) -> str | None:
    """``lightning_gen.models.DCGAN`` -> ``DCGAN`` (one LightningModule per family)."""
    return class_name(class_path)


def dataset_name(class_path: str | None) -> str | None:
    """``datamodules.DigitsDataModule`` -> ``Digits``."""
    name = class_name(class_path)
    if name and name.endswith("DataModule") and name != "DataModule":
        return name[: -len("DataModule")]
    return name


def _get(mapping: Any, *keys: str) -> Any:
    """``mapping[k1][k2]...`` through dicts and jsonargparse Namespaces; ``None`` if absent."""
    for key in keys:
        if not hasattr(mapping, "get"):
            return None
        mapping = mapping.get(key)
    return mapping


def _is_suite_wandb_logger(logger: Any) -> bool:
    class_path = str(_get(logger, "class_path") or "")
    if class_path == "lightning_gen.loggers.WandbLogger":
        return True
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(__import__(module, fromlist=[name]), name)
    except (ImportError, AttributeError, ValueError):
        return False
    return isinstance(cls, type) and issubclass(cls, WandbLogger)


def _loggers(config: Any) -> list:
    logger = _get(config, "trainer", "logger")
    return list(logger) if isinstance(logger, (list, tuple)) else [logger]


def experiment_name(config: Any) -> str | None:
    """The experiment's name: the (first) logger's ``name``, as set in the YAML."""
    return next((_get(lg, "init_args", "name") for lg in _loggers(config)
                 if _get(lg, "init_args", "name")), None)


def default_tags(config: Any) -> list[str]:
    """``[model family, dataset, precision]`` of a config, e.g. ``[DCGAN, Digits, 32-true]``."""
    precision = _get(config, "trainer", "precision")
    tags = [model_family(_get(config, "model", "class_path")),
            dataset_name(_get(config, "data", "class_path")),
            str(precision) if precision is not None else DEFAULT_PRECISION]
    return [t for t in tags if t]


def set_wandb_defaults(config: Any, job_type: str) -> None:
    """Give the suite's W&B logger(s) in ``config`` (a subcommand's config, before
    instantiation) ``group = <logger name>``, ``tags = default_tags(config)`` and ``job_type``
    where unset (``None``): what the YAML or the command line sets wins, ``tags: []`` too."""
    for logger in _loggers(config):
        if not _is_suite_wandb_logger(logger):
            continue
        args = _get(logger, "init_args")
        if args is None:
            continue
        defaults = {"group": args.get("name"), "tags": default_tags(config), "job_type": job_type}
        for key, value in defaults.items():
            if args.get(key) is None:
                args[key] = value


def parameter_counts(module: nn.Module) -> dict[str, int]:
    """Parameters of the model's networks (generator, discriminator, encoder, decoder where they
    exist) and in total; the generator's moving average (a copy) is not counted."""
    def count(params) -> int:
        return sum(p.numel() for p in params if not isinstance(p, nn.parameter.UninitializedParameter))

    counts = {name: count(sub.parameters()) for name in NETWORKS
              if isinstance(sub := getattr(module, name, None), nn.Module)}
    counts["total"] = count(p for n, p in module.named_parameters()
                            if not n.startswith("generator_ema."))
    return counts


def git_state(root: str | Path | None = None) -> dict[str, Any] | None:
    """``{"commit": sha, "dirty": bool}`` of the lightning-gen checkout the code runs from
    (``dirty``: tracked changes or untracked files git does not ignore); ``None`` when the code
    is not a checkout (an installed wheel, or a package inside someone else's repository) or
    git is missing."""
    root = Path(root or Path(lightning_gen.__file__).resolve().parent.parent).resolve()

    def git(*args: str) -> str:
        out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                             timeout=20, check=True)
        return out.stdout.strip()

    try:
        if Path(git("rev-parse", "--show-toplevel")).resolve() != root:
            return None
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain"))}
    except (OSError, subprocess.SubprocessError):
        return None


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def versions(trainer: Trainer | None = None, device: torch.device | str | None = None,
             world_size: int | None = None) -> dict[str, Any]:
    """Python, torch, torchvision, Lightning, torchmetrics, torch-fidelity (the metrics'
    code), lightning-gen, wandb, CUDA and cuDNN versions, and the name of the device the run
    trains on (``trainer``'s, else ``device``, else the CPU)."""
    if trainer is not None:
        device = trainer.strategy.root_device
    device = torch.device(device if device is not None else "cpu")
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    elif device.type == "cpu":
        name = _cpu_name()
    else:
        name = device.type
    try:
        import wandb

        wandb_version = wandb.__version__
    except ImportError:
        wandb_version = None
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    import torchmetrics
    import torchvision

    try:
        from importlib.metadata import version

        fidelity = version("torch-fidelity")
    except Exception:  # noqa: BLE001 (not installed, or no metadata)
        fidelity = None
    if world_size is None:
        world_size = trainer.world_size if trainer is not None else 1
    return {"python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "lightning": lightning.__version__,
            "torchmetrics": torchmetrics.__version__, "torch_fidelity": fidelity,
            "lightning_gen": lightning_gen.__version__, "wandb": wandb_version,
            "cuda": torch.version.cuda, "cudnn": cudnn, "device": name,
            "num_devices": world_size}


def run_record(config: dict, trainer: Trainer | None = None,
               pl_module: LightningModule | None = None) -> dict[str, Any]:
    """The W&B config of a run: ``config`` (the resolved config as saved in ``config.yaml``,
    nested) plus ``experiment``, ``model_family``, ``dataset``, ``image_shape``, ``params``,
    ``git`` (when run from a checkout) and ``versions``."""
    record = dict(config)
    record["experiment"] = experiment_name(config) or (
        trainer.logger.name if trainer is not None and trainer.logger is not None else None)
    record["model_family"] = model_family(_get(config, "model", "class_path"))
    record["dataset"] = dataset_name(_get(config, "data", "class_path"))
    if pl_module is not None:
        shape = getattr(pl_module, "hparams", {}).get("image_shape")
        if shape is not None:
            record["image_shape"] = list(shape)
        record["params"] = parameter_counts(pl_module)
    git = git_state()
    if git is not None:
        record["git"] = git
    record["versions"] = versions(trainer)
    return record


def record_run(trainer: Trainer, pl_module: LightningModule, config_path: str | Path) -> None:
    """Send the run record built from the saved ``config.yaml`` to the run's W&B logger(s)
    (rank 0; other loggers keep Lightning's hyperparameters)."""
    wandb_loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
    if not wandb_loggers:
        return
    config = yaml.safe_load(Path(config_path).read_text())
    record = run_record(config, trainer, pl_module)
    for logger in wandb_loggers:
        logger.log_run_config(record)


class ImagesSeen(Callback):
    """Counts the training images the model has seen (all ranks: the local batch size times
    the world size) and hands the count to the W&B logger, which adds it to every row it logs
    as ``images_seen`` (an alternative x-axis). Saved in checkpoints, so a resumed run counts on.
    """

    def __init__(self) -> None:
        self.images_seen = 0

    def on_train_batch_end(self, trainer: Trainer, pl_module, outputs, batch, batch_idx) -> None:
        try:
            self.images_seen += extract_batch_size(batch) * trainer.world_size
        except Exception:  # a batch without tensors: nothing to count
            return
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.images_seen = self.images_seen

    def state_dict(self) -> dict[str, int]:
        return {"images_seen": self.images_seen}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.images_seen = int(state_dict.get("images_seen", 0))
