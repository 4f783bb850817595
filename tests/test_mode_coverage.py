"""``lightning-gen evaluate --mode_coverage``: the evaluator classifier's class histogram of
unconditional samples, classes covered, KL(real || generated) and the bar chart."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from datamodules import MNISTDataModule
from lightning_gen.cli import main
from lightning_gen.metrics import build_extractor, to_uint8
from lightning_gen.metrics.diagnostics import diagnose
from lightning_gen.metrics.modes import mode_statistics, modes_figure
from lightning_gen.models import Classifier
from tests.diagnostics_helpers import CopyGenerator, evaluator, run_evaluate, split_images
from tests.fakedata import write_idx
from tests.metrics_helpers import TemplateGenerator, save_module_checkpoint

SHAPE = (1, 16, 16)
TEST_COUNTS = (9, 7, 5, 3)  # real test images per class: not uniform


def _textures(counts, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Four classes a small conv net separates at once: horizontal stripes, vertical stripes,
    a checkerboard, flat grey; plus noise."""
    rng = np.random.default_rng(seed)
    rows, cols = np.indices((16, 16))
    templates = [(rows // 2) % 2 * 200, (cols // 2) % 2 * 200,
                 ((rows // 2 + cols // 2) % 2) * 200, np.full((16, 16), 100)]
    labels = np.concatenate([np.full(n, c) for c, n in enumerate(counts)])
    images = np.stack([templates[y] + rng.integers(0, 40, (16, 16)) for y in labels])
    return images.astype(np.uint8), labels.astype(np.uint8)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("modes")
    raw = root / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, counts, seed in (("train", (10, 10, 10, 10), 0), ("t10k", TEST_COUNTS, 1)):
        images, labels = _textures(counts, seed)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    datamodule = MNISTDataModule(data_dir=str(root / "data"), image_size=16, download=False)
    train_x, train_y = split_images(datamodule, "train")
    test_x, test_y = split_images(datamodule, "test")
    # A tiny evaluator classifier, trained here for a few full-batch steps.
    torch.manual_seed(0)
    model = Classifier(image_shape=SHAPE, num_classes=4, width=4, feature_dim=8, augment="none")
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(train_x), train_y.long()).backward()
        opt.step()
    ckpt = save_module_checkpoint(model.eval(), root / "clf.ckpt")
    # Precondition of every test below: it classifies every real image correctly (through the
    # extractor the evaluation uses).
    extractor = build_extractor(f"classifier:{ckpt}")
    for x, y in ((train_x, train_y), (test_x, test_y)):
        assert torch.equal(extractor(to_uint8(x))[1].argmax(1), y)
    return {"root": root, "dm": datamodule, "clf": ckpt, "test_x": test_x, "test_y": test_y}


def test_mode_statistics_against_a_direct_computation():
    generated, real = torch.tensor([12, 0, 6, 2]), torch.tensor([5, 5, 5, 0])
    stats = mode_statistics(generated, real)
    n, k = 20, 4
    q = [(c + 1) / (n + k) for c in (12, 0, 6, 2)]
    kl = sum(p * math.log(p / qc) for p, qc in zip([1 / 3] * 3, q[:3], strict=True))
    assert stats["mode_kl"] == pytest.approx(kl, rel=1e-12)
    assert stats["mode_share_threshold"] == 0.1 / 4
    assert stats["modes_covered"] == 3 and stats["modes_total"] == 4  # 0/20 < 0.025 <= 2/20
    assert mode_statistics(generated, real, threshold=0.2)["modes_covered"] == 2  # 6/20 >= 0.2
    same = mode_statistics(torch.tensor([300, 300, 300]), torch.tensor([1, 1, 1]))
    assert same["mode_kl"] == pytest.approx(0, abs=1e-12) and same["modes_covered"] == 3



def test_real_images_of_three_classes_cover_exactly_three(setup, tmp_path):
    keep = setup["test_y"] < 3  # classes 0, 1, 2 only
    generator = CopyGenerator.of(setup["test_x"][keep])
    ckpt = save_module_checkpoint(generator, tmp_path / "three.ckpt", datamodule=setup["dm"])
    result = run_evaluate(setup, ckpt, tmp_path / "eval" / "three.json", "--mode_coverage",
                          "true", batch_size=10)
    assert result["modes_covered"] == 3 and result["modes_total"] == 4
    assert result["mode_share_threshold"] == pytest.approx(0.025)
    # Directly: the images the generator returned (seed 0 + batch), labelled by their class.
    labels = setup["test_y"][keep]
    drawn = []
    for b in range(2):
        torch.manual_seed(0 + b)
        drawn.append(labels[generator.drawn(10)])
    counts = np.bincount(torch.cat(drawn).numpy(), minlength=4)
    assert result["mode_histogram"] == counts.tolist() and counts[3] == 0
    assert result["mode_real_histogram"] == list(TEST_COUNTS)
    p_real = np.array(TEST_COUNTS) / sum(TEST_COUNTS)
    p_gen = (counts + 1) / (20 + 4)
    assert result["mode_kl"] == pytest.approx(float(np.sum(p_real * np.log(p_real / p_gen))),
                                              rel=1e-9)
    assert "KL(real || generated)" in result["mode_definition"]
    png = Path(result["modes_png"])
    assert png == tmp_path / "eval" / "modes_three.png"
    pixels = np.asarray(Image.open(png).convert("RGB")).reshape(-1, 3)
    for colour in ((31, 119, 180), (255, 127, 14)):  # tab:blue (generated), tab:orange (real)
        assert (np.abs(pixels.astype(int) - colour).sum(1) < 10).sum() > 200


def test_the_bar_chart_has_a_bar_per_class_and_set():
    stats = mode_statistics(torch.tensor([4, 0, 6, 2, 1]), torch.tensor([3, 3, 3, 3, 3]))
    ax = modes_figure(stats, "test").axes[0]
    bars = [p for p in ax.patches if p.get_height() >= 0]
    assert len(bars) == 2 * 5
    heights = sorted(round(p.get_height(), 6) for p in bars)
    assert heights == sorted([round(c / 13, 6) for c in (4, 0, 6, 2, 1)] + [0.2] * 5)


def test_off_by_default(setup, tmp_path):
    ckpt = save_module_checkpoint(CopyGenerator.of(setup["test_x"]), tmp_path / "all.ckpt",
                                  datamodule=setup["dm"])
    result = run_evaluate(setup, ckpt, tmp_path / "off.json", batch_size=10)
    assert "modes_covered" not in result and not (tmp_path / "modes_off.png").exists()
    assert "last_generated" not in result  # nothing kept, nothing leaked into the JSON


def test_conditional_models_get_a_note_not_a_histogram(setup, tmp_path, capsys):
    generator = TemplateGenerator(image_shape=SHAPE, num_classes=4)
    ev = evaluator(setup["clf"], tmp_path / "cache", batch_size=10)
    ev.evaluate(generator, setup["dm"], "test", 20)
    out = diagnose(generator, setup["dm"], ev, tmp_path / "c.json", reference="test",
                   num_samples=20, seed=0, batch_size=10, device="cpu", mode_coverage=True)
    assert out == {} and not (tmp_path / "modes_c.png").exists()
    err = capsys.readouterr().err.strip()
    assert "TemplateGenerator is class-conditional" in err and "\n" not in err


def test_mode_coverage_without_a_classifier_is_a_one_line_error(setup, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "--ckpt_path", str(tmp_path / "missing.ckpt"), "--mode_coverage", "true",
              "--feature_extractor", "inception", "--accelerator", "cpu"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lightning-gen: error: --mode_coverage true needs a classifier")
    assert "\n" not in err
