"""The contract the evaluation hooks (IS/FID) rely on: ``sample(n)`` -- and ``sample(n, labels)``
for conditional models -- returns ``(n, C, H, W)`` float images in [-1, 1], all finite."""

from __future__ import annotations

import pytest
import torch

from lightning_gen.models import (
    CVAE,
    DCGAN,
    DRAGAN,
    GAN,
    SNGAN,
    VAE,
    WGANGP,
    CycleGAN,
    InstanceNoiseDCGAN,
    PixelCNN,
    TextbookGAN,
)

MNIST, CIFAR = (1, 28, 28), (3, 32, 32)
TINY_MLP = {"g_hidden": (16,), "d_hidden": (8,)}
GENERATORS = {
    "gan": lambda: GAN(MNIST, **TINY_MLP),
    "dcgan": lambda: DCGAN(CIFAR, g_width=4, d_width=4),
    "textbook_gan": lambda: TextbookGAN(MNIST),
    "wgan_gp": lambda: WGANGP(CIFAR, g_width=4, d_width=4),
    "wgan_gp_resnet": lambda: WGANGP(CIFAR, architecture="resnet", g_width=8, d_width=8),
    "dragan": lambda: DRAGAN(CIFAR, g_width=4, d_width=4),
    "instance_noise": lambda: InstanceNoiseDCGAN(CIFAR, g_width=4, d_width=4),
    "sngan": lambda: SNGAN(CIFAR, g_channels=8, d_channels=8),
    "vae": lambda: VAE(MNIST, width=4),
    "pixelcnn": lambda: PixelCNN((1, 6, 6), hidden=4, n_layers=1),
    "cyclegan": lambda: CycleGAN(CIFAR, g_width=4, n_res_blocks=1, d_width=4),
}
CONDITIONAL = {
    "cgan": (lambda: GAN(MNIST, num_classes=10, **TINY_MLP), torch.tensor([0, 3, 9])),
    "cgan_attributes": (lambda: GAN(MNIST, num_classes=40, condition_on="attributes",
                                    **TINY_MLP), torch.randint(0, 2, (3, 40))),
    "cvae": (lambda: CVAE(MNIST, num_classes=10, width=4), torch.tensor([0, 3, 9])),
    "cvae_attributes": (lambda: CVAE(CIFAR, num_classes=40, condition_on="attributes",
                                     width=4), torch.randint(0, 2, (3, 40))),
    "gated_pixelcnn": (lambda: PixelCNN((3, 4, 4), architecture="gated", hidden=6, n_layers=1,
                                        num_classes=10), torch.tensor([0, 3, 9])),
}


def _check(images: torch.Tensor, n: int, shape: tuple[int, int, int]) -> None:
    assert images.shape == (n, *shape)
    assert images.dtype == torch.float32
    assert torch.isfinite(images).all()
    assert images.min() >= -1 and images.max() <= 1


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_sample_contract(name):
    torch.manual_seed(0)
    model = GENERATORS[name]()
    _check(model.sample(3), 3, tuple(model.hparams.image_shape))


@pytest.mark.parametrize("name", sorted(CONDITIONAL))
def test_conditional_sample_contract(name):
    torch.manual_seed(0)
    make, labels = CONDITIONAL[name]
    model = make()
    shape = tuple(model.hparams.image_shape)
    _check(model.sample(3, labels), 3, shape)
    _check(model.sample(3), 3, shape)  # default labels


def test_conditional_generator_uses_the_requested_class():
    # Same noise, different class -> different images: the label reaches the generator.
    torch.manual_seed(0)
    model = GAN(MNIST, num_classes=10, **TINY_MLP).eval()
    z = torch.randn(1, 100).repeat(2, 1)
    with torch.no_grad():
        images = model.generate(z, torch.tensor([1, 7]))
    assert not torch.allclose(images[0], images[1])
