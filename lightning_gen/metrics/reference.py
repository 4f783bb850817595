"""A disk cache of reference (real-data) features, keyed by everything that changes them.

The key holds the dataset (DataModule class, data folder, split, number of images), the image
shape, the preprocessing protocol, the feature extractor's name (which includes a digest of
its weights) and the version of the library code that runs it (torch-fidelity's). Entries are ``<cache_dir>/<dataset>-<split>-<hash>.npz`` holding the features (for
KID and precision/recall), the float64 FID statistics and the key itself (real logits are not
needed: the Inception Score is a property of the generated samples alone); they are written atomically (temporary file +
rename), so concurrent runs never read half a file.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import torch

from lightning_gen.runs import atomic_write

CACHE_ENV = "LIGHTNING_GEN_CACHE"

#: How images become extractor inputs; part of every key, bump it when that changes.
PREPROCESSING = "uint8=round((x+1)*127.5); grey->rgb for inception; extractor-native resize"


def default_cache_dir() -> Path:
    """``$LIGHTNING_GEN_CACHE`` or ``~/.cache/lightning-gen/reference``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "lightning-gen" / "reference"


class ReferenceCache:
    """Load or store reference features under a key (a JSON-serialisable dict).

    Args:
        cache_dir: Folder of the cache (created on first write); ``None``: the default.
    """

    def __init__(self, cache_dir: str | os.PathLike | None = None) -> None:
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()

    @staticmethod
    def key_string(key: dict) -> str:
        return json.dumps(key, sort_keys=True, default=str)

    def path(self, key: dict) -> Path:
        digest = hashlib.sha256(self.key_string(key).encode()).hexdigest()[:16]
        slug = "-".join(str(key.get(k, "")) for k in ("dataset", "split")).replace("/", "_")
        return self.cache_dir / f"{slug}-{digest}.npz"

    def load(self, key: dict) -> dict | None:
        """The cached entry (tensors and float64 FID statistics), or ``None`` on a miss.

        An entry that cannot be read (truncated, empty, keys missing) is reported with its path
        and moved aside (``<name>.corrupt-<time>``), so it is recomputed and written anew.
        """
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                if str(data["key"]) != self.key_string(key):  # a hash collision or stale format
                    return None
                entry = {
                    "features": torch.from_numpy(data["features"]),
                    "stats": {"mu": data["mu"], "sigma": data["sigma"]},
                    "path": path,
                }
        except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile) as err:
            self._set_aside(path, err)
            return None
        d = entry["features"].shape[-1] if entry["features"].ndim == 2 else -1
        if entry["stats"]["mu"].shape != (d,) or entry["stats"]["sigma"].shape != (d, d):
            self._set_aside(path, ValueError("features and statistics do not match"))
            return None
        return entry

    @staticmethod
    def _set_aside(path: Path, err: BaseException) -> None:
        reason = str(err).splitlines()[0][:120] if str(err) else type(err).__name__
        aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
        try:
            os.replace(path, aside)
            where = f"moved to {aside}"
        except FileNotFoundError:  # another process moved it first
            where = "moved aside"
        except OSError as move_err:
            where = f"could not be moved aside ({move_err.strerror or move_err})"
        print(f"lightning-gen: warning: reference cache {path} is corrupt ({type(err).__name__}: "
              f"{reason}); {where}; recomputing the reference features", file=sys.stderr,
              flush=True)

    def save(self, key: dict, features: torch.Tensor,
             stats: dict[str, np.ndarray]) -> Path | None:
        """Write the entry atomically; a failed write (read-only or full disk) is a warning,
        not an error: the evaluation does not need the cache (``None`` is returned)."""
        def write(tmp: str) -> None:
            with open(tmp, "wb") as f:
                np.savez(f, features=features.cpu().numpy(),
                         mu=stats["mu"], sigma=stats["sigma"],
                         key=np.array(self.key_string(key)))

        try:
            return atomic_write(self.path(key), write)
        except OSError as err:
            print(f"lightning-gen: warning: could not write the reference cache "
                  f"{self.path(key)} ({err.strerror or err}); the next evaluation computes the "
                  "reference features again", file=sys.stderr, flush=True)
            return None
