"""A callback that plays a SLURM preemption, for tests/test_launchers.py.

At the first batch end with ``trainer.global_step >= step`` it sends this process the requeue
signal (SIGUSR1, as ``#SBATCH --signal=SIGUSR1@90`` makes SLURM do), then raises
:class:`Preempted`, as the SIGKILL that follows would end the job: nothing after that point is
written.
"""

from __future__ import annotations

import os
import signal

import lightning as L


class Preempted(Exception):
    pass


class PreemptAt(L.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.step:
            os.kill(os.getpid(), signal.SIGUSR1)  # Python runs the handler before the next line
            raise Preempted(f"preempted at step {trainer.global_step}")
