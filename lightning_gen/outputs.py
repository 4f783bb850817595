"""Checking, before the work starts, that a command can write where it will write.

``evaluate`` and ``sample`` run for minutes to hours; a results file or sample folder that
cannot be written must be reported before that, in one line naming the path, not as a traceback
once the numbers are lost.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path


class OutputError(ValueError):
    """An output path that cannot be written (one line)."""


class ResultsNotSavedError(RuntimeError):
    """The work finished (and its results were printed) but writing them failed."""


def _existing_ancestor(path: Path) -> Path:
    for parent in [path, *path.parents]:
        if parent.exists() or parent.is_symlink():
            return parent
    return Path(".")


def _probe(folder: Path, flag: str, path: Path) -> None:
    """Create and remove a temporary file in ``folder`` (works as root too, and on read-only
    mounts, where ``os.access`` is not reliable)."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=".lightning-gen-probe.", dir=folder)
        os.close(fd)
        os.remove(tmp)
    except OSError as err:
        raise OutputError(f"{flag} {path}: cannot write in {folder} ({err.strerror or err}); "
                          f"choose a writable {flag}") from None


def check_dir_writable(path: str | os.PathLike, flag: str) -> Path:
    """``path`` is, or can be created as, a writable folder."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{flag} {path} is a file, not a folder; give a folder")
    base = _existing_ancestor(path)
    if not base.is_dir():
        raise OutputError(f"{flag} {path}: {base} is a file, so no folder can be created below it")
    _probe(base, flag, path)
    return path


def check_file_writable(path: str | os.PathLike, flag: str, example: str = "results.json") -> Path:
    """``path`` is, or can be created as, a writable file (its folder is created if needed)."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{flag} {path} is a folder; give a file name, e.g. "
                          f"{path / example}")
    base = _existing_ancestor(path.parent)
    if not base.is_dir():
        raise OutputError(f"{flag} {path}: {base} is a file, so no folder can be created below it")
    _probe(base, flag, path)
    return path


#: Files ``lightning-gen sample`` writes into its folder.
SAMPLE_FILE = re.compile(r"^\d{6,}\.png$")
SAMPLE_EXTRAS = ("samples.npz", "labels.txt")


def check_sample_folder(out: str | os.PathLike, overwrite: bool) -> Path:
    """The sample folder can be written, and is empty unless ``overwrite``."""
    folder = check_dir_writable(out, "--out")
    if folder.is_dir() and any(folder.iterdir()) and not overwrite:
        count = sum(1 for _ in folder.iterdir())
        raise OutputError(f"--out {folder} is not empty ({count} entries); choose an empty or new "
                          "folder, or pass --overwrite true to replace the samples in it")
    return folder


def remove_old_samples(folder: Path) -> int:
    """Delete what an earlier ``sample`` wrote into ``folder``; other files stay."""
    removed = 0
    if folder.is_dir():
        for entry in folder.iterdir():
            if entry.is_file() and (SAMPLE_FILE.match(entry.name) or entry.name in SAMPLE_EXTRAS):
                entry.unlink()
                removed += 1
    return removed
