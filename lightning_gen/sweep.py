"""``lightning-gen sweep``: hyperparameter search on Optuna, every trial an ordinary run.

    lightning-gen sweep --config experiments/dcgan_cifar10.yaml \\
        --space experiments/sweeps/dcgan_lr_beta1.yaml --trials 30 --objective metrics/fid \\
        --metrics.every_n_epochs 5 --metrics.num_samples 10000 --trainer.max_epochs 25

Each trial is ``lightning-gen fit`` in a process of its own (``--in_process true``: in the
sweep's process) with the sampled values as ``--key=value`` options after the command line's
own: its own run folder, config, checkpoint and W&B run (group = the study's name, tags and
W&B config with the trial). The objective is reported to the study whenever the run logs it
(:mod:`lightning_gen.sweep_trial`) and the pruner may stop the trial early. The study lives in
an SQLite file in the runs folder unless ``--storage URL`` names a shared database; any number
of processes, on any number of machines, may run the same command on one study: together they
run ``--trials`` trials (docs/sweeps.md says how that count stays exact across restarts).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from lightning_gen.callbacks.metrics_file import goal_of, is_gan_player_term
from lightning_gen.sweep_space import (
    Param,
    check_space_values,
    load_space,
    logged_names,
    metrics_sources,
    overrides,
    parse_config,
    resolve_keys,
)
from lightning_gen.sweep_trial import (
    ENV,
    PRUNERS,
    error_line,
    make_pruner,
    make_storage,
    run_in_process,
)

# Options a trial sets for itself (or that a sweep cannot honour).
RESERVED = ("--ckpt_path", "--trainer.logger.init_args.version", "--print_config")
ERROR_ATTR, INTERRUPTED_ATTR = "error", "interrupted"
SUITE_LOGGER = "lightning_gen.loggers.WandbLogger"


class SweepError(ValueError):
    """A mistake in the sweep's command line, space or study, caught before any trial."""


def _pid_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), telling a reused pid apart."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return start is None or _pid_start(pid) in (None, start)


def prepare(args: argparse.Namespace, extra: list[str]
            ) -> tuple[list[Param], list[str], dict, str]:
    """Check the space, the options and the objective against the experiment before anything
    runs: the params (keys made canonical), the trials' common options, the resolved config
    and the direction.

    Raises:
        ValueError: an unknown or mistyped key, a value the experiment refuses, an objective
            the experiment does not log (each one line).
    """
    params = load_space(args.space)
    base = ["--config", *_joined(args.config, "--config"), *extra]
    config = parse_config(base)  # the experiment + the command line, resolved
    resolve_keys(params, config, args.space)
    given = {a.split("=", 1)[0][2:] for a in extra if a.startswith("--")}
    for param in params:
        for key in param.keys:
            if key in given or key.replace(".init_args", "") in given:
                raise SweepError(f"{key} is both searched (--space) and set on the command "
                                 "line; drop one")
    check_space_values(params, config, base, args.space)
    direction = args.direction or {"min": "minimize", "max": "maximize"}.get(
        goal_of(args.objective) or "")
    if direction is None:
        why = (" (a GAN player's loss: a low train/g_loss means a weak discriminator, not good "
               "samples; rank by metrics/fid with --metrics.every_n_epochs N)"
               if is_gan_player_term(args.objective) else "")
        raise SweepError(f"--direction minimize|maximize: '{args.objective}' has no known goal"
                         + why)
    names, notes = logged_names(config)
    if names and args.objective not in names:
        raise SweepError(f"--objective {args.objective} is not logged by this experiment ("
                         f"{'; '.join(notes) + '; ' if notes else ''}it logs "
                         f"{', '.join(sorted(names))})")
    if not names:
        print(f"lightning-gen: warning: {'; '.join(notes)}: --objective {args.objective} is "
              "checked when the first trial ends", file=sys.stderr)
    return params, base, config, direction


def check_extractors(config: dict) -> str | None:
    """The checkpoint of the fit's ``classifier:`` feature extractor, resolved once for the whole
    sweep (``None`` without one). It must exist (or a glob must match one) before any trial
    starts, not fail every trial; a glob is resolved here, not by each trial, so every trial's
    metrics are in one classifier's features even if a newer evaluator is trained meanwhile."""
    import glob

    from lightning_gen.metrics.extractors import classifier_checkpoint

    pinned = None
    for metric_args, where in metrics_sources(config):
        spec = str(metric_args.get("feature_extractor") or "")
        if int(metric_args.get("every_n_epochs") or 0) > 0 and spec.startswith("classifier:"):
            option = ("--metrics.feature_extractor" if where.startswith("--metrics")
                      else "trainer.callbacks")
            try:
                path = classifier_checkpoint(spec.partition(":")[2])
            except FileNotFoundError as err:
                raise SweepError(f"{option}: {err}") from None
            if option == "--metrics.feature_extractor":
                pinned = str(path)
            elif glob.has_magic(spec.partition(":")[2]) and str(path) != spec.partition(":")[2]:
                raise SweepError(f"trainer.callbacks: a sweep cannot hold the glob {spec!r} to "
                                 "one checkpoint for all its trials; name the checkpoint")
    return pinned


class Sweep:
    """One worker of a study: asks for trials until the study holds ``trials`` of them."""

    def __init__(self, args: argparse.Namespace, extra: list[str]) -> None:
        import optuna

        self.args, self.extra = args, extra
        self.params, self.base, self.config, self.direction = prepare(args, extra)
        self.classifier = check_extractors(self.config)
        logger = (self.config.get("trainer") or {}).get("logger")
        self.logger_args = (logger.get("init_args") or {}) if isinstance(logger, dict) and str(
            logger.get("class_path")) == SUITE_LOGGER else None
        save_dir = Path((self.logger_args or {}).get("save_dir") or "runs")
        self.name = args.study_name or Path(args.space).name.split(".")[0]
        self.folder = save_dir / "sweeps" / self.name
        self.folder.mkdir(parents=True, exist_ok=True)
        self.storage_url = args.storage or f"sqlite:///{self.folder / 'study.db'}"
        self.lock_path = (Path(self.storage_url[len("sqlite:///"):] + ".lock")
                          if self.storage_url.startswith("sqlite:///") else None)
        heartbeat = {"heartbeat_interval": args.heartbeat_interval,
                     "grace_period": args.grace_period}
        # The callback Optuna calls for a trial whose worker stopped sending heartbeats
        # (renamed in Optuna 4.9).
        import inspect

        kw = ("heartbeat_stale_trial_callback" if "heartbeat_stale_trial_callback" in
              inspect.signature(optuna.storages.RDBStorage.__init__).parameters
              else "failed_trial_callback")
        heartbeat[kw] = lambda study, trial: retry(study, trial, "its worker stopped sending "
                                                   "heartbeats")
        sampler = (optuna.samplers.RandomSampler(seed=args.seed) if args.sampler == "random"
                   else optuna.samplers.TPESampler(seed=args.seed))
        self.pruner_kwargs = json.loads(args.pruner_kwargs or "{}")
        with self.lock():  # two workers creating one SQLite file's tables would collide
            self.storage = make_storage(self.storage_url, **heartbeat)
            self.study = optuna.create_study(
                study_name=self.name, storage=self.storage, sampler=sampler,
                pruner=make_pruner(args.pruner, self.pruner_kwargs), direction=self.direction,
                load_if_exists=True)
            self._check_study()
        self.worker = f"{socket.gethostname()}:{os.getpid()}:{_pid_start(os.getpid())}"
        self.signal: int | None = None
        self.child: subprocess.Popen | None = None

    # --- the study -------------------------------------------------------------------------
    def _check_study(self) -> None:
        attrs = self.study.user_attrs
        mine = {"objective": self.args.objective, "direction": self.direction,
                "space": {p.name: {"type": p.type, **p.args, "keys": p.keys}
                          for p in self.params}}
        if not attrs:
            for key, value in {**mine, "config": self.args.config, "options": self.extra,
                               "trials": self.args.trials, "classifier": self.classifier}.items():
                self.study.set_user_attr(key, value)
        else:
            for key, value in mine.items():
                if json.dumps(attrs.get(key), sort_keys=True) != json.dumps(value,
                                                                            sort_keys=True):
                    raise SweepError(f"study '{self.name}' ({self.storage_url}) was started "
                                     f"with another {key} ({json.dumps(attrs.get(key))}); give "
                                     "another --study_name for a new study")
            self._keep_classifier(attrs.get("classifier"))
        if self.classifier is not None:
            # Every trial (in this worker, and in any worker or restart of this study) uses the
            # one checkpoint: later --metrics.feature_extractor options win over earlier ones.
            self.base = [*self.base, f"--metrics.feature_extractor=classifier:{self.classifier}"]
            print(f"sweep {self.name}: classifier extractor for every trial: {self.classifier}",
                  flush=True)

    def _keep_classifier(self, started: str | None) -> None:
        """A study's trials are ranked in one classifier's features: a worker joining it (or
        the same command run again) uses the checkpoint the study started with, which its glob
        may no longer pick (a newer evaluator), and refuses a checkpoint named otherwise."""
        if started is None or self.classifier is None or started == self.classifier:
            return
        import glob

        spec = str(self.config["metrics"]["feature_extractor"]).partition(":")[2]
        if not (glob.has_magic(spec) and Path(started) in map(Path, glob.glob(spec))):
            raise SweepError(f"study '{self.name}' ({self.storage_url}) ranks its trials in the "
                             f"features of {started}, not {self.classifier}; give another "
                             "--study_name for a new study")
        print(f"sweep {self.name}: {spec} now also matches {self.classifier}; the study keeps "
              f"{started}", flush=True)
        self.classifier = started

    @contextmanager
    def lock(self):
        """Workers on one SQLite file take turns to count and ask (no trial beyond the count);
        other databases rely on the check after asking (see :meth:`next_trial`)."""
        if self.lock_path is None:
            yield
            return
        import fcntl

        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.lock_path, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def recover(self) -> None:
        """Trials left RUNNING by a sweep process of this host that has stopped (killed, or the
        machine restarted) fail and run again; those of other hosts once their heartbeat is
        older than ``--grace_period`` (Optuna's ``fail_stale_trials``)."""
        import optuna
        from optuna.trial import TrialState

        host = socket.gethostname()
        for trial in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            worker = str(trial.user_attrs.get("worker", ""))
            w_host, _, rest = worker.partition(":")
            pid, _, start = rest.partition(":")
            if not worker and trial.datetime_start is not None and (
                    datetime.now() - trial.datetime_start).total_seconds() > self.args.grace_period:
                # A worker stopped between asking for the trial and naming itself.
                if _fail(self.study, trial._trial_id, {INTERRUPTED_ATTR: "no worker ran it"}):
                    retry(self.study, self.storage.get_trial(trial._trial_id), "no worker")
                continue
            if w_host != host or not pid.isdigit() or _alive(int(pid), start or None):
                continue
            why = f"its sweep process ({worker}) stopped"
            if _fail(self.study, trial._trial_id, {INTERRUPTED_ATTR: why}):
                retry(self.study, self.storage.get_trial(trial._trial_id), why)
        optuna.storages.fail_stale_trials(self.study)

    def next_trial(self):
        """The next trial to run, or ``None`` when the study holds ``--trials`` of them."""
        with self.lock():
            self.recover()
            trials = counted(self.study.get_trials(deepcopy=False))
            waiting = [t for t in trials if t.state.name == "WAITING"]  # retries come first
            if not waiting and len(trials) >= self.args.trials:
                return None
            trial = self.study.ask()
            before = [t for t in counted(self.study.get_trials(deepcopy=False))
                      if t.number < trial.number]
            if len(before) >= self.args.trials:  # another database's worker asked meanwhile
                _fail(self.study, trial._trial_id, {"surplus": True, ERROR_ATTR:
                      "not run: the study already held --trials trials when it was asked"})
                return None
            values = {p.name: p.suggest(trial) for p in self.params}
            version = _version(self.name, trial.number)
            trial.set_user_attr("worker", self.worker)
            trial.set_user_attr("version", version)
            if self.storage.get_heartbeat_interval():
                self.storage.record_heartbeat(trial._trial_id)
            return trial, values, version

    # --- one trial -------------------------------------------------------------------------
    def trial_args(self, trial, values: dict[str, Any], version: str) -> list[str]:
        args = [*self.base, *overrides(self.params, values, self.config)]
        if self.logger_args is not None:
            from lightning_gen.run_record import default_tags

            tags = list(self.logger_args.get("tags") or default_tags(self.config))
            args += [f"--trainer.logger.init_args.version={version}",
                     f"--trainer.logger.init_args.group={self.name}",
                     "--trainer.logger.init_args.tags=" + json.dumps(
                         [*tags, f"sweep:{self.name}", f"trial:{trial.number}"])]
        elif not (trainer := self.config.get("trainer") or {}).get("logger"):
            # No logger: the run folder is default_root_dir, one per trial (a new run refuses
            # an earlier run's folder, lightning_gen.faults.check_new_run_folder).
            root = trainer.get("default_root_dir")
            folder = Path(root) / version if root else self.folder / "runs" / version
            args += [f"--trainer.default_root_dir={folder}"]
        return args

    def run_trial(self, trial, values: dict[str, Any], version: str) -> None:
        from optuna.trial import TrialState

        result_path = self.folder / "trials" / f"{trial.number:04d}.json"
        log_path = self.folder / "trials" / f"{trial.number:04d}.log"
        result_path.unlink(missing_ok=True)
        spec = {"storage": self.storage_url, "study": self.name, "trial_id": trial._trial_id,
                "number": trial.number, "objective": self.args.objective,
                "direction": self.direction, "pruner": self.args.pruner,
                "pruner_kwargs": self.pruner_kwargs, "result": str(result_path.absolute()),
                "params": values}
        shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                          for k, v in values.items())
        print(f"sweep {self.name}: trial {trial.number} ({shown})", flush=True)
        stop = threading.Event()
        beat = threading.Thread(target=self._heartbeat, args=(trial._trial_id, stop), daemon=True)
        beat.start()
        started = time.monotonic()
        try:
            code, error = self._run(self.trial_args(trial, values, version), spec, log_path)
        finally:
            stop.set()
            beat.join()
        result = json.loads(result_path.read_text()) if result_path.is_file() else {}
        if result.get("run_dir"):
            trial.set_user_attr("run_dir", result["run_dir"])
        trial.set_user_attr("seconds", round(time.monotonic() - started, 1))
        last = result.get("last") or {}
        stopped = {130: signal.SIGINT, 143: signal.SIGTERM, -signal.SIGINT: signal.SIGINT,
                   -signal.SIGTERM: signal.SIGTERM}
        if code != 0 and (self.signal is not None or code in stopped):
            self.signal = self.signal or stopped.get(code, signal.SIGINT)
            why = f"the sweep was stopped by {signal.Signals(self.signal).name}"
            if _fail(self.study, trial._trial_id, {INTERRUPTED_ATTR: why}):
                retry(self.study, self.storage.get_trial(trial._trial_id), why)
            state, line = "interrupted", f"{why}; it runs again when the sweep goes on"
        elif code != 0:
            state, line = "failed", error or f"exit status {code}"
            _fail(self.study, trial._trial_id, {ERROR_ATTR: line})
        elif result.get("pruned"):
            self.study.tell(trial, state=TrialState.PRUNED)
            state, line = "pruned", f"at step {result.get('pruned_step')}"
        elif last.get("value") is None or last["value"] != last["value"]:
            state = "failed"
            line = (f"{self.args.objective} was never logged" if not last else
                    f"{self.args.objective} was NaN at step {last.get('step')}")
            _fail(self.study, trial._trial_id, {ERROR_ATTR: line})
        else:
            self.study.tell(trial, last["value"])
            state, line = "complete", f"{self.args.objective} = {last['value']:.6g}"
        where = result.get("run_dir") or log_path
        print(f"sweep {self.name}: trial {trial.number} {state}: {line} ({where})", flush=True)

    def _heartbeat(self, trial_id: int, stop: threading.Event) -> None:
        while True:
            try:
                self.storage.record_heartbeat(trial_id)
            except Exception:  # noqa: BLE001 (a busy database: the next beat will do)
                pass
            if stop.wait(self.args.heartbeat_interval):
                return

    def _run(self, args: list[str], spec: dict, log_path: Path) -> tuple[int, str | None]:
        """Run ``lightning-gen fit ARGS`` as a trial: its exit status and error line."""
        env = {**os.environ, ENV: json.dumps(spec)}
        log_path.parent.mkdir(parents=True, exist_ok=True)
        if self.args.in_process:
            return run_in_process(args, env, log_path)
        cmd = [sys.executable, "-m", "lightning_gen", "fit", *args]
        with open(log_path, "w") as log:
            log.write(" ".join(cmd) + "\n")
            log.flush()
            self.child = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
            code = self.child.wait()
            self.child = None
        return code, error_line(log_path.read_text()) if code else None

    def on_signal(self, signum: int, frame) -> None:
        """SIGINT/SIGTERM: the running trial stops (saving its checkpoint), then the sweep.

        The trial's process shares the sweep's process group, so Ctrl-C in a terminal reaches
        it directly; SIGTERM (``kill``, ``timeout``, a container's stop) is passed on."""
        self.signal = self.signal or signum
        if self.child is not None and signum == signal.SIGTERM:
            self.child.send_signal(signum)

    def run(self) -> int:
        done = 0
        while self.signal is None:
            asked = self.next_trial()
            if asked is None:
                break
            self.run_trial(*asked)
            done += 1
        return done


def counted(trials) -> list:
    """Trials that count towards ``--trials``: all but those that were interrupted and run
    again (the retry counts instead) and those asked beyond the count."""
    retried = {t.system_attrs.get("failed_trial") for t in trials}
    return [t for t in trials if t.number not in retried and not t.user_attrs.get("surplus")]


def _fail(study, trial_id: int, attrs: dict[str, Any]) -> bool:
    """Mark a trial FAIL with ``attrs``; False if it had finished already."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    try:
        for key, value in attrs.items():
            study._storage.set_trial_user_attr(trial_id, key, value)
        return bool(study._storage.set_trial_state_values(trial_id, state=TrialState.FAIL))
    except (UpdateFinishedTrialError, RuntimeError):
        return False


def retry(study, trial, why: str) -> None:
    """Queue an interrupted trial's values again as a new trial (Optuna's
    ``RetryHeartbeatStaleTrialCallback``, without its user attributes: the run is new)."""
    import optuna
    from optuna.trial import TrialState

    if trial.user_attrs.get(INTERRUPTED_ATTR) is None:
        study._storage.set_trial_user_attr(trial._trial_id, INTERRUPTED_ATTR, why)
    history = [*trial.system_attrs.get("retry_history", []), trial.number]
    study.add_trial(optuna.trial.create_trial(
        state=TrialState.WAITING, params=trial.params, distributions=trial.distributions,
        system_attrs={"failed_trial": trial.number, "retry_history": history}))


def _version(name: str, number: int) -> str:
    return f"{name}-t{number}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def _joined(values: list[str], flag: str) -> list[str]:
    out: list[str] = []
    for i, value in enumerate(values):
        out += [flag, value] if i else [value]
    return out


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lightning-gen sweep",
        description="Hyperparameter search (Optuna): each trial is `lightning-gen fit` with "
                    "values from --space; any other option (--trainer.max_steps 2000, "
                    "--data.data_dir D) applies to every trial. docs/sweeps.md.")
    p.add_argument("--config", action="append", required=True, help="experiment YAML")
    p.add_argument("--space", required=True, help="search space YAML (experiments/sweeps/)")
    p.add_argument("--trials", type=int, required=True,
                   help="trials in the study, all workers and restarts together")
    p.add_argument("--objective", required=True,
                   help="a metric the experiment logs: metrics/fid, val/elbo, val/loss")
    p.add_argument("--direction", choices=("minimize", "maximize"),
                   help="default: from the metric's name (fid, *loss: minimize; is_mean, "
                        "elbo, precision, recall: maximize; a GAN's train/d_*, train/g_*: "
                        "none)")
    p.add_argument("--storage", help="Optuna RDB storage URL shared by all workers, e.g. "
                   "postgresql://user:pw@host/db (default: sqlite:///<runs>/sweeps/NAME/study.db)")
    p.add_argument("--study_name", help="default: the space file's name")
    p.add_argument("--pruner", default="median", choices=tuple(PRUNERS))
    p.add_argument("--pruner_kwargs", help='JSON arguments of the pruner, e.g. '
                   '\'{"n_startup_trials": 5, "n_warmup_steps": 1000}\'')
    p.add_argument("--sampler", default="tpe", choices=("tpe", "random"))
    p.add_argument("--seed", type=int, help="the sampler's seed (per worker)")
    p.add_argument("--in_process", type=_bool, default=False,
                   help="run trials in this process (no new Python per trial; a crash ends "
                        "the sweep, which a rerun continues)")
    p.add_argument("--heartbeat_interval", type=int, default=60)
    p.add_argument("--grace_period", type=int, default=300,
                   help="seconds without a heartbeat before another worker fails a trial and "
                        "runs it again")
    p.add_argument("--out", help="folder of the ranking and plots (default: the sweep's folder)")
    return p


def _bool(text: str) -> bool:
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got '{text}'")


def main(argv: list[str]) -> None:
    """``lightning-gen sweep ...`` (``argv``: the arguments after ``sweep``)."""
    args, extra = parser().parse_known_args(argv)
    for option in extra:
        if option.split("=", 1)[0] in RESERVED:
            raise SweepError(f"{option.split('=', 1)[0]} cannot be given to a sweep (each "
                             "trial is a new run of its own)")
    if args.trials < 1:
        raise SweepError(f"--trials must be at least 1, got {args.trials}")
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the sweep prints its own lines
    with warnings.catch_warnings():
        # fail_stale_trials and the matplotlib plots are "experimental" in Optuna's words.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # Optuna runs heartbeats itself only in Study.optimize; the sweep runs its own.
        warnings.filterwarnings("ignore", message="Heartbeat of storage")
        sweep = Sweep(args, extra)
        handlers = {s: signal.signal(s, sweep.on_signal) for s in (signal.SIGINT,
                                                                    signal.SIGTERM)}
        try:
            sweep.run()
        finally:
            for s, handler in handlers.items():
                signal.signal(s, handler)
    if sweep.signal is not None:
        n = len([t for t in counted(sweep.study.get_trials(deepcopy=False))
                 if t.state.is_finished()])
        print(f"lightning-gen: sweep {sweep.name} stopped by "
              f"{signal.Signals(sweep.signal).name} ({n} of {args.trials} trials finished); "
              "the same command goes on", file=sys.stderr, flush=True)
        sys.exit(128 + int(sweep.signal))
    from lightning_gen.sweep_plots import report

    report(sweep.study, out=args.out or sweep.folder)
