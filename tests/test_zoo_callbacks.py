"""The lecture callbacks: the latents they build and the numbers they report, against
independent computations."""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score

from datamodules import DigitsDataModule
from lightning_gen.callbacks import (
    CompletionCallback,
    LatentArithmeticCallback,
    LatentInterpolationCallback,
    LatentTraversalCallback,
    OutlierAUROCCallback,
)
from lightning_gen.callbacks.images import ImageGridCallback
from lightning_gen.callbacks.latent import lerp, slerp
from lightning_gen.models import VAE, PixelCNN


def test_interpolation_paths_start_and_end_at_the_endpoints():
    for mode in ("linear", "slerp"):
        cb = LatentInterpolationCallback(num_pairs=3, num_steps=5, mode=mode, seed=1)
        z = cb.paths(4).view(3, 5, 4)
        ends = torch.randn(3, 2, 4, generator=torch.Generator().manual_seed(1))
        assert torch.allclose(z[:, 0], ends[:, 0], atol=1e-5)
        assert torch.allclose(z[:, -1], ends[:, 1], atol=1e-5)


def test_slerp_keeps_the_norm_between_orthogonal_unit_vectors():
    z0, z1 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    t = torch.linspace(0, 1, 7)
    assert torch.allclose(slerp(z0, z1, t).norm(dim=1), torch.ones(7), atol=1e-5)
    assert torch.allclose(lerp(z0, z1, t)[3], torch.tensor([0.5, 0.5]))


def test_traversal_varies_exactly_one_dimension_per_row():
    cb = LatentTraversalCallback(num_steps=5, span=2.0)
    base = torch.randn(6)
    z = cb.codes(base, [1, 4]).view(2, 5, 6)
    for row, dim in enumerate([1, 4]):
        assert torch.allclose(z[row, :, dim], torch.linspace(-2, 2, 5))
        others = [d for d in range(6) if d != dim]
        assert torch.equal(z[row][:, others], base[others].expand(5, -1))


def test_traversal_of_a_vae_shows_its_highest_kl_dimensions():
    torch.manual_seed(0)
    model = VAE((1, 28, 28), latent_dim=4, width=4).eval()
    mu = torch.tensor([[0.0, 3.0, 0.0, 1.0]]).repeat(2, 1)
    model.encode = lambda x, labels=None: (mu, torch.zeros_like(mu))  # KL_j = mu_j^2 / 2
    cb = LatentTraversalCallback(num_dims=2)
    cb.batch = [torch.zeros(2, 1, 28, 28), torch.zeros(2)]
    base, dims = cb.base_and_dims(model, 4)
    assert dims == [1, 3] and torch.equal(base, mu[0])


def test_attribute_vector_is_the_difference_of_mean_codes():
    # With a known encoder (mu = the first 3 pixels), the smile vector must equal the mean code
    # of smiling faces minus that of the others, computed here directly.
    torch.manual_seed(0)
    model = VAE((1, 28, 28), latent_dim=3, width=4).eval()
    model.encode = lambda x, labels=None: (x.flatten(1)[:, :3], torch.zeros(len(x), 3))
    x = torch.randn(20, 1, 28, 28)
    attrs = torch.randint(0, 2, (20, 40))
    cb = LatentArithmeticCallback(attribute="Smiling", num_images=20, num_faces=4)
    v, faces, labels = cb.attribute_vector(model, [(x[:10], attrs[:10]), (x[10:], attrs[10:])])
    smiling = attrs[:, 31].bool()  # "Smiling" is attribute 31 of CelebA's list
    codes = x.flatten(1)[:, :3]
    assert torch.allclose(v, codes[smiling].mean(0) - codes[~smiling].mean(0), atol=1e-6)
    assert faces.shape == (4, 1, 28, 28) and labels is None


@pytest.mark.parametrize("offset", [0.0, 120.0])  # 120: a VAE's negative ELBO, in nats
def test_outlier_score_auroc_matches_scikit_learn(offset):
    torch.manual_seed(0)

    class Stub(torch.nn.Module):
        device = torch.device("cpu")

        def reconstruction_error(self, x):
            return x.flatten(1).mean(1) + offset

    class Data:
        test_set = True

        def __init__(self, batches):
            self.batches = batches

        def test_dataloader(self):
            return self.batches

    x = torch.randn(40, 1, 2, 2)
    y = torch.randint(0, 3, (40,))
    x[y == 2] += 0.7  # the outliers reconstruct worse, on average
    trainer = type("T", (), {"datamodule": Data([(x[:25], y[:25]), (x[25:], y[25:])]),
                             "loggers": [], "global_step": 0, "current_epoch": 0,
                             "default_root_dir": ".", "is_global_zero": True})()
    cb = OutlierAUROCCallback(outlier_class=2, num_show=32)
    grids = []
    cb.log_grid = lambda trainer, name, grid, layout: grids.append(grid)
    cb.run(trainer, Stub())
    expected = roc_auc_score((y == 2).numpy(), x.flatten(1).mean(1).numpy())
    assert expected > 0.7 and abs(cb.auroc - expected) < 1e-6
    # The 32 highest scores fill a grid of 8 x 4 images of 2x2 pixels (2-pixel padding), not
    # 5 per row with a last row of 2.
    assert grids[0].shape[1:] == (2 + 4 * 4, 2 + 8 * 4)


def test_a_conditional_model_keeps_one_class_per_row():
    # Interpolation/traversal rows must vary only the latent: a conditional GAN gets one label
    # per row (its default labels 0, 1, 2, ... in turn), not a new class at every image.
    from lightning_gen.callbacks.latent import latent_decoder
    from lightning_gen.models import GAN

    model = GAN((1, 28, 28), latent_dim=4, g_hidden=(8,), d_hidden=(8,), maxout_pieces=2,
                num_classes=10).eval()
    seen = []
    model.generate = lambda z, labels=None: seen.append(labels) or torch.zeros(len(z), 1, 28, 28)
    decode, latent_dim = latent_decoder(model, row_length=5)
    decode(torch.randn(3 * 5, latent_dim))
    expected = model.default_labels(3).repeat_interleave(5)
    assert torch.equal(seen[0], expected) and seen[0].view(3, 5).unique(dim=1).shape == (3, 1)


def fit_digits(model, callbacks, folder, epochs: int = 1) -> DigitsDataModule:
    """Fit ``model`` one batch per epoch on the 8x8 digits (class labels) with ``callbacks``,
    writing into ``folder``; the DataModule."""
    data = DigitsDataModule(image_size=8, batch_size=4)
    trainer = L.Trainer(max_epochs=epochs, limit_train_batches=1, limit_val_batches=0,
                        accelerator="cpu", logger=False, callbacks=callbacks,
                        default_root_dir=folder, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, datamodule=data)
    return data


def test_periodic_grids_are_numbered_by_epochs_done_like_the_image_grids(tmp_path):
    # At the end of the first epoch every grid is "after 1 epoch": _epoch0001.png, as the
    # ImageGridCallback's reconstructions at the same moment.
    torch.manual_seed(0)
    callbacks = [ImageGridCallback(every_n_epochs=1),
                 LatentInterpolationCallback(num_pairs=1, num_steps=2),
                 LatentTraversalCallback(num_dims=1, num_steps=2)]
    fit_digits(VAE((1, 8, 8), latent_dim=2, width=4), callbacks, tmp_path, epochs=2)
    written: dict[str, set[int]] = {}
    for path in (tmp_path / "images").glob("*_epoch*.png"):
        name, epochs = path.stem.rsplit("_epoch", 1)
        written.setdefault(name, set()).add(int(epochs))
    assert {"latent_interpolation", "latent_traversal", "reconstructions"} <= set(written)
    assert all(epochs == {1, 2} for epochs in written.values()), written


def test_latent_arithmetic_refuses_class_labels_before_training(tmp_path):
    # Digits have class labels, not CelebA's attribute vectors: one ValueError at setup, not
    # an IndexError after a whole epoch.
    model = VAE((1, 8, 8), latent_dim=2, width=4)
    with pytest.raises(ValueError, match="needs attribute labels.*DigitsDataModule has class"):
        fit_digits(model, [LatentArithmeticCallback()], tmp_path)
    assert model.global_step == 0


def test_completion_callback_rows_show_original_given_half_in_grey_and_completion(tmp_path):
    # One row per test image, columns aligned: the original; its upper half with the hidden
    # lower half mid-grey (128), not the digits' black background; the completion.
    torch.manual_seed(0)
    model = PixelCNN(image_shape=(1, 8, 8), hidden=4, n_layers=1, num_fixed_samples=0)
    callback = CompletionCallback(num_images=2, num_completions=1)
    data = fit_digits(model, [callback], tmp_path)
    png = np.asarray(Image.open(tmp_path / "images" / "completions_test_epoch0001.png"))
    x = next(iter(data.test_dataloader()))[0]
    assert png.shape[:2] == (2 * 10 + 2, 3 * 10 + 2)  # 2 rows of 3 tiles of 8 px, 2 px apart

    def tile(row: int, col: int) -> np.ndarray:
        return png[2 + row * 10:10 + row * 10, 2 + col * 10:10 + col * 10, 0].astype(int)

    for i in range(2):
        original = ((x[i, 0] + 1) / 2 * 255).round().numpy().astype(int)
        assert np.abs(tile(i, 0) - original).max() <= 1
        assert np.abs(tile(i, 1)[:4] - original[:4]).max() <= 1
        assert (tile(i, 1)[4:] == 128).all(), tile(i, 1)
        assert np.abs(tile(i, 2)[:4] - original[:4]).max() <= 1


def test_the_cli_refuses_latent_arithmetic_on_class_labels_before_the_run_exists(tmp_path, capsys):
    from lightning_gen.cli import main

    (tmp_path / "vae.yaml").write_text(
        "model:\n  class_path: lightning_gen.models.VAE\n  init_args: {latent_dim: 2, width: 4}\n"
        "data:\n  class_path: datamodules.DigitsDataModule\n  init_args: {image_size: 8}\n")
    with pytest.raises(SystemExit) as stop:
        main(["fit", "--config", str(tmp_path / "vae.yaml"), "--trainer.callbacks+=lightning_gen."
              "callbacks.LatentArithmeticCallback", "--trainer.max_epochs", "1"])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lightning-gen: error: LatentArithmeticCallback needs attribute labels")
    assert "\n" not in err
    assert not (tmp_path / "runs").exists()  # no run folder, no W&B run
