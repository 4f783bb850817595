"""Feature extractors for FID / IS / KID / precision-recall: images in, (features, logits) out.

Every extractor takes **uint8** images ``(B, C, H, W)`` (as torch-fidelity does; see
:func:`to_uint8` for the float -> uint8 step) and returns ``(features, logits)`` in float32:

* :class:`InceptionExtractor`: torch-fidelity's ``FeatureExtractorInceptionV3`` (the TF-FID
  Inception of Heusel et al. 2017): 2048-d pool features for FID/KID/PR, the 1008 unbiased
  logits for IS, exactly the layers torch-fidelity uses by default.
* :class:`ClassifierExtractor`: a :class:`~lightning_gen.models.classifier.Classifier` trained
  by the suite (``experiments/evaluator_*.yaml``): penultimate features ("classifier FID"),
  class logits (classifier IS, and the accuracy of class-conditional samples).

* :mod:`lightning_gen.metrics.feature_spaces`: torch-fidelity's VGG-16 (``vgg16``, precision/
  recall's space), CLIP ViT-B/32 (``clip-vit-b-32``, CLIP-FID) and DINOv2 ViT-L/14
  (``dinov2-vit-l-14``, FD-DINOv2): features only, no logits (``(B, 0)``), so no IS.

``spec`` strings (:func:`build_extractor`): ``"inception"``, ``"vgg16"``, ``"clip-vit-b-32"``,
``"dinov2-vit-l-14"`` (each optionally ``"<name>:<weights file or hub folder>"``) or
``"classifier:<ckpt path>"``.
"""

from __future__ import annotations

import glob
import hashlib
import os
import sys
from contextlib import redirect_stdout
from pathlib import Path
from unittest import mock

import torch
from torch import nn

INCEPTION_NAME = "inception-v3-compat"
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] -> uint8 in [0, 255], **rounded** (torchmetrics truncates, which
    shifts every pixel down by half a grey level; PNG writers round). Any float dtype."""
    return ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def file_digest(path: str | os.PathLike, n_hex: int = 16) -> str:
    """Short sha256 of a file's bytes (part of reference-cache keys)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:n_hex]


class FeatureExtractor(nn.Module):
    """``forward(uint8 (B, C, H, W)) -> (features (B, D), logits (B, K))``, float32, no grad.

    ``name`` identifies the extractor *and its weights* (it goes into cache keys and JSON);
    ``code`` the version of the library code that turns images into features beyond the weights
    (resize, normalisation, layer taps: torch-fidelity's for its extractors; empty for the
    suite's own classifier), also part of reference-cache keys.
    """

    name: str = "extractor"
    num_classes: int = 0
    code: str = ""


def torch_fidelity_code() -> str:
    """``"torch-fidelity <version>"``: the ``code`` of extractors that run torch-fidelity's."""
    from importlib.metadata import version

    return f"torch-fidelity {version('torch-fidelity')}"



# ----------------------------------------------------------------------------------------------
# Inception-v3 (torch-fidelity)


def _inception_class():
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    return FeatureExtractorInceptionV3


def _expected_inception_keys() -> dict[str, torch.Size]:
    """Parameter/buffer names and shapes of torch-fidelity's Inception-v3, built without
    loading weights (no download)."""
    model = _bare_inception()
    return {k: v.shape for k, v in model.state_dict().items()}


def _bare_inception() -> nn.Module:
    """torch-fidelity's Inception-v3 architecture with PyTorch's default init (no weights)."""
    import torch_fidelity.feature_extractor_inceptionv3 as fe

    cls = fe.FeatureExtractorInceptionV3
    with mock.patch.object(fe, "load_state_dict_from_url", lambda *a, **k: {}), \
            mock.patch.object(cls, "load_state_dict", lambda self, sd, *a, **k: None):
        return cls(INCEPTION_NAME, ["2048"])


def write_random_inception_weights(path: str | os.PathLike, seed: int = 0,
                                   logit_std: float = 1.0) -> Path:
    """Write a random-initialised Inception-v3 state dict in torch-fidelity's layout.

    For offline tests and throughput benchmarks only: the numbers it gives are not comparable to
    published FIDs. Convolutions get He-normal init (``kaiming_normal_``, ReLU gain) so the
    2048-d features keep their scale (PyTorch's default init collapses them to near-constants
    and FID to ~1e-12); the final linear layer gets std ``logit_std`` so the Inception Score is
    informative (still close to 1, ~1.03: random features of different images share a large
    common component).
    """
    torch.manual_seed(seed)
    model = _bare_inception()
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    nn.init.normal_(model.fc.weight, 0.0, logit_std)
    nn.init.zeros_(model.fc.bias)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return path


def check_inception_weights(path: str | os.PathLike) -> None:
    """Raise a one-line ``ValueError`` unless ``path`` holds an Inception-v3 state dict."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Inception weights file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle errors, zip errors, ...
        raise ValueError(f"{path} is not a PyTorch weights file ({type(err).__name__})") from err
    expected = _expected_inception_keys()
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors")
    missing = [k for k in expected if k not in state]
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k])]
    if missing or wrong or len(state) != len(expected):
        detail = f"{len(missing)} missing, {len(wrong)} mis-shaped, {len(state)} tensors in file"
        raise ValueError(
            f"{path} is not torch-fidelity's Inception-v3 ({INCEPTION_FILE}) state dict "
            f"({detail}); pass the file torch-fidelity downloads, or omit weights_path"
        )


class InceptionExtractor(FeatureExtractor):
    """torch-fidelity's Inception-v3: pool ``"2048"`` features and ``"logits_unbiased"``.

    Grey images are repeated to three channels (as torch-fidelity's ``convert("RGB")``); the
    resize to 299x299 is torch-fidelity's TF1-compatible bilinear one.

    Args:
        weights_path: Local weights file (offline clusters). ``None``: torch-fidelity downloads
            ``weights-inception-2015-12-05-6726825d.pth`` into the torch hub cache once.
    """

    num_classes = 1008

    def __init__(self, weights_path: str | None = None) -> None:
        super().__init__()
        if weights_path is not None:
            check_inception_weights(weights_path)
            digest = file_digest(weights_path)
        else:
            digest = "6726825d"  # the hash in the official file's name
        cls = _inception_class()
        try:
            with redirect_stdout(sys.stderr):
                self.net = cls(INCEPTION_NAME, ["2048", "logits_unbiased"],
                               feature_extractor_weights_path=weights_path)
        except OSError as err:  # no network and no local file
            raise FileNotFoundError(
                f"could not download the Inception-v3 weights ({err}); download {INCEPTION_FILE} "
                "on a machine with network access and pass it as weights_path"
            ) from err
        # channels_last: ~1.6x faster convolutions on CPU (oneDNN), same numbers up to float
        # rounding; parameters keep the layout through .to(device).
        self.net.to(memory_format=torch.channels_last)
        self.name = f"inception-v3-{digest}"
        self.code = torch_fidelity_code()

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        with torch.autocast(images.device.type, enabled=False):
            features, logits = self.net(images)
        return features.float(), logits.float()


# ----------------------------------------------------------------------------------------------
# The suite's own domain classifier


def classifier_checkpoint(spec: str) -> Path:
    """The checkpoint ``spec`` names: a path, or the newest match of a glob
    (``runs/lightning-gen/evaluator_digits-*/checkpoints/last.ckpt``). Raises
    ``FileNotFoundError`` with a one-line message when there is none."""
    path = Path(spec)
    if not path.exists() and glob.has_magic(spec):
        matches = sorted(glob.glob(spec), key=os.path.getmtime)
        if not matches:
            raise FileNotFoundError(f"no classifier checkpoint matches {spec!r}; train one with "
                                    "lightning-gen fit --config experiments/evaluator_<data>.yaml")
        path = Path(matches[-1])
    if not path.is_file() and not path.is_dir():
        raise FileNotFoundError(f"classifier checkpoint not found: {path}")
    return path


class ClassifierExtractor(FeatureExtractor):
    """Penultimate features and logits of a :class:`~lightning_gen.models.Classifier` checkpoint.

    Args:
        ckpt_path: A checkpoint written by ``lightning-gen fit --config
            experiments/evaluator_<data>.yaml``, or a glob of them
            (``runs/lightning-gen/evaluator_digits-*/checkpoints/last.ckpt``: the newest match,
            named in the output), so a command can name the evaluator's run without its time
            stamp.
        trust_checkpoint: Load it even if it holds more than the suite's checkpoints do (see
            :mod:`lightning_gen.checkpoints`).
    """

    def __init__(self, ckpt_path: str, trust_checkpoint: bool = False) -> None:
        super().__init__()
        import inspect

        from lightning_gen.checkpoints import hyper_parameters, load_checkpoint, resolve_class
        from lightning_gen.models.classifier import Classifier

        path = classifier_checkpoint(ckpt_path)
        if str(path) != ckpt_path:
            print(f"lightning-gen: classifier extractor: {path} (newest match of {ckpt_path})",
                  file=sys.stderr)
        ckpt = load_checkpoint(path, trust=trust_checkpoint)
        hparams = hyper_parameters(ckpt)
        # The class the checkpoint names is only checked (a Classifier subclass), never called
        # with its arguments unless it is one.
        cls = Classifier
        if hparams.get("_class_path") is not None:
            cls = resolve_class(hparams["_class_path"], Classifier, trust=trust_checkpoint,
                                source=f"classifier checkpoint {path}", role="model class")
        accepted = inspect.signature(cls.__init__).parameters
        try:
            self.net = cls(**{k: tuple(v) if isinstance(v, list) else v
                              for k, v in hparams.items() if k in accepted and k != "self"})
            self.net.load_state_dict(ckpt["state_dict"], strict=True)
        except (KeyError, RuntimeError, TypeError, ValueError) as err:
            raise ValueError(
                f"{path} is not a checkpoint of lightning_gen.models.Classifier "
                f"({type(err).__name__}); train one with experiments/evaluator_*.yaml"
            ) from err
        self.net.eval().requires_grad_(False)
        self.net.to(memory_format=torch.channels_last)  # ~1.7x faster on CPU, same numbers
        self.image_shape = tuple(self.net.hparams.image_shape)
        self.num_classes = int(self.net.hparams.num_classes)
        self.name = f"classifier-{file_digest(path)}"

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if tuple(images.shape[1:]) != self.image_shape:
            raise ValueError(
                f"the classifier was trained on images of shape {self.image_shape}, got "
                f"{tuple(images.shape[1:])}; train an evaluator on this data"
            )
        x = images.float() / 127.5 - 1  # back to the [-1, 1] the classifier was trained on
        with torch.autocast(images.device.type, enabled=False):
            features = self.net.features(x)
            logits = self.net.head(features)
        return features.float(), logits.float()


#: Pretrained feature spaces of torch-fidelity 0.4 besides Inception (``feature_spaces``).
PRETRAINED = ("vgg16", "clip-vit-b-32", "dinov2-vit-l-14")


def build_extractor(spec: str = "inception", weights_path: str | None = None,
                    trust_checkpoint: bool = False) -> FeatureExtractor:
    """``"inception"``, ``"vgg16"``, ``"clip-vit-b-32"`` or ``"dinov2-vit-l-14"`` (the weights
    file, or DINOv2's torch hub folder, after a colon or as ``weights_path``; else downloaded
    once), or ``"classifier:<ckpt path>"`` (loaded safely unless ``trust_checkpoint``)."""
    if spec == "inception" or spec.startswith("inception:"):
        path = spec.partition(":")[2] or weights_path
        return InceptionExtractor(path)
    if spec.startswith("classifier:"):
        return ClassifierExtractor(spec.partition(":")[2], trust_checkpoint)
    name, _, path = spec.partition(":")
    if name in PRETRAINED:
        from lightning_gen.metrics import feature_spaces

        return feature_spaces.build(name, path or weights_path)
    raise ValueError(
        f"unknown feature extractor {spec!r}; use 'inception', 'vgg16', 'clip-vit-b-32', "
        "'dinov2-vit-l-14' (optionally '<name>:<weights>') or 'classifier:<checkpoint>'"
    )
