"""Class-conditional generators: samples are drawn for classes ``i % num_classes`` and the
classifier's accuracy on them is reported as ``cas``."""

from __future__ import annotations

import pytest
import torch

from datamodules import DigitsDataModule
from lightning_gen.metrics import GenerativeEvaluator, build_extractor, to_uint8
from lightning_gen.models import Classifier
from tests.metrics_helpers import TemplateGenerator, classifier_checkpoint


def test_cas_is_the_classifier_accuracy_on_the_requested_labels(tmp_path):
    ckpt = classifier_checkpoint(tmp_path / "clf.ckpt", seed=3)
    generator = TemplateGenerator(num_classes=10)
    evaluator = GenerativeEvaluator(build_extractor(f"classifier:{ckpt}"), batch_size=25,
                                    cache_dir=str(tmp_path / "c"), isc_splits=2,
                                    kid_subset_size=50, kid_subsets=5)
    result = evaluator.evaluate(generator, DigitsDataModule(image_size=32), "test", 100, seed=11)

    # Independently: the same per-batch seeds, labels i % 10, the classifier's own forward.
    classifier = Classifier.load_from_checkpoint(ckpt, map_location="cpu").eval()
    correct = 0
    for b in range(4):
        labels = torch.arange(25 * b, 25 * (b + 1)) % 10
        torch.manual_seed(11 + b)
        images = to_uint8(generator.sample(25, labels)).float() / 127.5 - 1
        with torch.no_grad():
            correct += int((classifier(images).argmax(1) == labels).sum())
    assert result["cas"] == pytest.approx(correct / 100)


def test_inception_scores_have_no_class_accuracy():
    from lightning_gen.metrics.fidelity import fidelity_metrics

    fake = {"features": torch.randn(20, 4), "logits": torch.randn(20, 5)}
    assert "cas" not in fidelity_metrics(fake, {"features": torch.randn(20, 4)}, isc_splits=2,
                                         kid_subset_size=10, kid_subsets=2)
