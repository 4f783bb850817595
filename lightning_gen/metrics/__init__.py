"""Evaluation of generators: feature extractors, FID/IS/KID/PR via torch-fidelity, a reference
feature cache, and the evaluation loop shared by the metrics callback and ``lightning-gen
evaluate``."""

from lightning_gen.metrics.evaluator import GenerativeEvaluator, load_split
from lightning_gen.metrics.extractors import (
    ClassifierExtractor,
    FeatureExtractor,
    InceptionExtractor,
    build_extractor,
    check_inception_weights,
    to_uint8,
    write_random_inception_weights,
)
from lightning_gen.metrics.fidelity import (
    FeatureStore,
    fid_statistics,
    fidelity_metrics,
    frechet_distance,
)
from lightning_gen.metrics.reference import ReferenceCache

__all__ = [
    "ClassifierExtractor",
    "FeatureExtractor",
    "FeatureStore",
    "GenerativeEvaluator",
    "InceptionExtractor",
    "ReferenceCache",
    "build_extractor",
    "check_inception_weights",
    "fid_statistics",
    "fidelity_metrics",
    "frechet_distance",
    "load_split",
    "to_uint8",
    "write_random_inception_weights",
]
