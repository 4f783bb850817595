"""pix2pix (Isola, Zhu, Zhou & Efros 2017, "Image-to-Image Translation with Conditional
Adversarial Networks"): paired image-to-image translation with a conditional GAN + L1."""

from __future__ import annotations

from typing import Literal

import torch

from lightning_gen.losses import (
    l1_reconstruction_loss,
    pix2pix_discriminator_loss,
    pix2pix_generator_loss,
)
from lightning_gen.models.gan_base import GANBase
from lightning_gen.nets.conv import dcgan_init_
from lightning_gen.nets.pix2pix import ConditionalPatchDiscriminator, UNetGenerator, paper_inference


class Pix2Pix(GANBase):
    """U-Net generator ``G(x, z)`` (``z`` is dropout) and 70x70 PatchGAN ``D(x, y)``, trained on
    ``L_cGAN(G, D) + lambda * L_L1(G)`` (Eq. 4, ``lambda = 100``). Batches are paired
    ``(source, target)`` = ``(x, y)``, e.g. (grayscale, colour) from
    :mod:`datamodules.colorization`.

    Per batch one generator step, then one discriminator step on ``(x, G(x).detach())`` vs.
    ``(x, y)`` (the suite's CycleGAN order; the authors' code steps D first, on the same fake).
    Adam 2e-4, betas (0.5, 0.999); D's objective is halved (Sec. 3.3).

    Inference (``translate``, ``sample``, grids): with ``inference="paper"`` the generator runs
    as at training time (Sec. 3.1.1, 6.1): dropout on, batch norm on the test batch's statistics
    (running statistics untouched); ``"eval"`` is PyTorch's usual eval mode (deterministic).

    ``sample(n)`` translates the fixed source images (from the first training batch, saved in
    checkpoints), as CycleGAN does, so image callbacks and ``lightning-gen sample`` work.

    Args:
        image_shape: ``(C, H, W)`` of the targets (linked from the DataModule by the CLI).
        in_channels: Channels of the source images (1: grayscale).
        g_width: Generator's first-layer channels (64).
        n_down: U-Net downsamplings (0: down to 1x1, ``log2`` of the side; 8 for 256x256).
        dropout: Generator dropout (0.5), the noise ``z``.
        d_width, d_layers: PatchGAN (64, 3: 70x70 patches).
        lambda_l1: ``lambda`` of Eq. 4 (100).
        inference: ``"paper"`` or ``"eval"`` (above).
        lr_g, lr_d, betas: Adam (2e-4, 2e-4, (0.5, 0.999)).
        grad_clip: Clip each network's gradient norm (0: off).
        num_fixed_samples: Images in the grids (a row each of inputs, outputs, targets), kept
            from the first training batches.
        sample_seed: Seed of the base's fixed noise (unused: the noise is dropout).
    """

    #: How ``lightning-gen evaluate`` compares outputs with targets (lightning_gen/metrics/paired.py).
    paired_eval: dict = {"y_channel": False, "crop_border": 0, "fid": True}

    def __init__(
        self,
        image_shape: tuple[int, int, int] = (3, 32, 32),
        in_channels: int = 1,
        g_width: int = 64,
        n_down: int = 0,
        dropout: float = 0.5,
        d_width: int = 64,
        d_layers: int = 3,
        lambda_l1: float = 100.0,
        inference: Literal["paper", "eval"] = "paper",
        lr_g: float = 2e-4,
        lr_d: float = 2e-4,
        betas: tuple[float, float] = (0.5, 0.999),
        grad_clip: float = 0.0,
        num_fixed_samples: int = 8,
        sample_seed: int = 0,
    ) -> None:
        # latent_dim=1: the noise is dropout; the base's fixed noise goes unused.
        super().__init__(image_shape=image_shape, latent_dim=1, n_critic=1, lr_g=lr_g,
                         lr_d=lr_d, betas=betas, optimizer="adam", grad_clip=grad_clip,
                         num_fixed_samples=num_fixed_samples, sample_seed=sample_seed)
        if inference not in ("paper", "eval"):
            raise ValueError(f"inference must be 'paper' or 'eval', got {inference!r}")
        if lambda_l1 < 0:
            raise ValueError(f"lambda_l1 must be >= 0, got {lambda_l1}")
        c, h, w = image_shape
        side = min(h, w)
        if n_down == 0:
            n_down = side.bit_length() - 1  # floor(log2(side))
        if h % 2**n_down or w % 2**n_down:
            raise ValueError(f"image sides {h}x{w} must divide by 2**n_down = {2**n_down}; "
                             "set --model.init_args.n_down smaller")
        self.generator = UNetGenerator(in_channels, c, g_width, n_down, dropout)
        self.discriminator = ConditionalPatchDiscriminator(in_channels, c, d_width, d_layers)
        dcgan_init_(self)  # conv N(0, 0.02), batch norm N(1, 0.02): the authors' init
        self.register_buffer("fixed_source", torch.zeros(num_fixed_samples, in_channels, h, w))
        self.register_buffer("fixed_target", torch.zeros(num_fixed_samples, *image_shape))
        self.register_buffer("_fixed_set", torch.tensor(False))

    def check_datamodule(self, datamodule) -> None:
        super().check_datamodule(datamodule)
        source = getattr(datamodule, "source_shape", None)
        if source is not None and source[0] != self.hparams.in_channels:
            raise ValueError(
                f"Pix2Pix was built for {self.hparams.in_channels}-channel sources but "
                f"{type(datamodule).__name__} yields {source[0]}-channel ones; set "
                "--model.init_args.in_channels to match")

    def _make_optimizer(self, params, lr: float) -> torch.optim.Optimizer:
        return torch.optim.Adam(params, lr=lr, betas=tuple(self.hparams.betas))

    # ------------------------------------------------------------------------------------------
    def translate(self, source: torch.Tensor) -> torch.Tensor:
        """``G(x)`` for a batch of sources, in the chosen inference mode, float32 in [-1, 1]."""
        was_training = self.generator.training
        try:
            if self.hparams.inference == "paper":
                with paper_inference(self.generator):
                    out = self.generator(source)
            else:
                self.generator.eval()
                out = self.generator(source)
        finally:
            self.generator.train(was_training)
        return out.float().clamp(-1, 1)

    def generator_terms(self, source: torch.Tensor, target: torch.Tensor
                        ) -> dict[str, torch.Tensor]:
        fake = self.generator(source)
        terms = pix2pix_generator_loss(self.discriminator(source, fake), fake, target,
                                       self.hparams.lambda_l1)
        return {**terms, "fake": fake}

    def training_step(self, batch, batch_idx: int) -> None:
        source, target = batch
        opt_g, opt_d = self.optimizers()
        fakes = {}

        def g_closure():
            terms = self.generator_terms(source, target)
            fakes["y"] = terms.pop("fake").detach()
            return terms

        self._current_loss_name = "train/g_loss"
        g_terms = self._optimizer_step(opt_g, g_closure)
        self.g_steps += 1

        def d_closure():
            real_logits = self.discriminator(source, target)
            fake_logits = self.discriminator(source, fakes["y"])
            return {"loss": pix2pix_discriminator_loss(real_logits, fake_logits),
                    "real_logit": real_logits.detach().mean(),
                    "fake_logit": fake_logits.detach().mean()}

        self._current_loss_name = "train/d_loss"
        d_terms = self._optimizer_step(opt_d, d_closure)
        self.d_steps += 1
        self.log_train_terms({**{f"train/g_{k}": v for k, v in g_terms.items()},
                              **{f"train/d_{k}": v for k, v in d_terms.items()}})

    @torch.no_grad()
    def validation_step(self, batch, batch_idx: int) -> None:
        source, target = batch
        self.log("val/l1", l1_reconstruction_loss(target.float(), self.translate(source)),
                 sync_dist=True)

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        super().on_train_batch_start(batch, batch_idx)
        # The first training batches' pairs for the grids and sample().
        self._keep_fixed_images((self.fixed_source, batch[0]), (self.fixed_target, batch[1]))

    # ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.translate(self._repeat_fixed(self.fixed_source, n))

    @torch.no_grad()
    def log_images(self, batch=None) -> dict[str, torch.Tensor]:
        """``input_output_target``: three aligned rows, ``num_fixed_samples`` sources of
        ``batch`` (the callback's first validation batch; the fixed training pairs when it holds
        fewer), grey shown as RGB, their translations, the targets."""
        source, target = self._grid_images(batch, self.fixed_source, self.fixed_target)
        output = self.translate(source)
        target = target.float()
        shown = source.float().expand(-1, target.shape[1], -1, -1) if source.shape[1] == 1 \
            else source.float()
        return {"input_output_target": torch.stack([shown, output, target]).clamp(-1, 1)}

    def grid_layouts(self) -> dict[str, str]:
        return {"input_output_target": "rows: input, output G(x), target; column i: pair i"}
