"""FID, Inception Score, KID and precision/recall from feature matrices, via torch-fidelity.

The formulas are torch-fidelity 0.4's own functions, called on features we extract and gather
ourselves (so the numbers are those ``torch_fidelity.calculate_metrics`` gives on the same images
and weights, and nothing is re-implemented):

* FID (Heusel et al. 2017): ``|mu_1 - mu_2|^2 + tr(S_1 + S_2 - 2 (S_1 S_2)^(1/2))`` on float64
  means and covariances (``fid_features_to_statistics``, ``fid_statistics_to_metric``).
* IS (Salimans et al. 2016): ``exp E_x KL(p(y|x) || p(y))`` over ``isc_splits`` splits of the
  shuffled samples, mean and std (``isc_features_to_metric``).
* KID (Binkowski et al. 2018): unbiased MMD^2 with the cubic polynomial kernel over
  ``kid_subsets`` random subsets, mean and std (``kid_features_to_metric``).
* Precision / recall (Kynkaanniemi et al. 2019), k-NN balls with ``k = prc_neighborhood``
  (``prc_features_to_metric``, in its memory-saving batched form), on as many real samples as
  generated ones, in the extractor's feature space (the paper, and torch-fidelity's default,
  use VGG-16 features instead).

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
KID_MEAN, KID_STD, PRECISION, RECALL, CAS = "kid_mean", "kid_std", "precision", "recall", "cas"


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
    """``{"mu": (D,), "sigma": (D, D)}`` in float64 (torch-fidelity's estimator)."""
    return fid_features_to_statistics(features.detach().cpu().float())


def frechet_distance(stats_1: dict[str, np.ndarray], stats_2: dict[str, np.ndarray]) -> float:
    """Fréchet distance between two Gaussians given as ``{"mu", "sigma"}`` statistics."""
    return float(fid_statistics_to_metric(stats_1, stats_2, verbose=False)["frechet_inception_distance"])


def fidelity_metrics(
    fake: dict[str, torch.Tensor],
    real: dict[str, torch.Tensor],
    *,
    real_stats: dict[str, np.ndarray] | None = None,
    isc_splits: int = 10,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    prc_neighborhood: int = 3,
    rng_seed: int = 2020,
    device: torch.device | str | None = None,
) -> dict[str, float]:
    """All metrics of generated vs. real features (``{"features", "logits"[, "labels"]}``).

    Args:
        fake: Generated samples' features (``input1`` of torch-fidelity).
        real: Reference features (``input2``).
        real_stats: Cached FID statistics of ``real`` (computed here when ``None``).
        isc_splits: Splits of the Inception Score.
        kid_subsets: Subsets of KID.
        kid_subset_size: Subset size of KID, capped at the smaller sample count (reported as
            ``kid_subset_size`` in the result).
        prc_neighborhood: ``k`` of the k-NN balls of precision/recall.
        rng_seed: torch-fidelity's seed for the IS shuffle and the KID subsets.
        device: Where precision/recall's pairwise distances are computed (a GPU makes 50k x 50k
            distances fast); ``None``: the CPU.
    """
    f_fake, f_real = fake["features"].float().cpu(), real["features"].float().cpu()
    n_fake, n_real = len(f_fake), len(f_real)
    if n_fake < 2 or n_real < 2:
        raise ValueError(f"FID needs at least 2 samples per set, got {n_fake} and {n_real}")
    if n_fake < isc_splits:
        raise ValueError(f"the Inception Score needs at least {isc_splits} samples (one per split)")
    stats_real = real_stats if real_stats is not None else fid_statistics(f_real)
    out = {FID: frechet_distance(fid_statistics(f_fake), stats_real)}
    isc = isc_features_to_metric(fake["logits"].float().cpu(), splits=isc_splits, shuffle=True,
                                 rng_seed=rng_seed)
    out[IS_MEAN], out[IS_STD] = isc["inception_score_mean"], isc["inception_score_std"]
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
    labels = fake.get("labels")
    if labels is not None and bool((labels >= 0).all()) and len(labels):
        predicted = fake["logits"].argmax(dim=1)
        out[CAS] = float((predicted == labels.to(predicted.device)).float().mean())
    return out
