"""Where a Lightning training step of the suite spends the time a hand-written loop does not.

For each model of ``benchmarks/throughput.py`` (same networks, weights, batch and hand loop) this
times, step by step, and reports the median milliseconds per step (robust on a loaded machine):

* ``hand``: the hand loop of ``throughput.py``;
* ``minimal``: a minimal LightningModule whose ``training_step`` calls that same hand step
  (manual optimisation, its own optimizers, nothing logged): what Lightning's own loop costs
  (batch fetch and transfer, hooks, progress tracking) and nothing of ours;
* ``minimal +log``: the same, calling ``self.log`` once per step (one tensor, in the progress
  bar's metrics, as the suite logs a loss): what one ``self.log`` call costs in Lightning;
* ``minimal-auto`` (single-objective models): a minimal LightningModule with automatic
  optimisation (``training_step`` returns the hand loop's loss; Lightning's closure, zero_grad,
  backward and step): what Lightning's automatic optimisation costs;
* ``suite``: the suite's LightningModule under ``Trainer.fit``, ``bare`` set-up of
  ``throughput.py`` (no progress bar, logger, checkpointing, model summary);
* ``suite -logging``: the same with ``train_logging="written"`` (no ``self.log`` between the
  steps Lightning writes logs);
* ``suite -guard``: the same with the non-finite-loss guard switched off;
* ``suite default``: the ``default`` set-up of ``throughput.py`` (what the CLI sets up): the
  suite's progress bar and a CSV logger.

The step period is measured from one ``on_train_batch_start`` to the next (Lightning) or around
each call (hand), so everything between two steps counts. Loops alternate ``--repeats`` times.
``--cprofile`` adds, for ``hand`` and ``suite``, the profiled time per step split by where the
Python code lives (torch's C ops, torch's Python, Lightning, lightning_gen, other).

    python benchmarks/overhead.py --models dcgan,vae              # CPU defaults (width 16)
    python benchmarks/overhead.py --models dcgan,vae --width 64 --steps 10
    python benchmarks/overhead.py --models vae --cprofile
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import json
import os
import pstats
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lightning as L  # noqa: E402
import throughput as tp  # noqa: E402
import torch  # noqa: E402
from lightning.pytorch.loggers import CSVLogger  # noqa: E402

from lightning_gen.callbacks import ProgressBar  # noqa: E402

#: The clock (``--clock``): wall time, or the process's CPU time (on CPU with one thread, robust
#: to other jobs on a shared machine).
CLOCK = time.perf_counter
LOOPS = ["hand", "minimal", "minimal +log", "minimal-auto", "suite", "suite -logging", "suite -guard",
         "suite default"]


class _Periods(L.Callback):
    """Wall time from one training batch's start to the next's (and to the last one's end)."""

    def __init__(self) -> None:
        self.stamps: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.stamps.append(CLOCK())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx == trainer.num_training_batches - 1:
            self.stamps.append(CLOCK())


class _Minimal(L.LightningModule):
    """Lightning around the hand step and nothing else: manual optimisation, no logging."""

    def __init__(self, module: L.LightningModule, hand, log: bool = False) -> None:
        super().__init__()
        self.net = module
        self.automatic_optimization = False
        self.step_fn = hand(module, tp.Amp("cpu", "32-true"))
        self.log_each_step = log
        self.value = torch.zeros(())

    def training_step(self, batch, batch_idx):
        self.step_fn(batch[0])
        if self.log_each_step:
            self.log("train/loss", self.value, prog_bar=True)

    def configure_optimizers(self):
        return None


class _MinimalAuto(L.LightningModule):
    """Lightning's automatic optimisation of the VAE's hand-loop loss, nothing logged."""

    def __init__(self, module: L.LightningModule) -> None:
        super().__init__()
        self.net = module

    def training_step(self, batch, batch_idx):
        x, net, hp = batch[0], self.net, self.net.hparams
        mu, logvar = net.encoder(x).chunk(2, dim=1)
        logvar = logvar.clamp(-30.0, 20.0)
        decoded = net.decoder(tp.losses.reparameterize(mu, logvar))
        recon = -tp.losses.bernoulli_log_likelihood(decoded, (x + 1) / 2).mean()
        return recon + hp.beta * tp.losses.gaussian_kl(mu, logvar).mean()

    def configure_optimizers(self):
        return torch.optim.Adam(self.net.parameters(), lr=self.net.hparams.lr)


def _no_guard(module: L.LightningModule) -> None:
    module.on_before_backward = lambda loss: None
    module.check_finite = lambda: None


def time_hand(spec, args, batch) -> list[float]:
    module = spec.build(args.width).to(args.device).train()
    step = spec.hand(module, tp.Amp(args.device, args.precision))
    for _ in range(args.warmup):
        step(batch)
    periods = []
    for _ in range(args.steps):
        start = CLOCK()
        step(batch)
        tp.sync(args.device)
        periods.append(CLOCK() - start)
    return periods


def time_lightning(spec, args, batch, loop: str) -> list[float]:
    module = spec.build(args.width)
    if loop in ("minimal", "minimal +log"):
        module = _Minimal(module, spec.hand, log=loop == "minimal +log")
    elif loop == "minimal-auto":
        module = _MinimalAuto(module)
    elif loop == "suite -logging":
        module.train_logging = "written"
    elif loop == "suite -guard":
        _no_guard(module)
    periods = _Periods()
    default = loop == "suite default"
    trainer = L.Trainer(accelerator=args.device, devices=1, precision=args.precision,
                        max_epochs=1, logger=CSVLogger(args.workdir) if default else False,
                        enable_progress_bar=default, enable_checkpointing=False,
                        enable_model_summary=False, num_sanity_val_steps=0,
                        callbacks=[periods, *([ProgressBar()] if default else [])],
                        default_root_dir=args.workdir)
    labels = torch.zeros(batch.shape[0], dtype=torch.long, device=batch.device)
    trainer.fit(module, train_dataloaders=tp._Repeat((batch, labels), args.warmup + args.steps))
    stamps = periods.stamps[args.warmup:]
    return [b - a for a, b in zip(stamps, stamps[1:], strict=False)]


def where(profile: cProfile.Profile, steps: int) -> dict[str, float]:
    """Profiled seconds (own time) per step, by where the function lives."""
    out: dict[str, float] = {}
    for (file, _line, name), (_cc, _nc, tottime, _ct, _callers) in \
            pstats.Stats(profile).stats.items():
        if file == "~":
            kind = "torch C ops" if ("torch" in name or "Tensor" in name
                                     or "_EngineBase" in name) else "builtins"
        elif "/torch/" in file:
            kind = "torch python"
        elif "/lightning/" in file or "lightning_utilities" in file:
            kind = "lightning"
        elif "lightning_gen" in file:
            kind = "lightning_gen"
        else:
            kind = "other"
        out[kind] = out.get(kind, 0.0) + tottime * 1000 / steps
    return dict(sorted(out.items()))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--precision", default="32-true")
    parser.add_argument("--models", default="dcgan,vae")
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--loops", default=",".join(LOOPS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cprofile", action="store_true")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="cpu: process CPU time per step (for a loaded CPU-only machine)")
    args = parser.parse_args(argv)
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    os.environ.setdefault("PL_DISABLE_FORK", "1")
    import logging
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    # The Lightning loops' logs and run folders: removed at the end (or at exit on an error).
    scratch = tempfile.TemporaryDirectory(prefix="lightning-gen-overhead-")
    args.workdir = Path(scratch.name)
    loops = [x for x in args.loops.split(",") if x]
    print(f"# width {args.width}, batch {args.batch_size}, {args.steps} timed steps, median "
          f"ms per step over {args.repeats} alternated repeats; {args.device}, "
          f"{torch.get_num_threads()} thread(s), {args.clock} clock")
    print("| model | loop | ms/step | minus hand (ms) | ratio hand/loop |\n"
          "| --- | --- | --- | --- | --- |")
    for name in [m for m in args.models.split(",") if m]:
        spec = tp.SPECS[name]
        k = spec.n_critic
        run = argparse.Namespace(**vars(args))
        run.steps = -(-args.steps // k) * k
        run.warmup = max(k, -(-args.warmup // k) * k)
        batch = tp.make_batch(args.batch_size, args.device)
        periods: dict[str, list[float]] = {}
        kinds = [lp for lp in loops if lp != "minimal-auto" or name in ("vae",)]
        for _ in range(args.repeats):
            for loop in kinds:
                with contextlib.redirect_stdout(sys.stderr):
                    p = (time_hand(spec, run, batch) if loop == "hand"
                         else time_lightning(spec, run, batch, loop))
                periods.setdefault(loop, []).extend(p)
        ms = {loop: statistics.median(p) * 1000 for loop, p in periods.items()}
        for loop, value in ms.items():
            base = ms.get("hand", value)
            print(f"| {name} | {loop} | {value:.2f} | {value - base:+.2f} | "
                  f"{base / value:.3f} |")
            print("JSON " + json.dumps({"model": name, "loop": loop, "width": args.width,
                                        "ms_per_step": round(value, 3),
                                        "minus_hand_ms": round(value - base, 3),
                                        "ratio": round(base / value, 4)}), flush=True)
        if args.cprofile:
            for loop in ("hand", "suite"):
                profile = cProfile.Profile()
                with contextlib.redirect_stdout(sys.stderr):
                    profile.enable()
                    if loop == "hand":
                        time_hand(spec, run, batch)
                    else:
                        time_lightning(spec, run, batch, loop)
                    profile.disable()
                parts = where(profile, run.steps + run.warmup)
                print(f"# cProfile {name} {loop}: profiled ms per step by place: " + ", ".join(
                    f"{kind} {v:.2f}" for kind, v in parts.items()), flush=True)
    scratch.cleanup()


if __name__ == "__main__":
    main()
