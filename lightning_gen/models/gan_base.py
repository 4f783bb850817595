"""The alternating-update machinery every GAN of the suite shares, written once.

Goodfellow et al. (2014), Algorithm 1: for each generator step, ``k = n_critic`` discriminator
steps. Here every training batch gives one discriminator step; every ``n_critic``-th batch also
gives one generator step. Lightning's manual optimisation (``automatic_optimization = False``)
carries it, since ``optimizer_idx`` is gone from Lightning 2.

Step counting: ``trainer.global_step`` counts *optimizer* steps (Lightning #17958), so one
iteration of ``n_critic`` D steps and one G step advances it by ``n_critic + 1``, and
``trainer.max_steps`` bounds D and G steps together. ``d_steps`` and ``g_steps`` count each
network's updates explicitly, are logged, and are saved in checkpoints.

Subclasses provide ``generator`` and ``discriminator`` modules and the two loss hooks; they may
override ``generate``/``discriminate`` (conditioning) and ``sample_noise``.

Scaling (docs/scaling.md): mixed precision goes through Lightning's precision plugin
(``manual_backward`` scales, each ``opt.step()`` unscales, one GradScaler for both optimizers);
gradient penalties use :meth:`GANBase.input_gradients`; with ``ema_decay > 0`` an exponential
moving average of the generator (Karras et al. 2018; Yazici et al. 2019) is kept and used by
``sample`` and ``log_images``.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import torch
from lightning.pytorch.strategies import DDPStrategy
from torch import nn

from lightning_gen.models.base import GenerativeModel, check_learning_rates


class GANBase(GenerativeModel):
    """Base LightningModule of the GANs (manual optimisation, ``n_critic`` D steps per G step).

    Args:
        image_shape: ``(C, H, W)`` of the images (linked from the DataModule by the CLI).
        latent_dim: Dimension of the noise ``z``.
        n_critic: Discriminator steps per generator step (``k`` of Algorithm 1).
        lr_g: Generator learning rate.
        lr_d: Discriminator learning rate.
        betas: Adam's betas (used by Adam only).
        optimizer: ``"adam"``, ``"rmsprop"`` or ``"sgd"``.
        momentum: Momentum of SGD and RMSprop.
        grad_clip: Clip each network's gradient norm to this value (0: off). Trainer's
            ``gradient_clip_val`` does not apply under manual optimisation.
        num_fixed_samples: Size of the fixed noise batch used for sample grids.
        sample_seed: Seed of the fixed noise batch.
        ema_decay: Decay ``beta`` of the generator's exponential moving average
            ``theta_ema <- beta * theta_ema + (1 - beta) * theta`` after every generator step
            (0: off). When on, ``sample``, ``log_images`` and evaluation use the average; it is
            saved in checkpoints as ``generator_ema.*``. Typical: 0.999 (0.9999 for long runs).

    Subclasses take their own options and forward these with ``**kwargs`` (LightningCLI and
    jsonargparse resolve the forwarded options, so ``--model.init_args.ema_decay`` works for
    every GAN); they override a default by naming the option in their own signature. This
    constructor saves the hyperparameters of the whole constructor chain, so subclasses do not
    call ``save_hyperparameters`` again.
    """

    def __init__(
        self,
        image_shape: tuple[int, int, int] = (1, 28, 28),
        latent_dim: int = 100,
        n_critic: int = 1,
        lr_g: float = 2e-4,
        lr_d: float = 2e-4,
        betas: tuple[float, float] = (0.5, 0.999),
        optimizer: Literal["adam", "rmsprop", "sgd"] = "adam",
        momentum: float = 0.0,
        grad_clip: float = 0.0,
        num_fixed_samples: int = 64,
        sample_seed: int = 0,
        ema_decay: float = 0.0,
    ) -> None:
        super().__init__()
        # Collects this frame's and the calling subclasses' __init__ arguments (and **kwargs).
        self.save_hyperparameters()
        if not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1) (0 turns the average off), got {ema_decay}")
        if n_critic < 1:
            raise ValueError(f"n_critic must be >= 1, got {n_critic}")
        if latent_dim < 1:
            raise ValueError(f"latent_dim must be >= 1, got {latent_dim}")
        check_learning_rates(lr_g=lr_g, lr_d=lr_d)
        self.automatic_optimization = False
        self.d_steps = 0
        self.g_steps = 0
        noise = torch.randn(
            num_fixed_samples, latent_dim, generator=torch.Generator().manual_seed(sample_seed)
        )
        self.register_buffer("fixed_noise", noise)  # saved in checkpoints, moves with the model
        self.ema_decay = ema_decay
        self.generator_ema: nn.Module | None = None  # built by init_ema() once G exists

    # Subclasses set these two in __init__.
    generator: nn.Module
    discriminator: nn.Module

    # ------------------------------------------------------------------------------------------
    # Hooks for subclasses
    def sample_noise(self, n: int) -> torch.Tensor:
        return torch.randn(n, self.hparams.latent_dim, device=self.device)

    def generate(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.generator(z)

    def discriminate(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.discriminator(x)

    #: Child networks whose outputs a penalty differentiates twice (``input_gradients``, with
    #: ``create_graph``): ``torch.compile`` cannot ("does not currently support double
    #: backward"), so ``--performance.compile`` leaves them as they are.
    twice_differentiated: tuple[str, ...] = ()

    def discriminator_loss(
        self, real: torch.Tensor, fake: torch.Tensor, labels: torch.Tensor | None
    ) -> dict[str, torch.Tensor]:
        """Return ``{"loss": ..., **other_terms_to_log}`` for one discriminator step."""
        raise NotImplementedError

    def generator_loss(
        self, fake: torch.Tensor, labels: torch.Tensor | None
    ) -> dict[str, torch.Tensor]:
        """Return ``{"loss": ..., **other_terms_to_log}`` for one generator step."""
        raise NotImplementedError

    def conditioning(self, batch) -> torch.Tensor | None:
        """Labels the networks are conditioned on (``None`` for unconditional GANs)."""
        return None

    # ------------------------------------------------------------------------------------------
    # Exponential moving average of the generator
    def init_ema(self) -> None:
        """Copy the generator as the average's start (``theta_ema_0 = theta_0``). Called from
        ``setup`` if the subclass has not called it after building its generator; a checkpoint's
        ``generator_ema.*`` then overwrites the copy when resuming."""
        if self.ema_decay > 0 and self.generator_ema is None:
            self.generator_ema = copy.deepcopy(self.generator).requires_grad_(False)

    @torch.no_grad()
    def update_ema(self) -> None:
        """``theta_ema <- beta * theta_ema + (1 - beta) * theta``; buffers (batch-norm running
        statistics) are copied, as in StyleGAN's and BigGAN's averaged generators."""
        if self.generator_ema is None:
            return
        ema_params = list(self.generator_ema.parameters())
        params = [p.detach().to(e.dtype) for p, e in zip(self.generator.parameters(), ema_params,
                                                         strict=True)]
        torch._foreach_lerp_(ema_params, params, 1.0 - self.ema_decay)
        for b_ema, b in zip(self.generator_ema.buffers(), self.generator.buffers(), strict=True):
            b_ema.copy_(b)

    @contextmanager
    def averaged_generator(self) -> Iterator[None]:
        """Within the block, ``self.generator`` is the EMA copy (no-op when EMA is off), so
        subclasses' ``generate`` overrides sample from the average unchanged."""
        if self.generator_ema is None:
            yield
            return
        live = self.generator
        self.generator = self.generator_ema
        try:
            yield
        finally:
            self.generator = live

    # ------------------------------------------------------------------------------------------
    # Lightning hooks
    def setup(self, stage: str) -> None:
        super().setup(stage)
        self.init_ema()
        # The whole LightningModule is one DDP unit, and a discriminator step leaves the
        # generator's parameters without gradients (and vice versa): plain DDP raises "parameters
        # that were not used in producing the loss" (Lightning #20328). We accept the cost of
        # DDP's unused-parameter search rather than all-reducing gradients by hand. setup()
        # runs before the strategy wraps the model, so this covers `--trainer.strategy ddp`.
        strategy = self.trainer.strategy if self._trainer else None
        if isinstance(strategy, DDPStrategy):
            strategy._ddp_kwargs["find_unused_parameters"] = True

    def on_train_start(self) -> None:
        # seed_everything gives every DDP rank the same seed, so every rank would draw the same
        # noise z: the fake half of the global batch would be one batch repeated. Offset the
        # generator noise stream per rank (rank 0 keeps the seeded stream; parameters stay in
        # sync through DDP's initial broadcast and gradient all-reduce).
        if self.trainer.world_size > 1 and self.global_rank > 0:
            torch.manual_seed((torch.initial_seed() + 7919 * self.global_rank) % 2**63)

    def configure_optimizers(self):
        hp = self.hparams
        opt_g = self._make_optimizer(self.generator.parameters(), hp.lr_g)
        opt_d = self._make_optimizer(self.discriminator.parameters(), hp.lr_d)
        return opt_g, opt_d

    def _make_optimizer(self, params, lr: float) -> torch.optim.Optimizer:
        if self.hparams.optimizer == "rmsprop":
            return torch.optim.RMSprop(params, lr=lr, momentum=self.hparams.momentum)
        if self.hparams.optimizer == "sgd":
            return torch.optim.SGD(params, lr=lr, momentum=self.hparams.momentum)
        return torch.optim.Adam(params, lr=lr, betas=tuple(self.hparams.betas))

    def training_step(self, batch, batch_idx: int) -> None:
        real = batch[0] if isinstance(batch, (list, tuple)) else batch
        labels = self.conditioning(batch)
        opt_g, opt_d = self.optimizers()

        # Discriminator step: maximise its objective on real vs. (detached) fake samples.
        with torch.no_grad():
            fake = self.generate(self.sample_noise(real.shape[0]), labels)
        self._current_loss_name = "train/d_loss"  # for the non-finite-loss message
        d_terms = self._optimizer_step(opt_d, lambda: self.discriminator_loss(real, fake, labels))
        self.d_steps += 1

        # Generator step every n_critic discriminator steps.
        if self.d_steps % self.hparams.n_critic == 0:
            def g_closure():
                fake = self.generate(self.sample_noise(real.shape[0]), labels)
                return self.generator_loss(fake, labels)

            self._current_loss_name = "train/g_loss"
            g_terms = self._optimizer_step(opt_g, g_closure)
            self.g_steps += 1
            self.update_ema()
            self._last_g_terms = {f"train/g_{k}": v for k, v in g_terms.items()}
        # The generator's terms are those of its latest step.
        self.log_train_terms({**{f"train/d_{k}": v for k, v in d_terms.items()},
                              **getattr(self, "_last_g_terms", {})})

    def log_train_terms(self, terms: dict[str, torch.Tensor]) -> None:
        """Log one training step's terms through :meth:`log_terms` (``train/d_loss`` and
        ``train/g_loss`` every step and in the progress bar, the others when written), and, at
        the steps Lightning writes logs and the last step, the update counters
        ``train/d_steps``/``train/g_steps`` (an x-axis for D and G updates). The counters are CPU
        tensors, equal on every rank: no host-to-device copy, nothing to reduce."""
        self.log_terms(terms, losses=["train/d_loss", "train/g_loss"])
        if self.log_every_term_now():
            self.log_dict({"train/d_steps": torch.tensor(float(self.d_steps)),
                           "train/g_steps": torch.tensor(float(self.g_steps))})

    def _optimizer_step(self, optimizer, closure) -> dict[str, torch.Tensor]:
        """One update of ``optimizer``'s network: toggle, zero, backward, step, untoggle.

        ``toggle_optimizer`` switches off ``requires_grad`` of the other network, so its
        parameters collect no gradient here; it is always paired with ``untoggle_optimizer``.
        """
        self.toggle_optimizer(optimizer)
        try:
            terms = closure()
            optimizer.zero_grad(set_to_none=True)
            self.manual_backward(terms["loss"])
            optimizer.step()  # clips in on_before_optimizer_step, after AMP unscaling
        finally:
            self.untoggle_optimizer(optimizer)
        return {k: v.detach() for k, v in terms.items()}

    def on_before_optimizer_step(self, optimizer) -> None:
        # Lightning calls this inside opt.step(), after the GradScaler has unscaled the
        # gradients (16-mixed): clipping before opt.step() would clip the *scaled* gradients.
        if self.hparams.grad_clip > 0:
            self.clip_gradients(optimizer, gradient_clip_val=self.hparams.grad_clip,
                                gradient_clip_algorithm="norm")

    # ------------------------------------------------------------------------------------------
    # Gradient penalties under mixed precision
    def input_gradients(self, outputs: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        """``d sum(outputs) / d inputs`` with a graph, in float32, correct under AMP.

        ``torch.autograd.grad`` bypasses Lightning's loss scaling. Following PyTorch's AMP recipe
        for gradient penalties, the outputs are scaled by the GradScaler before ``grad`` (so
        float16 gradients do not underflow) and the gradients unscaled afterwards. With bf16 or
        float32 there is no scaler and nothing to undo.
        """
        scaler = None
        if self._trainer is not None:
            scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        total = outputs.float().sum()
        if scaler is not None:
            (grads,) = torch.autograd.grad(scaler.scale(total), inputs, create_graph=True)
            return grads.float() / _scale_tensor(scaler)
        (grads,) = torch.autograd.grad(total, inputs, create_graph=True)
        return grads.float()

    # ------------------------------------------------------------------------------------------
    # Sampling and checkpoints
    @torch.no_grad()
    def sample(self, n: int, labels: torch.Tensor | None = None) -> torch.Tensor:
        # float32 whatever the training precision: metrics (FID/IS) read these images.
        with self.averaged_generator():
            was_training = self.generator.training
            self.generator.eval()
            try:
                return self.generate(self.sample_noise(n), labels).float().clamp(-1, 1)
            finally:
                self.generator.train(was_training)

    def fixed_labels(self) -> torch.Tensor | None:
        return None

    @torch.no_grad()
    def log_images(self, batch=None) -> dict[str, torch.Tensor]:
        with self.averaged_generator():
            was_training = self.generator.training
            self.generator.eval()
            try:
                images = self.generate(self.fixed_noise, self.fixed_labels()).float().clamp(-1, 1)
            finally:
                self.generator.train(was_training)
        return {"samples": images}

    def grid_layouts(self) -> dict[str, str]:
        average = (f", from the moving average of G (ema_decay {self.ema_decay})"
                   if self.generator_ema is not None else "")
        return {"samples": f"G(z) of fixed noise z{average}" + self._label_layout()}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)  # the non-finite-loss check
        checkpoint["gan_steps"] = {"d_steps": self.d_steps, "g_steps": self.g_steps}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        self.init_ema()  # before load_state_dict, which then fills generator_ema.*
        # A checkpoint holding an average loads even into a model built without ema_decay
        # (e.g. a subclass that does not pass it through): sampling then uses the average.
        if self.generator_ema is None and any(
                k.startswith("generator_ema.") for k in checkpoint.get("state_dict", {})):
            self.generator_ema = copy.deepcopy(self.generator).requires_grad_(False)
        steps = checkpoint.get("gan_steps", {})
        self.d_steps = int(steps.get("d_steps", 0))
        self.g_steps = int(steps.get("g_steps", 0))


def _scale_tensor(scaler) -> torch.Tensor | float:
    """The GradScaler's current scale as a device tensor (no host sync, unlike ``get_scale``)."""
    scale = getattr(scaler, "_get_scale_async", None)
    scale = scale() if scale is not None else None
    return scale if scale is not None else scaler.get_scale()
