"""torch-fidelity 0.4's VGG-16, CLIP ViT-B/32 and DINOv2 ViT-L/14 feature spaces, offline.

VGG-16 and CLIP load a random-initialised weights file of the real architecture and must give
torch-fidelity's own extractor's features on the same file; DINOv2 loads through a fake torch
hub folder (a hubconf.py building a tiny model with ViT-L/14's interface, and its checkpoint)
with the network switched off. Each extractor's name carries the digest of its weights file.
"""

from __future__ import annotations

import json
import socket
import textwrap
import warnings

import numpy as np
import pytest
import torch

from lightning_gen.metrics import build_extractor, fidelity_metrics
from lightning_gen.metrics.extractors import file_digest
from lightning_gen.metrics.feature_spaces import (
    DINOV2_FILE,
    DINOV2_REPO_DIR,
    write_random_clip_weights,
    write_random_vgg16_weights,
)


def _images(n: int = 3, size: int = 32, seed: int = 0) -> torch.Tensor:
    """uint8 (n, 3, size, size) whose first image is grey (all channels equal)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
    images[0] = images[0, :1]
    return images


def _check_features(extractor, images: torch.Tensor, dim: int, grey: bool = False) -> torch.Tensor:
    features, logits = extractor(images)
    assert features.shape == (len(images), dim) and features.dtype == torch.float32
    assert logits.shape == (len(images), 0)  # no class logits: no Inception Score
    assert torch.isfinite(features).all()
    assert features.std(0).mean() > 1e-3 * features.abs().mean()  # images differ in features
    if grey:  # a 1-channel image is repeated to RGB (the three extractors share that code)
        grey_features, _ = extractor(images[:1, :1])
        torch.testing.assert_close(grey_features, features[:1], rtol=1e-5, atol=1e-6)
    return features


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails, as on an offline cluster node."""
    def refuse(*args, **kwargs):
        raise OSError("network is switched off in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


# ---- VGG-16 ----------------------------------------------------------------------------------

@pytest.mark.slow
def test_vgg16_from_a_weights_file_equals_torch_fidelity(tmp_path, no_network):
    from torch_fidelity.feature_extractor_vgg16 import FeatureExtractorVGG16

    path = write_random_vgg16_weights(tmp_path / "vgg16.pth", dtype=torch.float16)
    images = _images(2)  # VGG-16 at 224 px: 31 GFLOP per image
    theirs = FeatureExtractorVGG16("vgg16", ["fc2_relu"], feature_extractor_weights_path=str(path))
    (expected,) = theirs(images)
    del theirs
    extractor = build_extractor(f"vgg16:{path}")
    assert extractor.name == f"vgg16-{file_digest(path)}"
    features = _check_features(extractor, images, 4096)
    torch.testing.assert_close(features, expected, rtol=1e-4, atol=1e-5)


def test_a_file_that_is_not_vgg16_is_a_clear_error(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, path)
    with pytest.raises(ValueError, match="is not torchvision's VGG-16"):
        build_extractor("vgg16", weights_path=str(path))
    with pytest.raises(FileNotFoundError, match="not found"):
        build_extractor(f"vgg16:{tmp_path / 'missing.pth'}")


def test_vgg16_download_without_network_says_how_to_pass_the_file(tmp_path, monkeypatch,
                                                                  no_network):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # an empty hub cache
    with pytest.raises(FileNotFoundError) as info:
        build_extractor("vgg16")
    message = str(info.value)
    assert "\n" not in message and "vgg16-397923af.pth" in message
    assert "--feature_extractor vgg16:/path/vgg16-397923af.pth" in message


# ---- CLIP ViT-B/32 -----------------------------------------------------------------------------

@pytest.mark.slow
def test_clip_vit_b_32_from_a_weights_file_equals_torch_fidelity(tmp_path, no_network):
    from torch_fidelity.feature_extractor_clip import FeatureExtractorCLIP

    path = write_random_clip_weights(tmp_path / "ViT-B-32.pt")
    images = _images(2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = FeatureExtractorCLIP("clip-vit-b-32", ["clip"],
                                      feature_extractor_weights_path=str(path))
    (expected,) = theirs(images)
    del theirs
    extractor = build_extractor("clip-vit-b-32", weights_path=str(path))
    assert extractor.name == f"clip-vit-b-32-{file_digest(path)}"
    features = _check_features(extractor, images, 512)
    torch.testing.assert_close(features, expected, rtol=1e-5, atol=1e-6)


def test_a_file_that_is_not_clip_vit_b_32_is_a_clear_error(tmp_path):
    from torch_fidelity.feature_extractor_clip import VisionTransformer

    (tmp_path / "junk.pt").write_text("not a TorchScript file")
    with pytest.raises(ValueError, match="is not a CLIP TorchScript file"):
        build_extractor(f"clip-vit-b-32:{tmp_path / 'junk.pt'}")

    class Small(torch.nn.Module):  # a CLIP-shaped file, but a tiny ViT (not ViT-B/32)
        def __init__(self) -> None:
            super().__init__()
            self.visual = VisionTransformer(64, 32, 64, 1, 1, 16)
            self.text_projection = torch.nn.Parameter(torch.zeros(16, 16))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.script(Small()).save(str(tmp_path / "small.pt"))
    with pytest.raises(ValueError, match="but not ViT-B/32"):
        build_extractor(f"clip-vit-b-32:{tmp_path / 'small.pt'}")


# ---- DINOv2 ViT-L/14 through a torch hub folder ------------------------------------------------

HUBCONF = textwrap.dedent('''
    """A stand-in for facebookresearch/dinov2's hubconf: dinov2_vitl14 with ViT-L/14's interface
    (embed_dim 1024, (B, 3, 224, 224) -> (B, 1024)), its weights read the way the real one reads
    them (torch.hub.load_state_dict_from_url of the same URL: from <hub>/checkpoints)."""
    import torch
    from torch import nn

    dependencies = ["torch"]
    URL = "https://dl.fbaipublicfiles.com/dinov2/dinov2_vitl14/dinov2_vitl14_pretrain.pth"


    class TinyViT(nn.Module):
        embed_dim = 1024

        def __init__(self):
            super().__init__()
            self.patch_embed = nn.Conv2d(3, 8, kernel_size=14, stride=14)
            self.head = nn.Linear(8, self.embed_dim)

        def forward(self, x):
            return self.head(self.patch_embed(x).relu().mean((2, 3)))


    def dinov2_vitl14(*, pretrained=True, **kwargs):
        model = TinyViT()
        if pretrained:
            model.load_state_dict(torch.hub.load_state_dict_from_url(URL, map_location="cpu"))
        return model
''')


def write_fake_dinov2_hub(hub, seed: int = 0):
    """A torch hub folder as torch.hub leaves it after loading facebookresearch/dinov2."""
    repo = hub / DINOV2_REPO_DIR
    repo.mkdir(parents=True)
    (repo / "hubconf.py").write_text(HUBCONF)
    namespace: dict = {}
    exec(compile(HUBCONF, "hubconf.py", "exec"), namespace)
    torch.manual_seed(seed)
    (hub / "checkpoints").mkdir()
    ckpt = hub / "checkpoints" / DINOV2_FILE
    torch.save(namespace["dinov2_vitl14"](pretrained=False).state_dict(), ckpt)
    return ckpt


@pytest.fixture
def dinov2_hub(tmp_path):
    hub = tmp_path / "hub"
    return hub, write_fake_dinov2_hub(hub)


def test_dinov2_loads_from_a_hub_folder_without_network(dinov2_hub, no_network):
    hub, ckpt = dinov2_hub
    hub_dir_before = torch.hub.get_dir()
    extractor = build_extractor(f"dinov2-vit-l-14:{hub}")
    assert extractor.name == f"dinov2-vit-l-14-{file_digest(ckpt)}"
    assert torch.hub.get_dir() == hub_dir_before  # torch.hub pointed back where it was
    features = _check_features(extractor, _images(), 1024, grey=True)
    # The hub model with the checkpoint's weights behind torch-fidelity's preprocessing (its
    # TF1-compatible resize to 224 and ImageNet normalisation).
    from torch_fidelity.interpolate_compat_tensorflow import (
        interpolate_bilinear_2d_like_tensorflow1x,
    )
    from torchvision.transforms.functional import normalize

    namespace: dict = {}
    exec(compile(HUBCONF, "hubconf.py", "exec"), namespace)
    model = namespace["dinov2_vitl14"](pretrained=False)
    model.load_state_dict(torch.load(ckpt))
    x = interpolate_bilinear_2d_like_tensorflow1x(_images().float(), size=(224, 224),
                                                  align_corners=False)
    x = normalize(x, [255 * m for m in (0.485, 0.456, 0.406)],
                  [255 * s for s in (0.229, 0.224, 0.225)])
    with torch.no_grad():
        torch.testing.assert_close(features, model(x), rtol=1e-5, atol=1e-6)
    # The weights are the checkpoint's: another checkpoint, other features and another name.
    torch.save({k: v + 0.1 for k, v in torch.load(ckpt).items()}, ckpt)
    other = build_extractor("dinov2-vit-l-14", weights_path=str(hub))
    assert other.name != extractor.name and not torch.allclose(other(_images())[0], features)


def test_dinov2_hub_code_is_imported_with_xformers_disabled(dinov2_hub, no_network,
                                                            monkeypatch):
    # DINOv2's attention picks xFormers at import unless XFORMERS_DISABLED is set, as
    # torch-fidelity sets it before its own hub load: the same features as torch-fidelity's.
    hub, _ = dinov2_hub
    monkeypatch.delenv("XFORMERS_DISABLED", raising=False)
    hubconf = hub / DINOV2_REPO_DIR / "hubconf.py"
    hubconf.write_text("import os, pathlib\npathlib.Path(__file__).with_name('seen.txt')"
                       ".write_text(repr(os.environ.get('XFORMERS_DISABLED')))\n" + HUBCONF)
    build_extractor(f"dinov2-vit-l-14:{hub}")
    assert (hub / DINOV2_REPO_DIR / "seen.txt").read_text() == "'1'"


def test_dinov2_hub_folder_without_the_checkpoint_is_a_clear_error(dinov2_hub, no_network):
    hub, ckpt = dinov2_hub
    ckpt.unlink()
    with pytest.raises(FileNotFoundError, match=f"needs {DINOV2_REPO_DIR}/hubconf.py and "
                                                f"checkpoints/{DINOV2_FILE}"):
        build_extractor(f"dinov2-vit-l-14:{hub}")


def test_dinov2_without_network_or_hub_folder_says_how_to_pass_one(tmp_path, monkeypatch,
                                                                   no_network):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # an empty hub cache
    with pytest.raises(FileNotFoundError) as info:
        build_extractor("dinov2-vit-l-14")
    message = str(info.value)
    assert "\n" not in message and "--feature_extractor dinov2-vit-l-14:/path/hub" in message


def test_no_logits_means_no_inception_score_and_the_callback_logs_the_rest():
    """fidelity_metrics on features with (B, 0) logits, as these extractors give: IS named as
    not computed; the metrics callback logs only numbers (no crash on the reason, no protocol
    keys)."""
    from lightning_gen.callbacks import GenerativeMetricsCallback

    def features(seed):
        g = torch.Generator().manual_seed(seed)
        return {"features": torch.randn(12, 6, generator=g), "logits": torch.zeros(12, 0)}

    out = fidelity_metrics(features(1), features(2), kid_subsets=2, kid_subset_size=6)
    assert "is_mean" not in out and "not applicable" in out["not_computed"]["IS"]
    assert {"fid", "kid_mean", "precision", "recall", "density", "coverage"} <= set(out)

    logged = {}

    class Module:
        def log_dict(self, values, **kwargs):
            logged.update(values)

    GenerativeMetricsCallback(prefix="m/")._log(Module(), out)
    assert set(logged) == {"m/fid", "m/kid_mean", "m/kid_std", "m/precision", "m/recall",
                           "m/density", "m/coverage"}


@pytest.mark.slow
def test_evaluate_with_dinov2_reports_density_coverage_and_no_is(dinov2_hub, tmp_path, capsys,
                                                                 no_network):
    """``lightning-gen evaluate --feature_extractor dinov2-vit-l-14:<hub>`` end to end (an
    untrained DCGAN on scikit-learn's digits): JSON and table."""
    from datamodules import DigitsDataModule
    from lightning_gen.evaluate import evaluate
    from lightning_gen.models import DCGAN
    from tests.metrics_helpers import save_module_checkpoint

    torch.manual_seed(0)
    ckpt = save_module_checkpoint(DCGAN(image_shape=(1, 32, 32), latent_dim=8, g_width=8,
                                        d_width=8), tmp_path / "dcgan.ckpt",
                                  DigitsDataModule(image_size=32))
    hub, weights = dinov2_hub
    result = evaluate(str(ckpt), num_samples=20, reference="test",
                      feature_extractor=f"dinov2-vit-l-14:{hub}", batch_size=20, isc_splits=2,
                      kid_subsets=2, kid_subset_size=10, accelerator="cpu", progress=False,
                      cache_dir=str(tmp_path / "cache"), out=str(tmp_path / "r.json"))
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["feature_extractor"] == f"dinov2-vit-l-14-{file_digest(weights)}"
    assert saved["reference"]["extractor"] == saved["feature_extractor"]  # the cache key
    assert saved["dc_neighborhood"] == 5 and 0 <= saved["coverage"] <= 1
    assert np.isfinite(saved["density"]) and "is_mean" not in saved
    assert result["not_computed"] == saved["not_computed"]
    table = capsys.readouterr().out
    assert "density" in table and "coverage" in table
    assert "IS                 not computed: not applicable" in table
