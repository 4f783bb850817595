"""PixelRNN (van den Oord, Kalchbrenner & Kavukcuoglu 2016a): Row LSTM and Diagonal BiLSTM."""

from __future__ import annotations

from typing import Literal

from lightning_gen.models.base import check_learning_rates
from lightning_gen.models.pixelcnn import PixelCNN
from lightning_gen.nets.pixelrnn import PixelRNNNet


class PixelRNN(PixelCNN):
    """Autoregressive image model with LSTM layers instead of masked-convolution blocks.

    Everything but the network is the PixelCNN's (``PixelCNN`` is the base class): the
    ``num_levels``-way softmax per sub-pixel and its loss (``losses.categorical_nll``), the
    logged NLL in bits per dimension and nats per image, ``nll`` for ``lightning-gen
    evaluate``'s exact test NLL, ``sample`` (one network pass per sub-pixel) and ``complete``
    (the lower half of given images), so the image and completion callbacks work unchanged.

    Args:
        image_shape: ``(C, H, W)`` (linked from the DataModule by the CLI).
        architecture: ``"diagonal_bilstm"`` (Sec. 3.2, the paper's best model) or
            ``"row_lstm"`` (Sec. 3.1).
        hidden: LSTM state channels ``h`` (the residual stream has ``2h``), a multiple of the
            image channels (the R/G/B masks split it into equal groups).
        n_layers: LSTM layers.
        kernel_size: Row LSTM kernel width (3); unused by the Diagonal BiLSTM.
        num_levels: Intensity levels per sub-pixel (256 for 8-bit images, 2 for binary data).
        num_classes: Conditioning classes (10) or attributes (40 for CelebA); 0: unconditional.
        condition_on: ``"class"`` (integer labels) or ``"attributes"`` (0/1 vectors).
        lr: Adam learning rate.
        num_fixed_samples: Images in the sample / completion grids (0: no grids).
    """

    def __init__(
        self,
        image_shape: tuple[int, int, int] = (1, 28, 28),
        architecture: Literal["row_lstm", "diagonal_bilstm"] = "diagonal_bilstm",
        hidden: int = 16,
        n_layers: int = 7,
        kernel_size: int = 3,
        num_levels: int = 256,
        num_classes: int = 0,
        condition_on: Literal["class", "attributes"] = "class",
        lr: float = 1e-3,
        num_fixed_samples: int = 16,
    ) -> None:
        # PixelCNN's __init__ builds a PixelCNN network; skip it, keep the rest of its class.
        super(PixelCNN, self).__init__()
        if num_levels < 2:
            raise ValueError(f"num_levels must be >= 2, got {num_levels}")
        check_learning_rates(lr=lr)
        self.save_hyperparameters()
        self.net = PixelRNNNet(image_shape[0], architecture=architecture, hidden=hidden,
                               n_layers=n_layers, kernel_size=kernel_size,
                               num_levels=num_levels, num_classes=num_classes)
        self._init_conditioning(max(num_fixed_samples, 1))
