"""Plain ``nn.Module`` networks, apart from the training logic in ``lightning_gen.models``."""

from lightning_gen.nets.biggan import BigGANDiscriminator, BigGANGenerator
from lightning_gen.nets.conv import ConvDecoder, ConvEncoder, base_size, dcgan_init_, num_parameters

__all__ = ["ConvDecoder", "ConvEncoder", "base_size", "dcgan_init_", "num_parameters",
           "BigGANDiscriminator", "BigGANGenerator"]
