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


# ----------------------------------------------------------------------------------------------
# Wasserstein GAN with gradient penalty (Arjovsky et al. 2017; Gulrajani et al. 2017)


def wasserstein_critic_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    """Critic loss of the WGAN (Gulrajani et al. 2017, Algorithm 1, without the penalty).

    ``L_D = E_z[D(G(z))] - E_x[D(x)]``: the negated estimate of the Wasserstein-1 distance.
    """
    return fake_scores.mean() - real_scores.mean()


def wasserstein_generator_loss(fake_scores: torch.Tensor) -> torch.Tensor:
    """Generator loss of the WGAN: ``L_G = -E_z[D(G(z))]``."""
    return -fake_scores.mean()


def interpolate(real: torch.Tensor, fake: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Points on straight lines between real and fake samples (Gulrajani et al. 2017, Alg. 1):

    ``x_hat = alpha * x + (1 - alpha) * x_tilde``, ``alpha ~ U[0, 1]`` per sample, shape ``(B,)``.
    """
    alpha = alpha.view(-1, *([1] * (real.dim() - 1)))
    return alpha * real + (1 - alpha) * fake


def gradient_penalty(input_grads: torch.Tensor, target_norm: float = 1.0) -> torch.Tensor:
    """Two-sided gradient penalty ``E[(||grad_x D(x)||_2 - k)^2]`` (Gulrajani et al. 2017, Eq. 3,
    with ``k = 1``; DRAGAN uses the same form around real data, Kodali et al. 2017).

    Args:
        input_grads: ``grad_x D(x)`` at the penalty points, ``(B, ...)``; one norm per sample.
        target_norm: ``k``.
    """
    norms = input_grads.flatten(1).norm(2, dim=1)
    return (norms - target_norm).pow(2).mean()


def dragan_perturb(real: torch.Tensor, scale: float = 0.5) -> torch.Tensor:
    """DRAGAN's penalty points: real samples plus noise, ``x_p = x + c * std(x) * u``,
    ``u ~ U[0, 1)`` elementwise, ``c = scale`` (Kodali et al. 2017, the authors' implementation
    of the penalty points ``x + delta``; ``std(x)`` is the batch's standard deviation).
    """
    return real + scale * real.std() * torch.rand_like(real)


# ----------------------------------------------------------------------------------------------
# Hinge loss (Lim & Ye 2017; Miyato et al. 2018, SNGAN)


def hinge_discriminator_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    """Hinge loss of the discriminator (Lim & Ye 2017; Miyato et al. 2018, Sec. 4):

    ``L_D = E_x[max(0, 1 - D(x))] + E_z[max(0, 1 + D(G(z)))]``.
    """
    return F.relu(1 - real_scores).mean() + F.relu(1 + fake_scores).mean()


def hinge_generator_loss(fake_scores: torch.Tensor) -> torch.Tensor:
    """Generator loss paired with the hinge discriminator loss: ``L_G = -E_z[D(G(z))]``."""
    return -fake_scores.mean()


# ----------------------------------------------------------------------------------------------
# Least-squares GAN (Mao et al. 2017), as used by CycleGAN (Zhu et al. 2017)


def least_squares_discriminator_loss(
    real_scores: torch.Tensor, fake_scores: torch.Tensor
) -> torch.Tensor:
    """LSGAN discriminator loss with targets ``b = 1`` (real), ``a = 0`` (fake) (Mao et al. 2017,
    Eq. 2), halved as in CycleGAN's implementation ("divide the objective by 2 while optimizing
    D"): ``L_D = 1/2 (E_x[(D(x) - 1)^2] + E_z[D(G(z))^2])``.
    """
    return 0.5 * ((real_scores - 1).pow(2).mean() + fake_scores.pow(2).mean())


def least_squares_generator_loss(fake_scores: torch.Tensor) -> torch.Tensor:
    """LSGAN generator loss with target ``c = 1``: ``L_G = E_z[(D(G(z)) - 1)^2]``."""
    return (fake_scores - 1).pow(2).mean()


def cycle_consistency_loss(x: torch.Tensor, x_cycled: torch.Tensor) -> torch.Tensor:
    """Cycle-consistency loss (Zhu et al. 2017, Eq. 2), one direction:
    ``E_x[||F(G(x)) - x||_1]``, averaged over pixels.
    """
    return (x_cycled - x).abs().mean()


def identity_loss(x: torch.Tensor, mapped: torch.Tensor) -> torch.Tensor:
    """Identity-mapping loss (Zhu et al. 2017, Sec. 5.2; Taigman et al. 2017):
    ``E_y[||G(y) - y||_1]``: a generator fed an image of its target domain should keep it.
    """
    return (mapped - x).abs().mean()


# ----------------------------------------------------------------------------------------------
# Instance noise (Sønderby et al. 2017; Arjovsky & Bottou 2017)


def linear_anneal(step: int, start: float, anneal_steps: int) -> float:
    """``start`` decayed linearly to 0 over ``anneal_steps`` steps, 0 afterwards:
    ``sigma(t) = start * max(0, 1 - t / T)`` (the instance-noise schedule; ``T = 0``: constant).
    """
    if anneal_steps <= 0:
        return float(start)
    return float(start) * max(0.0, 1.0 - step / anneal_steps)


# ----------------------------------------------------------------------------------------------
# Autoregressive likelihoods (van den Oord et al. 2016)


def discretize(x: torch.Tensor, num_levels: int = 256) -> torch.Tensor:
    """Images in [-1, 1] -> integer levels ``0..num_levels-1`` (``round((x + 1) / 2 * (L - 1))``)."""
    return ((x + 1) / 2 * (num_levels - 1)).round().clamp(0, num_levels - 1).long()


def categorical_nll(logits: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """``-log p(x) = -sum_i log softmax(logits_i)[x_i]`` per image, in nats, shape ``(B,)``.

    ``logits``: ``(B, L, C, H, W)`` over ``L`` intensity levels; ``levels``: ``(B, C, H, W)``.
    Divide by ``C * H * W * ln 2`` for bits per dimension.
    """
    nll = F.cross_entropy(logits, levels, reduction="none")  # (B, C, H, W)
    return nll.flatten(1).sum(dim=1)


# ----------------------------------------------------------------------------------------------
# Progressive GAN (Karras et al. 2018)


def epsilon_drift_penalty(real_scores: torch.Tensor) -> torch.Tensor:
    """Drift term of the progressive GAN's critic (Karras et al. 2018, App. A.1):
    ``L_drift = E_x[D(x)^2]``, added as ``eps_drift * L_drift`` (``eps_drift = 0.001``) to keep
    the critic's output from drifting far from zero.
    """
    return real_scores.float().pow(2).mean()

# StyleGAN2's regularisers (Mescheder et al. 2018; Karras et al. 2020)


def r1_penalty(real_grads: torch.Tensor) -> torch.Tensor:
    """R1 penalty without its weight (Mescheder et al. 2018, Eq. 9):
    ``E_x[||grad_x D(x)||_2^2]`` at real samples; the regulariser is ``gamma / 2`` times this.

    Args:
        real_grads: ``grad_x D(x)`` at real images, ``(B, ...)``.
    """
    return real_grads.flatten(1).square().sum(dim=1).mean()


def path_length_penalty(w_grads: torch.Tensor, target: torch.Tensor | float
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Path-length penalty (Karras et al. 2020, Eq. 4): ``E_{w,y}[(||J_w^T y||_2 - a)^2]``,
    ``y ~ N(0, I) / sqrt(H W)``, ``a`` the running mean of the lengths.

    Args:
        w_grads: ``J_w^T y = grad_w <g(w), y>``, ``(B, num_ws, w_dim)`` (one ``w`` per style
            layer); the length is ``sqrt(mean over layers of ||grad||^2)``, as in the official
            code.
        target: ``a``.

    Returns:
        ``(penalty, lengths)``, ``lengths`` of shape ``(B,)`` (to update ``a``).
    """
    lengths = w_grads.square().sum(dim=2).mean(dim=1).sqrt()
    return (lengths - target).square().mean(), lengths


def lazy_regularization_adam(lr: float, betas: tuple[float, float], interval: int
                             ) -> tuple[float, tuple[float, float]]:
    """Adam settings for a network regularised every ``k = interval`` minibatches in separate
    steps (Karras et al. 2020, App. B): ``c = k / (k + 1)``, ``lr' = c lr``,
    ``beta' = beta ** c``; ``k = 0`` (no regulariser) leaves them unchanged."""
    if interval <= 0:
        return lr, tuple(betas)
    c = interval / (interval + 1)
    return lr * c, (betas[0] ** c, betas[1] ** c)

# BigGAN (Brock, Donahue & Simonyan 2019)


def orthogonal_regularization(weights: list[torch.Tensor], beta: float = 1e-4) -> torch.Tensor:
    """BigGAN's modified orthogonal regularisation (Brock et al. 2019, Eq. 3):

    ``R_beta(W) = beta * ||W^T W ⊙ (1 - I)||_F^2``, summed over the weights. Each weight is a
    matrix whose columns are the filters: ``W`` of shape ``(fan_in, out)`` is the weight
    reshaped to ``(out, fan_in)`` and transposed, so ``W^T W`` is the ``(out, out)`` Gram matrix
    of the filters (as in the authors' ``utils.ortho``). Only the filters' cosine similarities
    are penalised, not their norms.
    """
    total = weights[0].new_zeros((), dtype=torch.float32)
    for w in weights:
        w = w.float().flatten(1).t()  # (fan_in, out): columns are filters
        gram = w.t() @ w  # (out, out)
        off_diagonal = gram * (1 - torch.eye(gram.shape[0], device=gram.device))
        total = total + off_diagonal.pow(2).sum()
    return beta * total


# ----------------------------------------------------------------------------------------------
# SRGAN (Ledig et al. 2017)


def vgg_content_loss(features_sr: torch.Tensor, features_hr: torch.Tensor,
                     rescale: float = 1 / 12.75) -> torch.Tensor:
    """VGG content loss of SRGAN (Ledig et al. 2017, Eq. 5), feature maps rescaled.

    ``l_VGG/i,j = 1 / (W H C) * sum_{x,y,c} (r * phi_ij(I_HR) - r * phi_ij(G(I_LR)))^2`` with
    ``r = rescale``: the paper rescales the VGG feature maps by 1/12.75 "to obtain VGG losses of
    a scale that is comparable to the MSE loss" (Sec. 3.2.1), i.e. Eq. 5 times ``r^2 ~ 0.006``.
    Averaged over channels as well as positions (the usual implementation), and over the batch.
    """
    return F.mse_loss(features_sr * rescale, features_hr * rescale)


def srgan_perceptual_loss(content: torch.Tensor, fake_logits: torch.Tensor,
                          adversarial_weight: float = 1e-3) -> torch.Tensor:
    """SRGAN's perceptual loss (Ledig et al. 2017, Eq. 3 and 6):
    ``l^SR = l^SR_X + 10^-3 * l^SR_Gen`` with ``l^SR_Gen = sum_n -log D(G(I_LR))``
    (non-saturating, averaged over the batch here; ``D = sigmoid(logits)``)."""
    return content + adversarial_weight * F.softplus(-fake_logits).mean()


# ----------------------------------------------------------------------------------------------
# pix2pix: conditional GAN + L1 (Isola et al. 2017)


def l1_reconstruction_loss(target: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
    """``L_L1(G) = E_{x,y,z}[||y - G(x, z)||_1]`` (Isola et al. 2017, Eq. 3), averaged over
    pixels (as the authors' implementation)."""
    return (target - output).abs().mean()


def pix2pix_discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor
                               ) -> torch.Tensor:
    """Conditional-GAN discriminator loss, halved (Isola et al. 2017, Eq. 1 and Sec. 3.3: "we
    divide the objective by 2 while optimizing D"), averaged over the PatchGAN's patches:

    ``L_D = 1/2 (-E_{x,y}[log D(x, y)] - E_{x,z}[log(1 - D(x, G(x, z)))])``.
    """
    return 0.5 * gan_discriminator_loss(real_logits, fake_logits)


def pix2pix_generator_loss(fake_logits: torch.Tensor, output: torch.Tensor,
                           target: torch.Tensor, lambda_l1: float = 100.0
                           ) -> dict[str, torch.Tensor]:
    """The generator's objective ``G* = arg min_G max_D L_cGAN(G, D) + lambda L_L1(G)``
    (Isola et al. 2017, Eq. 4, ``lambda = 100``), with the non-saturating form of the GAN term
    (``-E[log D(x, G(x, z))]``, Sec. 3.3). Returns ``{"loss", "adversarial", "l1"}``.
    """
    adversarial = gan_generator_loss_nonsaturating(fake_logits)
    l1 = l1_reconstruction_loss(target, output)
    return {"loss": adversarial + lambda_l1 * l1, "adversarial": adversarial, "l1": l1}


# ----------------------------------------------------------------------------------------------
# DB-VAE (Amini, Soleimany, Schwarting, Bhatia & Rus 2019)


def dbvae_loss(logits: torch.Tensor, targets: torch.Tensor, vae_loss: torch.Tensor,
               vae_mask: torch.Tensor, c1: float = 1.0, c2: float = 1.0) -> torch.Tensor:
    """The debiasing VAE's joint objective (Amini et al. 2019, Sec. 3), averaged over the batch:

    ``L_TOTAL = c1 * L_y(y, y_hat) + c2 * 1[mask] * L_VAE``, with ``L_y`` the binary
    cross-entropy ``-(y log sigmoid(l) + (1 - y) log(1 - sigmoid(l)))`` of the classifier's
    logit ``l`` and ``L_VAE`` the VAE's loss of the image (reconstruction + KL, per image, shape
    ``(B,)``). The paper applies ``L_VAE`` only to the class whose latent structure is learnt
    (faces, ``y = 1``); ``vae_mask`` (``(B,)``, 0/1) says which images it is applied to.
    """
    classification = F.binary_cross_entropy_with_logits(logits.float(), targets.float(),
                                                        reduction="none")
    return (c1 * classification + c2 * vae_mask.float() * vae_loss.float()).mean()
