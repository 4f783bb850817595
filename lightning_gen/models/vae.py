"""Variational autoencoder (Kingma & Welling 2014) and beta-VAE (Higgins et al. 2017)."""

from __future__ import annotations

import math
from typing import Literal

import torch

from lightning_gen.losses import (
    bernoulli_log_likelihood,
    gaussian_kl,
    gaussian_log_likelihood,
    reparameterize,
)
from lightning_gen.models.base import SingleObjectiveModel, check_learning_rates
from lightning_gen.nets.conv import ConvDecoder, ConvEncoder


class VAE(SingleObjectiveModel):
    """Convolutional VAE with a standard normal prior and a diagonal Gaussian posterior.

    Maximises ``E_q[log p(x|z)] - beta * KL(q(z|x) || p(z))``; ``beta = 1`` is the ELBO of the
    VAE, ``beta > 1`` the beta-VAE. The logged ``elbo`` is always the ``beta = 1`` bound, in nats
    per image (for the Bernoulli likelihood on intensities in [0, 1]; for the Gaussian one on
    the data's [-1, 1] scale).

    Args:
        image_shape: ``(C, H, W)`` of the images (linked from the DataModule by the CLI).
        latent_dim: Dimension of ``z``.
        width: Base channel count of encoder and decoder.
        beta: Weight of the KL term (Higgins et al. 2017).
        likelihood: ``"bernoulli"`` (decoder outputs logits of intensities in [0, 1]) or
            ``"gaussian"`` (decoder outputs means, fixed ``gaussian_std``).
        gaussian_std: Standard deviation of the Gaussian likelihood, on the [-1, 1] scale.
        lr: Adam learning rate.
        num_fixed_samples: Size of the fixed prior batch used for sample grids.
        sample_seed: Seed of that batch.
    """

    def __init__(
        self,
        image_shape: tuple[int, int, int] = (1, 28, 28),
        latent_dim: int = 16,
        width: int = 32,
        beta: float = 1.0,
        likelihood: Literal["bernoulli", "gaussian"] = "bernoulli",
        gaussian_std: float = 0.1,
        lr: float = 1e-3,
        num_fixed_samples: int = 64,
        sample_seed: int = 0,
    ) -> None:
        super().__init__()
        if beta < 0:
            raise ValueError(f"beta must be >= 0, got {beta}")
        if gaussian_std <= 0:
            raise ValueError(f"gaussian_std must be > 0, got {gaussian_std}")
        check_learning_rates(lr=lr)
        # Also collects the arguments of subclasses further up the constructor chain (CVAE).
        self.save_hyperparameters()
        self.encoder, self.decoder = self.build_networks()
        noise = torch.randn(
            num_fixed_samples, latent_dim, generator=torch.Generator().manual_seed(sample_seed)
        )
        self.register_buffer("fixed_noise", noise)

    def build_networks(self) -> tuple[ConvEncoder, ConvDecoder]:
        """Encoder ``x -> (mu, logvar)`` and decoder ``z -> logits/means``, from ``hparams``."""
        hp = self.hparams
        return (ConvEncoder(hp.image_shape, 2 * hp.latent_dim, width=hp.width, norm="batch"),
                ConvDecoder(hp.image_shape, hp.latent_dim, width=hp.width, output="none"))

    # ------------------------------------------------------------------------------------------
    # Conditioning hooks (the conditional VAE overrides them; labels are None here)
    def conditioning(self, batch) -> torch.Tensor | None:
        return None

    def fixed_labels(self) -> torch.Tensor | None:
        return None

    def encoder_input(self, x: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        return x

    def decoder_input(self, z: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        return z

    # ------------------------------------------------------------------------------------------
    def encode(
        self, x: torch.Tensor, labels: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior parameters ``(mu, logvar)``, each ``(B, latent_dim)``."""
        mu, logvar = self.encoder(self.encoder_input(x, labels)).chunk(2, dim=1)
        return mu, logvar.clamp(-30.0, 20.0)

    def decode(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Decoder output: Bernoulli logits or Gaussian means, ``(B, C, H, W)``."""
        return self.decoder(self.decoder_input(z, labels))

    def to_image(self, decoded: torch.Tensor) -> torch.Tensor:
        """Decoder output -> image in [-1, 1] (the likelihood's mean)."""
        if self.hparams.likelihood == "bernoulli":
            return torch.sigmoid(decoded) * 2 - 1
        return decoded.clamp(-1, 1)

    def log_likelihood(self, decoded: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``log p(x|z)`` per image, ``(B,)``."""
        if self.hparams.likelihood == "bernoulli":
            return bernoulli_log_likelihood(decoded, (x + 1) / 2)
        return gaussian_log_likelihood(decoded, x, self.hparams.gaussian_std)

    def forward(
        self, x: torch.Tensor, labels: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        mu, logvar = self.encode(x, labels)
        z = reparameterize(mu, logvar)
        decoded = self.decode(z, labels)
        log_px = self.log_likelihood(decoded, x)
        kl = gaussian_kl(mu, logvar)
        return {"mu": mu, "logvar": logvar, "z": z, "decoded": decoded,
                "log_px": log_px, "kl": kl}

    # ------------------------------------------------------------------------------------------
    def _step(self, batch, stage: str) -> torch.Tensor:
        out = self(batch[0], self.conditioning(batch))
        recon, kl = -out["log_px"].mean(), out["kl"].mean()
        loss = recon + self.hparams.beta * kl
        # Averaged over DDP ranks (one collective per step; val/test are reduced at epoch end).
        terms = {"loss": loss, "elbo": -(recon + kl), "reconstruction_nll": recon, "kl": kl}
        terms = {f"{stage}/{k}": v for k, v in terms.items()}
        if stage == "train":
            self.log_terms(terms, losses=[f"{stage}/loss"])
        else:
            self.log_dict(terms, prog_bar=True, sync_dist=True)
        return loss

    # ------------------------------------------------------------------------------------------
    #: Images per decoder call of the IWAE bound: ``chunk * B`` rows, so memory stays flat in
    #: ``k`` (5,000 in Burda et al. 2016) and the decoder still sees large batches.
    iwae_decode_rows: int = 2048

    @torch.no_grad()
    def importance_weighted_bound(
        self, x: torch.Tensor, k: int = 64, labels: torch.Tensor | None = None,
        chunk: int | None = None,
    ) -> torch.Tensor:
        """IWAE bound (Burda et al. 2016) per image, ``(B,)``, in nats:

        ``log p(x) >= log 1/K sum_k w_k``, ``w_k = p(x|z_k) p(z_k) / q(z_k|x)``, ``z_k ~ q(z|x)``.
        ``k = 1`` is the ELBO; the bound tightens as ``k`` grows.

        The ``k`` samples are decoded ``chunk`` at a time (default ``iwae_decode_rows // B``), as
        one ``(chunk * B, ...)`` batch, and ``logsumexp_k log w_k`` is kept as a running
        ``logaddexp`` over chunks: memory is that of one chunk whatever ``k``. ``eps`` is drawn
        one ``(B, latent_dim)`` block per sample, so the bound does not depend on ``chunk``.
        """
        if k < 1:
            raise ValueError(f"k (importance samples) must be >= 1, got {k}")
        batch = x.shape[0]
        chunk = max(1, min(k, chunk or self.iwae_decode_rows // max(batch, 1)))
        mu, logvar = self.encode(x, labels)
        std = torch.exp(0.5 * logvar)
        log_norm = 0.5 * math.log(2 * math.pi) * mu.shape[1]
        total = torch.full((batch,), -math.inf, device=x.device, dtype=torch.float32)
        for start in range(0, k, chunk):
            n = min(chunk, k - start)
            eps = torch.stack([torch.randn_like(mu) for _ in range(n)])  # (n, B, latent)
            z = mu + std * eps
            log_q = -0.5 * eps.pow(2).sum(2) - 0.5 * logvar.sum(1) - log_norm  # (n, B)
            log_p_z = -0.5 * z.pow(2).sum(2) - log_norm
            decoded = self.decode(z.flatten(0, 1),  # (n * B, C, H, W), sample-major
                                  None if labels is None else _repeat(labels, n))
            log_px = self.log_likelihood(decoded, _repeat(x, n)).view(n, batch)
            log_w = (log_px + log_p_z - log_q).float()
            total = torch.logaddexp(total, torch.logsumexp(log_w, dim=0))
        return total - math.log(k)

    @torch.no_grad()
    def sample(self, n: int, labels: torch.Tensor | None = None) -> torch.Tensor:
        z = torch.randn(n, self.hparams.latent_dim, device=self.device)
        return self.to_image(self.decode(z, labels).float())  # float32 for metrics under AMP

    @torch.no_grad()
    def log_images(self, batch) -> dict[str, torch.Tensor]:
        x = batch[0][:32]
        labels = self.conditioning(batch)
        labels = labels[:32] if labels is not None else None
        mu, _ = self.encode(x, labels)
        x_hat = self.to_image(self.decode(mu, labels))
        pairs = torch.stack([x, x_hat], dim=1).flatten(0, 1)  # input / reconstruction
        samples = self.to_image(self.decode(self.fixed_noise, self.fixed_labels()))
        return {"reconstructions": pairs, "samples": samples}

    def grid_layouts(self) -> dict[str, str]:
        return {"reconstructions": "pairs left to right: input, its reconstruction (decoded "
                                   "posterior mean)",
                "samples": "decoded fixed prior draws z ~ N(0, I)" + self._label_layout()}


def _repeat(t: torch.Tensor, n: int) -> torch.Tensor:
    """``(B, ...)`` -> ``(n * B, ...)``: ``n`` copies of the batch, one after the other."""
    return t.expand(n, *t.shape).flatten(0, 1)
