"""End to end: ``lightning-gen fit`` of an experiment against a plain PyTorch script.

For each experiment (``dcgan_mnist``, ``vae_mnist``) this writes MNIST-format IDX files, then
times, as whole processes, in one run:

* ``plain``: a plain PyTorch script (this file with ``--plain``): the same networks (the suite's
  ``ConvEncoder``/``ConvDecoder`` built from the experiment's YAML), the same data (the IDX files
  read into one in-memory tensor, normalised to [-1, 1], shuffled each epoch, the same
  train/validation split sizes), the same batch size, optimizer, losses and epochs; the VAE
  also runs a validation pass each epoch as the CLI does; no logging, no checkpoints, no images;
* ``cli``: ``python -m lightning_gen fit --config experiments/<name>.yaml`` (what the
  ``lightning-gen`` command runs) with
  ``--data.data_dir`` the written files and ``--trainer.max_epochs`` the same epochs, as a user
  runs it (W&B offline when not logged in, image grids, checkpoints, progress bar, the YAML's
  ``num_workers``);
* ``--breakdown`` (default ``start-up,plain-start-up,imports``; ``all`` for every one):

  - ``start-up``: the CLI with ``--trainer.max_epochs 0`` (imports, config parsing, W&B run,
    data set-up, run folder; no training) and ``plain-start-up``: the plain script with 0
    epochs (imports, data, networks). ``wall - start-up`` of each side is its training part,
    printed with its ratio; ``imports`` times processes that only import ``torch``,
    ``torch._dynamo``, ``lightning``, ``lightning_gen.cli``, and W&B with the CLI in the
    ``lightning-gen`` command's order (W&B first), so the start-up splits into Lightning's
    imports, W&B's and ours;
  - ``plain-tuned``: the plain script with the two CPU settings the suite's runs make by default
    (``--performance.flush_denormal``, ``--performance.keep_freed_memory``): the ratio against
    it is what the suite costs when the plain script is tuned alike;
  - ``lightning``: the plain script's steps inside a minimal LightningModule run by
    ``Trainer.fit`` (no logger, checkpoints, bar or callbacks): Lightning's own cost;
  - the CLI run with one thing switched off (``-wandb``: ``--trainer.logger false``;
    ``-images``: no image grids; ``-checkpoints``: no checkpoint files; ``-workers``:
    ``--data.num_workers 0``; ``-bar``: no progress bar) or all of them (``lean``): each figure
    minus the full run's is what that part costs.

Wall times are of the whole process (start-up and imports included) on every side; ``ratio``
is run / plain. ``--repeats N`` times every run N times, alternated, and prints medians (a 25-s
process here moves by +-5 % from run to run), the ratio of each repeat, and the median ratio.
The child processes also report their training loop alone (``loop_s``). Every row is printed
again as a ``JSON {...}`` line.

    python benchmarks/end_to_end.py           # the issue's run: 15 epochs of 8,000 digits, ~6 min
    python benchmarks/end_to_end.py --epochs 3 --breakdown all      # where the time goes, ~8 min
    python benchmarks/end_to_end.py --quick --breakdown none   # seconds: tiny networks and data
    python benchmarks/end_to_end.py --experiments vae_mnist --repeats 3   # alternated, ~4 min
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ("dcgan_mnist", "vae_mnist")
BREAKDOWN = ("start-up", "plain-start-up", "imports", "plain-tuned", "lightning", "-wandb",
             "-images", "-checkpoints", "-workers", "-bar", "lean")
DEFAULT_BREAKDOWN = ("start-up", "plain-start-up", "imports")
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
# The plain PyTorch script, and the same steps inside a minimal LightningModule
class Steps:
    """The experiment's networks, optimizers and one update, written once for both the plain
    loop and the minimal LightningModule (so the two differ only in who runs the loop)."""

    def __init__(self, config: dict, shape: tuple[int, ...]) -> None:
        import torch
        import torch.nn.functional as F

        from lightning_gen.nets.conv import ConvDecoder, ConvEncoder, dcgan_init_

        self.torch, self.F = torch, F
        model = config["model"]["init_args"]
        self.kind = config["model"]["class_path"].rsplit(".", 1)[-1]
        self.z_dim = model["latent_dim"]
        if self.kind == "DCGAN":
            self.G = ConvDecoder(shape, self.z_dim, width=model["g_width"], output="tanh")
            self.D = ConvEncoder(shape, 1, width=model["d_width"], norm="batch")
            for net in (self.G, self.D):
                dcgan_init_(net)
            betas = tuple(model["betas"])
            self.opt_g = torch.optim.Adam(self.G.parameters(), lr=model["lr_g"], betas=betas)
            self.opt_d = torch.optim.Adam(self.D.parameters(), lr=model["lr_d"], betas=betas)
            self.nets = [self.G, self.D]
        elif self.kind == "VAE":
            self.enc = ConvEncoder(shape, 2 * self.z_dim, width=model["width"], norm="batch")
            self.dec = ConvDecoder(shape, self.z_dim, width=model["width"], output="none")
            self.opt = torch.optim.Adam([*self.enc.parameters(), *self.dec.parameters()],
                                        lr=model["lr"])
            self.beta = model["beta"]
            self.nets = [self.enc, self.dec]
        else:
            raise ValueError(f"no plain loop for {self.kind}")

    def elbo_loss(self, x):
        torch, F = self.torch, self.F
        mu, logvar = self.enc(x).chunk(2, dim=1)
        logvar = logvar.clamp(-30.0, 20.0)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        recon = F.binary_cross_entropy_with_logits(
            self.dec(z), (x + 1) / 2, reduction="none").flatten(1).sum(1).mean()
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(1).mean()
        return recon + self.beta * kl

    def train_step(self, real, backward=None) -> None:
        """One update on the batch ``real``; ``backward(loss)`` is Lightning's
        ``manual_backward`` inside the LightningModule, ``loss.backward()`` otherwise."""
        torch, bce = self.torch, self.F.binary_cross_entropy_with_logits
        backward = backward or (lambda loss: loss.backward())
        if self.kind == "VAE":
            loss = self.elbo_loss(real)
            self.opt.zero_grad(set_to_none=True)
            backward(loss)
            self.opt.step()
            return
        batch = len(real)
        with torch.no_grad():
            fake = self.G(torch.randn(batch, self.z_dim))
        d_real, d_fake = self.D(real), self.D(fake)
        d_loss = bce(d_real, torch.ones_like(d_real)) + bce(d_fake, torch.zeros_like(d_fake))
        self.opt_d.zero_grad(set_to_none=True)
        backward(d_loss)
        self.opt_d.step()
        self.D.requires_grad_(False)
        d_gen = self.D(self.G(torch.randn(batch, self.z_dim)))
        g_loss = bce(d_gen, torch.ones_like(d_gen))
        self.opt_g.zero_grad(set_to_none=True)
        backward(g_loss)
        self.opt_g.step()
        self.D.requires_grad_(True)

    def validation(self, val, batch: int) -> None:
        """The VAE's validation pass (the CLI's run makes one per epoch)."""
        if self.kind != "VAE":
            return
        with self.torch.no_grad():
            for i in range(0, len(val), batch):
                self.elbo_loss(val[i:i + batch])


def split_data(config: dict, data_dir: Path):
    """``(train, val, batch)``: the DataModule's split sizes of the in-memory images."""
    import torch

    data = config["data"]["init_args"]
    x_all = read_images(data_dir)
    n_val = int(round(len(x_all) * data.get("val_fraction", 0.0)))
    perm = torch.randperm(len(x_all), generator=torch.Generator().manual_seed(data["seed"]))
    return x_all[perm[n_val:]], x_all[perm[:n_val]], data["batch_size"]


def cpu_settings(flush_denormal: bool = True, keep_freed: bool = True) -> None:
    """The two CPU settings the suite's runs make by default (``--performance.flush_denormal``,
    ``--performance.keep_freed_memory``), for this process."""
    import torch

    from lightning_gen.malloc import keep_freed_memory

    if flush_denormal:
        torch.set_flush_denormal(True)
    if keep_freed:
        keep_freed_memory()


def plain(config: dict, data_dir: Path, epochs: int, tuned: bool = False) -> dict:
    """Train the experiment's networks with a plain loop; returns the loop's seconds. ``tuned``:
    with the suite's CPU settings (denormals flushed to zero, freed memory kept for reuse)."""
    import torch

    if tuned:
        cpu_settings()
    torch.manual_seed(config.get("seed_everything", 0))
    train, val, batch = split_data(config, data_dir)
    start = time.perf_counter()
    steps = Steps(config, tuple(train.shape[1:]))
    for _ in range(epochs):
        for net in steps.nets:
            net.train()
        order = torch.randperm(len(train))
        for i in range(0, len(train) - batch + 1, batch):  # drop_last, as the DataModule
            steps.train_step(train[order[i:i + batch]])
        for net in steps.nets:
            net.eval()
        steps.validation(val, batch)
    return {"loop_s": time.perf_counter() - start}


def minimal_module(steps: Steps):
    """A LightningModule that only runs ``steps`` (manual optimisation: the steps hold their own
    optimizers, as the plain loop's; the VAE's validation pass as ``validation_step``)."""
    import lightning as L
    import torch

    class Minimal(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False
            self.nets = torch.nn.ModuleList(steps.nets)

        def training_step(self, batch, batch_idx):
            steps.train_step(batch[0], self.manual_backward)

        def validation_step(self, batch, batch_idx):
            steps.elbo_loss(batch[0])

        def configure_optimizers(self):
            return None

    return Minimal()


def minimal_lightning(config: dict, data_dir: Path, epochs: int) -> dict:
    """The plain loop's steps inside a minimal LightningModule run by ``Trainer.fit`` (no
    logger, checkpoints, progress bar, model summary, callbacks or DataModule): what Lightning
    itself costs, imports included. Returns the seconds from building the networks to the end
    of ``fit`` (``loop_s``)."""
    import lightning as L
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(config.get("seed_everything", 0))
    train, val, batch = split_data(config, data_dir)
    start = time.perf_counter()
    steps = Steps(config, tuple(train.shape[1:]))

    val_loader = (DataLoader(TensorDataset(val), batch_size=batch)
                  if steps.kind == "VAE" and len(val) else None)
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(minimal_module(steps), DataLoader(TensorDataset(train), batch_size=batch,
                                                  shuffle=True, drop_last=True), val_loader)
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
    cmd = [sys.executable, "-m", "lightning_gen", "fit",
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


def import_seconds(modules: str, env: dict) -> float:
    """Wall seconds of a process that only imports ``modules`` (best of two)."""
    cmd = [sys.executable, "-c", f"import {modules}"]
    return min(run_timed(cmd, env)[0] for _ in range(2))


def child_command(mode: str, name: str, data_dir: Path, epochs: int, quick: bool,
                  tuned: bool = False) -> list[str]:
    """This file run as the plain script (``--plain``, ``--tuned``: with the suite's CPU
    settings) or the minimal LightningModule (``--minimal``)."""
    return [sys.executable, str(Path(__file__).resolve()), f"--{mode}", name, "--data-dir",
            str(data_dir), "--epochs", str(epochs), *(["--quick"] if quick else []),
            *(["--tuned"] if tuned else [])]


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", default=",".join(EXPERIMENTS))
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--n-train", type=int, default=8000)
    parser.add_argument("--n-test", type=int, default=512)
    parser.add_argument("--breakdown", default=",".join(DEFAULT_BREAKDOWN),
                        help=f"runs to time besides plain and cli ({','.join(BREAKDOWN)}), "
                             "'all', or 'none'")
    parser.add_argument("--quick", action="store_true",
                        help=f"tiny networks and data for a smoke test: {QUICK}")
    parser.add_argument("--threads", type=int, default=None,
                        help="OMP_NUM_THREADS of every process (default: torch's own choice, "
                             "what a user gets; 1 on a machine loaded by other jobs, where "
                             "several threads per process mostly wait for each other)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="time every run this many times, alternated (plain, cli, ...; "
                             "plain, cli, ...); figures are medians and each ratio is the "
                             "median of the repeats' run / plain, listed per repeat")
    parser.add_argument("--workdir", default=None, help="a folder (created if missing) to write "
                        "the data files and runs into and keep them, to rerun a command by hand "
                        "(default: a temporary folder, removed at the end)")
    parser.add_argument("--plain", default=None, help=argparse.SUPPRESS)  # child processes
    parser.add_argument("--minimal", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--tuned", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.plain or args.minimal:  # a child process: the plain script or minimal Lightning
        config, data_dir = load_config(args.plain or args.minimal, args.quick), Path(args.data_dir)
        result = (plain(config, data_dir, args.epochs, args.tuned) if args.plain
                  else minimal_lightning(config, data_dir, args.epochs))
        print("CHILD " + json.dumps(result))
        return [result]
    if args.quick:
        args.n_train, args.n_test, args.epochs = QUICK["n_train"], QUICK["n_test"], QUICK["epochs"]
    variants = (list(BREAKDOWN) if args.breakdown == "all" else [] if args.breakdown == "none"
                else [v for v in args.breakdown.split(",") if v])
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
          "seconds of whole processes; ratio = run / plain")
    print("| experiment | run | wall s | minus full cli (s) | ratio vs plain |\n"
          "| --- | --- | --- | --- | --- |", flush=True)
    rows = []
    with contextlib.ExitStack() as stack:
        if args.workdir:
            tmp = args.workdir
            Path(tmp).mkdir(parents=True, exist_ok=True)
        else:
            tmp = stack.enter_context(tempfile.TemporaryDirectory())
        data_dir = write_mnist(Path(tmp) / "data", args.n_train, args.n_test)
        for name in [e for e in args.experiments.split(",") if e]:
            config = load_config(name, args.quick)
            samples: dict[str, list[float]] = {}
            loop_samples: dict[str, list[float]] = {}
            for repeat in range(args.repeats):
                # Each repeat's CLI runs in folders of their own (a run without a logger is
                # refused in a folder that holds one).
                runs = Path(tmp) / "runs" / name / f"repeat{repeat}"
                seconds, out = run_timed(child_command("plain", name, data_dir, args.epochs,
                                                       args.quick), env)
                samples.setdefault("plain", []).append(seconds)
                loop_samples.setdefault("plain", []).append(_child(out)["loop_s"])
                for variant in ["full", *[v for v in variants if v != "imports"]]:
                    if variant in ("lightning", "plain-start-up", "plain-tuned"):
                        mode = "minimal" if variant == "lightning" else "plain"
                        epochs = 0 if variant == "plain-start-up" else args.epochs
                        seconds, out = run_timed(child_command(
                            mode, name, data_dir, epochs, args.quick, variant == "plain-tuned"),
                            env)
                        loop_samples.setdefault(variant, []).append(_child(out)["loop_s"])
                    else:
                        seconds, _ = run_timed(cli_command(
                            name, config, data_dir, runs, args.epochs, args.quick, variant), env)
                    samples.setdefault(variant, []).append(seconds)
            times = {run: statistics.median(v) for run, v in samples.items()}
            loops = {run: statistics.median(v) for run, v in loop_samples.items()}
            ratios = {run: [t / p for t, p in zip(v, samples["plain"], strict=True)]
                      for run, v in samples.items()}
            plain_s = times["plain"]
            for run, seconds in times.items():
                label = {"full": "cli", "plain": "plain", "lightning": "minimal lightning",
                         "plain-start-up": "plain start-up",
                         "plain-tuned": "plain tuned"}.get(run, f"cli {run}")
                ratio = statistics.median(ratios[run])
                row = {"experiment": name, "run": label, "wall_s": round(seconds, 2),
                       "ratio": round(ratio, 3),
                       "minus_full_s": round(seconds - times["full"], 2)}
                if run in loops:
                    row["loop_s"] = round(loops[run], 2)
                if args.repeats > 1:
                    row["walls_s"] = [round(t, 2) for t in samples[run]]
                    row["ratios"] = [round(r, 3) for r in ratios[run]]
                rows.append(row)
                loop = f" (loop {loops[run]:.1f})" if run in loops else ""
                print(f"| {name} | {label} | {seconds:.1f}{loop} | "
                      f"{seconds - times['full']:+.1f} | {ratio:.2f} |", flush=True)
            if args.repeats > 1:
                print(f"# {name}: cli / plain in each of {args.repeats} alternated repeats: "
                      + ", ".join(f"{r:.2f}" for r in ratios["full"])
                      + f" (median {statistics.median(ratios['full']):.2f}); wall s and ratios "
                      "above are medians", flush=True)
            if "start-up" in times and "plain-start-up" in times:
                cli_train = times["full"] - times["start-up"]
                plain_train = plain_s - times["plain-start-up"]
                row = {"experiment": name, "run": "training part", "cli_s": round(cli_train, 2),
                       "plain_s": round(plain_train, 2), "ratio": round(cli_train / plain_train, 3),
                       "start_up_cli_s": round(times["start-up"], 2),
                       "start_up_plain_s": round(times["plain-start-up"], 2)}
                rows.append(row)
                print(f"# {name}: training part (wall - start-up) cli {cli_train:.1f} s vs plain "
                      f"{plain_train:.1f} s: ratio {cli_train / plain_train:.2f}; start-up cli "
                      f"{times['start-up']:.1f} s vs plain {times['plain-start-up']:.1f} s "
                      f"(+{times['start-up'] - times['plain-start-up']:.1f} s)", flush=True)
        if "imports" in variants:
            imports = {what: import_seconds(what, env) for what in
                       ("torch", "torch, torch._dynamo", "lightning", "lightning_gen.cli",
                        "wandb, wandb.sdk.launch.inputs.internal, lightning_gen.cli")}
            rows.append({"run": "imports", **{k: round(v, 2) for k, v in imports.items()}})
            print("# start-up, processes that only import (s): " + "; ".join(
                f"{k} {v:.2f}" for k, v in imports.items()) + " (torch._dynamo: the plain "
                "script's first optimizer step imports it; lightning: Lightning's own, with "
                "the torchmetrics, torchvision, scipy and matplotlib it imports)", flush=True)
    for row in rows:
        print("JSON " + json.dumps(row))
    return rows


def _child(stdout: str) -> dict:
    return json.loads(stdout.split("CHILD ", 1)[1].splitlines()[0])


if __name__ == "__main__":
    main()
