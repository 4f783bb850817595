"""Synthetic run folders in the run-folder contract's formats, for `lightning-gen compare` tests.

Each file is written as `lightning-gen fit` / `evaluate` write it (config.yaml as LightningCLI
resolves it, the tidy metrics.csv, summary.json, eval/results.jsonl, images/samples_last.png),
with values chosen so that every run's curves and grid are told apart by their pixels.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from lightning_gen.callbacks.metrics_file import goal_of

STEPS_PER_EPOCH = 10


def quickstart_config(version: str, lr_g: float = 2e-4, seed: int = 0) -> dict:
    """The resolved config of a quickstart run (the keys a real one has, abridged)."""
    return {
        "seed_everything": seed,
        "trainer": {
            "accelerator": "cpu", "devices": "auto", "precision": "32-true", "max_steps": 40,
            "log_every_n_steps": 1,
            "logger": {"class_path": "lightning_gen.loggers.WandbLogger", "init_args": {
                "name": "quickstart", "save_dir": "runs", "project": "lightning-gen",
                "version": version, "offline": None, "tags": ["gan", "digits", "32-true"],
                "group": "quickstart", "job_type": "fit"}},
            "callbacks": None,
        },
        "model": {"class_path": "lightning_gen.models.DCGAN", "init_args": {
            "latent_dim": 32, "g_width": 8, "d_width": 8, "n_critic": 1, "lr_g": lr_g,
            "lr_d": 2e-4, "betas": [0.5, 0.999]}},
        "data": {"class_path": "datamodules.DigitsDataModule", "init_args": {
            "data_dir": "data", "image_size": 16, "batch_size": 16}},
        "images": {"every_n_epochs": 5, "nrow": 8},
        "checkpoint": {"save_last": True, "save_top_k": 0},
        "ckpt_path": None,
    }


def g_loss(step: int, level: float) -> float:
    return level + 0.3 * math.sin(step / 3)


def write_run(root: Path, version: str, lr_g: float = 2e-4, level: float = 1.0,
              grid_colour: tuple[int, int, int] = (200, 30, 30), steps: int = 40,
              config: dict | None = None) -> Path:
    """A finished run folder: `steps` logged steps of train/g_loss (around `level`),
    train/d_loss (no best: a GAN player's loss has no goal), metrics/fid once per epoch, one evaluation, and a 146 x 146 sample grid
    whose cells are filled with shades of `grid_colour`."""
    run = root / version
    run.mkdir(parents=True)
    config = config or quickstart_config(version, lr_g)
    (run / "config.yaml").write_text("# lightning.pytorch==2.6.6\n" + yaml.safe_dump(config))
    rows, summary = [], {}
    for step in range(steps):
        epoch = step // STEPS_PER_EPOCH
        values = {"train/g_loss": g_loss(step, level), "train/d_loss": 1.4 - 0.01 * step}
        if (step + 1) % STEPS_PER_EPOCH == 0:
            values["metrics/fid"] = 100 * level / (epoch + 1)
        for name, value in values.items():
            rows.append([step, epoch, step, round(0.05 * step, 3), name, value])
            entry = summary.setdefault(name, {})
            entry.update(last=value, last_step=step)
            if goal_of(name) == "min" and ("best" not in entry or value < entry["best"]):
                entry.update(best=value, best_step=step, goal="min")
    with open(run / "metrics.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["step", "epoch", "g_steps", "wall_time", "name", "value"])
        writer.writerows(rows)
    (run / "summary.json").write_text(json.dumps(summary, indent=2))
    evals = [{"time": f"2026-12-03T10:0{i}:00+00:00", "protocol": "classifier-test-1000",
              "checkpoint": str(run / "checkpoints/last.ckpt"), "step": s, "global_step": 2 * s,
              "epoch": s // STEPS_PER_EPOCH, "metrics": {"fid": 50 * level / (i + 1),
                                                          "is_mean": 2.0 + i},
              "json_path": str(run / "eval/classifier_test_1000.json")}
             for i, s in enumerate((19, 39))]
    (run / "eval").mkdir()
    (run / "eval/results.jsonl").write_text("".join(json.dumps(e) + "\n" for e in evals))
    (run / "images").mkdir()
    grid_image(grid_colour).save(run / "images/samples_last.png")
    return run


def grid_image(colour: tuple[int, int, int]) -> Image.Image:
    """An 8 x 8 grid of 16 px cells with 2 px padding (146 x 146), as ImageGridCallback saves
    one: each cell a different shade of `colour` on a black background."""
    grid = np.zeros((146, 146, 3), dtype=np.uint8)
    for i in range(64):
        r, c = divmod(i, 8)
        shade = 0.4 + 0.6 * i / 63
        grid[2 + 18 * r: 18 + 18 * r, 2 + 18 * c: 18 + 18 * c] = [int(v * shade) for v in colour]
    return Image.fromarray(grid)
