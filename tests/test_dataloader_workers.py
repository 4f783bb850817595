"""How many DataLoader workers a run gets (datamodules/base.py, ``usable_workers``): never
more than the cores the training process leaves free, said in one line when fewer than asked."""

from __future__ import annotations

import os

import lightning as L
import torch

from datamodules.base import usable_workers
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


def test_a_cpu_trainer_gets_no_worker_on_a_busy_machine_and_is_told(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("LIGHTNING_GEN_EXACT_WORKERS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    dm = MNISTDataModule(str(fakedata.write_mnist(tmp_path, 16, 4)), download=False,
                         num_workers=2, batch_size=4)
    dm.trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    dm.setup("fit")  # said here, before a progress bar is drawn
    err = capsys.readouterr().err
    assert err.count("0 DataLoader worker(s) instead of 2") == 1
    assert "2 usable core(s), training on the CPU with 2 torch thread(s)" in err
    assert dm.train_dataloader().num_workers == 0 and dm.val_dataloader().num_workers == 0
    assert "DataLoader worker" not in capsys.readouterr().err  # once
