"""Image grids a researcher can look at: logged to W&B / TensorBoard and written as PNGs."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import torch
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from torchvision.utils import make_grid

from lightning_gen.run_record import logging_step
from lightning_gen.runs import atomic_write, run_dir


def image_grid(images: torch.Tensor, nrow: int = 8) -> torch.Tensor:
    """``(B, C, H, W)`` in [-1, 1] -> one ``(3, H', W')`` grid in [0, 1], ``nrow`` per row.

    ``(R, N, C, H, W)``: ``R`` rows of ``N`` whatever ``nrow`` is (rows that belong together,
    e.g. sources / outputs / targets, stay aligned column by column)."""
    if images.dim() == 5:
        nrow, images = images.shape[1], images.flatten(0, 1)
    return make_grid(images.detach().float().cpu(), nrow=nrow, normalize=True,
                     value_range=(-1, 1), pad_value=1.0)


def grid_pixels(grid: torch.Tensor) -> np.ndarray:
    """A [0, 1] ``(C, H, W)`` grid as the ``(H, W, C)`` uint8 pixels of its PNG (``(H, W)`` for
    one channel), rounded as torchvision's ``save_image`` rounds. W&B and TensorBoard get these:
    wandb 0.31 no longer scales float images by 255 (a float grid in [0, 1] is stored as 0/1
    pixels, black)."""
    pixels = grid.detach().cpu().mul(255).add_(0.5).clamp_(0, 255).to(torch.uint8)
    pixels = pixels.permute(1, 2, 0).numpy()
    return pixels[..., 0] if pixels.shape[-1] == 1 else pixels


#: zlib level of the grids' PNGs. Level 1 encodes the suite's grids several times faster than
#: PIL's default 6 at about the same size (an MNIST grid, 242x242: 3.7 ms and 72 KB against
#: 21 ms and 95 KB; 64 samples of 64x64 RGB: 43 ms / 701 KB against 52 ms / 690 KB). PNG is
#: lossless at every level: the pixels are the same.
PNG_COMPRESS_LEVEL = 1


def png_bytes(pixels: np.ndarray, description: str | None = None) -> bytes:
    """``pixels`` (uint8, ``(H, W, C)`` or ``(H, W)``) encoded as one PNG file's bytes, with
    ``description`` (what the grid's rows and columns are) as its ``Description`` text."""
    buffer = io.BytesIO()
    info = None
    if description:
        info = PngInfo()
        info.add_text("Description", description)
    Image.fromarray(pixels).save(buffer, format="png", compress_level=PNG_COMPRESS_LEVEL,
                                 pnginfo=info)
    return buffer.getvalue()


def save_grid(grid: torch.Tensor, path: str | Path) -> Path:
    """Write a [0, 1] grid as PNG, atomically."""
    return save_png(png_bytes(grid_pixels(grid)), path)


def save_png(png: bytes, path: str | Path) -> Path:
    """Write a PNG file's bytes to ``path``, atomically."""
    return atomic_write(path, lambda tmp: write_png(png, tmp))


def write_png(png: bytes, path: str | Path) -> None:
    Path(path).write_bytes(png)


def log_grid(trainer: Trainer, name: str, grid: torch.Tensor, epochs_done: int | None = None,
             layout: str | None = None) -> Path | None:
    """Write ``grid`` to ``<run dir>/images/<name>_epoch<E>.png`` (E: epochs completed,
    default ``trainer.current_epoch``) and ``<name>_last.png`` (atomically) and log the same
    uint8 pixels to W&B / TensorBoard as ``images/<name>`` at the step Lightning logs scalars at
    (:func:`~lightning_gen.run_record.logging_step`, W&B's ``trainer/global_step``; not
    ``trainer.global_step``, which counts a GAN's two optimizer steps per batch). Returns the
    ``_last`` path.

    ``layout`` says what the rows and columns are (``"rows: input, output, target"``): it ends
    the W&B caption (``"after 3 epochs, step 1407 | rows: ..."``) and is the PNG's
    ``Description`` text, so the file says it too.

    The PNG is encoded once: both files hold its bytes, and W&B is given the epoch's file (it
    copies the file into the run's media folder as it is). A ``fast_dev_run`` (Lightning's
    debugging pass, whose loggers are Lightning's dummies) encodes it and writes nothing:
    ``None``."""
    folder = run_dir(trainer) / "images"
    step = logging_step(trainer)
    epochs_done = trainer.current_epoch if epochs_done is None else epochs_done
    last = folder / f"{name}_last.png"
    pixels = grid_pixels(grid)
    png = png_bytes(pixels, layout)
    if getattr(trainer, "fast_dev_run", False):  # (stand-in trainers have none)
        return None
    written = None
    # Images are not worth a run: a write that fails (a full disk) is one line on stderr, the
    # earlier PNGs stay as they were (atomic writes), and training goes on.
    try:
        written = save_png(png, folder / f"{name}_epoch{epochs_done:04d}.png")
        save_png(png, last)
    except OSError as err:
        _warn_not_written(f"image grid {name} at step {step}", folder, err, last)
    for logger in trainer.loggers:
        try:
            if isinstance(logger, WandbLogger):
                image = str(written) if written is not None else pixels
                logger.log_image(key=f"images/{name}", images=[image], step=step,
                                 caption=[f"after {epochs_done} epochs, step {step}"
                                          + (f" | {layout}" if layout else "")])
            elif isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image(f"images/{name}", pixels, step,
                                            dataformats="HWC" if pixels.ndim == 3 else "HW")
        except OSError as err:
            _warn_not_written(f"image grid {name} at step {step} for {type(logger).__name__}",
                              folder, err, last)
    return last


def _warn_not_written(what: str, folder: Path, err: OSError, last: Path) -> None:
    kept = f"{last} is the last one written" if last.is_file() else "none was written before"
    print(f"lightning-gen: warning: could not write the {what} to {folder} "
          f"({err.strerror or err}); {kept}; training goes on", file=sys.stderr, flush=True)


class ImageGridCallback(Callback):
    """Every ``every_n_epochs`` epochs (and at the end of fitting) ask the model for its named
    image batches (``log_images``: GAN samples from the fixed noise, autoencoder inputs next to
    reconstructions, ...), log each as a grid with an explicit step, and write it to
    ``<run dir>/images/<name>_epoch<E>.png`` (E: epochs completed) and ``<name>_last.png``.

    Args:
        every_n_epochs: Interval in epochs (0: only at the end of fitting).
        nrow: Images per row of the grid.
    """

    def __init__(self, every_n_epochs: int = 1, nrow: int = 8) -> None:
        self.every_n_epochs = every_n_epochs
        self.nrow = nrow
        self.batch = None
        self.last_logged_step = -1

    # A fixed batch of real images for reconstructions: the first validation batch if there is
    # one (not shuffled, so the same images every epoch), else the first training batch.
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if self.batch is None:
            self.batch = _head(batch)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        if batch_idx == 0 and dataloader_idx == 0 and not getattr(self, "_from_val", False):
            self.batch, self._from_val = _head(batch), True

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        n = self.every_n_epochs
        if n > 0 and (trainer.current_epoch + 1) % n == 0:
            self.log_grids(trainer, pl_module, epochs_done=trainer.current_epoch + 1)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.global_step != self.last_logged_step:
            self.log_grids(trainer, pl_module, epochs_done=trainer.current_epoch)

    @rank_zero_only
    def log_grids(self, trainer: Trainer, pl_module: LightningModule, epochs_done: int) -> None:
        if self.batch is None and not hasattr(pl_module, "fixed_noise"):
            return
        was_training = pl_module.training
        pl_module.eval()
        try:
            batch = _to(self.batch, pl_module.device)
            named = pl_module.log_images(batch)
        finally:
            pl_module.train(was_training)
        layouts = pl_module.grid_layouts() if hasattr(pl_module, "grid_layouts") else {}
        for name, images in named.items():
            grid = image_grid(images, self.nrow)
            log_grid(trainer, name, grid, epochs_done, layouts.get(name))
        self.last_logged_step = trainer.global_step


def _head(batch, n: int = 64):
    if isinstance(batch, (list, tuple)):
        return type(batch)(_head(b, n) for b in batch)
    if isinstance(batch, torch.Tensor):
        return batch[:n].detach().clone()
    return batch


def _to(batch, device):
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to(b, device) for b in batch)
    return batch.to(device) if isinstance(batch, torch.Tensor) else batch
