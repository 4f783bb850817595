"""GenerativeMetricsCallback: metrics logged during training and at test, computed in float32
under mixed precision, equal to a direct evaluation of the same model and seeds."""

from __future__ import annotations

import lightning as L
import pytest

from datamodules import DigitsDataModule
from lightning_gen.callbacks import GenerativeMetricsCallback
from lightning_gen.metrics import GenerativeEvaluator, build_extractor
from lightning_gen.models import VAE
from tests.metrics_helpers import classifier_checkpoint

KEYS = ("fid", "is_mean", "is_std", "kid_mean", "kid_std", "precision", "recall", "density",
        "coverage")


def test_callback_logs_metrics_at_epoch_end_and_test(tmp_path):
    ckpt = classifier_checkpoint(tmp_path / "clf.ckpt")
    options = dict(batch_size=32, cache_dir=str(tmp_path / "cache"), kid_subset_size=32,
                   isc_splits=4)
    callback = GenerativeMetricsCallback(every_n_epochs=1, num_samples=64, reference="test",
                                         feature_extractor=f"classifier:{ckpt}", seed=5,
                                         **options)
    L.seed_everything(0)
    model = VAE(image_shape=(1, 32, 32), latent_dim=4, width=8)
    datamodule = DigitsDataModule(image_size=32, batch_size=32, val_fraction=0.0)
    trainer = L.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=0,
                        limit_test_batches=1, precision="bf16-mixed", accelerator="cpu",
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        callbacks=[callback], default_root_dir=tmp_path)
    trainer.fit(model, datamodule)
    logged = {k: float(trainer.callback_metrics[f"metrics/{k}"]) for k in KEYS}

    # The same model, seeds and options, evaluated directly in float32.
    direct = GenerativeEvaluator(build_extractor(f"classifier:{ckpt}"), **options).evaluate(
        model, datamodule, "test", 64, seed=5)
    for key in KEYS:
        assert logged[key] == pytest.approx(direct[key], rel=1e-5, abs=1e-7), key

    trainer.test(model, datamodule)
    assert float(trainer.callback_metrics["metrics/fid"]) == pytest.approx(direct["fid"], rel=1e-5)
    assert float(trainer.callback_metrics["test/elbo"]) < 0  # the model's own test step ran too


def test_callback_under_two_process_ddp_equals_one_process(tmp_path, capfd):
    ckpt = classifier_checkpoint(tmp_path / "clf.ckpt")
    options = dict(batch_size=16, cache_dir=str(tmp_path / "cache"), kid_subset_size=32,
                   isc_splits=4)
    L.seed_everything(0)
    model = VAE(image_shape=(1, 32, 32), latent_dim=4, width=8)
    datamodule = DigitsDataModule(image_size=32, batch_size=32)
    direct = GenerativeEvaluator(build_extractor(f"classifier:{ckpt}"), **options).evaluate(
        model, datamodule, "test", 48, seed=5)

    callback = GenerativeMetricsCallback(every_n_epochs=0, num_samples=48, reference="test",
                                         feature_extractor=f"classifier:{ckpt}", seed=5,
                                         **options)
    trainer = L.Trainer(strategy="ddp_spawn", devices=2, accelerator="cpu", logger=False,
                        limit_test_batches=1, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[callback],
                        default_root_dir=tmp_path)
    capfd.readouterr()
    trainer.test(model, datamodule)
    # The values are the same on every rank (gathered features): no advice to reduce them,
    # which Lightning printed nine times per evaluation.
    assert "It is recommended to use `self.log('metrics/" not in capfd.readouterr().err
    for key in KEYS:  # 3 batches of 16 samples: rank 0 draws two, rank 1 one
        assert float(trainer.callback_metrics[f"metrics/{key}"]) == pytest.approx(
            direct[key], rel=1e-5, abs=1e-7), key
