"""Progressive GAN (Karras et al. 2018): growing resolution with fade-in, WGAN-GP + drift."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from lightning_gen.losses import (
    epsilon_drift_penalty,
    gradient_penalty,
    interpolate,
    wasserstein_critic_loss,
    wasserstein_generator_loss,
)
from lightning_gen.models.gan_base import GANBase
from lightning_gen.nets.pggan import ProgressiveDiscriminator, ProgressiveGenerator, num_levels


def progressive_phase(images_seen: int, levels: int, fade_images: int,
                      stabilize_images: int) -> tuple[int, float]:
    """``(level, alpha)`` after ``images_seen`` real images (Sec. 2 and App. A.1): level 0
    (4x4) for ``stabilize_images``, then per new level a fade (``alpha`` linear from 0 to 1 over
    ``fade_images``) and a stabilisation (``alpha = 1``) of ``stabilize_images``; the last level
    stays."""
    if images_seen < stabilize_images or levels == 1:
        return 0, 1.0
    period = fade_images + stabilize_images
    level, t = divmod(images_seen - stabilize_images, period)
    level += 1
    if level >= levels:
        return levels - 1, 1.0
    return level, (t / fade_images if t < fade_images else 1.0)


def progressive_reals(x: torch.Tensor, level: int, alpha: float) -> torch.Tensor:
    """The real images D sees at ``level``: the full-resolution batch box-filtered (average
    pooled) to ``4 * 2**level``; while fading in (``alpha < 1``), blended as the authors' code
    does with the previous resolution upsampled: ``lerp(up(down(x_r)), x_r, alpha)``."""
    size = 4 * 2**level
    if x.shape[-1] != size:
        x = F.avg_pool2d(x, x.shape[-1] // size)
    if level > 0 and alpha < 1.0:
        coarse = F.interpolate(F.avg_pool2d(x, 2), scale_factor=2, mode="nearest")
        x = torch.lerp(coarse, x, alpha)
    return x


class PGGAN(GANBase):
    """Progressive GAN: G and D grow from 4x4 to the data's size, each new block faded in over
    ``fade_images`` real images and then stabilised over ``stabilize_images``; pixel norm,
    minibatch standard deviation, equalized learning rate (:mod:`lightning_gen.nets.pggan`);
    WGAN-GP loss plus the drift term ``eps_drift * E[D(x)^2]`` (App. A.1).

    The DataModule serves full-resolution batches; the model box-filters them to the current
    resolution (:func:`progressive_reals`). Progress is counted in real images shown to D
    (summed over DDP ranks); ``images_seen``, ``level`` and ``alpha`` are saved in checkpoints,
    so a resumed run continues at the same resolution and fade. ``sample`` returns images at the
    data's size (the current resolution upsampled, nearest), so evaluation works at any phase.

    Args:
        image_shape: ``(C, H, W)``, ``H = W`` a power of two >= 4 (linked from the DataModule).
        latent_dim: Dimension of ``z`` (512 in the paper).
        width: Feature maps at 4x4-32x32, halved per doubling above (512 in the paper).
        fade_images: Real images per fade-in (800k in the paper).
        stabilize_images: Real images per stabilisation, and at 4x4 (800k in the paper).
        gp_weight: ``lambda`` of the gradient penalty (10).
        eps_drift: Weight of the drift term ``E[D(x)^2]`` (0.001).
        mbstd_group_size: Group size of the minibatch standard deviation (4).
        reset_optimizer_on_phase: Clear Adam's moments when a fade or a stabilisation starts, as
            the authors' code does (``reset_opt_for_new_lod``).
        n_critic, lr_g, lr_d, betas: 1, 0.001, 0.001, (0, 0.99) as in App. A.1.
        ema_decay: Generator average for sampling (0.999 in the paper).
        **kwargs: further options of :class:`~lightning_gen.models.gan_base.GANBase`.
    """

    twice_differentiated = ("discriminator",)  # the gradient penalty

    def __init__(
        self,
        image_shape: tuple[int, int, int] = (3, 32, 32),
        latent_dim: int = 512,
        width: int = 512,
        fade_images: int = 800_000,
        stabilize_images: int = 800_000,
        gp_weight: float = 10.0,
        eps_drift: float = 0.001,
        mbstd_group_size: int = 4,
        reset_optimizer_on_phase: bool = True,
        n_critic: int = 1,
        lr_g: float = 0.001,
        lr_d: float = 0.001,
        betas: tuple[float, float] = (0.0, 0.99),
        ema_decay: float = 0.999,
        **kwargs: Any,
    ) -> None:
        super().__init__(image_shape=image_shape, latent_dim=latent_dim, n_critic=n_critic,
                         lr_g=lr_g, lr_d=lr_d, betas=betas, ema_decay=ema_decay, **kwargs)
        if fade_images < 1 or stabilize_images < 0:
            raise ValueError(f"fade_images must be >= 1 and stabilize_images >= 0, got "
                             f"{fade_images} and {stabilize_images}")
        if gp_weight < 0 or eps_drift < 0:
            raise ValueError(f"gp_weight and eps_drift must be >= 0, got {gp_weight}, {eps_drift}")
        self.num_levels = num_levels(image_shape[1])  # the one-line error for e.g. 28x28
        self.generator = ProgressiveGenerator(latent_dim, image_shape, width)
        self.discriminator = ProgressiveDiscriminator(image_shape, width, mbstd_group_size)
        self.init_ema()
        self.images_seen = 0
        self.level, self.alpha = 0, 1.0
        self._phase: tuple[int, bool] | None = None  # (level, fading) of the last step

    # ------------------------------------------------------------------------------------------
    # Growth
    def update_phase(self) -> None:
        hp = self.hparams
        self.level, self.alpha = progressive_phase(self.images_seen, self.num_levels,
                                                   hp.fade_images, hp.stabilize_images)

    @property
    def resolution(self) -> int:
        return 4 * 2**self.level

    def training_step(self, batch, batch_idx: int) -> None:
        self.update_phase()
        phase = (self.level, self.alpha < 1.0)
        if self._phase is not None and phase != self._phase and self.hparams.reset_optimizer_on_phase:
            for optimizer in self.trainer.optimizers:
                optimizer.state.clear()
        self._phase = phase
        super().training_step(batch, batch_idx)
        real = batch[0] if isinstance(batch, (list, tuple)) else batch
        self.images_seen += real.shape[0] * self.trainer.world_size

    def log_train_terms(self, terms: dict[str, torch.Tensor]) -> None:
        super().log_train_terms(terms)
        if self.log_every_term_now():  # CPU tensors, equal on every rank (like the counters)
            self.log_dict({"train/resolution": torch.tensor(float(self.resolution)),
                           "train/alpha": torch.tensor(float(self.alpha))})

    # ------------------------------------------------------------------------------------------
    # Networks at the current phase and losses
    def generate(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.generator(z, self.level, self.alpha)

    def discriminate(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.discriminator(x, self.level, self.alpha)

    def penalty(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        """``E[(||grad_x D(x_hat)||_2 - 1)^2]`` at ``x_hat`` uniformly between real and fake."""
        t = torch.rand(real.shape[0], device=real.device, dtype=real.dtype)
        x_hat = interpolate(real, fake.detach().to(real.dtype), t).requires_grad_(True)
        return gradient_penalty(self.input_gradients(self.discriminate(x_hat), x_hat))

    def discriminator_loss(self, real, fake, labels):
        # ``real`` is the data's full-resolution batch; D sees it at the current phase.
        real = progressive_reals(real, self.level, self.alpha)
        real_scores = self.discriminate(real)
        wasserstein = wasserstein_critic_loss(real_scores, self.discriminate(fake))
        gp = self.penalty(real, fake)
        drift = epsilon_drift_penalty(real_scores)
        hp = self.hparams
        return {"loss": wasserstein + hp.gp_weight * gp + hp.eps_drift * drift,
                "wasserstein_estimate": -wasserstein, "gradient_penalty": gp, "drift": drift}

    def generator_loss(self, fake, labels):
        return {"loss": wasserstein_generator_loss(self.discriminate(fake))}

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.generate(z)

    # ------------------------------------------------------------------------------------------
    # Sampling at the data's size; growth state in checkpoints
    def _full_size(self, images: torch.Tensor) -> torch.Tensor:
        size = self.hparams.image_shape[-1]
        if images.shape[-1] == size:
            return images
        return F.interpolate(images, size=(size, size), mode="nearest")

    @torch.no_grad()
    def sample(self, n: int, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self._full_size(super().sample(n, labels))

    @torch.no_grad()
    def log_images(self, batch=None) -> dict[str, torch.Tensor]:
        return {k: self._full_size(v) for k, v in super().log_images(batch).items()}

    def grid_layouts(self) -> dict[str, str]:
        """The base's, with the phase the samples come from (they are shown at the data's size,
        each pixel of a lower resolution repeated)."""
        size = self.hparams.image_shape[-1]
        resolution = 4 * 2**self.level
        phase = (f"; generated at {resolution}x{resolution}"
                 + (f", fading in with alpha {self.alpha:.2f}" if 0 < self.alpha < 1 else "")
                 + (f", shown at {size}x{size} (pixels repeated)" if resolution < size else ""))
        return {k: v + phase for k, v in super().grid_layouts().items()}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        hp = self.hparams  # the phase the next step runs at
        level, alpha = progressive_phase(self.images_seen, self.num_levels, hp.fade_images,
                                         hp.stabilize_images)
        checkpoint["pggan"] = {"images_seen": self.images_seen, "level": level, "alpha": alpha,
                               "resolution": 4 * 2**level,
                               "phase": list(self._phase) if self._phase else None}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get("pggan", {})
        self.images_seen = int(state.get("images_seen", 0))
        self._phase = tuple(state["phase"]) if state.get("phase") else None
        self.update_phase()
