"""pix2pix (Isola et al. 2017) for colorization: U-Net shapes, the PatchGAN's 70x70 receptive
field (counted and by autograd), the cGAN + 100 L1 objective against a direct computation, the
paper's test-time mode, the (gray, colour) DataModules that convert back to the 8-bit files
exactly, and the two YAMLs (fit, bf16-mixed, grids, checkpoint reload, `lightning-gen sample`)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from datamodules.colorization import (
    CelebAColorizationDataModule,
    CIFAR10ColorizationDataModule,
    from_uint8,
    rgb_to_gray,
    to_uint8,
)
from lightning_gen.losses import pix2pix_discriminator_loss, pix2pix_generator_loss
from lightning_gen.metrics.evaluator import load_split
from lightning_gen.models import Pix2Pix
from lightning_gen.nets.pix2pix import (
    ConditionalPatchDiscriminator,
    UNetGenerator,
    paper_inference,
    receptive_field,
)
from tests.zoo_utils import assert_finite_params, fit_yaml

TINY = ("--model.init_args.g_width", "4", "--model.init_args.d_width", "4")


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)  # tiny networks; conftest restores the count


# ----------------------------------------------------------------------------------------------
# Networks
@pytest.mark.parametrize(("side", "n_down"), [(32, 5), (64, 6), (64, 3)])
def test_unet_maps_gray_to_colour_at_the_input_size_and_every_parameter_learns(side, n_down):
    torch.manual_seed(0)
    net = UNetGenerator(in_channels=1, out_channels=3, width=4, n_down=n_down)
    x = torch.randn(2, 1, side, side)
    y = net(x)
    assert y.shape == (2, 3, side, side)
    assert y.abs().max() <= 1  # tanh
    y.square().mean().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    # Paper's widths: C64-C128-C256-C512-C512...; the encoder reaches 1x1 when side = 2**n_down.
    assert [layer[-2 if i not in (0, n_down - 1) else -1].out_channels
            for i, layer in enumerate(net.down)] == [4 * min(2**i, 8) for i in range(n_down)]
    dropouts = [any(isinstance(m, nn.Dropout) for m in layer) for layer in net.up]
    # CD512-CD1024-CD1024-C1024-...: the first 3 decoder layers (never the tanh output layer).
    assert dropouts == [j < 3 and j < n_down - 1 for j in range(n_down)]


def test_unet_skips_carry_the_input_and_sides_must_divide():
    net = UNetGenerator(1, 3, width=4, n_down=5).eval()
    x = torch.randn(1, 1, 32, 32, requires_grad=True)
    out = net(x)
    # With skips, output pixel (0, 0) depends on nearby input pixels through the outer skip.
    (g,) = torch.autograd.grad(out[0, :, 0, 0].sum(), x)
    assert g[0, 0, :2, :2].abs().sum() > 0
    with pytest.raises(ValueError, match="divide by 2"):
        net(torch.randn(1, 1, 48, 48))
    with pytest.raises(ValueError, match="n_down"):
        Pix2Pix((3, 48, 48), n_down=5)


def test_patchgan_receptive_field_is_70_counted_and_by_autograd():
    d = ConditionalPatchDiscriminator(in_channels=1, out_channels=3, width=4, n_layers=3).eval()
    assert receptive_field(d) == 70  # 1 + 3 * (1 + 2 + 4 + 8 + 8)
    assert receptive_field(ConditionalPatchDiscriminator(1, 3, 4, n_layers=1)) == 16
    torch.manual_seed(0)
    for m in d.modules():  # BatchNorm in eval mode: pixels of one image do not mix
        if isinstance(m, nn.BatchNorm2d):
            m.running_var.uniform_(0.5, 2)
    x = torch.randn(1, 1, 160, 160, requires_grad=True)
    y = torch.randn(1, 3, 160, 160, requires_grad=True)
    logits = d(x, y)  # (1, 1, 18, 18)
    i, j = logits.shape[-2] // 2, logits.shape[-1] // 2
    gx, gy = torch.autograd.grad(logits[0, 0, i, j], (x, y))
    seen = (gx.abs().sum((0, 1)) + gy.abs().sum((0, 1))) > 0  # (H, W)
    rows, cols = seen.any(1).nonzero().flatten(), seen.any(0).nonzero().flatten()
    assert (int(rows[-1] - rows[0]) + 1, int(cols[-1] - cols[0]) + 1) == (70, 70)
    assert gx.abs().sum() > 0 and gy.abs().sum() > 0  # D sees the condition and the image


# ----------------------------------------------------------------------------------------------
# Objective
def test_losses_equal_the_paper_equations_computed_directly():
    # Eq. 1, 3, 4 with lambda = 100 and D halved, in float64 from sigmoid probabilities.
    # Tolerance: float32 against float64, rtol 1e-5.
    g = torch.Generator().manual_seed(0)
    real, fake = torch.randn(4, 1, 3, 3, generator=g), torch.randn(4, 1, 3, 3, generator=g)
    out, target = torch.rand(4, 3, 8, 8, generator=g) * 2 - 1, torch.rand(4, 3, 8, 8, generator=g)
    p_real, p_fake = torch.sigmoid(real.double()), torch.sigmoid(fake.double())
    expected_d = 0.5 * (-torch.log(p_real).mean() - torch.log(1 - p_fake).mean())
    torch.testing.assert_close(pix2pix_discriminator_loss(real, fake).double(), expected_d,
                               rtol=1e-5, atol=0)
    l1 = sum(abs(float(a) - float(b)) for a, b in zip(target.flatten(), out.flatten(),
                                                      strict=True)) / target.numel()
    adv = float(-torch.log(p_fake).mean())
    terms = pix2pix_generator_loss(fake, out, target)  # default lambda
    assert float(terms["l1"]) == pytest.approx(l1, rel=1e-5)
    assert float(terms["adversarial"]) == pytest.approx(adv, rel=1e-5)
    assert float(terms["loss"]) == pytest.approx(adv + 100.0 * l1, rel=1e-5)
    assert float(pix2pix_generator_loss(fake, out, target, 7.0)["loss"]) == pytest.approx(
        adv + 7.0 * l1, rel=1e-5)


def test_model_objective_weights_l1_by_100_on_its_own_networks():
    model = Pix2Pix((3, 32, 32), g_width=4, d_width=4).eval()  # eval: no dropout, fixed BN
    assert model.hparams.lambda_l1 == 100.0
    torch.manual_seed(0)
    x, y = torch.rand(2, 1, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1
    terms = model.generator_terms(x, y)
    fake = model.generator(x)
    p = torch.sigmoid(model.discriminator(x, fake).double())
    expected = -torch.log(p).mean() + 100.0 * (y.double() - fake.double()).abs().mean()
    assert float(terms["loss"]) == pytest.approx(float(expected), rel=1e-5)
    assert model.paired_eval == {"y_channel": False, "crop_border": 0, "fid": True}


def test_paper_inference_keeps_dropout_and_batch_statistics_without_touching_running_stats():
    model = Pix2Pix((3, 32, 32), g_width=4, d_width=4)
    model.generator.train()
    before = {k: v.clone() for k, v in model.generator.state_dict().items()}
    x = torch.rand(4, 1, 32, 32) * 2 - 1
    a, b = model.translate(x), model.translate(x)
    assert not torch.equal(a, b)  # dropout is the noise z, also at test time
    assert model.generator.training  # mode restored
    for k, v in model.generator.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} changed at inference"
    with paper_inference(model.generator):  # batch statistics: a batch of one equals itself
        single = model.generator(x[:1])
        assert not any(m.track_running_stats for m in model.generator.modules()
                       if isinstance(m, nn.BatchNorm2d))
    assert all(m.track_running_stats for m in model.generator.modules()
               if isinstance(m, nn.BatchNorm2d))
    assert single.shape == (1, 3, 32, 32)
    model.hparams.inference = "eval"
    torch.testing.assert_close(model.translate(x), model.translate(x))  # deterministic


# ----------------------------------------------------------------------------------------------
# Data
def test_cifar10_pairs_are_gray_and_colour_of_the_file_and_convert_back_exactly(cifar10_dir):
    dm = CIFAR10ColorizationDataModule(data_dir=str(cifar10_dir), batch_size=4)
    assert dm.image_shape == (3, 32, 32) and dm.source_shape == (1, 32, 32)
    test = load_split(dm, "test")  # the evaluate path's items are (source, target)
    with open(Path(cifar10_dir) / "cifar-10-batches-py" / "test_batch", "rb") as f:
        raw = pickle.load(f, encoding="latin1")["data"].reshape(-1, 3, 32, 32)  # uint8
    assert len(test) == len(raw)
    for i in range(len(raw)):
        gray, colour = test[i]
        assert gray.shape == (1, 32, 32) and colour.shape == (3, 32, 32)
        assert gray.min() >= -1 and colour.max() <= 1
        # The colour target is the file's 8-bit image; the source is PIL's luma of it.
        assert np.array_equal(to_uint8(colour).numpy(), raw[i])
        pil_gray = np.asarray(Image.fromarray(raw[i].transpose(1, 2, 0)).convert("L"))
        assert np.array_equal(to_uint8(gray)[0].numpy(), pil_gray)
        # Exactly on the 8-bit grid: back and forth is the identity, bit for bit.
        assert torch.equal(from_uint8(to_uint8(gray)), gray)
        assert torch.equal(from_uint8(to_uint8(colour)), colour)
    assert (to_uint8(torch.stack([test[i][0] for i in range(len(raw))])) > 0).any()


def test_celeba_pairs_through_every_loader(celeba_dir):
    dm = CelebAColorizationDataModule(data_dir=str(celeba_dir), image_size=32, batch_size=4)
    dm.prepare_data()
    dm.setup("fit")
    dm.setup("test")
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        gray, colour = next(iter(loader))
        assert gray.shape[1:] == (1, 32, 32) and colour.shape[1:] == (3, 32, 32)
        for g, c in zip(gray, colour, strict=True):
            pil = Image.fromarray(to_uint8(c).permute(1, 2, 0).numpy()).convert("L")
            assert np.array_equal(to_uint8(g)[0].numpy(), np.asarray(pil))
            assert torch.equal(rgb_to_gray(c), g)
    assert dm.num_classes == 0
    with pytest.raises(ValueError, match="RGB"):
        rgb_to_gray(torch.zeros(1, 8, 8))


# ----------------------------------------------------------------------------------------------
# YAMLs: fit, grids, bf16, checkpoints, sample
def test_cifar10_yaml_fits_writes_the_grid_and_reloads(cifar10_dir):
    cli = fit_yaml("pix2pix_colorization_cifar10.yaml", cifar10_dir, *TINY,
                   "--images.every_n_epochs", "1", steps=4)
    model = cli.model
    assert cli.trainer.global_step == 4 and (model.g_steps, model.d_steps) == (2, 2)
    assert_finite_params(model)
    assert {"train/g_l1", "train/g_adversarial", "train/d_loss"} <= set(cli.trainer.callback_metrics)
    (val,) = cli.trainer.validate(model, datamodule=cli.datamodule, verbose=False)
    assert 0 < val["val/l1"] < 2
    grid = np.asarray(Image.open(Path.cwd() / "images" / "input_output_target_last.png"))
    # 8 inputs, 8 outputs, 8 targets: three rows of 32px tiles (+2px padding), inputs grey.
    assert grid.shape[:2] == (3 * 34 + 2, 8 * 34 + 2)
    inputs = grid[2:34, 2:34].astype(int)
    assert np.array_equal(inputs[..., 0], inputs[..., 1])
    assert bool(model._fixed_set) and model.fixed_source.abs().sum() > 0
    path = cli.trainer.checkpoint_callback.last_model_path
    reloaded = Pix2Pix.load_from_checkpoint(path, map_location="cpu")
    assert torch.equal(reloaded.fixed_source, model.fixed_source)
    torch.manual_seed(0)
    expected = model.eval().sample(5)
    torch.manual_seed(0)
    torch.testing.assert_close(reloaded.eval().sample(5), expected)
    assert expected.shape == (5, 3, 32, 32) and expected.abs().max() <= 1

    from lightning_gen.cli import main
    out = Path.cwd() / "samples"
    main(["sample", "--ckpt_path", path, "--num_samples", "4", "--out", str(out),
          "--accelerator", "cpu", "--progress", "false"])
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == 4 and Image.open(pngs[0]).size == (32, 32)
    assert Image.open(pngs[0]).mode == "RGB"  # colour translations of the gray sources
    with pytest.raises(ValueError, match="in_channels"):
        Pix2Pix((3, 32, 32), in_channels=3, g_width=4, d_width=4).check_datamodule(cli.datamodule)


def test_celeba_yaml_fits_under_bf16_mixed(celeba_dir):
    cli = fit_yaml("pix2pix_colorization_celeba.yaml", celeba_dir, *TINY,
                   "--trainer.precision", "bf16-mixed", steps=2)
    assert cli.trainer.global_step == 2
    assert cli.model.generator.n_down == 6
    assert_finite_params(cli.model)
    losses = {k: float(v) for k, v in cli.trainer.callback_metrics.items() if k.endswith("loss")}
    assert set(losses) >= {"train/g_loss", "train/d_loss"}
    assert all(np.isfinite(v) for v in losses.values())
    assert cli.model.sample(2).dtype == torch.float32


def test_evaluate_reports_rgb_psnr_ssim_lpips_and_fid_of_outputs_vs_targets(cifar10_dir, tmp_path,
                                                                           capsys):
    import json
    import math

    from lightning_gen.evaluate import main
    from lightning_gen.metrics.paired import psnr_ssim
    from tests.metrics_helpers import classifier_checkpoint

    cli = fit_yaml("pix2pix_colorization_cifar10.yaml", cifar10_dir, *TINY,
                   "--model.init_args.inference", "eval", steps=2)  # eval: deterministic
    ckpt = cli.trainer.checkpoint_callback.last_model_path
    clf = classifier_checkpoint(tmp_path / "clf.ckpt", image_shape=(3, 32, 32))
    out = tmp_path / "eval.json"
    main(["evaluate", "--ckpt_path", ckpt, "--num_samples", "12", "--batch_size", "8",
          "--lpips_weights", "random", "--data_dir", str(cifar10_dir), "--accelerator", "cpu",
          "--feature_extractor", f"classifier:{clf}", "--progress", "false", "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["num_pairs"] == 12 and result["reference"]["split"] == "test"
    assert "on RGB, 0 border px cropped" in result["paired_protocol"]
    assert all(math.isfinite(result[k]) for k in ("psnr", "ssim", "lpips", "fid"))
    pairs = [load_split(cli.datamodule, "test")[i] for i in range(12)]
    source, target = torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])
    with torch.no_grad():
        output = cli.model.eval().translate(source)
    psnr, ssim = psnr_ssim(output, target, y_channel=False, crop_border=0)
    assert abs(result["psnr"] - float(psnr.mean())) < 1e-3
    assert abs(result["ssim"] - float(ssim.mean())) < 1e-4

    # Sampling-only options are refused in one line, not silently ignored.
    from lightning_gen.cli import main as cli_main

    with pytest.raises(SystemExit) as stop:
        cli_main(["evaluate", "--ckpt_path", ckpt, "--num_samples", "12", "--seeds", "3",
              "--parzen", "true", "--data_dir", str(cifar10_dir), "--accelerator", "cpu",
              "--progress", "false", "--out", str(tmp_path / "refused.json")])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lightning-gen: error: --parzen, --seeds 3: not available for Pix2Pix")
    assert "\n" not in err and not (tmp_path / "refused.json").exists()


def test_evaluate_with_the_papers_dropout_repeats_its_numbers_for_a_seed(cifar10_dir, tmp_path):
    # pix2pix's paper inference keeps dropout on at test time: `--seed` must fix its draws
    # (it was recorded in the JSON but drew from whatever state torch's generator was in).
    import json

    from lightning_gen.evaluate import main
    from tests.metrics_helpers import classifier_checkpoint

    cli = fit_yaml("pix2pix_colorization_cifar10.yaml", cifar10_dir, *TINY, steps=2)
    assert cli.model.hparams.inference == "paper"
    ckpt = cli.trainer.checkpoint_callback.last_model_path
    clf = classifier_checkpoint(tmp_path / "clf.ckpt", image_shape=(3, 32, 32))

    def evaluate(seed: int) -> dict:
        main(["evaluate", "--ckpt_path", ckpt, "--num_samples", "12", "--batch_size", "8",
              "--seed", str(seed), "--lpips_weights", "random", "--data_dir", str(cifar10_dir),
              "--accelerator", "cpu", "--feature_extractor", f"classifier:{clf}",
              "--progress", "false"])
        run = Path(ckpt).parents[1]
        # Named after what was scored: classifier FID, random LPIPS, the test split, 12 pairs.
        (path,) = (run / "eval").glob("*.json")
        assert path.name == "paired-classifier-lpips_random_test_12.json"
        result = json.loads(path.read_text())
        path.unlink()
        return result

    torch.manual_seed(123)  # the caller's random state plays no part
    first = evaluate(0)
    torch.manual_seed(456)
    again = evaluate(0)
    other = evaluate(1)
    for key in ("psnr", "ssim", "lpips", "fid"):
        assert again[key] == first[key]
    assert other["psnr"] != first["psnr"]  # other dropout masks
