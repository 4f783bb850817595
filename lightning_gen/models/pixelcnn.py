"""PixelCNN (van den Oord et al. 2016a) and the gated, class-conditional PixelCNN (2016b)."""

from __future__ import annotations

import math
from typing import Literal

import torch
from tqdm.auto import tqdm

from lightning_gen.losses import categorical_nll, discretize
from lightning_gen.models.base import SingleObjectiveModel, check_learning_rates
from lightning_gen.models.conditional import ConditionalMixin
from lightning_gen.nets.pixelcnn import GatedPixelCNNNet, PixelCNNNet


class PixelCNN(ConditionalMixin, SingleObjectiveModel):
    """Autoregressive image model ``p(x) = prod_i p(x_i | x_<i)`` with a ``num_levels``-way
    softmax per sub-pixel, trained by maximum likelihood.

    Logged: the NLL in bits per dimension (``nll / (C H W ln 2)``, the papers' CIFAR-10 metric)
    and in nats per image (the MNIST metric). ``sample`` draws pixel by pixel (``C H W``
    network evaluations); ``complete`` fills in the lower half of given images.

    Args:
        image_shape: ``(C, H, W)`` (linked from the DataModule by the CLI).
        architecture: ``"pixelcnn"`` (masked convolutions with residual blocks, 2016a) or
            ``"gated"`` (gated vertical/horizontal stacks, 2016b).
        hidden: Channels of the residual stream / of each stack.
        n_layers: Residual or gated blocks.
        kernel_size: Kernel of the masked convolutions after the first (7x7) layer.
        num_levels: Intensity levels per sub-pixel (256 for 8-bit images).
        num_classes: Conditioning classes (10) or attributes (40 for CelebA); 0: unconditional.
        condition_on: ``"class"`` (integer labels) or ``"attributes"`` (0/1 vectors).
        lr: Adam learning rate.
        num_fixed_samples: Images in the sample / completion grids (0: no grids).
    """

    def __init__(
        self,
        image_shape: tuple[int, int, int] = (1, 28, 28),
        architecture: Literal["pixelcnn", "gated"] = "pixelcnn",
        hidden: int = 64,
        n_layers: int = 7,
        kernel_size: int = 3,
        num_levels: int = 256,
        num_classes: int = 0,
        condition_on: Literal["class", "attributes"] = "class",
        lr: float = 1e-3,
        num_fixed_samples: int = 16,
    ) -> None:
        super().__init__()
        if num_levels < 2:
            raise ValueError(f"num_levels must be >= 2, got {num_levels}")
        check_learning_rates(lr=lr)
        self.save_hyperparameters()
        net = GatedPixelCNNNet if architecture == "gated" else PixelCNNNet
        self.net = net(image_shape[0], hidden=hidden, n_layers=n_layers, kernel_size=kernel_size,
                       num_levels=num_levels, num_classes=num_classes)
        self._init_conditioning(max(num_fixed_samples, 1))

    # ------------------------------------------------------------------------------------------
    def quantize(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images in [-1, 1] -> ``(levels, network input)``: the input is the image snapped to
        the levels, so training and sampling see the same values."""
        levels = discretize(x, self.hparams.num_levels)
        return levels, self._to_image(levels)

    def _to_image(self, levels: torch.Tensor) -> torch.Tensor:
        return levels.float() / (self.hparams.num_levels - 1) * 2 - 1

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``(B, L, C, H, W)``."""
        return self.net(x, labels)

    def nll(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """``-log p(x)`` per image in nats, ``(B,)``."""
        levels, inputs = self.quantize(x)
        return categorical_nll(self(inputs, labels), levels)

    def _step(self, batch, stage: str) -> torch.Tensor:
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        nats = self.nll(x, self.conditioning(batch)).mean()
        bits_per_dim = nats / (x[0].numel() * math.log(2))
        terms = {f"{stage}/nll_bits_per_dim": bits_per_dim,
                 f"{stage}/nll_nats_per_image": nats, f"{stage}/loss": bits_per_dim}
        if stage == "train":  # averaged over DDP ranks, one collective per step
            self.log_terms(terms, losses=[f"{stage}/loss"])
        else:
            self.log_dict(terms, prog_bar=True, sync_dist=True)
        return bits_per_dim  # the loss: same optimum as nats, a scale independent of image size

    # ------------------------------------------------------------------------------------------
    #: Fills of at least this many network passes show a progress bar.
    progress_min_passes: int = 1024

    @torch.no_grad()
    def _fill(self, x: torch.Tensor, labels: torch.Tensor | None, start_row: int,
              temperature: float = 1.0) -> torch.Tensor:
        """Sample every sub-pixel from row ``start_row`` on, in raster and channel order."""
        x = x.clone()
        _, channels, height, width = x.shape
        positions = [(row, col, c) for row in range(start_row, height) for col in range(width)
                     for c in range(channels)]
        # One network pass per sub-pixel (3,072 for a CIFAR-10 image): minutes on a CPU, so
        # show progress on long fills, on rank 0, unless the run's progress bar is off.
        trainer = self._trainer
        quiet = (len(positions) < self.progress_min_passes or self.global_rank != 0
                 or (trainer is not None and trainer.progress_bar_callback is None))
        for row, col, c in tqdm(positions, desc="PixelCNN sampling", unit="pass", leave=False,
                                disable=quiet):
            logits = self(x, labels)[:, :, c, row, col] / temperature  # (B, L)
            level = torch.multinomial(torch.softmax(logits.float(), dim=1), 1)[:, 0]
            x[:, c, row, col] = self._to_image(level)
        return x

    @torch.no_grad()
    def sample(self, n: int, labels: torch.Tensor | None = None) -> torch.Tensor:
        if labels is None:
            labels = self.default_labels(n)
        was_training = self.training
        self.eval()
        try:
            x = torch.zeros(n, *self.hparams.image_shape, device=self.device)
            return self._fill(x, labels, start_row=0)
        finally:
            self.train(was_training)

    @torch.no_grad()
    def complete(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Keep the upper half of each image and sample the lower half (2016a, Fig. 1)."""
        was_training = self.training
        self.eval()
        try:
            _, inputs = self.quantize(x)
            return self._fill(inputs, labels, start_row=x.shape[2] // 2)
        finally:
            self.train(was_training)

    @torch.no_grad()
    def log_images(self, batch) -> dict[str, torch.Tensor]:
        """``samples``: ``num_fixed_samples`` samples. ``completions`` (given a batch): three
        aligned rows ``(3, n, C, H, W)``, column ``i`` image ``i``: the originals, what the model
        is given (the upper half; the hidden lower half mid-grey), and the completions."""
        n = self.hparams.num_fixed_samples
        if n == 0:  # sampling costs C * H * W network evaluations; 0 switches the grids off
            return {}
        images = {"samples": self.sample(n)}
        if batch is not None:
            x = batch[0][:n] if isinstance(batch, (list, tuple)) else batch[:n]
            labels = self.conditioning(batch)
            labels = labels[:n] if labels is not None else None
            # For display only: complete() is given x and sees only its upper half. Mid-grey,
            # not -1: on MNIST's black background the cut would not show.
            given = x.clone()
            given[:, :, x.shape[2] // 2:] = 0.0
            images["completions"] = torch.stack([x, given, self.complete(x, labels)])
        return images

    def grid_layouts(self) -> dict[str, str]:
        return {"samples": "samples" + self._label_layout(),
                "completions": "rows: originals, the given upper half (the hidden half grey), "
                               "completions; column i: image i"}
