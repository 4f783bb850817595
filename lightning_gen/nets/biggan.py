"""BigGAN's generator and discriminator (Brock, Donahue & Simonyan 2019, "Large Scale GAN
Training for High Fidelity Natural Image Synthesis"), after the authors' BigGAN-PyTorch
(``BigGAN.py``, ``layers.py``): ResNet blocks, class-conditional batch norm fed by a shared
class embedding concatenated with a chunk of ``z`` (hierarchical latents), self-attention
(Zhang et al. 2019, SAGAN) at one resolution, a projection discriminator (Miyato & Koyama 2018)
and spectral normalisation of every weight of both networks.

Labels arrive as float vectors (:func:`lightning_gen.nets.conditioning.label_features`): one-hot
classes or CelebA's 0/1 attribute vectors. The shared embedding and the projection embedding
are bias-free linear maps of that vector, so for a one-hot class they are exactly an embedding
lookup (BigGAN's ``nn.Embedding`` / ``SNEmbedding``), and for attributes the sum of the
attributes' embeddings.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.parametrizations import spectral_norm

# Channel multipliers of BigGAN-PyTorch's ``G_arch``/``D_arch`` (``arch[32]``, ``arch[64]``);
# 16 is a smaller sibling of the 32 layout for CPU tests on 16x16 digits.
G_MULTIPLIERS = {16: (4, 4, 4), 32: (4, 4, 4, 4), 64: (16, 16, 8, 4, 2)}
D_MULTIPLIERS = {16: (4, 4, 4), 32: (4, 4, 4, 4), 64: (1, 2, 4, 8, 16)}
D_DOWNSAMPLE = {16: (True, False, False), 32: (True, True, False, False),
                64: (True, True, True, True, False)}


def _sn(module: nn.Module) -> nn.Module:
    return spectral_norm(module, eps=1e-6)


def truncated_normal(shape: tuple[int, ...], threshold: float,
                     device: torch.device | str | None = None) -> torch.Tensor:
    """``N(0, I)`` conditioned on ``|z_i| <= threshold`` elementwise: BigGAN's truncation trick
    ("values which fall outside a range are resampled to fall inside that range", Sec. 4.1).

    Drawn exactly by inverting the normal CDF on ``[Phi(-t), Phi(t)]`` (the distribution of
    resampling until inside, in one pass; float64, then float32).
    """
    if threshold <= 0:
        raise ValueError(f"truncation threshold must be > 0, got {threshold}")
    lo = 0.5 * math.erfc(threshold / math.sqrt(2))  # Phi(-t)
    u = torch.rand(shape, dtype=torch.float64, device=device)
    z = torch.special.ndtri(lo + u * (1 - 2 * lo))
    return z.clamp(-threshold, threshold).float()


class ConditionalBatchNorm2d(nn.Module):
    """``BN(x) * (1 + gain(c)) + bias(c)``: batch norm without its own affine, scale and shift
    predicted from the conditioning vector ``c`` by spectrally normalised bias-free linear maps
    (BigGAN-PyTorch ``layers.ccbn``)."""

    def __init__(self, channels: int, cond_dim: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, affine=False)
        self.gain = _sn(nn.Linear(cond_dim, channels, bias=False))
        self.bias = _sn(nn.Linear(cond_dim, channels, bias=False))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        gain = 1 + self.gain(c)[:, :, None, None]  # (B, C, 1, 1)
        return self.bn(x) * gain + self.bias(c)[:, :, None, None]


class SelfAttention(nn.Module):
    """SAGAN's non-local block as in BigGAN-PyTorch (``layers.Attention``): queries ``C/8``,
    keys ``C/8`` and values ``C/2`` from 1x1 convolutions, keys and values max-pooled 2x2,
    ``x + gamma * o(attention)``, ``gamma`` starting at 0."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.theta = _sn(nn.Conv2d(channels, max(channels // 8, 1), 1, bias=False))
        self.phi = _sn(nn.Conv2d(channels, max(channels // 8, 1), 1, bias=False))
        self.g = _sn(nn.Conv2d(channels, max(channels // 2, 1), 1, bias=False))
        self.o = _sn(nn.Conv2d(max(channels // 2, 1), channels, 1, bias=False))
        self.gamma = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        theta = self.theta(x).flatten(2)  # (B, C/8, HW)
        phi = F.max_pool2d(self.phi(x), 2).flatten(2)  # (B, C/8, HW/4)
        g = F.max_pool2d(self.g(x), 2).flatten(2)  # (B, C/2, HW/4)
        beta = torch.softmax(theta.transpose(1, 2) @ phi, dim=-1)  # (B, HW, HW/4)
        o = self.o((g @ beta.transpose(1, 2)).view(b, -1, h, w))
        return x + self.gamma * o


class GeneratorBlock(nn.Module):
    """cBN-ReLU-up2-conv3-cBN-ReLU-conv3, shortcut up2-conv1 (BigGAN-PyTorch ``GBlock``)."""

    def __init__(self, c_in: int, c_out: int, cond_dim: int) -> None:
        super().__init__()
        self.bn1 = ConditionalBatchNorm2d(c_in, cond_dim)
        self.bn2 = ConditionalBatchNorm2d(c_out, cond_dim)
        self.conv1 = _sn(nn.Conv2d(c_in, c_out, 3, 1, 1))
        self.conv2 = _sn(nn.Conv2d(c_out, c_out, 3, 1, 1))
        self.shortcut = _sn(nn.Conv2d(c_in, c_out, 1))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        h = F.interpolate(F.relu(self.bn1(x, c)), scale_factor=2)
        h = self.conv2(F.relu(self.bn2(self.conv1(h), c)))
        return h + self.shortcut(F.interpolate(x, scale_factor=2))


class BigGANGenerator(nn.Module):
    """``z = [z_0, z_1, ..., z_L]`` (hierarchical): ``z_0`` -> SN-linear -> ``4x4``; block
    ``l`` (up 2x each) is conditioned on ``[shared(y), z_l]``; then BN-ReLU-conv3-tanh.

    Args:
        latent_dim: Size of ``z``; with ``hierarchical`` divisible by ``L + 1`` (``L`` blocks).
        image_shape: ``(C, H, W)``, ``H = W`` in 16, 32, 64.
        width: ``ch`` of BigGAN-PyTorch (``G_ch``, 64); block channels are multiples of it.
        num_classes: Size of the label vector (0: unconditional).
        shared_dim: Size of the shared class embedding (128 in the paper).
        hierarchical: Split ``z`` across the blocks (else every block gets all of ``z``).
        attention_resolution: Resolution after which self-attention is applied (0: none).
    """

    def __init__(self, latent_dim: int, image_shape: tuple[int, int, int], width: int = 64,
                 num_classes: int = 0, shared_dim: int = 128, hierarchical: bool = True,
                 attention_resolution: int = 0) -> None:
        super().__init__()
        size = image_shape[1]
        if size not in G_MULTIPLIERS or image_shape[1] != image_shape[2]:
            raise ValueError(f"BigGAN makes square images of size {sorted(G_MULTIPLIERS)}, "
                             f"not {tuple(image_shape)}")
        mult = G_MULTIPLIERS[size]
        n_blocks = len(mult) - 1
        if hierarchical and latent_dim % (n_blocks + 1):
            raise ValueError(f"hierarchical z: latent_dim {latent_dim} must split evenly into "
                             f"{n_blocks + 1} chunks (one per block and one for the input)")
        self.chunk = latent_dim // (n_blocks + 1) if hierarchical else latent_dim
        self.hierarchical, self.num_classes = hierarchical, num_classes
        self.shared = nn.Linear(num_classes, shared_dim, bias=False) if num_classes else None
        cond_dim = self.chunk + (shared_dim if num_classes else 0)
        self.c0 = width * mult[0]
        self.linear = _sn(nn.Linear(self.chunk, 16 * self.c0))
        self.blocks = nn.ModuleList()
        self.attention = nn.ModuleDict()
        res = 4
        for i in range(n_blocks):
            self.blocks.append(GeneratorBlock(width * mult[i], width * mult[i + 1], cond_dim))
            res *= 2
            if res == attention_resolution:
                self.attention[str(i)] = SelfAttention(width * mult[i + 1])
        if attention_resolution and not len(self.attention):
            raise ValueError(f"attention_resolution {attention_resolution} is none of the "
                             f"generator's block resolutions (8..{size}); 0 switches it off")
        self.out = nn.Sequential(nn.BatchNorm2d(width * mult[-1]), nn.ReLU(),
                                 _sn(nn.Conv2d(width * mult[-1], image_shape[0], 3, 1, 1)),
                                 nn.Tanh())

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if self.hierarchical:
            zs = z.split(self.chunk, dim=1)  # (B, chunk) each
        else:
            zs = [z] * (len(self.blocks) + 1)
        if self.shared is not None:
            if y is None:
                raise ValueError("this BigGAN generator is conditional: pass labels")
            embedding = self.shared(y.to(self.shared.weight.dtype))  # (B, shared_dim)
            conds = [torch.cat([embedding, zi], dim=1) for zi in zs[1:]]
        else:
            conds = list(zs[1:])
        h = self.linear(zs[0]).view(-1, self.c0, 4, 4)  # (B, C0, 4, 4)
        for i, block in enumerate(self.blocks):
            h = block(h, conds[i])
            if str(i) in self.attention:
                h = self.attention[str(i)](h)
        return self.out(h)


class DiscriminatorBlock(nn.Module):
    """(ReLU)-conv3-ReLU-conv3-(avgpool2), shortcut conv1-(avgpool2) (BigGAN-PyTorch
    ``DBlock``; the first block has no leading ReLU and pools before its shortcut conv)."""

    def __init__(self, c_in: int, c_out: int, down: bool, first: bool) -> None:
        super().__init__()
        self.conv1 = _sn(nn.Conv2d(c_in, c_out, 3, 1, 1))
        self.conv2 = _sn(nn.Conv2d(c_out, c_out, 3, 1, 1))
        self.shortcut = _sn(nn.Conv2d(c_in, c_out, 1)) if down or c_in != c_out else None
        self.down, self.first = down, first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x if self.first else F.relu(x)
        h = self.conv2(F.relu(self.conv1(h)))
        h = F.avg_pool2d(h, 2) if self.down else h
        if self.first:
            return h + self.shortcut(F.avg_pool2d(x, 2) if self.down else x)
        s = x if self.shortcut is None else self.shortcut(x)
        return h + (F.avg_pool2d(s, 2) if self.down else s)


class BigGANDiscriminator(nn.Module):
    """ResNet blocks, ReLU, global sum pooling to ``h``; ``D(x, y) = psi(h) + <embed(y), h>``
    (projection discriminator, Miyato & Koyama 2018, Eq. 3), every weight spectrally normalised.

    Args:
        image_shape: ``(C, H, W)``, ``H = W`` in 16, 32, 64.
        width: ``ch`` (``D_ch``, 64).
        num_classes: Size of the label vector (0: no projection term).
        attention_resolution: Resolution after which self-attention is applied (0: none).
    """

    def __init__(self, image_shape: tuple[int, int, int], width: int = 64, num_classes: int = 0,
                 attention_resolution: int = 0) -> None:
        super().__init__()
        size = image_shape[1]
        if size not in D_MULTIPLIERS or image_shape[1] != image_shape[2]:
            raise ValueError(f"BigGAN discriminates square images of size "
                             f"{sorted(D_MULTIPLIERS)}, not {tuple(image_shape)}")
        chans = [image_shape[0]] + [width * m for m in D_MULTIPLIERS[size]]
        self.blocks = nn.ModuleList()
        self.attention = nn.ModuleDict()
        res = size
        for i, down in enumerate(D_DOWNSAMPLE[size]):
            self.blocks.append(DiscriminatorBlock(chans[i], chans[i + 1], down, first=i == 0))
            res = res // 2 if down else res
            if res == attention_resolution and not len(self.attention):
                self.attention[str(i)] = SelfAttention(chans[i + 1])
        if attention_resolution and not len(self.attention):
            raise ValueError(f"attention_resolution {attention_resolution} is none of the "
                             "discriminator's block resolutions; 0 switches it off")
        self.linear = _sn(nn.Linear(chans[-1], 1))
        self.embed = _sn(nn.Linear(num_classes, chans[-1], bias=False)) if num_classes else None

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``h``: the pooled features, ``(B, C)``."""
        h = x
        for i, block in enumerate(self.blocks):
            h = block(h)
            if str(i) in self.attention:
                h = self.attention[str(i)](h)
        return F.relu(h).sum(dim=(2, 3))  # global sum pooling

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        h = self.features(x)
        out = self.linear(h)  # (B, 1)
        if self.embed is not None:
            if y is None:
                raise ValueError("this BigGAN discriminator is conditional: pass labels")
            out = out + (self.embed(y.to(h.dtype)) * h).sum(dim=1, keepdim=True)
        return out


def init_weights_(module: nn.Module, scheme: str) -> None:
    """BigGAN-PyTorch's ``init_weights``: ``"ortho"`` (orthogonal, the paper, Sec. 3) or
    ``"N02"`` (``N(0, 0.02)``, its CIFAR script) on every conv and linear weight; biases 0.
    Spectral norm reads the raw (``original``) weight, so it is initialised there."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            weight = (m.parametrizations.weight.original
                      if hasattr(m, "parametrizations") else m.weight)
            with torch.no_grad():
                if scheme == "ortho":
                    nn.init.orthogonal_(weight)
                else:
                    nn.init.normal_(weight, 0.0, 0.02)
                if m.bias is not None:
                    m.bias.zero_()
