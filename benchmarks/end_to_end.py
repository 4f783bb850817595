"""End to end: ``lightning-gen fit`` of an experiment against a plain PyTorch script.

For each experiment (``dcgan_mnist``, ``vae_mnist``) this writes MNIST-format IDX files, then
times, as whole processes, in one run:

* ``plain``: a plain PyTorch script (this file with ``--plain``): the same networks (the suite's
  ``ConvEncoder``/``ConvDecoder`` built from the experiment's YAML), the same data (the IDX files
  read into one in-memory tensor, normalised to [-1, 1], shuffled each epoch, the same
  train/validation split sizes), the same batch size, optimizer, losses and epochs; the VAE
  also runs a validation pass each epoch as the CLI does; no logging, no checkpoints, no images;
* ``cli``: ``python -m lightning_gen.cli fit --config experiments/<name>.yaml`` with
  ``--data.data_dir`` the written files and ``--trainer.max_epochs`` the same epochs, as a user
  runs it (W&B offline when not logged in, image grids, checkpoints, progress bar, the YAML's
  ``num_workers``);
* with ``--breakdown`` (default): the CLI run again with one thing switched off at a time
  (``-wandb``: ``--trainer.logger false``; ``-images``: no image grids; ``-checkpoints``: no
  checkpoint files; ``-workers``: ``--data.num_workers 0``; ``-bar``: no progress bar), the CLI
  with all of them off (``lean``), and ``start-up``: the CLI with ``--trainer.max_epochs 0``
  (imports, config parsing, data set-up, run folder; no training). Each figure minus the full
  run's is what that part costs.

Wall times are of the whole process (start-up and imports included) on both sides; ``ratio`` is
cli / plain. The plain script also reports its training loop alone (``loop_s``).

    python benchmarks/end_to_end.py                        # 2 epochs of 4096 digits, ~10 min
    python benchmarks/end_to_end.py --epochs 15 --n-train 8000 --breakdown none
    python benchmarks/end_to_end.py --quick --breakdown none   # seconds: tiny networks and data
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ("dcgan_mnist", "vae_mnist")
BREAKDOWN = ("-wandb", "-images", "-checkpoints", "-workers", "-bar", "lean", "start-up")
OFF = {  # CLI options switching one part off
    "-wandb": ["--trainer.logger", "false"],
    "-images": ["--images.every_n_epochs", "0"],
    "-checkpoints": ["--checkpoint.save_last", "false", "--checkpoint.save_top_k", "0"],
    "-workers": ["--data.num_workers", "0"],
    "-bar": ["--trainer.enable_progress_bar", "false"],
}
QUICK = {"n_train": 256, "n_test": 64, "epochs": 1, "width": 8, "batch_size": 32}


# ----------------------------------------------------------------------------------------------
# Data
def write_mnist(root: Path, n_train: int, n_test: int, seed: int = 0) -> Path:
    """MNIST's IDX files (torchvision layout ``root/MNIST/raw``) of random digit-like images."""
    import numpy as np

    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = rng.integers(0, 60, (n, 28, 28), dtype=np.uint8)
        for i, y in enumerate(labels):  # a bright stroke whose place is the label
            images[i, 4 + 2 * int(y):7 + 2 * int(y), 6:22] = 255
        for name, array in ((f"{prefix}-images-idx3-ubyte", images),
                            (f"{prefix}-labels-idx1-ubyte", labels)):
            header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
            header += struct.pack(f">{array.ndim}I", *array.shape)
            (raw / name).write_bytes(header + array.tobytes())
    return root


def read_images(root: Path):
    import numpy as np
    import torch

    data = (root / "MNIST" / "raw" / "train-images-idx3-ubyte").read_bytes()
    n, h, w = struct.unpack(">III", data[4:16])
    array = np.frombuffer(data, dtype=np.uint8, offset=16).reshape(n, 1, h, w)
    return torch.from_numpy(array.copy()).float() / 127.5 - 1  # [-1, 1], as the DataModule


# ----------------------------------------------------------------------------------------------
# The plain PyTorch script
def plain(config: dict, data_dir: Path, epochs: int) -> dict:
    """Train the experiment's networks with a plain loop; returns the loop's seconds."""
    import torch
    import torch.nn.functional as F

    from lightning_gen.nets.conv import ConvDecoder, ConvEncoder, dcgan_init_

    torch.manual_seed(config.get("seed_everything", 0))
    model, data = config["model"]["init_args"], config["data"]["init_args"]
    kind = config["model"]["class_path"].rsplit(".", 1)[-1]
    x_all = read_images(data_dir)
    shape = tuple(x_all.shape[1:])
    n_val = int(round(len(x_all) * data.get("val_fraction", 0.0)))
    perm = torch.randperm(len(x_all), generator=torch.Generator().manual_seed(data["seed"]))
    train, val = x_all[perm[n_val:]], x_all[perm[:n_val]]
    batch = data["batch_size"]
    start = time.perf_counter()
    if kind == "DCGAN":
        z_dim = model["latent_dim"]
        G = ConvDecoder(shape, z_dim, width=model["g_width"], output="tanh")
        D = ConvEncoder(shape, 1, width=model["d_width"], norm="batch")
        for net in (G, D):
            dcgan_init_(net)
        betas = tuple(model["betas"])
        opt_g = torch.optim.Adam(G.parameters(), lr=model["lr_g"], betas=betas)
        opt_d = torch.optim.Adam(D.parameters(), lr=model["lr_d"], betas=betas)
        bce = F.binary_cross_entropy_with_logits
        for _ in range(epochs):
            order = torch.randperm(len(train))
            for i in range(0, len(train) - batch + 1, batch):  # drop_last, as the DataModule
                real = train[order[i:i + batch]]
                with torch.no_grad():
                    fake = G(torch.randn(batch, z_dim))
                d_real, d_fake = D(real), D(fake)
                d_loss = (bce(d_real, torch.ones_like(d_real))
                          + bce(d_fake, torch.zeros_like(d_fake)))
                opt_d.zero_grad(set_to_none=True)
                d_loss.backward()
                opt_d.step()
                D.requires_grad_(False)
                d_gen = D(G(torch.randn(batch, z_dim)))
                g_loss = bce(d_gen, torch.ones_like(d_gen))
                opt_g.zero_grad(set_to_none=True)
                g_loss.backward()
                opt_g.step()
                D.requires_grad_(True)
    elif kind == "VAE":
        z_dim = model["latent_dim"]
        enc = ConvEncoder(shape, 2 * z_dim, width=model["width"], norm="batch")
        dec = ConvDecoder(shape, z_dim, width=model["width"], output="none")
        opt = torch.optim.Adam([*enc.parameters(), *dec.parameters()], lr=model["lr"])

        def elbo_loss(x):
            mu, logvar = enc(x).chunk(2, dim=1)
            logvar = logvar.clamp(-30.0, 20.0)
            z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
            recon = F.binary_cross_entropy_with_logits(
                dec(z), (x + 1) / 2, reduction="none").flatten(1).sum(1).mean()
            kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(1).mean()
            return recon + model["beta"] * kl

        for _ in range(epochs):
            enc.train(), dec.train()
            order = torch.randperm(len(train))
            for i in range(0, len(train) - batch + 1, batch):
                loss = elbo_loss(train[order[i:i + batch]])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            enc.eval(), dec.eval()
            with torch.no_grad():  # a validation pass per epoch, as the CLI's run does
                for i in range(0, len(val), batch):
                    elbo_loss(val[i:i + batch])
    else:
        raise ValueError(f"no plain loop for {kind}")
    return {"loop_s": time.perf_counter() - start}


# ----------------------------------------------------------------------------------------------
def load_config(name: str, quick: bool) -> dict:
    import yaml

    config = yaml.safe_load((ROOT / "experiments" / f"{name}.yaml").read_text())
    if quick:
        args, data = config["model"]["init_args"], config["data"]["init_args"]
        for key in ("g_width", "d_width", "width"):
            if key in args:
                args[key] = QUICK["width"]
        data["batch_size"] = QUICK["batch_size"]
    return config


def cli_command(name: str, config: dict, data_dir: Path, runs: Path, epochs: int,
                quick: bool, variant: str) -> list[str]:
    cmd = [sys.executable, "-m", "lightning_gen.cli", "fit",
           "--config", str(ROOT / "experiments" / f"{name}.yaml"),
           "--data.data_dir", str(data_dir), "--data.download", "false",
           "--trainer.max_epochs", str(0 if variant == "start-up" else epochs),
           "--trainer.logger.init_args.save_dir", str(runs / variant.strip("-"))]
    if quick:
        for key in ("g_width", "d_width", "width"):
            if key in config["model"]["init_args"]:
                cmd += [f"--model.init_args.{key}", str(QUICK["width"])]
        cmd += ["--data.batch_size", str(QUICK["batch_size"])]
    parts = list(OFF) if variant == "lean" else [variant] if variant in OFF else []
    for part in parts:
        if part == "-wandb":  # no logger: the run folder goes under default_root_dir
            cmd = [c for c in cmd if not c.startswith("--trainer.logger.init_args")][:-1]
            cmd += ["--trainer.default_root_dir", str(runs / variant.strip("-"))]
        cmd += OFF[part]
    return cmd


def run_timed(cmd: list[str], env: dict) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return seconds, proc.stdout


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", default=",".join(EXPERIMENTS))
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--n-train", type=int, default=4096)
    parser.add_argument("--n-test", type=int, default=512)
    parser.add_argument("--breakdown", default=",".join(BREAKDOWN),
                        help=f"CLI variants to time besides the full run ({','.join(BREAKDOWN)}"
                             "), or 'none'")
    parser.add_argument("--quick", action="store_true",
                        help=f"tiny networks and data for a smoke test: {QUICK}")
    parser.add_argument("--threads", type=int, default=None,
                        help="OMP_NUM_THREADS of both processes (default: torch's own choice, "
                             "what a user gets; 1 on a machine loaded by other jobs, where "
                             "several threads per process mostly wait for each other)")
    parser.add_argument("--workdir", default=None, help="where files and runs go (default: a "
                        "temporary folder, removed at the end)")
    parser.add_argument("--plain", default=None, help=argparse.SUPPRESS)  # child process
    parser.add_argument("--data-dir", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.plain:  # the plain script's own process
        result = plain(load_config(args.plain, args.quick), Path(args.data_dir), args.epochs)
        print("PLAIN " + json.dumps(result))
        return [result]
    if args.quick:
        args.n_train, args.n_test, args.epochs = QUICK["n_train"], QUICK["n_test"], QUICK["epochs"]
    variants = [] if args.breakdown == "none" else [v for v in args.breakdown.split(",") if v]
    unknown = set(variants) - set(BREAKDOWN)
    if unknown:
        parser.error(f"unknown breakdown variants {sorted(unknown)}; choose from {BREAKDOWN}")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    env.setdefault("WANDB_MODE", "offline")  # never the network from a benchmark
    env["WANDB_SILENT"] = "true"
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"# end to end: {args.epochs} epoch(s) of {args.n_train} MNIST-format images"
          f"{' (quick: tiny networks)' if args.quick else ''}; {cores} CPU core(s), "
          f"{args.threads or 'default'} thread(s) per process; wall "
          "seconds of whole processes; ratio = cli / plain")
    print("| experiment | run | wall s | minus full cli (s) | ratio vs plain |\n"
          "| --- | --- | --- | --- | --- |", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        data_dir = write_mnist(Path(tmp) / "data", args.n_train, args.n_test)
        for name in [e for e in args.experiments.split(",") if e]:
            config = load_config(name, args.quick)
            runs = Path(tmp) / "runs" / name
            plain_cmd = [sys.executable, str(Path(__file__).resolve()), "--plain", name,
                         "--data-dir", str(data_dir), "--epochs", str(args.epochs)]
            plain_s, out = run_timed(plain_cmd + (["--quick"] if args.quick else []), env)
            loop_s = json.loads(out.split("PLAIN ", 1)[1])["loop_s"]
            times = {"plain": plain_s}
            for variant in ["full", *variants]:
                times[variant], _ = run_timed(
                    cli_command(name, config, data_dir, runs, args.epochs, args.quick, variant),
                    env)
            for run, seconds in times.items():
                row = {"experiment": name, "run": "cli" if run == "full" else
                       ("plain" if run == "plain" else f"cli {run}"),
                       "wall_s": round(seconds, 2), "ratio": round(seconds / plain_s, 3),
                       "minus_full_s": round(seconds - times["full"], 2)}
                if run == "plain":
                    row["loop_s"] = round(loop_s, 2)
                rows.append(row)
                print(f"| {name} | {row['run']} | {seconds:.1f}"
                      f"{f' (loop {loop_s:.1f})' if run == 'plain' else ''} | "
                      f"{seconds - times['full']:+.1f} | {seconds / plain_s:.2f} |", flush=True)
    for row in rows:
        print("JSON " + json.dumps(row))
    return rows


if __name__ == "__main__":
    main()
