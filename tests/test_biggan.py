"""BigGAN (Brock et al. 2019): orthogonal regularisation, truncation trick, conditional batch norm
fed by the shared embedding and hierarchical z, projection discriminator, shapes, gradients,
its two YAMLs (biggan_cifar10.yaml, biggan_celeba.yaml) and sampling for evaluate."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lightning_gen.losses import orthogonal_regularization
from lightning_gen.models import BigGAN
from lightning_gen.nets.biggan import ConditionalBatchNorm2d, truncated_normal
from tests.zoo_utils import assert_finite_params, fit_yaml

CIFAR = (3, 32, 32)


def tiny(**kw) -> BigGAN:
    torch.manual_seed(0)
    args = dict(image_shape=CIFAR, latent_dim=16, g_width=4, d_width=4, num_classes=10,
                attention_resolution=16, ema_decay=0.0, num_fixed_samples=8)
    return BigGAN(**{**args, **kw})


# ----------------------------------------------------------------------------------------------
# Orthogonal regularisation
def test_orthogonal_regularization_equals_its_formula():
    """beta * sum_{i != j} <w_i, w_j>^2 over the filters w_i (rows of the (out, fan_in) weight),
    computed filter pair by filter pair in float64; relative tolerance 1e-5 (float32 sums)."""
    gen = torch.Generator().manual_seed(0)
    weights = [torch.randn(6, 3, 3, 3, generator=gen), torch.randn(5, 7, generator=gen)]
    expected = 0.0
    for w in weights:
        rows = w.double().flatten(1)
        for i in range(rows.shape[0]):
            for j in range(rows.shape[0]):
                if i != j:
                    expected += float(rows[i] @ rows[j]) ** 2
    got = orthogonal_regularization(weights, beta=1e-4)
    assert math.isclose(float(got), 1e-4 * expected, rel_tol=1e-5)
    # Orthogonal filters of any norms cost nothing (only the off-diagonal is penalised).
    q, _ = torch.linalg.qr(torch.randn(8, 8, generator=gen))
    scaled = q * torch.linspace(0.5, 3.0, 8)[:, None]
    assert float(orthogonal_regularization([scaled], beta=1.0)) < 1e-9


def test_model_regularises_every_raw_generator_matrix_but_the_shared_embedding():
    model = tiny()
    weights = model.ortho_weights()
    names = {n for n, p in model.generator.named_parameters() if p.dim() >= 2}
    assert len(weights) == len(names) - 1 and "shared.weight" in names
    assert all(not hasattr(w, "parametrizations") for w in weights)
    assert any(n.endswith("parametrizations.weight.original") for n in names)  # raw, pre-SN
    terms = model.generator_loss(model.generate(model.sample_noise(4), torch.arange(4)),
                                 torch.arange(4))
    expected = orthogonal_regularization(weights, 1e-4)
    torch.testing.assert_close(terms["ortho"], expected)
    torch.testing.assert_close(terms["loss"], terms["adversarial"] + expected)


# ----------------------------------------------------------------------------------------------
# Truncation trick
def test_truncated_normal_resamples_rather_than_clamps_or_scales():
    """Threshold semantics: every |z| <= t, and the law is N(0, 1) conditioned on |z| <= t, whose
    variance is 1 - 2 t phi(t) / (2 Phi(t) - 1) (0.2911 at t = 1): a clamp would pile 32% of
    the mass at +-t, a psi-scaling (z * t) would have variance t^2. 400k draws: tolerance 0.005
    on the variance (its standard error is ~0.0004), 0.02 on the mass within 1% of t (0.7%)."""
    t = 1.0
    z = truncated_normal((400_000,), t)
    assert z.abs().max() <= t
    phi = math.exp(-t * t / 2) / math.sqrt(2 * math.pi)
    mass = math.erf(t / math.sqrt(2))
    assert abs(float(z.var()) - (1 - 2 * t * phi / mass)) < 0.005
    assert float((z.abs() > 0.99 * t).float().mean()) < 0.02
    wide = truncated_normal((400_000,), 8.0)  # nothing to resample: N(0, 1)
    assert abs(float(wide.var()) - 1.0) < 0.01
    with pytest.raises(ValueError, match="must be > 0"):
        truncated_normal((3,), 0.0)


def _recorded_z(model: BigGAN, **sample_kwargs) -> torch.Tensor:
    seen = []
    handle = model.generator.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    try:
        model.sample(64, **sample_kwargs)  # 1024 draws: P(none > 2) ~ 1e-21
    finally:
        handle.remove()
    return seen[0]


def test_sample_truncation_argument_default_and_off():
    model = tiny(truncation=1.5)
    assert _recorded_z(model, truncation=0.5).abs().max() <= 0.5
    assert _recorded_z(model).abs().max() <= 1.5  # the hyperparameter when not given
    assert _recorded_z(model, truncation=0.0).abs().max() > 2.0  # 0: off, plain N(0, I)
    with pytest.raises(ValueError, match="truncation must be >= 0"):
        model.sample(2, truncation=-1.0)


# ----------------------------------------------------------------------------------------------
# Conditioning: shared embedding + hierarchical z into conditional batch norm; projection D
def test_conditional_batch_norm_gets_the_shared_embedding_and_its_z_chunk():
    model = tiny().eval()
    g = model.generator
    z, y = torch.randn(4, 16), torch.tensor([0, 3, 3, 9])
    conds: list[tuple[str, torch.Tensor]] = []
    for name, m in g.named_modules():
        if isinstance(m, ConditionalBatchNorm2d):
            m.register_forward_pre_hook(lambda mod, args, name=name: conds.append((name, args[1])))
    with torch.no_grad():
        out_a = model.generate(z, y)
        out_b = model.generate(z, torch.tensor([1, 3, 4, 9]))
    embedding = F.one_hot(y, 10).float() @ g.shared.weight.t()  # (4, 128): the lookup
    chunks = z.split(4, dim=1)  # 16 = 4 chunks of 4: input + 3 blocks
    assert len(conds) == 2 * 3 * 2  # 3 blocks x 2 cBNs, two generate calls
    for name, c in conds[:6]:
        block = int(name.split(".")[1])
        torch.testing.assert_close(c, torch.cat([embedding, chunks[block + 1]], dim=1))
    # Same z, different classes: different images exactly where the class differs.
    differs = (out_a - out_b).flatten(1).abs().amax(1)
    assert differs[0] > 1e-3 and differs[2] > 1e-3
    assert differs[1] == 0 and differs[3] == 0


def test_projection_term_is_the_inner_product_of_embedding_and_features():
    """D(x, y) = psi(phi(x)) + <embed(y), phi(x)> (Miyato & Koyama 2018, Eq. 3), against the
    features, the linear head and the (spectrally normalised) embedding matrix; tolerance 1e-5."""
    for num_classes, labels in ((10, torch.tensor([0, 4, 9])),
                                (5, torch.tensor([[1, 0, 1, 0, 0], [0, 0, 0, 0, 0],
                                                  [1, 1, 1, 1, 1]]))):
        model = tiny(num_classes=num_classes,
                     condition_on="class" if labels.dim() == 1 else "attributes").eval()
        d = model.discriminator
        x = torch.randn(3, *CIFAR)
        with torch.no_grad():
            out = model.discriminate(x, labels)
            h = d.features(x)
            embed = d.embed.weight  # (C, K), W / sigma(W)
            y = F.one_hot(labels, num_classes).float() if labels.dim() == 1 else labels.float()
            expected = d.linear(h) + ((y @ embed.t()) * h).sum(1, keepdim=True)
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(out, d.linear(h))  # the projection term is not zero


def test_spectral_norm_on_every_weight_of_g_and_d_but_the_shared_embedding():
    model = tiny()
    for net in (model.generator, model.discriminator):
        layers = [(n, m) for n, m in net.named_modules()
                  if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
        plain = [n for n, m in layers if not hasattr(m, "parametrizations")]
        assert plain == (["shared"] if net is model.generator else []), plain


# ----------------------------------------------------------------------------------------------
# Shapes, losses, gradients
@pytest.mark.parametrize("shape, latent, attention", [((3, 32, 32), 16, 16),
                                                      ((3, 64, 64), 20, 32),
                                                      ((1, 16, 16), 12, 8)])
def test_shapes(shape, latent, attention):
    model = tiny(image_shape=shape, latent_dim=latent, g_width=2, d_width=2,
                 attention_resolution=attention)
    x = model.generate(model.sample_noise(3), torch.tensor([1, 2, 3]))
    assert x.shape == (3, *shape)
    assert model.discriminate(x, torch.tensor([1, 2, 3])).shape == (3, 1)


def test_unsupported_sizes_and_uneven_z_chunks_are_clear_errors():
    with pytest.raises(ValueError, match="square images of size"):
        tiny(image_shape=(1, 28, 28))
    with pytest.raises(ValueError, match="split evenly into 4 chunks"):
        tiny(latent_dim=10)
    with pytest.raises(ValueError, match="attention_resolution 12"):
        tiny(attention_resolution=12)


def test_finite_losses_and_every_parameter_gets_a_gradient_over_one_d_and_one_g_step():
    model = tiny()
    for m in model.modules():  # attention starts switched off (gamma = 0): open it
        if hasattr(m, "gamma"):
            torch.nn.init.constant_(m.gamma, 0.5)
    real, labels = torch.rand(4, *CIFAR) * 2 - 1, torch.arange(4)
    with torch.no_grad():
        fake = model.generate(model.sample_noise(4), labels)
    d_terms = model.discriminator_loss(real, fake, labels)
    d_terms["loss"].backward()
    model.generator.zero_grad(set_to_none=True)
    g_terms = model.generator_loss(model.generate(model.sample_noise(4), labels), labels)
    model.discriminator.requires_grad_(False)
    g_terms["loss"].backward()
    for terms in (d_terms, g_terms):
        assert all(torch.isfinite(v) for v in terms.values()), terms
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"{name} got no gradient"


# ----------------------------------------------------------------------------------------------
# Sampling for evaluate; the YAMLs
def test_sample_uses_the_labels_evaluate_passes():
    """evaluate calls sample(n, labels) with labels i % num_classes (num_classes in hparams)."""
    from lightning_gen.metrics.evaluator import is_conditional

    model = tiny(ema_decay=0.5)
    # evaluate builds the model, then loads the checkpoint strictly: the average must exist.
    tiny(ema_decay=0.5).load_state_dict(model.state_dict(), strict=True)
    assert is_conditional(model)
    labels = torch.arange(6) % 10
    torch.manual_seed(1)
    images = model.sample(6, labels)
    assert images.shape == (6, *CIFAR) and images.dtype == torch.float32
    assert images.abs().max() <= 1
    torch.manual_seed(1)
    z = torch.randn(6, 16)
    with torch.no_grad():
        expected = model.generator_ema.eval()(z, F.one_hot(labels, 10).float())
    torch.testing.assert_close(images, expected.clamp(-1, 1))
    assert model.sample(5).shape == (5, *CIFAR)  # no labels: the grid's classes


TINY_YAML = ("--model.init_args.g_width", "2", "--model.init_args.d_width", "2",
             "--model.init_args.num_fixed_samples", "4")


@pytest.mark.parametrize("name, fixture, steps", [("biggan_cifar10.yaml", "cifar10_dir", 5),
                                                  ("biggan_celeba.yaml", "celeba_dir", 3)])
def test_yaml_fits_a_few_steps(name, fixture, steps, request):
    """n_critic D steps and one G step (the CIFAR YAML has n_critic 4, CelebA 2)."""
    cli = fit_yaml(name, request.getfixturevalue(fixture), *TINY_YAML, steps=steps)
    model = cli.model
    assert cli.trainer.global_step == steps and model.g_steps == 1
    assert_finite_params(model)
    assert model.generator_ema is not None
    assert (Path.cwd() / "images" / "samples_last.png").is_file()
    if name == "biggan_celeba.yaml":  # attribute vectors of the data for the grid
        assert model.fixed_labels().shape == (4, 40) and bool(model._fixed_labels_set)
    assert model.sample(3, truncation=1.0).shape[0] == 3
