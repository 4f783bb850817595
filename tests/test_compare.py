"""`lightning-gen compare`: the table, the curves and the sample grids of run folders.

Most tests read synthetic run folders written in the run-folder contract's formats
(tests/compare_runs.py); the last one compares two real quickstart fits.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image

from lightning_gen.cli import main
from lightning_gen.compare import differing_keys, flatten, load_run, run_labels
from lightning_gen.compare_plots import curve, read_metrics
from tests.compare_runs import grid_image, quickstart_config, write_run

ROOT = Path(__file__).resolve().parents[1]
RUNS = Path("runs/lightning-gen")
# matplotlib's tab10, the colours of the first two runs' lines.
BLUE, ORANGE = (0x1F, 0x77, 0xB4), (0xFF, 0x7F, 0x0E)
RED_GRID, BLUE_GRID = (200, 30, 30), (30, 30, 200)
# Two metric panels of 640 x 400 px side by side, one legend row below (60 px).
TWO_PANELS = (1280, 460)
PANEL_ROWS = 400


@pytest.fixture
def two_runs() -> list[Path]:
    """Two quickstart runs that differ only in lr_g (and their run ids): the second's
    g_loss runs one unit higher, and their grids are red and blue."""
    return [write_run(RUNS, "quickstart-20261203-100000-aaaa", lr_g=2e-4, level=1.0,
                      grid_colour=RED_GRID),
            write_run(RUNS, "quickstart-20261203-110000-bbbb", lr_g=1e-3, level=2.0,
                      grid_colour=BLUE_GRID)]


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def read_markdown(path: Path) -> list[list[str]]:
    """A Markdown table's cells, header first, without the |---| line."""
    lines = [ln for ln in path.read_text().splitlines() if ln.startswith("|")]
    rows = [[c.strip() for c in ln.strip().strip("|").split("|")] for ln in lines]
    assert set(rows[1]) == {"---"}
    return [rows[0], *rows[2:]]


def colour_mask(pixels: np.ndarray, colour: tuple[int, int, int], tol: int = 12) -> np.ndarray:
    return (np.abs(pixels[..., :3].astype(int) - colour) <= tol).all(axis=-1)


def find(big: np.ndarray, small: np.ndarray) -> list[tuple[int, int]]:
    """Where `small` (H, W, 3) appears pixel for pixel in `big`."""
    h, w = small.shape[:2]
    hits = []
    for r in range(big.shape[0] - h + 1):
        windows = sliding_window_view(big[r], w, axis=0)  # (W - w + 1, 3, w)
        for c in np.nonzero((windows == small[0].T[None]).all(axis=(1, 2)))[0]:
            if np.array_equal(big[r:r + h, c:c + w], small):
                hits.append((r, int(c)))
    return hits


def test_table_lists_the_only_differing_config_key_and_the_metrics(two_runs, capsys):
    # The run ids (trainer.logger.init_args.version) differ too, and are left out.
    main(["compare", "runs/lightning-gen/quickstart*", "--metrics", "train/g_loss,metrics/fid",
          "--out", "out"])
    printed = capsys.readouterr().out
    rows = read_csv(Path("out/table.csv"))
    assert [r["run"] for r in rows] == [p.name for p in two_runs]
    config_columns = [c for c in rows[0] if "/" not in c]
    assert config_columns == ["run", "path", "model.init_args.lr_g"]
    assert [r["model.init_args.lr_g"] for r in rows] == ["0.0002", "0.001"]
    summary = json.loads((two_runs[1] / "summary.json").read_text())
    assert float(rows[1]["metrics/fid.best"]) == pytest.approx(summary["metrics/fid"]["best"])
    assert int(rows[1]["metrics/fid.best_step"]) == summary["metrics/fid"]["best_step"]
    assert float(rows[1]["metrics/fid.last"]) == pytest.approx(50.0)
    # A GAN player's loss has a last value and no best (it has no goal).
    assert float(rows[1]["train/g_loss.last"]) == pytest.approx(summary["train/g_loss"]["last"])
    assert "train/g_loss.best" not in rows[1]
    # The latest evaluation of each protocol (the second row of results.jsonl: step 39).
    assert float(rows[0]["eval/classifier-test-1000/fid"]) == pytest.approx(25.0)
    assert rows[0]["eval/classifier-test-1000/step"] == "39"

    header, *body = read_markdown(Path("out/table.md"))
    assert header == ["run", *(p.name for p in two_runs)]
    cells = {row[0]: row[1:] for row in body}
    assert cells["model.init_args.lr_g"] == ["0.0002", "0.001"]
    assert [k for k in cells if "/" not in k] == ["model.init_args.lr_g"]
    assert cells["metrics/fid (last)"] == ["25 (step 39)", "50 (step 39)"]
    assert cells["eval/classifier-test-1000/fid"] == ["25 (step 39)", "50 (step 39)"]

    # The terminal shows the same rows, aligned, and says where the files are.
    lines = printed.splitlines()
    lr_line = next(ln for ln in lines if "model.init_args.lr_g" in ln)
    fid_line = next(ln for ln in lines if "metrics/fid (last)" in ln)
    assert lr_line.index("0.0002") == fid_line.index("25 (step 39)")
    assert "trainer.logger.init_args.version" not in printed
    for name in ("table.csv", "table.md", "curves.png", "samples.png"):
        assert f"out/{name}" in printed
    assert not list(Path("out").glob("*.tmp")) and not list(Path("out").glob(".*"))


def test_curves_png_draws_one_line_per_run_in_its_colour(two_runs):
    main(["compare", *map(str, two_runs), "--metrics", "train/g_loss,metrics/fid",
          "--out", "out"])
    image = Image.open("out/curves.png")
    assert image.size == TWO_PANELS
    pixels = np.asarray(image.convert("RGB"))
    g_loss_panel = pixels[:PANEL_ROWS, : TWO_PANELS[0] // 2]
    fid_panel = pixels[:PANEL_ROWS, TWO_PANELS[0] // 2:]
    for panel in (g_loss_panel, fid_panel):
        for colour in (BLUE, ORANGE):
            assert colour_mask(panel, colour).sum() > 300, colour
    # The second run's g_loss is one unit higher: its line lies above (smaller row index).
    blue_rows = np.nonzero(colour_mask(g_loss_panel, BLUE))[0]
    orange_rows = np.nonzero(colour_mask(g_loss_panel, ORANGE))[0]
    assert orange_rows.mean() < blue_rows.mean() - 100
    # The legend below the panels names each run by its differing value.
    legend = pixels[PANEL_ROWS:]
    assert colour_mask(legend, BLUE).sum() > 20 and colour_mask(legend, ORANGE).sum() > 20
    assert run_labels([load_run(p) for p in two_runs],
                      ["model.init_args.lr_g"]) == ["lr_g=0.0002", "lr_g=0.001"]


def test_long_legend_labels_wrap_inside_the_figure(two_runs):
    # Runs of different families differ in dozens of arguments: a label of 200+ characters,
    # wrapped by a count of characters, came out wider than the figure and the centred legend
    # was cut on both sides (line samples and text alike).
    from lightning_gen.compare_plots import plot_curves

    labels = [", ".join(f"MODEL_ARGUMENT_{i}=WWW{run}" for i in range(12)) for run in "AB"]
    plot_curves(two_runs, labels, ["train/g_loss"], "step", Path("curves.png"))
    pixels = np.asarray(Image.open("curves.png").convert("RGB"))
    legend = pixels[PANEL_ROWS:]
    ink = np.nonzero((legend < 200).any(axis=2).any(axis=0))[0]  # columns with text or lines
    assert ink.min() > 2 and ink.max() < pixels.shape[1] - 3
    for colour in (BLUE, ORANGE):  # each run's line sample is drawn whole
        columns = np.nonzero(colour_mask(legend, colour).any(axis=0))[0]
        assert columns.min() > 2 and len(columns) >= 20


def test_samples_png_holds_each_runs_last_grid_pixel_for_pixel(two_runs):
    main(["compare", *map(str, two_runs), "--out", "out"])
    composite = np.asarray(Image.open("out/samples.png").convert("RGB"))
    red = np.asarray(grid_image(RED_GRID))
    blue = np.asarray(grid_image(BLUE_GRID))
    (red_at,), (blue_at,) = find(composite, red), find(composite, blue)
    assert red_at[0] == blue_at[0] and red_at[1] < blue_at[1]  # side by side, in run order
    # Each grid has a caption above it: dark text pixels on the white background.
    for row, col in (red_at, blue_at):
        caption = composite[max(0, row - 40):row, col:col + red.shape[1]]
        assert (caption.max(axis=-1) < 100).sum() > 50


def test_samples_png_captions_stay_over_their_own_grid(tmp_path, monkeypatch):
    """Labels of two swept values (as `compare` makes them for a sweep's trials) are wrapped
    to the grid's width: no caption runs into its neighbour's."""
    from matplotlib.figure import Figure

    from lightning_gen.compare_plots import plot_grids

    runs = []
    for i in range(3):
        run = tmp_path / f"run{i}"
        (run / "images").mkdir(parents=True)
        Image.new("RGB", (274, 274), (128, 128, 128)).save(run / "images/samples_last.png")
        runs.append(run)
    labels = ["lr_g=0.00142017, lr_d=0.000649985", "lr_g=0.000684707, lr_d=0.000131582",
              "lr_g=5.00553e-05, lr_d=0.000125795"]
    figures = []
    save = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **k: (figures.append(fig),
                                                                  save(fig, *a, **k))[1])
    plot_grids(runs, labels, tmp_path / "samples.png")
    (fig,) = figures
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(fig).get_renderer()
    captions = [t for t in fig.texts if t.get_fontweight() == "bold"]
    assert [t.get_text().replace("\n", " ") for t in captions] == labels
    boxes = [t.get_window_extent(renderer) for t in captions]
    for left, right in zip(boxes, boxes[1:], strict=False):
        assert left.x1 < right.x0  # a gap between neighbouring captions
    assert boxes[0].x0 >= 0 and boxes[-1].x1 <= fig.bbox.width


def test_a_folder_that_is_not_a_run_is_one_line_without_traceback(two_runs, tmp_path):
    (tmp_path / "notes").mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "lightning_gen", "compare", str(two_runs[0]), "notes"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "lightning-gen: error: 'notes' is not a run folder (no config.yaml in it)"]
    assert not Path("compare").exists()


@pytest.mark.parametrize("args, message", [
    ([], "name at least one run folder (RUN_DIR, a glob, or --group NAME)"),
    (["runs/lightning-gen/dcgan*"], "no run folder matches 'runs/lightning-gen/dcgan*'"),
    (["--group", "nope"], "no run under 'runs' has group 'nope' (groups there: quickstart)"),
])
def test_no_run_to_compare_is_a_one_line_error(two_runs, args, message, capsys):
    with pytest.raises(SystemExit) as info:
        main(["compare", *args])
    assert info.value.code == 2
    assert capsys.readouterr().err.strip() == f"lightning-gen: error: {message}"


def test_group_selects_runs_by_wandb_group_else_logger_name(capsys):
    def config(version: str, group: str | None, name: str = "quickstart") -> dict:
        c = quickstart_config(version)
        c["trainer"]["logger"]["init_args"].update(group=group, name=name)
        return c

    write_run(RUNS, "a", config=config("a", "sweep"))
    write_run(RUNS, "b", config=config("b", "other"))
    write_run(RUNS, "c", config=config("c", None, name="sweep"))  # no group recorded
    write_run(RUNS, "d", config=config("d", "sweep"))
    main(["compare", "--group", "sweep", "--out", "out"])
    assert [r["run"] for r in read_csv(Path("out/table.csv"))] == ["a", "c", "d"]
    # Their group (c: none recorded, its name is "sweep") is what differs.
    cells = {row[0]: row[1:] for row in read_markdown(Path("out/table.md"))[1:]}
    assert {k for k in cells if "/" not in k} == {
        "trainer.logger.init_args.name", "trainer.logger.init_args.group"}


def test_labels_name_a_differing_model_class_not_its_arguments_nor_what_follows(tmp_path):
    dcgan = quickstart_config("x", seed=0)
    wgan = quickstart_config("y", seed=1)
    wgan["model"] = {"class_path": "lightning_gen.models.WGANGP",
                     "init_args": {"lr_g": 1e-4, "n_critic": 5, "lambda_gp": 10.0}}
    wgan["trainer"]["logger"]["init_args"]["group"] = "wgan_gp"  # follows from the model
    runs = [load_run(write_run(tmp_path, "x", config=dcgan)),
            load_run(write_run(tmp_path, "y", config=wgan))]
    keys = differing_keys([flatten(r.config) for r in runs])
    assert keys[0] == "model.class_path" and "model.init_args.g_width" in keys
    assert {"model.init_args.lambda_gp", "seed_everything",
            "trainer.logger.init_args.group"} <= set(keys)
    assert run_labels(runs, keys) == ["model=DCGAN, seed=0", "model=WGANGP, seed=1"]


def test_labels_keep_the_arguments_that_differ_between_runs_of_one_class(tmp_path):
    # Two DCGANs with other learning rates beside a WGAN-GP: the class alone left the two DCGANs
    # with the same label (told apart only by their folder names).
    slow, fast = quickstart_config("x"), quickstart_config("y")
    fast["model"]["init_args"]["lr_g"] = 1e-3
    wgan = quickstart_config("z")
    wgan["model"] = {"class_path": "lightning_gen.models.WGANGP",
                     "init_args": {"lr_g": 1e-4, "n_critic": 5, "lambda_gp": 10.0}}
    runs = [load_run(write_run(tmp_path, v, config=c))
            for v, c in (("x", slow), ("y", fast), ("z", wgan))]
    keys = differing_keys([flatten(r.config) for r in runs])
    lr = slow["model"]["init_args"]["lr_g"]
    assert run_labels(runs, keys) == [f"model=DCGAN, lr_g={lr:g}", "model=DCGAN, lr_g=0.001",
                                      "model=WGANGP, lr_g=0.0001"]


def test_x_axes_step_keeps_the_last_value_per_step_epoch_averages(tmp_path):
    # A run resumed from its step-1 checkpoint logs step 2 again; the rewritten value counts,
    # on every axis that merges rows: the killed process's 9.0 is in no epoch's mean either.
    (tmp_path / "metrics.csv").write_text(
        "step,epoch,g_steps,wall_time,name,value\n"
        "0,0,0,0.5,train/g_loss,1.0\n"
        "1,0,1,1.0,train/g_loss,3.0\n"
        "2,1,2,1.5,train/g_loss,9.0\n"
        "2,1,2,0.4,train/g_loss,5.0\n"
        "3,1,3,0.9,train/g_loss,7.0\n"
        "4,1,4,1.4,train/g_lo")  # cut short by a kill
    metrics = read_metrics(tmp_path)
    assert curve(tmp_path, metrics, "train/g_loss", "step") == ([0, 1, 2, 3], [1, 3, 5, 7])
    assert curve(tmp_path, metrics, "train/g_loss", "epoch") == ([0, 1], [2, 6])
    assert curve(tmp_path, metrics, "train/g_loss", "wall_time")[0] == [0.5, 1.0, 1.5, 0.4, 0.9]


def test_eval_metrics_are_plotted_against_the_checkpoints_step(two_runs):
    xs, ys = curve(two_runs[0], {}, "eval/classifier-test-1000/fid", "step")
    assert (xs, ys) == ([19, 39], [50.0, 25.0])


TINY = ["--config", str(ROOT / "experiments/quickstart.yaml"), "--trainer.accelerator", "cpu",
        "--model.init_args.g_width", "8", "--model.init_args.d_width", "8",
        "--data.init_args.image_size", "16", "--data.init_args.batch_size", "16",
        "--trainer.max_steps", "10", "--trainer.log_every_n_steps", "1",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--data.num_workers", "0"]


def test_compare_two_quickstart_fits_differing_only_in_lr_g(capsys):
    """End to end: two real fits, then `compare`. Needs `lightning-gen fit` to write
    metrics.csv and summary.json (the run-folder contract)."""
    for lr_g in ("0.0002", "0.02"):
        main(["fit", *TINY, "--model.init_args.lr_g", lr_g])
    # In the order of their lr_g (two runs started in one second have the same time stamp).
    runs = sorted(RUNS.iterdir(), key=lambda run: float(yaml.safe_load(
        (run / "config.yaml").read_text())["model"]["init_args"]["lr_g"]))
    assert len(runs) == 2
    main(["compare", *map(str, runs), "--metrics", "train/g_loss,train/d_loss", "--out", "out"])
    rows = read_csv(Path("out/table.csv"))
    assert [c for c in rows[0] if "/" not in c] == ["run", "path", "model.init_args.lr_g"]
    assert [r["model.init_args.lr_g"] for r in rows] == ["0.0002", "0.02"]
    cells = {row[0]: row[1:] for row in read_markdown(Path("out/table.md"))[1:]}
    assert cells["model.init_args.lr_g"] == ["0.0002", "0.02"]

    composite = np.asarray(Image.open("out/samples.png").convert("RGB"))
    for run in runs:
        grid = np.asarray(Image.open(run / "images/samples_last.png").convert("RGB"))
        assert len(find(composite, grid)) == 1, run

    for run in runs:
        assert (run / "metrics.csv").is_file(), (
            f"{run} has no metrics.csv: `lightning-gen fit` must write it (run-folder contract, "
            "branch metricsfile) for compare's curves and summary columns")
    assert {"train/g_loss.last", "train/d_loss.last"} <= set(rows[0])
    assert not {"train/g_loss.best", "train/d_loss.best"} & set(rows[0])
    image = Image.open("out/curves.png")
    assert image.size == TWO_PANELS
    pixels = np.asarray(image.convert("RGB"))[:PANEL_ROWS]
    for colour in (BLUE, ORANGE):
        for panel in (pixels[:, :TWO_PANELS[0] // 2], pixels[:, TWO_PANELS[0] // 2:]):
            assert colour_mask(panel, colour).sum() > 100, colour
    # Without --metrics: a GAN fitted without --metrics has no metric with a goal; its
    # players' losses are shown (last values only, no "best" row), two panels of curves.
    main(["compare", *map(str, runs), "--out", "default"])
    cells = {row[0]: row[1:] for row in read_markdown(Path("default/table.md"))[1:]}
    assert {"train/d_loss (last)", "train/g_loss (last)"} <= set(cells)
    assert not [label for label in cells if "(best)" in label]
    assert Image.open("default/curves.png").size == TWO_PANELS
