"""Under DDP each rank generates its share and the features are gathered: the metrics equal the
single-process ones on the same seeds (2 CPU processes, gloo; tiny generator and classifier)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests import ddp_metrics_worker
from tests.metrics_helpers import classifier_checkpoint

ROOT = Path(__file__).resolve().parent.parent


def test_two_process_ddp_gives_the_single_process_metrics(tmp_path):
    ckpt = classifier_checkpoint(tmp_path / "clf.ckpt")
    single = ddp_metrics_worker.evaluate(str(ckpt), str(tmp_path / "cache1"))

    out = tmp_path / "ddp.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "ddp_metrics_worker.py"), str(ckpt),
         str(tmp_path / "cache2"), str(out)],
        env=env, capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp = json.loads(out.read_text())

    assert ddp["world_size"] == 2
    assert single["fid"] > 0
    assert ddp["fid"] == pytest.approx(single["fid"], rel=1e-6)
    assert single["is_mean"] > 1.01 and single["recall"] > 0 and "gan_test" in single
    for key in ("is_mean", "is_std", "kid_mean", "kid_std", "precision", "recall", "density",
                "coverage", "gan_test"):
        assert ddp[key] == pytest.approx(single[key], rel=1e-5, abs=1e-9), key
