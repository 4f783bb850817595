"""Checkpoints: a GAN resumes exactly where it stopped; a crash mid-write keeps the old copy;
Lightning's own ``load_from_checkpoint`` reads a checkpoint made from Python."""

from __future__ import annotations

import copy

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from datamodules import DigitsDataModule
from lightning_gen.models import DCGAN, VAE
from tests.test_models import fixed_batch_loader


def trainer(tmp_path, **kwargs) -> L.Trainer:
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_top_k=0)
    return L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
                     enable_model_summary=False, callbacks=[ckpt, *kwargs.pop("callbacks", [])],
                     **kwargs)


class CaptureAtStart(L.Callback):
    def on_train_start(self, trainer, pl_module):
        # deepcopy: state_dict() shares tensors that later steps update in place
        self.optimizer_states = [copy.deepcopy(opt.state_dict()) for opt in trainer.optimizers]
        self.counters = (pl_module.d_steps, pl_module.g_steps)
        self.fixed_noise = pl_module.fixed_noise.clone()


def assert_same_state(a, b):
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], dict):
            assert_same_state(a[key], b[key])
        elif isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key


def test_resume_restores_both_optimizers_counters_and_fixed_noise(tmp_path):
    torch.manual_seed(0)
    model = DCGAN((1, 28, 28), latent_dim=8, g_width=8, d_width=8, n_critic=2, sample_seed=1)
    trainer(tmp_path, max_steps=6).fit(model, fixed_batch_loader((1, 28, 28), n=4, repeats=8))
    saved = torch.load(tmp_path / "ckpt/last.ckpt", weights_only=False)

    fresh = DCGAN((1, 28, 28), latent_dim=8, g_width=8, d_width=8, n_critic=2, sample_seed=2)
    assert not torch.equal(fresh.fixed_noise, model.fixed_noise)
    capture = CaptureAtStart()
    trainer(tmp_path, max_steps=9, callbacks=[capture]).fit(
        fresh, fixed_batch_loader((1, 28, 28), n=4, repeats=8),
        ckpt_path=tmp_path / "ckpt/last.ckpt")

    assert capture.counters == (4, 2)  # 6 optimizer steps = 4 D + 2 G with n_critic=2
    assert torch.equal(capture.fixed_noise, model.fixed_noise)
    for restored, original in zip(capture.optimizer_states, saved["optimizer_states"], strict=True):
        assert_same_state(restored, original)
    assert (fresh.d_steps, fresh.g_steps) == (6, 3)


def test_crash_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    import fsspec.implementations.local as local

    torch.manual_seed(0)
    model = DCGAN((1, 28, 28), latent_dim=8, g_width=8, d_width=8)
    loader = fixed_batch_loader((1, 28, 28), n=4, repeats=4)
    trainer(tmp_path, max_steps=2).fit(model, loader)
    path = tmp_path / "ckpt/last.ckpt"
    good = path.read_bytes()

    real_write = local.LocalFileOpener.write

    def write_half_then_die(self, data):
        real_write(self, bytes(data)[: len(data) // 2])
        raise OSError("disk full (simulated crash mid-write)")

    monkeypatch.setattr(local.LocalFileOpener, "write", write_half_then_die)
    with pytest.raises(OSError, match="simulated"):
        trainer(tmp_path, max_steps=4).fit(model, loader, ckpt_path=path)
    monkeypatch.undo()

    assert path.read_bytes() == good
    assert torch.load(path, weights_only=False)["global_step"] == 2
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]  # no half-written leftovers


def test_a_fit_with_a_pathlib_data_dir_loads_with_lightnings_load_from_checkpoint(tmp_path):
    # Lightning >= 2.6 leaves weights_only to torch (True since 2.6): a pathlib path among the
    # DataModule's hyperparameters made the checkpoint unloadable without allowlisting.
    data = DigitsDataModule(data_dir=tmp_path / "data", image_size=28, batch_size=32)
    model = VAE(latent_dim=4, width=8)
    trainer(tmp_path, max_steps=2, limit_val_batches=1).fit(model, data)
    path = tmp_path / "ckpt/last.ckpt"
    loaded = VAE.load_from_checkpoint(path)  # weights_only: torch's default
    assert torch.equal(loaded.fixed_noise, model.fixed_noise)
    assert DigitsDataModule.load_from_checkpoint(path).data_dir == str(tmp_path / "data")


class RecordLogSteps(L.Callback):
    """The step and epoch Lightning gives its loggers, at each validation end."""

    def __init__(self):
        self.seen = []

    def on_validation_end(self, trainer, pl_module):
        self.seen.append((trainer.fit_loop.epoch_loop._batches_that_stepped, trainer.current_epoch))


def test_validate_with_a_checkpoint_logs_at_its_step_and_leaves_the_trainer_as_it_was(tmp_path):
    torch.manual_seed(0)
    loader = fixed_batch_loader((1, 28, 28), n=4, repeats=3)
    model = VAE((1, 28, 28), latent_dim=4, width=8)
    trainer(tmp_path, max_epochs=2, limit_val_batches=0).fit(model, loader)
    record = RecordLogSteps()
    again = trainer(tmp_path, max_epochs=1, limit_val_batches=1, callbacks=[record])
    again.validate(model, loader, ckpt_path=tmp_path / "ckpt/last.ckpt")
    saved = torch.load(tmp_path / "ckpt/last.ckpt", weights_only=False)
    assert saved["epoch"] == 2  # saved at the end of fit: trainer.current_epoch, 2 epochs done
    assert record.seen == [(6, 2)]  # 2 epochs of 3 batches, the checkpoint's epoch; not (0, 0)
    # Python API: the same trainer fits afresh afterwards, from step 0 and epoch 0.
    again.fit(VAE((1, 28, 28), latent_dim=4, width=8), loader, loader)
    # Its sanity check at (0, 0); then epoch 0's validation, before its last batch is counted.
    assert record.seen[1:] == [(0, 0), (2, 0)]
    assert again.fit_loop.epoch_loop._batches_that_stepped == 3
