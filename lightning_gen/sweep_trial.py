"""The trial's side of a sweep: report the objective to the Optuna study, stop when pruned.

``lightning-gen sweep`` runs each trial as ``lightning-gen fit`` with the environment variable
:data:`ENV` holding JSON: the study's storage URL and name, the trial's id and number, the
objective, the pruner and a result file. The CLI then attaches a :class:`TrialReporter`, a
Lightning logger placed after the run's own loggers (like :class:`MetricsFile`), so it receives
exactly what they receive. Each time the objective is logged it is reported to the study as
the trial's intermediate value at that step (``optuna.trial.Trial(study, trial_id)``: the trial
the sweep process asked for, rebuilt from the storage), and the pruner is asked; when it says
prune, training stops at the end of that step (checkpoint and W&B run as at any end). The
result file tells the sweep the run folder, the last value and whether the trial was pruned.

:func:`run_in_process` runs such a ``fit`` inside the sweep's process (``--in_process true``).
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any

from lightning import Callback, Trainer
from lightning.pytorch.loggers import WandbLogger

from lightning_gen.callbacks.metrics_file import FollowingLogger
from lightning_gen.runs import atomic_write, run_dir

ENV = "LIGHTNING_GEN_SWEEP_TRIAL"

PRUNERS = {"median": "MedianPruner", "percentile": "PercentilePruner",
           "hyperband": "HyperbandPruner", "successive_halving": "SuccessiveHalvingPruner",
           "threshold": "ThresholdPruner", "patient": "PatientPruner", "none": "NopPruner"}
SQLITE_TIMEOUT_S = 60
STORAGE_ATTEMPTS = 5  # make_storage: opening attempts when another process creates the tables


def make_pruner(name: str, kwargs: dict[str, Any] | None = None):
    """Optuna's pruner of that name (``median``: ``MedianPruner``, ...) with ``kwargs``."""
    import optuna

    if name not in PRUNERS:
        raise ValueError(f"--pruner must be one of {', '.join(PRUNERS)}, got '{name}'")
    kwargs = dict(kwargs or {})
    if name == "patient":  # PatientPruner wraps another pruner (here: none) with patience
        kwargs.setdefault("wrapped_pruner", None)
    try:
        return getattr(optuna.pruners, PRUNERS[name])(**kwargs)
    except TypeError as err:
        raise ValueError(f"--pruner_kwargs do not fit {PRUNERS[name]}: {err}") from None


def make_storage(url: str, **kwargs):
    """Optuna's RDB storage; SQLite waits up to a minute for a lock held by another worker.

    Opening a storage creates Optuna's tables and version rows where they are missing, and
    SQLAlchemy checks whether a table exists before it creates it. Two processes opening a new
    database at once (a second worker, Optuna's dashboard or any reader started as the sweep
    begins) can both find a table missing; the later one then fails with "table ... already
    exists" (or a duplicate version row), although the tables are complete a moment later. So
    such a failure opens the storage again (a few times, 0.2 s apart and more) instead of
    ending the sweep with a traceback.
    """
    import time

    import optuna
    import sqlalchemy.exc

    engine_kwargs = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}} if url.startswith(
        "sqlite") else {}
    for attempt in range(1, STORAGE_ATTEMPTS):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **kwargs)
        except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.IntegrityError) as err:
            if not (isinstance(err, sqlalchemy.exc.IntegrityError)
                    or "already exists" in str(err)):
                raise
            time.sleep(0.2 * attempt)
    return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **kwargs)


class TrialReporter(Callback):
    """Report ``objective`` to the trial, prune when its pruner says so (see the module)."""

    def __init__(self, spec: dict[str, Any]) -> None:
        import optuna

        self.spec = spec
        self.objective = spec["objective"]
        self.result_path = Path(spec["result"])
        study = optuna.load_study(study_name=spec["study"], storage=make_storage(spec["storage"]),
                                  pruner=make_pruner(spec["pruner"], spec.get("pruner_kwargs")))
        self.trial = optuna.trial.Trial(study, int(spec["trial_id"]))
        self.logger = _ReporterLogger(self)
        self.trainer: Trainer | None = None
        self.result: dict[str, Any] = {"trial": spec["number"], "pruned": False, "last": None,
                                       "reports": 0}
        self.stop = False  # rank 0's decision (loggers log on rank 0 only)

    def attach(self, trainer: Trainer) -> TrialReporter:
        self.trainer = trainer
        trainer.callbacks.append(self)
        trainer.loggers = [*trainer.loggers, self.logger]
        return self

    def setup(self, trainer: Trainer, pl_module, stage: str) -> None:
        if trainer.is_global_zero:
            self.result["run_dir"] = str(run_dir(trainer))
            self._write()

    def on_fit_start(self, trainer: Trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        sweep = {"name": self.spec["study"], "trial": self.spec["number"],
                 "params": self.spec.get("params", {}), "objective": self.objective,
                 "direction": self.spec.get("direction")}
        for logger in trainer.loggers:  # the sweep's name, trial and values in the W&B config
            if isinstance(logger, WandbLogger):
                logger.experiment.config.update({"sweep": sweep}, allow_val_change=True)

    def on_train_batch_end(self, trainer: Trainer, *args) -> None:
        # Under DDP every rank must stop at the same step: rank 0's decision, shared.
        if trainer.world_size > 1 and trainer.strategy.reduce_boolean_decision(self.stop,
                                                                               all=False):
            trainer.should_stop = True

    def _stop(self) -> None:
        self.stop = True
        if self.trainer.world_size == 1:
            self.trainer.should_stop = True

    def report(self, metrics: dict[str, Any], step: int | None) -> None:
        trainer = self.trainer
        if self.objective not in metrics or trainer is None or not trainer.is_global_zero:
            return
        value = float(metrics[self.objective])
        step = int(step if step is not None else trainer.global_step)
        self.result["last"] = {"value": value, "step": step}
        self.result["reports"] += 1
        if not math.isfinite(value):
            self._write()
            return
        try:
            self.trial.report(value, step)
            prune = self.trial.should_prune()
        except Exception as err:  # noqa: BLE001 (e.g. the trial was failed by another worker)
            print(f"lightning-gen: sweep trial {self.spec['number']}: cannot report to the "
                  f"study ({type(err).__name__}: {err}); stopping", file=sys.stderr, flush=True)
            self._stop()
            self._write()
            return
        if prune:
            self.result.update(pruned=True, pruned_step=step)
            self._stop()
            print(f"lightning-gen: sweep trial {self.spec['number']} pruned at step {step} "
                  f"({self.objective} = {value:.6g})", file=sys.stderr, flush=True)
        self._write()

    def _write(self) -> None:
        text = json.dumps(self.result) + "\n"
        atomic_write(self.result_path, lambda tmp: Path(tmp).write_text(text))


class _ReporterLogger(FollowingLogger):
    """Receives every logged value after the run's loggers; no folder, no files of its own."""

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.owner.report(metrics, step)


def attach_from_env(trainer: Trainer) -> None:
    """Attach a :class:`TrialReporter` when this fit is a sweep's trial (:data:`ENV` set)."""
    text = os.environ.get(ENV)
    if text:
        TrialReporter(json.loads(text)).attach(trainer)


# --- the sweep's side: running a trial in the sweep's process (--in_process true) -------
def error_line(text: str) -> str | None:
    """The line a failed ``lightning-gen fit`` ended with: its one-line error, else the last
    line of a traceback."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    mine = [ln for ln in lines if ln.startswith("lightning-gen: ")]
    return (mine or lines or [None])[-1]


def run_in_process(args: list[str], env: dict[str, str], log_path: Path
                    ) -> tuple[int, str | None]:
    """``lightning-gen fit ARGS`` in this process (``--in_process true``); its output as usual."""
    # W&B records a run's console by patching the write() of the sys.stdout/sys.stderr it finds
    # when its capture module is first imported, once and for good: imported inside the first
    # trial, it patched that trial's tee, and later trials' W&B logs had no stderr at all.
    import wandb.sdk.lib.console_capture  # noqa: F401

    from lightning_gen.cli import main

    saved_env, saved_argv, saved_err = dict(os.environ), sys.argv, sys.stderr
    tee = _Tee(sys.stderr)
    os.environ.update(env)
    # A DDP launcher starts the other ranks with this process's command line: the trial's.
    sys.argv = [sys.argv[0], "fit", *args]
    sys.stderr = tee
    code, error = 0, None
    try:
        main(["fit", *args])
    except SystemExit as err:
        code = err.code if isinstance(err.code, int) else (0 if err.code is None else 1)
    except KeyboardInterrupt:
        code = 130
    except Exception as err:  # noqa: BLE001 (a crashed trial fails; the sweep goes on)
        code, error = 1, f"{type(err).__name__}: {err}".splitlines()[0]
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        sys.argv, sys.stderr = saved_argv, saved_err
        log_path.write_text(tee.buffer.getvalue())
        _free_memory()
    if code and error is None:
        error = error_line(tee.buffer.getvalue())
    return code, error


class _Tee:
    def __init__(self, stream) -> None:
        import io

        self.stream, self.buffer = stream, io.StringIO()

    def write(self, text: str) -> int:
        self.buffer.write(text)
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()

    def __getattr__(self, name: str):
        return getattr(self.stream, name)


def _free_memory() -> None:
    import gc

    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass
