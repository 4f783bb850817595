"""A sweep's results: its trials ranked by the objective, and Optuna's plots of the study.

Written by ``lightning-gen sweep`` at its end and by ``lightning-gen compare --sweep NAME``:

- ``ranking.csv`` and ``ranking.md`` (also printed): one row per trial, best first (complete
  trials by their value, then pruned ones by their last reported value, then failed, running
  and waiting ones), with its state, value, sampled values, run folder and error line;
- ``history.png``, ``parallel_coordinates.png``, ``importances.png``: Optuna's matplotlib
  visualisations (``optuna.visualization.matplotlib``: ``plot_optimization_history``,
  ``plot_parallel_coordinate``, ``plot_param_importances`` with fANOVA; the last two need
  finished trials with different values, else a note says why there is none).
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lightning_gen.compare import markdown, print_table, write_csv
from lightning_gen.runs import atomic_write

ORDER = ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")


def _show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def ranking(study) -> tuple[list[str], list[dict[str, Any]]]:
    """Columns and one record per trial, best first."""
    from lightning_gen.sweep import counted

    trials = counted(study.get_trials(deepcopy=False))
    sign = 1 if study.direction.name == "MINIMIZE" else -1
    objective = study.user_attrs.get("objective", "value")

    def key(t) -> tuple:
        value = t.value if t.value is not None else None
        return (ORDER.index(t.state.name), value is None, sign * value if value is not None
                else 0.0, t.number)

    names = list(dict.fromkeys(n for t in trials for n in t.params))
    records = []
    for rank, t in enumerate(sorted(trials, key=key), 1):
        record = {"rank": rank, "trial": t.number, "state": t.state.name.lower(),
                  objective: t.value}
        record.update({n: t.params.get(n) for n in names})
        record["run_dir"] = t.user_attrs.get("run_dir")
        record["seconds"] = t.user_attrs.get("seconds")
        record["note"] = t.user_attrs.get("error") or t.user_attrs.get("interrupted") or (
            f"retry of trial {t.system_attrs['failed_trial']}" if "failed_trial" in
            t.system_attrs else None)
        records.append(record)
    columns = ["rank", "trial", "state", objective, *names, "run_dir", "seconds", "note"]
    return columns, records


def _save(path: Path, plot: Callable[[], Any]) -> Path:
    import matplotlib

    if "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    axes = plot()
    figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
    figure.set_size_inches(max(figure.get_size_inches()[0], 8), 5)
    figure.tight_layout()
    try:
        return atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=100))
    finally:
        plt.close(figure)


def _titled(axes, title: str) -> Any:
    """``title`` in place of Optuna's (which it sets on the left)."""
    for loc in ("left", "center"):
        axes.set_title(title if loc == "left" else "", loc=loc)
    return axes


def _whole_trials(axes) -> Any:
    """Trial numbers on the x axis, not 0.25, 0.5, ... (a short study's default ticks)."""
    from matplotlib.ticker import MaxNLocator

    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    return axes


def _full_axis_names(axes, objective: str, trials) -> Any:
    """Optuna cuts every axis name of 20 characters or more to 17 and "...", so the sweep's
    keys (``model.init_args.lr_g``, ``model.init_args.lr_d``) all read ``model.init_args.l...``.
    Its axes are the objective, then the parameters sorted by name: each label is put back in
    full where it is the cut form of the name at its place (else Optuna's labels are kept)."""
    names = [objective, *sorted({n for t in trials for n in t.params})]
    labels = [label.get_text() for label in axes.get_xticklabels()]
    if len(labels) == len(names) and all(
            label == name or (name.startswith(label[:-3]) and label.endswith("..."))
            for label, name in zip(labels, names, strict=True)):
        axes.set_xticks(axes.get_xticks(), names, rotation=15, ha="right")
    return axes


def plots(study, out: Path) -> tuple[dict[str, Path], list[str]]:
    """Optuna's three plots of the study as PNGs in ``out``, and notes on those left out."""
    import optuna
    from optuna.trial import TrialState
    from optuna.visualization import matplotlib as vis

    objective = study.user_attrs.get("objective", "Objective Value")
    paths, notes = {}, []
    finished = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # optuna's ExperimentalWarning for its matplotlib plots
        paths["history"] = _save(out / "history.png", lambda: _whole_trials(
            vis.plot_optimization_history(study, target_name=objective)))
        if not finished:
            notes.append("no complete trial: no parallel coordinates, no importances")
            return paths, notes
        paths["parallel"] = _save(out / "parallel_coordinates.png",
                                  lambda: _full_axis_names(vis.plot_parallel_coordinate(
                                      study, target_name=objective), objective, finished))
        try:
            # fANOVA, named: Optuna 5 changed the default to PED-ANOVA, which keeps the best 10 %
            # of the trials (one trial in a short study) and, where it cannot tell, warns and
            # draws equal bars instead of failing.
            paths["importances"] = _save(out / "importances.png", lambda: _titled(
                vis.plot_param_importances(
                    study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0),
                    target_name=objective), "Hyperparameter importances (fANOVA, seed 0)"))
        except (RuntimeError, ValueError) as err:
            notes.append(f"no importances.png: {err}")
    return paths, notes


def report(study, out: str | Path) -> dict[str, Any]:
    """Print the ranking and write it with the plots into ``out``; the paths and records."""
    out = Path(out)
    columns, records = ranking(study)
    header = [c for c in columns if c != "run_dir"]
    rows = [[_show(r.get(c)) for c in header] for r in records]
    paths = {"csv": write_csv(out / "ranking.csv", columns, records),
             "markdown": atomic_write(out / "ranking.md", lambda tmp: Path(tmp).write_text(
                 markdown(header, rows)))}
    done = sum(r["state"] in ("complete", "pruned", "fail") for r in records)
    note = (f"study {study.study_name}: {done} of {study.user_attrs.get('trials', '?')} trials "
            f"finished; {study.direction.name.lower()} {columns[3]}")
    print_table(header, rows, ["trials"] * len(rows), note)
    figures, notes = plots(study, out)
    paths.update(figures)
    for line in notes:
        print(f"note: {line}")
    for kind, path in paths.items():
        print(f"{kind:<12} {path}", flush=True)
    return {"paths": paths, "columns": columns, "records": records}


def load(name: str, storage: str | None = None, runs_dir: str = "runs"):
    """The study ``name`` from ``storage``, default ``<runs_dir>/sweeps/NAME/study.db``."""
    import optuna

    from lightning_gen.sweep_trial import make_storage

    if storage is None:
        db = Path(runs_dir) / "sweeps" / name / "study.db"
        if not db.is_file():
            found = sorted(p.parent.name for p in (Path(runs_dir) / "sweeps").glob("*/study.db"))
            raise FileNotFoundError(
                f"no sweep '{name}' under '{runs_dir}/sweeps'" + (
                    f" (sweeps there: {', '.join(found)})" if found else "") +
                "; give --storage URL for a shared database")
        storage = f"sqlite:///{db}"
    try:
        return optuna.load_study(study_name=name, storage=make_storage(storage))
    except KeyError:
        raise FileNotFoundError(f"no study '{name}' in {storage}") from None
