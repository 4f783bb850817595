"""Networks and the foundation models: shapes, gradients, mathematics and learning."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_gen.losses import (
    gan_discriminator_loss,
    gan_generator_loss_minimax,
    gan_generator_loss_nonsaturating,
    gaussian_kl,
)
from lightning_gen.models import (
    DCGAN,
    GAN,
    VAE,
    Autoencoder,
    ImageShapeMismatchError,
    LabelMismatchError,
)
from lightning_gen.nets import ConvDecoder, ConvEncoder, base_size

SHAPES = [(1, 28, 28), (3, 32, 32), (3, 64, 64), (1, 32, 32)]


def tiny_trainer(**kwargs) -> L.Trainer:
    defaults = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False)
    defaults.update(kwargs)
    return L.Trainer(**defaults)


def fixed_batch_loader(shape, n=16, repeats=1, seed=0):
    """The same ``n`` images (and labels) ``repeats`` times: a loss on them should fall."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, *shape, generator=g) * 2 - 1
    x[:, :, : shape[1] // 2] = -1.0  # structure to learn: dark top half
    y = torch.randint(0, 10, (n,), generator=g)
    data = TensorDataset(x.repeat(repeats, 1, 1, 1), y.repeat(repeats))
    return DataLoader(data, batch_size=n, shuffle=False)


class LossRecorder(L.Callback):
    def __init__(self, key: str) -> None:
        self.key, self.values = key, []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.key in trainer.callback_metrics:
            self.values.append(float(trainer.callback_metrics[self.key]))


# ---------------------------------------------------------------------------------------------
# Networks


@pytest.mark.parametrize("shape", SHAPES)
def test_conv_stacks_adapt_to_image_shape(shape):
    z = torch.randn(3, 10)
    decoder, encoder = ConvDecoder(shape, 10, width=8), ConvEncoder(shape, 5, width=8)
    image = decoder(z)
    assert image.shape == (3, *shape)
    assert image.abs().max() <= 1.0  # tanh output
    assert encoder(image).shape == (3, 5)


def test_base_size_halves_to_at_most_seven():
    assert base_size(28) == (7, 2) and base_size(32) == (4, 3) and base_size(64) == (4, 4)
    with pytest.raises(ValueError, match="28, 32 or 64"):
        base_size(27)


@pytest.mark.parametrize("model", [
    DCGAN((1, 28, 28), latent_dim=8, g_width=8, d_width=8),
    VAE((3, 32, 32), latent_dim=4, width=8),
    Autoencoder((1, 28, 28), latent_dim=4, width=8),
], ids=["dcgan", "vae", "autoencoder"])
def test_gradients_reach_every_parameter(model):
    x = torch.rand(4, *model.hparams.image_shape) * 2 - 1
    if isinstance(model, DCGAN):
        loss = model.discriminator(model.generator(torch.randn(4, 8))).sum()
    elif isinstance(model, VAE):
        out = model(x)
        loss = -(out["log_px"] - out["kl"]).mean()
    else:
        loss = (model(x) - x).pow(2).mean()
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []
    assert torch.isfinite(loss)


# ---------------------------------------------------------------------------------------------
# Mathematics against independent references


def test_gaussian_kl_matches_monte_carlo_estimate():
    torch.manual_seed(0)
    mu, logvar = torch.randn(3, 4) * 0.7, torch.randn(3, 4) * 0.5
    q = torch.distributions.Normal(mu, torch.exp(0.5 * logvar))
    p = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))
    z = q.sample((200_000,))  # (S, B, D)
    mc = (q.log_prob(z) - p.log_prob(z)).sum(-1).mean(0)
    closed = gaussian_kl(mu, logvar)
    # Monte-Carlo standard error at 2e5 samples is well below 1% of these KLs (~0.5-3 nats).
    assert torch.allclose(closed, mc, rtol=0.01, atol=0.01), (closed, mc)


def test_gan_losses_equal_their_textbook_formulas():
    real, fake = torch.tensor([2.0, -1.0]), torch.tensor([0.5, -3.0])
    d = torch.sigmoid
    expected_d = -(torch.log(d(real)).mean() + torch.log(1 - d(fake)).mean())
    assert torch.allclose(gan_discriminator_loss(real, fake), expected_d, atol=1e-6)
    assert torch.allclose(gan_generator_loss_minimax(fake), torch.log(1 - d(fake)).mean(), atol=1e-6)
    assert torch.allclose(gan_generator_loss_nonsaturating(fake), -torch.log(d(fake)).mean(),
                          atol=1e-6)


def test_vae_elbo_is_below_the_importance_weighted_bound():
    torch.manual_seed(0)
    model = VAE((1, 28, 28), latent_dim=4, width=8).eval()
    x = torch.rand(6, 1, 28, 28) * 2 - 1
    with torch.no_grad():
        elbo = torch.stack([(lambda o: o["log_px"] - o["kl"])(model(x)) for _ in range(200)]).mean(0)
    iwae = model.importance_weighted_bound(x, k=200)
    assert torch.all(iwae >= elbo - 0.5)  # IWAE-K >= ELBO (Burda et al. 2016, Thm 1)


# ---------------------------------------------------------------------------------------------
# Learning: losses fall on a fixed batch


def test_autoencoder_loss_falls_on_a_fixed_batch():
    torch.manual_seed(0)
    rec = LossRecorder("train/loss")
    model = Autoencoder((1, 28, 28), latent_dim=8, width=8, lr=3e-3)
    tiny_trainer(max_steps=30, callbacks=[rec]).fit(model, fixed_batch_loader((1, 28, 28), repeats=30))
    assert sum(rec.values[-5:]) / 5 < 0.5 * sum(rec.values[:5]) / 5


def test_vae_negative_elbo_falls_on_a_fixed_batch():
    torch.manual_seed(0)
    rec = LossRecorder("train/loss")
    model = VAE((1, 28, 28), latent_dim=4, width=8, lr=3e-3)
    tiny_trainer(max_steps=30, callbacks=[rec]).fit(model, fixed_batch_loader((1, 28, 28), repeats=30))
    assert sum(rec.values[-5:]) / 5 < 0.9 * sum(rec.values[:5]) / 5


def test_dcgan_discriminator_loss_falls_early_on_a_fixed_batch():
    # Early in training D separates real from fake faster than G adapts (the usual GAN
    # dynamic, and what Goodfellow et al.'s k steps rely on): D's loss falls from ~2 log 2.
    torch.manual_seed(0)
    rec = LossRecorder("train/d_loss")
    model = DCGAN((1, 28, 28), latent_dim=8, g_width=8, d_width=8)
    tiny_trainer(max_steps=40, callbacks=[rec]).fit(model, fixed_batch_loader((1, 28, 28), repeats=20))
    assert len(rec.values) == 20
    assert sum(rec.values[-5:]) / 5 < 0.7 * sum(rec.values[:5]) / 5


# ---------------------------------------------------------------------------------------------
# The GAN base: k discriminator steps per generator step


def test_gan_step_counts_with_n_critic_5():
    model = DCGAN((1, 28, 28), latent_dim=8, g_width=8, d_width=8, n_critic=5)
    trainer = tiny_trainer(max_epochs=1)
    trainer.fit(model, fixed_batch_loader((1, 28, 28), n=4, repeats=10))  # 10 batches
    assert (model.d_steps, model.g_steps) == (10, 2)
    # Lightning counts optimizer steps: 10 D steps + 2 G steps.
    assert trainer.global_step == 12
    opt_g, opt_d = (opt.optimizer if hasattr(opt, "optimizer") else opt for opt in trainer.optimizers)
    adam_steps = lambda opt: {int(s["step"]) for s in opt.state.values()}  # noqa: E731
    assert adam_steps(opt_d) == {10} and adam_steps(opt_g) == {2}


def test_generator_step_leaves_discriminator_weights_unchanged():
    model = DCGAN((1, 28, 28), latent_dim=8, g_width=8, d_width=8, n_critic=1)
    before = {k: v.clone() for k, v in model.discriminator.state_dict().items()
              if k.endswith("weight")}
    trainer = tiny_trainer(max_steps=2)  # one D step, one G step
    calls = []
    original = model._optimizer_step

    def spy(optimizer, closure):
        calls.append({k: v.clone() for k, v in model.discriminator.state_dict().items()
                      if k.endswith("weight")})
        return original(optimizer, closure)

    model._optimizer_step = spy
    trainer.fit(model, fixed_batch_loader((1, 28, 28), n=4, repeats=1))
    after = {k: v for k, v in model.discriminator.state_dict().items() if k.endswith("weight")}
    # calls[1] is D's weights just before the G step: the G step must not move them.
    assert len(calls) == 2
    assert all(torch.equal(calls[1][k], after[k]) for k in after)
    assert any(not torch.equal(before[k], after[k]) for k in after)  # the D step did


def test_sample_returns_images_in_range():
    model = DCGAN((3, 32, 32), latent_dim=8, g_width=8, d_width=8)
    images = model.sample(5)
    assert images.shape == (5, 3, 32, 32) and images.min() >= -1 and images.max() <= 1
    assert model.generator.training  # sampling restores the mode


def test_model_built_for_other_images_fails_before_the_first_step(mnist_dir):
    from datamodules import MNISTDataModule

    model = DCGAN((3, 32, 32), latent_dim=8, g_width=8, d_width=8)
    trainer = tiny_trainer(max_steps=2)
    with pytest.raises(ImageShapeMismatchError, match=r"\(3, 32, 32\).*\(1, 28, 28\)"):
        trainer.fit(model, datamodule=MNISTDataModule(str(mnist_dir), batch_size=8))
    assert model.d_steps == 0


def test_conditional_model_built_for_other_labels_fails_before_the_first_step():
    """The CelebA cGAN YAML's model (40 binary attributes) on a 10-class dataset: a clear error
    naming both, instead of a shape error deep inside the first step."""
    from datamodules import DigitsDataModule

    model = GAN((1, 16, 16), latent_dim=8, g_hidden=[16], d_hidden=[16], num_classes=40,
                condition_on="attributes")
    trainer = tiny_trainer(max_steps=2)
    with pytest.raises(LabelMismatchError,
                       match="40 binary attributes but DigitsDataModule yields 10 classes"):
        trainer.fit(model, datamodule=DigitsDataModule(image_size=16, batch_size=8))
    assert model.d_steps == 0


def test_bad_hyperparameters_are_rejected():
    with pytest.raises(ValueError, match="n_critic"):
        DCGAN(n_critic=0)
    with pytest.raises(ValueError, match="beta"):
        VAE(beta=-1.0)


GAN_CLASSES = ["DCGAN", "DRAGAN", "GAN", "InstanceNoiseDCGAN", "SNGAN", "TextbookGAN", "WGANGP"]


@pytest.mark.parametrize("name", GAN_CLASSES)
def test_every_gan_takes_the_base_options_on_the_command_line(name):
    from jsonargparse import ArgumentParser

    import lightning_gen.models as models

    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(getattr(models, name), "model")
    args = parser.parse_args(["--model.ema_decay", "0.9", "--model.n_critic", "3",
                              "--model.grad_clip", "1.0"])
    model = getattr(models, name)(**{k: v for k, v in vars(args.model).items()})
    assert (model.hparams.ema_decay, model.hparams.n_critic, model.hparams.grad_clip) == (0.9, 3, 1.0)
    model.init_ema()
    assert model.generator_ema is not None
