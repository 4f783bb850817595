"""SRGAN / SRResNet (Ledig et al. 2017): sub-pixel upsampling shapes, the paper's networks, the
VGG19 content loss against an explicit feature MSE, the perceptual loss, the bicubic pairs, and
the two-stage YAMLs (fit, second stage from the first's checkpoint, bf16-mixed, sample,
evaluate). VGG19 and LPIPS use random-initialised weights (no download)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from PIL import Image
from torch import nn

from datamodules.superres import CIFAR10SuperResDataModule, bicubic_downsample
from lightning_gen.losses import srgan_perceptual_loss, vgg_content_loss
from lightning_gen.models import SRGAN, SRResNet
from lightning_gen.nets.srgan import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    SRDiscriminator,
    SubPixelUpsample,
    VGGFeatures,
)
from lightning_gen.nets.srgan import SRResNet as SRResNetGenerator
from tests.zoo_utils import EXPERIMENTS, assert_finite_params, fit_yaml

TINY_G = ["--model.width", "8", "--model.n_blocks", "2"]
TINY_D = ["--model.d_width", "8", "--model.d_dense", "16", "--model.vgg_weights", "random"]


def vgg19_features() -> nn.Sequential:
    """torchvision's ``vgg19().features`` without building the 120M-parameter classifier."""
    from torchvision.models.vgg import cfgs, make_layers

    features = make_layers(cfgs["E"])
    for m in features.modules():  # He init: PyTorch's default would make the features ~1e-8
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            nn.init.normal_(m.bias, std=0.1)
    return features


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)  # tiny networks: a second thread only adds contention


# ----------------------------------------------------------------------------------------------
# Networks
def test_sub_pixel_upsampling_rearranges_channels_into_a_twice_larger_grid():
    # Shi et al. 2016: out[b, c, 2i + di, 2j + dj] = conv(x)[b, 4c + 2di + dj, i, j].
    torch.manual_seed(0)
    up = SubPixelUpsample(3)
    x = torch.randn(2, 3, 5, 7)
    conv = up.conv(x)
    out = up.shuffle(conv)
    assert conv.shape == (2, 12, 5, 7) and out.shape == (2, 3, 10, 14)
    for c, di, dj in [(0, 0, 0), (1, 0, 1), (2, 1, 0), (2, 1, 1)]:
        torch.testing.assert_close(out[:, c, di::2, dj::2], conv[:, 4 * c + 2 * di + dj])
    assert up(x).shape == (2, 3, 10, 14)


@pytest.mark.parametrize(("scale", "blocks"), [(2, 1), (4, 2), (8, 3)])
def test_srresnet_upsamples_by_its_scale_with_log2_sub_pixel_blocks(scale, blocks):
    g = SRResNetGenerator(channels=3, width=8, n_blocks=2, scale=scale)
    assert len(g.upsample) == blocks
    assert sum(isinstance(m, nn.PixelShuffle) for m in g.modules()) == blocks
    y = g(torch.randn(2, 3, 6, 5))
    assert y.shape == (2, 3, 6 * scale, 5 * scale) and y.abs().max() <= 1
    with pytest.raises(ValueError, match="power of 2"):
        SRResNetGenerator(scale=3)


def test_paper_architecture_16_blocks_and_discriminator_layers():
    g = SRResNetGenerator()
    assert len(g.blocks) == 16
    assert (g.head[0].kernel_size, g.tail.kernel_size) == ((9, 9), (9, 9))
    d = SRDiscriminator((3, 96, 96))
    convs = [m for m in d.features if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 64, 128, 128, 256, 256, 512, 512]
    assert [c.stride[0] for c in convs] == [1, 2, 1, 2, 1, 2, 1, 2]
    assert d.head[1].in_features == 512 * 6 * 6 and d.head[1].out_features == 1024
    with pytest.raises(ValueError, match="divisible by 16"):
        SRDiscriminator((3, 40, 40))


def test_gradients_reach_every_parameter_of_both_networks():
    torch.manual_seed(0)
    g = SRResNetGenerator(3, 8, 2, 4)
    d = SRDiscriminator((3, 32, 32), 8, 16)
    loss = d(g(torch.randn(2, 3, 8, 8))).mean()
    loss.backward()
    for name, p in [*g.named_parameters(), *d.named_parameters()]:
        assert p.grad is not None and p.grad.abs().sum() > 0, name


# ----------------------------------------------------------------------------------------------
# VGG19 content loss
def test_vgg_feature_layers_are_the_papers():
    # phi_{i,j}: after the j-th convolution's ReLU, before the i-th max-pooling.
    for layer, convs, channels in [("relu5_4", 16, 512), ("relu2_2", 4, 128)]:
        f = VGGFeatures(layer, weights="random")
        assert sum(isinstance(m, nn.Conv2d) for m in f.features) == convs
        assert isinstance(f.features[-1], nn.ReLU)
        assert f(torch.zeros(1, 3, 32, 32)).shape[1] == channels
        assert not any(p.requires_grad for p in f.parameters())
    with pytest.raises(ValueError, match="relu5_4"):
        VGGFeatures("relu9_9", weights="random")


def test_content_loss_equals_explicit_vgg_feature_mse_with_the_papers_rescaling(tmp_path):
    # Independent: torchvision's vgg19 with the same weights, ImageNet normalisation by hand,
    # features[:36] (up to relu5_4), numpy mean of ((phi(a) - phi(b)) / 12.75)^2.
    # Tolerance: float32 through 16 convolutions.
    torch.manual_seed(0)
    reference = vgg19_features().eval()  # torchvision's vgg19().features
    path = tmp_path / "vgg19.pth"
    torch.save({f"features.{k}": v for k, v in reference.state_dict().items()}, path)
    model = SRGAN(image_shape=(3, 32, 32), width=8, n_blocks=1, d_width=8, d_dense=16,
                  vgg_weights=str(path))
    sr, hr = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(
        1, 3, 1, 1)
    with torch.no_grad():
        phi_sr = reference[:36](((sr + 1) / 2 - mean) / std).double().numpy()
        phi_hr = reference[:36](((hr + 1) / 2 - mean) / std).double().numpy()
    expected = np.mean(((phi_sr - phi_hr) / 12.75) ** 2)
    got = float(model.content_loss(sr, hr))
    assert expected > 1e-6 and abs(got - expected) / expected < 1e-4
    # The pure function itself: r^2 * MSE of the feature maps (Eq. 5 times ~0.006).
    a, b = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    torch.testing.assert_close(vgg_content_loss(a, b), ((a - b) ** 2).mean() / 12.75 ** 2)
    # The VGG is not in the state dict: checkpoints stay small and never need VGG weights.
    assert not any("vgg" in k for k in model.state_dict())
    with pytest.raises(FileNotFoundError, match="VGG19 weights"):
        VGGFeatures(weights=str(tmp_path / "missing.pth"))


def test_perceptual_loss_is_content_plus_1e_3_non_saturating_adversarial():
    torch.manual_seed(0)
    content, logits = torch.tensor(0.7), torch.randn(6)
    expected = 0.7 + 1e-3 * (-torch.log(torch.sigmoid(logits))).mean()
    torch.testing.assert_close(srgan_perceptual_loss(content, logits), expected)


# ----------------------------------------------------------------------------------------------
# Paired data
def test_superres_pairs_are_bicubic_downsamplings_of_the_targets(cifar10_dir):
    dm = CIFAR10SuperResDataModule(data_dir=str(cifar10_dir), batch_size=4, download=False)
    dm.setup("fit")
    source, target = next(iter(dm.train_dataloader()))
    assert dm.image_shape == (3, 32, 32) and dm.source_shape == (3, 8, 8)
    assert source.shape == (4, 3, 8, 8) and target.shape == (4, 3, 32, 32)
    assert source.min() >= -1 and source.max() <= 1
    torch.testing.assert_close(source, bicubic_downsample(target, 4))
    # Against PIL's bicubic (antialiased) resize of the 8-bit target: within 1 grey level on
    # average and 3 at most (measured: 0.27 and 0.81 on these files; the two differ in
    # rounding and at the borders).
    pil = Image.fromarray(((target[0] + 1) * 127.5).round().byte().permute(1, 2, 0).numpy())
    pil_small = np.asarray(pil.resize((8, 8), Image.BICUBIC), dtype=np.float64)
    ours = ((source[0] + 1) * 127.5).permute(1, 2, 0).double().numpy()
    assert np.abs(ours - pil_small).mean() < 1 and np.abs(ours - pil_small).max() < 3
    test_source, test_target = dm._load("test", download=False)[0]
    assert test_source.shape == (3, 8, 8) and test_target.shape == (3, 32, 32)
    with pytest.raises(ValueError, match="divisible by scale_factor"):
        CIFAR10SuperResDataModule(data_dir=str(cifar10_dir), image_size=30)


def test_model_refuses_data_of_another_scale_or_unpaired(cifar10_dir):
    from datamodules import CIFAR10DataModule

    model = SRResNet(image_shape=(3, 32, 32), scale_factor=4, width=8, n_blocks=1)
    model.check_datamodule(CIFAR10SuperResDataModule(data_dir=str(cifar10_dir)))
    with pytest.raises(ValueError, match="scale_factor"):
        model.check_datamodule(CIFAR10SuperResDataModule(data_dir=str(cifar10_dir),
                                                         scale_factor=2))
    with pytest.raises(ValueError, match="super-resolution DataModule"):
        model.check_datamodule(CIFAR10DataModule(data_dir=str(cifar10_dir)))


# ----------------------------------------------------------------------------------------------
# The two-stage YAMLs
class RecordGenerator(Callback):
    """The generator's weights when the fit starts (after the pretrained ones are loaded)."""

    def on_fit_start(self, trainer, pl_module) -> None:
        self.start = {k: v.detach().clone() for k, v in pl_module.generator.state_dict().items()}


def test_two_stage_yamls_fit_and_the_second_starts_from_the_first(cifar10_dir, tmp_path,
                                                                  caplog):
    stage1 = fit_yaml("srresnet_cifar10.yaml", cifar10_dir, *TINY_G,
                      "--trainer.default_root_dir", str(tmp_path / "stage1"), steps=3)
    ckpt = tmp_path / "stage1" / "checkpoints" / "last.ckpt"
    assert stage1.trainer.global_step == 3 and ckpt.is_file()
    assert_finite_params(stage1.model)
    trained = {k: v.clone() for k, v in stage1.model.generator.state_dict().items()}

    # The YAML names the first stage by a glob; its newest match is loaded.
    pattern = str(tmp_path / "stage*" / "checkpoints" / "last.ckpt")
    stage2 = fit_yaml("srgan_cifar10.yaml", cifar10_dir, *TINY_G, *TINY_D,
                      "--model.pretrained_generator", pattern,
                      "--trainer.default_root_dir", str(tmp_path / "stage2"),
                      "--trainer.callbacks+=tests.test_srgan.RecordGenerator", steps=4)
    record = next(c for c in stage2.trainer.callbacks if isinstance(c, RecordGenerator))
    for key, value in trained.items():
        torch.testing.assert_close(record.start[key], value, msg=key)
    model = stage2.model
    assert (model.d_steps, model.g_steps) == (2, 2)
    assert_finite_params(model)
    # Which run the glob matched is said, and kept in stage 2's checkpoints (the config keeps
    # the glob, which a rerun resolves anew).
    assert f"SRGAN: generator initialised from {ckpt} (newest match of {pattern})" in caplog.text
    saved = torch.load(stage2.trainer.checkpoint_callback.last_model_path, weights_only=False)
    assert saved["srgan"] == {"pretrained_generator": str(ckpt)}
    assert torch.isfinite(stage2.trainer.callback_metrics["train/g_content"])
    assert not torch.equal(model.generator.tail.weight, trained["tail.weight"])

    with pytest.raises(FileNotFoundError, match="srresnet"):
        fit_yaml("srgan_cifar10.yaml", cifar10_dir, *TINY_G, *TINY_D,
                 "--model.pretrained_generator", str(tmp_path / "nothing-*.ckpt"), steps=2)


def test_celeba_yamls_fit_both_stages(celeba_dir, tmp_path):
    # 32x32 faces (8x8 inputs) instead of 128x128 to stay cheap; everything else as shipped.
    small = ["--data.image_size", "32"]
    fit_yaml("srresnet_celeba.yaml", celeba_dir, *TINY_G, *small,
             "--trainer.default_root_dir", str(tmp_path / "stage1"), steps=2)
    ckpt = tmp_path / "stage1" / "checkpoints" / "last.ckpt"
    cli = fit_yaml("srgan_celeba.yaml", celeba_dir, *TINY_G, *TINY_D, *small,
                   "--model.pretrained_generator", str(ckpt),
                   "--trainer.default_root_dir", str(tmp_path / "stage2"), steps=2)
    assert cli.trainer.global_step == 2 and cli.datamodule.source_shape == (3, 8, 8)
    assert_finite_params(cli.model)


def test_srgan_fits_in_bf16_mixed(cifar10_dir, tmp_path):
    cli = fit_yaml("srgan_cifar10.yaml", cifar10_dir, *TINY_G, *TINY_D,
                   "--model.pretrained_generator", "null", "--trainer.precision", "bf16-mixed",
                   "--trainer.default_root_dir", str(tmp_path), steps=2)
    assert cli.trainer.global_step == 2
    assert_finite_params(cli.model)


def test_sample_grid_and_evaluate_report_the_papers_protocol(cifar10_dir, tmp_path,
                                                              capsys):
    from lightning_gen.evaluate import main
    from lightning_gen.metrics.paired import build_lpips, psnr_ssim

    cli = fit_yaml("srresnet_cifar10.yaml", cifar10_dir, *TINY_G,
                   "--trainer.default_root_dir", str(tmp_path / "run"), steps=2)
    model = cli.model
    grids = model.log_images()
    assert grids["bicubic_output_target"].shape == (3, 8, 3, 32, 32)  # 3 aligned rows of 8
    torch.testing.assert_close(grids["bicubic_output_target"][2], model.fixed_target)
    torch.testing.assert_close(grids["bicubic_output_target"][1], model.sample(8))
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"

    main(["sample", "--ckpt_path", str(ckpt), "--out", str(tmp_path / "samples"),
          "--num_samples", "5", "--batch_size", "5", "--accelerator", "cpu",
          "--progress", "false"])
    assert len(list((tmp_path / "samples").glob("*.png"))) == 5
    assert Image.open(tmp_path / "samples" / "000000.png").size == (32, 32)

    out = tmp_path / "eval.json"
    main(["evaluate", "--ckpt_path", str(ckpt), "--num_samples", "12", "--batch_size", "8",
          "--lpips_weights", "random", "--data_dir", str(cifar10_dir), "--accelerator", "cpu",
          "--progress", "false", "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["num_pairs"] == 12 and result["reference"]["split"] == "test"
    assert "Y (BT.601), 4 border px cropped" in result["paired_protocol"]
    assert "fid" not in result and math.isfinite(result["lpips"])
    (row,) = [json.loads(line) for line in
              (tmp_path / "run" / "eval" / "results.jsonl").read_text().splitlines()]
    # Random LPIPS weights (a test's): another protocol than the published LPIPS's.
    assert row["protocol"] == "paired-lpips_random-test-12"
    assert set(row["metrics"]) == {"psnr", "ssim", "lpips"}
    # --num_samples 0 (no sample metrics, for likelihood models) leaves a paired model nothing.
    from tests.security_helpers import error_line

    err = error_line(capsys, "evaluate", "--ckpt_path", str(ckpt), "--num_samples", "0",
                     "--data_dir", str(cifar10_dir), "--accelerator", "cpu", "--progress", "false")
    assert "--num_samples 0 (no sample metrics) leaves nothing to compute for SRResNet" in err
    # Independent recomputation on the same 12 test pairs.
    torch.manual_seed(0)
    pairs = [cli.datamodule._load("test", download=False)[i] for i in range(12)]
    source = torch.stack([p[0] for p in pairs])
    target = torch.stack([p[1] for p in pairs])
    model.eval()
    with torch.no_grad():
        output = model.translate(source).clamp(-1, 1)
    psnr, ssim = psnr_ssim(output, target, y_channel=True, crop_border=4)
    assert abs(result["psnr"] - float(psnr.mean())) < 1e-3
    assert abs(result["ssim"] - float(ssim.mean())) < 1e-4
    assert isinstance(build_lpips("random"), nn.Module)
    assert F.mse_loss(output, target) > 0


def test_grid_rows_stay_aligned_when_batches_are_smaller_than_the_grid():
    # Batches of 4 with an 8-wide grid put 4 bicubic + 4 outputs on the first row and the
    # targets on the second: column i must hold image i's three versions.
    from lightning_gen.callbacks.images import image_grid

    torch.manual_seed(0)
    model = SRResNet(image_shape=(3, 32, 32), scale_factor=4, width=8, n_blocks=1)
    batches = [(torch.rand(4, 3, 8, 8) * 2 - 1, torch.rand(4, 3, 32, 32) * 2 - 1) for _ in range(3)]
    model._keep_fixed(batches[0])
    rows = model.log_images(batches[1])  # half the grid's images kept so far: those 4
    assert rows["bicubic_output_target"].shape == (3, 4, 3, 32, 32)
    torch.testing.assert_close(rows["bicubic_output_target"][2], batches[0][1])
    model._keep_fixed(batches[1])
    model._keep_fixed(batches[2])  # full after two batches: the third changes nothing
    torch.testing.assert_close(model.fixed_target, torch.cat([batches[0][1], batches[1][1]]))
    rows = model.log_images(batches[2])["bicubic_output_target"]
    assert rows.shape == (3, 8, 3, 32, 32)
    grid = image_grid(rows)  # 3 rows of 8 tiles of 32 px, 2 px padding
    assert grid.shape == (3, 3 * 34 + 2, 8 * 34 + 2)
    torch.testing.assert_close(grid[:, 2 * 34 + 2:3 * 34, 7 * 34 + 2:8 * 34],
                               (batches[1][1][3] + 1) / 2)  # target 8 under its output


@pytest.fixture
def offline_torchvision(monkeypatch):
    """torchvision's weight downloads fail as on a machine without network access."""
    from urllib.error import URLError

    from torchvision.models._api import WeightsEnum

    def no_network(self, *args, **kwargs):
        raise URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(WeightsEnum, "get_state_dict", no_network)


def test_srgan_without_its_vgg_weights_stops_in_one_line_before_the_run(
        cifar10_dir, tmp_path, capsys, offline_torchvision):
    # It failed at the first training step, with a traceback, after the run folder existed.
    from lightning_gen.cli import main

    with pytest.raises(SystemExit) as stop:
        main(["fit", "--config", str(EXPERIMENTS / "srgan_cifar10.yaml"), *TINY_G,
              "--model.pretrained_generator", "null", "--data.data_dir", str(cifar10_dir),
              "--trainer.logger", "false", "--trainer.default_root_dir", str(tmp_path / "run")])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lightning-gen: error: could not download the VGG19 ImageNet weights")
    assert "vgg_weights" in err and "\n" not in err
    assert not (tmp_path / "run").exists()


def test_evaluate_without_the_lpips_backbone_stops_in_one_line(
        cifar10_dir, tmp_path, capsys, offline_torchvision):
    from lightning_gen.cli import main

    cli = fit_yaml("srresnet_cifar10.yaml", cifar10_dir, *TINY_G,
                   "--trainer.default_root_dir", str(tmp_path / "run"), steps=2)
    with pytest.raises(SystemExit) as stop:
        main(["evaluate", "--ckpt_path", cli.trainer.checkpoint_callback.last_model_path,
              "--num_samples", "12", "--data_dir", str(cifar10_dir), "--accelerator", "cpu",
              "--progress", "false"])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lightning-gen: error: could not download LPIPS's alex backbone")
    assert "--lpips_weights FILE" in err and "\n" not in err
