"""Tiny settings of every experiment YAML, to fit a few steps and write real checkpoints."""

from __future__ import annotations

TINY_MLP = ("--model.init_args.g_hidden", "[16]", "--model.init_args.d_hidden", "[8]")
TINY_CONV = ("--model.init_args.g_width", "8", "--model.init_args.d_width", "8")
TINY_CYCLE = ("--model.init_args.g_width", "4", "--model.init_args.n_res_blocks", "1",
              "--model.init_args.d_width", "4", "--model.init_args.num_fixed_samples", "2")
WIDTH8 = ("--model.init_args.width", "8")
PIXELCNN = ("--model.init_args.hidden", "12", "--model.init_args.n_layers", "1",
            "--model.init_args.kernel_size", "3", "--trainer.limit_val_batches", "0",
            "--model.init_args.num_fixed_samples", "0", "--data.image_size", "8",
            "--trainer.callbacks.init_args.num_images", "2",
            "--trainer.callbacks.init_args.num_completions", "1")

# yaml -> (data fixture, overrides)
ZOO = {
    "ae_mnist.yaml": ("mnist_dir", WIDTH8),
    "autoencoder_outlier_mnist.yaml": ("mnist_dir", WIDTH8),
    "beta_vae_celeba.yaml": ("celeba_dir", WIDTH8),
    "cgan_celeba.yaml": ("celeba_dir", TINY_MLP),
    "cgan_mnist.yaml": ("mnist_dir", TINY_MLP),
    "cvae_celeba.yaml": ("celeba_dir", WIDTH8),
    "cvae_mnist.yaml": ("mnist_dir", WIDTH8),
    "cyclegan_celeba_smiling.yaml": ("celeba_dir", TINY_CYCLE),
    "cyclegan_mnist_inverted.yaml": ("mnist_dir", TINY_CYCLE),
    "dcgan_celeba.yaml": ("celeba_dir", TINY_CONV),
    "dcgan_cifar10.yaml": ("cifar10_dir", TINY_CONV),
    "dcgan_mnist.yaml": ("mnist_dir", TINY_CONV),
    "dragan_cifar10.yaml": ("cifar10_dir", TINY_CONV),
    "evaluator_cifar10.yaml": ("cifar10_dir", ("--model.init_args.width", "4")),
    "evaluator_mnist.yaml": ("mnist_dir", ("--model.init_args.width", "4")),
    "gan_mnist.yaml": ("mnist_dir", TINY_MLP),
    "gan_textbook_mnist.yaml": ("mnist_dir", ()),
    "gated_pixelcnn_cifar10.yaml": ("cifar10_dir", PIXELCNN),
    "instance_noise_cifar10.yaml": ("cifar10_dir", TINY_CONV),
    "pixelcnn_cifar10.yaml": ("cifar10_dir", PIXELCNN),
    "pixelcnn_mnist.yaml": ("mnist_dir", PIXELCNN),
    "quickstart.yaml": (None, TINY_CONV),
    "sngan_cifar10.yaml": ("cifar10_dir", ("--model.init_args.g_channels", "8",
                                           "--model.init_args.d_channels", "8")),
    "vae_celeba.yaml": ("celeba_dir", WIDTH8),
    "vae_mnist.yaml": ("mnist_dir", WIDTH8),
    "wgan_gp_cifar10.yaml": ("cifar10_dir", TINY_CONV),
    "wgan_gp_resnet_cifar10.yaml": ("cifar10_dir", TINY_CONV),
    "pggan_celeba.yaml": ("celeba_dir", ("--model.init_args.width", "8",
                                         "--model.init_args.latent_dim", "8",
                                         "--model.init_args.fade_images", "8",
                                         "--model.init_args.stabilize_images", "4")),
    "pggan_cifar10.yaml": ("cifar10_dir", ("--model.init_args.width", "8",
                                           "--model.init_args.latent_dim", "8",
                                           "--model.init_args.fade_images", "8",
                                           "--model.init_args.stabilize_images", "4")),
    "dbvae_celeba_smiling.yaml": ("celeba_dir", ("--model.init_args.width", "8",
                                                 "--model.init_args.latent_dim", "8")),
    "dbvae_celeba_smiling_baseline.yaml": ("celeba_dir", ("--model.init_args.width", "8",
                                                          "--model.init_args.latent_dim", "8")),
}
