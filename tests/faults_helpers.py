"""Callbacks and writers that play faults for tests/test_faults.py.

* :class:`StepMarker` appends ``trainer.global_step`` to a file after every training batch (and
  waits a little), so a test in another process can see how far a fit has got and signal it
  mid-epoch.
* :class:`FillingFile`: a file that raises ``ENOSPC`` once ``limit`` bytes were written, as a
  full disk does, without root and without filling a real disk.
"""

from __future__ import annotations

import errno
import io
import time
from pathlib import Path

import lightning as L


class StepMarker(L.Callback):
    def __init__(self, path: str, delay: float = 0.0) -> None:
        self.path = Path(path)
        self.delay = delay

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        with open(self.path, "a") as f:
            f.write(f"{trainer.global_step}\n")
        time.sleep(self.delay)


def steps_seen(path: str | Path) -> list[int]:
    path = Path(path)
    if not path.is_file():
        return []
    return [int(line) for line in path.read_text().split()]


class FillingFile(io.FileIO):
    """A real file that fails like a full disk after ``limit`` bytes: the bytes before stay
    on disk (half a file), the write that does not fit raises ``OSError(ENOSPC)``."""

    def __init__(self, path: str, limit: int) -> None:
        super().__init__(path, "wb")
        self.limit = limit
        self.written = 0

    def write(self, data) -> int:
        size = memoryview(data).nbytes
        if self.written + size > self.limit:
            room = max(self.limit - self.written, 0)
            if room:
                super().write(memoryview(data).cast("B")[:room])
                self.written += room
            raise OSError(errno.ENOSPC, "No space left on device")
        self.written += size
        return super().write(data)


class CorruptAt(L.Callback):
    """Truncate ``path`` (an image file) to ``keep`` bytes once ``trainer.global_step`` has
    reached ``step``: the file goes bad while the run is training, as on a flaky network disk."""

    def __init__(self, path: str, step: int, keep: int = 200) -> None:
        self.path = Path(path)
        self.step = step
        self.keep = keep
        self.done = False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self.done and trainer.global_step >= self.step:
            data = self.path.read_bytes()
            self.path.write_bytes(data[: self.keep])
            self.done = True


class SignalAt(L.Callback):
    """Send this process ``signum`` at the first batch end with ``global_step >= step``."""

    def __init__(self, step: int, signum: int) -> None:
        self.step = step
        self.signum = signum
        self.sent = False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        import os

        if not self.sent and trainer.global_step >= self.step:
            self.sent = True
            os.kill(os.getpid(), self.signum)


class FillDiskAt(L.Callback):
    """Once ``global_step >= step``, fill the filesystem of ``folder`` up to ``leave`` free
    bytes with a filler file (another job writing to the same disk)."""

    def __init__(self, folder: str, step: int, leave: int = 4096) -> None:
        self.folder = Path(folder)
        self.step = step
        self.leave = leave
        self.done = False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        import shutil

        if not self.done and trainer.global_step >= self.step:
            self.done = True
            free = shutil.disk_usage(self.folder).free
            with open(self.folder / "filler", "wb") as f:
                try:
                    f.write(b"\0" * max(free - self.leave, 0))
                except OSError:
                    pass
