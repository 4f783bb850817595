"""The ``lightning-gen`` command (and ``python -m lightning_gen``): :func:`lightning_gen.cli.main`
in a process that keeps Python's cyclic garbage collector off the objects of its imports.

``import lightning_gen.cli`` creates ~0.5 M objects (torch, Lightning, torchmetrics,
torchvision, W&B), nearly all of them alive until the process ends. Python's collector walks all
of them in each full collection: ~7 full collections during the imports (~0.5 s on a 2-core
CPU) and the final collections at exit (~1 s), a fixed cost that a short run pays on top of its
training (``benchmarks/README.md``, "Garbage collection"). So the collector is paused while the
CLI is imported (the imports leave almost no garbage: a few hundred objects), the imported
objects are then moved to the collector's permanent generation (:func:`gc.freeze`), and so is
everything left when the command returns, so that the exit does not walk them again. Nothing
else changes: reference counting frees objects as before, collections of the objects created
during a run go on as usual, ``atexit`` handlers (W&B's, the DataLoader workers') run, and every
file the suite writes is closed before the command returns.

The commands that train or evaluate through Lightning's Trainer (``fit``, ``validate``,
``test``, ``predict``; W&B is their default logger) also import W&B before Lightning, unless
the command line sets another ``--trainer.logger``. W&B defines ~80 pydantic models when it
is imported and when ``wandb.init`` first runs (its ``launch`` package, imported by every
run). On Python < 3.13 pydantic finds each model's attribute docstrings by walking the call
stack with :func:`inspect.getmodule`, which loops over every module in ``sys.modules`` for each
frame that is not a module's file (the import machinery's). After torch and Lightning that is
~4,000 modules per frame: ~1,200 ``getmodule`` calls and ~0.35 s more in ``wandb.init``, ~0.6 s
more for the whole command on a 2-core CPU, than when the same modules are imported first
(``benchmarks/README.md``, "W&B before Lightning").

The top-level help and ``compare`` import neither torch nor Lightning
(:func:`lightning_gen.commands.run_without_torch`): they run before any of this.

It also tells the CLI that torch has started no thread yet, so that a CPU run flushes
denormals to zero in every intra-op thread
(:func:`lightning_gen.callbacks.performance.flush_denormals_before_threads`).

Only the process entry point does any of this: :func:`lightning_gen.cli.main` called in a
process of someone else's (a notebook, the tests, a sweep's in-process trials) leaves the
collector alone.
"""

from __future__ import annotations

import gc
import sys

# LightningCLI's subcommands: each builds a Trainer whose default logger is W&B.
TRAINER_COMMANDS = frozenset({"fit", "validate", "test", "predict"})


def import_wandb_first(args: list[str]) -> bool:
    """Import W&B and the modules ``wandb.init`` imports, before Lightning, for the Trainer's
    commands (not for ``--help``, nor for ``evaluate``, ``compare``, ``sweep``..., nor when the
    command line sets another ``--trainer.logger``, e.g. ``false``). Returns whether it did.
    A W&B without these modules (a later release) costs the speed-up only."""
    if not TRAINER_COMMANDS.intersection(args) or {"-h", "--help"}.intersection(args):
        return False
    logger = _logger_argument(args)
    if logger is not None and "wandb" not in logger.lower():  # e.g. --trainer.logger false
        return False
    try:
        import wandb  # noqa: F401
        import wandb.sdk.launch.inputs.internal  # noqa: F401  (Run._detect_and_apply_job_inputs)
    except ImportError:
        return False
    return True


def _logger_argument(args: list[str]) -> str | None:
    """The value given to ``--trainer.logger`` on the command line, if any (not a YAML's)."""
    for i, arg in enumerate(args):
        if arg.startswith("--trainer.logger="):
            return arg.split("=", 1)[1]
        if arg == "--trainer.logger" and i + 1 < len(args):
            return args[i + 1]
    return None


def main(args: list[str] | None = None) -> None:
    """Run the ``lightning-gen`` command line (``args``: default ``sys.argv[1:]``)."""
    from lightning_gen.commands import run_without_torch

    if run_without_torch(sys.argv[1:] if args is None else list(args)):  # --help, compare
        return
    enabled = gc.isenabled()
    gc.disable()
    try:
        import_wandb_first(sys.argv[1:] if args is None else list(args))
        from lightning_gen.cli import main as cli_main
    finally:
        gc.freeze()
        if enabled:
            gc.enable()
    try:
        cli_main(args, new_process=True)
    finally:
        gc.freeze()  # the exit's collections would walk every object of the run once more


if __name__ == "__main__":
    main()
