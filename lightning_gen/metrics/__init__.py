"""Evaluation of generators: feature extractors, FID/IS/KID/PR via torch-fidelity, density and
coverage, a reference feature cache, and the evaluation loop shared by the metrics callback and
``lightning-gen evaluate``."""

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
from lightning_gen.metrics.feature_spaces import CLIPExtractor, DINOv2Extractor, VGG16Extractor
from lightning_gen.metrics.fidelity import (
    FeatureStore,
    density_coverage,
    fid_statistics,
    fidelity_metrics,
    frechet_distance,
)
from lightning_gen.metrics.reference import ReferenceCache

__all__ = [
    "CLIPExtractor",
    "ClassifierExtractor",
    "DINOv2Extractor",
    "FeatureExtractor",
    "FeatureStore",
    "GenerativeEvaluator",
    "InceptionExtractor",
    "ReferenceCache",
    "VGG16Extractor",
    "build_extractor",
    "check_inception_weights",
    "density_coverage",
    "fid_statistics",
    "fidelity_metrics",
    "frechet_distance",
    "load_split",
    "to_uint8",
    "write_random_inception_weights",
]
