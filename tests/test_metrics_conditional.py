"""Class-conditional generators: samples are drawn for classes ``i % num_classes`` and the
classifier's accuracy on them is reported as ``gan_test``."""

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
    assert result["gan_test"] == pytest.approx(correct / 100)


def test_inception_scores_have_no_class_accuracy():
    from lightning_gen.metrics.fidelity import fidelity_metrics

    fake = {"features": torch.randn(20, 4), "logits": torch.randn(20, 5)}
    assert "gan_test" not in fidelity_metrics(fake, {"features": torch.randn(20, 4)}, isc_splits=2,
                                         kid_subset_size=10, kid_subsets=2)


class ReplayGenerator(TemplateGenerator):
    """Returns the real test images in order: a 'perfect' generator."""

    def __init__(self, images: torch.Tensor) -> None:
        super().__init__(image_shape=tuple(images.shape[1:]))
        self.images, self.position = images, 0

    def sample(self, n, labels=None):
        out = self.images[self.position:self.position + n]
        self.position += n
        return out


def test_real_images_as_samples_score_fid_zero_and_full_precision_recall(tmp_path):
    datamodule = DigitsDataModule(image_size=32)
    from lightning_gen.metrics import load_split

    test_set = load_split(datamodule, "test")
    images = torch.stack([test_set[i][0] for i in range(len(test_set))])  # (297, 1, 32, 32)
    evaluator = GenerativeEvaluator(
        build_extractor(f"classifier:{classifier_checkpoint(tmp_path / 'c.ckpt')}"),
        batch_size=64, cache_dir=str(tmp_path / "c"), isc_splits=3, kid_subset_size=100,
        kid_subsets=10)
    result = evaluator.evaluate(ReplayGenerator(images), datamodule, "test", len(images))
    assert abs(result["fid"]) < 1e-6
    # KID is unbiased: on identical sets its subset estimates scatter around 0.
    assert abs(result["kid_mean"]) < result["kid_std"]
    assert result["precision"] == 1.0 and result["recall"] == 1.0
