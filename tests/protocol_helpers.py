"""A run folder without training for the --protocol / --seeds / published tests: an untrained
tiny DCGAN checkpoint under ``<run>/checkpoints/last.ckpt`` beside a ``config.yaml`` naming
format-true fake MNIST (64 training, 96 test digits), W&B off; and the evaluate command line of
those tests (untrained classifier extractor, 40 samples in batches of 16)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from datamodules import MNISTDataModule
from lightning_gen.cli import main
from lightning_gen.models import DCGAN
from tests import fakedata
from tests.metrics_helpers import classifier_checkpoint, save_module_checkpoint


def make_run(root: Path) -> dict:
    data = fakedata.write_mnist(root / "mnist", n_train=64, n_test=96)
    run = root / "runs" / "lightning-gen" / "dcgan-tiny"
    datamodule = MNISTDataModule(data_dir=str(data))
    ckpt = save_module_checkpoint(DCGAN(latent_dim=8, g_width=8, d_width=8),
                                  run / "checkpoints" / "last.ckpt", datamodule=datamodule)
    (run / "config.yaml").write_text(yaml.safe_dump({
        "data": {"class_path": "datamodules.MNISTDataModule",
                 "init_args": {"data_dir": str(data)}},
        "trainer": {"logger": False}}))
    return {"run": run, "ckpt": ckpt,
            "classifier": classifier_checkpoint(root / "clf.ckpt", image_shape=(1, 28, 28))}


def evaluate_args(ckpt, cache: Path, *extra: str) -> list[str]:
    return ["evaluate", "--ckpt_path", str(ckpt), "--batch_size", "16", "--kid_subset_size", "20",
            "--accelerator", "cpu", "--progress", "false", "--cache_dir", str(cache), *extra]


def run_evaluate(out: Path, *args: str) -> dict:
    main([*args, "--out", str(out)])
    return json.loads(out.read_text())
