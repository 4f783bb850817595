"""``Performance(keep_freed_memory=True)``: a CPU run reuses the memory freed tensors leave,
instead of faulting fresh pages in at every step (glibc's ``mallopt``)."""

from __future__ import annotations

import platform
import subprocess
import sys

import lightning as L
import pytest
import torch

from lightning_gen.callbacks import Performance
from lightning_gen.callbacks import performance as performance_module
from lightning_gen.models import DCGAN

GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"

# Allocates and frees a 40 MB tensor (above glibc's largest adaptive mmap threshold, 32 MiB:
# by default every one is a fresh mmap) 40 times, touching every page, and prints the minor page
# faults of each round. Kept, the heap first grows by one tensor per round for a few rounds
# (0 to ~10 seen, varying from run to run): torch allocates with posix_memalign, whose request
# is a few bytes more than the block a freed tensor leaves, so a freed block is reused only once
# it has merged with a free neighbour. Then the rounds reuse the heap.
CHILD = """
import resource, sys, torch
from lightning_gen.malloc import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "keep" else False
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
rounds = []
for round in range(40):
    start = faults()
    t = torch.ones(10_000_000)  # 40 MB, written
    del t
    rounds.append(faults() - start)
print(kept, *rounds)
"""
PAGES = 40_000_000 // 4096  # one round's 40 MB in 4 KiB pages: ~9,770


def _faults(mode: str) -> tuple[bool, list[int]]:
    out = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True,
                         check=True).stdout.split()
    return out[0] == "True", [int(n) for n in out[1:]]


def _fresh_rounds(faults: list[int]) -> int:
    """Rounds that faulted in at least half of a tensor's pages: memory new to the process."""
    return sum(n > PAGES // 2 for n in faults)


def test_freed_memory_is_reused_instead_of_faulted_in_again():
    kept, faults_kept = _faults("keep")
    _, faults_default = _faults("default")
    assert len(faults_kept) == len(faults_default) == 40
    if not GLIBC:  # nothing is changed where malloc is not glibc's
        assert not kept
        return
    assert kept
    # The last 20 rounds: glibc's default maps every tensor afresh; kept, the heap is reused.
    assert _fresh_rounds(faults_default[20:]) >= 19, faults_default
    assert _fresh_rounds(faults_kept[20:]) <= 1, faults_kept


@pytest.mark.parametrize("enabled", [True, False])
def test_cpu_training_keeps_freed_memory_only_when_asked(monkeypatch, tmp_path, enabled):
    calls = []
    monkeypatch.setattr(performance_module, "keep_freed_memory", lambda: calls.append(1) or True)
    trainer = L.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path,
                        callbacks=[Performance(keep_freed_memory=enabled)])
    model = DCGAN(image_shape=(1, 16, 16), latent_dim=8, g_width=8, d_width=8)
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(
        torch.rand(8, 1, 16, 16) * 2 - 1), batch_size=4)
    trainer.fit(model, data)
    assert calls == ([1] if enabled else [])
