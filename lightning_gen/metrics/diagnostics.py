"""``lightning-gen evaluate --neighbours N`` and ``--mode_coverage``: does the generator copy its
training data (:mod:`~lightning_gen.metrics.memorization`), does it cover every class
(:mod:`~lightning_gen.metrics.modes`)? Numbers into the evaluation's JSON, pictures beside it:
``neighbours_<json stem>.png`` and ``modes_<json stem>.png``.

Both reuse the features and logits the evaluation computed (the evaluator keeps them when
``keep_generated`` is set); memorization in pixel space draws the samples a second time with
the same seeds.
"""

from __future__ import annotations

import sys
from pathlib import Path

from lightning_gen.metrics.evaluator import is_conditional
from lightning_gen.metrics.extractors import ClassifierExtractor
from lightning_gen.metrics.memorization import memorization, write_neighbours_png
from lightning_gen.metrics.modes import mode_coverage as class_coverage
from lightning_gen.metrics.modes import write_modes_png


def check_options(feature_extractor: str, num_samples: int, neighbours: int, neighbours_k: int,
                  memorization_percentile: float, mode_coverage: bool,
                  mode_threshold: float | None) -> None:
    """Refuse, before any work, options that cannot work (one-line ``ValueError``s)."""
    if neighbours < 0 or neighbours > num_samples:
        raise ValueError(f"--neighbours {neighbours} must lie in 0..--num_samples "
                         f"({num_samples}): it is the number of samples shown")
    if neighbours_k < 1:
        raise ValueError(f"--neighbours_k must be at least 1, got {neighbours_k}")
    if not 0 < memorization_percentile < 100:
        raise ValueError(f"--memorization_percentile must lie in (0, 100), got "
                         f"{memorization_percentile}")
    if mode_coverage and not feature_extractor.startswith("classifier:"):
        raise ValueError("--mode_coverage true needs a classifier extractor (--feature_extractor "
                         "classifier:<ckpt of experiments/evaluator_*.yaml>): its predictions "
                         "label the samples")
    if mode_threshold is not None and not 0 < mode_threshold <= 1:
        raise ValueError(f"--mode_threshold is a share of the samples in (0, 1], got "
                         f"{mode_threshold}")


def wanted(neighbours: int, mode_coverage: bool) -> bool:
    """Whether the evaluator must keep the generated features for :func:`diagnose`."""
    return neighbours > 0 or bool(mode_coverage)


def diagnose(model, datamodule, evaluator, json_path: str | Path, *, reference: str,
             num_samples: int, seed: int, batch_size: int, device, rank0: bool = True,
             progress: bool = False, neighbours: int = 0, neighbours_k: int = 5,
             memorization_percentile: float = 1.0, mode_coverage: bool = False,
             mode_threshold: float | None = None) -> dict:
    """Memorization (``neighbours > 0``) and mode coverage (``mode_coverage``, unconditional
    models only: a conditional one gets a one-line note) of the samples ``evaluator`` has just
    scored; PNGs written by rank 0 beside ``json_path``."""
    fake = evaluator.__dict__.pop("last_generated", None)
    json_path = Path(json_path)
    out: dict = {}
    if wanted(neighbours, mode_coverage) and fake is None:
        raise RuntimeError("the evaluator did not keep the generated features "
                           "(set keep_generated before evaluating)")
    if mode_coverage and is_conditional(model):
        print(f"lightning-gen: note: {type(model).__name__} is class-conditional: mode coverage is "
              "for unconditional models (the class accuracy of its samples, gan_test, covers it)",
              file=sys.stderr, flush=True)
    elif mode_coverage:
        if not isinstance(evaluator.extractor, ClassifierExtractor):
            raise ValueError("--mode_coverage true needs a classifier extractor")
        stats = class_coverage(fake["logits"], datamodule, reference, mode_threshold)
        out.update(stats)
        if rank0:
            out["modes_png"] = _write(lambda p: write_modes_png(p, stats, reference),
                                      json_path.parent / f"modes_{json_path.stem}.png")
    if neighbours > 0:
        found, pixels = memorization(model, datamodule, evaluator, fake["features"], num_samples,
                                     seed, batch_size, device, neighbours, neighbours_k,
                                     memorization_percentile, progress)
        out.update(found.metrics)
        if rank0:
            out["neighbours_png"] = _write(
                lambda p: write_neighbours_png(p, found, pixels, evaluator.extractor.name)[0],
                json_path.parent / f"neighbours_{json_path.stem}.png")
    return out


def _write(write, path: Path) -> str | None:
    """A picture is not worth the evaluation: a failed write is a warning and ``None``."""
    try:
        return str(write(path))
    except OSError as err:
        print(f"lightning-gen: warning: could not write {path} ({err.strerror or err}); the "
              "numbers are in the JSON", file=sys.stderr, flush=True)
        return None
