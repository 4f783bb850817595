"""Does the generator copy its training data? Nearest training images of generated samples.

The view of the GAN paper's figures (Goodfellow et al. 2014, Fig. 2: the rightmost column shows
each sample's nearest training example), in two spaces:

* the evaluation extractor's **feature space** (L2 between feature vectors, the training
  split's real features from the reference cache), and
* **pixel space** (L2 between images as uint8 / 255, i.e. values in [0, 1], all C x H x W
  values; the training images through the DataModule's own transform, rounded to uint8 as
  generated samples are).

With a number per space: the **memorization fraction**, the share of generated samples whose
nearest training image is at least as close as the ``q``-th percentile (default 1) of the
distances of training images to their nearest *other* training image (leave-one-out, by index).
A generator that returns training images finds each at distance 0, so its fraction is 1.0;
samples drawn from the data distribution itself score about ``q / 100``; noise scores 0.

Distances are computed in chunks (``torch.cdist`` of ``query_chunk x bank_chunk`` blocks with a
running top-k), so 50,000 samples against 60,000 training images never hold the full matrix;
the ``k`` nearest of each query are then re-measured exactly (``cdist``'s matrix-multiplication
form loses the exact zero of identical vectors).
"""

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from lightning_gen.metrics.evaluator import load_split, rank_and_world
from lightning_gen.metrics.extractors import to_uint8
from lightning_gen.metrics.fidelity import FeatureStore

#: At most this many training images are queried (a seeded subset) for the leave-one-out
#: distances the threshold is a percentile of; each is measured against the whole split.
THRESHOLD_QUERIES = 10_000
#: Extra candidates kept by the chunked search before the exact re-measurement.
EXTRA_CANDIDATES = 4

DEFINITION = (
    "share of the {n} generated samples whose L2 distance to the nearest training image (in {space}) "
    "is at most percentile {q:g} of the distances of training images to their nearest "
    "other training image ({m} of the {n_train} training images queried against all of them); "
    "1.0 for a generator that returns training images, about {q_frac:g} for samples from the "
    "data distribution itself, 0 for noise"
)


def _as_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> [0, 1]; features unchanged (float32)."""
    return x.float() / 255 if x.dtype == torch.uint8 else x.float()


@torch.no_grad()
def nearest(queries: torch.Tensor, bank: torch.Tensor, k: int = 1, *,
            exclude: torch.Tensor | None = None, device: torch.device | str | None = None,
            query_chunk: int = 1024, bank_chunk: int = 16384
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` nearest rows of ``bank`` to each row of ``queries`` (L2).

    Args:
        queries: ``(Q, D)`` features, or uint8 pixels (compared as ``x / 255``).
        bank: ``(B, D)``, the same kind.
        k: Neighbours per query.
        exclude: ``(Q,)`` index into ``bank`` to leave out for each query (a training image
            is not its own neighbour).
        device: Where the distances are computed (default: the CPU).
        query_chunk: Queries per block.
        bank_chunk: Bank rows per block.

    Returns:
        ``(distances, indices)``, both ``(Q, k)`` on the CPU, nearest first; distances
        measured exactly (``||q - b||``, 0 for identical rows).
    """
    device = torch.device(device or "cpu")
    n_bank = len(bank) - (exclude is not None)
    if not 1 <= k <= n_bank:
        raise ValueError(f"asked for {k} nearest neighbours among {n_bank} images")
    keep = min(k + EXTRA_CANDIDATES, n_bank)
    bank = bank.to(device)
    out_d, out_i = [], []
    for qs in range(0, len(queries), query_chunk):
        q = _as_float(queries[qs:qs + query_chunk].to(device))
        best_d = torch.empty(len(q), 0, device=device)
        best_i = torch.empty(len(q), 0, dtype=torch.long, device=device)
        for bs in range(0, len(bank), bank_chunk):
            b = _as_float(bank[bs:bs + bank_chunk])
            d = torch.cdist(q, b)  # (q, b)
            idx = torch.arange(bs, bs + len(b), device=device)
            if exclude is not None:
                mine = exclude[qs:qs + query_chunk].to(device)
                d.masked_fill_(mine[:, None] == idx[None, :], math.inf)
            d = torch.cat([best_d, d], dim=1)
            i = torch.cat([best_i, idx.expand(len(q), -1)], dim=1)
            best_d, pos = d.topk(min(keep, d.shape[1]), dim=1, largest=False)
            best_i = i.gather(1, pos)
        # Exact distances of the candidates, re-sorted (ties: the lower index first).
        exact = (q[:, None, :] - _as_float(bank[best_i])).norm(dim=-1)  # (q, keep)
        order = torch.argsort(exact, dim=1, stable=True)
        out_d.append(exact.gather(1, order)[:, :k].cpu())
        out_i.append(best_i.gather(1, order)[:, :k].cpu())
    return torch.cat(out_d), torch.cat(out_i)


def threshold(bank: torch.Tensor, percentile: float, device=None,
              max_queries: int = THRESHOLD_QUERIES, seed: int = 2020
              ) -> tuple[float, torch.Tensor]:
    """The ``percentile``-th percentile (linear interpolation) of the leave-one-out distances
    of training images to their nearest other training image, over up to ``max_queries`` of
    them (a seeded subset, each measured against the whole bank). Returns it and the distances."""
    n = len(bank)
    if n < 2:
        raise ValueError(f"the training split has {n} image(s); at least 2 are needed for the "
                         "memorization threshold")
    index = torch.arange(n)
    if n > max_queries:
        gen = torch.Generator().manual_seed(seed)
        index = torch.sort(torch.randperm(n, generator=gen)[:max_queries]).values
    d, _ = nearest(bank[index], bank, 1, exclude=index, device=device)
    d = d[:, 0].double()
    return float(torch.quantile(d, percentile / 100)), d


def train_pixels(datamodule, split: str = "train", batch_size: int = 100,
                 progress: bool = False) -> torch.Tensor:
    """The ``split``'s images through the DataModule's transform, rounded to uint8 as generated
    samples are: ``(N, C, H, W)``."""
    dataset = load_split(datamodule, split)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False,
                        num_workers=getattr(datamodule, "num_workers", 0))
    rank, _ = rank_and_world()
    out = []
    for batch in tqdm(loader, desc=f"pixels ({split})", unit="batch",
                      disable=not progress or rank != 0):
        images = batch[0] if isinstance(batch, (list, tuple)) else batch
        out.append(to_uint8(images))
    return torch.cat(out)


def _sample_batches(model, num_samples: int, seed: int, batch_size: int, device, batches):
    """``(b, start, end, uint8 images)`` of the given batches, drawn exactly as
    :meth:`GenerativeEvaluator.generated` draws them (seed ``seed + b``, labels ``i % K``)."""
    from lightning_gen.metrics.evaluator import is_conditional

    conditional = is_conditional(model)
    num_classes = int(model.hparams.num_classes) if conditional else 0
    fork = [device] if device.type == "cuda" else []
    was_training = model.training
    model.eval()
    try:
        for b in batches:
            start, end = b * batch_size, min(num_samples, (b + 1) * batch_size)
            index = torch.arange(start, end, device=device)
            labels = index % num_classes if conditional else None
            with torch.random.fork_rng(devices=fork), torch.no_grad():
                torch.manual_seed(seed + b)
                images = model.sample(end - start, labels)
            yield b, start, end, to_uint8(images)
    finally:
        model.train(was_training)


@dataclass
class Memorization:
    """What :func:`memorization` found; ``metrics`` go into the JSON, the rest into the PNG."""

    metrics: dict
    shown: torch.Tensor  # (N, C, H, W) uint8: the first N samples
    neighbours: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    #: space -> ((N, k) distances, (N, k) training indices)


def memorization(model, datamodule, evaluator, fake_features: torch.Tensor, num_samples: int,
                 seed: int, batch_size: int, device, shown: int, k: int = 5,
                 percentile: float = 1.0, progress: bool = False,
                 pixels: torch.Tensor | None = None) -> tuple[Memorization, torch.Tensor]:
    """Nearest training images of every generated sample, in feature and in pixel space.

    Args:
        model: The generator (drawn again with the evaluation's seeds for pixel space).
        datamodule: Its data; the nearest images come from the whole training split.
        evaluator: The :class:`GenerativeEvaluator` that scored the samples (its extractor and
            reference cache give the training features; its ``reference_info`` is kept).
        fake_features: ``(num_samples, D)`` features of the generated samples, in sample order.
        num_samples, seed, batch_size: The evaluation's (sample ``i``: batch ``i // batch_size``,
            seed ``seed + batch``).
        device: Where distances are computed.
        shown: The first ``shown`` samples are kept, with their ``k`` nearest, for the PNG.
        k: Neighbours per shown sample.
        percentile: ``q`` of the threshold (see the module docstring).
        progress: Show progress bars.
        pixels: The training split as uint8 ``(N, C, H, W)`` (read from the DataModule if
            ``None``).

    Returns:
        The :class:`Memorization` and the training pixels (for the PNG).
    """
    device = torch.device(device or "cpu")
    info = evaluator.reference_info
    try:
        train = evaluator.reference(datamodule, "train", device, progress=progress)["features"]
    finally:
        evaluator.reference_info = info  # the JSON describes the metrics' reference split
    if pixels is None:
        pixels = train_pixels(datamodule, "train", batch_size, progress)
    n_train = len(train)
    if k > n_train - 1:
        raise ValueError(f"--neighbours_k {k} is more than the {n_train - 1} other images of "
                         "the training split; lower it")
    flat = pixels.reshape(len(pixels), -1)
    metrics: dict = {"neighbours": shown, "neighbours_k": k, "memorization_percentile": percentile}
    result = Memorization(metrics, shown=torch.empty(0, dtype=torch.uint8))

    # Feature space: the stored features of every sample.
    tau_f, _ = threshold(train, percentile, device)
    d_f, i_f = nearest(fake_features, train, k, device=device)
    result.neighbours["features"] = (d_f[:shown], i_f[:shown])

    # Pixel space: the samples are drawn again, each rank its batches (as the evaluator does),
    # and only their nearest distances and indices are kept and gathered.
    tau_p, _ = threshold(flat, percentile, device)
    rank, world = rank_and_world()
    n_batches = math.ceil(num_samples / batch_size)
    mine = list(range(rank, n_batches, world))
    store = FeatureStore().to(device)
    kept = {}
    for b, start, end, images in tqdm(
            _sample_batches(model, num_samples, seed, batch_size, device, mine), total=len(mine),
            desc="nearest (pixels)", unit="batch", disable=not progress or rank != 0):
        d, i = nearest(images.reshape(len(images), -1), flat, k, device=device)
        index = torch.arange(start, end)
        # Indices travel as float32 (exact below 2^24 training images) beside the distances.
        store.update(index.to(device), torch.cat([d, i.float()], 1).to(device),
                     torch.zeros(len(index), 0, device=device))
        if start < shown:
            kept[b] = images.cpu()
    gathered = store.compute()
    store.reset()
    d_p, i_p = gathered["features"][:, :k], gathered["features"][:, k:].round().long()
    result.neighbours["pixels"] = (d_p[:shown], i_p[:shown])
    needed = range(math.ceil(shown / batch_size))
    if any(b not in kept for b in needed):  # DDP: batches of other ranks, drawn again here
        kept.update({b: images.cpu() for b, _, _, images in _sample_batches(
            model, num_samples, seed, batch_size, device, [b for b in needed if b not in kept])})
    result.shown = torch.cat([kept[b] for b in needed])[:shown] if shown else result.shown

    for space, d, tau, suffix in (("the extractor's feature space", d_f[:, 0], tau_f, ""),
                                  ("pixel space (uint8 / 255)", d_p[:, 0], tau_p, "_pixels")):
        metrics[f"memorization_fraction{suffix}"] = float((d.double() <= tau).double().mean())
        metrics[f"memorization_threshold{suffix}"] = tau
        metrics[f"nn_distance_median{suffix}"] = float(torch.quantile(d.double(), 0.5))
        metrics[f"memorization_definition{suffix}"] = DEFINITION.format(
            n=num_samples, space=space, q=percentile, m=min(n_train, THRESHOLD_QUERIES),
            n_train=n_train, q_frac=percentile / 100)
    return result, pixels


# ----------------------------------------------------------------------------------------------
# The PNG

MIN_TILE = 48  # px: small images are enlarged by an integer factor (nearest) to at least this
PAD, SEP, GAP = 12, 16, 4  # px: border, after the sample column, between neighbours
TITLE_LINE, HEADER, LABEL = 15, 14, 14  # px: a title line, the column header, a distance label
MIN_WIDTH = 520


def tile_scale(height: int, width: int) -> int:
    """Integer enlargement of an image tile in the PNG (nearest neighbour, no blurring)."""
    return max(1, math.ceil(MIN_TILE / min(height, width)))


def _tile(image: torch.Tensor, scale: int) -> np.ndarray:
    """uint8 ``(C, H, W)`` -> RGB ``(H*s, W*s, 3)`` (grey repeated: figimage would colour-map a
    2-D array)."""
    array = image.permute(1, 2, 0).numpy()
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    return np.repeat(np.repeat(array, scale, axis=0), scale, axis=1)


def write_neighbours_png(path: str | Path, found: Memorization, pixels: torch.Tensor,
                         feature_name: str) -> tuple[Path, dict]:
    """One PNG, two blocks (feature space, then pixel space): a row per shown sample, the sample
    then its ``k`` nearest training images left to right, each labelled with its distance.

    Returns the path and the tile boxes ``{(space, row, col): (top, left, height, width)}`` in
    PNG pixels (``col`` 0: the sample; ``j``: its ``j``-th nearest training image).
    """
    from matplotlib.figure import Figure

    from lightning_gen.runs import atomic_write

    shown = found.shown
    n = len(shown)
    k = found.neighbours["features"][0].shape[1]
    _, h, w = shown.shape[1:]
    s = tile_scale(h, w)
    th, tw = h * s, w * s
    width = max(MIN_WIDTH, 2 * PAD + tw + SEP + k * (tw + GAP))
    metrics = found.metrics
    q = metrics["memorization_percentile"]
    heads = {"features": f"Feature space ({feature_name}): L2 distance of features",
             "pixels": "Pixel space: L2 distance of pixels in [0, 1]"}
    details = {space: (f"memorized (nearest training image at distance <= "
                       f"{metrics['memorization_threshold' + suffix]:.4g}, percentile {q:g} of "
                       f"training images' distances to their nearest other one): "
                       f"{metrics['memorization_fraction' + suffix]:.3g} of all samples")
               for space, suffix in (("features", ""), ("pixels", "_pixels"))}
    # ~8 px per bold 9 pt character, ~6 px per 8 pt one.
    wrapped = {space: (textwrap.wrap(heads[space], (width - 2 * PAD) // 8),
                       textwrap.wrap(details[space], (width - 2 * PAD) // 6)) for space in heads}
    block_h = {space: (len(a) + len(b)) * TITLE_LINE + 6 + HEADER + n * (th + LABEL + GAP)
               for space, (a, b) in wrapped.items()}
    height = PAD + sum(block_h.values()) + PAD * 2
    fig = Figure(figsize=(width / 100, height / 100), dpi=100, facecolor="white")
    boxes: dict = {}
    top = PAD
    for space in ("features", "pixels"):
        head, detail = wrapped[space]
        fig.text(PAD / width, 1 - top / height, "\n".join(head), ha="left", va="top",
                 fontsize=9, fontweight="bold", linespacing=1.25)
        top += len(head) * TITLE_LINE
        fig.text(PAD / width, 1 - top / height, "\n".join(detail), ha="left", va="top",
                 fontsize=8, linespacing=1.25)
        top += len(detail) * TITLE_LINE + 6
        lefts = [PAD] + [PAD + tw + SEP + j * (tw + GAP) for j in range(k)]
        for col, left in enumerate(lefts):
            header = "sample" if col == 0 else f"nn {col}"
            fig.text((left + tw / 2) / width, 1 - (top + HEADER - 2) / height, header,
                     ha="center", va="bottom", fontsize=7, color="0.3")
        top += HEADER
        distances, indices = found.neighbours[space]
        for row in range(n):
            tiles = [shown[row]] + [pixels[int(indices[row, j])] for j in range(k)]
            for col, (left, image) in enumerate(zip(lefts, tiles, strict=True)):
                # figimage counts from the bottom left; origin="upper" keeps the rows' order.
                fig.figimage(_tile(image, s), xo=left, yo=height - top - th, origin="upper")
                boxes[space, row, col] = (top, left, th, tw)
                if col:
                    fig.text((left + tw / 2) / width, 1 - (top + th + 1) / height,
                             f"{float(distances[row, col - 1]):.3g}", ha="center", va="top",
                             fontsize=7)
            top += th + LABEL + GAP
        top += PAD
    path = Path(path)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    return path, boxes
