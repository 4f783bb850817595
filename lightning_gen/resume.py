"""``--ckpt_path`` of ``fit`` / ``validate`` / ``test``: checked before anything is written.

LightningCLI (``LightningCLI._parse_ckpt_path``) merges the checkpoint's ``hyper_parameters``
over the config, class path included: another model's checkpoint silently changed the model,
and options given on the command line were dropped. Here, instead:

* the checkpoint is loaded safely (:func:`lightning_gen.checkpoints.load_checkpoint`); a missing,
  empty, truncated or foreign file is a one-line error before the run folder exists;
* a checkpoint of another model class than the config's is a one-line error;
* the model is rebuilt with the checkpoint's hyperparameters (what its weights need), except the
  options given on the command line: those in :data:`SAFE_OVERRIDES` (optimisation settings)
  are applied, and also to the restored optimizers (:class:`ApplyOptimizerOverrides`); others
  that differ from the checkpoint are refused, naming them;
* Lightning's own load of the checkpoint (``trainer.fit(ckpt_path=...)``) gets
  ``weights_only=True`` unless ``--trust_checkpoint true``.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterable
from pathlib import Path

from lightning.pytorch.callbacks import Callback

from lightning_gen.checkpoints import (
    hyper_parameters,
    load_checkpoint,
    resolve_class,
)
from lightning_gen.models.base import GenerativeModel

#: Model options that may differ from the checkpoint's when resuming: they change how training
#: goes on, not what the checkpoint's weights and buffers are.
SAFE_OVERRIDES = frozenset({"lr", "lr_g", "lr_d", "betas", "momentum", "weight_decay",
                            "n_critic", "grad_clip", "decay_start_epoch", "decay_epochs"})
#: ``--ckpt_path`` values Lightning resolves itself (no file yet to check).
SPECIAL_PATHS = frozenset({"last", "hpc", "best", "registry"})
#: Optimizer settings copied from the options into the restored optimizers.
OPTIMIZER_KEYS = ("lr", "betas", "momentum", "weight_decay")
#: Set only by the config's DataModule (``link_arguments``): not compared.
LINKED = frozenset({"image_shape"})


def explicit_model_options(argv: Iterable[object]) -> set[str]:
    """Names of the model options given on the command line (``--model.init_args.lr_g 0.1``,
    ``--model.lr_g=0.1``)."""
    names = set()
    for token in argv:
        if isinstance(token, str) and token.startswith("--model."):
            name = token[len("--model."):].split("=", 1)[0]
            for prefix in ("init_args.", "dict_kwargs."):
                name = name.removeprefix(prefix)
            names.add(name.split(".")[0])
    return names


def _norm(value):
    return tuple(_norm(v) for v in value) if isinstance(value, (list, tuple)) else value


def _class_of(class_path: str) -> type | None:
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return None


def parse_ckpt_path(cli, argv: Iterable[object]) -> None:
    """Replacement of ``LightningCLI._parse_ckpt_path`` (see the module docstring)."""
    subcommand = cli.config.get("subcommand")
    if not subcommand:
        return
    config = cli.config[subcommand]
    trust = bool(config.get("trust_checkpoint"))
    if "weights_only" in config:
        if config.get("weights_only") is False and not trust:
            raise ValueError("--weights_only false unpickles checkpoints fully (they can run "
                             "code); pass --trust_checkpoint true for a file you trust")
        config["weights_only"] = not trust
    ckpt_path = config.get("ckpt_path")
    if not ckpt_path or str(ckpt_path) in SPECIAL_PATHS or "://" in str(ckpt_path):
        return
    ckpt = load_checkpoint(ckpt_path, trust=trust, mmap=True)
    cli._ckpt_overrides = merge_hyper_parameters(config, ckpt, Path(ckpt_path),
                                                 explicit_model_options(argv), trust)


def check_model_class(ckpt: dict, path: Path, model_class_path: str | None,
                      model_class: type | None, trust: bool) -> None:
    """One-line error unless the checkpoint is one of ``model_class``."""
    saved = hyper_parameters(ckpt).get("_class_path")
    if saved is None or model_class is None:
        return
    saved_class = resolve_class(saved, GenerativeModel, trust=trust, source=f"checkpoint {path}",
                                role="model class")
    if saved_class is not model_class:
        raise ValueError(
            f"--ckpt_path {path} is a checkpoint of {saved} but the config builds "
            f"{model_class_path or model_class.__name__}; pass a checkpoint of a "
            f"{model_class.__name__}, or the config the checkpoint was trained with (its run's "
            "config.yaml)")


def merge_hyper_parameters(config, ckpt: dict, path: Path, explicit: set[str],
                           trust: bool) -> dict:
    """Set the config's model options to the checkpoint's, except safe command-line overrides;
    returns ``{option: checkpoint value}`` of the overrides applied."""
    model = config.get("model")
    class_path = model.get("class_path") if hasattr(model, "get") else None
    init_args = model.get("init_args") if class_path else model
    if init_args is None:
        return {}
    check_model_class(ckpt, path, class_path, _class_of(class_path) if class_path else None,
                      trust)
    refused, applied, restored = [], {}, []
    for key, saved in hyper_parameters(ckpt).items():
        if key.startswith("_") or key in LINKED or key not in init_args:
            continue
        current = init_args[key]
        if _norm(current) == _norm(saved):
            continue
        if key not in explicit:
            init_args[key] = saved
            restored.append(f"{key}={saved!r}")
        elif key in SAFE_OVERRIDES:
            applied[key] = saved
        else:
            refused.append(f"--model.init_args.{key} {current!r} (the checkpoint's is {saved!r})")
    if refused:
        raise ValueError(
            f"--ckpt_path {path} restores the model as it was trained, which these options would "
            f"change: {'; '.join(refused)}. Drop them, or start a new run without --ckpt_path")
    notes = []
    if applied:
        notes.append("applying " + ", ".join(f"{k}={init_args[k]!r} (checkpoint: {v!r})"
                                              for k, v in applied.items()))
    if restored:
        notes.append("from the checkpoint, over the config: " + ", ".join(restored))
    if notes:
        print(f"lightning-gen: --ckpt_path: {'; '.join(notes)}", file=sys.stderr, flush=True)
    return applied


class ApplyOptimizerOverrides(Callback):
    """After Lightning restored the optimizers from the checkpoint (with the checkpoint's
    learning rates, betas, ...), set the settings the user overrode to the new values.

    Args:
        saved: ``{option: checkpoint value}`` of the overridden model options.
    """

    def __init__(self, saved: dict) -> None:
        self.saved = saved

    def on_train_start(self, trainer, pl_module) -> None:
        from lightning.pytorch.core.optimizer import _init_optimizers_and_lr_schedulers

        new, _ = _init_optimizers_and_lr_schedulers(pl_module)
        hparams = pl_module.hparams
        current = {k: hparams[k] for k in self.saved}
        hparams.update(self.saved)
        try:
            old, _ = _init_optimizers_and_lr_schedulers(pl_module)
        finally:
            hparams.update(current)
        for restored, o, n in zip(trainer.optimizers, old, new, strict=False):
            for g_r, g_o, g_n in zip(restored.param_groups, o.param_groups, n.param_groups,
                                     strict=False):
                for key in OPTIMIZER_KEYS:
                    if key in g_n and _norm(g_o.get(key)) != _norm(g_n[key]):
                        g_r[key] = g_n[key]
                        if key == "lr" and "initial_lr" in g_r:
                            g_r["initial_lr"] = g_n[key]
        for config in trainer.lr_scheduler_configs:
            scheduler = config.scheduler
            if hasattr(scheduler, "base_lrs"):
                scheduler.base_lrs = [g.get("initial_lr", g["lr"])
                                      for g in scheduler.optimizer.param_groups]


def checkpoint_to_resume(cli, ckpt_path) -> dict | None:
    """The checkpoint ``fit`` will resume from, loaded safely and checked against the model,
    before the run folder and W&B run exist (``--ckpt_path last`` resolved to the run's
    ``checkpoints/last.ckpt``); ``None`` when there is none to check."""
    from lightning_gen.runs import run_dir

    if not ckpt_path or "://" in str(ckpt_path):
        return None
    trust = bool(cli.config[cli.subcommand].get("trust_checkpoint"))
    if str(ckpt_path) == "last":
        dirpath = getattr(cli.trainer.checkpoint_callback, "dirpath", None)
        path = Path(dirpath or run_dir(cli.trainer) / "checkpoints") / "last.ckpt"
        if not (path.exists() or path.is_symlink()):
            return None  # Lightning says so itself
    elif str(ckpt_path) in SPECIAL_PATHS:
        return None
    else:
        path = Path(ckpt_path)
    ckpt = load_checkpoint(path, trust=trust, mmap=True)
    check_model_class(ckpt, path, None, type(cli.model), trust)
    return ckpt


def merge_last(cli, argv: Iterable[object]) -> None:
    """``--ckpt_path last`` with the suite's logger: once ``_resume_latest_run`` chose the run,
    check its ``last.ckpt`` and merge its hyperparameters like an explicit path's (Lightning
    merges nothing for ``last``: an option given with it was silently undone by the restored
    optimizer state, an architecture change failed deep inside ``load_state_dict``)."""
    config = cli.config[cli.subcommand]
    if config.get("ckpt_path") != "last":
        return
    logger = config.get("trainer", {}).get("logger")
    args = logger.get("init_args") if hasattr(logger, "get") else None
    if args is None or not args.get("version"):
        return
    root = Path(args.get("save_dir") or "runs") / (args.get("project") or "lightning-gen")
    path = root / str(args.get("version")) / "checkpoints" / "last.ckpt"
    if not (path.exists() or path.is_symlink()):
        return
    trust = bool(config.get("trust_checkpoint"))
    ckpt = load_checkpoint(path, trust=trust, mmap=True)
    cli._ckpt_overrides = merge_hyper_parameters(config, ckpt, path,
                                                 explicit_model_options(argv), trust)
