"""Shared fixtures: offline W&B, format-true datasets in temp folders, a quiet small torch."""

from __future__ import annotations

import logging
import os
import tempfile

import pytest
import torch

from tests import fakedata

# Tests never touch the network and never prompt.
os.environ["WANDB_MODE"] = "offline"
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("WANDB_DISABLE_GIT", "true")
os.environ.setdefault("WANDB_INIT_TIMEOUT", "60")
# In pytest-xdist workers (`-n auto`, README), one test per core at a time: each worker's
# torch, and the processes its tests start, get the worker's share of the cores (on 2 cores,
# 1 each; 2 threads each made OpenMP spin against the other worker's and the suite was no
# faster than one process).
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
THREADS = max(1, min(2, CORES // WORKERS))
torch.set_num_threads(min(THREADS, torch.get_num_threads()))
if WORKERS > 1:
    os.environ["OMP_NUM_THREADS"] = str(THREADS)
LOGGERS = ("lightning.pytorch", "lightning.fabric", "lightning_gen")


@pytest.fixture(autouse=True)
def _isolate_runs(tmp_path, tmp_path_factory, monkeypatch):
    """Each test runs in its own folder, so run folders and W&B files land in tmp."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / ".wandb-config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / ".wandb-cache"))
    # The reference-feature cache too (its default is ~/.cache/lightning-gen/reference).
    monkeypatch.setenv("LIGHTNING_GEN_CACHE", str(tmp_path / ".reference-cache"))
    # Temporary files of the code under test (benchmark work folders, wandb's media staging,
    # scripts' mktemp) go into a folder of pytest's, which pytest removes, not into /tmp.
    scratch = tmp_path_factory.mktemp("tmpdir")
    monkeypatch.setenv("TMPDIR", str(scratch))
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    # Lightning's launchers write MASTER_PORT (and more) into os.environ; a port left there by
    # one test's ddp_spawn fit was inherited by a later DDP subprocess, which then sometimes
    # found it still in use. Every test starts and ends with the environment it found.
    saved = dict(os.environ)
    # Scripts run in-process (benchmarks' main()) quiet Lightning's loggers and set torch's
    # thread count for themselves; later tests get them back as they were.
    threads = torch.get_num_threads()
    levels = {name: logging.getLogger(name).level for name in LOGGERS}
    yield
    os.environ.clear()
    os.environ.update(saved)
    torch.set_num_threads(threads)
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


@pytest.fixture
def mnist_dir(tmp_path):
    return fakedata.write_mnist(tmp_path / "mnist")


def _exists_only(fpath, md5=None) -> bool:
    return os.path.isfile(fpath)


@pytest.fixture
def no_md5(monkeypatch):
    """torchvision checks the md5 of CIFAR-10 and CelebA files; our format-true files differ.
    Only the md5 comparison is replaced (by an existence check); the parsers stay real."""
    import torchvision.datasets.celeba as celeba
    import torchvision.datasets.cifar as cifar

    monkeypatch.setattr(cifar, "check_integrity", _exists_only)
    monkeypatch.setattr(celeba, "check_integrity", _exists_only)


@pytest.fixture
def cifar10_dir(tmp_path, no_md5):
    return fakedata.write_cifar10(tmp_path / "cifar10")


@pytest.fixture
def celeba_dir(tmp_path, no_md5):
    return fakedata.write_celeba(tmp_path / "celeba")
