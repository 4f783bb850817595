"""SRGAN's networks (Ledig et al. 2017, Fig. 4) and the VGG19 feature map of its content loss.

* :class:`SRResNet`: the generator. A 9x9 convolution + PReLU, ``B`` residual blocks (3x3 conv,
  BN, PReLU, 3x3 conv, BN, skip), a 3x3 conv + BN with a long skip, then ``log2(scale)``
  sub-pixel upsampling blocks (3x3 conv to ``4 * width`` channels, ``PixelShuffle(2)`` of Shi
  et al. 2016, PReLU) and a 9x9 convolution to the image channels.
* :class:`SRDiscriminator`: eight 3x3 conv layers (64, 64, 128, 128, 256, 256, 512, 512
  channels; stride 2 where the width stays, BN from the second on, LeakyReLU 0.2), a dense layer
  of 1024 units, LeakyReLU and one logit.
* :class:`VGGFeatures`: torchvision's VGG19 cut after ``relu5_4`` (the paper's ``phi_{5,4}``,
  "VGG54") or ``relu2_2`` ("VGG22"), ImageNet normalisation, frozen.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn


class ResidualBlock(nn.Module):
    """``x + BN(conv(PReLU(BN(conv(x)))))`` with 3x3 convolutions (He et al. 2016, Gross &
    Wilber's variant as in the paper)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.PReLU(width),
            nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class SubPixelUpsample(nn.Module):
    """x2 sub-pixel convolution (Shi et al. 2016): conv to ``4 * width`` channels, then
    ``PixelShuffle(2)`` rearranges ``(B, 4C, H, W) -> (B, C, 2H, 2W)``, then PReLU."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(width, width * 4, 3, padding=1)
        self.shuffle = nn.PixelShuffle(2)
        self.act = nn.PReLU(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.shuffle(self.conv(x)))  # (B, C, 2H, 2W)


class SRResNet(nn.Module):
    """The SRGAN generator: ``(B, C, H, W)`` in [-1, 1] -> ``(B, C, sH, sW)`` in [-1, 1] (tanh).

    Args:
        channels: Image channels.
        width: Feature maps (64).
        n_blocks: Residual blocks (16).
        scale: Upscaling factor, a power of 2 (4).
    """

    def __init__(self, channels: int = 3, width: int = 64, n_blocks: int = 16,
                 scale: int = 4) -> None:
        super().__init__()
        if scale < 2 or scale & (scale - 1):
            raise ValueError(f"scale must be a power of 2 (2, 4, 8), got {scale}")
        self.head = nn.Sequential(nn.Conv2d(channels, width, 9, padding=4), nn.PReLU(width))
        self.blocks = nn.Sequential(*[ResidualBlock(width) for _ in range(n_blocks)])
        self.neck = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width))
        self.upsample = nn.Sequential(*[SubPixelUpsample(width)
                                        for _ in range(int(math.log2(scale)))])
        self.tail = nn.Conv2d(width, channels, 9, padding=4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.head(x)
        h = h + self.neck(self.blocks(h))  # long skip connection
        return torch.tanh(self.tail(self.upsample(h)))


class SRDiscriminator(nn.Module):
    """The SRGAN discriminator on ``(B, C, H, W)`` images (``H, W`` divisible by 16): one logit
    per image (the paper's final sigmoid is in the loss).

    Args:
        image_shape: ``(C, H, W)`` of the high-resolution images.
        width: Channels of the first layer (64); doubled every two layers up to ``8 * width``.
        dense: Units of the dense layer (1024).
    """

    def __init__(self, image_shape: tuple[int, int, int] = (3, 96, 96), width: int = 64,
                 dense: int = 1024) -> None:
        super().__init__()
        c, h, w = image_shape
        if h % 16 or w % 16:
            raise ValueError(f"the discriminator halves the image 4 times: H and W must be "
                             f"divisible by 16, got {h}x{w}")
        layers: list[nn.Module] = [nn.Conv2d(c, width, 3, padding=1), nn.LeakyReLU(0.2)]
        in_ch = width
        for i in range(7):  # (64, s2), (128, s1), (128, s2), ..., (512, s2)
            out_ch = width * 2 ** ((i + 1) // 2)
            stride = 2 if i % 2 == 0 else 1
            layers += [nn.Conv2d(in_ch, out_ch, 3, stride, 1), nn.BatchNorm2d(out_ch),
                       nn.LeakyReLU(0.2)]
            in_ch = out_ch
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(in_ch * (h // 16) * (w // 16), dense),
                                  nn.LeakyReLU(0.2), nn.Linear(dense, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x)).squeeze(1)  # (B,)


#: Index in ``torchvision.models.vgg19().features`` just after each named ReLU.
VGG19_LAYERS = {"relu2_2": 9, "relu5_4": 36}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class VGGFeatures(nn.Module):
    """``phi(x)``: VGG19 features of images in [-1, 1] (grey images repeated to RGB), after
    ImageNet normalisation, frozen, in eval mode.

    Args:
        layer: ``"relu5_4"`` (the paper's ``phi_{5,4}``) or ``"relu2_2"`` (``phi_{2,2}``).
        weights: ``"imagenet"`` (torchvision's ``VGG19_Weights.IMAGENET1K_V1``, downloaded
            once into the torch hub cache), a path to a saved ``vgg19().state_dict()`` (offline
            clusters; only the ``features.*`` entries are read), or ``"random"`` (tests).
    """

    def __init__(self, layer: str = "relu5_4", weights: str = "imagenet") -> None:
        super().__init__()
        from torchvision.models import VGG19_Weights
        from torchvision.models.vgg import cfgs, make_layers

        if layer not in VGG19_LAYERS:
            raise ValueError(f"VGG layer must be one of {', '.join(VGG19_LAYERS)}, got {layer!r}")
        # Only the convolutional part is built: VGG19's classifier holds 120M of its 140M
        # parameters and is never used here.
        features = make_layers(cfgs["E"])
        for m in features.modules():  # torchvision's VGG initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
        if weights == "imagenet":
            try:
                state = VGG19_Weights.IMAGENET1K_V1.get_state_dict(progress=True)
            except OSError as err:  # no network (URLError) and nothing in the hub cache
                raise FileNotFoundError(
                    f"could not download the VGG19 ImageNet weights ({err}); on a machine with "
                    "network access save torchvision's vgg19(weights='IMAGENET1K_V1')"
                    ".state_dict() to a file and pass it as vgg_weights") from err
        elif weights == "random":
            state = None
        else:
            path = Path(weights)
            if not path.is_file():
                raise FileNotFoundError(
                    f"VGG19 weights file not found: {path}. Save torchvision's "
                    "vgg19(weights='IMAGENET1K_V1').state_dict() there, or use 'imagenet'")
            state = torch.load(path, map_location="cpu", weights_only=True)
        if state is not None:
            features.load_state_dict({k.removeprefix("features."): v for k, v in state.items()
                                      if k.startswith("features.")})
        self.layer = layer
        self.features = features[: VGG19_LAYERS[layer]].eval().requires_grad_(False)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> VGGFeatures:
        return super().train(False)  # frozen feature map: never leaves eval mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = ((x + 1) / 2 - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        return self.features(x)
