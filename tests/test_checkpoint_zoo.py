"""Every checkpoint the suite writes (one experiment YAML per model class, fitted a few steps by
a real Trainer) loads through the safe path -- evaluate/sample's load_run, the classifier
extractor -- without --trust_checkpoint."""

from __future__ import annotations

import pytest
import torch

from lightning_gen.checkpoints import load_checkpoint
from lightning_gen.evaluate import load_run
from lightning_gen.metrics.extractors import ClassifierExtractor
from lightning_gen.models import Classifier
from tests.zoo_checkpoints import ZOO
from tests.zoo_utils import fit_yaml

# One experiment YAML per model class of the zoo, fitted a few steps by a real Trainer.
# (TextbookGAN, DRAGAN and InstanceNoiseDCGAN checkpoints hold the same kinds of values as
# DCGAN's; tests/zoo_checkpoints.py has tiny settings of every YAML.)
ONE_PER_MODEL = ["ae_mnist.yaml", "vae_mnist.yaml", "cvae_mnist.yaml", "cgan_mnist.yaml",
                 "quickstart.yaml", "sngan_cifar10.yaml", "wgan_gp_resnet_cifar10.yaml",
                 "gated_pixelcnn_cifar10.yaml", "cyclegan_mnist_inverted.yaml",
                 "evaluator_mnist.yaml", "pggan_cifar10.yaml"]


@pytest.mark.parametrize("name", ONE_PER_MODEL)
def test_checkpoints_the_suite_writes_load_safely(name, request):
    fixture, overrides = ZOO[name]
    data = request.getfixturevalue(fixture) if fixture else None
    cli = fit_yaml(name, data, *overrides, steps=2)
    path = cli.trainer.checkpoint_callback.last_model_path
    ckpt = load_checkpoint(path)  # no --trust_checkpoint
    assert ckpt["global_step"] == 2 and ckpt["optimizer_states"]
    if isinstance(cli.model, Classifier):
        extractor = ClassifierExtractor(path)
        for key, value in cli.model.state_dict().items():
            assert torch.equal(extractor.net.state_dict()[key], value), key
    elif name not in ("ae_mnist.yaml",):  # the plain Autoencoder does not sample
        model, datamodule = load_run(path)  # what evaluate and sample do
        assert type(model) is type(cli.model) and type(datamodule) is type(cli.datamodule)
        for key, value in cli.model.state_dict().items():
            assert torch.equal(model.state_dict()[key], value), key
