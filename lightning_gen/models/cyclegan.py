"""CycleGAN (Zhu, Park, Isola & Efros 2017): unpaired image-to-image translation."""

from __future__ import annotations

import random

import torch
from torch import nn

from lightning_gen.losses import (
    cycle_consistency_loss,
    identity_loss,
    least_squares_discriminator_loss,
    least_squares_generator_loss,
)
from lightning_gen.models.gan_base import GANBase
from lightning_gen.nets.conv import dcgan_init_
from lightning_gen.nets.cyclegan import PatchDiscriminator, ResNetTranslator


class ImagePool:
    """History of generated images (Shrivastava et al. 2017): the discriminators are updated
    on a mix of the newest fakes and older ones, which damps oscillation.

    ``query(images)``: while the pool has room, store and return each image; afterwards return,
    with probability 1/2, a stored image (replaced by the new one) or else the new image.
    """

    def __init__(self, size: int = 50) -> None:
        self.size = size
        self.images: list[torch.Tensor] = []

    def query(self, images: torch.Tensor) -> torch.Tensor:
        if self.size == 0:
            return images
        out = []
        for image in images.detach():
            if len(self.images) < self.size:
                self.images.append(image)
                out.append(image)
            elif random.random() < 0.5:
                i = random.randrange(self.size)
                out.append(self.images[i])
                self.images[i] = image
            else:
                out.append(image)
        return torch.stack(out)


class CycleGAN(GANBase):
    """Two generators ``G: A -> B``, ``F: B -> A`` and two discriminators ``D_A``, ``D_B``, on
    the least-squares adversarial loss plus ``lambda_cycle * (||F(G(a)) - a||_1 +
    ||G(F(b)) - b||_1)`` (Eq. 3) and ``lambda_identity * lambda_cycle * (||G(b) - b||_1 +
    ||F(a) - a||_1)`` (Sec. 5.2). Batches are ``(x_a, x_b)`` of unpaired images.

    One Adam optimises both generators and one both discriminators (the GAN base's machinery:
    ``generator`` and ``discriminator`` are module dicts); per batch one generator step, then
    one discriminator step on fakes drawn from the image pools. The learning rate is constant
    for ``decay_start_epoch`` epochs, then decays linearly to 0 over ``decay_epochs``.

    ``sample(n)`` translates the fixed domain-A images (from the first training batch) to B;
    ``translate`` maps any batch.

    Args:
        image_shape: ``(C, H, W)`` (linked from the DataModule by the CLI).
        g_width, n_res_blocks, n_down: Generator (64, 9 for 256px / 6 for 128px and less, 2).
        d_width, d_layers: PatchGAN discriminator (64, 3).
        lambda_cycle: ``lambda`` of Eq. 3 (10).
        lambda_identity: Identity weight relative to ``lambda_cycle`` (0.5; 0 switches it off).
        pool_size: Images in each history pool (50).
        decay_start_epoch, decay_epochs: Learning-rate schedule (100, 100).
        lr_g, lr_d, betas: Adam (2e-4, 2e-4, (0.5, 0.999)).
        num_fixed_samples: Images in the translation grids.
    """

    def __init__(
        self,
        image_shape: tuple[int, int, int] = (3, 64, 64),
        g_width: int = 64,
        n_res_blocks: int = 6,
        n_down: int = 2,
        d_width: int = 64,
        d_layers: int = 3,
        lambda_cycle: float = 10.0,
        lambda_identity: float = 0.5,
        pool_size: int = 50,
        decay_start_epoch: int = 100,
        decay_epochs: int = 100,
        lr_g: float = 2e-4,
        lr_d: float = 2e-4,
        betas: tuple[float, float] = (0.5, 0.999),
        grad_clip: float = 0.0,
        num_fixed_samples: int = 8,
        sample_seed: int = 0,
    ) -> None:
        # latent_dim=1: CycleGAN has no noise input; the base's fixed noise goes unused.
        super().__init__(image_shape=image_shape, latent_dim=1, n_critic=1, lr_g=lr_g,
                         lr_d=lr_d, betas=betas, optimizer="adam", grad_clip=grad_clip,
                         num_fixed_samples=num_fixed_samples, sample_seed=sample_seed)
        c = image_shape[0]
        self.generator = nn.ModuleDict({
            "a_to_b": ResNetTranslator(c, g_width, n_res_blocks, n_down),
            "b_to_a": ResNetTranslator(c, g_width, n_res_blocks, n_down),
        })
        self.discriminator = nn.ModuleDict({
            "a": PatchDiscriminator(c, d_width, d_layers),
            "b": PatchDiscriminator(c, d_width, d_layers),
        })
        dcgan_init_(self)  # conv N(0, 0.02) as the authors' implementation
        self.pool_a, self.pool_b = ImagePool(pool_size), ImagePool(pool_size)
        self.register_buffer("fixed_a", torch.zeros(num_fixed_samples, *image_shape))
        self.register_buffer("fixed_b", torch.zeros(num_fixed_samples, *image_shape))
        self.register_buffer("_fixed_set", torch.tensor(False))

    def _make_optimizer(self, params, lr: float) -> torch.optim.Optimizer:
        return torch.optim.Adam(params, lr=lr, betas=tuple(self.hparams.betas))

    def translate(self, x: torch.Tensor, direction: str = "a_to_b") -> torch.Tensor:
        return self.generator[direction](x)

    def cycle_terms(self, a: torch.Tensor, b: torch.Tensor) -> dict[str, torch.Tensor]:
        """The generators' objective on one batch, with its parts and the fakes."""
        hp = self.hparams
        fake_b, fake_a = self.translate(a, "a_to_b"), self.translate(b, "b_to_a")
        adv = (least_squares_generator_loss(self.discriminator["b"](fake_b))
               + least_squares_generator_loss(self.discriminator["a"](fake_a)))
        cycle = (cycle_consistency_loss(a, self.translate(fake_b, "b_to_a"))
                 + cycle_consistency_loss(b, self.translate(fake_a, "a_to_b")))
        loss = adv + hp.lambda_cycle * cycle
        terms = {"adversarial": adv, "cycle": cycle}
        if hp.lambda_identity > 0:
            idt = (identity_loss(b, self.translate(b, "a_to_b"))
                   + identity_loss(a, self.translate(a, "b_to_a")))
            loss = loss + hp.lambda_identity * hp.lambda_cycle * idt
            terms["identity"] = idt
        return {"loss": loss, **terms, "fake_a": fake_a, "fake_b": fake_b}

    def training_step(self, batch, batch_idx: int) -> None:
        a, b = batch
        opt_g, opt_d = self.optimizers()
        fakes = {}

        def g_closure():
            terms = self.cycle_terms(a, b)
            fakes["a"], fakes["b"] = terms.pop("fake_a"), terms.pop("fake_b")
            return terms

        g_terms = self._optimizer_step(opt_g, g_closure)
        self.g_steps += 1
        pooled_a, pooled_b = self.pool_a.query(fakes["a"]), self.pool_b.query(fakes["b"])

        def d_closure():
            loss_a = least_squares_discriminator_loss(self.discriminator["a"](a),
                                                      self.discriminator["a"](pooled_a))
            loss_b = least_squares_discriminator_loss(self.discriminator["b"](b),
                                                      self.discriminator["b"](pooled_b))
            return {"loss": loss_a + loss_b, "loss_a": loss_a, "loss_b": loss_b}

        d_terms = self._optimizer_step(opt_d, d_closure)
        self.d_steps += 1
        self.log_train_terms({**{f"train/g_{k}": v for k, v in g_terms.items()},
                              **{f"train/d_{k}": v for k, v in d_terms.items()}})

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        super().on_train_batch_start(batch, batch_idx)
        # The first training batches' images for the grids and sample().
        self._keep_fixed_images((self.fixed_a, batch[0]), (self.fixed_b, batch[1]))

    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        hp = self.hparams
        factor = 1.0 - max(0, self.current_epoch - hp.decay_start_epoch) / max(hp.decay_epochs, 1)
        for opt, lr in zip(self.optimizers(), (hp.lr_g, hp.lr_d), strict=True):
            for group in opt.param_groups:
                group["lr"] = lr * max(factor, 0.0)

    @torch.no_grad()
    def sample(self, n: int, labels: torch.Tensor | None = None) -> torch.Tensor:
        x = self._repeat_fixed(self.fixed_a, n)
        was_training = self.generator.training
        self.generator.eval()
        try:
            return self.translate(x, "a_to_b").clamp(-1, 1)
        finally:
            self.generator.train(was_training)

    @torch.no_grad()
    def log_images(self, batch=None) -> dict[str, torch.Tensor]:
        a, b = self._grid_images(batch, self.fixed_a, self.fixed_b)
        fake_b, fake_a = self.translate(a, "a_to_b"), self.translate(b, "b_to_a")
        rec_a, rec_b = self.translate(fake_b, "b_to_a"), self.translate(fake_a, "a_to_b")
        # Three aligned rows each: a / G(a) / F(G(a)) and b / F(b) / G(F(b)).
        return {"a_to_b_to_a": torch.stack([a, fake_b, rec_a]).clamp(-1, 1),
                "b_to_a_to_b": torch.stack([b, fake_a, rec_b]).clamp(-1, 1)}

    def grid_layouts(self) -> dict[str, str]:
        return {"a_to_b_to_a": "rows: a, G(a), F(G(a)); column i: image i of domain A",
                "b_to_a_to_b": "rows: b, F(b), G(F(b)); column i: image i of domain B"}
