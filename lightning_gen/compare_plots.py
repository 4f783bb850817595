"""The pictures of ``lightning-gen compare``: metric curves and last sample grids of run
folders, read from ``metrics.csv``, ``eval/results.jsonl`` and ``images/*_last.png``."""

from __future__ import annotations

import csv
import json
import math
import textwrap
from collections.abc import Sequence
from pathlib import Path

from lightning_gen.runs import atomic_write

X_AXES = ("step", "epoch", "g_steps", "wall_time")


def read_jsonl(path: Path) -> list[dict]:
    """The rows of ``eval/results.jsonl``; a line cut short by a killed writer is left out."""
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by a killed writer
            continue
        if isinstance(row, dict) and "protocol" in row:
            rows.append(row)
    return rows


def read_metrics(path: Path) -> dict[str, list[dict[str, float | None]]]:
    """``metrics.csv`` as ``{name: [{"step", "epoch", "g_steps", "wall_time", "value"}]}``,
    rows in file order; a row cut short by a killed writer is left out."""
    curves: dict[str, list[dict[str, float | None]]] = {}
    file = path / "metrics.csv"
    if not file.is_file():
        return curves
    with open(file, newline="") as f:
        for row in csv.DictReader(f):
            try:
                point = {k: float(row[k]) if row[k] not in ("", None) else None
                         for k in (*X_AXES, "value")}
            except (TypeError, ValueError):
                continue
            if point["value"] is not None and row.get("name"):
                curves.setdefault(row["name"], []).append(point)
    return curves


def curve(run: Path, metrics: dict, name: str, x: str) -> tuple[list[float], list[float]]:
    """One run's ``(xs, ys)`` of a metric. ``step``/``g_steps``: the last value logged at each
    x (a resumed run re-logs the steps after its checkpoint); ``epoch``: the mean over the
    epoch's steps, each step's last value; ``wall_time``: as logged.
    ``eval/<protocol>/<metric>`` comes from eval/results.jsonl."""
    if name.startswith("eval/"):
        protocol, metric = name[len("eval/"):].rsplit("/", 1)
        axis = {"step": "step", "epoch": "epoch"}.get(x)
        rows = read_jsonl(run / "eval/results.jsonl") if axis else []
        points = [{x: r.get(axis), "value": (r.get("metrics") or {}).get(metric)}
                  for r in rows if r["protocol"] == protocol]
    else:
        points = metrics.get(name, [])
    points = [p for p in points if p.get(x) is not None and p.get("value") is not None]
    if x == "wall_time":
        return [p[x] for p in points], [p["value"] for p in points]
    if x == "epoch":  # a killed run's rows after its checkpoint are logged again on resuming
        points = list({(p["step"] if p.get("step") is not None else ("row", i)): p
                       for i, p in enumerate(points)}.values())
    by_x: dict[float, list[float]] = {}
    for p in points:
        if x == "epoch":
            by_x.setdefault(p[x], []).append(p["value"])
        else:
            by_x[p[x]] = [p["value"]]
    xs = sorted(by_x)
    return xs, [sum(by_x[v]) / len(by_x[v]) for v in xs]


def run_colours(n: int) -> list[tuple[float, float, float, float]]:
    """Line colour of each run: tab10 (tab20 beyond 10 runs), in the runs' order."""
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


PANEL = (6.4, 4.0)  # inches of one metric's panel (100 dpi: 640 x 400 pixels)
LEGEND_ROW = 0.3  # inches per row of the legend below the panels


def plot_curves(runs: Sequence[Path], labels: Sequence[str], names: Sequence[str], x: str,
                path: Path) -> tuple[Path, list[str]]:
    """``curves.png``: one panel per metric, one line per run (same colour in every panel),
    the legend below. Returns the path and one line per (run, metric) with no points."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    cols = min(2, len(names))
    rows = math.ceil(len(names) / cols)
    # As many legend entries per row as fit the width, each its text as drawn plus the line
    # sample and the gaps (matplotlib's defaults at 10 pt: 2 + 0.8 em before the text, 2 em
    # between columns); an entry wider than the figure is wrapped.
    width_px = PANEL[0] * cols * 100
    em = 10 * 100 / 72
    sample, gap, margin = 2.8 * em, 2 * em, 2 * em
    entries = ["\n".join(wrap_to_width(label, width_px - sample - margin, weight="normal"))
               for label in labels]
    widest = max(text_width(line, weight="normal") for e in entries for line in e.splitlines())
    legend_cols = max(1, min(len(runs), int((width_px - margin + gap) // (widest + sample + gap))))
    legend_rows = sum(max(e.count("\n") + 1 for e in entries[i:i + legend_cols])
                      for i in range(0, len(entries), legend_cols))
    size = (PANEL[0] * cols, PANEL[1] * rows + LEGEND_ROW * (legend_rows + 1))
    fig = Figure(figsize=size, dpi=100, layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    colours = run_colours(len(runs))
    data = [read_metrics(r) for r in runs]
    curves = {(i, name): curve(run, data[i], name, x)
              for name in names for i, run in enumerate(runs)}
    # Wall time in hours once a run is longer than two.
    hours = x == "wall_time" and max((max(xs) for xs, _ in curves.values() if xs),
                                     default=0) > 7200
    xlabel = {"step": "step (trainer/global_step)", "epoch": "epoch",
              "g_steps": "generator steps (g_steps)",
              "wall_time": f"wall time ({'h' if hours else 's'})"}[x]
    missing = []
    for ax, name in zip(axes, names, strict=False):
        for i, (run, colour) in enumerate(zip(runs, colours, strict=True)):
            xs, ys = curves[i, name]
            if not xs:
                missing.append(f"{run}: no '{name}' against {x}")
                continue
            xs = [v / 3600 for v in xs] if hours else xs
            ax.plot(xs, ys, color=colour, linewidth=2,
                    marker="o" if len(xs) <= 30 else None, markersize=4)
        ax.set_title(name)
        ax.set_xlabel(xlabel)
        if x != "wall_time":
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    for ax in axes[len(names):]:
        ax.set_visible(False)
    handles = [Line2D([], [], color=c, linewidth=2) for c in colours]
    fig.legend(handles, entries, loc="outside lower center", ncols=legend_cols, frameon=False,
               fontsize=10)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    return path, missing


def last_grid(run: Path) -> Path | None:
    """``images/samples_last.png``, else the first ``images/*_last.png``."""
    preferred = run / "images/samples_last.png"
    if preferred.is_file():
        return preferred
    return next(iter(sorted((run / "images").glob("*_last.png"))), None)


GRID_COLS = 4  # grids per row of samples.png
CAPTION_LINE_PX = 17  # per line of a grid's caption (its label, bold 10 pt)
NAME_PX = 22  # the run folder's name below the caption (8 pt)
PAD_PX = 16


def wrap_to_width(text: str, width_px: float, size: float = 10, weight: str = "bold",
                  dpi: float = 100) -> list[str]:
    """``text`` in lines (at spaces where it can, else inside words) each at most ``width_px``
    wide as matplotlib draws it (DejaVu Sans, ``size`` points, at ``dpi``): a caption stays
    over its own grid. (Counting characters did not: ``lr_g=0.00142017, lr_d=0.000649985``
    ran into the next run's caption.)"""
    for chars in range(max(len(text), 1), 0, -1):
        lines = textwrap.wrap(text, chars) or [""]
        if all(text_width(line, size, weight, dpi) <= width_px for line in lines):
            return lines
    return textwrap.wrap(text, 1)


def text_width(line: str, size: float = 10, weight: str = "bold", dpi: float = 100) -> float:
    """Pixels of ``line`` as matplotlib draws it (DejaVu Sans, ``size`` points, at ``dpi``)."""
    from matplotlib.font_manager import FontProperties
    from matplotlib.textpath import TextPath

    prop = FontProperties(size=size, weight=weight)
    return TextPath((0, 0), line, prop=prop).get_extents().width * dpi / 72 if line else 0.0


def plot_grids(runs: Sequence[Path], labels: Sequence[str], path: Path) -> Path | None:
    """``samples.png``: each run's last grid at its own pixels (no resampling), captioned by
    its label and folder name, up to four per row. ``None`` when no run has a grid."""
    import numpy as np
    from matplotlib.figure import Figure
    from PIL import Image

    panels = [(run, label, last_grid(run)) for run, label in zip(runs, labels, strict=True)]
    panels = [(run, label, np.asarray(Image.open(p).convert("RGB")))
              for run, label, p in panels if p is not None]
    if not panels:
        return None
    cell_w = max(max(img.shape[1] for _, _, img in panels), 240) + PAD_PX
    chars = (cell_w - PAD_PX) // 8  # ~8 px per 8 pt character of the folder name
    captions = ["\n".join(wrap_to_width(label, cell_w - PAD_PX)) for _, label, _ in panels]
    caption_px = CAPTION_LINE_PX * max(c.count("\n") + 1 for c in captions) + NAME_PX
    cell_h = max(img.shape[0] for _, _, img in panels) + caption_px + PAD_PX
    cols = min(GRID_COLS, len(panels))
    rows = math.ceil(len(panels) / cols)
    width, height = cols * cell_w + PAD_PX, rows * cell_h + PAD_PX
    fig = Figure(figsize=(width / 100, height / 100), dpi=100, facecolor="white")
    for i, ((run, _, img), caption) in enumerate(zip(panels, captions, strict=True)):
        left = PAD_PX + (i % cols) * cell_w + (cell_w - PAD_PX - img.shape[1]) // 2
        top = PAD_PX + (i // cols) * cell_h + caption_px
        # figimage counts from the bottom left, in pixels; origin="upper" keeps the rows' order.
        fig.figimage(img, xo=left, yo=height - top - img.shape[0], origin="upper")
        centre = (PAD_PX + (i % cols) * cell_w + (cell_w - PAD_PX) / 2) / width
        fig.text(centre, 1 - (top - caption_px) / height, caption, ha="center", va="top",
                 fontsize=10, fontweight="bold", linespacing=1.2)
        fig.text(centre, 1 - (top - 4) / height, textwrap.shorten(run.name, chars * 8 // 6),
                 ha="center", va="bottom", fontsize=8, color="0.35")
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
