"""StyleGAN2 (Karras et al. 2020, "Analyzing and Improving the Image Quality of StyleGAN")."""

from __future__ import annotations

import math
from typing import Any

import torch

from lightning_gen.losses import (
    gan_discriminator_loss,
    gan_generator_loss_nonsaturating,
    lazy_regularization_adam,
    path_length_penalty,
    r1_penalty,
)
from lightning_gen.models.gan_base import GANBase
from lightning_gen.nets.stylegan2 import StyleGAN2Discriminator, StyleGAN2Generator


class StyleGAN2(GANBase):
    """StyleGAN2: style-based skip generator with modulated/demodulated convolutions, residual
    discriminator, non-saturating logistic loss, lazy R1 and path-length regularisation.

    One training batch is one ``Dmain`` step (logistic loss), then, every ``r1_interval``
    batches, a separate ``Dreg`` step (``gamma / 2 * R1 * r1_interval``), one ``Gmain`` step
    (non-saturating loss) and, every ``pl_interval`` batches, a separate ``Greg`` step
    (``pl_weight * path-length penalty * pl_interval``) on ``batch / pl_batch_shrink`` samples
    (paper Sec. 3.1 and App. B). Adam's lr and betas are adjusted by ``c = k / (k + 1)`` for the
    extra steps. The schedule depends only on the batch counter ``batches``, equal on every DDP
    rank, so all ranks take the same steps. ``d_steps`` / ``g_steps`` count every update of each
    network, regularisation steps included (their sum is ``trainer.global_step``, which
    ``max_steps`` bounds); ``r1_steps`` / ``pl_steps`` count the regularisation steps. All four,
    ``batches``, the path-length mean ``pl_mean`` and the generator average are in checkpoints.

    DDP: the regularisation losses add ``0 * D(x)`` / ``0 * G(w)`` (as the official code), so
    every parameter of the stepping network takes part in each step's graph; the idle network's
    parameters are left out by ``toggle_optimizer`` and covered by GANBase's
    ``find_unused_parameters=True``. ``w_avg`` and ``pl_mean`` are updated with means reduced
    over ranks, so they stay identical everywhere.

    Args:
        image_shape: ``(C, H, W)``, ``H = W = 4 * 2**n`` (16, 32, 64, ...).
        latent_dim: Size of ``z`` (512).
        w_dim: Size of ``w`` (512).
        mapping_layers: Depth of the mapping network (8; 2 in StyleGAN2-ADA's CIFAR config).
        mapping_lr_mul: Learning-rate multiplier of the mapping network (0.01).
        channel_base, channel_max: Channels ``min(channel_base / res, channel_max)``
            (config E: 16384 and 512; config F / the CIFAR config: 32768).
        mbstd_group: Minibatch-stddev group size (4).
        style_mixing_prob: Probability of mixing two latents in a batch (0.9).
        r1_gamma: R1 weight ``gamma`` (10 for FFHQ 1024; 0 turns R1 off).
        r1_interval: Lazy R1 step every ``k`` batches (16; 0 is taken as 1: a separate R1 step
            every batch, Adam still adjusted with ``c = 1/2``).
        pl_weight: Path-length weight (2; 0 turns it off).
        pl_interval: Lazy path-length step every ``k`` batches (4; 0 as for ``r1_interval``).
        pl_decay: Decay of the path-length running mean ``a`` (0.01).
        pl_batch_shrink: The path-length batch is ``batch / pl_batch_shrink`` (2).
        w_avg_beta: Decay of the tracked mean ``w`` (0.995).
        lr_g, lr_d, betas: Adam before the lazy adjustment (0.002, (0, 0.99)).
        ema_decay: Generator average (0.999; the paper's 10k-image half-life at batch 32 is
            0.9978).
        **kwargs: further options of :class:`~lightning_gen.models.gan_base.GANBase`.
    """

    @property
    def twice_differentiated(self) -> tuple[str, ...]:
        """R1 differentiates D, the path-length penalty G's synthesis network."""
        hp = self.hparams
        return (("discriminator",) if hp.r1_gamma > 0 else ()) + (
            ("generator",) if hp.pl_weight > 0 else ())

    def __init__(
        self,
        image_shape: tuple[int, int, int] = (3, 32, 32),
        latent_dim: int = 512,
        w_dim: int = 512,
        mapping_layers: int = 8,
        mapping_lr_mul: float = 0.01,
        channel_base: int = 16384,
        channel_max: int = 512,
        mbstd_group: int = 4,
        style_mixing_prob: float = 0.9,
        r1_gamma: float = 10.0,
        r1_interval: int = 16,
        pl_weight: float = 2.0,
        pl_interval: int = 4,
        pl_decay: float = 0.01,
        pl_batch_shrink: int = 2,
        w_avg_beta: float = 0.995,
        lr_g: float = 0.002,
        lr_d: float = 0.002,
        betas: tuple[float, float] = (0.0, 0.99),
        ema_decay: float = 0.999,
        **kwargs: Any,
    ) -> None:
        super().__init__(image_shape=image_shape, latent_dim=latent_dim, lr_g=lr_g, lr_d=lr_d,
                         betas=betas, ema_decay=ema_decay, **kwargs)
        if not 0.0 <= style_mixing_prob <= 1.0:
            raise ValueError(f"style_mixing_prob must be in [0, 1], got {style_mixing_prob}")
        if r1_gamma < 0 or pl_weight < 0:
            raise ValueError(f"r1_gamma and pl_weight must be >= 0, got {r1_gamma}, {pl_weight}")
        if r1_interval < 0 or pl_interval < 0 or pl_batch_shrink < 1:
            raise ValueError("r1_interval and pl_interval must be >= 0 (0: every batch), "
                             f"pl_batch_shrink >= 1; got {r1_interval}, {pl_interval}, "
                             f"{pl_batch_shrink}")
        if self.hparams.n_critic != 1:
            raise ValueError("StyleGAN2 takes one D step per G step: leave n_critic at 1")
        self.generator = StyleGAN2Generator(latent_dim, image_shape, w_dim, mapping_layers,
                                            mapping_lr_mul, channel_base, channel_max,
                                            w_avg_beta)
        self.discriminator = StyleGAN2Discriminator(image_shape, channel_base, channel_max,
                                                    mbstd_group)
        self.register_buffer("pl_mean", torch.zeros(()))  # path-length target a, checkpointed
        self.batches = self.r1_steps = self.pl_steps = 0
        self.init_ema()

    # ------------------------------------------------------------------------------------------
    # Schedule and optimizers
    def _interval(self, name: str) -> int:
        """Lazy interval ``k`` of ``"r1"`` / ``"pl"`` (0: that regulariser is off)."""
        hp = self.hparams
        weight = hp.r1_gamma if name == "r1" else hp.pl_weight
        return 0 if weight == 0 else max(1, hp[f"{name}_interval"])

    def regularize_now(self, name: str) -> bool:
        k = self._interval(name)
        return k > 0 and self.batches % k == 0

    def configure_optimizers(self):
        hp = self.hparams
        lr_g, betas_g = lazy_regularization_adam(hp.lr_g, hp.betas, self._interval("pl"))
        lr_d, betas_d = lazy_regularization_adam(hp.lr_d, hp.betas, self._interval("r1"))
        return (torch.optim.Adam(self.generator.parameters(), lr=lr_g, betas=betas_g),
                torch.optim.Adam(self.discriminator.parameters(), lr=lr_d, betas=betas_d))

    # ------------------------------------------------------------------------------------------
    # Losses and regularisers
    def _rank_mean(self, value: torch.Tensor) -> torch.Tensor:
        if self._trainer is not None and self.trainer.world_size > 1:
            return self.trainer.strategy.reduce(value, reduce_op="mean")
        return value

    def generate_for_training(self, n: int, update_w_avg: bool = False
                              ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(images, ws)`` with style mixing; the G step also updates ``w_avg``."""
        ws = self.generator.ws(self.sample_noise(n), mixing_prob=self.hparams.style_mixing_prob)
        if update_w_avg:  # ws[:, 0] is always the unmixed w of z
            self.generator.mapping.update_w_avg(self._rank_mean(ws[:, 0].detach().mean(0)))
        return self.generator.synthesis(ws), ws

    def discriminator_loss(self, real, fake, labels):
        return {"loss": gan_discriminator_loss(self.discriminate(real), self.discriminate(fake))}

    def generator_loss(self, fake, labels):
        return {"loss": gan_generator_loss_nonsaturating(self.discriminate(fake))}

    def r1_terms(self, real: torch.Tensor) -> dict[str, torch.Tensor]:
        """``gamma / 2 * E||grad_x D(x)||^2 * k`` at real ``x`` (+ ``0 * D(x)``: every D
        parameter in the graph)."""
        x = real.detach().requires_grad_(True)
        logits = self.discriminate(x)
        r1 = r1_penalty(self.input_gradients(logits, x))
        k = self._interval("r1")
        return {"loss": 0.5 * self.hparams.r1_gamma * r1 * k + 0 * logits.float().mean(),
                "r1_penalty": r1}

    def pl_grads(self, images: torch.Tensor, ws: torch.Tensor,
                 y: torch.Tensor | None = None) -> torch.Tensor:
        """``J_w^T y = grad_w <g(w), y>``, ``y ~ N(0, I) / sqrt(H W)`` unless given."""
        if y is None:
            y = torch.randn_like(images) / math.sqrt(images.shape[2] * images.shape[3])
        return self.input_gradients(images * y, ws)

    def pl_terms(self, n: int) -> dict[str, torch.Tensor]:
        """``pl_weight * E(||J^T y|| - a)^2 * k``; ``a`` is first moved towards this batch's mean
        length by ``pl_decay`` (as the official code)."""
        images, ws = self.generate_for_training(max(1, n // self.hparams.pl_batch_shrink))
        grads = self.pl_grads(images, ws)
        _, lengths = path_length_penalty(grads, self.pl_mean)
        with torch.no_grad():  # an overflowed float16 step (skipped by the GradScaler) must
            # not poison the running mean: keep the old one then (no host sync)
            moved = torch.lerp(self.pl_mean, self._rank_mean(lengths.detach().mean()),
                               self.hparams.pl_decay)
            self.pl_mean.copy_(torch.where(torch.isfinite(moved), moved, self.pl_mean))
        penalty, _ = path_length_penalty(grads, self.pl_mean)
        k = self._interval("pl")
        return {"loss": self.hparams.pl_weight * penalty * k + 0 * images.float().mean(),
                "pl_penalty": penalty, "pl_mean": self.pl_mean.clone()}

    # ------------------------------------------------------------------------------------------
    # Training
    def training_step(self, batch, batch_idx: int) -> None:
        real = batch[0] if isinstance(batch, (list, tuple)) else batch
        opt_g, opt_d = self.optimizers()
        n = real.shape[0]
        do_r1, do_pl = self.regularize_now("r1"), self.regularize_now("pl")

        with torch.no_grad():
            fake, _ = self.generate_for_training(n)
        self._current_loss_name = "train/d_loss"
        terms = {f"train/d_{k}": v for k, v in self._optimizer_step(
            opt_d, lambda: self.discriminator_loss(real, fake, None)).items()}
        self.d_steps += 1
        if do_r1:
            self._current_loss_name = "train/d_r1_loss"
            r1 = self._optimizer_step(opt_d, lambda: self.r1_terms(real))
            self._last_r1 = {"train/d_r1_penalty": r1["r1_penalty"]}
            self.d_steps += 1
            self.r1_steps += 1

        def g_main():
            return self.generator_loss(self.generate_for_training(n, update_w_avg=True)[0], None)

        self._current_loss_name = "train/g_loss"
        terms.update({f"train/g_{k}": v for k, v in self._optimizer_step(opt_g, g_main).items()})
        self.g_steps += 1
        if do_pl:
            self._current_loss_name = "train/g_pl_loss"
            pl = self._optimizer_step(opt_g, lambda: self.pl_terms(n))
            self._last_pl = {"train/g_pl_penalty": pl["pl_penalty"],
                             "train/g_pl_mean": pl["pl_mean"]}
            self.g_steps += 1
            self.pl_steps += 1
        self.update_ema()
        self.batches += 1
        self.log_train_terms({**terms, **getattr(self, "_last_r1", {}),
                              **getattr(self, "_last_pl", {})})

    # ------------------------------------------------------------------------------------------
    # Sampling and checkpoints
    @torch.no_grad()
    def sample(self, n: int, labels: torch.Tensor | None = None,
               truncation: float = 1.0) -> torch.Tensor:
        """``n`` images from the averaged generator; ``truncation`` is ``psi`` (1: off,
        0: the image of the mean ``w``)."""
        with self.averaged_generator():
            was_training = self.generator.training
            self.generator.eval()
            try:
                z = self.sample_noise(n)
                return self.generator(z, truncation=truncation).float().clamp(-1, 1)
            finally:
                self.generator.train(was_training)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["stylegan2_counters"] = {"batches": self.batches, "r1_steps": self.r1_steps,
                                            "pl_steps": self.pl_steps}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        counters = checkpoint.get("stylegan2_counters", {})
        self.batches = int(counters.get("batches", 0))
        self.r1_steps = int(counters.get("r1_steps", 0))
        self.pl_steps = int(counters.get("pl_steps", 0))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.generator(z)
