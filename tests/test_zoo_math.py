"""The zoo's mathematics against independent computations."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_gen.losses import (
    cycle_consistency_loss,
    dragan_perturb,
    hinge_discriminator_loss,
    hinge_generator_loss,
    least_squares_discriminator_loss,
    least_squares_generator_loss,
    linear_anneal,
)
from lightning_gen.models import DRAGAN, SNGAN, CycleGAN, InstanceNoiseDCGAN, TextbookGAN
from lightning_gen.models.cyclegan import ImagePool
from lightning_gen.nets.conditioning import label_features
from lightning_gen.nets.conv import num_parameters
from lightning_gen.nets.mlp import Maxout


def test_textbook_gan_has_the_books_parameter_counts():
    model = TextbookGAN(image_shape=(1, 28, 28), latent_dim=100)
    assert num_parameters(model.discriminator) == 720_833
    assert num_parameters(model.generator) == 837_377
    assert model.generator(torch.randn(2, 100)).shape == (2, 1, 28, 28)


def test_spectrally_normalised_weights_have_unit_spectral_norm():
    # After power iterations (one per training-mode forward), W / sigma_est has largest
    # singular value 1; checked with an SVD of the (out, in * k * k) matrix of every layer.
    torch.manual_seed(0)
    d = SNGAN(image_shape=(3, 32, 32), g_channels=8, d_channels=16).discriminator.train()
    x = torch.randn(4, 3, 32, 32)
    for _ in range(30):
        d(x)
    layers = [m for m in d.modules() if hasattr(m, "parametrizations")]
    assert len(layers) == 4 * 2 + 2 + 1  # two convs per block, two 1x1 shortcuts, the head
    for layer in layers:
        sigma = torch.linalg.matrix_norm(layer.weight.detach().flatten(1), ord=2)
        assert abs(sigma.item() - 1.0) < 1e-2


def test_dragan_penalty_of_linear_critic_equals_analytic_value():
    torch.manual_seed(0)
    model = DRAGAN(image_shape=(1, 8, 8), latent_dim=4, g_width=4, d_width=4)
    linear = nn.Linear(64, 1)
    model.discriminator = nn.Sequential(nn.Flatten(), linear)
    expected = (linear.weight.norm() - 1).pow(2)
    assert torch.allclose(model.penalty(torch.randn(8, 1, 8, 8)), expected, rtol=1e-5)


def test_dragan_perturbation_is_bounded_by_half_the_data_std():
    torch.manual_seed(0)
    x = torch.randn(64, 1, 8, 8)
    delta = dragan_perturb(x, 0.5) - x
    assert delta.min() >= 0 and delta.max() <= 0.5 * x.std() + 1e-6


def test_cycle_loss_is_zero_for_identity_generators():
    model = CycleGAN(image_shape=(1, 32, 32), g_width=4, n_res_blocks=1, d_width=4)
    model.generator = nn.ModuleDict({"a_to_b": nn.Identity(), "b_to_a": nn.Identity()})
    a, b = torch.randn(3, 1, 32, 32), torch.randn(3, 1, 32, 32)
    terms = model.cycle_terms(a, b)
    assert terms["cycle"].item() == 0.0 and terms["identity"].item() == 0.0
    assert cycle_consistency_loss(a, a + 0.5).item() == pytest.approx(0.5)


def test_hinge_and_least_squares_losses_match_hand_computation():
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.0])
    # max(0, 1 - D(x)) = [0, 0.5]; max(0, 1 + D(G(z))) = [0, 1]
    assert hinge_discriminator_loss(real, fake).item() == pytest.approx(0.25 + 0.5)
    assert hinge_generator_loss(fake).item() == pytest.approx(1.0)
    # 1/2 (mean((D(x) - 1)^2) + mean(D(G(z))^2)) = 1/2 ((1 + 0.25) / 2 + (4 + 0) / 2)
    assert least_squares_discriminator_loss(real, fake).item() == pytest.approx(0.5 * (0.625 + 2))
    assert least_squares_generator_loss(fake).item() == pytest.approx((9 + 1) / 2)


def test_image_pool_returns_stored_or_new_images():
    torch.manual_seed(0)
    pool = ImagePool(size=4)
    first = torch.arange(4.0).view(4, 1)
    assert torch.equal(pool.query(first), first)  # filling: passed through
    new = torch.arange(10.0, 110.0).view(100, 1)
    out = pool.query(new)
    from_pool = out != new
    assert 20 < int(from_pool.sum()) < 80  # about half come from the history
    for i in torch.nonzero(from_pool[:, 0]).flatten():  # images stored before, never new ones
        assert out[i] in torch.cat([first, new[:i]])
    assert ImagePool(0).query(first) is first


def test_instance_noise_anneals_and_is_only_added_in_training():
    assert [linear_anneal(t, 0.1, 100) for t in (0, 50, 100, 200)] == \
        pytest.approx([0.1, 0.05, 0.0, 0.0])
    torch.manual_seed(0)
    model = InstanceNoiseDCGAN(image_shape=(1, 28, 28), g_width=4, d_width=4, noise_std=0.3,
                               anneal_steps=100)
    model.discriminator = nn.Flatten()  # D = identity: its input is what we see
    x = torch.zeros(64, 1, 28, 28)
    model.train()
    assert model.discriminate(x).std().item() == pytest.approx(0.3, rel=0.02)
    model.d_steps = 50
    assert model.discriminate(x).std().item() == pytest.approx(0.15, rel=0.02)
    model.eval()
    assert model.discriminate(x).abs().max().item() == 0.0


def test_maxout_is_the_max_over_pieces():
    torch.manual_seed(0)
    layer = Maxout(3, 2, pieces=4)
    x = torch.randn(5, 3)
    pieces = (x @ layer.linear.weight.T + layer.linear.bias).view(5, 2, 4)
    assert torch.allclose(layer(x), pieces.max(dim=2).values)


def test_label_features_one_hot_and_attribute_vectors():
    assert label_features(torch.tensor([2, 0]), 3).tolist() == [[0, 0, 1], [1, 0, 0]]
    attrs = torch.tensor([[1, 0, 1]])
    assert label_features(attrs, 3).dtype == torch.float32
    with pytest.raises(ValueError, match="num_classes"):
        label_features(attrs, 40)
