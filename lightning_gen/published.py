"""Published numbers to calibrate against: ``lightning_gen/published.csv``.

One row per (source, model, data, metric): ``value`` (empty where the paper reports no number
the suite can compare with; ``notes`` then says what it reports), ``pm`` (the paper's +-),
``protocol`` (a name of :data:`lightning_gen.protocols.PROTOCOLS`: how it was measured),
``citation`` (paper and table, or the repository's URL). A row names the suite's classes it
applies to: ``model_class`` with ``model_args`` (``key=value`` hyperparameters, e.g.
``architecture=resnet``), ``dataset`` (the DataModule class) with ``data_args``.

``lightning-gen evaluate`` puts a row beside a measured value when the model's class and
hyperparameters, the DataModule's class and arguments and the metric match and every setting of
the row's protocol is in effect (:func:`published_for`). The README's model table takes its
column of published numbers from the same rows; ``python -m lightning_gen.published --readme
README.md`` rewrites it, ``--markdown`` prints every row as a table.
"""

from __future__ import annotations

import argparse
import csv
import functools
import importlib
import inspect
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from lightning_gen.protocols import PROTOCOLS, ProtocolRun

COLUMNS = ("source", "model", "model_class", "model_args", "dataset", "data_args", "metric",
           "value", "pm", "protocol", "citation", "notes")
#: Metric keys of evaluate's JSON: label and unit in tables.
METRIC_LABELS = {"fid": ("FID", ""), "is_mean": ("IS", ""),
                 "parzen_ll_nats": ("Parzen log-likelihood", " nats"),
                 "test_iwae_nats": ("IWAE test log-likelihood", " nats"),
                 "test_nll_nats": ("test NLL", " nats"),
                 "test_bits_per_dim": ("test NLL", " bits/dim")}
README_COLUMN = "Published numbers (`lightning_gen/published.csv`)"


@dataclass(frozen=True)
class Row:
    source: str
    model: str
    model_class: str
    model_args: dict
    dataset: str
    data_args: dict
    metric: str
    value: str  # as printed in the paper ("81.30"); "" when there is no number
    pm: str
    protocol: str
    citation: str
    notes: str

    @property
    def number(self) -> float | None:
        return float(self.value) if self.value else None

    @property
    def data(self) -> str:
        """``CIFAR-10``, ``MNIST binarize=static``."""
        name = self.dataset.rsplit(".", 1)[-1].removesuffix("DataModule")
        name = {"CIFAR10": "CIFAR-10"}.get(name, name)
        return name + (f" {_args_text(self.data_args)}" if self.data_args else "")

    def text(self) -> str:
        """``FID 42.72``, ``Parzen log-likelihood 225 +- 2 nats``; the notes without a value."""
        if self.number is None:
            return self.notes
        label, unit = METRIC_LABELS.get(self.metric, (self.metric, ""))
        return f"{label} {self.value}{f' ± {self.pm}' if self.pm else ''}{unit}"


def _parse_args(text: str) -> dict:
    out = {}
    for item in text.split():
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"published.csv: {item!r} is not key=value")
        out[key] = yaml.safe_load(value)
    return out


def _args_text(args: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in args.items())


def parse(text: str) -> list[Row]:
    """Rows of a published.csv text (checked: columns, numbers, protocol names)."""
    reader = csv.DictReader(text.splitlines())
    if tuple(reader.fieldnames or ()) != COLUMNS:
        raise ValueError(f"published.csv: columns {reader.fieldnames}, expected {list(COLUMNS)}")
    rows = []
    for line, raw in enumerate(reader, start=2):
        fields = {k: (raw[k] or "").strip() for k in COLUMNS}
        fields["model_args"] = _parse_args(fields["model_args"])
        fields["data_args"] = _parse_args(fields["data_args"])
        row = Row(**fields)
        if row.value:
            float(row.value), float(row.pm or 0)  # a ValueError names the bad number
            if row.protocol not in PROTOCOLS:
                raise ValueError(f"published.csv line {line}: protocol {row.protocol!r} is not "
                                 f"one of {', '.join(PROTOCOLS)}")
        rows.append(row)
    return rows


@functools.lru_cache(maxsize=1)
def load() -> tuple[Row, ...]:
    """The rows of the package's ``published.csv``."""
    return tuple(parse(resources.files("lightning_gen").joinpath("published.csv").read_text()))


# ----------------------------------------------------------------------------------------------
# Which rows apply


@functools.cache
def _class(path: str) -> type | None:
    module, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return None


def _default(cls: type, key: str) -> Any:
    """``key``'s default in the ``__init__`` of ``cls`` or of a base class (``inspect._empty``
    if none names it)."""
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is not None:
            param = inspect.signature(init).parameters.get(key)
            if param is not None:
                return param.default
    return inspect.Parameter.empty


def _args_match(wanted: dict, cls: type, values: dict) -> bool:
    return all((values[k] if k in values else _default(cls, k)) == v for k, v in wanted.items())


def applies(row: Row, model_cls: type, model_args: dict, data_cls: type, data_args: dict) -> bool:
    """``row`` is about this model class with these hyperparameters on this DataModule (missing
    arguments take the class's default)."""
    return (_class(row.model_class) is model_cls and _class(row.dataset) is data_cls
            and _args_match(row.model_args, model_cls, model_args)
            and _args_match(row.data_args, data_cls, data_args))


def published_for(result: dict, model, datamodule, run: ProtocolRun) -> dict:
    """``{"published": {metric: {"value", "source", "protocol", "difference", "citation"}}}``
    for the metrics of ``result`` that a row of published.csv reports for this model and data
    under a protocol whose settings are all in effect; ``{}`` when none does. Where several
    rows match a metric, the named ``--protocol``'s row is taken, else the first in the file.
    ``difference`` is measured minus published."""
    model_args = dict(getattr(model, "hparams", {}) or {})
    data_args = dict(getattr(datamodule, "hparams", {}) or {})
    found: dict[str, dict] = {}
    for row in load():
        measured = result.get(row.metric)
        if (row.number is None or isinstance(measured, bool)
                or not isinstance(measured, (int, float)) or not run.satisfies(row.protocol)
                or not applies(row, type(model), model_args, type(datamodule), data_args)):
            continue
        if row.metric in found and not (row.protocol == run.name
                                        and found[row.metric]["protocol"] != run.name):
            continue
        found[row.metric] = {"value": row.number, "source": row.source,
                             "protocol": row.protocol,
                             "difference": float(measured) - row.number,
                             "citation": row.citation}
    return {"published": found} if found else {}


# ----------------------------------------------------------------------------------------------
# Tables


def markdown() -> str:
    """Every row of published.csv as a Markdown table."""
    lines = ["| model | data | metric | value | protocol | source |",
             "| --- | --- | --- | --- | --- | --- |"]
    for row in load():
        if row.number is None:
            continue
        label, unit = METRIC_LABELS.get(row.metric, (row.metric, ""))
        value = f"{row.value}{f' ± {row.pm}' if row.pm else ''}{unit}"
        lines.append(f"| {row.model} | {row.data} | {label} (`{row.metric}`) | {value} | "
                     f"`{row.protocol}` | {row.citation} |")
    return "\n".join(lines)


def experiment_classes(path: Path) -> tuple[type, dict, type, dict]:
    """Model class and arguments, DataModule class and arguments of an experiment YAML."""
    config = yaml.safe_load(Path(path).read_text())
    model, data = config["model"], config["data"]
    return (_class(model["class_path"]), dict(model.get("init_args") or {}),
            _class(data["class_path"]), dict(data.get("init_args") or {}))


def readme_cell(yamls: list[Path]) -> str:
    """The README model table's cell for a row naming ``yamls``: the published rows about their
    model and data (whatever the data arguments: the cell names them), grouped by source."""
    groups: dict[tuple[str, str], list[str]] = {}
    for path in yamls:
        model_cls, model_args, data_cls, _ = experiment_classes(path)
        for row in load():
            if (_class(row.model_class) is model_cls and _class(row.dataset) is data_cls
                    and _args_match(row.model_args, model_cls, model_args)):
                key = (row.source, row.data if row.number is not None else "")
                if row.text() not in groups.setdefault(key, []):
                    groups[key].append(row.text())
    if not groups:
        return "—"
    parts = []
    for (source, data), texts in groups.items():
        parts.append(f"{', '.join(texts)} ({data}, {source})" if data else ", ".join(texts))
    return "; ".join(parts)


def update_readme(text: str, experiments: Path) -> str:
    """``text`` (README.md) with the model table's published-numbers column regenerated."""
    lines = text.splitlines(keepends=True)
    header = next((i for i, line in enumerate(lines)
                   if line.startswith("| Model |") and README_COLUMN in line), None)
    if header is None:
        raise ValueError(f"README.md has no model table with a {README_COLUMN!r} column")
    cells = [c.strip() for c in lines[header].strip().strip("|").split("|")]
    column, yaml_column = cells.index(README_COLUMN), cells.index("YAML")
    i = header + 2
    while i < len(lines) and lines[i].startswith("|"):
        row = [c.strip() for c in lines[i].rstrip("\n").strip().strip("|").split("|")]
        names = re.findall(r"`([\w.-]+\.yaml)`", row[yaml_column])
        row[column] = readme_cell([experiments / n for n in names])
        lines[i] = "| " + " | ".join(row) + " |\n"
        i += 1
    return "".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lightning_gen.published",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--markdown", action="store_true", help="print every row as a table")
    parser.add_argument("--readme", type=Path, help="rewrite this README's model-table column")
    parser.add_argument("--experiments", type=Path, default=Path("experiments"))
    args = parser.parse_args(argv)
    if args.markdown:
        print(markdown())
    if args.readme:
        args.readme.write_text(update_readme(args.readme.read_text(), args.experiments))
    if not (args.markdown or args.readme):
        parser.print_help()


if __name__ == "__main__":
    main()
