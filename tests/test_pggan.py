"""Progressive GAN: equalized LR, minibatch stddev, pixel norm and the fade-in against direct
computations; the growth schedule; shapes; gradients of the active blocks; resume mid-fade; the
paper's YAMLs. (bf16-mixed and 2-process DDP: tests/test_scaling.py's GAN lists.)"""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_gen.losses import epsilon_drift_penalty
from lightning_gen.models import PGGAN
from lightning_gen.models.pggan import progressive_phase, progressive_reals
from lightning_gen.nets.pggan import (
    EqualizedConv2d,
    EqualizedLinear,
    PixelNorm,
    ProgressiveDiscriminator,
    ProgressiveGenerator,
    minibatch_stddev,
)
from tests.zoo_utils import EXPERIMENTS, assert_finite_params, fit_yaml

TINY = {"latent_dim": 8, "width": 8}


@pytest.fixture(autouse=True)
def _one_thread():
    # Width-8 networks gain nothing from a second thread, and on a loaded machine OpenMP's
    # spinning threads made a 20-step fit 10-80x slower (measured). conftest restores the count.
    torch.set_num_threads(1)


# ----------------------------------------------------------------------------------------------
# Layers against direct computations
def test_equalized_layers_equal_plain_layers_with_runtime_scaled_weight():
    # Sec. 4.1: w_hat = w * c, c = gain / sqrt(fan_in), applied at runtime. Tolerance: float32.
    torch.manual_seed(0)
    conv = EqualizedConv2d(3, 5, 3, gain=math.sqrt(2))
    conv.bias.data.normal_()
    plain = nn.Conv2d(3, 5, 3, padding=1)
    plain.weight.data = conv.weight.detach() * math.sqrt(2) / math.sqrt(3 * 3 * 3)
    plain.bias.data = conv.bias.detach().clone()
    x = torch.randn(2, 3, 6, 6)
    torch.testing.assert_close(conv(x), plain(x), rtol=1e-5, atol=1e-6)

    linear = EqualizedLinear(7, 4, gain=1.0)
    plain_linear = nn.Linear(7, 4)
    plain_linear.weight.data = linear.weight.detach() / math.sqrt(7)
    plain_linear.bias.data = linear.bias.detach().clone()
    v = torch.randn(3, 7)
    torch.testing.assert_close(linear(v), plain_linear(v), rtol=1e-5, atol=1e-6)
    # The stored weight is N(0, 1) and its gradient is c times the plain layer's: Adam's
    # scale-invariant step then moves every layer's effective weight at the same relative speed.
    assert abs(float(EqualizedConv2d(64, 64, 3).weight.std()) - 1.0) < 0.02
    linear(v).sum().backward()
    plain_linear(v).sum().backward()
    torch.testing.assert_close(linear.weight.grad, plain_linear.weight.grad / math.sqrt(7))


def test_pixel_norm_gives_unit_mean_square_per_pixel():
    x = torch.randn(2, 6, 3, 3) * 5
    y = PixelNorm()(x)
    torch.testing.assert_close(y.pow(2).mean(dim=1), torch.ones(2, 3, 3), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(y, x / (x.pow(2).mean(1, keepdim=True) + 1e-8).sqrt())


@pytest.mark.parametrize(("batch", "group", "expected_group"), [(8, 4, 4), (6, 4, 3), (4, 8, 4)])
def test_minibatch_stddev_equals_its_definition(batch, group, expected_group):
    # Sec. 3: per feature and pixel, the standard deviation over the group (biased, +1e-8 inside
    # the root as in the authors' code), averaged over features and pixels; one value per group,
    # appended as a constant feature map. Sample i is in group i mod (B / G).
    torch.manual_seed(0)
    x = torch.randn(batch, 3, 4, 4)
    out = minibatch_stddev(x, group)
    assert out.shape == (batch, 4, 4, 4)
    torch.testing.assert_close(out[:, :3], x)
    m = batch // expected_group
    for i in range(batch):
        members = x[[j for j in range(batch) if j % m == i % m]]
        assert len(members) == expected_group
        mean = members.mean(dim=0)
        std = ((members - mean).pow(2).mean(dim=0) + 1e-8).sqrt()
        expected = torch.full((4, 4), float(std.mean()))
        torch.testing.assert_close(out[i, 3], expected, rtol=1e-5, atol=1e-6)


def test_drift_penalty_is_mean_square_of_real_scores():
    assert epsilon_drift_penalty(torch.tensor([[1.0], [-3.0]])).item() == 5.0


# ----------------------------------------------------------------------------------------------
# Fade-in and growth
def test_fade_in_at_alpha_zero_equals_previous_resolution_upsampled():
    torch.manual_seed(0)
    g = ProgressiveGenerator(8, (3, 32, 32), width=8)
    d = ProgressiveDiscriminator((3, 32, 32), width=8)
    z = torch.randn(4, 8)
    x = torch.randn(4, 3, 16, 16)
    for level in (1, 2, 3):
        previous = g(z, level - 1, 1.0)
        faded = g(z, level, 0.0)
        assert faded.shape[-1] == 2 * previous.shape[-1]
        up = previous.repeat_interleave(2, dim=-1).repeat_interleave(2, dim=-2)  # nearest
        torch.testing.assert_close(faded, up, rtol=0, atol=1e-6)
        # and in between, the paper's (1 - alpha) * old + alpha * new
        torch.testing.assert_close(g(z, level, 0.3), 0.7 * up + 0.3 * g(z, level, 1.0),
                                   rtol=1e-5, atol=1e-6)
    # D at alpha = 0 is the previous resolution's D on the 2x2-average-pooled input.
    torch.testing.assert_close(d(x, 2, 0.0), d(F.avg_pool2d(x, 2), 1, 1.0), rtol=1e-5, atol=1e-6)
    # Reals: box-filtered to the level; at alpha = 0 the previous level upsampled.
    full = torch.randn(2, 3, 32, 32)
    r8 = full.reshape(2, 3, 8, 4, 8, 4).mean(dim=(3, 5))
    torch.testing.assert_close(progressive_reals(full, 1, 1.0), r8)
    torch.testing.assert_close(progressive_reals(full, 1, 0.0),
                               F.interpolate(progressive_reals(full, 0, 1.0), scale_factor=2))
    assert progressive_reals(full, 3, 1.0) is full


def test_growth_schedule_counts_real_images():
    # 3 levels, 10 images per fade and per stabilisation.
    phases = [progressive_phase(i, 3, 10, 10) for i in (0, 9, 10, 15, 20, 29, 30, 35, 40, 10**9)]
    assert phases == [(0, 1.0), (0, 1.0), (1, 0.0), (1, 0.5), (1, 1.0), (1, 1.0), (2, 0.0),
                      (2, 0.5), (2, 1.0), (2, 1.0)]


@pytest.mark.parametrize("size", [8, 32, 64])
def test_shapes_at_every_level(size):
    model = PGGAN(image_shape=(3, size, size), **TINY)
    z = torch.randn(4, 8)
    for level in range(model.num_levels):
        model.level, model.alpha = level, 0.5 if level else 1.0
        images = model.generate(z)
        assert images.shape == (4, 3, 4 * 2**level, 4 * 2**level)
        assert model.discriminate(images).shape == (4, 1)
        sample = model.sample(3)  # the data's size at every phase, for evaluate
        assert sample.shape == (3, 3, size, size) and sample.dtype == torch.float32


def test_28x28_raises_a_one_line_error():
    with pytest.raises(ValueError, match=r"power of two .* got 28\. Resize the data"):
        PGGAN(image_shape=(1, 28, 28), **TINY)


def _active(prefix_levels: dict[str, list[int]], names: list[str]) -> set[str]:
    return {n for n in names for p, idx in prefix_levels.items()
            if any(n.startswith(f"{p}.{i}.") for i in idx)}


@pytest.mark.parametrize(("level", "alpha"), [(0, 1.0), (1, 0.5), (1, 1.0), (2, 0.5), (2, 1.0)])
def test_active_parameters_get_gradients_inactive_ones_none(level, alpha):
    """One D and one G step at each phase: every parameter of the active blocks (the previous
    toRGB / fromRGB while fading) receives a finite gradient, the rest none. Under DDP the unused
    ones are allowed by GANBase's find_unused_parameters=True (tests/test_scaling.py)."""
    torch.manual_seed(0)
    model = PGGAN(image_shape=(3, 16, 16), **TINY)
    model.level, model.alpha = level, alpha
    rgb = [level, level - 1] if alpha < 1 else [level]
    g_names = [n for n, _ in model.generator.named_parameters()]
    d_names = [n for n, _ in model.discriminator.named_parameters()]
    g_active = {n for n in g_names if n.split(".")[0] in ("dense", "initial")}
    g_active |= _active({"blocks": list(range(level)), "to_rgb": rgb}, g_names)
    d_active = {n for n in d_names if n.split(".")[0] in ("final_conv", "final_dense", "output")}
    d_active |= _active({"blocks": list(range(level)), "from_rgb": rgb}, d_names)

    real = torch.rand(8, 3, 16, 16) * 2 - 1  # the data's size: the loss downsamples it
    with torch.no_grad():
        fake = model.generate(torch.randn(8, 8))
    d_terms = model.discriminator_loss(real, fake, None)
    model.generator_loss(model.generate(torch.randn(8, 8)), None)["loss"].backward()
    model.discriminator.zero_grad(set_to_none=True)  # the G step's gradients in D are not used
    d_terms["loss"].backward()
    assert all(torch.isfinite(v) for v in d_terms.values())
    for net, active in ((model.generator, g_active), (model.discriminator, d_active)):
        for name, p in net.named_parameters():
            if name in active:
                assert p.grad is not None and torch.isfinite(p.grad).all(), name
                assert p.grad.abs().sum() > 0, name
            else:
                assert p.grad is None, f"{name} is inactive at level {level} but got a gradient"


# ----------------------------------------------------------------------------------------------
# Resume mid-fade
class _Phases(L.Callback):
    def __init__(self) -> None:
        self.seen: list[tuple[int, int, float]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.seen.append((pl_module.images_seen, pl_module.level, pl_module.alpha))


def _fit(steps: int, root, ckpt_path=None) -> tuple[PGGAN, _Phases]:
    torch.manual_seed(0)
    model = PGGAN(image_shape=(1, 16, 16), fade_images=16, stabilize_images=8, **TINY,
                  num_fixed_samples=4)
    data = TensorDataset(torch.rand(64, 1, 16, 16) * 2 - 1, torch.zeros(64, dtype=torch.long))
    phases = _Phases()
    every = ModelCheckpoint(dirpath=root, filename="{step}", every_n_train_steps=8,
                            save_top_k=-1)
    trainer = L.Trainer(accelerator="cpu", max_steps=steps, logger=False,
                        callbacks=[phases, every], enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=root)
    trainer.fit(model, DataLoader(data, batch_size=4), ckpt_path=ckpt_path)
    return model, phases


def test_run_stopped_mid_fade_resumes_at_same_resolution_and_alpha(tmp_path):
    # Batch 4; 8 images at 4x4, then a 16-image fade to 8x8. The checkpoint after 4 iterations
    # (8 optimizer steps, 16 images) is half-way through the fade.
    straight_model, straight = _fit(20, tmp_path / "straight")
    # Adam's moments were cleared when the fade to 16x16 began (2 iterations before the end).
    opt_g = straight_model.trainer.optimizers[0]
    assert int(opt_g.state[straight_model.generator.dense.weight]["step"]) == 2
    ckpt = tmp_path / "straight" / "step=8.ckpt"
    state = torch.load(ckpt, weights_only=False)["pggan"]
    assert state == {"images_seen": 16, "level": 1, "alpha": 0.5, "resolution": 8,
                     "phase": [1, True]}
    resumed_model, resumed = _fit(20, tmp_path / "resumed", ckpt_path=str(ckpt))
    assert straight.seen[3] == (16, 1, 0.25)  # the step before the checkpoint
    assert resumed.seen[0] == (20, 1, 0.5)  # the first step after resuming: 8x8, alpha 0.5
    assert resumed.seen == straight.seen[4:]  # and the schedule goes on as if never stopped
    assert resumed.seen[-1][1:] == (2, 0.25)  # ... into the next fade
    loaded = PGGAN.load_from_checkpoint(ckpt)  # evaluate/sample load the phase too
    assert (loaded.level, loaded.alpha, loaded.images_seen) == (1, 0.5, 16)
    assert loaded.sample(2).shape == (2, 1, 16, 16)
    assert_finite_params(resumed_model)


# ----------------------------------------------------------------------------------------------
# The paper's YAMLs
SMALL = ("--model.init_args.width", "8", "--model.init_args.latent_dim", "8",
         "--model.init_args.fade_images", "8", "--model.init_args.stabilize_images", "8",
         "--model.init_args.num_fixed_samples", "4")


@pytest.mark.parametrize(("name", "fixture", "size", "steps"),
                         [("pggan_cifar10.yaml", "cifar10_dir", 32, 14),
                          ("pggan_celeba.yaml", "celeba_dir", 64, 4)])
def test_pggan_yaml_fits(name, fixture, size, steps, request):
    # Batch 8 and 8 images per fade and stabilisation: CIFAR-10 grows 4 -> 32 in 7 iterations.
    cli = fit_yaml(name, request.getfixturevalue(fixture), *SMALL, steps=steps)
    model = cli.model
    hp = model.hparams
    assert (hp.lr_g, hp.lr_d, tuple(hp.betas), hp.n_critic) == (1e-3, 1e-3, (0.0, 0.99), 1)
    assert (hp.gp_weight, hp.eps_drift, hp.ema_decay) == (10.0, 0.001, 0.999)
    assert model.images_seen == 8 * steps // 2
    assert model.resolution == (size if size == 32 else 8)
    assert_finite_params(model)
    logged = {k: float(v) for k, v in cli.trainer.callback_metrics.items()}
    assert all(math.isfinite(v) for v in logged.values()), logged
    assert logged["train/resolution"] == model.resolution and "train/d_drift" in logged
    assert model.sample(2).shape == (2, 3, size, size)


def test_throughput_benchmark_times_pggan_against_its_hand_loop(capsys):
    from tests.test_benchmarks import load, table_rows

    load("throughput").main(["--device", "cpu", "--models", "pggan", "--width", "2",
                             "--batch-size", "4", "--steps", "2", "--lightning", "bare"])
    rows = table_rows(capsys.readouterr().out)
    assert [(r[0], r[2]) for r in rows] == [("pggan", "hand"), ("pggan", "lightning (bare)")]
    assert all(float(r[4]) > 0 for r in rows)


def test_lightning_gen_evaluate_reads_a_mid_growth_checkpoint(cifar10_dir, tmp_path):
    """`fit` stops at 8x8 (alpha 0.5); `evaluate` loads the phase and gets 32x32 samples."""
    import json

    from lightning_gen.cli import main
    from lightning_gen.evaluate import load_run
    from tests.metrics_helpers import classifier_checkpoint

    main(["fit", "--config", str(EXPERIMENTS / "pggan_cifar10.yaml"), *SMALL[:4],
          "--model.fade_images", "16", "--model.stabilize_images", "8",
          "--data.data_dir", str(cifar10_dir), "--data.batch_size", "8", "--data.num_workers",
          "0", "--trainer.max_steps", "4", "--trainer.logger", "false",
          "--trainer.enable_progress_bar", "false", "--trainer.accelerator", "cpu",
          "--trainer.default_root_dir", str(tmp_path / "run"), "--images.every_n_epochs", "0"])
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert torch.load(ckpt, weights_only=False)["pggan"]["alpha"] == 0.5
    model, _ = load_run(str(ckpt))  # what evaluate and sample load
    assert (model.resolution, model.alpha) == (8, 0.5)
    clf = classifier_checkpoint(tmp_path / "clf.ckpt", image_shape=(3, 32, 32))
    out = tmp_path / "eval.json"
    main(["evaluate", "--ckpt_path", str(ckpt), "--num_samples", "16", "--reference", "test",
          "--feature_extractor", f"classifier:{clf}", "--batch_size", "8",
          "--data_dir", str(cifar10_dir), "--kid_subset_size", "8", "--isc_splits", "2",
          "--accelerator", "cpu", "--progress", "false", "--cache_dir", str(tmp_path / "cache"),
          "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["num_samples"] == 16 and math.isfinite(result["fid"])


def test_sample_grids_say_which_resolution_and_fade_they_come_from():
    model = PGGAN(image_shape=(3, 16, 16), **TINY)
    hp = model.hparams
    assert model.grid_layouts()["samples"].endswith(
        "; generated at 4x4, shown at 16x16 (pixels repeated)")
    model.images_seen = hp.stabilize_images + hp.fade_images // 2  # halfway into 8x8
    model.update_phase()
    assert model.grid_layouts()["samples"].endswith(
        "; generated at 8x8, fading in with alpha 0.50, shown at 16x16 (pixels repeated)")
    model.images_seen = 10 * (hp.stabilize_images + hp.fade_images)  # the last level
    model.update_phase()
    assert model.grid_layouts()["samples"].endswith("; generated at 16x16")
