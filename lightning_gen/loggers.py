"""Weights & Biases logging that never prompts: online when logged in, offline otherwise."""

from __future__ import annotations

import netrc
import os
import secrets
import time
from pathlib import Path

from lightning.pytorch.loggers import WandbLogger as _LightningWandbLogger
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_only

WANDB_HOST = "api.wandb.ai"


def wandb_logged_in() -> bool:
    """True when W&B credentials are available (``WANDB_API_KEY`` or ``wandb login``'s netrc)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        path = os.environ.get("NETRC", os.path.expanduser("~/.netrc"))
        return netrc.netrc(path).authenticators(WANDB_HOST) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


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


class WandbLogger(_LightningWandbLogger):
    """Lightning's W&B logger with a per-run folder and no login prompt.

    Everything of a run lands in ``log_dir = save_dir/project/version``: the W&B files
    (``wandb/offline-run-*`` when offline; upload later with ``wandb sync``), ``config.yaml``,
    ``checkpoints/`` and ``images/``. Nothing is written until the run starts.

    Args:
        name: Run name (the experiment's name); also the prefix of ``version``.
        save_dir: Root folder of all runs.
        project: W&B project; also the folder below ``save_dir``.
        version: Run id; give an existing one to continue a run in its folder.
        offline: ``None``: online if logged in (``WANDB_API_KEY`` or ``wandb login``),
            offline otherwise, unless ``WANDB_MODE`` says which.
        log_model: Upload checkpoints as W&B artifacts (online only).
        tags: W&B tags.
        group: W&B group (e.g. a sweep or a DDP job).
        entity: W&B entity (user or team).
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
    ) -> None:
        offline = resolve_offline(offline)
        version = version or make_version(name)
        extra = {k: v for k, v in {"tags": tags, "group": group, "entity": entity}.items() if v}
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
        return super().experiment

    @rank_zero_only
    def finalize(self, status: str) -> None:
        """Finish the W&B run at the end of each trainer call, so its files are complete on disk
        (an offline run is only fully written by ``finish``) and a later call starts cleanly."""
        super().finalize(status)
        if self._experiment is not None and hasattr(self._experiment, "finish"):
            self.run_url = getattr(self._experiment, "url", None)
            self._experiment.finish(exit_code=0 if status == "success" else 1)
            self._experiment = None

    def offline_run_dir(self) -> Path | None:
        """The ``wandb/offline-run-*`` folder of this run, if offline and started."""
        runs = sorted((self._run_dir / "wandb").glob("offline-run-*"))
        return runs[-1] if runs else None
