"""Where a run's files go, and writing them so a crash never leaves half a file.

Imports neither torch nor Lightning (``lightning-gen compare`` writes through
:func:`atomic_write` without them); the functions that take a Trainer or a logger import
Lightning's classes when called.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lightning import Trainer
    from lightning.pytorch.loggers import Logger


def logger_dir(logger: Logger | Iterable[Logger] | bool | None) -> Path | None:
    """The folder the (first) logger writes to, its ``log_dir`` (W&B, CSV, TensorBoard), if
    any. Takes a logger, a list of them, or Trainer's ``logger`` argument (``True``/``False``/
    ``None``: no folder yet)."""
    from lightning.pytorch.loggers import Logger

    if isinstance(logger, (list, tuple)):
        logger = logger[0] if logger else None
    log_dir = getattr(logger, "log_dir", None) if isinstance(logger, Logger) else None
    return Path(log_dir) if log_dir else None


def run_dir(trainer: Trainer) -> Path:
    """The run's folder: the first logger's ``log_dir``, else ``trainer.default_root_dir``."""
    return logger_dir(trainer.loggers) or Path(trainer.default_root_dir)


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, fsync it, then rename it
    into place and fsync the folder.

    The rename is atomic on POSIX filesystems: readers see the old file or the new one, never
    a partial one, and a crash during ``write`` (or a full disk) leaves the old file at
    ``path`` and no temporary file. The fsyncs make the new file survive a power loss or a
    node crash once this returns (the data reaches the disk before the rename does).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        # mkstemp creates the file 0600; give it the mode a plain open() would (0666 & ~umask)
        # so run folders stay readable by the group/others as the user's umask allows.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    fsync_dir(path.parent)
    return path


def fsync_dir(folder: str | os.PathLike) -> None:
    """Make a rename in ``folder`` durable; a no-op where directories cannot be synced."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
