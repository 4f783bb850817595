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

Only the process entry point does this: :func:`lightning_gen.cli.main` called in a process of
someone else's (a notebook, the tests, a sweep's in-process trials) leaves the collector alone.
"""

from __future__ import annotations

import gc


def main(args: list[str] | None = None) -> None:
    """Run the ``lightning-gen`` command line (``args``: default ``sys.argv[1:]``)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        from lightning_gen.cli import main as cli_main
    finally:
        gc.freeze()
        if enabled:
            gc.enable()
    try:
        cli_main(args)
    finally:
        gc.freeze()  # the exit's collections would walk every object of the run once more


if __name__ == "__main__":
    main()
