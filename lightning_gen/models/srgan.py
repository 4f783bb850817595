"""SRResNet and SRGAN (Ledig et al. 2017, "Photo-Realistic Single Image Super-Resolution Using a
Generative Adversarial Network"): x4 super-resolution in two stages.

1. :class:`SRResNet`: the generator alone on the pixel MSE (``experiments/srresnet_*.yaml``).
2. :class:`SRGAN`: the same generator, initialised from stage 1's checkpoint
   (``pretrained_generator``), trained on the perceptual loss ``l_VGG54 + 1e-3 * l_Gen``
   against the paper's discriminator (``experiments/srgan_*.yaml``).

Batches are ``(low-res, high-res)`` pairs (:mod:`datamodules.superres`). Both models implement
``translate(source)`` and declare ``paired_eval``, so ``lightning-gen evaluate`` reports PSNR /
SSIM on the Y channel with ``scale`` border pixels cropped, and LPIPS
(:mod:`lightning_gen.metrics.paired`). ``sample(n)`` super-resolves fixed low-res images kept
from the first training batch.
"""

from __future__ import annotations

import glob
import os
from typing import Literal

import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info

from lightning_gen.checkpoints import load_checkpoint
from lightning_gen.losses import gan_discriminator_loss, srgan_perceptual_loss, vgg_content_loss
from lightning_gen.models.base import ImageShapeMismatchError, SingleObjectiveModel
from lightning_gen.models.gan_base import GANBase
from lightning_gen.nets.srgan import SRDiscriminator, VGGFeatures
from lightning_gen.nets.srgan import SRResNet as SRResNetGenerator


class PairedTranslationMixin:
    """``translate``, fixed source images for ``sample`` and the grids, and the data checks of
    a super-resolution model. The host class has a ``generator`` and the hyperparameters
    ``image_shape``, ``scale_factor`` and ``num_fixed_samples``."""

    #: How ``lightning-gen evaluate`` scores the translations (lightning_gen.metrics.paired):
    #: PSNR/SSIM on the Y channel with ``scale`` pixels cropped at the border, as the paper.
    paired_eval: dict = {"y_channel": True, "crop_border": 4, "fid": False}

    def _init_fixed(self) -> None:
        hp = self.hparams
        c, h, w = hp.image_shape
        s = hp.scale_factor
        self.register_buffer("fixed_source", torch.zeros(hp.num_fixed_samples, c, h // s, w // s))
        self.register_buffer("fixed_target", torch.zeros(hp.num_fixed_samples, c, h, w))
        self.register_buffer("_fixed_set", torch.tensor(False))
        self.paired_eval = {**type(self).paired_eval, "crop_border": s}

    def translate(self, source: torch.Tensor) -> torch.Tensor:
        """Super-resolve ``(B, C, H/s, W/s)`` -> ``(B, C, H, W)``, in [-1, 1]."""
        return self.generator(source)

    def check_datamodule(self, datamodule) -> None:
        super().check_datamodule(datamodule)
        scale = getattr(datamodule, "scale_factor", None)
        if scale is None:
            raise ValueError(f"{type(self).__name__} trains on (low-res, high-res) pairs; use a "
                             f"super-resolution DataModule (datamodules.superres), not "
                             f"{type(datamodule).__name__}")
        if int(scale) != int(self.hparams.scale_factor):
            raise ImageShapeMismatchError(
                f"{type(self).__name__} upsamples x{self.hparams.scale_factor} but "
                f"{type(datamodule).__name__} downsamples x{scale}; set the same scale_factor")

    def _keep_fixed(self, batch) -> None:
        self._keep_fixed_images((self.fixed_source, batch[0]), (self.fixed_target, batch[1]))

    @torch.no_grad()
    def _translate_eval(self, source: torch.Tensor) -> torch.Tensor:
        was_training = self.generator.training
        self.generator.eval()
        try:
            return self.translate(source).float().clamp(-1, 1)
        finally:
            self.generator.train(was_training)

    @torch.no_grad()
    def sample(self, n: int, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self._translate_eval(self._repeat_fixed(self.fixed_source, n))

    @torch.no_grad()
    def log_images(self, batch=None) -> dict[str, torch.Tensor]:
        source, target = self._grid_images(batch, self.fixed_source, self.fixed_target)
        output = self._translate_eval(source)
        bicubic = F.interpolate(source.float(), size=target.shape[-2:], mode="bicubic",
                                align_corners=False).clamp(-1, 1)
        # Three aligned rows: bicubic upsampling of the input, the model's output, the original.
        return {"bicubic_output_target": torch.stack([bicubic, output, target.float()])}

    def grid_layouts(self) -> dict[str, str]:
        return {"bicubic_output_target": "rows: bicubic upsampling of the low-res input, output, "
                                         "original; column i: image i"}


class SRResNet(PairedTranslationMixin, SingleObjectiveModel):
    """Stage 1: the SRResNet generator on the pixel-wise MSE (Ledig et al. 2017, Eq. 4),
    ``l_MSE = 1/(r^2 W H) sum (I_HR - G(I_LR))^2`` (images on [-1, 1]), Adam (beta1 0.9).

    Args:
        image_shape: ``(C, H, W)`` of the high-resolution images (linked from the DataModule).
        scale_factor: Upscaling factor ``r`` (4); must equal the DataModule's.
        width: Generator feature maps (64).
        n_blocks: Residual blocks (16).
        lr: Adam learning rate (1e-4).
        betas: Adam betas ((0.9, 0.999)).
        num_fixed_samples: Low-res images kept for ``sample`` and the grids.
    """

    def __init__(
        self,
        image_shape: tuple[int, int, int] = (3, 96, 96),
        scale_factor: int = 4,
        width: int = 64,
        n_blocks: int = 16,
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.999),
        num_fixed_samples: int = 8,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.generator = SRResNetGenerator(image_shape[0], width, n_blocks, scale_factor)
        self._init_fixed()

    def _step(self, batch, stage: str) -> torch.Tensor:
        source, target = batch
        loss = F.mse_loss(self.translate(source).float(), target.float())
        self.log(f"{stage}/loss", loss, prog_bar=stage == "train")
        return loss

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        self._keep_fixed(batch)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr,
                                betas=tuple(self.hparams.betas))


def resolve_checkpoint(spec: str) -> str:
    """A checkpoint path, or the newest file a glob (``runs/srresnet_*/checkpoints/last.ckpt``)
    matches, so a YAML can name the first stage's run without its timestamp."""
    if os.path.isfile(spec):
        return spec
    matches = sorted(glob.glob(spec), key=os.path.getmtime)
    if not matches:
        raise FileNotFoundError(
            f"pretrained_generator: no checkpoint matches {spec!r}; train the first stage "
            "(experiments/srresnet_*.yaml) or pass --model.init_args.pretrained_generator PATH")
    return matches[-1]


class SRGAN(PairedTranslationMixin, GANBase):
    """Stage 2: SRGAN. Generator loss ``l^SR = l_X + adversarial_weight * l_Gen`` (Eq. 3),
    ``l_X`` the VGG content loss of ``content_layer`` with the paper's feature rescaling
    (:func:`~lightning_gen.losses.vgg_content_loss`) or the MSE; discriminator on the
    minimax loss (Eq. 2). One D step, then one G step, per batch.

    The VGG19 is built on the first training step (not at load time: ``evaluate`` and
    ``sample`` never need it) and is not part of the state dict (checkpoints stay small).

    Args:
        image_shape: ``(C, H, W)`` of the high-resolution images (linked from the DataModule).
        scale_factor: Upscaling factor (4).
        width, n_blocks: Generator (64, 16).
        d_width, d_dense: Discriminator (64, 1024).
        content_layer: ``"relu5_4"`` (SRGAN-VGG54, the paper's choice), ``"relu2_2"``
            (SRGAN-VGG22) or ``"mse"`` (SRGAN-MSE).
        vgg_weights: ``"imagenet"`` (torchvision download), a path to a saved VGG19 state dict
            (offline), or ``"random"`` (tests).
        vgg_rescale: Factor on the VGG feature maps (1/12.75).
        adversarial_weight: Weight of the adversarial loss (1e-3).
        pretrained_generator: Stage 1's checkpoint (or a glob; the newest match) whose
            ``generator.*`` initialise this generator when a fit starts (not when resuming).
        lr_g, lr_d, betas: Adam (1e-4, 1e-4, (0.9, 0.999)).
        lr_decay_g_steps: After this many generator steps both learning rates are divided by
            10 (the paper: 1e5 updates at 1e-4, then 1e5 at 1e-5; 0: never).
        grad_clip: Clip each network's gradient norm to this value (0: off, the paper).
        num_fixed_samples: Low-res images kept for ``sample`` and the grids.
    """

    def __init__(
        self,
        image_shape: tuple[int, int, int] = (3, 96, 96),
        scale_factor: int = 4,
        width: int = 64,
        n_blocks: int = 16,
        d_width: int = 64,
        d_dense: int = 1024,
        content_layer: Literal["relu5_4", "relu2_2", "mse"] = "relu5_4",
        vgg_weights: str = "imagenet",
        vgg_rescale: float = 1 / 12.75,
        adversarial_weight: float = 1e-3,
        pretrained_generator: str | None = None,
        lr_g: float = 1e-4,
        lr_d: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.999),
        lr_decay_g_steps: int = 0,
        grad_clip: float = 0.0,
        num_fixed_samples: int = 8,
    ) -> None:
        # latent_dim=1: SRGAN has no noise input; the base's fixed noise goes unused.
        super().__init__(image_shape=image_shape, latent_dim=1, n_critic=1, lr_g=lr_g,
                         lr_d=lr_d, betas=betas, optimizer="adam", grad_clip=grad_clip,
                         num_fixed_samples=num_fixed_samples)
        if content_layer not in ("relu5_4", "relu2_2", "mse"):
            raise ValueError(f"content_layer must be relu5_4, relu2_2 or mse, got {content_layer!r}")
        self.generator = SRResNetGenerator(image_shape[0], width, n_blocks, scale_factor)
        self.discriminator = SRDiscriminator(image_shape, d_width, d_dense)
        self._init_fixed()

    def _make_optimizer(self, params, lr: float) -> torch.optim.Optimizer:
        return torch.optim.Adam(params, lr=lr, betas=tuple(self.hparams.betas))

    # ------------------------------------------------------------------------------------------
    def vgg(self) -> VGGFeatures:
        """The frozen VGG19 feature map (built once; kept out of the module tree)."""
        vgg = self.__dict__.get("_vgg")
        if vgg is None:
            vgg = VGGFeatures(self.hparams.content_layer, self.hparams.vgg_weights)
            self.__dict__["_vgg"] = vgg
        return vgg.to(self.device)

    def content_loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.hparams.content_layer == "mse":
            return F.mse_loss(output.float(), target.float())
        vgg = self.vgg()
        with torch.no_grad():
            features_hr = vgg(target)
        return vgg_content_loss(vgg(output).float(), features_hr.float(),
                                self.hparams.vgg_rescale)

    def training_step(self, batch, batch_idx: int) -> None:
        source, target = batch
        opt_g, opt_d = self.optimizers()
        with torch.no_grad():
            fake = self.generator(source)

        def d_closure():
            loss = gan_discriminator_loss(self.discriminator(target).float(),
                                          self.discriminator(fake).float())
            return {"loss": loss}

        self._current_loss_name = "train/d_loss"
        d_terms = self._optimizer_step(opt_d, d_closure)
        self.d_steps += 1

        def g_closure():
            output = self.generator(source)
            content = self.content_loss(output, target)
            logits = self.discriminator(output).float()
            loss = srgan_perceptual_loss(content, logits, self.hparams.adversarial_weight)
            return {"loss": loss, "content": content, "adversarial": F.softplus(-logits).mean()}

        self._current_loss_name = "train/g_loss"
        g_terms = self._optimizer_step(opt_g, g_closure)
        self.g_steps += 1
        self.update_ema()
        if self.g_steps == self.hparams.lr_decay_g_steps:
            for opt in (opt_g, opt_d):
                for group in opt.param_groups:
                    group["lr"] = group["lr"] / 10
        self.log_train_terms({**{f"train/g_{k}": v for k, v in g_terms.items()},
                              **{f"train/d_{k}": v for k, v in d_terms.items()}})

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        super().on_train_batch_start(batch, batch_idx)
        self._keep_fixed(batch)

    def check_datamodule(self, datamodule) -> None:
        super().check_datamodule(datamodule)
        if self.hparams.content_layer != "mse":
            self.vgg()  # its weights load (or fail to, in one line) before the run starts

    def setup(self, stage: str) -> None:
        resuming = self._trainer is not None and self.trainer.ckpt_path is not None
        if stage == "fit" and self.hparams.pretrained_generator and not resuming:
            spec = self.hparams.pretrained_generator
            self.pretrained_from = self.load_pretrained_generator(spec)
            # The config keeps the glob: say which stage-1 run it matched (and keep it in the
            # checkpoints), since a rerun of the config would take the newest match then.
            rank_zero_info(f"SRGAN: generator initialised from {self.pretrained_from}"
                           + (f" (newest match of {spec})" if glob.has_magic(spec) else ""))
        super().setup(stage)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        if getattr(self, "pretrained_from", None):
            checkpoint["srgan"] = {"pretrained_generator": str(self.pretrained_from)}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        self.pretrained_from = checkpoint.get("srgan", {}).get("pretrained_generator")

    def load_pretrained_generator(self, spec: str) -> str:
        """Copy ``generator.*`` of stage 1's checkpoint into this generator; returns its path."""
        path = resolve_checkpoint(spec)
        state = load_checkpoint(path).get("state_dict", {})
        generator = {k.removeprefix("generator."): v for k, v in state.items()
                     if k.startswith("generator.")}
        try:
            self.generator.load_state_dict(generator, strict=True)
        except RuntimeError as err:
            raise ValueError(f"pretrained_generator {path} does not hold this SRResNet "
                             f"(width, n_blocks, scale_factor must match): "
                             f"{str(err).splitlines()[-1][:200]}") from None
        return path
