"""Speed options: ``channels_last`` memory format and ``torch.compile`` of the networks (opt-in;
they change no result and no checkpoint), how many training terms are logged per step, and
two CPU settings (on by default): flushing denormal numbers to zero, and keeping freed memory in
the process for the next step's tensors.

The CLI adds it to every run as ``--performance.*`` (channels_last and compile off by default)::

    lightning-gen fit --config experiments/dcgan_cifar10.yaml --trainer.precision bf16-mixed \\
        --performance.channels_last true --performance.compile true
"""

from __future__ import annotations

import sys
from typing import Literal

import torch
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.accelerators import CPUAccelerator
from torch import nn

from lightning_gen.malloc import keep_freed_memory


class Performance(Callback):
    """Convert the model to ``torch.channels_last``, compile its networks, and choose how many
    training terms the model logs per step.

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
        train_logging: Which training terms the suite's models log at every step (each
            ``self.log`` costs ~0.2 ms of Python per value per step). ``"losses"`` (default):
            the losses (shown in the progress bar) every step, every term at the steps
            Lightning writes logs (``trainer.log_every_n_steps``) and at the last step; the
            loggers store the same as with ``"all"``. With the suite's progress bar (the CLI's)
            the losses are logged only at the steps the bar reads them (single process).
            ``"all"``: every term every step (Lightning's convention; for callbacks that read
            every term from ``trainer.callback_metrics`` at every step). ``"written"``: every
            term, only at the steps Lightning writes logs (the fastest; the progress bar then
            updates at those steps only).
        flush_denormal: When the model trains on the CPU, treat float32 values below ~1.2e-38
            (denormals) as zero for the length of the run (``torch.set_flush_denormal``; x86
            SSE3 and ARM). Denormals arise in saturated networks and make each CPU operation
            on them many times slower: the DCGAN of ``dcgan_mnist.yaml`` took 9.1 s per epoch
            without and 7.9 s with on a 2-core CPU. Results change only where a value is that
            small; GPU runs are not affected (the setting is the CPU's). ``false`` keeps
            IEEE denormals. The setting is each thread's own, and torch's intra-op threads
            copy it from the thread that starts them, at the first operation large enough to
            be split. Set here (``setup``) it reaches threads that start later only, so a
            ``lightning-gen`` process sets it before the model is built
            (:func:`flush_denormals_before_threads`): building a model can start them (the
            copy of G for ``ema_decay > 0``). In a notebook whose threads already run it
            reaches the training thread's share of each operation only.
        float32_matmul_precision: ``torch.set_float32_matmul_precision`` for the run:
            ``"high"`` lets float32 matrix products (linear layers, attention) on
            Ampere-or-later GPUs use TF32 tensor cores (10-bit mantissa inputs, float32
            accumulation), what Lightning's start-up hint on such GPUs suggests; ``"medium"``
            bfloat16. ``None`` (default) keeps torch's ``"highest"`` (full float32). Only
            matrix products: cuDNN convolutions use TF32 by default already
            (``torch.backends.cudnn.allow_tf32``). The legacy setter on purpose: Lightning and
            inductor read it, and torch raises when its newer ``fp32_precision`` flags were set
            in the same process. Given back at the end of the run.
        keep_freed_memory: When the model trains on the CPU (Linux, glibc), keep memory that
            freed tensors leave in the process for the next step's tensors, rather than giving it
            back to the operating system and faulting it in again page by page at every step
            (:func:`lightning_gen.malloc.keep_freed_memory`). glibc's defaults served the large
            activations of ``dcgan_mnist.yaml`` by ``mmap`` or returned them by trimming the
            heap: ~20,000 page faults per step, 8.3 s per epoch against 6.3 s with it on a
            2-core CPU. The cost: the process's resident memory stays near the run's peak. It
            lasts for the process (glibc cannot give its adaptive defaults back), changes no
            result, and GPU runs are not affected. ``false`` leaves glibc's defaults.
    """

    def __init__(
        self,
        channels_last: bool = False,
        compile: bool = False,
        compile_mode: Literal["default", "reduce-overhead", "max-autotune"] | None = None,
        compile_backend: str = "inductor",
        train_logging: Literal["losses", "all", "written"] = "losses",
        flush_denormal: bool = True,
        keep_freed_memory: bool = True,
        float32_matmul_precision: Literal["highest", "high", "medium"] | None = None,
    ) -> None:
        self.channels_last = channels_last
        self.compile = compile
        self.compile_mode = compile_mode
        self.compile_backend = compile_backend
        self.train_logging = train_logging
        self.flush_denormal = flush_denormal
        self.keep_freed_memory = keep_freed_memory
        self.float32_matmul_precision = float32_matmul_precision
        self.flushing = False  # set by this callback for the run, given back at teardown
        self._matmul_before: str | None = None  # the precision to give back at teardown
        self.compiled: list[str] = []

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        on_cpu = isinstance(trainer.accelerator, CPUAccelerator)
        if self.flush_denormal and not self.flushing and on_cpu:
            self.flushing = torch.set_flush_denormal(True)  # False where the CPU cannot
        if self.keep_freed_memory and on_cpu:
            keep_freed_memory()
        if self.float32_matmul_precision and self._matmul_before is None:
            self._matmul_before = torch.get_float32_matmul_precision()
            torch.set_float32_matmul_precision(self.float32_matmul_precision)
        if hasattr(pl_module, "train_logging"):
            pl_module.train_logging = self.train_logging
        if self.channels_last:
            pl_module.to(memory_format=torch.channels_last)
            pl_module.channels_last = True  # GenerativeModel converts the batches too
        if self.compile and not self.compiled:
            twice = tuple(getattr(pl_module, "twice_differentiated", ()))
            for name, child in pl_module.named_children():
                if name in twice:
                    continue
                if isinstance(child, nn.Module) and any(True for _ in child.parameters()):
                    child.compile(mode=self.compile_mode, backend=self.compile_backend)
                    self.compiled.append(name)
            if twice and trainer.is_global_zero:
                print(f"lightning-gen: --performance.compile leaves {' and '.join(twice)} of "
                      f"{type(pl_module).__name__} uncompiled: a gradient penalty differentiates "
                      "it twice, which torch.compile cannot", file=sys.stderr, flush=True)

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.flushing:  # the process's default again (other code in it expects IEEE)
            torch.set_flush_denormal(False)
            self.flushing = False
        if self._matmul_before is not None:
            torch.set_float32_matmul_precision(self._matmul_before)
            self._matmul_before = None


def will_train_on_cpu(accelerator: object) -> bool:
    """Whether a Trainer given ``--trainer.accelerator accelerator`` trains on the CPU: ``cpu``,
    or ``auto`` on a machine where Lightning finds no CUDA, MPS or XLA device."""
    if not isinstance(accelerator, str):
        return False  # an Accelerator object or class path: not ours to guess
    if accelerator.lower() != "auto":
        return accelerator.lower() == "cpu"
    from lightning.pytorch.accelerators import CUDAAccelerator, MPSAccelerator, XLAAccelerator

    return not any(a.is_available() for a in (CUDAAccelerator, MPSAccelerator, XLAAccelerator))


def flush_denormals_before_threads(config) -> bool:
    """Flush denormals to zero now, for a run whose config (a subcommand's: ``performance``,
    ``trainer``) trains on the CPU with ``performance.flush_denormal`` on; return whether it did.

    ``torch.set_flush_denormal`` sets the calling thread's floating-point control (x86's
    MXCSR), and each of torch's intra-op (OpenMP) threads copies it from the thread that starts
    it, at the first operation large enough to be split. :meth:`Performance.setup` runs after
    the model is built, and building one can start the threads (``ema_decay > 0`` copies the
    generator): those threads then went on with denormals at their slow speed, and the flush
    held for the main thread's share of each operation only. The ``lightning-gen`` process
    (:mod:`lightning_gen.__main__`) calls this after parsing its config and before building
    anything, so every intra-op thread inherits the setting.
    """
    if not config.get("performance.flush_denormal", True):
        return False
    if not will_train_on_cpu(config.get("trainer.accelerator", "auto")):
        return False
    return torch.set_flush_denormal(True)
