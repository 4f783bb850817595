"""Mixed-precision check of the experiments: each YAML, fitted through the real CLI for a few
hundred optimizer steps under ``--trainer.precision P``, must keep every logged value finite.

    python benchmarks/amp_check.py --precision 16-mixed            # GPU: every experiment
    python benchmarks/amp_check.py --precision bf16-mixed --steps 4 --experiments dcgan_mnist
    python benchmarks/amp_check.py --precision 32-true --strategy ddp --devices 2 --steps 4 \
        --accelerator cpu                                         # every experiment under DDP

Each experiment keeps its model (architecture, losses, optimizers, n_critic, EMA) and trains on
scikit-learn's digits resized to its image size (one channel; no download, so it runs on an
air-gapped GPU machine), except the unpaired CycleGANs: ``cyclegan_mnist_inverted`` reads the
MNIST IDX files of ``--mnist_dir`` (the test files serve as the training split when the training
files are missing), ``cyclegan_celeba_smiling`` and the DB-VAE's ``dbvae_celeba_*`` need CelebA
and are left out unless ``--celeba_dir`` is given. Models conditioned on CelebA's 40 attributes are conditioned on the
digits' 10 classes instead. The YAMLs' end-of-fit lecture callbacks (traversals, completions) are
dropped (``--trainer.callbacks=[]``): they do not train. Logging goes to a CSV logger every 10
steps (fewer for short runs).

Reported per experiment: exit code (1 = the suite's non-finite-loss guard stopped the run),
optimizer steps done, wall seconds, logged values that were not finite, the last logged losses,
and the GradScaler's final scale (16-mixed). With ``--compare`` an experiment that fails is fitted
again in 32-true, to tell a float16 problem from a model that diverges anyway.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "experiments"
MNIST_FILES = ["t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]


def mnist_as_training_data(source: Path, target: Path) -> Path:
    """A data_dir for torchvision's MNIST whose training split is ``source``'s files (the test
    files stand in for the training files when those are missing)."""
    raw = target / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for split, fallback in (("train", "t10k"), ("t10k", "t10k")):
        for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
            dest = raw / f"{split}-{kind}"
            for name in (f"{split}-{kind}", f"{fallback}-{kind}"):
                if (source / name).exists():
                    shutil.copyfile(source / name, dest)
                    break
                if (source / f"{name}.gz").exists():
                    with gzip.open(source / f"{name}.gz", "rb") as f:
                        dest.write_bytes(f.read())
                    break
            else:
                raise SystemExit(f"{source} has no MNIST file {split}-{kind}(.gz) or {fallback}-{kind}")
    return target


def data_overrides(name: str, args, workdir: Path) -> list[str] | None:
    """CLI flags replacing the experiment's data; None: the experiment is left out."""
    if name.startswith("cyclegan_mnist"):
        if args.mnist_dir is None:
            return None
        data_dir = mnist_as_training_data(Path(args.mnist_dir), workdir / "mnist")
        return [f"--data.data_dir={data_dir}", "--data.download=false",
                f"--data.batch_size={args.batch_size}", "--data.num_workers=0"]
    if name.startswith(("cyclegan_celeba", "dbvae_celeba")):  # attribute tasks need CelebA
        if args.celeba_dir is None:
            return None
        return [f"--data.data_dir={args.celeba_dir}", "--data.download=false",
                "--data.num_workers=2"]
    size = 64 if "celeba" in name else 28 if name in _MNIST_28 else 32
    flags = ["--data=datamodules.DigitsDataModule", f"--data.image_size={size}",
             f"--data.batch_size={args.batch_size}", "--data.val_fraction=0.1",
             "--data.num_workers=0"]
    model = yaml.safe_load((EXPERIMENTS / f"{name}.yaml").read_text())["model"]
    if model.get("init_args", {}).get("condition_on") == "attributes":
        # Conditioned on CelebA's 40 attributes: condition on the digits' 10 classes instead.
        flags += ["--model.init_args.num_classes=10", "--model.init_args.condition_on=class"]
    return flags


def model_overrides(name: str, args) -> list[str]:
    """CLI flags changing the experiment's model for the check. On the CPU, PixelCNNs draw no
    sample grids: drawing one costs C x H x W network passes (3072 at CIFAR-10's size, minutes on
    2 cores), no training step, and would dominate the check's time."""
    model = yaml.safe_load((EXPERIMENTS / f"{name}.yaml").read_text())["model"]
    if args.accelerator == "cpu" and model["class_path"].endswith(".PixelCNN"):
        return ["--model.init_args.num_fixed_samples=0"]
    return []


# Experiments whose networks are built for 28x28 MNIST (the others take 32x32 or CelebA's 64).
_MNIST_28 = {"ae_mnist", "autoencoder_outlier_mnist", "cvae_mnist", "evaluator_mnist",
             "gan_mnist", "gan_textbook_mnist", "pixelcnn_mnist", "vae_mnist", "cgan_mnist",
             "dcgan_mnist"}


def read_log(run: Path) -> tuple[int, dict[str, float], int]:
    """(non-finite values, last value of each loss, values read) from the run folders'
    ``metrics.csv`` (the suite's tidy file: ``step,epoch,g_steps,wall_time,name,value``)."""
    bad, last, count = 0, {}, 0
    for path in run.rglob("metrics.csv"):
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                name, value = row.get("name"), row.get("value")
                if not name or value in ("", None):
                    continue
                v = float(value)
                count += 1
                if not math.isfinite(v):
                    bad += 1
                if name.endswith("loss") and name.startswith("train/"):
                    last[name] = v
    return bad, last, count


def checkpoint_facts(run: Path) -> tuple[int | None, float | None]:
    """(global_step, GradScaler scale) of the run's last checkpoint."""
    ckpts = sorted(run.rglob("last.ckpt"))
    if not ckpts:
        return None, None
    from lightning_gen.checkpoints import load_checkpoint  # the suite's safe loading

    ckpt = load_checkpoint(ckpts[-1])
    scaler = ckpt.get("MixedPrecision") or {}
    scale = scaler.get("scale")
    return ckpt.get("global_step"), (float(scale) if scale is not None else None)


def fit(name: str, precision: str, args, workdir: Path) -> dict:
    data = data_overrides(name, args, workdir)
    if data is None:
        return {"skipped": True}
    run = workdir / f"{name}-{precision}"
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    cmd = [sys.executable, "-m", "lightning_gen.cli", "fit",
           f"--config={EXPERIMENTS / name}.yaml", *data, *model_overrides(name, args),
           f"--trainer.precision={precision}", f"--trainer.max_steps={args.steps}",
           "--trainer.max_epochs=-1", f"--trainer.accelerator={args.accelerator}",
           f"--trainer.devices={args.devices}", f"--trainer.strategy={args.strategy}",
           f"--trainer.log_every_n_steps={max(1, min(10, args.steps // 3))}",
           "--trainer.limit_val_batches=2", "--trainer.callbacks=[]",
           "--trainer.enable_progress_bar=false",
           "--trainer.logger=lightning.pytorch.loggers.CSVLogger",
           f"--trainer.logger.save_dir={run}", f"--trainer.default_root_dir={run}",
           "--images.every_n_epochs=1000"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [
        str(ROOT), os.environ.get("PYTHONPATH")]))}
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=run, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    (run / "output.txt").write_text(proc.stdout + proc.stderr)
    bad, last, count = read_log(run)
    steps, scale = checkpoint_facts(run)
    tail = [line for line in (proc.stderr or proc.stdout).strip().splitlines() if line.strip()]
    return {"exit": proc.returncode, "seconds": seconds, "bad": bad, "last": last,
            "count": count, "steps": steps, "scale": scale,
            "error": tail[-1][:160] if proc.returncode and tail else ""}


def row(name: str, precision: str, r: dict) -> str:
    if r.get("skipped"):
        return f"| {name} | {precision} | left out (no data given) | | | | | |"
    losses = ", ".join(f"{k.removeprefix('train/')} {v:.3g}" for k, v in sorted(r["last"].items()))
    scale = "" if r["scale"] is None else f"{r['scale']:.0f}"
    error = f" ({r['error']})" if r["error"] else ""
    return (f"| {name} | {precision} | {r['exit']}{error} | {r['steps']} | {r['seconds']:.0f} | "
            f"{r['bad']} of {r['count']} | {losses} | {scale} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precision", default="16-mixed",
                        choices=["16-mixed", "bf16-mixed", "32-true", "16-true", "bf16-true"])
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps (D and G count)")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--accelerator", default="auto")
    parser.add_argument("--devices", type=int, default=1,
                        help="processes (with --strategy ddp: a DDP check of every experiment)")
    parser.add_argument("--strategy", default="auto", help='e.g. "ddp"')
    parser.add_argument("--experiments", default=None,
                        help="comma-separated YAML names (default: all but quickstart)")
    parser.add_argument("--mnist_dir", default=None,
                        help="folder with MNIST IDX files (.gz or not) for cyclegan_mnist_inverted")
    parser.add_argument("--celeba_dir", default=None, help="CelebA data_dir for cyclegan_celeba, dbvae_celeba")
    parser.add_argument("--compare", action="store_true",
                        help="fit failing experiments again in 32-true")
    parser.add_argument("--workdir", default=None, help="keep runs here (default: a temp dir)")
    parser.add_argument("--jobs", type=int, default=1, help="fits run at the same time")
    args = parser.parse_args(argv)

    names = ([n.strip() for n in args.experiments.split(",") if n.strip()] if args.experiments
             else sorted(p.stem for p in EXPERIMENTS.glob("*.yaml") if p.stem != "quickstart"))
    unknown = [n for n in names if not (EXPERIMENTS / f"{n}.yaml").exists()]
    if unknown:
        parser.error(f"no such experiments: {unknown}")
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="amp-check-"))
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    print(f"# {device}; torch {torch.__version__}; {args.steps} optimizer steps, batch "
          f"{args.batch_size} per process; {args.devices} process(es), strategy "
          f"{args.strategy}; runs in {workdir}")
    print("| experiment | precision | exit | steps | s | non-finite logged values | last losses "
          "| loss scale |\n| --- | --- | --- | --- | --- | --- | --- | --- |", flush=True)
    failures = 0
    # Several fits at once share one GPU well (small models); rows print in the given order.
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        results = pool.map(lambda n: fit(n, args.precision, args, workdir), names)
        for name, result in zip(names, results, strict=True):
            print(row(name, args.precision, result), flush=True)
            failed = not result.get("skipped") and (result["exit"] != 0 or result["bad"] > 0)
            failures += failed
            if failed and args.compare and args.precision != "32-true":
                print(row(name, "32-true", fit(name, "32-true", args, workdir)), flush=True)
    print(f"\n{failures} of {len(names)} experiments failed under {args.precision}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
