"""The ``lightning-gen`` commands, one line each: what ``lightning-gen --help`` prints.

``fit``, ``validate`` and ``test`` are LightningCLI subcommands (``lightning-gen fit --help`` is
LightningCLI's own help, every option of the model, the data and the Trainer); ``evaluate``,
``sample`` and ``sweep`` are dispatched by :func:`lightning_gen.cli.main` to their own parsers
before LightningCLI is built, ``compare`` by :func:`run_without_torch` below. LightningCLI's
top-level help knows only its own subcommands (and ``predict``, which no model here has a step
for), so the top level prints this list instead.

The top-level help and ``compare`` need neither torch nor Lightning: :func:`run_without_torch`
runs them before anything else is imported (``lightning_gen.__main__``), so they answer in well
under a second instead of after the ~3-4 s of importing torch, Lightning and W&B.
"""

from __future__ import annotations

import os
import sys
import traceback

#: Set to print the traceback behind a one-line error (the CLI's ``DEBUG_ENV``).
DEBUG_ENV = "LIGHTNING_GEN_DEBUG"

COMMANDS: tuple[tuple[str, str], ...] = (
    ("fit", "train a model from a YAML: lightning-gen fit --config experiments/quickstart.yaml"),
    ("validate", "one pass over the validation split with a checkpoint (AE, VAE, PixelCNN, "
                 "classifier)"),
    ("test", "one pass over the test split with a checkpoint (AE, VAE, PixelCNN, classifier)"),
    ("evaluate", "FID/IS/KID/precision-recall of a checkpoint's samples (and ELBO for VAEs)"),
    ("sample", "write a checkpoint's samples as PNGs (and .npz) for outside tools"),
    ("compare", "compare run folders: differing config, metrics table, curves and sample grids"),
    ("sweep", "hyperparameter search (Optuna), every trial a run; ranking and plots at the end"),
)


def usage() -> str:
    """The top-level help: every command with one line, and where each one's options are."""
    width = max(len(name) for name, _ in COMMANDS)
    lines = [
        "usage: lightning-gen COMMAND [options]",
        "",
        "Train, evaluate and compare generative models (PyTorch Lightning).",
        "",
        "commands:",
        *(f"  {name:<{width}}  {text}" for name, text in COMMANDS),
        "",
        "`lightning-gen COMMAND --help` lists a command's options (for fit/validate/test: every",
        "option of the model, the DataModule and the Trainer).",
    ]
    return "\n".join(lines)


def run_without_torch(argv: list[str]) -> bool:
    """Run ``lightning-gen`` with no command or ``--help`` (the list above; exit 2 when no
    command is given) or ``lightning-gen compare ...`` (a user's mistake, e.g. a folder that is
    not a run, is one line and exit 2); return ``False`` for every other command."""
    if not argv or argv[0] in ("-h", "--help"):
        try:
            print(usage(), file=sys.stdout if argv else sys.stderr, flush=True)
        except BrokenPipeError:  # `lightning-gen --help | head`: the reader has what it wanted
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0 if argv else 2)
    if argv[0] != "compare":
        return False
    from lightning_gen.compare import main as compare_main

    try:
        compare_main(argv[1:])
    except (FileNotFoundError, ValueError) as err:
        if os.environ.get(DEBUG_ENV):
            traceback.print_exc()
        print(f"lightning-gen: error: {err}", file=sys.stderr)
        sys.exit(2)
    return True
