"""Opt-in speed options that change no result and no checkpoint: ``channels_last`` memory
format, ``torch.compile`` of the networks, and logging training terms only when written.

The CLI adds it to every run as ``--performance.*`` (both off by default)::

    lightning-gen fit --config experiments/dcgan_cifar10.yaml --trainer.precision bf16-mixed \\
        --performance.channels_last true --performance.compile true
"""

from __future__ import annotations

from typing import Literal

import torch
from lightning import Callback, LightningModule, Trainer
from torch import nn


class Performance(Callback):
    """Convert the model to ``torch.channels_last`` and/or compile its networks.

    Compilation uses ``nn.Module.compile()``, which compiles each network's ``forward`` in place:
    parameter names, and so ``state_dict`` keys and checkpoints, stay as they are (no
    ``_orig_mod.`` prefix), and a checkpoint written with compilation loads without it.

    Args:
        channels_last: Store 4-d parameters and image batches as NHWC (faster convolutions on
            tensor-core GPUs under 16-bit precision; usually no gain on CPU).
        compile: ``torch.compile`` every top-level network of the model (``generator``,
            ``discriminator``, ``encoder``, ...). The first steps are slower (compilation).
        compile_mode: ``torch.compile``'s ``mode`` (``None``, ``"reduce-overhead"``,
            ``"max-autotune"``, ...).
        compile_backend: ``torch.compile``'s ``backend`` (``"inductor"``; ``"eager"`` only
            traces, for tests).
        log_every_step: ``False``: the suite's models log training terms only at the steps
            Lightning writes them (``trainer.log_every_n_steps``), saving Lightning's per-value
            logging overhead on the other steps; the progress bar and
            ``trainer.callback_metrics`` then update at those steps only.
    """

    def __init__(
        self,
        channels_last: bool = False,
        compile: bool = False,
        compile_mode: Literal["default", "reduce-overhead", "max-autotune"] | None = None,
        compile_backend: str = "inductor",
        log_every_step: bool = True,
    ) -> None:
        self.channels_last = channels_last
        self.compile = compile
        self.compile_mode = compile_mode
        self.compile_backend = compile_backend
        self.log_every_step = log_every_step
        self.compiled: list[str] = []

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if not self.log_every_step:
            pl_module.log_every_step = False
        if self.channels_last:
            pl_module.to(memory_format=torch.channels_last)
            pl_module.channels_last = True  # GenerativeModel converts the batches too
        if self.compile and not self.compiled:
            for name, child in pl_module.named_children():
                if isinstance(child, nn.Module) and any(True for _ in child.parameters()):
                    child.compile(mode=self.compile_mode, backend=self.compile_backend)
                    self.compiled.append(name)
