"""``lightning-gen evaluate --neighbours``: nearest training images of generated samples, the
memorization fraction, and the PNG that shows them (read back: it must show the images)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from datamodules import MNISTDataModule
from lightning_gen.metrics import to_uint8
from lightning_gen.metrics.diagnostics import diagnose
from lightning_gen.metrics.memorization import (
    memorization,
    nearest,
    threshold,
    write_neighbours_png,
)
from tests import fakedata
from tests.diagnostics_helpers import (
    CopyGenerator,
    NoiseGenerator,
    evaluator,
    run_evaluate,
    split_images,
)
from tests.metrics_helpers import classifier_checkpoint, save_module_checkpoint

SHAPE = (1, 16, 16)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("memorization")
    data = fakedata.write_mnist(root / "mnist", n_train=40, n_test=24)
    datamodule = MNISTDataModule(data_dir=str(data), image_size=16, download=False)
    classifier = classifier_checkpoint(root / "clf.ckpt", image_shape=SHAPE)
    train, _ = split_images(datamodule, "train")
    return {"root": root, "dm": datamodule, "clf": classifier, "train": train}


def _run(setup, model, tmp_path, num_samples=20, shown=3, k=2, seed=5):
    ev = evaluator(setup["clf"], tmp_path / "cache")
    ev.evaluate(model, setup["dm"], "test", num_samples, seed=seed)
    fake = ev.last_generated
    found, pixels = memorization(model, setup["dm"], ev, fake["features"], num_samples, seed,
                                 16, "cpu", shown, k)
    return found, pixels, fake, ev


def test_nearest_matches_a_direct_computation():
    torch.manual_seed(0)
    queries, bank = torch.randn(11, 6), torch.randn(23, 6)
    bank[4] = queries[2]  # an exact copy: distance exactly 0
    d, i = nearest(queries, bank, 3, query_chunk=4, bank_chunk=5)  # blocks merged
    full = torch.cdist(queries.double(), bank.double(), compute_mode="donot_use_mm_for_euclid_dist")
    expected_d, expected_i = full.sort(dim=1)
    assert torch.equal(i, expected_i[:, :3])
    assert torch.allclose(d.double(), expected_d[:, :3], rtol=1e-6, atol=1e-6)
    assert d[2, 0] == 0 and i[2, 0] == 4
    # Leave-one-out: a bank row is never its own neighbour.
    index = torch.arange(23)
    d, i = nearest(bank, bank, 1, exclude=index, bank_chunk=7)
    full = torch.cdist(bank.double(), bank.double()).fill_diagonal_(float("inf"))
    assert torch.equal(i[:, 0], full.argmin(1))
    # uint8 pixels are compared as x / 255.
    pixels = torch.randint(0, 256, (9, 12), dtype=torch.uint8)
    d, i = nearest(pixels[:3], pixels, 2)
    assert torch.equal(i[:, 0], torch.arange(3)) and torch.all(d[:, 0] == 0)
    direct = (pixels[:3, None].double() / 255 - pixels[None].double() / 255).norm(dim=-1)
    assert torch.allclose(d[:, 1].double(), direct.sort(1).values[:, 1], atol=1e-6)


def test_threshold_is_the_percentile_of_leave_one_out_distances():
    torch.manual_seed(1)
    bank = torch.randn(30, 5)
    tau, d = threshold(bank, 10.0)
    full = torch.cdist(bank.double(), bank.double()).fill_diagonal_(float("inf"))
    loo = full.min(1).values.numpy()
    assert np.allclose(np.sort(d.numpy()), np.sort(loo), atol=1e-6)
    assert tau == pytest.approx(np.percentile(loo, 10.0), abs=1e-6)


def _tile(png: np.ndarray, box) -> np.ndarray:
    top, left, h, w = box
    return png[top:top + h, left:left + w]


def _shows(png: np.ndarray, box, image: torch.Tensor) -> bool:
    """The PNG's tile at ``box`` is ``image`` (uint8 (C, H, W)) enlarged by an integer factor."""
    tile = _tile(png, box)
    scale = tile.shape[0] // image.shape[1]
    expected = image.permute(1, 2, 0).numpy()
    expected = np.repeat(np.repeat(np.repeat(expected, 3 // expected.shape[-1], -1), scale, 0),
                         scale, 1)
    return tile.shape == expected.shape and np.array_equal(tile, expected)


def test_a_generator_that_copies_training_images_is_fully_memorized(setup, tmp_path):
    model = CopyGenerator.of(setup["train"])
    found, pixels, fake, ev = _run(setup, model, tmp_path)
    m = found.metrics
    assert m["memorization_fraction"] == 1.0 and m["memorization_fraction_pixels"] == 1.0
    assert m["nn_distance_median_pixels"] == 0.0
    assert m["memorization_threshold_pixels"] > 0 and m["memorization_threshold"] > 0
    # Each shown sample's nearest training image is the one it copied, at distance 0.
    torch.manual_seed(5)  # batch 0 of seed 5
    copied = model.drawn(16)[:3]
    for space in ("features", "pixels"):
        d, i = found.neighbours[space]
        assert torch.equal(i[:, 0], copied), space
    assert torch.all(found.neighbours["pixels"][0][:, 0] == 0)
    assert torch.all(found.neighbours["features"][0][:, 0] < 1e-4 * m["memorization_threshold"])
    assert torch.equal(found.shown, to_uint8(setup["train"][copied]))
    # The reference of the metrics (the test split) is still the one the JSON describes.
    assert ev.reference_info["split"] == "test"

    path, boxes = write_neighbours_png(tmp_path / "n.png", found, pixels, "classifier-x")
    png = np.asarray(Image.open(path).convert("RGB"))
    for space in ("features", "pixels"):
        for row in range(3):
            assert _shows(png, boxes[space, row, 0], found.shown[row])  # the sample
            assert _shows(png, boxes[space, row, 1], found.shown[row])  # its copy
            j = int(found.neighbours[space][1][row, 1])
            assert _shows(png, boxes[space, row, 2], pixels[j])  # the second nearest


def test_gaussian_noise_is_not_memorized(setup, tmp_path):
    model = NoiseGenerator(SHAPE)
    found, pixels, _, _ = _run(setup, model, tmp_path, shown=2, k=3)
    m = found.metrics
    assert m["memorization_fraction"] == 0.0 and m["memorization_fraction_pixels"] == 0.0
    assert m["nn_distance_median_pixels"] > 5 * m["memorization_threshold_pixels"]
    # The pixel-space neighbours are those of a direct search over the training images.
    flat = pixels.reshape(len(pixels), -1).double() / 255
    shown = found.shown.reshape(2, -1).double() / 255
    direct = torch.cdist(shown, flat).sort(dim=1)
    d, i = found.neighbours["pixels"]
    assert torch.equal(i, direct.indices[:, :3])
    assert torch.allclose(d.double(), direct.values[:, :3], atol=1e-5)
    path, boxes = write_neighbours_png(tmp_path / "n.png", found, pixels, "classifier-x")
    png = np.asarray(Image.open(path).convert("RGB"))
    assert _shows(png, boxes["pixels", 1, 0], found.shown[1])
    assert _shows(png, boxes["pixels", 1, 3], pixels[int(i[1, 2])])
    assert not _shows(png, boxes["pixels", 1, 0], pixels[int(i[1, 0])])



def test_evaluate_neighbours_writes_the_png_beside_the_json(setup, tmp_path, capsys):
    ckpt = save_module_checkpoint(CopyGenerator.of(setup["train"]), tmp_path / "copy.ckpt",
                                  datamodule=setup["dm"])
    result = run_evaluate(setup, ckpt, tmp_path / "eval" / "copy.json", "--neighbours", "4",
                       "--neighbours_k", "3")
    assert result["memorization_fraction"] == 1.0
    assert result["memorization_fraction_pixels"] == 1.0
    assert result["neighbours"] == 4 and result["neighbours_k"] == 3
    assert "percentile 1 " in result["memorization_definition"]
    assert "pixel space" in result["memorization_definition_pixels"]
    png = Path(result["neighbours_png"])
    assert png == tmp_path / "eval" / "neighbours_copy.png"
    image = np.asarray(Image.open(png).convert("RGB"))
    assert image.shape[0] > 4 * 2 * 48 and image.std() > 20  # 4 rows x 2 blocks, not blank
    assert "modes_covered" not in result
    assert "memorized (pixels)" in capsys.readouterr().out


def test_bad_neighbour_options_are_one_line_errors(setup, tmp_path, capsys):
    for args, message in ((["--neighbours", "21"], "--neighbours 21 must lie in 0..--num_samples"),
                          (["--neighbours", "2", "--neighbours_k", "0"], "--neighbours_k must"),
                          (["--memorization_percentile", "100"], "--memorization_percentile")):
        with pytest.raises(SystemExit) as exit_info:
            run_evaluate(setup, tmp_path / "missing.ckpt", tmp_path / "x.json", *args)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("lightning-gen: error: ") and "\n" not in err and message in err
    ckpt = save_module_checkpoint(CopyGenerator.of(setup["train"]), tmp_path / "copy.ckpt",
                                  datamodule=setup["dm"])
    with pytest.raises(SystemExit):
        run_evaluate(setup, ckpt, tmp_path / "x.json", "--neighbours", "2", "--neighbours_k", "40")
    assert "--neighbours_k 40 is more than the 39 other images" in capsys.readouterr().err


def test_diagnose_needs_the_kept_features(setup, tmp_path):
    ev = evaluator(setup["clf"], tmp_path / "cache")
    ev.keep_generated = False
    model = NoiseGenerator(SHAPE)
    ev.evaluate(model, setup["dm"], "test", 8, seed=0)
    assert not hasattr(ev, "last_generated")
    with pytest.raises(RuntimeError, match="keep_generated"):
        diagnose(model, setup["dm"], ev, tmp_path / "x.json", reference="test", num_samples=8,
                 seed=0, batch_size=16, device="cpu", neighbours=2)


def test_two_ddp_processes_give_the_single_process_numbers_and_png(setup, tmp_path):
    # Batches of 4: rank 1 draws batch 1, so rank 0 draws it again for the PNG's rows 4-5.
    ckpt = save_module_checkpoint(CopyGenerator.of(setup["train"][:10]), tmp_path / "copy.ckpt",
                                  datamodule=setup["dm"])
    args = ["--neighbours", "6", "--neighbours_k", "2", "--batch_size", "4"]
    single = run_evaluate(setup, ckpt, tmp_path / "one" / "r.json", *args)
    root = Path(__file__).resolve().parent.parent
    out = tmp_path / "two" / "r.json"
    proc = subprocess.run(
        [sys.executable, "-m", "lightning_gen.cli", "evaluate", "--ckpt_path", str(ckpt),
         "--num_samples", "20", "--reference", "test", "--feature_extractor",
         f"classifier:{setup['clf']}", "--kid_subset_size", "8", "--kid_subsets", "2",
         "--isc_splits", "2", "--accelerator", "cpu", "--devices", "2", "--progress", "false",
         "--trust_checkpoint", "true", "--cache_dir", str(tmp_path / "cache2"), "--out",
         str(out), *args],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    ddp = json.loads(out.read_text())
    assert ddp["devices"] == 2
    for key in ("memorization_fraction", "memorization_fraction_pixels", "nn_distance_median",
                "nn_distance_median_pixels", "memorization_threshold_pixels"):
        assert ddp[key] == pytest.approx(single[key], rel=1e-6, abs=1e-9), key
    one = np.asarray(Image.open(single["neighbours_png"]).convert("RGB"))
    two = np.asarray(Image.open(ddp["neighbours_png"]).convert("RGB"))
    assert one.shape == two.shape and np.array_equal(one, two)
