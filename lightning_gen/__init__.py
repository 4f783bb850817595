"""lightning-gen: PyTorch Lightning experiment suite for deep generative models."""

__version__ = "0.1.0"
