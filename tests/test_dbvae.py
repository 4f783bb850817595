"""DB-VAE (Amini et al. 2019): resampling probabilities against the direct histogram formula,
the sampler's draws, the joint loss, the per-subgroup accuracy table, the up-weighted grid, and
the YAMLs (fit, bf16-mixed, test, sample, evaluate) on format-true CelebA files."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from datamodules import CelebAAttributesDataModule, CelebADataModule, ResamplingSampler
from datamodules.celeba import ATTRIBUTES
from lightning_gen.callbacks.images import grid_pixels, image_grid
from lightning_gen.losses import dbvae_loss
from lightning_gen.models import DBVAE
from lightning_gen.models.dbvae import (
    compare_tables,
    debiasing_probabilities,
    subgroup_accuracy,
    write_table,
)
from tests.zoo_utils import EXPERIMENTS, assert_finite_params, fit_yaml

TINY = ("--model.init_args.width", "8", "--model.init_args.latent_dim", "8",
        "--data.image_size", "32")


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)  # width-8 nets gain nothing from threads; conftest restores it


# ----------------------------------------------------------------------------------------------
# Mathematics against independent computations
def _numpy_probabilities(mu: np.ndarray, num_bins: int, alpha: float) -> np.ndarray:
    """Algorithm 1 written directly: numpy's histogram per dimension, W ∝ prod 1/(Q + alpha)."""
    n, d = mu.shape
    w = np.ones(n)
    for i in range(d):
        counts, edges = np.histogram(mu[:, i], bins=num_bins)
        q = counts / n
        b = np.digitize(mu[:, i], edges[1:-1])  # numpy's bins: [e_k, e_k+1), the last closed
        w *= 1.0 / (q[b] + alpha)
    return w / w.sum()


@pytest.mark.parametrize(("num_bins", "alpha"), [(10, 0.001), (5, 0.1), (3, 0.0)])
def test_resampling_probabilities_equal_the_direct_histogram_formula(num_bins, alpha):
    # Fixed latents with a skewed dimension and a rare cluster. Tolerance: float64 rounding.
    g = torch.Generator().manual_seed(0)
    mu = torch.cat([torch.randn(400, 4, generator=g),
                    torch.randn(20, 4, generator=g) * 0.3 + 3.0])
    mu[:, 2] = mu[:, 2].exp()
    expected = _numpy_probabilities(mu.double().numpy(), num_bins, alpha)
    got = debiasing_probabilities(mu, num_bins, alpha)
    assert got.dtype == torch.float64 and got.shape == (420,)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10, atol=0)
    assert abs(got.sum().item() - 1) < 1e-12
    # The rare cluster is up-weighted; a huge alpha flattens the weights to uniform.
    assert got[400:].mean() > 5 * got[:400].mean()
    flat = debiasing_probabilities(mu, num_bins, alpha=1e9)
    torch.testing.assert_close(flat, torch.full_like(flat, 1 / 420), rtol=1e-6, atol=0)


def test_resampling_probabilities_do_not_overflow_in_many_dimensions():
    # 100 dimensions: the product of 1/(Q + alpha) reaches ~1e300; the log-space softmax stays
    # finite and equals the direct formula on a subset where it does not overflow.
    mu = torch.randn(300, 100, generator=torch.Generator().manual_seed(1))
    p = debiasing_probabilities(mu, 10, 0.001)
    assert torch.isfinite(p).all() and abs(p.sum().item() - 1) < 1e-12
    np.testing.assert_allclose(debiasing_probabilities(mu[:, :20]).numpy(),
                               _numpy_probabilities(mu[:, :20].double().numpy(), 10, 0.001),
                               rtol=1e-9)


def test_sampler_draws_the_rarest_latents_more_often_than_uniform():
    # 950 common latents, 50 in a rare cluster: uniform sampling would give the cluster 5% of
    # the draws. Tolerance: the observed share is within 4 binomial standard deviations of
    # sum(p[rare]) over 5 epochs of 1000 draws, and more than 4 deviations above 5%.
    g = torch.Generator().manual_seed(0)
    mu = torch.cat([torch.randn(950, 2, generator=g), torch.randn(50, 2, generator=g) * 0.2 + 4])
    p = debiasing_probabilities(mu, num_bins=10, alpha=0.001)
    sampler = ResamplingSampler(1000, seed=3)
    sampler.set_weights(p)
    draws = []
    for epoch in range(5):
        sampler.set_epoch(epoch)
        draws += list(sampler)
    assert len(draws) == 5000 and len(sampler) == 1000
    observed = float(np.mean(np.array(draws) >= 950))
    expected = p[950:].sum().item()
    assert expected > 3 * 0.05
    assert abs(observed - expected) < 4 * math.sqrt(expected * (1 - expected) / 5000)
    assert observed > 0.05 + 4 * math.sqrt(0.05 * 0.95 / 5000)
    # Same epoch, same draws (every DDP rank agrees); another epoch, other draws.
    sampler.set_epoch(4)
    assert list(sampler) == draws[4000:] and draws[:1000] != draws[1000:2000]
    with pytest.raises(ValueError, match="weights"):
        sampler.set_weights(torch.ones(999))


def test_joint_loss_equals_its_equation():
    # L = mean_i [c1 * BCE(l_i, y_i) + c2 * mask_i * L_VAE_i], BCE written out. Tol: float32.
    g = torch.Generator().manual_seed(0)
    logits, vae = torch.randn(16, generator=g) * 3, torch.rand(16, generator=g) * 5
    y = (torch.rand(16, generator=g) > 0.5).float()
    mask = (torch.rand(16, generator=g) > 0.3).float()
    s = torch.sigmoid(logits.double())
    bce = -(y * torch.log(s) + (1 - y) * torch.log(1 - s))
    expected = (0.7 * bce + 2.5 * mask * vae.double()).mean()
    got = dbvae_loss(logits, y, vae, mask, c1=0.7, c2=2.5)
    torch.testing.assert_close(got.double(), expected, rtol=1e-6, atol=1e-6)


def test_subgroup_accuracy_counts_each_combination():
    correct = torch.tensor([1, 0, 1, 1, 0, 1, 1], dtype=torch.bool)
    groups = torch.tensor([[1, 1], [1, 1], [1, 0], [0, 0], [0, 0], [0, 0], [1, 0]])
    rows = subgroup_accuracy(correct, groups, ("Male", "Pale_Skin"))
    assert [(r["subgroup"], r["n"]) for r in rows] == [
        ("all", 7), ("Male=1,Pale_Skin=1", 2), ("Male=1,Pale_Skin=0", 2),
        ("Male=0,Pale_Skin=1", 0), ("Male=0,Pale_Skin=0", 3)]
    accs = [r["accuracy"] for r in rows]
    assert accs[0] == pytest.approx(5 / 7) and accs[1] == 0.5 and accs[2] == 1.0
    assert math.isnan(accs[3]) and accs[4] == pytest.approx(2 / 3)


def test_comparison_table_puts_the_runs_side_by_side(tmp_path):
    groups = torch.tensor([[1], [1], [0], [0]])
    without = subgroup_accuracy(torch.tensor([1, 1, 0, 1]).bool(), groups, ("Male",))
    with_ = subgroup_accuracy(torch.tensor([1, 0, 1, 1]).bool(), groups, ("Male",))
    write_table(tmp_path / "a.csv", without, debias=False, split="val")
    write_table(tmp_path / "b.csv", with_, debias=True, split="val")
    lines = compare_tables([tmp_path / "a.csv", tmp_path / "b.csv"]).splitlines()
    assert lines[0].split()[-2:] == ["debias=False", "debias=True"]
    assert lines[2].split() == ["Male=1", "2", "1.0000", "0.5000"]
    assert lines[3].split() == ["Male=0", "2", "0.5000", "1.0000"]
    assert lines[-2].split()[-2:] == ["0.5000", "0.5000"]  # min over subgroups
    assert lines[-1].split()[-2:] == ["0.2500", "0.2500"]  # population std
    write_table(tmp_path / "c.csv", with_, debias=True, split="test")
    with pytest.raises(ValueError, match="same split"):
        compare_tables([tmp_path / "a.csv", tmp_path / "c.csv"])


# ----------------------------------------------------------------------------------------------
# Network contract
def test_shapes_and_gradients_reach_every_parameter():
    torch.manual_seed(0)
    model = DBVAE(image_shape=(3, 32, 32), latent_dim=6, width=8, vae_on="positive")
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    attributes = torch.zeros(4, 40, dtype=torch.long)
    attributes[:2, ATTRIBUTES.index("Smiling")] = 1  # the VAE term reaches the decoder through these
    out = model(x)
    assert out["logits"].shape == (4,) and out["mu"].shape == (4, 6)
    assert out["decoded"].shape == (4, 3, 32, 32)
    loss = model._step((x, attributes), "val")
    assert torch.isfinite(loss)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert not missing, missing
    assert model.sample(3).shape == (3, 3, 32, 32)


def test_configuration_errors_are_clear():
    with pytest.raises(ValueError, match="unknown CelebA attribute"):
        DBVAE(target_attribute="Smiles")
    with pytest.raises(ValueError, match="target"):
        DBVAE(subgroup_attributes=("Smiling", "Male"))
    model = DBVAE(image_shape=(3, 32, 32), latent_dim=4, width=8)
    with pytest.raises(ValueError, match="CelebAAttributesDataModule"):
        model.check_datamodule(CelebADataModule(data_dir="nowhere", image_size=32))
    model.check_datamodule(CelebAAttributesDataModule(data_dir="nowhere", image_size=32))


# ----------------------------------------------------------------------------------------------
# The YAMLs on format-true CelebA files (30 faces: 18 train, 6 val, 6 test)
def _read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_debiasing_yaml_resamples_writes_tables_grid_and_samples(celeba_dir, tmp_path):
    from lightning_gen.cli import main
    from tests.metrics_helpers import classifier_checkpoint

    run = tmp_path / "run"
    # 18 training faces, batch 8: 2 batches per epoch, so step 5 is in epoch 2 and the training
    # set was resampled at the start of epochs 1 and 2.
    cli = fit_yaml("dbvae_celeba_smiling.yaml", celeba_dir, *TINY,
                   "--trainer.default_root_dir", str(run), "--model.init_args.num_shown", "8",
                   steps=5)
    model, dm = cli.model, cli.datamodule
    assert_finite_params(model)
    # The sampler uses the probabilities computed from the encoder's codes at epoch 2's start.
    p = model.last_probabilities
    assert p is not None and p.shape == (18,) and dm.sampler.epoch == 2
    torch.testing.assert_close(dm.sampler.weights, p / p.sum())
    assert not torch.allclose(p, torch.full_like(p, 1 / 18))
    # The grid of the most up-weighted faces shows exactly the 8 highest-weighted training images.
    top = p.argsort(descending=True)[:8]
    expected = grid_pixels(image_grid(torch.stack([dm.train_set[int(i)][0] for i in top]), 8))
    written = np.asarray(Image.open(run / "images" / "most_upweighted_epoch0002.png"))
    np.testing.assert_array_equal(written, expected)
    weights = _read_csv(run / "resampling_weights.csv")
    assert sum(int(r["n"]) for r in weights) == 18 and len(weights) == 4
    # Validation table: all + the 4 Male x Pale_Skin subgroups over the 6 validation faces.
    val = _read_csv(run / "subgroup_accuracy_val.csv")
    assert [r["subgroup"] for r in val][:2] == ["all", "Male=1,Pale_Skin=1"] and len(val) == 5
    assert int(val[0]["n"]) == 6 and sum(int(r["n"]) for r in val[1:]) == 6
    assert {r["debias"] for r in val} == {"True"}

    # `test`: the table equals accuracies computed here from the model's own predictions.
    cli.trainer.test(model, datamodule=dm, verbose=False)
    table = {r["subgroup"]: r for r in _read_csv(run / "subgroup_accuracy_test.csv")}
    model.eval()
    xs, attrs = zip(*[dm.test_set[i] for i in range(len(dm.test_set))], strict=True)
    attrs = torch.stack(attrs)
    with torch.no_grad():
        correct = (model.classify(torch.stack(xs)) > 0) == attrs[:, ATTRIBUTES.index("Smiling")].bool()
    male, pale = attrs[:, ATTRIBUTES.index("Male")], attrs[:, ATTRIBUTES.index("Pale_Skin")]
    assert float(table["all"]["accuracy"]) == pytest.approx(correct.float().mean().item())
    for m in (0, 1):
        for s in (0, 1):
            member = (male == m) & (pale == s)
            row = table[f"Male={m},Pale_Skin={s}"]
            assert int(row["n"]) == int(member.sum())
            if member.any():
                assert float(row["accuracy"]) == pytest.approx(correct[member].float().mean().item())

    # sample and evaluate read the checkpoint like any VAE's.
    ckpt = run / "checkpoints" / "last.ckpt"
    main(["sample", "--ckpt_path", str(ckpt), "--num_samples", "4", "--out",
          str(tmp_path / "samples"), "--accelerator", "cpu", "--progress", "false"])
    assert len(list((tmp_path / "samples").rglob("*.png"))) >= 1
    clf = classifier_checkpoint(tmp_path / "clf.ckpt", image_shape=(3, 32, 32))
    out = tmp_path / "eval.json"
    main(["evaluate", "--ckpt_path", str(ckpt), "--num_samples", "6", "--reference", "test",
          "--feature_extractor", f"classifier:{clf}", "--batch_size", "6", "--data_dir",
          str(celeba_dir), "--kid_subset_size", "3", "--isc_splits", "2", "--iw_samples", "2",
          "--accelerator", "cpu", "--progress", "false", "--cache_dir", str(tmp_path / "cache"),
          "--out", str(out)])
    result = json.loads(out.read_text())
    assert math.isfinite(result["fid"]) and result["model"].endswith("DBVAE")


@pytest.mark.parametrize("name", ["dbvae_celeba_smiling.yaml", "dbvae_celeba_smiling_baseline.yaml"])
def test_yamls_fit_in_bf16_mixed(name, celeba_dir, tmp_path):
    assert (EXPERIMENTS / name).is_file()
    # 3 steps: the debiasing run resamples (encodes the training set) at epoch 1's start.
    dtypes = set()
    handle = torch.nn.modules.module.register_module_forward_hook(
        lambda m, i, out: dtypes.add(out.dtype) if isinstance(out, torch.Tensor) else None)
    try:
        cli = fit_yaml(name, celeba_dir, *TINY, "--trainer.precision", "bf16-mixed",
                       "--trainer.default_root_dir", str(tmp_path / "run"), steps=3)
    finally:
        handle.remove()
    assert torch.bfloat16 in dtypes, "autocast was not active"
    assert cli.trainer.global_step == 3
    assert_finite_params(cli.model)
    losses = {k: float(v) for k, v in cli.trainer.callback_metrics.items() if k.endswith("loss")}
    assert losses and all(math.isfinite(v) for v in losses.values()), losses
    assert (cli.model.last_probabilities is not None) == cli.model.hparams.debias
    assert (tmp_path / "run" / "subgroup_accuracy_val.csv").is_file()


def _rare_pale_faces(root, n: int) -> list[int]:
    """Format-true CelebA files where every 10th face (``Pale_Skin`` = 1) carries a blue disc
    and every other face a beige one; returns the rare faces' indices in the training split."""
    from tests import fakedata

    folder = fakedata.write_celeba(root, n=n, size=(64, 64)) / "celeba"
    attr_file = folder / "list_attr_celeba.txt"
    lines = attr_file.read_text().splitlines()
    pale = ATTRIBUTES.index("Pale_Skin")
    yy, xx = np.mgrid[:64, :64]
    disc = (yy - 32) ** 2 + (xx - 32) ** 2 < 20 ** 2
    rows, rare = lines[:2], []
    for i, line in enumerate(lines[2:]):
        parts = line.split()
        parts[1 + pale] = "1" if i % 10 == 3 else "-1"
        rows.append(" ".join(parts))
        path = folder / "img_align_celeba" / parts[0]
        pixels = np.asarray(Image.open(path)).copy()
        pixels[disc] = [40, 60, 230] if i % 10 == 3 else [200, 150, 120]
        Image.fromarray(pixels).save(path, quality=90)
        if i % 10 == 3 and i < int(0.6 * n):
            rare.append(i)
    attr_file.write_text("\n".join(rows) + "\n")
    return rare


def test_rare_faces_are_the_most_up_weighted(no_md5, tmp_path):
    # The lecture's point on a known answer: 10% of the training faces look different (blue
    # disc, Pale_Skin = 1). After one epoch their latent codes fall in sparse histogram bins,
    # so they are exactly the most up-weighted faces, and their subgroups' mean weight is
    # several times uniform while the common faces' is below it.
    rare = _rare_pale_faces(tmp_path / "data", n=100)
    run = tmp_path / "run"
    cli = fit_yaml("dbvae_celeba_smiling.yaml", tmp_path / "data", *TINY,
                   "--model.init_args.num_shown", "16", "--trainer.max_epochs", "2",
                   "--trainer.default_root_dir", str(run), steps=1000)
    p = cli.model.last_probabilities
    assert cli.trainer.current_epoch == 2 and p.shape == (60,)
    top = sorted(p.argsort(descending=True)[: len(rare)].tolist())
    assert top == rare
    weights = {r["subgroup"]: float(r["mean_weight_vs_uniform"])
               for r in _read_csv(run / "resampling_weights.csv")}
    assert weights["Male=0,Pale_Skin=1"] > 3 and weights["Male=1,Pale_Skin=1"] > 3
    assert weights["Male=0,Pale_Skin=0"] < 1 and weights["Male=1,Pale_Skin=0"] < 1
