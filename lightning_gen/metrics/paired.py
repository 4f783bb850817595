"""Paired image-to-image evaluation: PSNR, SSIM, LPIPS (and FID of outputs vs targets).

For any model with ``translate(source)`` and a ``paired_eval`` dict (``y_channel``,
``crop_border``, ``fid``), over the ``(source, target)`` pairs of a split:

* Outputs and targets are first quantised to 8 bits (:func:`~lightning_gen.metrics.extractors.
  to_uint8`, rounded), as the images a paper saves and scores.
* **PSNR** and **SSIM** (torchmetrics; SSIM with Wang et al. 2004's 11x11 Gaussian window,
  sigma 1.5, K = (0.01, 0.03), averaged over the window positions inside the image as their
  MATLAB code and skimage do) per image, then averaged over images (the super-resolution
  papers' convention), on [0, 1] with ``data_range = 1``. With ``y_channel`` (the SR protocol of
  Ledig et al. 2017 and its predecessors) on the luma ``Y`` of ITU-R BT.601 (MATLAB's
  ``rgb2ycbcr``: ``Y = (16 + 65.481 R + 128.553 G + 24.966 B) / 255`` for R, G, B in [0, 1]);
  otherwise on RGB. ``crop_border`` pixels are removed on each side first (the scale factor in
  SR papers).
* **LPIPS** (Zhang et al. 2018) on the whole RGB images in [-1, 1] (grey repeated to RGB), with
  torchmetrics' network (AlexNet by default) and its linear-layer weights; backbone from
  torchvision (downloaded once), or all weights from a local file (:func:`write_lpips_weights`
  writes one; offline clusters), or ``"random"`` (tests only).
* **FID** (when ``fid``): the Frechet distance between the extractor features of the outputs
  and of the targets of the same pairs.

The result names the protocol (``paired_protocol``) so numbers are never compared across
protocols by accident.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset
from torchmetrics.functional.image import (
    peak_signal_noise_ratio,
    structural_similarity_index_measure,
)
from tqdm.auto import tqdm

from lightning_gen.metrics.extractors import to_uint8
from lightning_gen.metrics.fidelity import fid_statistics, frechet_distance

#: ITU-R BT.601 luma on [0, 1] RGB (MATLAB rgb2ycbcr), offset 16/255.
Y_WEIGHTS = (65.481 / 255, 128.553 / 255, 24.966 / 255)
Y_OFFSET = 16 / 255
LPIPS_NETS = ("alex", "vgg", "squeeze")
LPIPS_MIN_SIZE = 32  # AlexNet's pooling leaves nothing of smaller images
SSIM_WINDOW = 11  # torchmetrics' Gaussian window for sigma 1.5: int(3.5 * 1.5 + 0.5) * 2 + 1


def rgb_to_y(x01: torch.Tensor) -> torch.Tensor:
    """``(B, 3, H, W)`` RGB in [0, 1] -> ``(B, 1, H, W)`` BT.601 luma in [16/255, 235/255];
    a grey ``(B, 1, H, W)`` image is returned unchanged (it is its own luminance)."""
    if x01.shape[1] == 1:
        return x01
    w = torch.tensor(Y_WEIGHTS, dtype=x01.dtype, device=x01.device).view(1, 3, 1, 1)
    return (x01 * w).sum(1, keepdim=True) + Y_OFFSET


def prepare(images: torch.Tensor, y_channel: bool, crop_border: int) -> torch.Tensor:
    """Images in [-1, 1] as PSNR/SSIM see them: 8-bit rounded, on [0, 1] (float64), luma
    if ``y_channel``, ``crop_border`` pixels removed on every side."""
    x = to_uint8(images).double() / 255
    if y_channel:
        x = rgb_to_y(x)
    if crop_border > 0:
        x = x[..., crop_border:-crop_border, crop_border:-crop_border]
    return x


def psnr_ssim(output: torch.Tensor, target: torch.Tensor, y_channel: bool = True,
              crop_border: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image PSNR (dB) and SSIM of ``output`` against ``target`` (both ``(B, C, H, W)`` in
    [-1, 1]) under the protocol above."""
    a, b = prepare(output, y_channel, crop_border), prepare(target, y_channel, crop_border)
    if min(a.shape[-2:]) < SSIM_WINDOW:
        raise ValueError(f"SSIM's 11x11 window needs images of at least 11x11 after cropping "
                         f"{crop_border} border pixels, got {tuple(a.shape[-2:])}")
    psnr = peak_signal_noise_ratio(a, b, data_range=1.0, reduction="none", dim=(1, 2, 3))
    # torchmetrics (1.9) pads the images by reflection and averages the SSIM map over every
    # pixel; Wang et al.'s MATLAB code and skimage average over the positions where the 11x11
    # window lies inside the image ('valid'). Crop the map to those.
    _, full = structural_similarity_index_measure(a, b, data_range=1.0, reduction="none",
                                                  return_full_image=True)
    pad = SSIM_WINDOW // 2
    ssim = full[..., pad:-pad, pad:-pad].mean(dim=(1, 2, 3))
    return psnr.float(), ssim.float()


def build_lpips(weights: str | None = None, net: str = "alex") -> torch.nn.Module:
    """torchmetrics' LPIPS network, frozen.

    Args:
        weights: ``None``: torchvision's ImageNet backbone (downloaded once) and torchmetrics'
            bundled linear layers (the published LPIPS); a file written by
            :func:`write_lpips_weights` (every weight, offline); ``"random"``: random backbone
            and linear layers (tests; the same ones at every call, seed 0).
        net: ``alex`` (LPIPS's default), ``vgg`` or ``squeeze``.
    """
    from torchmetrics.functional.image.lpips import _NoTrainLpips

    if net not in LPIPS_NETS:
        raise ValueError(f"LPIPS net must be one of {', '.join(LPIPS_NETS)}, got {net!r}")
    if weights is None:
        try:
            return _NoTrainLpips(net=net, pretrained=True)
        except OSError as err:  # no network (URLError) and no backbone in the hub cache
            raise FileNotFoundError(
                f"could not download LPIPS's {net} backbone ({err}); on a machine with network "
                "access write all its weights to a file with lightning_gen.metrics.paired."
                "write_lpips_weights and pass it as --lpips_weights FILE") from err
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # "random": the same random network every time (one protocol)
        model = _NoTrainLpips(net=net, pretrained=weights != "random", pnet_rand=True)
    if weights == "random":  # LPIPS's linear layers are non-negative (clamped in training)
        for lin in model.lins:
            lin.model[-1].weight.data.abs_()
    else:
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"LPIPS weights file not found: {path}; write one with "
                                    "lightning_gen.metrics.paired.write_lpips_weights on a "
                                    "machine with network access")
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval().requires_grad_(False)


def write_lpips_weights(path: str | Path, net: str = "alex", random: bool = False) -> Path:
    """Save every weight of the LPIPS network (``random``: a random-initialised one, for
    tests) to ``path``, for :func:`build_lpips` on a machine without network access."""
    model = build_lpips("random" if random else None, net)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return path


def lpips_distance(lpips: torch.nn.Module, output: torch.Tensor,
                   target: torch.Tensor) -> torch.Tensor:
    """Per-image LPIPS of images in [-1, 1] (8-bit rounded as for PSNR; grey -> RGB)."""
    a, b = (to_uint8(x).float() / 127.5 - 1 for x in (output, target))
    if a.shape[1] == 1:
        a, b = a.expand(-1, 3, -1, -1), b.expand(-1, 3, -1, -1)
    return lpips(a, b).flatten().float()


def protocol_description(paired_eval: dict, lpips_net: str, lpips_weights: str | None,
                         extractor_name: str | None) -> str:
    space = "Y (BT.601)" if paired_eval.get("y_channel") else "RGB"
    crop = int(paired_eval.get("crop_border", 0))
    lp = "published" if lpips_weights is None else (
        "random weights" if lpips_weights == "random" else "weights file")
    text = (f"PSNR/SSIM on {space}, {crop} border px cropped, 8-bit, per-image mean; "
            f"LPIPS {lpips_net} ({lp})")
    if paired_eval.get("fid"):
        text += f"; FID outputs vs targets ({extractor_name})"
    return text


@torch.no_grad()
def paired_metrics(model, dataset, *, batch_size: int = 100, device=None,
                   num_pairs: int | None = None, lpips: torch.nn.Module | None = None,
                   extractor=None, num_workers: int = 0, progress: bool = False,
                   seed: int | None = None) -> dict:
    """PSNR, SSIM, LPIPS (and FID) of ``model.translate`` over the ``(source, target)`` items
    of ``dataset`` (the first ``num_pairs``; ``None``: all), under ``model.paired_eval``.

    ``seed``: batch ``b`` is translated with torch's generators seeded ``seed + b`` (and the
    caller's random state left as it was), so a model whose translation draws noise (pix2pix's
    paper inference: dropout on at test time) gives the same numbers for the same seed and
    ``batch_size`` (its batch norm also uses the test batch's statistics). ``None``: the
    current random state.

    Returns the means (``psnr``, ``ssim``, ``lpips``, ``fid``) and ``psnr_std``, ``ssim_std``,
    ``lpips_std`` over images, and ``num_pairs``; ``not_computed`` says why a metric is
    missing (LPIPS of images under 32 px).
    """
    options = dict(model.paired_eval)
    if options.get("fid") and extractor is None:
        raise ValueError("paired_eval asks for FID: pass a feature extractor")
    device = torch.device(device) if device is not None else model.device
    n = len(dataset) if num_pairs is None else min(int(num_pairs), len(dataset))
    if n < 1:
        raise ValueError("the evaluation split holds no image pairs")
    loader = DataLoader(Subset(dataset, range(n)), batch_size=batch_size, shuffle=False,
                        num_workers=num_workers)
    psnrs, ssims, lpipss, out_feats, tgt_feats = [], [], [], [], []
    not_computed: dict[str, str] = {}
    if lpips is not None:
        lpips = lpips.to(device)
    was_training = model.training
    model.eval()
    try:
        batches = tqdm(loader, desc="pairs", unit="batch", disable=not progress)
        for index, (source, target) in enumerate(batches):
            source, target = source.to(device), target.to(device)
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else [],
                                       enabled=seed is not None):
                if seed is not None:
                    torch.manual_seed(seed + index)
                output = model.translate(source).float().clamp(-1, 1)
            if output.shape != target.shape:
                raise ValueError(f"{type(model).__name__}.translate gives {tuple(output.shape)} "
                                 f"for targets of shape {tuple(target.shape)}")
            psnr, ssim = psnr_ssim(output, target, bool(options.get("y_channel")),
                                   int(options.get("crop_border", 0)))
            psnrs.append(psnr.cpu())
            ssims.append(ssim.cpu())
            if lpips is not None and min(target.shape[-2:]) < LPIPS_MIN_SIZE:
                lpips, not_computed["LPIPS"] = None, (
                    f"images of {tuple(target.shape[-2:])} px are smaller than the "
                    f"{LPIPS_MIN_SIZE} px LPIPS's networks need")
            if lpips is not None:
                lpipss.append(lpips_distance(lpips, output, target).cpu())
            if options.get("fid"):
                extractor.to(device)
                out_feats.append(extractor(to_uint8(output))[0].double().cpu())
                tgt_feats.append(extractor(to_uint8(target))[0].double().cpu())
    finally:
        model.train(was_training)
    result: dict = {"num_pairs": n, **({"not_computed": not_computed} if not_computed else {})}
    for name, values in (("psnr", psnrs), ("ssim", ssims), ("lpips", lpipss)):
        if values:
            v = torch.cat(values).double()
            result[name] = float(v.mean())
            result[f"{name}_std"] = float(v.std()) if len(v) > 1 else 0.0
    if options.get("fid"):
        if n < 2:
            raise ValueError("FID needs at least 2 pairs")
        result["fid"] = float(frechet_distance(fid_statistics(torch.cat(out_feats)),
                                               fid_statistics(torch.cat(tgt_feats))))
    return result
