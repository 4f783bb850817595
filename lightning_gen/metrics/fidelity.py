"""FID, Inception Score, KID and precision/recall from feature matrices, via torch-fidelity.

The formulas are torch-fidelity 0.4's own functions, called on features we extract and gather
ourselves (so the numbers are those ``torch_fidelity.calculate_metrics`` gives on the same images
and weights, and nothing is re-implemented):

* FID (Heusel et al. 2017): ``|mu_1 - mu_2|^2 + tr(S_1 + S_2 - 2 (S_1 S_2)^(1/2))`` on float32
  means (as the TTUR reference code) and float64 covariances (``fid_features_to_statistics``,
  ``fid_statistics_to_metric``).
* IS (Salimans et al. 2016): ``exp E_x KL(p(y|x) || p(y))`` over ``isc_splits`` splits of the
  shuffled samples, mean and std (``isc_features_to_metric``).
* KID (Binkowski et al. 2018): unbiased MMD^2 with the cubic polynomial kernel over
  ``kid_subsets`` random subsets, mean and std (``kid_features_to_metric``).
* Precision / recall (Kynkaanniemi et al. 2019), k-NN balls with ``k = prc_neighborhood``
  (``prc_features_to_metric``, in its memory-saving batched form), on as many real samples as
  generated ones, in the extractor's feature space (the paper, and torch-fidelity's default,
  use VGG-16 features instead: ``--feature_extractor vgg16``).
* Density / coverage (Naeem et al. 2020), k-NN balls of the real samples with
  ``k = dc_neighborhood`` (5), on the same real subset as precision/recall
  (:func:`density_coverage`, batched, on the given device).

A metric that cannot be computed is left out of the result and named, with the reason, in
``result["not_computed"]`` (``{"IS": sentence, ...}``): extractors without class logits (VGG-16,
CLIP, DINOv2) give no Inception Score, and density/coverage need more than ``k`` samples per set.

Generated features are "input 1", real ones "input 2", torch-fidelity's convention.

:class:`FeatureStore` is a torchmetrics ``Metric`` that accumulates per-sample features with
their global sample index; under DDP ``compute()`` gathers every rank's share and sorts by that
index, so the result equals the single-process one on the same seeds.
"""

from __future__ import annotations

import numpy as np
import torch
from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
from torch_fidelity.metric_isc import isc_features_to_metric
from torch_fidelity.metric_kid import kid_features_to_metric
from torch_fidelity.metric_prc import prc_features_to_metric
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat

# Keys of the result dictionaries (also the JSON keys of ``lightning-gen evaluate``).
FID, IS_MEAN, IS_STD = "fid", "is_mean", "is_std"
KID_MEAN, KID_STD, PRECISION, RECALL, GAN_TEST = "kid_mean", "kid_std", "precision", "recall", "gan_test"
DENSITY, COVERAGE = "density", "coverage"
NOT_COMPUTED = "not_computed"
#: Keys of the result that record the protocol (numbers, but not metrics to log or average).
PROTOCOL_KEYS = ("kid_subset_size", "prc_num_real", "dc_neighborhood")


class FeatureStore(Metric):
    """Features, logits and labels of samples, each tagged with its global index.

    ``update(index, features, logits, labels)`` appends a batch; ``compute()`` (a collective
    under DDP: every rank must call it) returns ``{"index", "features", "logits", "labels"}`` of
    all ranks, sorted by index, on the CPU. Labels are ``-1`` for unconditional samples.
    """

    full_state_update = False
    is_differentiable = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        for name in ("index", "features", "logits", "labels"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(self, index: torch.Tensor, features: torch.Tensor, logits: torch.Tensor,
               labels: torch.Tensor | None = None) -> None:
        if labels is None:
            labels = torch.full_like(index, -1)
        self.index.append(index.to(self.device, torch.long))
        self.features.append(features.detach().to(self.device, torch.float32))
        self.logits.append(logits.detach().to(self.device, torch.float32))
        self.labels.append(labels.to(self.device, torch.long))

    def compute(self) -> dict[str, torch.Tensor]:
        index = dim_zero_cat(self.index)
        order = torch.argsort(index)
        out = {"index": index[order]}
        for name in ("features", "logits", "labels"):
            out[name] = dim_zero_cat(getattr(self, name))[order].cpu()
        out["index"] = out["index"].cpu()
        if not torch.equal(out["index"], torch.arange(len(index))):
            raise RuntimeError("sample indices are not 0..N-1 once gathered (duplicate shards?)")
        return out


def fid_statistics(features: torch.Tensor) -> dict[str, np.ndarray]:
    """``{"mu": (D,) float32, "sigma": (D, D) float64}`` (torch-fidelity's estimator)."""
    return fid_features_to_statistics(features.detach().cpu().float())


def frechet_distance(stats_1: dict[str, np.ndarray], stats_2: dict[str, np.ndarray]) -> float:
    """Fréchet distance between two Gaussians given as ``{"mu", "sigma"}`` statistics."""
    return float(fid_statistics_to_metric(stats_1, stats_2, verbose=False)["frechet_inception_distance"])


def _squared_distances(a: torch.Tensor, a_sq: torch.Tensor, b: torch.Tensor,
                       b_sq: torch.Tensor) -> torch.Tensor:
    """``|a_i - b_j|^2`` as ``(len(a), len(b))``, from precomputed squared norms (in place:
    one ``(len(a), len(b))`` tensor is allocated)."""
    return (a @ b.T).mul_(-2).add_(a_sq[:, None]).add_(b_sq[None, :]).clamp_min_(0)


def density_coverage(real: torch.Tensor, fake: torch.Tensor, k: int = 5,
                     device: torch.device | str | None = None,
                     max_elements: int = 1 << 26) -> dict[str, float]:
    """Density and coverage (Naeem et al. 2020, "Reliable Fidelity and Diversity Metrics for
    Generative Models", eqs. 3 and 4) of ``fake`` (M, D) against ``real`` (N, D) features.

    With ``NND_k(X_i)`` the distance from real sample ``X_i`` to its ``k``-th nearest neighbour
    among the real samples (itself not counted) and ``B(x, r)`` the open ball of radius ``r``::

        density  = 1 / (k M) * sum_{j=1..M} sum_{i=1..N} 1[Y_j in B(X_i, NND_k(X_i))]
        coverage = 1 / N * sum_{i=1..N} 1[exists j: Y_j in B(X_i, NND_k(X_i))]

    Euclidean distances and strict ``<``, as in the authors' ``prdc`` package. Density counts
    how many real neighbourhoods each generated sample falls into (1 in expectation when both
    sets come from one distribution, unbounded above); coverage is the fraction of real
    neighbourhoods that hold at least one generated sample (at most 1). Unlike precision and
    recall, only the real samples' k-NN balls are used, so outliers among the generated samples
    do not inflate either.

    Squared distances are computed in float64 on ``device`` (``None``: the CPU), one block of
    real rows at a time, so at most ``max_elements`` distances (512 MiB) exist at once, never
    the whole N x N or N x M matrix; besides them, float64 copies of both feature sets (N = M =
    50,000 at D = 2048: 0.8 GB each).

    Returns:
        ``{"density": float, "coverage": float}``.
    """
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"features must be (N, D) and (M, D), got {tuple(real.shape)} and "
                         f"{tuple(fake.shape)}")
    n, m = len(real), len(fake)
    if k < 1 or n <= k or m < 1:
        raise ValueError(f"density/coverage with k = {k} need more than {k} real samples and "
                         f"at least one generated sample, got {n} and {m}")
    dev = torch.device(device) if device is not None else torch.device("cpu")
    x = real.to(dev, torch.float64)
    y = fake.to(dev, torch.float64)
    x_sq, y_sq = (x * x).sum(1), (y * y).sum(1)
    block = max(1, max_elements // max(n, m))
    # Squared k-NN radii of the real samples: the (k+1)-th smallest distance counts the sample
    # itself (distance 0) as the first.
    radii = torch.empty(n, dtype=torch.float64, device=dev)
    for start in range(0, n, block):
        end = min(n, start + block)
        d = _squared_distances(x[start:end], x_sq[start:end], x, x_sq)  # (b, N)
        radii[start:end] = d.topk(k + 1, dim=1, largest=False).values[:, -1]
    inside_count = torch.zeros(m, dtype=torch.long, device=dev)  # real balls holding Y_j
    covered = torch.zeros((), dtype=torch.long, device=dev)  # real balls holding any Y_j
    for start in range(0, n, block):
        end = min(n, start + block)
        inside = _squared_distances(x[start:end], x_sq[start:end], y, y_sq) < radii[start:end, None]
        inside_count += inside.sum(0)
        covered += inside.any(1).sum()
    return {DENSITY: float(inside_count.sum()) / (k * m), COVERAGE: float(covered) / n}


def fidelity_metrics(
    fake: dict[str, torch.Tensor],
    real: dict[str, torch.Tensor],
    *,
    real_stats: dict[str, np.ndarray] | None = None,
    isc_splits: int = 10,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    prc_neighborhood: int = 3,
    dc_neighborhood: int = 5,
    rng_seed: int = 2020,
    device: torch.device | str | None = None,
) -> dict:
    """All metrics of generated vs. real features (``{"features"[, "logits", "labels"]}``).

    The Inception Score (and ``gan_test``) need class logits: without them (no ``"logits"``, or
    ``(N, 0)`` ones, as the VGG-16, CLIP and DINOv2 extractors give) they are left out and
    named in ``result["not_computed"]``.

    Args:
        fake: Generated samples' features (``input1`` of torch-fidelity).
        real: Reference features (``input2``).
        real_stats: Cached FID statistics of ``real`` (computed here when ``None``).
        isc_splits: Splits of the Inception Score.
        kid_subsets: Subsets of KID.
        kid_subset_size: Subset size of KID, capped at the smaller sample count (reported as
            ``kid_subset_size`` in the result).
        prc_neighborhood: ``k`` of the k-NN balls of precision/recall.
        dc_neighborhood: ``k`` of density/coverage (5 in Naeem et al. 2020), on the same real
            subset as precision/recall (reported as ``dc_neighborhood``).
        rng_seed: torch-fidelity's seed for the IS shuffle and the KID subsets.
        device: Where precision/recall's and density/coverage's pairwise distances are computed (a GPU makes 50k x 50k
            distances fast); ``None``: the CPU.
    """
    f_fake, f_real = fake["features"].float().cpu(), real["features"].float().cpu()
    n_fake, n_real = len(f_fake), len(f_real)
    if n_fake < 2 or n_real < 2:
        raise ValueError(f"FID needs at least 2 samples per set, got {n_fake} and {n_real}")
    logits = fake.get("logits")
    has_logits = logits is not None and logits.ndim == 2 and logits.shape[1] > 0
    if has_logits and n_fake < isc_splits:
        raise ValueError(f"the Inception Score needs at least {isc_splits} samples (one per split)")
    stats_real = real_stats if real_stats is not None else fid_statistics(f_real)
    out = {FID: frechet_distance(fid_statistics(f_fake), stats_real)}
    not_computed = {}
    if has_logits:
        isc = isc_features_to_metric(logits.float().cpu(), splits=isc_splits, shuffle=True,
                                     rng_seed=rng_seed)
        out[IS_MEAN], out[IS_STD] = isc["inception_score_mean"], isc["inception_score_std"]
    else:
        not_computed["IS"] = ("not applicable: this feature space has no class logits (the "
                              "Inception Score needs a classifier's p(y|x))")
    subset = min(kid_subset_size, n_fake, n_real)
    kid = kid_features_to_metric(f_fake, f_real, kid_subsets=kid_subsets, kid_subset_size=subset,
                                 rng_seed=rng_seed, verbose=False)
    out[KID_MEAN], out[KID_STD] = kid["kernel_inception_distance_mean"], kid["kernel_inception_distance_std"]
    out["kid_subset_size"] = subset
    # Precision/recall compare sets of equal size (Kynkaanniemi et al. 2019): k-NN radii shrink
    # as a set grows, so a larger reference set would bias both. A seeded subset of the real
    # features (all of them when there are no more than generated ones).
    f_real_prc = f_real
    if n_real > n_fake:
        keep = np.random.RandomState(rng_seed).permutation(n_real)[:n_fake]
        f_real_prc = f_real[torch.from_numpy(np.sort(keep))]
    out["prc_num_real"] = len(f_real_prc)
    prc_device = torch.device(device) if device is not None else torch.device("cpu")
    prc = prc_features_to_metric(f_fake.to(prc_device), f_real_prc.to(prc_device),
                                 prc_neighborhood=prc_neighborhood,
                                 prc_batch_size=10000, save_cpu_ram=True, verbose=False)
    out[PRECISION], out[RECALL] = prc["precision"], prc["recall"]
    if min(n_fake, len(f_real_prc)) > dc_neighborhood:
        out.update(density_coverage(f_real_prc, f_fake, dc_neighborhood, device=prc_device))
        out["dc_neighborhood"] = dc_neighborhood
    else:
        not_computed["density/coverage"] = (f"needs more than k = {dc_neighborhood} samples per "
                                            f"set, got {min(n_fake, len(f_real_prc))}")
    labels = fake.get("labels")
    if has_logits and labels is not None and bool((labels >= 0).all()) and len(labels):
        # GAN-test (Shmelkov et al. 2018): the real-data classifier's accuracy on the samples
        # w.r.t. the labels they were drawn for (not Ravuri & Vinyals' CAS, train on samples).
        predicted = logits.argmax(dim=1)
        out[GAN_TEST] = float((predicted == labels.to(predicted.device)).float().mean())
    if not_computed:
        out[NOT_COMPUTED] = not_computed
    return out
