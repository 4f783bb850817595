"""``lightning-gen evaluate --seeds K``: the sampling repeated with K disjoint seeds against one
reference; per-seed values with mean, std and min in the JSON and the table, flat keys = mean."""

from __future__ import annotations

import numpy as np
import pytest

from lightning_gen.metrics.evaluator import GenerativeEvaluator
from lightning_gen.protocols import repetition_seeds
from tests.protocol_helpers import evaluate_args, make_run, run_evaluate

SPREAD = ("fid", "is_mean", "is_std", "kid_mean", "kid_std", "precision", "recall")


def test_repetitions_draw_disjoint_batch_seeds():
    seeds = repetition_seeds(7, 3, num_samples=40, batch_size=16)  # 3 batches each
    assert seeds == [7, 10, 13]
    batch_seeds = [s + b for s in seeds for b in range(3)]
    assert batch_seeds == list(range(7, 16))  # no seed twice: those of one 120-sample run
    assert repetition_seeds(0, 1, 50_000, 100) == [0]


def test_seeds_3_writes_each_seeds_values_and_their_mean_std_min(tmp_path, capsys, monkeypatch):
    tiny = make_run(tmp_path)
    args = evaluate_args(tiny["ckpt"], tmp_path / "cache", "--num_samples", "40",
                         "--reference", "test", "--isc_splits", "4",
                         "--feature_extractor", f"classifier:{tiny['classifier']}")
    calls = {"reference": 0}
    reference = GenerativeEvaluator.reference

    def counted(self, *a, **k):
        calls["reference"] += 1
        return reference(self, *a, **k)

    monkeypatch.setattr(GenerativeEvaluator, "reference", counted)
    result = run_evaluate(tmp_path / "seeds.json", *args, "--seeds", "3", "--seed", "5")
    assert calls["reference"] == 1  # the real features once for the three repetitions
    assert result["seeds"] == [5, 8, 11] and result["seed"] == 5
    assert set(SPREAD) <= set(result["spread"])
    for key in SPREAD:
        spread = result["spread"][key]
        values = np.array(spread["values"])
        assert len(values) == 3
        assert spread["mean"] == pytest.approx(values.mean(), rel=1e-12)
        assert spread["std"] == pytest.approx(values.std(ddof=1), rel=1e-12)
        assert spread["min"] == values.min()
        assert result[key] == spread["mean"]  # flat keys hold the mean
    assert len(set(result["spread"]["fid"]["values"])) == 3  # three different sample sets
    table = capsys.readouterr().out
    assert "std" in table and "min" in table and "5, 8, 11" in table
    assert f"{result['spread']['fid']['min']:.6g}" in table

    # Repetition k is the single evaluation with seed 5 + 3k: same samples, same numbers.
    single = run_evaluate(tmp_path / "single.json", *args, "--seed", "8")
    assert single["fid"] == pytest.approx(result["spread"]["fid"]["values"][1], rel=1e-9)
    assert single["precision"] == result["spread"]["precision"]["values"][1]
    assert "spread" not in single and "seeds" not in single  # --seeds 1: as before
