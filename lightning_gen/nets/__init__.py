"""Plain ``nn.Module`` networks, apart from the training logic in ``lightning_gen.models``."""

from lightning_gen.nets.biggan import BigGANDiscriminator, BigGANGenerator
from lightning_gen.nets.conv import ConvDecoder, ConvEncoder, base_size, dcgan_init_, num_parameters
from lightning_gen.nets.pggan import ProgressiveDiscriminator, ProgressiveGenerator
from lightning_gen.nets.pix2pix import ConditionalPatchDiscriminator, UNetGenerator
from lightning_gen.nets.pixelrnn import PixelRNNNet
from lightning_gen.nets.srgan import SRDiscriminator, SRResNet, VGGFeatures
from lightning_gen.nets.stylegan2 import StyleGAN2Discriminator, StyleGAN2Generator

__all__ = ["ConvDecoder", "ConvEncoder", "base_size", "dcgan_init_", "num_parameters",
           "ProgressiveDiscriminator", "ProgressiveGenerator",
           "StyleGAN2Discriminator", "StyleGAN2Generator",
           "BigGANDiscriminator", "BigGANGenerator",
           "SRDiscriminator", "SRResNet", "VGGFeatures",
           "ConditionalPatchDiscriminator", "UNetGenerator",
           "PixelRNNNet"]
