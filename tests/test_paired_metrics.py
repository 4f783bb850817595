"""Paired image-to-image metrics (lightning_gen.metrics.paired): PSNR and SSIM against
independent numpy implementations on known pairs, the BT.601 luma, border cropping, LPIPS with
random and file weights, FID of outputs vs targets, and the model-independent loop that
``lightning-gen evaluate`` runs for any model with ``paired_eval`` (pix2pix uses it unchanged).
scikit-image is not installed here, so the references are written out below."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.signal import correlate2d
from torch import nn
from torch.utils.data import TensorDataset

from lightning_gen.metrics.extractors import FeatureExtractor
from lightning_gen.metrics.fidelity import fid_statistics, frechet_distance
from lightning_gen.metrics.paired import (
    build_lpips,
    lpips_distance,
    paired_metrics,
    prepare,
    psnr_ssim,
    rgb_to_y,
    write_lpips_weights,
)


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)  # small images: a second thread only adds contention


def _pair(seed: int = 0, n: int = 3, size: int = 24, channels: int = 3):
    g = torch.Generator().manual_seed(seed)
    target = torch.rand(n, channels, size, size, generator=g) * 2 - 1
    output = (target + 0.2 * torch.randn(target.shape, generator=g)).clamp(-1, 1)
    return output, target


def _uint8(x: torch.Tensor) -> np.ndarray:
    return np.round((x.double().numpy().clip(-1, 1) + 1) * 127.5)


def _y(rgb255: np.ndarray) -> np.ndarray:  # MATLAB rgb2ycbcr's Y on [0, 255] inputs, in [0, 1]
    r, g, b = rgb255[:, 0], rgb255[:, 1], rgb255[:, 2]
    return ((16 + (65.481 * r + 128.553 * g + 24.966 * b) / 255) / 255)[:, None]


def _ssim_reference(a: np.ndarray, b: np.ndarray) -> float:
    """Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, K1 = 0.01, K2 = 0.03, L = 1, over
    the positions where the window fits ('valid'), averaged."""
    x = np.arange(11) - 5
    g = np.exp(-(x ** 2) / (2 * 1.5 ** 2))
    w = np.outer(g, g) / np.outer(g, g).sum()

    def filt(img):
        return correlate2d(img, w, mode="valid")

    c1, c2 = 0.01 ** 2, 0.03 ** 2
    mu_a, mu_b = filt(a), filt(b)
    var_a = filt(a * a) - mu_a ** 2
    var_b = filt(b * b) - mu_b ** 2
    cov = filt(a * b) - mu_a * mu_b
    ssim = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1)
                                                        * (var_a + var_b + c2))
    return float(ssim.mean())


def test_luma_is_bt601():
    x = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]).view(3, 3, 1, 1)
    y = rgb_to_y(x).flatten()
    torch.testing.assert_close(y, torch.tensor([235 / 255, 16 / 255, (16 + 65.481) / 255]))
    grey = torch.rand(2, 1, 4, 4)
    assert torch.equal(rgb_to_y(grey), grey)


@pytest.mark.parametrize(("y_channel", "crop"), [(True, 4), (False, 0), (True, 0)])
def test_psnr_and_ssim_equal_independent_computations(y_channel, crop):
    # Known pairs: 8-bit rounded, luma or RGB, border cropped; per image, then averaged.
    # Tolerance: 1e-4 dB (PSNR), 1e-5 (SSIM), both computed in float64.
    output, target = _pair()
    psnr, ssim = psnr_ssim(output, target, y_channel=y_channel, crop_border=crop)
    a, b = _uint8(output), _uint8(target)
    if y_channel:
        a, b = _y(a), _y(b)
    else:
        a, b = a / 255, b / 255
    if crop:
        a, b = a[..., crop:-crop, crop:-crop], b[..., crop:-crop, crop:-crop]
    for i in range(len(output)):
        mse = np.mean((a[i] - b[i]) ** 2)
        assert abs(float(psnr[i]) - 10 * math.log10(1 / mse)) < 1e-4
        expected = np.mean([_ssim_reference(a[i][c], b[i][c]) for c in range(a.shape[1])])
        assert abs(float(ssim[i]) - expected) < 1e-5
    same_psnr, same_ssim = psnr_ssim(target, target, y_channel, crop)
    assert torch.isinf(same_psnr).all() and torch.allclose(same_ssim, torch.ones(3))


def test_known_psnr_of_a_constant_offset():
    # A uniform error of 8 grey levels on RGB: PSNR = 20 log10(255 / 8) exactly.
    target = torch.zeros(1, 3, 16, 16)
    output = torch.full_like(target, 8 / 127.5)
    psnr, _ = psnr_ssim(output, target, y_channel=False)
    assert abs(float(psnr) - 20 * math.log10(255 / 8)) < 1e-4


def test_crop_and_small_images():
    x = torch.zeros(1, 3, 20, 20)
    assert prepare(x, True, 4).shape == (1, 1, 12, 12)
    with pytest.raises(ValueError, match="11x11"):
        psnr_ssim(x, x, crop_border=5)


@pytest.fixture(scope="module")
def lpips() -> nn.Module:
    torch.manual_seed(0)
    return build_lpips("random")


def test_lpips_random_and_file_weights(tmp_path, lpips):
    output, target = _pair(size=32)
    d = lpips_distance(lpips, output, target)
    assert d.shape == (3,) and (d > 0).all()
    torch.testing.assert_close(lpips_distance(lpips, target, target), torch.zeros(3))
    torch.testing.assert_close(lpips_distance(lpips, target, output), d, rtol=1e-5, atol=1e-7)
    path = write_lpips_weights(tmp_path / "lpips.pth", random=True)
    again = build_lpips(str(path))  # every weight from the file: the same network twice
    saved = torch.load(path, weights_only=True)
    for key, value in again.state_dict().items():
        torch.testing.assert_close(value, saved[key], msg=key)
    assert torch.isfinite(lpips_distance(again, output, target)).all()
    grey_out, grey_tgt = _pair(size=32, channels=1)
    assert lpips_distance(again, grey_out, grey_tgt).shape == (3,)
    with pytest.raises(FileNotFoundError, match="LPIPS weights"):
        build_lpips(str(tmp_path / "missing.pth"))
    with pytest.raises(ValueError, match="alex"):
        build_lpips("random", net="resnet")


class _MeanFeatures(FeatureExtractor):
    """Per-channel means and variances of uint8 images as features (a tiny stand-in)."""

    name = "mean-features"

    def forward(self, images):
        x = images.float() / 255
        feats = torch.cat([x.mean((2, 3)), x.var((2, 3)), x[:, :, :4, :4].flatten(1)], 1)
        return feats, feats.new_zeros(len(x), 0)


class _Translator(nn.Module):
    """A generic paired model: ``translate`` adds a fixed offset (nothing SRGAN-specific)."""

    paired_eval = {"y_channel": False, "crop_border": 0, "fid": True}

    def __init__(self, offset: float) -> None:
        super().__init__()
        self.offset = offset
        self.dummy = nn.Parameter(torch.zeros(()))

    @property
    def device(self):
        return self.dummy.device

    def translate(self, source):
        return (source + self.offset).clamp(-1, 1)


def test_paired_loop_is_generic_and_fid_compares_outputs_with_targets(lpips):
    g = torch.Generator().manual_seed(1)
    target = torch.rand(20, 3, 32, 32, generator=g) * 2 - 1
    dataset = TensorDataset(target.clone(), target)  # source = target: identity task
    extractor = _MeanFeatures()
    model = _Translator(0.25)
    result = paired_metrics(model, dataset, batch_size=6, num_pairs=18, lpips=lpips,
                            extractor=extractor)
    assert result["num_pairs"] == 18
    output = model.translate(target[:18])
    psnr, ssim = psnr_ssim(output, target[:18], y_channel=False)
    assert abs(result["psnr"] - float(psnr.double().mean())) < 1e-4
    assert abs(result["ssim"] - float(ssim.double().mean())) < 1e-6
    from lightning_gen.metrics.extractors import to_uint8

    expected_fid = frechet_distance(fid_statistics(extractor(to_uint8(output))[0]),
                                    fid_statistics(extractor(to_uint8(target[:18]))[0]))
    assert expected_fid > 0 and abs(result["fid"] - expected_fid) < 1e-6 * max(1, expected_fid)
    perfect = paired_metrics(_Translator(0.0), dataset, batch_size=6, lpips=lpips,
                             extractor=extractor)
    assert perfect["num_pairs"] == 20 and math.isinf(perfect["psnr"])
    assert abs(perfect["fid"]) < 1e-6 and perfect["lpips"] == 0.0
    assert result["lpips"] > 0 and "not_computed" not in result
    with pytest.raises(ValueError, match="feature extractor"):
        paired_metrics(model, dataset, lpips=None)
    small = TensorDataset(target[:4, :, :16, :16], target[:4, :, :16, :16])
    no_lpips = paired_metrics(model, small, lpips=lpips, extractor=extractor)
    assert "lpips" not in no_lpips and "LPIPS" in no_lpips["not_computed"]
