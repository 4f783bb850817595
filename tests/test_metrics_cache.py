"""Reference features are computed once per key, written atomically, and reused."""

from __future__ import annotations

import pytest

from datamodules import DigitsDataModule
from lightning_gen.metrics import GenerativeEvaluator, build_extractor
from tests.metrics_helpers import TemplateGenerator, classifier_checkpoint


def _evaluator(ckpt, cache_dir) -> tuple[GenerativeEvaluator, list[int]]:
    extractor = build_extractor(f"classifier:{ckpt}")
    seen: list[int] = []  # images through the extractor, per call
    extractor.register_forward_hook(lambda module, args, output: seen.append(len(args[0])))
    evaluator = GenerativeEvaluator(extractor, batch_size=64, cache_dir=str(cache_dir),
                                    isc_splits=2, kid_subset_size=50, kid_subsets=10)
    return evaluator, seen


def test_second_evaluation_reuses_the_cached_reference(tmp_path):
    ckpt = classifier_checkpoint(tmp_path / "clf.ckpt")
    datamodule, generator, cache = DigitsDataModule(image_size=32), TemplateGenerator(), tmp_path / "c"

    first_eval, first_seen = _evaluator(ckpt, cache)
    first = first_eval.evaluate(generator, datamodule, "test", 100)
    assert first_eval.reference_info["from_cache"] is False
    assert sum(first_seen) == 297 + 100  # the whole test split, then the samples
    files = sorted(p.name for p in cache.iterdir())
    assert len(files) == 1 and files[0].endswith(".npz")  # no temporary file left behind

    second_eval, second_seen = _evaluator(ckpt, cache)  # a later run
    second = second_eval.evaluate(generator, datamodule, "test", 100)
    assert second_eval.reference_info["from_cache"] is True
    assert sum(second_seen) == 100  # only the generated samples: no real features recomputed
    assert second == pytest.approx(first, rel=1e-12)


def test_a_different_key_recomputes(tmp_path):
    cache = tmp_path / "c"
    datamodule, generator = DigitsDataModule(image_size=32), TemplateGenerator()
    ckpt = classifier_checkpoint(tmp_path / "a.ckpt", seed=0)
    evaluator, seen = _evaluator(ckpt, cache)
    evaluator.evaluate(generator, datamodule, "test", 64)
    evaluator.reference(datamodule, "test", num_images=200)  # another number of images
    assert evaluator.reference_info["from_cache"] is False
    other_weights, other_seen = _evaluator(classifier_checkpoint(tmp_path / "b.ckpt", seed=1), cache)
    other_weights.evaluate(generator, datamodule, "test", 64)  # other extractor weights
    assert other_weights.reference_info["from_cache"] is False
    assert sum(other_seen) == 297 + 64
    assert len(list(cache.glob("*.npz"))) == 3


def test_bad_reference_requests_are_clear_errors(tmp_path):
    evaluator, _ = _evaluator(classifier_checkpoint(tmp_path / "a.ckpt"), tmp_path / "c")
    datamodule, generator = DigitsDataModule(image_size=32), TemplateGenerator()
    with pytest.raises(ValueError, match="reference split 'validation' does not exist"):
        evaluator.evaluate(generator, datamodule, "validation", 64)
    with pytest.raises(ValueError, match="has 297 real images, fewer than the 500 requested"):
        evaluator.evaluate(generator, datamodule, "test", 500)
