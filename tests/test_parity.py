"""Parity of the suite's updates with the algorithms (issue 16, item 6).

The hand-written loops of ``benchmarks/throughput.py`` are the reference implementation of each
model's update (Goodfellow et al. 2014, Algorithm 1 with ``k = n_critic``; Gulrajani et al. 2017,
Algorithm 1; the ELBO step of Kingma & Welling 2014). Each test builds the LightningModule twice
from the same seed (equal initial weights), trains one copy with ``Trainer.fit`` and the other
with the hand loop on the same batches from the same global seed (so the same noise ``z``, the
same ``alpha`` of the gradient penalty, the same ``eps`` of the reparameterisation), and
compares every parameter and buffer.

Tolerance: ``TOL = 1e-5`` absolute, in float32. One Adam step moves a weight by up to about the
learning rate (1e-4 to 1e-3 here), so any difference in the update (an extra or missing step,
other noise, another loss, batch-norm statistics of another batch) shows as a difference of
that order. The two implementations run the same operations in the same order and agree to
the bit here (one torch thread, one process); the tolerance leaves room for nothing more than
rounding. (Rounding does grow: with WGAN-GP's terms summed in another order, PGGAN's weights
differed by 8e-6 after one step and 1e-3, one learning rate, after four, because Adam divides
gradients near its ``eps`` by their own size; the hand loops therefore follow the suite's
order.)
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from lightning_gen.models import DCGAN, PGGAN, VAE, WGANGP, BigGAN, PixelCNN, StyleGAN2

ROOT = Path(__file__).resolve().parents[1]
TOL = 1e-5
SHAPE = (1, 16, 16)
BATCH = 4


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: these tiny networks gain nothing from more on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def throughput():
    spec = importlib.util.spec_from_file_location("bench_throughput",
                                                  ROOT / "benchmarks" / "throughput.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def batches(n: int, shape: tuple[int, int, int] = SHAPE) -> list[torch.Tensor]:
    """256 grey levels in [-1, 1], which suit every model (PixelCNN discretises them)."""
    g = torch.Generator().manual_seed(1)
    return [torch.randint(0, 256, (BATCH, *shape), generator=g).float() / 127.5 - 1
            for _ in range(n)]


def twins(build):
    """Two modules with equal initial weights, and a third kept as the starting point."""
    copies = []
    for _ in range(3):
        torch.manual_seed(0)
        copies.append(build())
    return copies


def train_both(throughput, build, hand, n_batches: int, tmp_path,
               precision: str = "32-true", shape: tuple[int, int, int] = SHAPE,
               **hand_options):
    lightning, by_hand, start = twins(build)
    data = batches(n_batches, shape)
    throughput.train_with_lightning(lightning, data, precision=precision, seed=123,
                                    root=tmp_path)
    throughput.train_by_hand(hand, by_hand, data, precision=precision, seed=123, **hand_options)
    return lightning, by_hand, start


def assert_parity(throughput, lightning, by_hand, start) -> None:
    diffs = throughput.weight_differences(lightning, by_hand)
    worst = max(diffs, key=diffs.get)
    assert diffs[worst] <= TOL, f"{worst} differs by {diffs[worst]:.3g} (tolerance {TOL})"
    # The comparison means something: training moved every trained network's weights far
    # beyond the tolerance.
    moved = throughput.weight_differences(lightning, start)
    for net in {n.split(".")[0] for n, p in start.named_parameters() if p.requires_grad}:
        assert max(v for k, v in moved.items() if k.startswith(net + ".")) > 100 * TOL, net


@pytest.mark.parametrize("n_critic", [1, 5])
def test_dcgan_makes_the_updates_of_algorithm_1(throughput, n_critic, tmp_path):
    def build():
        return DCGAN(image_shape=SHAPE, latent_dim=8, g_width=8, d_width=8, n_critic=n_critic)

    n_batches = 10  # k = 5: two generator steps, each after five discriminator steps
    lightning, by_hand, start = train_both(throughput, build, throughput.SPECS["dcgan"].hand,
                                           n_batches, tmp_path)
    assert (lightning.d_steps, lightning.g_steps) == (n_batches, n_batches // n_critic)
    assert_parity(throughput, lightning, by_hand, start)


def test_wgan_gp_makes_the_updates_of_its_algorithm_1(throughput, tmp_path):
    def build():
        return WGANGP(image_shape=SHAPE, latent_dim=8, g_width=8, d_width=8, n_critic=5,
                      gp_weight=5.0)  # not the default: the reference must read the model's

    lightning, by_hand, start = train_both(throughput, build, throughput.SPECS["wgan_gp"].hand,
                                           10, tmp_path)
    assert (lightning.d_steps, lightning.g_steps) == (10, 2)
    assert_parity(throughput, lightning, by_hand, start)


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_vae_makes_the_elbo_step(throughput, likelihood, tmp_path):
    def build():
        return VAE(image_shape=SHAPE, latent_dim=8, width=8, beta=2.0, likelihood=likelihood)

    lightning, by_hand, start = train_both(throughput, build, throughput.SPECS["vae"].hand, 5,
                                           tmp_path)
    assert_parity(throughput, lightning, by_hand, start)


@pytest.mark.parametrize("name", ["dcgan", "wgan_gp", "vae"])
def test_bf16_mixed_makes_the_same_updates(throughput, name, tmp_path):
    """Under ``bf16-mixed`` too, once the hand loop runs backward and optimizer steps inside
    autocast as Lightning's manual optimisation does (the plain hand loop, backward outside
    autocast, rounds differently: ~1e-10 after one step, amplified by bf16 to ~1e-4 after ten;
    the VAE's automatic optimisation runs backward outside autocast and agrees either way)."""
    build = {
        "dcgan": lambda: DCGAN(image_shape=SHAPE, latent_dim=8, g_width=8, d_width=8),
        "wgan_gp": lambda: WGANGP(image_shape=SHAPE, latent_dim=8, g_width=8, d_width=8),
        "vae": lambda: VAE(image_shape=SHAPE, latent_dim=8, width=8),
    }[name]
    lightning, by_hand, start = train_both(
        throughput, build, throughput.SPECS[name].hand, 10, tmp_path, precision="bf16-mixed",
        autocast_whole_step=name != "vae")
    assert_parity(throughput, lightning, by_hand, start)


def pggan_at_full_resolution() -> PGGAN:
    module = PGGAN(image_shape=COLOUR, latent_dim=16, width=16, mbstd_group_size=2,
                   ema_decay=0.0)
    module.images_seen = 10**12  # past the growth, as in throughput.py: the hand loop does not grow
    return module


COLOUR = (3, 16, 16)
OTHERS = {
    # name: (build, batches, image shape)
    "pixelcnn": (lambda: PixelCNN(image_shape=(1, 8, 8), hidden=12, n_layers=2, num_levels=4),
                 4, (1, 8, 8)),
    # lazy R1 and path-length steps every 2nd batch; the generator average and w_avg included
    "stylegan2": (lambda: StyleGAN2(image_shape=COLOUR, latent_dim=16, w_dim=16,
                                    channel_base=64, channel_max=16, mapping_layers=2,
                                    r1_interval=2, pl_interval=2, mbstd_group=2), 4, COLOUR),
    # hinge losses, orthogonal regularisation, k = 2, the generator average
    "biggan": (lambda: BigGAN(image_shape=COLOUR, latent_dim=18, g_width=4, d_width=4,
                              num_classes=10, shared_dim=8, n_critic=2, ema_decay=0.999),
               4, COLOUR),
    "pggan": (pggan_at_full_resolution, 4, COLOUR),
}


@pytest.mark.parametrize("name", sorted(OTHERS))
def test_the_other_models_make_their_reference_updates(throughput, name, tmp_path):
    """The benchmark's other hand loops are reference updates too (PGGAN: past its growth)."""
    build, n_batches, shape = OTHERS[name]
    lightning, by_hand, start = train_both(throughput, build, throughput.SPECS[name].hand,
                                           n_batches, tmp_path, shape=shape)
    assert_parity(throughput, lightning, by_hand, start)


def test_parity_tells_the_fake_batch_reusing_update_apart(throughput, tmp_path):
    """The test can fail: PyTorch's DCGAN example (the generator step reuses the discriminator
    step's fake batch) is a different update from the suite's fresh noise, and it shows far
    beyond the tolerance."""
    def build():
        return DCGAN(image_shape=SHAPE, latent_dim=8, g_width=8, d_width=8)

    reuse = throughput.gan_hand_loop(throughput.dcgan_d_loss,
                                     throughput.losses.gan_generator_loss_nonsaturating,
                                     reuse_fake=True)
    lightning, by_hand, _ = train_both(throughput, build, reuse, 5, tmp_path)
    diffs = throughput.weight_differences(lightning, by_hand)
    weights = [diffs[name] for name, _ in lightning.generator.named_parameters(prefix="generator")]
    assert max(weights) > 20 * TOL  # 1.9e-3 here, about ten Adam steps of 2e-4
    # G ran twice per iteration in the suite (fresh noise), once in the variant.
    def forwards(module):
        bn = next(m for m in module.generator.modules() if isinstance(m, torch.nn.BatchNorm2d))
        return int(bn.num_batches_tracked)

    assert (forwards(lightning), forwards(by_hand)) == (2 * 5, 5)


def test_throughput_prints_one_json_line_per_row(throughput, capsys):
    throughput.main(["--device", "cpu", "--models", "vae", "--width", "4", "--batch-size", "2",
                     "--steps", "2", "--lightning", "bare"])
    out = capsys.readouterr().out
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert [(r["model"], r["setup"]) for r in rows] == [("vae", "hand"), ("vae", "bare")]
    hand, bare = rows
    assert hand["ratio"] == 1.0 and hand["images_per_s"] == hand["hand_images_per_s"]
    assert bare["hand_images_per_s"] == hand["images_per_s"] > 0
    assert bare["ratio"] == pytest.approx(bare["images_per_s"] / bare["hand_images_per_s"],
                                          rel=1e-3)
    assert (bare["batch"], bare["steps"], bare["precision"]) == (2, 2, "32-true")
    table = [line for line in out.splitlines() if line.startswith("| vae ")]
    assert f"| {bare['ratio']:.2f} |" in table[1]


def test_throughput_parity_mode_prints_the_largest_difference_per_model(throughput, capsys):
    throughput.main(["--device", "cpu", "--parity", "--models", "dcgan,wgan_gp", "--width", "4",
                     "--batch-size", "2", "--steps", "2"])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()
            if line.startswith("{")]
    assert [(r["model"], r["check"], r["steps"]) for r in rows] == [("dcgan", "parity", 2),
                                                                    ("wgan_gp", "parity", 5)]
    for row in rows:
        assert row["max_abs_difference"] <= TOL < 100 * TOL < row["max_change_from_start"]
