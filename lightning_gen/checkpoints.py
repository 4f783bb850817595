"""Loading checkpoints without running code from them.

A checkpoint is a pickle, and unpickling can call any function: a checkpoint someone else made
could run a command on your machine the moment it is loaded. Every checkpoint the suite reads
(``fit``/``validate``/``test --ckpt_path``, resuming, ``evaluate``, ``sample``, the
``classifier:`` feature extractor) goes through :func:`load_checkpoint`, which unpickles with
``torch.load(weights_only=True)``: tensors, plain Python values and the few types in
:data:`SAFE_GLOBALS` (what Lightning checkpoints may hold besides: ``pathlib`` paths, numpy
scalars). Anything else is refused with one line naming it. (Lightning 2.x stores
hyperparameters as a plain ``dict``; torch's safe unpickler cannot rebuild dict subclasses such as
Lightning's ``AttributeDict`` at all, so a checkpoint holding one needs ``trust=True``.)

A checkpoint (or a run's ``config.yaml``) also names classes -- the model's and the
DataModule's ``_class_path`` -- that ``evaluate`` and ``sample`` build. :func:`resolve_class`
imports such a name only from the suite's own packages (:data:`TRUSTED_PACKAGES`) or from a
module that is already imported (importing a module runs its code), and returns it only if it is
a subclass of what is expected (``GenerativeModel``, ``LightningDataModule``), checked before
anything is called.

``trust=True`` (``--trust_checkpoint true`` on the command line) lifts both restrictions for a
file whose origin the user vouches for, with a warning.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import pathlib
import pickle
import re
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

TRUST_FLAG = "--trust_checkpoint true"

#: Packages whose modules a class path from a checkpoint or run config may be imported from.
TRUSTED_PACKAGES = ("lightning_gen", "datamodules")

#: Types beyond torch's ``weights_only`` defaults that a Lightning checkpoint may hold; none of
#: them runs code when rebuilt.
try:  # numpy 2
    from numpy._core.multiarray import scalar as _np_scalar
except ImportError:  # numpy 1
    from numpy.core.multiarray import scalar as _np_scalar

SAFE_GLOBALS: list = [
    pathlib.PosixPath, pathlib.PurePosixPath, pathlib.WindowsPath, pathlib.PureWindowsPath,
    # numpy scalars (a callback's best score, say), pickled by numpy 1 or 2
    np.dtype, (_np_scalar, "numpy._core.multiarray.scalar"),
    (_np_scalar, "numpy.core.multiarray.scalar"),
    *(type(np.dtype(t)) for t in ("f2", "f4", "f8", "i1", "i2", "i4", "i8", "u1", "u2", "u4",
                                  "u8", "?")),
]
# torch < 2.6 takes no ``(object, "module.name")`` pairs: there the scalar is allowed under the
# name it has in the installed numpy only.
if tuple(int(v) for v in torch.__version__.split(".")[:2]) < (2, 6):
    SAFE_GLOBALS = [g for g in SAFE_GLOBALS if not isinstance(g, tuple)] + [_np_scalar]


class CheckpointError(ValueError):
    """A checkpoint the suite cannot or will not load; the message is one line."""


class UntrustedCheckpointError(CheckpointError):
    """The checkpoint (or its run config) needs code or types the suite does not load
    unless the user trusts the file."""


class CorruptCheckpointError(CheckpointError):
    """Not a readable checkpoint: empty, truncated, random bytes, a directory."""


@contextlib.contextmanager
def safe_globals() -> Iterator[None]:
    """Allow :data:`SAFE_GLOBALS` in ``torch.load(weights_only=True)`` within the block (also
    for Lightning's own loading of ``--ckpt_path``)."""
    # Nested blocks add only what is missing: torch's context removes what it added on exit, so
    # an inner block would otherwise take the outer block's entries away.
    present = torch.serialization.get_safe_globals()
    missing = [g for g in SAFE_GLOBALS if g not in present]
    with torch.serialization.safe_globals(missing):
        yield


_warned: set[str] = set()


def warn_trusted(path: str | os.PathLike) -> None:
    """One warning line per file loaded with ``--trust_checkpoint true``."""
    if str(path) not in _warned:
        _warned.add(str(path))
        print(f"lightning-gen: warning: --trust_checkpoint: loading {path} with full "
              "unpickling; a checkpoint can run any code when loaded, so only do this for files "
              "whose origin you trust", file=sys.stderr, flush=True)


def check_checkpoint_path(path: str | os.PathLike) -> Path:
    """``path`` as a ``Path``; ``FileNotFoundError`` / :class:`CorruptCheckpointError` (one
    line) when it is missing, a directory or empty."""
    path = Path(path)
    if path.is_dir():
        raise CorruptCheckpointError(f"checkpoint {path} is a directory, not a checkpoint file")
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise CorruptCheckpointError(f"checkpoint {path} is empty (0 bytes); it was not written "
                                     "completely: use an earlier checkpoint")
    return path


def load_checkpoint(path: str | os.PathLike, *, trust: bool = False,
                    map_location: str | torch.device = "cpu", mmap: bool = False) -> dict:
    """The checkpoint at ``path`` as a dict, unpickled safely unless ``trust``.

    Raises one-line errors: ``FileNotFoundError``; :class:`CorruptCheckpointError` (empty,
    truncated, not a checkpoint, a directory); :class:`UntrustedCheckpointError` naming the
    types a checkpoint of the suite never holds (e.g. ``posix.system``).
    """
    path = check_checkpoint_path(path)
    try:
        if trust:
            warn_trusted(path)
            ckpt = torch.load(path, map_location=map_location, weights_only=False, mmap=mmap)
        else:
            with safe_globals():
                ckpt = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        if not trust:
            # torch < 2.6 cannot list them beforehand; its error names the first one.
            unsafe = _unsafe_globals(path) or re.findall(r"GLOBAL ([\w.]+)", str(err))[:1]
            if unsafe:
                raise UntrustedCheckpointError(
                    f"checkpoint {path} holds {', '.join(unsafe)}, which checkpoints of the suite "
                    "never hold and which could run code when loaded: refused. If you trust "
                    f"where the file comes from, pass {TRUST_FLAG}") from None
        raise CorruptCheckpointError(f"checkpoint {path} is not a PyTorch checkpoint "
                                     f"({_reason(err)})") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError, KeyError,
            AttributeError, ImportError, TypeError, IndexError) as err:
        if "mmap" in str(err) and mmap:  # a legacy (non-zip) file: read it whole
            return load_checkpoint(path, trust=trust, map_location=map_location, mmap=False)
        raise CorruptCheckpointError(
            f"checkpoint {path} is truncated or corrupt ({type(err).__name__}: {_reason(err)}); "
            "use an earlier checkpoint") from None
    if not isinstance(ckpt, dict):
        raise CorruptCheckpointError(f"{path} holds a {type(ckpt).__name__}, not a Lightning "
                                     "checkpoint")
    return ckpt


def _reason(err: BaseException) -> str:
    """The informative line of torch's (multi-paragraph) unpickling message."""
    boilerplate = ("Weights only load failed", "Please file an issue", "Check the documentation",
                   "Re-running")
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    lines = [ln for ln in lines if not ln.startswith(boilerplate)] or lines
    return lines[0].split(". ")[0][:160] if lines else type(err).__name__


def _unsafe_globals(path: Path) -> list[str]:
    """Globals in the checkpoint's pickle outside torch's and our allowlist ([] if the file
    cannot be scanned)."""
    try:
        with safe_globals():
            return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # not a zip checkpoint: nothing to name
        return []


def hyper_parameters(ckpt: dict) -> dict:
    """The model's hyperparameters of a checkpoint (``{}`` when absent or not a mapping)."""
    hparams = ckpt.get("hyper_parameters")
    return dict(hparams) if isinstance(hparams, dict) else {}


def resolve_class(class_path: object, base: type, *, trust: bool = False,
                  source: str = "the checkpoint", role: str = "class") -> type:
    """The class ``class_path`` names, if it is a subclass of ``base``; nothing is called.

    Untrusted names are imported only from :data:`TRUSTED_PACKAGES` or from modules already
    imported; with ``trust`` any module may be imported. The subclass check holds always.
    """
    if not isinstance(class_path, str) or "." not in class_path:
        raise UntrustedCheckpointError(f"{source} names {class_path!r} as its {role}, which is "
                                       "not a class path: refused")
    module_name, _, name = class_path.rpartition(".")
    trusted_module = module_name.split(".")[0] in TRUSTED_PACKAGES
    if not (trust or trusted_module or module_name in sys.modules):
        raise UntrustedCheckpointError(
            f"{source} names {class_path!r} as its {role}, outside the suite's packages "
            f"({', '.join(TRUSTED_PACKAGES)}); importing it could run code: refused. If you "
            f"trust the file, pass {TRUST_FLAG}")
    try:
        obj = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"{source} names {class_path!r} as its {role}, which cannot be "
                         f"imported ({err})") from None
    if not (isinstance(obj, type) and issubclass(obj, base)):
        raise UntrustedCheckpointError(
            f"{source} names {class_path!r} as its {role}, which is not a {base.__name__} "
            "subclass: refused (it would be called with arguments from the file)")
    return obj
