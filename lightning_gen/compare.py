"""``lightning-gen compare``: runs side by side, offline, from their run folders alone.

    lightning-gen compare runs/lightning-gen/quickstart-A runs/lightning-gen/quickstart-B
    lightning-gen compare 'runs/lightning-gen/dcgan*' --metrics train/g_loss,metrics/fid
    lightning-gen compare --group dcgan_cifar10 --x g_steps --out compare/dcgan
    lightning-gen compare --sweep dcgan_lr_beta1   # a sweep's trials, ranked (sweep_plots)

Reads each run's ``config.yaml``, ``summary.json``, ``metrics.csv``, ``eval/results.jsonl`` and
``images/*_last.png`` and writes into one folder (printed at the end):

- ``table.csv`` (one row per run) and ``table.md`` (one column per run, as printed): the config
  keys whose values differ between the runs, each chosen metric's best and last value (with
  its step) from ``summary.json``, and the latest evaluation per protocol from
  ``eval/results.jsonl``;
- ``curves.png``: one panel per chosen metric, one line per run (from ``metrics.csv``, or from
  ``eval/results.jsonl`` for ``eval/<protocol>/<metric>``);
- ``samples.png``: each run's last sample grid, side by side.

Runs are named in legends and captions by their differing values (``lr_g=0.0002``).
"""

from __future__ import annotations

import argparse
import csv
import glob
import io
import json
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import yaml

from lightning_gen.compare_plots import (
    X_AXES,
    last_grid,
    plot_curves,
    plot_grids,
    read_jsonl,
    read_metrics,
)
from lightning_gen.runs import atomic_write

# Config keys that differ between any two runs and say nothing about them: the logger's run id
# (``version``: the run folder's name, already each column's header). A key missing from a
# run's config and a key set to ``null`` count as the same ("not set"), so configs written by
# older versions of lightning-gen compare cleanly with newer ones.
IGNORED_KEYS = ("trainer.logger.init_args.version", "trainer.logger.*.init_args.version")
# Sections of config.yaml in the order the table lists them; other keys follow.
SECTIONS = ("model", "data", "seed_everything", "trainer")
MISSING = "-"


@dataclass
class Run:
    """A run folder, read once."""

    path: Path
    config: dict
    summary: dict = field(default_factory=dict)
    evals: dict[str, dict] = field(default_factory=dict)  # protocol -> latest row

    @property
    def name(self) -> str:
        return self.path.name


def find_runs(paths: Sequence[str], group: str | None = None,
              runs_dir: str = "runs") -> list[Path]:
    """Run folders named by path or glob (in the order given, globs sorted) and by ``group``.

    Raises:
        FileNotFoundError: a path or glob names no folder, or no run has that group.
        ValueError: a folder is not a run (no ``config.yaml``).
    """
    found: list[Path] = []
    for arg in paths:
        matches = sorted(glob.glob(arg)) if glob.has_magic(arg) else [arg]
        if not matches:
            raise FileNotFoundError(f"no run folder matches '{arg}'")
        for match in map(Path, matches):
            if not match.is_dir():
                what = "not a folder" if match.exists() else "no such folder"
                raise FileNotFoundError(f"'{match}' is not a run folder ({what})")
            if not (match / "config.yaml").is_file():
                raise ValueError(f"'{match}' is not a run folder (no config.yaml in it)")
            found.append(match)
    if group is not None:
        candidates = _runs_under(Path(runs_dir))
        members = [p for p in candidates if run_group(_read_config(p)) == group]
        if not members:
            groups = sorted({g for p in candidates if (g := run_group(_read_config(p)))})
            raise FileNotFoundError(
                f"no run under '{runs_dir}' has group '{group}'"
                + (f" (groups there: {', '.join(groups)})" if groups else " (no runs there)"))
        found += members
    unique = list(dict.fromkeys(p.resolve() for p in found))
    if not unique:
        raise ValueError("name at least one run folder (RUN_DIR, a glob, or --group NAME)")
    return [next(p for p in found if p.resolve() == u) for u in unique]


def _runs_under(root: Path) -> list[Path]:
    # runs/<project>/<version>/config.yaml, or <version>/config.yaml when runs_dir is a project
    # folder; not deeper, where W&B keeps a config.yaml of its own (wandb/*/files/).
    configs = [*root.glob("*/config.yaml"), *root.glob("*/*/config.yaml")]
    return sorted(p.parent for p in configs)


def _read_config(path: Path) -> dict:
    try:
        config = yaml.safe_load((path / "config.yaml").read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"'{path}/config.yaml' is not valid YAML: {err}") from err
    return config if isinstance(config, dict) else {}


def run_group(config: dict) -> str | None:
    """The run's W&B group (``trainer.logger.init_args.group``), else its logger's ``name``."""
    loggers = (config.get("trainer") or {}).get("logger")
    for logger in loggers if isinstance(loggers, list) else [loggers]:
        args = (logger.get("init_args") or {}) if isinstance(logger, dict) else {}
        if args.get("group") or args.get("name"):
            return str(args.get("group") or args.get("name"))
    return None


def load_run(path: Path) -> Run:
    run = Run(path=path, config=_read_config(path))
    summary = path / "summary.json"
    if summary.is_file():
        try:
            run.summary = json.loads(summary.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"'{summary}' is not valid JSON: {err}") from err
    results = path / "eval/results.jsonl"
    if results.is_file():
        for row in read_jsonl(results):
            run.evals[row["protocol"]] = row  # rows are appended: the last one is the latest
    return run


def flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted keys of a nested config: ``{"model": {"init_args": {"lr_g": 2e-4}}}`` ->
    ``{"model.init_args.lr_g": 2e-4}``. Lists of mappings (loggers, callbacks) are indexed
    (``trainer.callbacks.0.class_path``); other lists are values."""
    if isinstance(config, dict):
        items = config.items()
    elif isinstance(config, list) and any(isinstance(v, dict) for v in config):
        items = ((str(i), v) for i, v in enumerate(config))
    else:
        return {prefix: config}
    flat: dict[str, Any] = {}
    for key, value in items:
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def differing_keys(configs: Sequence[dict[str, Any]],
                   ignore: Iterable[str] = IGNORED_KEYS) -> list[str]:
    """Flattened config keys whose values are not the same in every run (missing = null)."""
    ignore = tuple(ignore)
    order: dict[str, int] = {}
    for flat in configs:
        for key in flat:
            order.setdefault(key, len(order))
    keys = [k for k in order if not any(fnmatch(k, pattern) for pattern in ignore)
            and len({json.dumps(c.get(k), sort_keys=True, default=str) for c in configs}) > 1]

    def rank(key: str) -> tuple[int, int]:
        top = key.split(".")[0]
        return (SECTIONS.index(top) if top in SECTIONS else len(SECTIONS), order[key])

    return sorted(keys, key=rank)


def show(value: Any) -> str:
    """A config value as the table and legends print it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value, default=str).replace('"', "")
    return str(value)


def run_labels(runs: Sequence[Run], keys: Sequence[str]) -> list[str]:
    """Each run's name by its differing values, e.g. ``model=WGANGP, seed=1``.

    ``model.class_path`` stands for the class (its last dotted part) and its
    ``model.init_args.*`` are left out (another class has other arguments) unless they differ
    between runs of the same class (two GANs with other optimizers beside a DCGAN), and so are
    the logger's keys whose values follow from the others' (``group=wgan_gp`` beside
    ``model=WGANGP``).
    Each key is shortened to its shortest dotted suffix (without ``init_args``) that is unique.
    Runs that the values do not tell apart get their folder name added.
    """
    flats = [flatten(run.config) for run in runs]
    classes = {k[: -len(".class_path")] for k in keys if k.endswith(".class_path")}

    def within_a_class(key: str, section: str) -> bool:
        """``key`` takes several values among the runs of one ``section`` class."""
        values: dict[str, set[str]] = {}
        for f in flats:
            values.setdefault(str(f.get(f"{section}.class_path")), set()).add(
                json.dumps(f.get(key), default=str))
        return any(len(v) > 1 for v in values.values())

    keys = [k for k in keys if not any(k.startswith(f"{c}.init_args.") and not within_a_class(k, c)
                                       for c in classes)]
    # The logger's name, group and tags describe the run: where their values follow from the
    # other keys' (a group named after the model), they add nothing to a label.
    for key in [k for k in reversed(keys) if k.startswith("trainer.logger.")]:
        rest = [k for k in keys if k != key]
        seen: dict[str, str] = {}
        if rest and all(seen.setdefault(json.dumps([f.get(k) for k in rest], default=str),
                                        json.dumps(f.get(key), default=str))
                        == json.dumps(f.get(key), default=str) for f in flats):
            keys = rest
    parts = {k: [p for p in k.split(".") if p != "init_args"] for k in keys}
    if "seed_everything" in parts:
        parts["seed_everything"] = ["seed"]
    short = {}
    for key in keys:
        if key.endswith(".class_path"):
            short[key] = parts[key][-2]
            continue
        for n in range(1, len(parts[key]) + 1):
            name = ".".join(parts[key][-n:])
            if sum(".".join(p[-n:]) == name for p in parts.values()) == 1:
                break
        short[key] = name
    labels = []
    for run, flat in zip(runs, flats, strict=True):
        items = []
        for key in (k for k in keys if k in flat):
            value = flat[key]
            if key.endswith(".class_path") and isinstance(value, str):
                value = value.rsplit(".", 1)[-1]
            items.append(f"{short[key]}={show(value)}")
        labels.append(", ".join(items) or run.name)
    return [f"{label} ({run.name})" if labels.count(label) > 1 else label
            for label, run in zip(labels, runs, strict=True)]


def default_metrics(runs: Sequence[Run]) -> list[str]:
    """Names with a goal in any summary.json (quality metrics first, then losses); where none
    has one (a GAN fitted without ``--metrics``: its players' losses have no goal), the names
    containing ``loss``; without summaries, every name in the runs' metrics.csv."""
    summary = {n: s for r in runs for n, s in r.summary.items()}
    names = {n for n, s in summary.items() if isinstance(s, dict) and "goal" in s}
    if not names:
        names = {n for n in summary if "loss" in n} or set(summary) or {
            n for r in runs for n in read_metrics(r.path)}
    return sorted(names, key=lambda n: ("loss" in n, n))


Field = tuple[str, str, str, "str | None"]  # section, label, column, step column


def table(runs: Sequence[Run], keys: Sequence[str], metrics: Sequence[str]
          ) -> tuple[list[str], list[dict[str, Any]], list[Field]]:
    """The table's columns, one record per run, and the fields as printed.

    Records: run, path, the differing config values, each metric's ``<name>.best``,
    ``.best_step``, ``.last``, ``.last_step`` (summary.json) and the latest evaluation's
    ``eval/<protocol>/<metric>`` and ``eval/<protocol>/step`` (eval/results.jsonl). Fields:
    ``(section, label, column, step column)``, a value printed with its step when it has one.
    """
    records = []
    for run in runs:
        flat = flatten(run.config)
        record: dict[str, Any] = {"run": run.name, "path": str(run.path)}
        record.update({k: show(flat[k]) if k in flat else None for k in keys})
        for name in metrics:
            entry = run.summary.get(name) or {}
            for part in ("best", "best_step", "last", "last_step"):
                if part in entry:
                    record[f"{name}.{part}"] = entry[part]
        for protocol, row in sorted(run.evals.items()):
            for metric, value in sorted((row.get("metrics") or {}).items()):
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    record[f"eval/{protocol}/{metric}"] = value
            record[f"eval/{protocol}/step"] = row.get("step")
        records.append(record)
    columns = list(dict.fromkeys(c for r in records for c in r))
    fields: list[Field] = [("config", k, k, None) for k in keys]
    fields += [("summary", f"{name} ({part})", f"{name}.{part}", f"{name}.{part}_step")
               for name in metrics for part in ("best", "last") if f"{name}.{part}" in columns]
    fields += [("eval", c, c, c.rsplit("/", 1)[0] + "/step") for c in columns
               if c.startswith("eval/") and not c.endswith("/step")]
    return columns, records, fields


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return MISSING if value is None else str(value)


def display_rows(records: Sequence[dict], fields: Sequence[Field]) -> list[list[str]]:
    """One row per field, one column per run: ``0.0002``, ``0.6931 (step 40)``."""
    rows = []
    for _, label, column, step in fields:
        cells = [_fmt(r.get(column)) + (f" (step {r[step]})" if r.get(step) is not None
                                        and r.get(column) is not None else "")
                 for r in records]
        rows.append([label, *cells])
    return rows


def write_csv(path: Path, columns: Sequence[str], records: Sequence[dict]) -> Path:
    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(columns))
            writer.writeheader()
            writer.writerows(records)

    return atomic_write(path, write)


def markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def line(cells: Iterable[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(header), line("---" for _ in header), *map(line, rows)]) + "\n"


def print_table(header: Sequence[str], rows: Sequence[Sequence[str]],
                sections: Sequence[str], note: str) -> None:
    """The table in the terminal (rich), a rule between config, summary and eval rows."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    table = Table(*header, box=box.SIMPLE_HEAD, caption=note, caption_justify="left",
                  header_style="bold")
    for i, row in enumerate(rows):
        if i and sections[i] != sections[i - 1]:
            table.add_section()
        table.add_row(*row)
    if sys.stdout.isatty():  # fit the terminal's width
        Console().print(table)
        return
    # Piped or redirected: the table's natural width, no colours, no trailing blanks.
    console = Console(width=1000, no_color=True, file=io.StringIO(), record=True)
    console.print(table)
    text = "\n".join(line.rstrip() for line in console.export_text().splitlines())
    print(text.strip("\n"), flush=True)


def same_in_all(runs: Sequence[Run], keys: Sequence[str]) -> str:
    """One line on what all runs share (model, data, precision, seed), for context."""
    flat = flatten(runs[0].config)
    items = []
    for key in ("model.class_path", "data.class_path", "trainer.precision", "seed_everything"):
        if key not in keys and key in flat:
            if key.endswith(".class_path"):
                items.append(f"{key.split('.')[0]}={show(flat[key]).rsplit('.', 1)[-1]}")
            else:
                items.append(f"{key.split('.')[-1]}={show(flat[key])}")
    return f"same in all {len(runs)} runs: " + ", ".join(items) if items else ""


def compare(runs: Sequence[str] = (), group: str | None = None, runs_dir: str = "runs",
            metrics: Sequence[str] | None = None, x: str = "step", out: str | None = None,
            ignore: Sequence[str] = ()) -> dict[str, Any]:
    """Compare run folders; see the module docstring. Returns the output paths, the differing
    keys, the labels and the table's records."""
    if x not in X_AXES:
        raise ValueError(f"--x must be one of {', '.join(X_AXES)}, got '{x}'")
    loaded = [load_run(p) for p in find_runs(runs, group, runs_dir)]
    keys = differing_keys([flatten(r.config) for r in loaded], (*IGNORED_KEYS, *ignore))
    labels = run_labels(loaded, keys)
    names = list(metrics) if metrics else default_metrics(loaded)
    folder = Path(out) if out else Path("compare") / time.strftime("%Y%m%d-%H%M%S")
    columns, records, fields = table(loaded, keys, names)
    rows = display_rows(records, fields)
    header = ["run", *(r.name for r in loaded)]
    note = same_in_all(loaded, keys)
    if not keys:
        note = "no config key differs. " + note
    paths = {"csv": write_csv(folder / "table.csv", columns, records),
             "markdown": atomic_write(folder / "table.md", lambda tmp: Path(tmp).write_text(
                 markdown(header, rows) + (f"\n{note}\n" if note else "")))}
    no_csv = [r.path for r in loaded if not (r.path / "metrics.csv").is_file()]
    warnings = [f"{p}: no metrics.csv, so no curves of it" for p in no_csv]
    if names:
        paths["curves"], missing = plot_curves([r.path for r in loaded], labels, names, x,
                                                 folder / "curves.png")
        warnings += [m for m in missing if not m.startswith(tuple(f"{p}: " for p in no_csv))]
    else:
        warnings.append("no metrics to plot (no summary.json or metrics.csv in any run)")
    grids = plot_grids([r.path for r in loaded], labels, folder / "samples.png")
    if grids is not None:
        paths["samples"] = grids
    warnings += [f"{r.path}: no images/*_last.png" for r in loaded if last_grid(r.path) is None]
    print_table(header, rows, [f[0] for f in fields], note)
    for line in warnings:
        print(f"note: {line}")
    for kind, path in paths.items():
        print(f"{kind:<9} {path}")
    return {"paths": paths, "keys": keys, "labels": labels, "columns": columns,
            "records": records, "metrics": names}


def main(argv: list[str]) -> None:
    """``lightning-gen compare ...`` (``argv``: the arguments after ``compare``)."""
    parser = argparse.ArgumentParser(
        prog="lightning-gen compare",
        description="Compare runs from their folders (config.yaml, summary.json, metrics.csv, "
                    "eval/results.jsonl, images/*_last.png): a table of the config keys that "
                    "differ and of the metrics (terminal, CSV, Markdown), metric curves and "
                    "the last sample grids as PNGs.")
    parser.add_argument("runs", nargs="*", metavar="RUN_DIR",
                        help="run folders or quoted globs ('runs/lightning-gen/dcgan*')")
    parser.add_argument("--group", help="also every run under --runs_dir whose W&B group "
                        "(trainer.logger.init_args.group, else the logger's name) is GROUP")
    parser.add_argument("--runs_dir", default="runs", help="where --group looks (default: runs)")
    parser.add_argument("--metrics", help="comma-separated metric names, e.g. "
                        "train/g_loss,metrics/fid,eval/inception-train-50000/fid (default: "
                        "those with a goal in summary.json, else the losses)")
    parser.add_argument("--x", default="step", choices=X_AXES, help="x-axis of the curves")
    parser.add_argument("--out", help="output folder (default: compare/<date>-<time>)")
    parser.add_argument("--ignore", default="", help="comma-separated config keys (or "
                        "patterns, e.g. 'data.init_args.data_dir') left out of the table")
    parser.add_argument("--sweep", metavar="NAME", help="a sweep's trials instead (lightning-gen "
                        "sweep): ranked by its objective, with Optuna's plots (history, "
                        "parallel coordinates, importances); see docs/sweeps.md")
    parser.add_argument("--storage", help="with --sweep: the study's database URL (default: "
                        "sqlite:///<runs_dir>/sweeps/NAME/study.db)")
    args = parser.parse_args(argv)
    if args.sweep:
        from lightning_gen.sweep_plots import load, report

        if args.runs or args.group:
            raise ValueError("--sweep NAME compares a sweep's trials: give no RUN_DIR or --group")
        report(load(args.sweep, args.storage, args.runs_dir),
               args.out or Path(args.runs_dir) / "sweeps" / args.sweep)
        return

    def split(text: str | None) -> list[str]:
        return [t.strip() for t in (text or "").split(",") if t.strip()]

    compare(args.runs, args.group, args.runs_dir, split(args.metrics) or None, args.x, args.out,
            split(args.ignore))
