"""How many DataLoader workers a run gets (datamodules/base.py, ``usable_workers``): never
more than the cores the training process leaves free, none for a CPU run whose images are read
a batch at a time from one array, said in one line when fewer than asked."""

from __future__ import annotations

import os

import lightning as L
import torch

from datamodules.base import reads_batches_from_array, usable_workers
from datamodules.mnist import MNISTDataModule
from tests import fakedata


def test_dataloader_workers_leave_the_training_process_its_cores(monkeypatch):
    monkeypatch.delenv("LIGHTNING_GEN_EXACT_WORKERS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert [usable_workers(n) for n in (0, 1, 2, 8)] == [0, 1, 1, 1]  # GPU run: keeps one core
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert [usable_workers(n) for n in (2, 8, 32)] == [2, 8, 15]
    # Training on the CPU: torch's intra-op threads keep their cores.
    monkeypatch.setattr(torch, "get_num_threads", lambda: 12)
    assert [usable_workers(n, on_cpu=True) for n in (2, 8)] == [2, 4]
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert usable_workers(2, on_cpu=True) == 0
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert usable_workers(2, on_cpu=True) == 1
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert usable_workers(2) == 0
    monkeypatch.setenv("LIGHTNING_GEN_EXACT_WORKERS", "1")
    assert usable_workers(2) == 2 and usable_workers(2, on_cpu=True) == 2
    assert usable_workers(2, on_cpu=True, from_array=True) == 2


def test_a_cpu_run_reading_batches_from_an_array_gets_no_worker(monkeypatch):
    monkeypatch.delenv("LIGHTNING_GEN_EXACT_WORKERS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert usable_workers(4, on_cpu=True) == 4  # cores to spare, images decoded per item
    assert usable_workers(4, on_cpu=True, from_array=True) == 0
    assert usable_workers(4, on_cpu=False, from_array=True) == 4  # a GPU run keeps them


def test_a_cpu_trainer_gets_no_worker_on_a_busy_machine_and_is_told(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("LIGHTNING_GEN_EXACT_WORKERS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    # 32x32: resized per item (not read from MNIST's array), so only the cores count.
    dm = MNISTDataModule(str(fakedata.write_mnist(tmp_path, 16, 4)), download=False,
                         num_workers=2, batch_size=4, image_size=32)
    dm.trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    dm.setup("fit")  # said here, before a progress bar is drawn
    assert not reads_batches_from_array(dm.train_set)
    err = capsys.readouterr().err
    assert err.count("0 DataLoader worker(s) instead of 2") == 1
    assert "2 usable core(s), training on the CPU with 2 torch thread(s)" in err
    assert dm.train_dataloader().num_workers == 0 and dm.val_dataloader().num_workers == 0
    assert "DataLoader worker" not in capsys.readouterr().err  # once


def test_the_workers_notice_is_said_by_one_process_per_machine(monkeypatch, tmp_path, capsys):
    # Under DDP every process sets its data up: the two ranks' notices ran together on one line.
    monkeypatch.delenv("LIGHTNING_GEN_EXACT_WORKERS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    monkeypatch.setattr(L.Trainer, "local_rank", property(lambda self: 1))
    dm = MNISTDataModule(str(fakedata.write_mnist(tmp_path, 16, 4)), download=False,
                         num_workers=2, batch_size=4, image_size=32)
    dm.trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    dm.setup("fit")
    assert dm.train_dataloader().num_workers == 0  # the same number, unsaid
    assert "DataLoader worker" not in capsys.readouterr().err


def _cpu_datamodule(root, **kwargs) -> MNISTDataModule:
    dm = MNISTDataModule(str(root), download=False, num_workers=2, batch_size=4, **kwargs)
    dm.trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    dm.setup("fit")
    return dm


def test_mnist_in_memory_or_cached_trains_on_the_cpu_without_workers_and_is_told(
        monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("LIGHTNING_GEN_EXACT_WORKERS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)  # 15 cores to spare
    root = fakedata.write_mnist(tmp_path, 16, 4)
    per_item = _cpu_datamodule(root, image_size=32)
    assert per_item.train_dataloader().num_workers == 2
    assert "DataLoader worker" not in capsys.readouterr().err
    for kwargs in ({}, {"image_size": 32, "cache": True}):  # MNIST's array; the cache's
        dm = _cpu_datamodule(root, **kwargs)
        assert reads_batches_from_array(dm.train_set) and reads_batches_from_array(dm.val_set)
        err = capsys.readouterr().err
        assert err.count("0 DataLoader worker(s) instead of 2 (training on the CPU from images "
                         "held in one array") == 1
        assert dm.train_dataloader().num_workers == 0 and dm.val_dataloader().num_workers == 0
    monkeypatch.setenv("LIGHTNING_GEN_EXACT_WORKERS", "1")
    assert _cpu_datamodule(root).train_dataloader().num_workers == 2
