"""What the lectures show about latent-variable models, as callbacks: interpolation, traversal,
attribute arithmetic (GANs and VAEs), and outlier detection by reconstruction error.

Each writes PNG grids into ``<run dir>/images/`` and logs them (and any metric) to W&B with the
trainer's step, every ``every_n_epochs`` epochs and at the end of fitting, on rank 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_only

from lightning_gen.callbacks.images import image_grid, log_grid
from lightning_gen.models.gan_base import GANBase
from lightning_gen.models.vae import VAE
from lightning_gen.run_record import logging_step


def latent_decoder(model: LightningModule, row_length: int = 1,
                   ) -> tuple[Callable[[torch.Tensor], torch.Tensor], int]:
    """``(decode, latent_dim)`` with ``decode(z) -> images in [-1, 1]`` for a GAN (the
    generator) or a VAE (the decoder's mean). A conditional model gets its default labels, one
    per row of ``row_length`` images, so that a row varies only the latent, not the class."""
    def labels_for(n: int) -> torch.Tensor | None:
        if not hasattr(model, "default_labels"):
            return None
        labels = model.default_labels(-(-n // row_length))
        return None if labels is None else labels.repeat_interleave(row_length, dim=0)[:n]

    if isinstance(model, VAE):
        def decode(z):
            return model.to_image(model.decode(z, labels_for(z.shape[0])))
        return decode, model.hparams.latent_dim
    if isinstance(model, GANBase):
        return (lambda z: model.generate(z, labels_for(z.shape[0])).clamp(-1, 1),
                model.hparams.latent_dim)
    raise TypeError(f"{type(model).__name__} has no latent space to explore; use a GAN or a VAE")


def slerp(z0: torch.Tensor, z1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation (White 2016): along the great circle between ``z0`` and ``z1``,
    which keeps the norm typical of a Gaussian prior; ``t`` of shape ``(T,)``, out ``(T, d)``."""
    omega = torch.acos((z0 / z0.norm() * z1 / z1.norm()).sum().clamp(-1 + 1e-7, 1 - 1e-7))
    t = t[:, None]
    return (torch.sin((1 - t) * omega) * z0 + torch.sin(t * omega) * z1) / torch.sin(omega)


def lerp(z0: torch.Tensor, z1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Straight line ``(1 - t) z0 + t z1``; ``t`` of shape ``(T,)``, out ``(T, d)``."""
    return (1 - t)[:, None] * z0 + t[:, None] * z1


class _PeriodicCallback(Callback):
    """Calls ``self.run(trainer, model)`` in eval mode without gradients every
    ``every_n_epochs`` epochs (0: only at the end of fitting) and at the end of fitting.

    ``run`` writes its grids with :meth:`log_grid`, which names them by the epochs completed
    (``<name>_epoch0001.png`` after the first epoch), as the ImageGridCallback does."""

    def __init__(self, every_n_epochs: int = 1) -> None:
        self.every_n_epochs = every_n_epochs
        self._last_step = -1
        self.epochs_done: int | None = None  # None: log_grid's default, trainer.current_epoch

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        n = self.every_n_epochs
        if n > 0 and (trainer.current_epoch + 1) % n == 0:
            self._run(trainer, pl_module, epochs_done=trainer.current_epoch + 1)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.global_step != self._last_step:
            self._run(trainer, pl_module, epochs_done=trainer.current_epoch)

    @rank_zero_only
    def _run(self, trainer: Trainer, pl_module: LightningModule, epochs_done: int) -> None:
        was_training = pl_module.training
        pl_module.eval()
        self.epochs_done = epochs_done
        try:
            with torch.no_grad():
                self.run(trainer, pl_module)
        finally:
            pl_module.train(was_training)
        self._last_step = trainer.global_step

    def run(self, trainer: Trainer, pl_module: LightningModule) -> None:
        raise NotImplementedError

    def log_grid(self, trainer: Trainer, name: str, grid: torch.Tensor,
                 layout: str | None = None) -> None:
        """:func:`~lightning_gen.callbacks.images.log_grid`, numbered by the epochs done;
        ``layout`` says what the rows and columns are (W&B caption, PNG description)."""
        log_grid(trainer, name, grid, self.epochs_done, layout)


class LatentInterpolationCallback(_PeriodicCallback):
    """Rows of images decoded along the path between two prior samples ``z0 -> z1``.

    Args:
        num_pairs: Rows (pairs of endpoints).
        num_steps: Images per row, endpoints included.
        mode: ``"linear"`` or ``"slerp"``.
        seed: Seed of the endpoints (the same pairs every time).
        every_n_epochs: Interval in epochs (0: only at the end of fitting).
    """

    def __init__(self, num_pairs: int = 8, num_steps: int = 10, mode: str = "slerp",
                 seed: int = 0, every_n_epochs: int = 1) -> None:
        super().__init__(every_n_epochs)
        if mode not in ("linear", "slerp"):
            raise ValueError(f"mode must be 'linear' or 'slerp', got {mode!r}")
        self.num_pairs, self.num_steps, self.mode, self.seed = num_pairs, num_steps, mode, seed

    def paths(self, latent_dim: int) -> torch.Tensor:
        """``(num_pairs * num_steps, latent_dim)`` latents, row by row."""
        g = torch.Generator().manual_seed(self.seed)
        ends = torch.randn(self.num_pairs, 2, latent_dim, generator=g)
        t = torch.linspace(0, 1, self.num_steps)
        path = slerp if self.mode == "slerp" else lerp
        return torch.cat([path(z0, z1, t) for z0, z1 in ends])

    def run(self, trainer, pl_module):
        decode, latent_dim = latent_decoder(pl_module, row_length=self.num_steps)
        images = decode(self.paths(latent_dim).to(pl_module.device))
        self.log_grid(trainer, "latent_interpolation", image_grid(images, self.num_steps),
                      f"row r: decoded along the {self.mode} path between two fixed prior draws "
                      f"z0 -> z1, {self.num_steps} steps")


class LatentTraversalCallback(_PeriodicCallback):
    """One row per latent dimension: that dimension swept over ``[-span, span]``, the others
    fixed at a base code (the posterior mean of a real image for a VAE, a prior sample for a
    GAN): what beta-VAE's disentanglement figures show. For a VAE the rows are the dimensions
    with the largest average KL on that image batch (the ones in use), unless ``dims`` is given.

    Args:
        num_dims: Rows (dimensions shown).
        dims: Explicit dimensions to show (overrides ``num_dims``).
        num_steps: Images per row.
        span: Sweep ``[-span, span]`` (in prior standard deviations).
        seed: Seed of the GAN's base code.
        every_n_epochs: Interval in epochs (0: only at the end of fitting).
    """

    def __init__(self, num_dims: int = 10, dims: list[int] | None = None, num_steps: int = 9,
                 span: float = 3.0, seed: int = 0, every_n_epochs: int = 1) -> None:
        super().__init__(every_n_epochs)
        self.num_dims, self.dims, self.num_steps, self.span, self.seed = (
            num_dims, dims, num_steps, span, seed)
        self.batch = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.batch is None and isinstance(batch, (list, tuple)):
            self.batch = [b[:64].detach().clone() if torch.is_tensor(b) else b for b in batch]

    def base_and_dims(self, pl_module, latent_dim: int) -> tuple[torch.Tensor, list[int]]:
        if isinstance(pl_module, VAE) and self.batch is not None:
            x = self.batch[0].to(pl_module.device)
            labels = pl_module.conditioning([x, *self.batch[1:]]) if len(self.batch) > 1 else None
            labels = labels.to(pl_module.device) if labels is not None else None
            mu, logvar = pl_module.encode(x, labels)
            kl = (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp())).mean(0)  # (latent_dim,)
            dims = self.dims or kl.argsort(descending=True)[: self.num_dims].tolist()
            return mu[0], dims
        g = torch.Generator().manual_seed(self.seed)
        dims = self.dims or list(range(min(self.num_dims, latent_dim)))
        return torch.randn(latent_dim, generator=g).to(pl_module.device), dims

    def codes(self, base: torch.Tensor, dims: list[int]) -> torch.Tensor:
        """``(len(dims) * num_steps, d)``: row ``r`` sweeps dimension ``dims[r]``."""
        values = torch.linspace(-self.span, self.span, self.num_steps, device=base.device)
        z = base.repeat(len(dims), self.num_steps, 1)  # (rows, steps, d)
        for r, d in enumerate(dims):
            z[r, :, d] = values
        return z.flatten(0, 1)

    def run(self, trainer, pl_module):
        decode, latent_dim = latent_decoder(pl_module, row_length=self.num_steps)
        base, dims = self.base_and_dims(pl_module, latent_dim)
        grid = image_grid(decode(self.codes(base, dims)), self.num_steps)
        base_is = ("the posterior mean of a training image" if isinstance(pl_module, VAE)
                   and self.batch is not None else "a fixed prior draw")
        self.log_grid(trainer, "latent_traversal", grid,
                      f"row r: latent dimension dims[r] swept from {-self.span:g} to "
                      f"{self.span:g} in {self.num_steps} steps, the others at {base_is}; "
                      f"dims = {list(dims)}")


class LatentArithmeticCallback(_PeriodicCallback):
    """Attribute vectors in a VAE's latent space (the "smile vector", White 2016; Larsen et al.
    2016): ``v = mean mu(x | attribute) - mean mu(x | no attribute)`` over validation (or
    training) images with CelebA's 0/1 attribute targets, then one row per face: the face
    itself, then ``decode(mu(x) + a v)`` for ``a`` in ``alphas`` (more and more of the
    attribute; ``a = 0`` its reconstruction).

    Args:
        attribute: CelebA attribute name (``"Smiling"``).
        num_images: Images averaged for the two means.
        num_faces: Rows.
        alphas: Multiples of ``v`` added to each face's code (0 reconstructs it).
        every_n_epochs: Interval in epochs (0: only at the end of fitting).
    """

    def __init__(self, attribute: str = "Smiling", num_images: int = 1000, num_faces: int = 8,
                 alphas: list[float] | None = None, every_n_epochs: int = 1) -> None:
        super().__init__(every_n_epochs)
        self.attribute, self.num_images, self.num_faces = attribute, num_images, num_faces
        self.alphas = alphas if alphas is not None else [-1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0]
        self.vector: torch.Tensor | None = None

    # Refused before training, not with an IndexError after the first epoch: the CLI calls
    # check_datamodule before the run folder exists; setup covers the Python API.
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "fit":
            self.check_datamodule(trainer.datamodule)

    def check_datamodule(self, datamodule) -> None:
        """Raise a ``ValueError`` unless ``datamodule`` yields attribute vectors (CelebA's)."""
        kind = getattr(datamodule, "label_kind", None)
        if kind != "attributes":
            data = "there is no DataModule" if datamodule is None else (
                f"{type(datamodule).__name__} has {kind or 'no'} labels")
            raise ValueError("LatentArithmeticCallback needs attribute labels (CelebA's 40 "
                             f"attributes: datamodules.CelebADataModule), but {data}")

    def attribute_vector(self, pl_module, batches):
        """``(v, faces, their labels)`` from an iterable of ``(x, attributes)`` batches."""
        from datamodules.celeba import ATTRIBUTES

        index = ATTRIBUTES.index(self.attribute)
        sums, counts, faces, seen = {}, {True: 0, False: 0}, [], 0
        for x, attrs in batches:
            x, attrs = x.to(pl_module.device), attrs.to(pl_module.device)
            labels = pl_module.conditioning((x, attrs))  # None for an unconditional VAE
            mu, _ = pl_module.encode(x, labels)
            has = attrs[:, index].bool()
            for flag, rows in ((True, has), (False, ~has)):
                sums[flag] = sums.get(flag, 0) + mu[rows].sum(0)
                counts[flag] += int(rows.sum())
            faces.append((x, labels))
            seen += x.shape[0]
            if seen >= self.num_images:
                break
        if counts[True] == 0 or counts[False] == 0:
            raise ValueError(f"need images with and without {self.attribute} to form its vector")
        v = sums[True] / counts[True] - sums[False] / counts[False]
        x = torch.cat([f[0] for f in faces])[: self.num_faces]
        labels = None if faces[0][1] is None else torch.cat([f[1] for f in faces])[: len(x)]
        return v, x, labels

    def run(self, trainer, pl_module):
        if not isinstance(pl_module, VAE):
            raise TypeError("latent arithmetic needs an encoder: use a VAE")
        dm = trainer.datamodule
        use_val = dm.val_set is not None and len(dm.val_set) > 0
        loader = dm.val_dataloader() if use_val else dm.train_dataloader()
        v, faces, labels = self.attribute_vector(pl_module, loader)
        self.vector = v
        mu, _ = pl_module.encode(faces, labels)
        alphas = torch.tensor(self.alphas, device=mu.device)
        z = (mu[:, None, :] + alphas[None, :, None] * v).flatten(0, 1)  # (faces * alphas, d)
        if labels is not None:
            labels = labels.repeat_interleave(len(self.alphas), dim=0)
        images = pl_module.to_image(pl_module.decode(z, labels))
        rows = torch.cat([faces[:, None].float(), images.view(len(faces), len(self.alphas),
                                                               *images.shape[1:])], dim=1)
        self.log_grid(trainer, f"latent_arithmetic_{self.attribute}", image_grid(rows),
                      f"row r: face r, then decode(mu + alpha * v) with v the {self.attribute} "
                      f"vector, alpha = {', '.join(f'{a:g}' for a in self.alphas)} (alpha 0: "
                      "its reconstruction)")


class OutlierAUROCCallback(_PeriodicCallback):
    """Autoencoder outlier detection: score each test image by its reconstruction error
    (``reconstruction_error`` of the Autoencoder; the negative ELBO for a VAE) and report the
    AUROC of telling the held-out class (absent from training) from the others, as
    ``outlier/auroc``; the ``num_show`` highest-scoring test images are written as a grid.

    Args:
        outlier_class: The class held out of training (the positive class).
        max_batches: Test batches scored (0: all).
        num_show: Images in the grid of the highest scores.
        every_n_epochs: Interval in epochs (0: only at the end of fitting).
    """

    def __init__(self, outlier_class: int = 0, max_batches: int = 0, num_show: int = 32,
                 every_n_epochs: int = 1) -> None:
        super().__init__(every_n_epochs)
        self.outlier_class, self.max_batches, self.num_show = outlier_class, max_batches, num_show
        self.auroc: float | None = None

    @staticmethod
    def score(pl_module, x: torch.Tensor) -> torch.Tensor:
        if hasattr(pl_module, "reconstruction_error"):
            return pl_module.reconstruction_error(x)
        if isinstance(pl_module, VAE):
            out = pl_module(x)
            return out["kl"] - out["log_px"]  # negative ELBO per image
        raise TypeError(f"{type(pl_module).__name__} gives no reconstruction error")

    def run(self, trainer, pl_module):
        dm = trainer.datamodule
        if dm.test_set is None:
            dm.setup("test")
        scores, targets, images = [], [], []
        for i, (x, y) in enumerate(dm.test_dataloader()):
            if self.max_batches and i >= self.max_batches:
                break
            x = x.to(pl_module.device)
            scores.append(self.score(pl_module, x).float().cpu())
            targets.append((y == self.outlier_class).long())
            images.append(x.cpu())
        scores, targets = torch.cat(scores), torch.cat(targets)
        if targets.sum() == 0 or targets.sum() == len(targets):
            raise ValueError(f"the test images need both class {self.outlier_class} and others")
        # scikit-learn's, from the scores' order. (torchmetrics' binary_auroc reads scores
        # outside [0, 1] as logits and applies a sigmoid, which in float32 turns a VAE's
        # negative ELBOs, tens to hundreds of nats, into 1.0 all alike: an AUROC of 0.5.)
        from sklearn.metrics import roc_auc_score

        self.auroc = float(roc_auc_score(targets.numpy(), scores.double().numpy()))
        for logger in trainer.loggers:
            logger.log_metrics({"outlier/auroc": self.auroc}, step=logging_step(trainer))
        top = scores.argsort(descending=True)[: self.num_show]
        held_out = [i + 1 for i, t in enumerate(targets[top].tolist()) if t]
        self.log_grid(trainer, "outliers_highest_error",
                      image_grid(torch.cat(images)[top], grid_columns(len(top))),
                      f"the {len(top)} test images of highest outlier score, highest first, row "
                      f"by row; {len(held_out)} of them of the held-out class "
                      f"{self.outlier_class} (positions {_ranges(held_out)}); outlier/auroc "
                      f"{self.auroc:.3f}")


def grid_columns(n: int) -> int:
    """Images per row for a grid of ``n``: the smallest divisor of ``n`` from ``ceil(sqrt(n))`` up
    to twice that, so every row is full (32 -> 8 x 4, not 5 per row and a last row of 2);
    ``ceil(sqrt(n))`` where there is none (a prime ``n``)."""
    side = math.isqrt(n - 1) + 1 if n > 0 else 1
    return next((d for d in range(side, 2 * side + 1) if n % d == 0), side)


def _ranges(positions: list[int]) -> str:
    """``[1, 2, 3, 5, 7, 8]`` -> ``"1-3, 5, 7-8"``."""
    runs: list[list[int]] = []
    for p in positions:
        if runs and p == runs[-1][1] + 1:
            runs[-1][1] = p
        else:
            runs.append([p, p])
    return ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in runs) or "none"


class CompletionCallback(_PeriodicCallback):
    """Image completion on *test* images (PixelCNN, van den Oord et al. 2016a, Fig. 1): one row
    per image, its columns aligned: the original, what the model is given (the upper half, the
    hidden lower half mid-grey), then ``num_completions`` samples of the lower half given the
    upper half, from the model's ``complete(x, labels)``.

    Args:
        num_images: Test images completed (rows).
        num_completions: Independent completions per image.
        every_n_epochs: Interval in epochs (0: only at the end of fitting).
    """

    def __init__(self, num_images: int = 8, num_completions: int = 3,
                 every_n_epochs: int = 1) -> None:
        super().__init__(every_n_epochs)
        self.num_images, self.num_completions = num_images, num_completions

    def run(self, trainer, pl_module):
        if not hasattr(pl_module, "complete"):
            raise TypeError(f"{type(pl_module).__name__} cannot complete images (no complete())")
        dm = trainer.datamodule
        if dm.test_set is None:
            dm.setup("test")
        x, y = next(iter(dm.test_dataloader()))
        x = x[: self.num_images].to(pl_module.device)
        labels = pl_module.conditioning((x, y[: self.num_images].to(pl_module.device)))
        given = x.clone()  # for display only: complete() is given x and sees its upper half
        given[:, :, x.shape[2] // 2:] = 0.0  # mid-grey, unlike MNIST's black background
        columns = [x, given] + [pl_module.complete(x, labels)
                                for _ in range(self.num_completions)]
        images = torch.stack(columns, 1)  # (rows: images, columns, C, H, W)
        self.log_grid(trainer, "completions_test", image_grid(images),
                      "row r: test image r; columns: the original, the given upper half (the "
                      f"hidden half grey), {self.num_completions} completions")
