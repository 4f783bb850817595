"""Seconds per training epoch of one experiment's update, in one process per run, four ways:

* ``plain``: the plain script's loop of ``end_to_end.py`` (``Steps``, one in-memory tensor
  indexed per batch);
* ``minimal``: the same ``Steps`` inside a minimal LightningModule, fed by a ``TensorDataset``
  DataLoader (what Lightning's loop and a DataLoader add);
* ``suite``: the suite's own LightningModule of the experiment, same DataLoader;
* ``suite-dm``: the suite's LightningModule fed by its DataModule (``MNISTDataModule``).

Each run is its own process (``--runs`` alternated series), timed per epoch from the start to
the end of the epoch's training batches (no start-up, no validation, no checkpoints, logging
off); denormals flushed to zero and freed memory kept for reuse in every run, as the CLI's
runs do (``--keep-denormals``, ``--malloc-defaults``: glibc's own). It splits
what ``end_to_end.py`` measures between whole processes into the loop, the DataLoader and the
module. Prints a table and one ``JSON {...}`` line per run.

    python benchmarks/epoch_split.py                       # dcgan_mnist, 8,000 digits, ~5 min
    python benchmarks/epoch_split.py --experiment vae_mnist --runs 3
    python benchmarks/epoch_split.py --quick               # seconds: tiny networks and data
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))

import end_to_end as e2e  # noqa: E402

MODES = ("plain", "minimal", "suite", "suite-dm")


def suite_model(config: dict, shape: tuple[int, ...]):
    """The experiment's LightningModule, built from its YAML's ``model`` section."""
    import importlib

    module, cls = config["model"]["class_path"].rsplit(".", 1)
    return getattr(importlib.import_module(module), cls)(shape, **config["model"]["init_args"])


def run_epochs(mode: str, config: dict, data_dir: Path, epochs: int) -> list[float]:
    """Seconds of each training epoch of ``mode`` (in this process)."""
    import lightning as L
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    train, _, batch = e2e.split_data(config, data_dir)
    shape = tuple(train.shape[1:])
    seconds: list[float] = []
    if mode == "plain":
        torch.manual_seed(0)
        steps = e2e.Steps(config, shape)
        for _ in range(epochs):
            start = time.perf_counter()
            order = torch.randperm(len(train))
            for i in range(0, len(train) - batch + 1, batch):
                steps.train_step(train[order[i:i + batch]])
            seconds.append(time.perf_counter() - start)
        return seconds

    class EpochTimer(L.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            self.start = time.perf_counter()

        def on_train_epoch_end(self, trainer, pl_module):
            seconds.append(time.perf_counter() - self.start)

    L.seed_everything(0, verbose=False)
    labels = torch.zeros(len(train), dtype=torch.long)
    loader = DataLoader(TensorDataset(train, labels), batch_size=batch, shuffle=True,
                        drop_last=True)
    if mode == "minimal":
        model = e2e.minimal_module(e2e.Steps(config, shape))
    else:
        model = suite_model(config, shape)
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0,
                        limit_val_batches=0, callbacks=[EpochTimer()])
    if mode == "suite-dm":
        from datamodules.mnist import MNISTDataModule

        data = config["data"]["init_args"]
        dm = MNISTDataModule(str(data_dir), download=False, batch_size=batch,
                             val_fraction=data.get("val_fraction", 0.0), seed=data["seed"])
        trainer.fit(model, dm)
    else:
        trainer.fit(model, loader)
    return seconds


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default="dcgan_mnist", choices=e2e.EXPERIMENTS)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--n-train", type=int, default=8000)
    parser.add_argument("--runs", type=int, default=2, help="alternated series of the modes")
    parser.add_argument("--quick", action="store_true", help="tiny networks and data")
    parser.add_argument("--keep-denormals", action="store_true")
    parser.add_argument("--malloc-defaults", action="store_true",
                        help="glibc's malloc defaults (freed memory is not kept for reuse)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    config = e2e.load_config(args.experiment, args.quick)
    if args.child:  # one run, in its own process
        e2e.cpu_settings(not args.keep_denormals, not args.malloc_defaults)
        seconds = run_epochs(args.child, config, Path(args.data_dir), args.epochs)
        print("EPOCHS " + json.dumps(seconds))
        return []
    modes = [m for m in args.modes.split(",") if m]
    unknown = set(modes) - set(MODES)
    if unknown:
        parser.error(f"unknown modes {sorted(unknown)}; choose from {MODES}")
    if args.quick:
        args.n_train, args.epochs = 256, 2
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    print(f"# {args.experiment}: {args.epochs} epoch(s) of {args.n_train} MNIST-format images, "
          f"{args.runs} alternated run(s) per mode; seconds per training epoch"
          f"{'' if args.keep_denormals else ' (denormals flushed)'}"
          f"{'' if args.malloc_defaults else ' (freed memory kept)'}")
    print("| mode | run | seconds per epoch | median | vs plain |\n| --- | --- | --- | --- | --- |")
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = e2e.write_mnist(Path(tmp), args.n_train, 64)
        for run in range(args.runs):
            for mode in modes:
                cmd = [sys.executable, str(Path(__file__).resolve()), "--child", mode,
                       "--experiment", args.experiment, "--data-dir", str(data_dir),
                       "--epochs", str(args.epochs), *(["--quick"] if args.quick else []),
                       *(["--keep-denormals"] if args.keep_denormals else []),
                       *(["--malloc-defaults"] if args.malloc_defaults else [])]
                proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
                if proc.returncode != 0:
                    raise RuntimeError(f"{mode} failed:\n{proc.stderr[-3000:]}")
                seconds = json.loads(proc.stdout.split("EPOCHS ", 1)[1].splitlines()[0])
                rows.append({"experiment": args.experiment, "mode": mode, "run": run,
                             "epoch_s": [round(s, 3) for s in seconds],
                             "median_s": round(statistics.median(seconds), 3)})
    plain = [r["median_s"] for r in rows if r["mode"] == "plain"]
    base = statistics.median(plain) if plain else None
    for row in rows:
        if base:
            row["vs_plain"] = round(row["median_s"] / base, 3)
        print(f"| {row['mode']} | {row['run']} | {' / '.join(f'{s:.2f}' for s in row['epoch_s'])}"
              f" | {row['median_s']:.2f} | {row.get('vs_plain', float('nan')):.2f} |")
    for row in rows:
        print("JSON " + json.dumps(row))
    return rows


if __name__ == "__main__":
    main()
