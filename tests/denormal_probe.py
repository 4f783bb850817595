"""A callback for ``lightning-gen`` runs in child processes (``--trainer.callbacks+=``): at each
training batch, the share of a large float32 multiplication of denormals that kept a nonzero
result. torch splits the operation among its intra-op threads, so 0.0 means every thread
flushed denormals to zero, 1.0 that none did, 0.5 (2 threads) that only one did. Written as a
JSON list to ``$DENORMAL_PROBE_OUT`` when training ends."""

from __future__ import annotations

import json
import os

import lightning as L
import torch

ELEMENTS = 1 << 20  # far above torch's grain size (32,768): split among all threads


class DenormalProbe(L.Callback):
    def __init__(self) -> None:
        self.kept: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        # The smallest denormal (1.4e-45) from its bit pattern: no float operation (a Python
        # float converted in a flushing thread would already be 0).
        denormals = torch.full((ELEMENTS,), 1, dtype=torch.int32).view(torch.float32)
        self.kept.append((denormals * 1.0 != 0).float().mean().item())

    def on_train_end(self, trainer, pl_module):
        with open(os.environ["DENORMAL_PROBE_OUT"], "w") as f:
            json.dump({"kept": self.kept, "threads": torch.get_num_threads()}, f)
