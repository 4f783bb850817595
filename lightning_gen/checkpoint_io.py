"""Checkpoints written so that a full disk, a kill or a second filesystem never costs the last one.

Lightning's ``TorchCheckpointIO`` writes through an fsspec transaction whose temporary file lives
in the default temp dir (``/tmp``) and whose commit is a ``shutil.move``: a *copy* over the old
``last.ckpt`` whenever the run folder is on another filesystem (NFS/Lustre on a cluster, a
tmpfs). A full disk or a kill during that copy leaves a truncated ``last.ckpt``.
:class:`AtomicCheckpointIO` writes the temporary file beside the target, flushes and fsyncs it,
renames it over the target (atomic within one filesystem) and fsyncs the folder. A failed write
removes its temporary file and leaves the previous checkpoint as it was.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from lightning_gen.runs import fsync_dir

#: errno values that mean "no room": a full disk, an exhausted quota, a file-size limit.
NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


class CheckpointWriteError(OSError):
    """A checkpoint could not be written; the previous file at its path is unchanged."""

    def __init__(self, message: str, errno_: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.errno_ = errno_

    def __str__(self) -> str:
        return self.message


class DiskFullError(CheckpointWriteError):
    """No space was left for a checkpoint (``ENOSPC``/``EDQUOT``/``EFBIG``)."""


def os_error(err: BaseException) -> OSError | None:
    """The ``OSError`` behind ``err``: ``err`` itself or one in its ``__cause__``/``__context__``
    chain (``torch.save`` reports a failed write of its file object as a ``RuntimeError`` whose
    context is the ``OSError``)."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno is not None:
            return err
        err = err.__cause__ or err.__context__
    return None


def serialized_size(obj: Any) -> int:
    """Bytes ``torch.save(obj)`` writes, counted without keeping them."""

    class _Count:
        n = 0

        def write(self, data) -> int:
            size = memoryview(data).nbytes
            self.n += size
            return size

        def flush(self) -> None:
            pass

    sink = _Count()
    torch.save(obj, sink)
    return sink.n


def megabytes(n: int) -> str:
    return f"{n / 1e6:.2f} MB"


def _open(path: str):
    """The file the checkpoint is written to (tests replace it by one that fills up)."""
    return open(path, "wb")


def _file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def write_durably(path: str | os.PathLike, write) -> Path:
    """Call ``write(f)`` on a binary file opened beside ``path``, flush + fsync it, rename it
    into place and fsync the folder. On failure the temporary file is removed and the file at
    ``path`` is untouched; the error propagates."""
    path = Path(path)
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        with _open(tmp) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    fsync_dir(folder)
    return path


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose saves are atomic and durable on any local or network
    filesystem: temporary file in the destination folder, flush + fsync, rename, fsync of the
    folder. The CLI installs it for every run (``Trainer(plugins=[AtomicCheckpointIO()])``); it
    serves Lightning's ``ModelCheckpoint``, ``trainer.save_checkpoint`` and the SLURM preemption
    checkpoint (``hpc_ckpt_N.ckpt``) alike, under any strategy that saves through
    ``strategy.checkpoint_io`` (single device, DDP: rank 0 writes).

    A full disk raises :class:`DiskFullError` naming the folder and the checkpoint's size;
    any other write error :class:`CheckpointWriteError`. Either way the previous file is kept.
    Remote paths (``s3://``, ...) go through Lightning's fsspec implementation unchanged.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None
                        ) -> None:
        if storage_options is not None:
            return super().save_checkpoint(checkpoint, path, storage_options)  # raises TypeError
        if "://" in str(path):
            return super().save_checkpoint(checkpoint, path)
        path = Path(path)
        try:
            write_durably(path, lambda f: torch.save(checkpoint, f))
        except (OSError, RuntimeError) as err:
            cause = os_error(err)
            if cause is None:
                raise
            raise checkpoint_write_error(path, cause, lambda: serialized_size(checkpoint)) from err


def checkpoint_write_error(path: Path, cause: OSError, size) -> CheckpointWriteError:
    """The one-line error for a checkpoint that could not be written to ``path``."""
    kept = (f"the previous {path.name} is unchanged" if path.is_file()
            else f"no {path.name} was written")
    if cause.errno in NO_SPACE:
        try:
            free = megabytes(shutil.disk_usage(path.parent).free)
        except OSError:
            free = "unknown"
        return DiskFullError(
            f"no space left for checkpoint {path}: it needs {megabytes(size())} in "
            f"{path.parent} ({free} free; {os.strerror(cause.errno)}); {kept}. Free space "
            "there, then resume with --ckpt_path last", cause.errno)
    return CheckpointWriteError(
        f"could not write checkpoint {path} ({os.strerror(cause.errno)}); {kept}. Fix the "
        "folder's permissions or space, then resume with --ckpt_path last", cause.errno)
