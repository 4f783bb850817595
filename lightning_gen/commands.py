"""The ``lightning-gen`` commands, one line each: what ``lightning-gen --help`` prints.

``fit``, ``validate`` and ``test`` are LightningCLI subcommands (``lightning-gen fit --help`` is
LightningCLI's own help, every option of the model, the data and the Trainer); ``evaluate``,
``sample``, ``compare`` and ``sweep`` are dispatched by :func:`lightning_gen.cli.main` to their own parsers
before LightningCLI is built. LightningCLI's top-level help knows only its own subcommands (and
``predict``, which no model here has a step for), so the top level prints this list instead.
"""

from __future__ import annotations

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
