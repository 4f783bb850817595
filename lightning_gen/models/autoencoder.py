"""Deterministic convolutional autoencoder with an MSE reconstruction loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lightning_gen.models.base import SingleObjectiveModel, check_learning_rates
from lightning_gen.nets.conv import ConvDecoder, ConvEncoder


class Autoencoder(SingleObjectiveModel):
    """``x -> z = enc(x) -> x_hat = dec(z)``, trained on ``||x - x_hat||^2``.

    Args:
        image_shape: ``(C, H, W)`` of the images (linked from the DataModule by the CLI).
        latent_dim: Size of the bottleneck ``z``.
        width: Base channel count of encoder and decoder.
        lr: Adam learning rate.
    """

    def __init__(
        self,
        image_shape: tuple[int, int, int] = (1, 28, 28),
        latent_dim: int = 32,
        width: int = 32,
        lr: float = 1e-3,
    ) -> None:
        super().__init__()
        check_learning_rates(lr=lr)
        self.save_hyperparameters()
        self.encoder = ConvEncoder(image_shape, latent_dim, width=width, norm="batch")
        self.decoder = ConvDecoder(image_shape, latent_dim, width=width, output="tanh")

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)  # (B, latent_dim)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)  # (B, C, H, W) in [-1, 1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    def reconstruction_error(self, x: torch.Tensor) -> torch.Tensor:
        """Per-image mean squared error, shape ``(B,)`` (an outlier score)."""
        return (self(x) - x).pow(2).flatten(1).mean(dim=1)

    def _step(self, batch, stage: str) -> torch.Tensor:
        x = batch[0]
        loss = F.mse_loss(self(x), x)
        if stage == "train":  # averaged over DDP ranks every step
            self.log_terms({"train/loss": loss})
        else:
            self.log(f"{stage}/loss", loss, prog_bar=True, sync_dist=True)
        return loss

    # No sample(): a plain autoencoder has no prior to sample from (use the VAE), so
    # `lightning-gen evaluate/sample` reject its checkpoints before any work.

    @torch.no_grad()
    def log_images(self, batch) -> dict[str, torch.Tensor]:
        x = batch[0][:32]
        x_hat = self(x).clamp(-1, 1)
        # Rows alternate input / reconstruction: (2B, C, H, W).
        pairs = torch.stack([x, x_hat], dim=1).flatten(0, 1)
        return {"reconstructions": pairs}

    def grid_layouts(self) -> dict[str, str]:
        return {"reconstructions": "pairs left to right: input, its reconstruction"}
