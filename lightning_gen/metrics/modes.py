"""Does an unconditional generator cover every mode (class) of the data?

The evaluator classifier (``classifier:<ckpt>`` extractor) labels each generated sample with
its most likely class (argmax of its logits); the histogram of those labels is compared with
the **true labels** of the real reference split:

* ``modes_covered``: classes whose share of the generated samples is at least
  ``mode_share_threshold`` (default ``0.1 / K`` for ``K`` classes: a tenth of a uniform share);
* ``mode_kl``: ``KL(real || generated) = sum_c p_real(c) log(p_real(c) / p_gen(c))`` in nats,
  with ``p_gen`` Laplace-smoothed, ``(count_c + 1) / (N + K)``, so a missing class costs
  ``p_real(c) log(p_real(c) (N + K))`` rather than infinity. This direction is the one that
  punishes dropped modes (a class the data has and the samples lack); the classifier's own
  errors on generated images add to it.

The same counts go to the JSON (``mode_histogram``, ``mode_real_histogram``) and to a bar chart
(generated vs. real share per class).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from lightning_gen.metrics.evaluator import load_split

DEFINITION = (
    "argmax of the evaluator classifier's logits on each of the {n} generated samples; a class is "
    "covered when its share of them is at least {threshold:.4g}; mode_kl = KL(real || generated) "
    "in nats between the true labels of the {split} split and the generated class shares, "
    "Laplace-smoothed ((count + 1) / (N + K))"
)


def class_counts(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``(K,)`` int64 counts of ``labels`` in ``0..K-1``."""
    labels = labels.long().flatten()
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"class labels must lie in 0..{num_classes - 1}, got "
                         f"{int(labels.min())}..{int(labels.max())}: the classifier's number of "
                         "classes does not fit this data")
    return torch.bincount(labels, minlength=num_classes)


def mode_statistics(generated: torch.Tensor, real: torch.Tensor,
                    threshold: float | None = None) -> dict:
    """Coverage and ``KL(real || generated)`` from ``(K,)`` class counts (see the module
    docstring). ``threshold``: share a class needs to count as covered (``None``: ``0.1 / K``)."""
    k = len(generated)
    n = int(generated.sum())
    if n < 1 or int(real.sum()) < 1:
        raise ValueError("mode coverage needs at least one generated and one real image")
    threshold = 0.1 / k if threshold is None else float(threshold)
    gen = generated.double()
    p_real = real.double() / real.sum()
    p_gen = (gen + 1) / (n + k)
    present = p_real > 0
    kl = float((p_real[present] * (p_real[present] / p_gen[present]).log()).sum())
    return {
        "modes_covered": int((gen / n >= threshold).sum()),
        "modes_total": k,
        "mode_share_threshold": threshold,
        "mode_kl": kl,
        "mode_histogram": [int(c) for c in generated],
        "mode_real_histogram": [int(c) for c in real],
    }


def real_labels(datamodule, split: str) -> torch.Tensor:
    """The class labels of ``split`` (from the dataset's ``targets``/``labels`` when it has
    them, else read item by item)."""
    if getattr(datamodule, "label_kind", "class") != "class":
        raise ValueError(f"{type(datamodule).__name__} has {datamodule.label_kind} targets, not "
                         "classes: mode coverage needs class labels; drop --mode_coverage")
    dataset = load_split(datamodule, split)
    for name in ("targets", "labels"):
        values = getattr(dataset, name, None)
        if values is not None and len(values) == len(dataset):
            return torch.as_tensor(np.asarray(values)).long()
    return torch.tensor([int(dataset[i][1]) for i in range(len(dataset))])


def mode_coverage(logits: torch.Tensor, datamodule, split: str,
                  threshold: float | None = None) -> dict:
    """:func:`mode_statistics` of the classifier's predictions on generated samples (their
    ``(N, K)`` logits) against the true labels of ``split``, with its definition."""
    k = logits.shape[1]
    out = mode_statistics(class_counts(logits.argmax(dim=1), k),
                          class_counts(real_labels(datamodule, split), k), threshold)
    out["mode_definition"] = DEFINITION.format(n=len(logits), threshold=out["mode_share_threshold"],
                                               split=split)
    return out


def modes_figure(stats: dict, split: str = "reference"):
    """A bar chart: generated vs. real share per class, the threshold as a dashed line."""
    from matplotlib.figure import Figure

    gen = np.asarray(stats["mode_histogram"], dtype=float)
    real = np.asarray(stats["mode_real_histogram"], dtype=float)
    k = len(gen)
    x = np.arange(k)
    fig = Figure(figsize=(max(6.4, 0.45 * k + 1.5), 4.0), dpi=100, layout="constrained")
    ax = fig.subplots()
    ax.bar(x - 0.2, gen / gen.sum(), width=0.4, color="tab:blue",
           label=f"generated ({int(gen.sum())} samples, classifier's prediction)")
    ax.bar(x + 0.2, real / real.sum(), width=0.4, color="tab:orange",
           label=f"real ({int(real.sum())} {split} images, true labels)")
    ax.axhline(stats["mode_share_threshold"], color="0.3", linestyle="--", linewidth=1,
               label=f"covered at share >= {stats['mode_share_threshold']:.3g}")
    ax.set_xticks(x, [str(c) for c in x], fontsize=8 if k <= 20 else 6)
    ax.set_xlabel("class")
    ax.set_ylabel("share of images")
    ax.set_title(f"{stats['modes_covered']} of {k} classes covered; "
                 f"KL(real || generated) = {stats['mode_kl']:.4g} nats", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return fig


def write_modes_png(path: str | Path, stats: dict, split: str = "reference") -> Path:
    from lightning_gen.runs import atomic_write

    fig = modes_figure(stats, split)
    path = Path(path)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    return path
