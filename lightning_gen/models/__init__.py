"""One LightningModule per model family."""

from lightning_gen.models.autoencoder import Autoencoder
from lightning_gen.models.base import (
    GenerativeModel,
    ImageShapeMismatchError,
    LabelMismatchError,
    SingleObjectiveModel,
)
from lightning_gen.models.biggan import BigGAN
from lightning_gen.models.classifier import Classifier
from lightning_gen.models.cvae import CVAE
from lightning_gen.models.cyclegan import CycleGAN
from lightning_gen.models.dbvae import DBVAE
from lightning_gen.models.dcgan import DCGAN
from lightning_gen.models.dragan import DRAGAN
from lightning_gen.models.gan import GAN, TextbookGAN
from lightning_gen.models.gan_base import GANBase
from lightning_gen.models.instance_noise import InstanceNoiseDCGAN
from lightning_gen.models.pggan import PGGAN
from lightning_gen.models.pix2pix import Pix2Pix
from lightning_gen.models.pixelcnn import PixelCNN
from lightning_gen.models.pixelrnn import PixelRNN
from lightning_gen.models.sngan import SNGAN
from lightning_gen.models.srgan import SRGAN, SRResNet
from lightning_gen.models.stylegan2 import StyleGAN2
from lightning_gen.models.vae import VAE
from lightning_gen.models.wgan_gp import WGANGP

__all__ = [
    "CVAE", "Classifier", "DCGAN", "DRAGAN", "GAN", "SNGAN", "VAE", "WGANGP", "Autoencoder", "CycleGAN",
    "GANBase", "GenerativeModel", "ImageShapeMismatchError", "InstanceNoiseDCGAN", "LabelMismatchError",
    "PixelCNN",
    "SingleObjectiveModel",
    "TextbookGAN",
    "PGGAN",
    "StyleGAN2",
    "BigGAN",
    "SRResNet",
    "SRGAN",
    "Pix2Pix",
    "PixelRNN",
    "DBVAE",
]
