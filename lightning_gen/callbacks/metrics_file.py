"""Every logged scalar in the run folder, whatever the logger: ``metrics.csv`` and ``summary.json``.

``<run>/metrics.csv`` is tidy (one row per scalar per logging call) with the fixed header
``step,epoch,g_steps,wall_time,name,value``:

* ``step``: the step Lightning logs scalars at (``trainer/global_step`` in W&B; batches, not
  optimizer steps, for GANs), ``epoch``: ``trainer.current_epoch``, ``g_steps``: the GAN's
  generator updates (empty for other models), ``wall_time``: seconds of fitting (continued from
  the file's last row when a run is resumed), ``name``/``value``: the scalar.
* Rows are appended with one ``write`` per logging call, on rank 0, to a file opened for
  appending and closed again: what was written is in the operating system's hands at once, so a
  run killed with SIGKILL keeps every complete row. A torn last line (the process died inside
  the write, or the disk filled up) is cut off when the run is resumed.

``<run>/summary.json`` holds ``{name: {"last", "last_step"[, "best", "best_step", "goal"]}}``
for every logged scalar (``goal``: see :func:`goal_of`), rewritten atomically at each logging
call that carries a non-``train/`` value with a goal, otherwise at most every 10 s, and when
the trainer finishes or stops on an error. After a SIGKILL it may lag ``metrics.csv`` by those
seconds of training values; a resumed run rebuilds it from ``metrics.csv`` up to its
checkpoint's step (:meth:`MetricsFile.on_train_start`). Values of
:class:`~lightning_gen.callbacks.GenerativeMetricsCallback` also name their ``protocol``
(``<extractor>-<reference split>-<N samples>``, e.g. ``inception-train-10000``).

With a W&B logger the same bests go to the W&B run: ``define_metric(name, summary="min,last")``
(or ``max``) so the runs table shows the best and the last value, and ``<name>.best`` and
``<name>.best_step`` summary keys (over the whole run, resumed segments included).

It works as a Lightning logger placed after the run's own loggers, so it receives exactly the
values and steps they receive (training steps, epoch ends, validation and test results). The
CLI adds it to every run; with a plain ``Trainer``, ``MetricsFile().attach(trainer)`` before
``fit``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Literal

from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from lightning_gen.callbacks.metrics import GenerativeMetricsCallback
from lightning_gen.run_record import logging_step
from lightning_gen.runs import atomic_write, run_dir

HEADER = ("step", "epoch", "g_steps", "wall_time", "name", "value")
METRICS_FILE = "metrics.csv"
SUMMARY_FILE = "summary.json"
# Where a CSVLogger writing into the same folder puts its own (wide) metrics file instead.
CSV_LOGGER_FILE = "metrics_wide.csv"

_MIN_NAMES = {"fid", "kid_mean"}
_MIN_PARTS = ("loss", "nll", "bits_per_dim")
_MAX_NAMES = {"is_mean", "elbo", "precision", "recall", "gan_test", "auroc"}
# Keys GenerativeMetricsCallback logs under its prefix.
_QUALITY_KEYS = {"fid", "is_mean", "is_std", "kid_mean", "kid_std", "precision", "recall", "gan_test"}


def _leaf(name: str) -> str:
    """The name's last part, Lightning's ``_step``/``_epoch`` suffixes removed."""
    leaf = name.rsplit("/", 1)[-1]
    for suffix in ("_step", "_epoch"):
        if leaf.endswith(suffix) and leaf != suffix:
            leaf = leaf[: -len(suffix)]
    return leaf


def is_gan_player_term(name: str) -> bool:
    """Whether ``name`` is a GAN's training term (``d_*``, ``g_*``: ``train/d_loss``, ...)."""
    return _leaf(name).startswith(("d_", "g_"))


def goal_of(name: str) -> Literal["min", "max"] | None:
    """Whether smaller (``"min"``) or larger (``"max"``) values of ``name`` are better.

    By the last part of the name (Lightning's ``_step``/``_epoch`` suffixes removed): ``min``
    for ``fid``, ``kid_mean`` and names containing ``loss``, ``nll`` or ``bits_per_dim``;
    ``max`` for ``is_mean``, ``elbo``, ``precision``, ``recall``, ``gan_test``, ``auroc``; else
    ``None`` (no best is kept).

    A GAN's training terms (``d_*``, ``g_*``: ``train/d_loss``, ``train/g_loss``, penalties)
    have no goal: each player's loss is measured against the other player, so a low
    ``g_loss`` says the discriminator is weak, not that the samples are good (it is lowest when
    D has failed), and a low ``d_loss`` that D wins. Runs are ranked by sample quality
    (``metrics/fid``, ...), not by either player's loss.
    """
    if is_gan_player_term(name):
        return None
    leaf = _leaf(name)
    if leaf in _MIN_NAMES or any(part in leaf for part in _MIN_PARTS):
        return "min"
    if leaf in _MAX_NAMES:
        return "max"
    return None


def metrics_protocol(callback: GenerativeMetricsCallback) -> str:
    """``<extractor kind>-<reference split>-<N samples>`` of a GenerativeMetricsCallback, the
    protocol names ``lightning-gen evaluate`` uses (e.g. ``inception-train-10000``)."""
    kind = callback.spec[0].partition(":")[0]
    return f"{kind}-{callback.reference}-{callback.num_samples}"


def read_rows(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The complete rows of a ``metrics.csv``, typed (``g_steps`` ``None`` where empty); a torn
    last line is left out."""
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        text = f.read()
    rows = []
    for raw in csv.DictReader(io.StringIO(text[: text.rfind("\n") + 1])):
        try:
            rows.append({"step": int(raw["step"]), "epoch": int(raw["epoch"]),
                         "g_steps": int(raw["g_steps"]) if raw["g_steps"] else None,
                         "wall_time": float(raw["wall_time"]), "name": raw["name"],
                         "value": float(raw["value"])})
        except (KeyError, TypeError, ValueError):
            continue
    return rows


class Summary:
    """Last and best value of every name, and the steps they were logged at."""

    def __init__(self) -> None:
        self.entries: dict[str, dict[str, Any]] = {}

    def update(self, name: str, value: float, step: int) -> bool:
        """Record a value; True when it is a new best of a name with a goal."""
        entry = self.entries.setdefault(name, {})
        entry["last"], entry["last_step"] = value, step
        goal = goal_of(name)
        if goal is None or math.isnan(value):
            return False
        best = entry.get("best")
        if best is None or (value < best if goal == "min" else value > best):
            entry.update(best=value, best_step=step, goal=goal)
            return True
        return False

    def as_dict(self) -> dict[str, dict[str, Any]]:
        return {name: dict(self.entries[name]) for name in sorted(self.entries)}


class FollowingLogger(Logger):
    """A logger that follows the run's own loggers: placed after them, it takes the first one's
    ``name`` and ``version`` (so the progress bar's ``v_num`` and everything else Lightning
    derives from the first logger stay as they were) and has no folder of its own. Other
    following loggers are skipped when looking for the first one, so two of them without a run
    logger (``logger=False``) do not ask each other forever. ``owner.trainer``: the Trainer."""

    def __init__(self, owner: Any) -> None:
        super().__init__()
        self.owner = owner

    def _first_other(self) -> Logger | None:
        trainer = self.owner.trainer
        others = [lg for lg in (trainer.loggers if trainer else [])
                  if not isinstance(lg, FollowingLogger)]
        return others[0] if others else None

    @property
    def name(self) -> str:
        other = self._first_other()
        return other.name if other is not None else ""

    @property
    def version(self) -> int | str:
        other = self._first_other()
        return other.version if other is not None else ""

    @property
    def log_dir(self) -> None:
        return None  # not a run folder of its own (lightning_gen.runs.logger_dir skips it)

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass


class MetricsFileLogger(FollowingLogger):
    """The logger half of :class:`MetricsFile`: receives what the run's loggers receive.

    Placed after the run's loggers it changes nothing Lightning derives from the first logger
    (run folder, checkpoint folder, progress-bar version). Alone (``logger=False``) it stands
    where no logger would: ``save_dir`` is ``default_root_dir``, ``name`` and ``version`` are
    empty, so checkpoints still go to ``default_root_dir/checkpoints``.
    """

    @property
    def save_dir(self) -> str | None:
        trainer = self.owner.trainer
        return trainer.default_root_dir if trainer is not None else None

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.owner.write(metrics, step)

    def finalize(self, status: str) -> None:
        self.owner.finish()


class MetricsFile(Callback):
    """Write ``<run>/metrics.csv`` and ``<run>/summary.json`` (see the module docstring), and
    the best values and steps into W&B runs.

    Args:
        filename: Name of the metrics file in the run folder.
        summary_filename: Name of the summary file in the run folder.
        summary_every_s: ``summary.json`` is rewritten at once when a logging call carries a
            value with a goal that is not a ``train/`` value (FID, IS, validation ELBO or loss,
            ...), but for training values alone at most every ``summary_every_s`` seconds
            (each rewrite is a file rename, ~2 ms on some filesystems, which a step-by-step
            logger would pay at every step; 0: at every such call). Always at the end of a
            trainer call, and when it stops on an error.
    """

    def __init__(self, filename: str = METRICS_FILE, summary_filename: str = SUMMARY_FILE,
                 summary_every_s: float = 10.0) -> None:
        self.filename = filename
        self.summary_filename = summary_filename
        self.summary_every_s = summary_every_s
        self._summary_written = -math.inf
        self.logger = MetricsFileLogger(self)
        self.trainer: Trainer | None = None
        self._folder: Path | None = None
        self._summary = Summary()
        self._t0: float | None = None
        self._wandb_runs: dict[int, tuple[Any, set[str]]] = {}
        self._protocols: dict[str, tuple[str, str]] = {}
        self._offset = 0.0

    def attach(self, trainer: Trainer) -> MetricsFile:
        """Add this callback and its logger (after the trainer's loggers) to ``trainer``."""
        self.trainer = trainer
        _redirect_csv_loggers(trainer, run_dir(trainer) / self.filename)
        if self not in trainer.callbacks:
            trainer.callbacks.append(self)
        if self.logger not in trainer.loggers:
            trainer.loggers = [*trainer.loggers, self.logger]
        return self

    # --- callback hooks --------------------------------------------------------------------
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self.attach(trainer)
        self._start(trainer)

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # The clock starts when fitting does (setup read the time already spent, if resumed).
        self._t0 = time.monotonic() - self._offset

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Resumed (the loops hold the checkpoint's step S by now): rows after S, and training
        # rows at S (the next batch logs there; validate/test of the checkpoint log their val/
        # and test/ rows at S too), are of a process that went on past its last checkpoint
        # (killed, or an earlier checkpoint chosen), which this run replaces, logging those
        # steps again. The file keeps them (append-only; compare takes each step's last value);
        # the summary, bests included, describes the run that continues.
        if self._folder is None:
            return
        step = logging_step(trainer)
        rows = read_rows(self.path)
        kept = [row for row in rows if row["step"] < step or (
            row["step"] == step and not row["name"].startswith("train/"))]
        if len(kept) < len(rows):
            self._summary = Summary()
            for row in kept:
                self._summary.update(row["name"], row["value"], row["step"])
            self._write_summary()

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self.finish()

    # --- files -----------------------------------------------------------------------------
    @property
    def path(self) -> Path | None:
        return self._folder / self.filename if self._folder is not None else None

    @property
    def summary_path(self) -> Path | None:
        return self._folder / self.summary_filename if self._folder is not None else None

    def _start(self, trainer: Trainer) -> None:
        """Find the run folder; a resumed run's rows give back its summary and its time."""
        if (self._folder is not None or not trainer.is_global_zero
                or getattr(trainer, "fast_dev_run", False)):
            return  # a fast_dev_run (Lightning's debugging pass) leaves no file behind
        self._folder = run_dir(trainer)
        _redirect_csv_loggers(trainer, self.path)
        self._repair_torn_line()
        rows = read_rows(self.path)
        self._summary = Summary()
        for row in rows:
            self._summary.update(row["name"], row["value"], row["step"])
        self._offset = max((row["wall_time"] for row in rows), default=0.0)
        self._t0 = time.monotonic() - self._offset
        self._protocols = {}
        for callback in trainer.callbacks:
            # Not the CLI's --metrics callback while it is off: metrics/* values another
            # callback logs are not of its protocol.
            if isinstance(callback, GenerativeMetricsCallback) and getattr(
                    callback, "enabled", True):
                protocol = (metrics_protocol(callback), callback.prefix + "protocol")
                self._protocols.update({callback.prefix + key: protocol for key in _QUALITY_KEYS})

    def _repair_torn_line(self) -> None:
        path = self.path
        if not path.is_file() or path.stat().st_size == 0:
            return
        data = path.read_bytes()
        if not data.endswith(b"\n"):
            with open(path, "r+b") as f:
                f.truncate(data.rfind(b"\n") + 1)

    def write(self, metrics: dict[str, Any], step: int | None) -> None:
        """Append one logging call's scalars (rank 0) and update the summaries."""
        trainer = self.trainer
        if (trainer is None or not trainer.is_global_zero
                or getattr(trainer, "fast_dev_run", False)):
            return
        self._start(trainer)
        if self._t0 is None:
            self._t0 = time.monotonic()
        step = int(step if step is not None else trainer.fit_loop.epoch_loop._batches_that_stepped)
        epoch = int(metrics.get("epoch", trainer.current_epoch))
        g_steps = getattr(trainer.lightning_module, "g_steps", None)
        g_steps = "" if g_steps is None else int(g_steps)
        wall_time = f"{time.monotonic() - self._t0:.3f}"
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        if not self.path.is_file() or self.path.stat().st_size == 0:
            writer.writerow(HEADER)
        improved, urgent, wrote = [], False, False
        for name, value in metrics.items():
            if name == "epoch" or isinstance(value, str) or not _is_number(value):
                continue  # epoch is a column; only scalars are rows
            value = float(value)
            writer.writerow((step, epoch, g_steps, wall_time, name, repr(value)))
            wrote = True
            urgent |= goal_of(name) is not None and not name.startswith("train/")
            if self._summary.update(name, value, step):
                improved.append(name)
        self._append(buffer.getvalue().encode())
        if urgent or (wrote and time.monotonic() - self._summary_written
                      >= self.summary_every_s):
            self._write_summary()
        self._update_wandb(trainer, improved, [n for n in metrics if goal_of(n)])

    def _append(self, data: bytes) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            view = memoryview(data)
            while view:  # one write for the whole call unless the kernel takes less
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)

    def summary(self) -> dict[str, dict[str, Any]]:
        """What ``summary.json`` holds: every name's entry, with its ``protocol`` where it is a
        sample-quality metric."""
        out = self._summary.as_dict()
        for name, entry in out.items():
            if name in self._protocols:
                entry["protocol"] = self._protocols[name][0]
        return out

    def _write_summary(self) -> None:
        text = json.dumps(self.summary(), indent=2) + "\n"
        atomic_write(self.summary_path, lambda tmp: Path(tmp).write_text(text))
        self._summary_written = time.monotonic()

    def finish(self) -> None:
        """Write the summary once more (end of a trainer call, or a failure) and forget the
        folder: the next trainer call (or run) finds its own."""
        if self._folder is not None and self._summary.entries:
            self._write_summary()
        self._folder = None

    # --- W&B -------------------------------------------------------------------------------
    def _update_wandb(self, trainer: Trainer, improved: list[str], goal_names: list[str]) -> None:
        for logger in trainer.loggers:
            if not isinstance(logger, WandbLogger):
                continue
            run = logger.experiment
            known_run, defined = self._wandb_runs.get(id(logger), (None, set()))
            if known_run is not run:  # a new W&B run (or a new segment of a resumed one)
                defined = set()
                self._wandb_runs[id(logger)] = (run, defined)
            prefix = getattr(logger, "_prefix", "")
            join = getattr(logger, "LOGGER_JOIN_CHAR", "-")
            new = [name for name in goal_names if name not in defined]
            summary = {}
            for name in new:
                run.define_metric(_key(prefix, join, name), step_metric="trainer/global_step",
                                  summary=f"{goal_of(name)},last")
                defined.add(name)
                if name in self._protocols:  # e.g. metrics/protocol = inception-train-10000
                    protocol, protocol_key = self._protocols[name]
                    summary[_key(prefix, join, protocol_key)] = protocol
            for name in {*improved, *new}:
                entry = self._summary.entries.get(name, {})
                if "best" in entry:
                    summary[_key(prefix, join, f"{name}.best")] = entry["best"]
                    summary[_key(prefix, join, f"{name}.best_step")] = entry["best_step"]
            if summary:
                run.summary.update(summary)


def _key(prefix: str, join: str, name: str) -> str:
    """The name Lightning's WandbLogger logs ``name`` under (its ``prefix`` joined with ``-``)."""
    return f"{prefix}{join}{name}" if prefix else name


def _is_number(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def _redirect_csv_loggers(trainer: Trainer, path: Path) -> None:
    """A CSVLogger whose folder is the run folder would write its wide ``metrics.csv`` over
    ours: it writes ``metrics_wide.csv`` there instead. Lightning's CSV writer deletes an
    existing ``metrics.csv`` when it opens a folder that is not empty (a run continued in its
    folder): ours is moved out of its way meanwhile."""
    for logger in trainer.loggers:
        if not isinstance(logger, CSVLogger) or rank_zero_only.rank != 0:
            continue
        if Path(logger.log_dir, METRICS_FILE).resolve() != path.resolve():
            continue
        if getattr(logger, "_experiment", None) is None and path.is_file():
            keep = path.with_name(f".{path.name}.keep")
            os.replace(path, keep)
            try:
                logger.experiment  # noqa: B018 (creates the writer)
            finally:
                os.replace(keep, path)
        experiment = logger.experiment
        if Path(experiment.metrics_file_path).resolve() == path.resolve():
            experiment.metrics_file_path = str(path.with_name(CSV_LOGGER_FILE))
