"""StyleGAN2's figures as callbacks: the style-mixing grid (Karras et al. 2019, Fig. 3) and a
truncation sweep (Karras et al. 2019, Fig. 8). Both use the averaged generator (EMA) when the
model keeps one, write PNGs into ``<run dir>/images/`` and log the same uint8 pixels to W&B /
TensorBoard (:func:`~lightning_gen.callbacks.images.log_grid`), every ``every_n_epochs`` epochs
and at the end of fitting, on rank 0."""

from __future__ import annotations

import torch

from lightning_gen.callbacks.images import image_grid
from lightning_gen.callbacks.latent import _PeriodicCallback


def _check(pl_module) -> None:
    if not (hasattr(pl_module, "generator") and hasattr(pl_module.generator, "ws")):
        raise TypeError(f"{type(pl_module).__name__} has no style generator; use StyleGAN2")


def style_mixing_images(pl_module, num_rows: int, num_cols: int, cutoff: int, seed: int,
                        truncation: float) -> torch.Tensor:
    """``(num_rows + 1) * (num_cols + 1)`` images: a blank corner, the column sources on top,
    the row sources on the left, and at ``(r, c)`` row ``r``'s styles for layers ``< cutoff``
    (coarse) with column ``c``'s from ``cutoff`` on (finer). The noise inputs are off so that a
    cell differs from its sources only by the styles."""
    _check(pl_module)
    g = torch.Generator().manual_seed(seed)
    latent_dim = pl_module.hparams.latent_dim
    z = torch.randn(num_rows + num_cols, latent_dim, generator=g).to(pl_module.device)
    with pl_module.averaged_generator():
        gen = pl_module.generator
        ws = gen.ws(z, truncation=truncation)  # (R + C, num_ws, w_dim)
        rows, cols = ws[:num_rows], ws[num_rows:]
        mixed = rows[:, None].repeat(1, num_cols, 1, 1)  # (R, C, num_ws, w_dim)
        mixed[:, :, cutoff:] = cols[None, :, cutoff:]
        images = gen.synthesis(torch.cat([ws, mixed.flatten(0, 1)]), noise=False)
    images = images.float().clamp(-1, 1)
    sources_r, sources_c = images[:num_rows], images[num_rows:num_rows + num_cols]
    cells = images[num_rows + num_cols:].view(num_rows, num_cols, *images.shape[1:])
    blank = torch.ones_like(images[:1])  # white
    top = torch.cat([blank, sources_c])  # (C + 1, ...)
    body = torch.cat([sources_r[:, None], cells], dim=1)  # (R, C + 1, ...)
    return torch.cat([top, body.flatten(0, 1)])


def truncation_images(pl_module, num_rows: int, psis: list[float], seed: int) -> torch.Tensor:
    """``num_rows * len(psis)`` images: row ``r`` is one latent at each ``psi`` (noise off); the
    ``psi = 0`` column is the image of the mean ``w`` in every row."""
    _check(pl_module)
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(num_rows, pl_module.hparams.latent_dim, generator=g).to(pl_module.device)
    with pl_module.averaged_generator():
        gen = pl_module.generator
        ws = torch.stack([gen.ws(z, truncation=psi) for psi in psis], dim=1)  # (R, P, L, D)
        images = gen.synthesis(ws.flatten(0, 1), noise=False)
    return images.float().clamp(-1, 1)


class StyleMixingGridCallback(_PeriodicCallback):
    """Style-mixing grid ``style_mixing.png``: coarse styles (layers ``< cutoff``) from the
    row sources, the rest from the column sources.

    Args:
        num_rows, num_cols: Sources on the left and on top.
        cutoff: First style layer taken from the column source (2 ~ the paper's "coarse
            styles from source B" at 4x4-8x8).
        truncation: ``psi`` of every source.
        seed: Seed of the sources (the same every time).
        every_n_epochs: Interval in epochs (0: only at the end of fitting).
    """

    def __init__(self, num_rows: int = 4, num_cols: int = 6, cutoff: int = 2,
                 truncation: float = 1.0, seed: int = 0, every_n_epochs: int = 1) -> None:
        super().__init__(every_n_epochs)
        if num_rows < 1 or num_cols < 1 or cutoff < 1:
            raise ValueError("num_rows, num_cols and cutoff must be >= 1")
        self.num_rows, self.num_cols, self.cutoff = num_rows, num_cols, cutoff
        self.truncation, self.seed = truncation, seed

    def run(self, trainer, pl_module):
        images = style_mixing_images(pl_module, self.num_rows, self.num_cols, self.cutoff,
                                     self.seed, self.truncation)
        self.log_grid(trainer, "style_mixing", image_grid(images, self.num_cols + 1),
                      f"top row: column sources; left column: row sources; cell (r, c): row "
                      f"r's styles for layers < {self.cutoff} (coarse), column c's from layer "
                      f"{self.cutoff} on; truncation psi {self.truncation:g}, noise off")


class TruncationGridCallback(_PeriodicCallback):
    """Truncation sweep ``truncation.png``: rows of latents, columns of ``psi``.

    Args:
        num_rows: Latents (rows).
        psis: Truncation values (columns).
        seed: Seed of the latents.
        every_n_epochs: Interval in epochs (0: only at the end of fitting).
    """

    def __init__(self, num_rows: int = 6, psis: list[float] | None = None, seed: int = 0,
                 every_n_epochs: int = 1) -> None:
        super().__init__(every_n_epochs)
        self.num_rows, self.seed = num_rows, seed
        self.psis = psis if psis is not None else [1.0, 0.7, 0.5, 0.0, -0.5, -1.0]

    def run(self, trainer, pl_module):
        images = truncation_images(pl_module, self.num_rows, self.psis, self.seed)
        self.log_grid(trainer, "truncation", image_grid(images, len(self.psis)),
                      "row r: latent r; columns: truncation psi = "
                      f"{', '.join(f'{p:g}' for p in self.psis)} (psi 0: the mean w), noise off")
