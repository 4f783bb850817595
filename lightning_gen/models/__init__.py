"""One LightningModule per model family."""

from lightning_gen.models.autoencoder import Autoencoder
from lightning_gen.models.base import GenerativeModel, ImageShapeMismatchError
from lightning_gen.models.classifier import Classifier
from lightning_gen.models.dcgan import DCGAN
from lightning_gen.models.gan_base import GANBase
from lightning_gen.models.vae import VAE

__all__ = ["Classifier", "DCGAN", "GANBase", "Autoencoder", "GenerativeModel", "ImageShapeMismatchError", "VAE"]
