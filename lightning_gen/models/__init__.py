"""One LightningModule per model family."""

from lightning_gen.models.autoencoder import Autoencoder
from lightning_gen.models.base import GenerativeModel, ImageShapeMismatchError
from lightning_gen.models.dcgan import DCGAN
from lightning_gen.models.gan_base import GANBase
from lightning_gen.models.pixelcnn import PixelCNN
from lightning_gen.models.vae import VAE
from lightning_gen.models.wgan_gp import WGANGP

__all__ = ["DCGAN", "GANBase", "Autoencoder", "GenerativeModel", "ImageShapeMismatchError", "PixelCNN", "VAE", "WGANGP"]
