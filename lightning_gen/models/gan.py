"""The original GAN (Goodfellow et al. 2014), its conditional version (Mirza & Osindero 2014)
and the textbook convolutional GAN (Foster 2019, Ch. 4)."""

from __future__ import annotations

from typing import Any, Literal

import torch

from lightning_gen.losses import (
    gan_discriminator_loss,
    gan_generator_loss_minimax,
    gan_generator_loss_nonsaturating,
)
from lightning_gen.models.conditional import ConditionalMixin
from lightning_gen.models.gan_base import GANBase
from lightning_gen.nets.conditioning import label_features
from lightning_gen.nets.mlp import MLPDiscriminator, MLPGenerator
from lightning_gen.nets.textbook import TextbookDiscriminator, TextbookGenerator


class _BinaryGANLosses:
    """Eq. 1's discriminator loss; minimax or non-saturating generator loss."""

    def discriminator_loss(self, real, fake, labels):
        real_logits, fake_logits = self.discriminate(real, labels), self.discriminate(fake, labels)
        return {"loss": gan_discriminator_loss(real_logits, fake_logits),
                "real_prob": torch.sigmoid(real_logits).mean(),
                "fake_prob": torch.sigmoid(fake_logits).mean()}

    def generator_loss(self, fake, labels):
        logits = self.discriminate(fake, labels)
        if self.hparams.generator_loss_type == "minimax":
            return {"loss": gan_generator_loss_minimax(logits)}
        return {"loss": gan_generator_loss_nonsaturating(logits)}


class GAN(ConditionalMixin, _BinaryGANLosses, GANBase):
    """Goodfellow et al.'s GAN: MLP generator (ReLU, ``tanh`` out), maxout discriminator with
    dropout, Algorithm 1 with ``k = n_critic`` D steps per G step, SGD with momentum.
    With ``num_classes > 0`` it is the conditional GAN of Mirza & Osindero (2014): the label
    vector ``y`` (one-hot class or attribute vector) is concatenated to ``z`` and to ``x``.

    Args:
        image_shape: ``(C, H, W)`` (linked from the DataModule by the CLI).
        latent_dim: Size of ``z`` (100).
        g_hidden: Generator hidden widths (1200, 1200).
        d_hidden: Discriminator maxout widths (240, 240).
        maxout_pieces: Pieces per maxout unit (5).
        dropout: Discriminator dropout before its later layers (0.5).
        input_dropout: Discriminator dropout of its input pixels (0.2: the paper's code keeps
            each with probability 0.8).
        generator_loss_type: ``"minimax"`` (Eq. 1) or ``"non_saturating"`` (Sec. 3).
        num_classes: Size of the label vector (0: unconditional GAN).
        condition_on: ``"class"`` (integer labels) or ``"attributes"`` (CelebA vectors).
        optimizer: ``"sgd"`` (momentum ``momentum``, as the paper), ``"adam"``, ``"rmsprop"``.
        momentum: SGD momentum (0.5).
        lr_g, lr_d: Learning rates (0.1).
        num_fixed_samples: Size of the fixed noise (and label) batch of the sample grids.
        **kwargs: further options of ``GANBase`` (``n_critic``: ``k`` of Algorithm 1, 1 in the
            paper's experiments; ``betas``, ``ema_decay``, ...).
    """

    def __init__(
        self,
        image_shape: tuple[int, int, int] = (1, 28, 28),
        latent_dim: int = 100,
        g_hidden: tuple[int, ...] = (1200, 1200),
        d_hidden: tuple[int, ...] = (240, 240),
        maxout_pieces: int = 5,
        dropout: float = 0.5,
        input_dropout: float = 0.2,
        generator_loss_type: Literal["non_saturating", "minimax"] = "non_saturating",
        num_classes: int = 0,
        condition_on: Literal["class", "attributes"] = "class",
        optimizer: Literal["sgd", "adam", "rmsprop"] = "sgd",
        momentum: float = 0.5,
        lr_g: float = 0.1,
        lr_d: float = 0.1,
        num_fixed_samples: int = 64,
        **kwargs: Any,
    ) -> None:
        super().__init__(image_shape=image_shape, latent_dim=latent_dim, optimizer=optimizer,
                         momentum=momentum, lr_g=lr_g, lr_d=lr_d,
                         num_fixed_samples=num_fixed_samples, **kwargs)
        self._init_conditioning(num_fixed_samples)
        self.generator = MLPGenerator(latent_dim, image_shape, g_hidden, num_classes)
        self.discriminator = MLPDiscriminator(image_shape, d_hidden, maxout_pieces, dropout,
                                              num_classes, input_dropout)

    def _labels(self, labels: torch.Tensor | None, n: int) -> torch.Tensor | None:
        if not self.conditional:
            return None
        labels = self.default_labels(n) if labels is None else labels
        return label_features(labels, self.hparams.num_classes)

    def generate(self, z, labels=None):
        return self.generator(z, self._labels(labels, z.shape[0]))

    def discriminate(self, x, labels=None):
        return self.discriminator(x, self._labels(labels, x.shape[0]))


class TextbookGAN(_BinaryGANLosses, GANBase):
    """The textbook convolutional GAN (Foster 2019, Ch. 4): see
    :mod:`lightning_gen.nets.textbook`; binary cross-entropy, RMSprop with ``lr_d = 0.0008``
    and ``lr_g = 0.0004``.

    Args:
        image_shape: ``(C, H, W)`` (28x28x1 in the book).
        latent_dim: Size of ``z`` (100).
        d_filters, d_kernel, d_strides, d_dropout: The discriminator's convolutions.
        g_start_shape, g_upsampling, g_filters, g_kernel, g_bn_momentum: The generator's.
        generator_loss_type: ``"non_saturating"`` (the book: G trained on "real" labels).
        lr_g, lr_d, optimizer: RMSprop with the book's learning rates.
        **kwargs: further options of ``GANBase``.
    """

    def __init__(
        self,
        image_shape: tuple[int, int, int] = (1, 28, 28),
        latent_dim: int = 100,
        d_filters: tuple[int, ...] = (64, 64, 128, 128),
        d_kernel: int = 5,
        d_strides: tuple[int, ...] = (2, 2, 2, 1),
        d_dropout: float = 0.4,
        g_start_shape: tuple[int, int, int] = (64, 7, 7),
        g_upsampling: tuple[int, ...] = (2, 2, 1, 1),
        g_filters: tuple[int, ...] = (128, 64, 64, 1),
        g_kernel: int = 5,
        g_bn_momentum: float = 0.9,
        generator_loss_type: Literal["non_saturating", "minimax"] = "non_saturating",
        lr_g: float = 0.0004,
        lr_d: float = 0.0008,
        optimizer: Literal["adam", "rmsprop", "sgd"] = "rmsprop",
        **kwargs: Any,
    ) -> None:
        super().__init__(image_shape=image_shape, latent_dim=latent_dim, lr_g=lr_g, lr_d=lr_d,
                         optimizer=optimizer, **kwargs)
        self.discriminator = TextbookDiscriminator(image_shape, d_filters, d_kernel, d_strides,
                                                   d_dropout)
        self.generator = TextbookGenerator(latent_dim, image_shape, g_start_shape, g_upsampling,
                                           g_filters, g_kernel, g_bn_momentum)
