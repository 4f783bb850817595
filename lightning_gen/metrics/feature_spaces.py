"""torch-fidelity 0.4's other pretrained feature spaces: VGG-16, CLIP ViT-B/32, DINOv2 ViT-L/14.

Each wraps torch-fidelity's own extractor class (its resize and normalisation, its layer), so the
features are those torch-fidelity computes; only the loading differs, to work offline and to put
a digest of the weights into the extractor's ``name`` (JSON, reference-cache key):

| spec | torch-fidelity class | features | weights (digest of) |
| --- | --- | --- | --- |
| ``vgg16`` | ``FeatureExtractorVGG16`` | ``fc2_relu``, 4096-d (precision/recall's space, Kynkaanniemi et al. 2019) | torchvision's ``vgg16-397923af.pth`` |
| ``clip-vit-b-32`` | ``FeatureExtractorCLIP`` | image embedding, 512-d (CLIP-FID, Kynkaanniemi et al. 2023) | OpenAI's TorchScript ``ViT-B-32.pt`` |
| ``dinov2-vit-l-14`` | ``FeatureExtractorDinoV2`` | CLS embedding, 1024-d (FD-DINOv2, Stein et al. 2023) | the hub checkpoint ``dinov2_vitl14_pretrain.pth`` |

None has class logits: ``forward`` returns ``(features, (B, 0) logits)`` and the Inception Score
is reported as not computed. Grey images are repeated to three channels.

Offline: ``vgg16:/path/vgg16-397923af.pth`` and ``clip-vit-b-32:/path/ViT-B-32.pt`` take the
file; ``dinov2-vit-l-14:/path/hub`` a torch hub folder filled on a machine with network (it holds
``facebookresearch_dinov2_main/`` and ``checkpoints/dinov2_vitl14_pretrain.pth``), loaded with
``torch.hub.load(..., source="local")``: no network is touched. Without a path the weights are
downloaded once into torch's hub cache (``torch.hub.get_dir()``).
"""

from __future__ import annotations

import os
import sys
import warnings
from contextlib import redirect_stdout
from pathlib import Path
from unittest import mock

import torch
from torch import nn

from lightning_gen.metrics.extractors import FeatureExtractor, file_digest, torch_fidelity_code

VGG16_NAME, CLIP_NAME, DINOV2_NAME = "vgg16", "clip-vit-b-32", "dinov2-vit-l-14"
#: torchvision's ``VGG16_Weights.IMAGENET1K_V1``, what torch-fidelity's vgg16 loads.
VGG16_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"
VGG16_FILE, VGG16_SHA256_PREFIX = "vgg16-397923af.pth", "397923af"
DINOV2_REPO = "facebookresearch/dinov2"
DINOV2_ENTRY = "dinov2_vitl14"
DINOV2_REPO_DIR = "facebookresearch_dinov2_main"  # torch.hub's folder name for the repo
DINOV2_FILE = "dinov2_vitl14_pretrain.pth"
#: ViT-B/32's visual tower, as torch-fidelity's ``build_model`` infers it from the weights.
CLIP_VIT_B_32 = {"width": 768, "layers": 12, "patch": 32, "resolution": 224, "embed_dim": 512}


class _TorchFidelityFeatures(FeatureExtractor):
    """A torch-fidelity extractor (``self.net``) asked for one feature layer; no logits."""

    num_classes = 0

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if images.shape[1] == 1:  # torch-fidelity's convert("RGB") of grey images
            images = images.expand(-1, 3, -1, -1)
        with torch.autocast(images.device.type, enabled=False):
            (features,) = self.net(images)
        features = features.float()
        return features, features.new_zeros(len(features), 0)


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:200] if text else type(err).__name__


def _download(url: str, file_name: str, hash_prefix: str, spec: str) -> Path:
    """``<torch hub dir>/checkpoints/<file_name>``, downloaded (hash-checked) if missing."""
    path = Path(torch.hub.get_dir()) / "checkpoints" / file_name
    if path.is_file():
        return path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with redirect_stdout(sys.stderr):
            torch.hub.download_url_to_file(url, str(path), hash_prefix=hash_prefix)
    except (OSError, RuntimeError) as err:  # no network (URLError), HTTP, hash, read-only
        raise FileNotFoundError(
            f"could not download the {spec} weights ({_first_line(err)}); download {url} on a "
            f"machine with network access and pass it as --feature_extractor {spec}:/path/"
            f"{file_name} (or --weights_path)") from None
    return path


def _load_state_dict(path: Path, what: str) -> dict[str, torch.Tensor]:
    """A state dict of tensors from ``path``, unpickled safely (``weights_only``)."""
    if not path.is_file():
        raise FileNotFoundError(f"{what} weights file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # pickle errors, zip errors, ...
        raise ValueError(f"{path} is not a PyTorch weights file ({type(err).__name__})") from err
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors")
    return state


def _check_shapes(state: dict, expected: dict, path: Path, what: str, hint: str) -> None:
    missing = [k for k in expected if k not in state]
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k])]
    if missing or wrong or len(state) != len(expected):
        detail = f"{len(missing)} missing, {len(wrong)} mis-shaped, {len(state)} tensors in file"
        raise ValueError(f"{path} is not {what} ({detail}); {hint}")


# ----------------------------------------------------------------------------------------------
# VGG-16


def _bare_vgg16() -> nn.Module:
    """torchvision's VGG-16 on the meta device: the architecture, no memory, no init cost."""
    import torchvision

    with torch.device("meta"):
        return torchvision.models.vgg16()


class VGG16Extractor(_TorchFidelityFeatures):
    """torch-fidelity's VGG-16: ``fc2_relu`` (4096-d), its layer for precision/recall.

    Args:
        weights_path: torchvision's ``vgg16-397923af.pth`` (offline clusters); ``None``:
            downloaded once into the torch hub cache.
    """

    def __init__(self, weights_path: str | None = None) -> None:
        super().__init__()
        import torch_fidelity.feature_extractor_vgg16 as fe

        path = Path(weights_path) if weights_path else _download(
            VGG16_URL, VGG16_FILE, VGG16_SHA256_PREFIX, VGG16_NAME)
        state = _load_state_dict(path, "VGG-16")
        model = _bare_vgg16()
        _check_shapes(state, {k: v.shape for k, v in model.state_dict().items()}, path,
                      f"torchvision's VGG-16 ({VGG16_FILE}) state dict",
                      f"pass the file {VGG16_URL} names, or omit the path")
        model.load_state_dict(state, assign=True)  # the file's tensors, no second copy
        # torch-fidelity builds the same network and cuts the classifier after fc2; we hand it
        # the network instead of its unpickling torch.load(weights_only=False).
        with mock.patch.object(fe, "torchvision_load_pretrained_vgg16", lambda **kwargs: model):
            self.net = fe.FeatureExtractorVGG16(VGG16_NAME, ["fc2_relu"])
        self.net.to(memory_format=torch.channels_last)  # faster convolutions, same numbers
        self.name = f"{VGG16_NAME}-{file_digest(path)}"
        self.code = torch_fidelity_code()


def write_random_vgg16_weights(path: str | os.PathLike, seed: int = 0,
                               dtype: torch.dtype = torch.float32) -> Path:
    """A random-initialised VGG-16 state dict (torchvision's init) in the layout of
    ``vgg16-397923af.pth``; for offline tests only (``float16`` halves the 528 MB file)."""
    import torchvision

    torch.manual_seed(seed)
    state = {k: v.to(dtype) for k, v in torchvision.models.vgg16().state_dict().items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


# ----------------------------------------------------------------------------------------------
# CLIP ViT-B/32


class CLIPExtractor(_TorchFidelityFeatures):
    """torch-fidelity's CLIP ViT-B/32 image embedding (512-d), the space of CLIP-FID.

    Args:
        weights_path: OpenAI's TorchScript ``ViT-B-32.pt`` (offline clusters); ``None``:
            downloaded once into the torch hub cache.
    """

    def __init__(self, weights_path: str | None = None) -> None:
        super().__init__()
        import torch_fidelity.feature_extractor_clip as fe

        url, sha256 = fe.MODEL_URLS[CLIP_NAME], fe.MODEL_METADATA[CLIP_NAME]["hash"]
        path = Path(weights_path) if weights_path else _download(
            url, f"{CLIP_NAME}-{sha256}.pt", sha256, CLIP_NAME)
        if not path.is_file():
            raise FileNotFoundError(f"CLIP weights file not found: {path}")
        hint = f"pass OpenAI's ViT-B-32.pt ({url}), or omit the path"
        try:  # the file is a TorchScript archive (code is compiled, not unpickled)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.net = fe.FeatureExtractorCLIP(CLIP_NAME, ["clip"],
                                                   feature_extractor_weights_path=str(path))
        except (RuntimeError, KeyError, ValueError, IndexError, AttributeError) as err:
            raise ValueError(f"{path} is not a CLIP TorchScript file ({type(err).__name__}: "
                             f"{_first_line(err)[:120]}); {hint}") from None
        visual = self.net.model.visual
        found = {"width": visual.conv1.weight.shape[0] if hasattr(visual, "conv1") else None,
                 "layers": len(getattr(getattr(visual, "transformer", None), "resblocks", [])),
                 "patch": visual.conv1.weight.shape[-1] if hasattr(visual, "conv1") else None,
                 "resolution": visual.input_resolution, "embed_dim": visual.output_dim}
        if found != CLIP_VIT_B_32:
            raise ValueError(f"{path} holds a CLIP model, but not ViT-B/32 ({found}); {hint}")
        self.name = f"{CLIP_NAME}-{file_digest(path)}"
        self.code = torch_fidelity_code()


def write_random_clip_weights(path: str | os.PathLike, seed: int = 0) -> Path:
    """A random-initialised CLIP ViT-B/32 as a TorchScript archive in fp16, the form of
    OpenAI's ``ViT-B-32.pt`` as far as torch-fidelity reads it (visual tower and
    ``text_projection``; 176 MB); for offline tests only."""
    from torch_fidelity.feature_extractor_clip import VisionTransformer

    a = CLIP_VIT_B_32

    class _CLIPWeights(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.visual = VisionTransformer(a["resolution"], a["patch"], a["width"], a["layers"],
                                            a["width"] // 64, a["embed_dim"])
            self.text_projection = nn.Parameter(torch.randn(512, a["embed_dim"]) / 512 ** 0.5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    torch.manual_seed(seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.script(_CLIPWeights().half()).save(str(path))
    return path


# ----------------------------------------------------------------------------------------------
# DINOv2 ViT-L/14


def _load_from_hub_dir(hub: Path) -> tuple[nn.Module, Path]:
    """``dinov2_vitl14`` from a pre-filled torch hub folder, without network: the repo's
    hubconf with ``source="local"``, torch.hub pointed at ``hub`` so the checkpoint is read
    from ``hub/checkpoints``. Returns the model and the checkpoint file."""
    repo, ckpt = hub / DINOV2_REPO_DIR, hub / "checkpoints" / DINOV2_FILE
    if not (repo / "hubconf.py").is_file() or not ckpt.is_file():
        raise FileNotFoundError(
            f"{hub} is not a torch hub folder with DINOv2 (needs {DINOV2_REPO_DIR}/hubconf.py "
            f"and checkpoints/{DINOV2_FILE}); fill one on a machine with network access "
            f"(TORCH_HOME=/path python -c \"import torch; torch.hub.load('{DINOV2_REPO}', "
            f"'{DINOV2_ENTRY}')\") and pass /path/hub")
    # The checkpoint must be plain tensors: the hub code unpickles it with weights_only=False.
    _load_state_dict(ckpt, "DINOv2")
    previous = torch.hub._hub_dir
    torch.hub.set_dir(str(hub))
    # As torch-fidelity does before its own hub load: DINOv2's attention reads this once, at
    # import, and would otherwise use xFormers where it is installed (other features than
    # torch-fidelity's, under the same extractor name and cache key).
    os.environ["XFORMERS_DISABLED"] = "1"
    try:
        with redirect_stdout(sys.stderr), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="xFormers")
            model = torch.hub.load(str(repo), DINOV2_ENTRY, source="local")
    finally:
        torch.hub._hub_dir = previous
    return model, ckpt


class DINOv2Extractor(_TorchFidelityFeatures):
    """torch-fidelity's DINOv2 ViT-L/14 CLS embedding (1024-d), the space of FD-DINOv2.

    Args:
        hub_dir: A torch hub folder holding ``facebookresearch_dinov2_main/`` and
            ``checkpoints/dinov2_vitl14_pretrain.pth`` (offline clusters; its hubconf.py is
            run, as ``torch.hub.load`` does); ``None``: torch-fidelity's
            ``torch.hub.load("facebookresearch/dinov2", ...)``, which downloads once.
    """

    embed_dim = 1024

    def __init__(self, hub_dir: str | None = None) -> None:
        super().__init__()
        import torch_fidelity.feature_extractor_dinov2 as fe

        if hub_dir is not None:
            model, ckpt = _load_from_hub_dir(Path(hub_dir))
            # torch-fidelity's constructor (dtype, eval, no grad) around the model loaded here.
            with mock.patch.object(torch.hub, "load", lambda *args, **kwargs: model):
                self.net = fe.FeatureExtractorDinoV2(DINOV2_NAME, ["dinov2"])
        else:
            try:
                self.net = fe.FeatureExtractorDinoV2(DINOV2_NAME, ["dinov2"])
            except (OSError, RuntimeError) as err:  # no network: URLError, "no internet"
                raise FileNotFoundError(
                    f"could not load DINOv2 through torch.hub ({_first_line(err)}); on a machine "
                    f"with network access run TORCH_HOME=/path python -c \"import torch; "
                    f"torch.hub.load('{DINOV2_REPO}', '{DINOV2_ENTRY}')\" and pass the hub "
                    f"folder: --feature_extractor {DINOV2_NAME}:/path/hub") from None
            ckpt = Path(torch.hub.get_dir()) / "checkpoints" / DINOV2_FILE
        dim = getattr(self.net.model, "embed_dim", None)
        if dim != self.embed_dim:
            raise ValueError(f"the hub's {DINOV2_ENTRY} has embed_dim {dim}, not ViT-L/14's "
                             f"{self.embed_dim}")
        self.name = f"{DINOV2_NAME}-{file_digest(ckpt)}"
        self.code = torch_fidelity_code()


def build(name: str, path: str | None) -> FeatureExtractor:
    """``name`` one of ``vgg16``, ``clip-vit-b-32``, ``dinov2-vit-l-14``; ``path`` the weights
    file (a hub folder for DINOv2) or ``None`` (download)."""
    classes = {VGG16_NAME: VGG16Extractor, CLIP_NAME: CLIPExtractor,
               DINOV2_NAME: DINOv2Extractor}
    return classes[name](path or None)
