"""The suite's Inception-v3 numbers equal torch-fidelity's own API on the same images and weights.

Offline: the test writes a random-initialised Inception-v3 (He-normal convs, so features keep
their scale). Inception costs ~0.1-1 s per image on 2 CPU cores, so the sets are tiny.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch_fidelity
from PIL import Image

from lightning_gen.metrics import (
    InceptionExtractor,
    build_extractor,
    fidelity_metrics,
    write_random_inception_weights,
)

N = 10  # images per set
SPLITS = 2  # Inception Score splits (N / SPLITS images each)


def _write_pngs(folder, images: np.ndarray) -> None:
    folder.mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(folder / f"{i:03d}.png")


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return write_random_inception_weights(tmp_path_factory.mktemp("w") / "inception.pth", seed=0)


def test_fid_is_kid_pr_equal_torch_fidelity(tmp_path, weights):
    rng = np.random.default_rng(0)
    # Real images are grey (1-channel PNGs: torch-fidelity converts them to RGB, the suite
    # repeats the channel), generated ones colour.
    real = rng.integers(0, 256, size=(N, 32, 32, 1), dtype=np.uint8)
    fake = np.clip(real.astype(int) // 2 + rng.integers(0, 128, size=(N, 32, 32, 3)), 0, 255)
    fake = fake.astype(np.uint8)
    _write_pngs(tmp_path / "real", real)
    _write_pngs(tmp_path / "fake", fake)

    theirs = torch_fidelity.calculate_metrics(
        input1=str(tmp_path / "fake"), input2=str(tmp_path / "real"), cuda=False,
        feature_extractor="inception-v3-compat",  # torch-fidelity's PR default is VGG-16
        isc=True, fid=True, kid=True, prc=True, feature_extractor_weights_path=str(weights),
        isc_splits=SPLITS, kid_subset_size=N, kid_subsets=10, cache=False, verbose=False,
        save_cpu_ram=True,
    )

    extractor = InceptionExtractor(str(weights))
    to_float = lambda u: torch.from_numpy(u).permute(0, 3, 1, 2).float() / 127.5 - 1  # noqa: E731
    from lightning_gen.metrics import to_uint8

    def features(images):
        f, logits = extractor(to_uint8(to_float(images)))  # the suite's float -> uint8 path
        return {"features": f, "logits": logits}

    ours = fidelity_metrics(features(fake), features(real), isc_splits=SPLITS,
                            kid_subset_size=N, kid_subsets=10)
    pairs = {"fid": "frechet_inception_distance", "is_mean": "inception_score_mean",
             "is_std": "inception_score_std", "kid_mean": "kernel_inception_distance_mean",
             "kid_std": "kernel_inception_distance_std", "precision": "precision",
             "recall": "recall"}
    assert theirs["frechet_inception_distance"] > 1.0  # features are informative, not collapsed
    assert theirs["inception_score_mean"] > 1.01
    for ours_key, their_key in pairs.items():
        assert ours[ours_key] == pytest.approx(theirs[their_key], rel=1e-3, abs=1e-6), ours_key
    # IS is close to 1 with random weights: compare its excess over 1 too.
    excess = theirs["inception_score_mean"] - 1
    assert (ours["is_mean"] - 1) == pytest.approx(excess, rel=1e-3)


def test_a_weights_file_that_is_not_inception_is_a_clear_error(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, path)
    with pytest.raises(ValueError, match="is not torch-fidelity's Inception-v3"):
        build_extractor("inception", weights_path=str(path))
    (tmp_path / "junk.pth").write_text("not a weights file")
    with pytest.raises(ValueError, match="not a PyTorch weights file"):
        build_extractor("inception", weights_path=str(tmp_path / "junk.pth"))


def test_reference_features_cached_under_another_torch_fidelity_are_recomputed(
        tmp_path, weights, monkeypatch):
    # torch-fidelity's code (its TF1 resize, its layer taps) makes the features as much as the
    # weights do: a cache entry written under another version is not reused.
    from datamodules import DigitsDataModule
    from lightning_gen.metrics import GenerativeEvaluator

    datamodule, cache = DigitsDataModule(image_size=32), tmp_path / "cache"

    def reference(version: str | None):
        if version is not None:
            monkeypatch.setattr("importlib.metadata.version", lambda name: version)
        evaluator = GenerativeEvaluator(InceptionExtractor(str(weights)), batch_size=8,
                                        cache_dir=str(cache))
        evaluator.reference(datamodule, "test", num_images=8)
        return evaluator.reference_info

    installed = reference(None)
    assert installed["extractor_code"] == f"torch-fidelity {torch_fidelity.__version__}"
    assert installed["from_cache"] is False
    assert reference(None)["from_cache"] is True  # same code: the entry is reused
    upgraded = reference("99.0.0")
    assert upgraded["extractor_code"] == "torch-fidelity 99.0.0"
    assert upgraded["from_cache"] is False and upgraded["cache_file"] != installed["cache_file"]
    assert len(list(cache.glob("*.npz"))) == 2
