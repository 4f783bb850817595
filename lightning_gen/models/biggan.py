"""BigGAN (Brock, Donahue & Simonyan 2019, "Large Scale GAN Training for High Fidelity Natural
Image Synthesis")."""

from __future__ import annotations

from typing import Any, Literal

import torch

from lightning_gen.losses import (
    hinge_discriminator_loss,
    hinge_generator_loss,
    orthogonal_regularization,
)
from lightning_gen.models.conditional import ConditionalMixin
from lightning_gen.models.gan_base import GANBase
from lightning_gen.nets.biggan import (
    BigGANDiscriminator,
    BigGANGenerator,
    init_weights_,
    truncated_normal,
)
from lightning_gen.nets.conditioning import label_features


class BigGAN(ConditionalMixin, GANBase):
    """Class-conditional BigGAN: shared class embedding and hierarchical ``z`` feeding
    conditional batch norm in G, projection discriminator, self-attention, spectral norm in G
    and D, hinge loss, orthogonal regularisation of G, generator EMA and the truncation trick.

    Per batch: ``n_critic`` D steps per G step (GANBase), fakes conditioned on the batch's own
    labels. The generator's loss is the hinge loss plus
    ``beta * sum_W ||W^T W ⊙ (1 - I)||_F^2`` over G's raw (pre-spectral-norm) weight matrices
    of two or more dimensions, except the shared embedding (as the authors' ``utils.ortho``).

    Args:
        image_shape: ``(C, H, W)`` with ``H = W`` in 16, 32, 64.
        latent_dim: Size of ``z`` (128; 120 at 64x64 so that it splits into 5 chunks).
        g_width: ``G_ch`` (64).
        d_width: ``D_ch`` (64).
        num_classes: Classes (10 for CIFAR-10) or attributes (40 for CelebA); 0: unconditional.
        condition_on: ``"class"`` (integer labels) or ``"attributes"`` (CelebA 0/1 vectors; the
            shared and projection embeddings are then sums of the attributes' embeddings).
        shared_dim: Size of the shared class embedding (128).
        hierarchical: Split ``z`` into one chunk per generator block plus the input's.
        attention_resolution: Feature-map size with self-attention in G and D (0: none).
        ortho_beta: ``beta`` of the orthogonal regularisation (1e-4 in the paper; 0: off).
        init: ``"ortho"`` (orthogonal initialisation, the paper) or ``"N02"`` (``N(0, 0.02)``,
            BigGAN-PyTorch's CIFAR script).
        truncation: Default threshold of the truncation trick for ``sample`` (0: off).
        n_critic: D steps per G step (4 in BigGAN-PyTorch's CIFAR script, 2 on ImageNet).
        lr_g, lr_d: Adam learning rates (2e-4 both in the CIFAR script; 5e-5 / 2e-4 on ImageNet).
        betas: Adam's betas ((0, 0.999)).
        ema_decay: Generator EMA decay (0.9999, the paper's); ``sample`` uses the average.
        num_fixed_samples: Size of the fixed noise and label batch of the sample grids.
        **kwargs: further options of ``GANBase``.
    """

    def __init__(
        self,
        image_shape: tuple[int, int, int] = (3, 32, 32),
        latent_dim: int = 128,
        g_width: int = 64,
        d_width: int = 64,
        num_classes: int = 10,
        condition_on: Literal["class", "attributes"] = "class",
        shared_dim: int = 128,
        hierarchical: bool = True,
        attention_resolution: int = 0,
        ortho_beta: float = 1e-4,
        init: Literal["ortho", "N02"] = "ortho",
        truncation: float = 0.0,
        n_critic: int = 4,
        lr_g: float = 2e-4,
        lr_d: float = 2e-4,
        betas: tuple[float, float] = (0.0, 0.999),
        ema_decay: float = 0.9999,
        num_fixed_samples: int = 64,
        **kwargs: Any,
    ) -> None:
        super().__init__(image_shape=image_shape, latent_dim=latent_dim, n_critic=n_critic,
                         lr_g=lr_g, lr_d=lr_d, betas=betas, ema_decay=ema_decay,
                         num_fixed_samples=num_fixed_samples, **kwargs)
        if ortho_beta < 0:
            raise ValueError(f"ortho_beta must be >= 0, got {ortho_beta}")
        if truncation < 0:
            raise ValueError(f"truncation must be >= 0 (0: off), got {truncation}")
        self._init_conditioning(num_fixed_samples)
        self.generator = BigGANGenerator(latent_dim, image_shape, g_width, num_classes,
                                         shared_dim, hierarchical, attention_resolution)
        self.discriminator = BigGANDiscriminator(image_shape, d_width, num_classes,
                                                 attention_resolution)
        init_weights_(self.generator, init)
        init_weights_(self.discriminator, init)
        self.init_ema()  # now, so that generator_ema.* is in the state dict evaluate loads

    # ------------------------------------------------------------------------------------------
    # Conditioning
    def _labels(self, labels: torch.Tensor | None, n: int) -> torch.Tensor | None:
        if not self.conditional:
            return None
        labels = self.default_labels(n) if labels is None else labels
        return label_features(labels.to(self.device), self.hparams.num_classes)

    def generate(self, z, labels=None):
        return self.generator(z, self._labels(labels, z.shape[0]))

    def discriminate(self, x, labels=None):
        return self.discriminator(x, self._labels(labels, x.shape[0]))

    # ------------------------------------------------------------------------------------------
    # Losses
    def ortho_weights(self) -> list[torch.Tensor]:
        """G's raw weight matrices (>= 2 dimensions) except the shared embedding's."""
        return [p for name, p in self.generator.named_parameters()
                if p.dim() >= 2 and not name.startswith("shared.")]

    def discriminator_loss(self, real, fake, labels):
        real_scores = self.discriminate(real, labels)
        fake_scores = self.discriminate(fake, labels)
        return {"loss": hinge_discriminator_loss(real_scores, fake_scores),
                "real_score": real_scores.mean(), "fake_score": fake_scores.mean()}

    def generator_loss(self, fake, labels):
        adversarial = hinge_generator_loss(self.discriminate(fake, labels))
        if self.hparams.ortho_beta == 0:
            return {"loss": adversarial}
        # float32 whatever the precision: Gram matrices of raw weights in bf16 lose the small
        # off-diagonal terms the regulariser is about.
        with torch.autocast(self.device.type, enabled=False):
            ortho = orthogonal_regularization(self.ortho_weights(), self.hparams.ortho_beta)
        return {"loss": adversarial + ortho, "adversarial": adversarial, "ortho": ortho}

    # ------------------------------------------------------------------------------------------
    # Sampling with the truncation trick
    def truncated_noise(self, n: int, truncation: float) -> torch.Tensor:
        """``z`` of ``sample``: ``N(0, I)`` with every ``|z_i| > truncation`` resampled
        (``truncation = 0``: plain ``N(0, I)``)."""
        if truncation < 0:
            raise ValueError(f"truncation must be >= 0 (0: off), got {truncation}")
        if truncation == 0:
            return self.sample_noise(n)
        return truncated_normal((n, self.hparams.latent_dim), truncation, self.device)

    @torch.no_grad()
    def sample(self, n: int, labels: torch.Tensor | None = None,
               truncation: float | None = None) -> torch.Tensor:
        """``n`` images from the (averaged) generator in eval mode, float32 in [-1, 1].

        Args:
            n: Number of images.
            labels: ``(n,)`` classes or ``(n, K)`` attributes (``None``: the grid's labels).
            truncation: Threshold ``t`` of the truncation trick: every ``|z_i| > t`` is
                resampled, so smaller ``t`` trades variety for fidelity (Brock et al. 2019,
                Sec. 4.1). ``None``: the model's ``truncation`` hyperparameter; 0: off.
        """
        t = self.hparams.truncation if truncation is None else truncation
        z = self.truncated_noise(n, float(t))
        with self.averaged_generator():
            was_training = self.generator.training
            self.generator.eval()
            try:
                return self.generate(z, labels).float().clamp(-1, 1)
            finally:
                self.generator.train(was_training)
