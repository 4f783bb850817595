"""Losses and penalties as small pure functions; the models compose them.

Conventions: ``*_logits`` are raw discriminator outputs ``D(x)`` before any sigmoid; every
function returns a scalar averaged over the batch unless its docstring says otherwise.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# ----------------------------------------------------------------------------------------------
# Adversarial losses (Goodfellow et al. 2014)


def gan_discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Discriminator loss of the minimax game (Goodfellow et al. 2014, Eq. 1).

    ``L_D = -E_x[log D(x)] - E_z[log(1 - D(G(z)))]`` with ``D = sigmoid(logits)``.
    """
    real = F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
    fake = F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
    return real + fake


def gan_generator_loss_minimax(fake_logits: torch.Tensor) -> torch.Tensor:
    """Generator loss of the original minimax game (Algorithm 1).

    ``L_G = E_z[log(1 - D(G(z)))]``, minimised; ``log(1 - sigmoid(l)) = -softplus(l)``.
    Saturates when D rejects the samples confidently (early training).
    """
    return -F.softplus(fake_logits).mean()


def gan_generator_loss_nonsaturating(fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating generator loss (Goodfellow et al. 2014, Sec. 3).

    ``L_G = -E_z[log D(G(z))]``; ``-log sigmoid(l) = softplus(-l)``.
    """
    return F.softplus(-fake_logits).mean()


# ----------------------------------------------------------------------------------------------
# Variational autoencoders (Kingma & Welling 2014)


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Reparameterisation trick: ``z = mu + sigma * eps``, ``eps ~ N(0, I)``, ``sigma = exp(logvar/2)``."""
    return mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Closed-form ``KL(N(mu, diag sigma^2) || N(0, I))`` per sample, shape ``(B,)``.

    ``KL = -1/2 * sum_j (1 + log sigma_j^2 - mu_j^2 - sigma_j^2)`` (Kingma & Welling 2014, App. B).
    """
    return -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=1)


def bernoulli_log_likelihood(logits: torch.Tensor, x01: torch.Tensor) -> torch.Tensor:
    """``log p(x|z) = sum_i x_i log p_i + (1 - x_i) log(1 - p_i)`` per sample, shape ``(B,)``.

    ``x01`` holds intensities in [0, 1] (grey levels as Bernoulli means, as is customary).
    """
    nll = F.binary_cross_entropy_with_logits(logits, x01, reduction="none")
    return -nll.flatten(1).sum(dim=1)


def gaussian_log_likelihood(mean: torch.Tensor, x: torch.Tensor, std: float) -> torch.Tensor:
    """``log N(x; mean, std^2 I) = -sum_i [(x_i - mean_i)^2 / (2 std^2) + log std + log(2 pi)/2]``
    per sample, shape ``(B,)``.
    """
    sq = (x - mean).pow(2).flatten(1).sum(dim=1)
    d = x[0].numel()
    return -sq / (2 * std**2) - d * (math.log(std) + 0.5 * math.log(2 * math.pi))
