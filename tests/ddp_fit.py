"""2-process CPU DDP fits of tiny GANs, run by tests/test_scaling.py as a subprocess.

    python -m tests.ddp_fit --model dcgan[,wgan_gp,...] --out DIR [--steps 6]

Lightning's ``ddp`` strategy on CPU re-runs this module once per extra rank (gloo backend); the
models are fitted one after the other in the same two processes (a Trainer each; the later ones
find the processes and their process group in place), so the start-up is paid once.
Each rank writes ``DIR/<model>/rank<R>.pt`` with its generator's (or model's) state before and
after fitting, its step counters and a digest of the first batch it saw, for the test to compare
across ranks.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import lightning as L
import torch

from datamodules import DigitsDataModule
from lightning_gen.models import DCGAN, PGGAN, VAE, WGANGP, BigGAN, PixelCNN, StyleGAN2

TINY = {"image_shape": (1, 16, 16), "latent_dim": 8, "g_width": 8, "d_width": 8}
MODELS = {
    "dcgan": lambda: DCGAN(**TINY),
    "wgan_gp": lambda: WGANGP(**TINY, n_critic=2),
    "vae": lambda: VAE(image_shape=(1, 16, 16), latent_dim=4, width=8),
    "pixelcnn": lambda: PixelCNN(image_shape=(1, 16, 16), hidden=8, n_layers=2,
                                 num_fixed_samples=0),
    # 16 images per step over both ranks: 4x4, then half-way through the fade to 8x8, then the
    # fade to 16x16 starts (alpha 0), with the 16x16 blocks unused before it.
    "pggan": lambda: PGGAN(image_shape=(1, 16, 16), latent_dim=8, width=8, fade_images=16,
                           stabilize_images=8),
    "stylegan2": lambda: StyleGAN2(image_shape=(1, 16, 16), latent_dim=8, w_dim=8,
                                   mapping_layers=2, channel_base=64, channel_max=8),
    "biggan": lambda: BigGAN(image_shape=(1, 16, 16), latent_dim=12, g_width=2, d_width=2,
                             attention_resolution=8, n_critic=2, num_fixed_samples=8),
}


class FirstBatch(L.Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == 0:
            self.digest = float(batch[0].double().sum())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True, help="comma-separated: " + ",".join(MODELS))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()
    for name in args.model.split(","):
        fit(name, args.out / name, args.steps)


def fit(name: str, out: Path, steps: int) -> None:
    L.seed_everything(0)
    model = MODELS[name]()
    net = getattr(model, "generator", model)  # the generator, or the whole model
    initial = {k: v.clone() for k, v in net.state_dict().items()}
    first = FirstBatch()
    trainer = L.Trainer(
        accelerator="cpu", devices=2, strategy="ddp", max_steps=steps,
        logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[first],
    )
    trainer.fit(model, DigitsDataModule(image_size=16, batch_size=8, val_fraction=0.0))
    out.mkdir(parents=True, exist_ok=True)
    torch.save({
        "initial": initial,
        "final": net.state_dict(),
        "d_steps": getattr(model, "d_steps", None), "g_steps": getattr(model, "g_steps", None),
        "first_batch": first.digest, "world_size": trainer.world_size,
        "logged": {k: float(v) for k, v in trainer.callback_metrics.items()},
    }, out / f"rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    main()
