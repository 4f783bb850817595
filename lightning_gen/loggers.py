"""Weights & Biases logging that never prompts: online when logged in, offline otherwise."""

from __future__ import annotations

import netrc
import os
import secrets
import shlex
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.loggers import WandbLogger as _LightningWandbLogger
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_only

WANDB_HOST = "api.wandb.ai"
# Alternative x-axes, declared to W&B beside Lightning's `trainer/global_step` (the one step
# everything is logged at): generator updates of a GAN, epochs, training images seen.
ALTERNATIVE_X_AXES = ("train/g_steps", "epoch", "images_seen")


def wandb_logged_in() -> bool:
    """True when W&B credentials are available (``WANDB_API_KEY`` or ``wandb login``'s netrc)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        path = os.environ.get("NETRC", os.path.expanduser("~/.netrc"))
        return netrc.netrc(path).authenticators(WANDB_HOST) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def wandb_disabled() -> bool:
    """``WANDB_MODE=disabled``: W&B writes and sends nothing (its runs are no-ops)."""
    return os.environ.get("WANDB_MODE", "").lower() == "disabled"


def resolve_offline(offline: bool | None) -> bool:
    """``offline=None`` means: honour ``WANDB_MODE``, else go online only when logged in."""
    if offline is not None:
        return offline
    mode = os.environ.get("WANDB_MODE", "").lower()
    if mode in ("offline", "dryrun", "disabled"):
        return True
    if mode == "online":
        return False
    return not wandb_logged_in()


def make_version(name: str | None) -> str:
    """A unique, sortable run id usable as a folder name and a W&B run id."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return f"{name or 'run'}-{stamp}-{secrets.token_hex(2)}"


def slurm_job_step() -> str | None:
    """``<job>[_<array task>][.<step>]`` of the SLURM job this process runs in, else ``None``.

    ``None`` also where Lightning does not treat the process as a SLURM task (no
    ``SLURM_NTASKS``, or an interactive job named ``bash``/``interactive``), so the run id
    follows Lightning's choice of cluster environment. A requeued job keeps its job id; that
    its steps are numbered from 0 again is assumed (``sacct --duplicates`` lists such repeated
    job.step records), not checked on a cluster here.
    """
    if not SLURMEnvironment.detect():
        return None
    array_job, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    job = f"{array_job}_{task}" if array_job and task else os.environ.get("SLURM_JOB_ID")
    if not job:
        return None
    step = os.environ.get("SLURM_STEP_ID")
    return f"{job}.{step}" if step else job


def slurm_restarts() -> int:
    """How often SLURM has requeued this job (``SLURM_RESTART_COUNT``; 0 on its first run)."""
    try:
        return int(os.environ.get("SLURM_RESTART_COUNT") or 0)
    except ValueError:
        return 0


def slurm_version(name: str | None, runs_dir: str | os.PathLike) -> str | None:
    """The run id of a SLURM task: ``<name>-slurm<job>[_<task>][.<step>]``, else ``None``.

    The same on every rank (all tasks of a multi-node job write to one folder) and after a
    requeue, so a preempted job continues in its own run folder (see the CLI's resume). A job
    that was *not* requeued never reuses an existing folder: if ``runs_dir`` already holds one of
    that name (a recycled job id), the first free ``-2``, ``-3``, ... suffix is used; a requeued
    job takes the newest of them, the one its first run created.
    """
    job_step = slurm_job_step()
    if job_step is None:
        return None
    base = f"{name or 'run'}-slurm{job_step}"

    def numbered(n: int) -> str:
        return base if n == 1 else f"{base}-{n}"

    free = 1
    while (Path(runs_dir) / numbered(free)).exists():
        free += 1
    return numbered(max(free - 1, 1)) if slurm_restarts() > 0 else numbered(free)


class WandbLogger(_LightningWandbLogger):
    """Lightning's W&B logger with a per-run folder and no login prompt.

    Everything of a run lands in ``log_dir = save_dir/project/version``: the W&B files
    (``wandb/offline-run-*`` when offline; upload later with ``wandb sync``), ``config.yaml``,
    ``checkpoints/`` and ``images/``. Nothing is written until the run starts. A run continued
    in its folder (``--ckpt_path last``) continues the same W&B run (id = ``version``); offline,
    each continuation is one more ``wandb/offline-run-*`` segment, and :meth:`sync_command`
    uploads them all.

    Everything is logged at one x-axis, Lightning's ``trainer/global_step`` (batches, see
    :func:`lightning_gen.run_record.logging_step`); ``train/g_steps``, ``epoch`` and
    ``images_seen`` (added to every row while :class:`~lightning_gen.run_record.ImagesSeen`
    counts) are declared as alternative x-axes. Once the CLI has sent the run record
    (:meth:`log_run_config`: the resolved config, nested as in ``config.yaml``, and more), it
    replaces the flat hyperparameter dump Lightning sends through ``log_hyperparams``.

    Args:
        name: Run name (the experiment's name); also the prefix of ``version``.
        save_dir: Root folder of all runs.
        project: W&B project; also the folder below ``save_dir``.
        version: Run id; give an existing one to continue a run in its folder. Default:
            ``<name>-<date>-<time>-<random>``; in a SLURM job ``<name>-slurm<job>.<step>``, the
            same on every rank and after a requeue (:func:`slurm_version`).
        offline: ``None``: online if logged in (``WANDB_API_KEY`` or ``wandb login``),
            offline otherwise, unless ``WANDB_MODE`` says which.
        log_model: Upload checkpoints as W&B artifacts (online only).
        tags: W&B tags. The CLI's default: ``[model family, dataset, precision]``.
        group: W&B group. The CLI's default: the experiment's ``name``.
        entity: W&B entity (user or team).
        job_type: W&B job type. The CLI's default: the subcommand (``fit``).
    """

    def __init__(
        self,
        name: str | None = None,
        save_dir: str = "runs",
        project: str = "lightning-gen",
        version: str | None = None,
        offline: bool | None = None,
        log_model: bool = False,
        tags: list[str] | None = None,
        group: str | None = None,
        entity: str | None = None,
        job_type: str | None = None,
    ) -> None:
        # Disabled: not offline for Lightning, which would set WANDB_MODE=dryrun for the whole
        # process (later runs of an in-process sweep included) and so write an offline run.
        offline = resolve_offline(offline) and not wandb_disabled()
        version = version or slurm_version(name, Path(save_dir) / project) or make_version(name)
        extra = {k: v for k, v in {"tags": tags, "group": group, "entity": entity,
                                   "job_type": job_type}.items() if v}
        super().__init__(
            name=name, save_dir=save_dir, version=version, offline=offline, project=project,
            log_model=log_model and not offline, **extra,
        )
        self._run_dir = Path(save_dir) / project / version
        self.run_url: str | None = None
        # W&B writes below its `dir`: give it the run folder, keep save_dir for Lightning's
        # checkpoint path (save_dir/project/version/checkpoints = log_dir/checkpoints).
        # Absolute: wandb-core is one service per process whose working directory is that of
        # the first run; a relative path from a later run (after a chdir) would land there.
        self._wandb_init["dir"] = os.path.abspath(self._run_dir)
        self._wandb_init.pop("anonymous", None)  # deprecated by wandb, unused here
        if wandb_disabled():
            self._wandb_init["mode"] = "disabled"
        self._run_config: dict[str, Any] | None = None
        self._run_config_sent = False
        #: Training images seen so far (set by ``ImagesSeen``); added to each logged row.
        self.images_seen: int | None = None
        self._goals_run: Any = None
        self._seen_names: set[str] = set()

    @property
    def log_dir(self) -> str:
        return str(self._run_dir)

    @property
    def offline(self) -> bool:
        return self._offline

    @property
    @rank_zero_experiment
    def experiment(self):
        if self._experiment is None:
            self._run_dir.mkdir(parents=True, exist_ok=True)
            if self._offline:
                os.environ["WANDB_MODE"] = "offline"
            run = super().experiment
            if getattr(run, "define_metric", None) is not None:
                for axis in ALTERNATIVE_X_AXES:
                    run.define_metric(axis)
            return run
        return super().experiment

    @rank_zero_only
    def log_run_config(self, record: Mapping[str, Any]) -> None:
        """Make ``record`` (the resolved config and what the run is) the run's W&B config. From
        then on, ``log_hyperparams`` (Lightning's flat dump of the model's and the DataModule's
        ``save_hyperparameters``, whose names collide at the root, Lightning #19728) sends this
        record again instead: its values are under ``model.init_args`` / ``data.init_args``."""
        self._run_config = dict(record)
        self.experiment.config.update(self._run_config, allow_val_change=True)
        self._run_config_sent = True

    @rank_zero_only
    def log_hyperparams(self, params) -> None:
        if self._run_config is None:
            super().log_hyperparams(params)
        elif not self._run_config_sent:  # a later trainer call, a new W&B run (same id)
            self.experiment.config.update(self._run_config, allow_val_change=True)
            self._run_config_sent = True

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if self.images_seen is not None and "images_seen" not in metrics:
            metrics = {**metrics, "images_seen": self.images_seen}
        self._define_goals(metrics)
        super().log_metrics(metrics, step)

    def _define_goals(self, metrics: Mapping[str, float]) -> None:
        """``define_metric(name, summary="min,last")`` (or ``max``) for each new name with a goal
        (:func:`~lightning_gen.callbacks.metrics_file.goal_of`), before its first value: W&B
        keeps a plain summary for a value logged before the definition, so a metric logged once
        (a test result, a FID computed at the end only) had no ``.min``/``.last`` columns.
        (:class:`~lightning_gen.callbacks.metrics_file.MetricsFile` defines them too, for any
        W&B logger, but only after the run's loggers have logged the values.)"""
        from lightning_gen.callbacks.metrics_file import _key, goal_of

        run = self.experiment
        if getattr(run, "define_metric", None) is None:
            return
        if self._goals_run is not run:  # a new W&B run (a later trainer call)
            self._goals_run, self._seen_names = run, set()
        for name in metrics:
            if name in self._seen_names:  # seen in this run (with a goal or without)
                continue
            self._seen_names.add(name)
            goal = goal_of(name)
            if goal is not None:
                run.define_metric(_key(self._prefix, self.LOGGER_JOIN_CHAR, name),
                                  step_metric="trainer/global_step", summary=f"{goal},last")

    @rank_zero_only
    def finalize(self, status: str) -> None:
        """Finish the W&B run at the end of each trainer call, so its files are complete on disk
        (an offline run is only fully written by ``finish``) and a later call starts cleanly."""
        super().finalize(status)
        if self._experiment is not None and hasattr(self._experiment, "finish"):
            # An offline run has no URL, and asking for it prints a W&B warning.
            if not getattr(self._experiment, "offline", False):
                self.run_url = getattr(self._experiment, "url", None)
            self._experiment.finish(exit_code=0 if status == "success" else 1)
            self._experiment = None
            self._run_config_sent = False

    def offline_run_dirs(self) -> list[Path]:
        """Every ``wandb/offline-run-*`` segment of this run (one per start or continuation),
        oldest first."""
        return sorted((self._run_dir / "wandb").glob("offline-run-*"))

    def offline_run_dir(self) -> Path | None:
        """The latest ``wandb/offline-run-*`` segment of this run, if offline and started."""
        runs = self.offline_run_dirs()
        return runs[-1] if runs else None

    def sync_command(self) -> str:
        """One shell command that uploads every offline segment of this run: ``wandb sync``
        takes several run folders and syncs those of one (resumed) run in order of start time
        into that run."""
        return f"wandb sync {shlex.quote(str(self._run_dir / 'wandb'))}/offline-run-*"

    def summary_line(self) -> str | None:
        """Where this run's W&B record is, for the end-of-run summary."""
        segments = self.offline_run_dirs() if self._offline else []
        if segments:
            where = segments[0] if len(segments) == 1 else (
                f"{self._run_dir / 'wandb'} ({len(segments)} segments of run {self.version})")
            return f"W&B offline run: {where}  (upload: {self.sync_command()})"
        return f"W&B run: {self.run_url}" if self.run_url else None
