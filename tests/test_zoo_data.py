"""The unpaired two-domain and held-out-class DataModules, and CycleGAN's schedule."""

from __future__ import annotations

import torch

from datamodules import CelebAUnpairedDataModule, MNISTHeldOutDataModule, MNISTInvertedDataModule
from lightning_gen.models import CycleGAN


def test_celeba_unpaired_splits_domains_by_the_attribute(celeba_dir):
    # The fake CelebA makes smiling faces (even indices) bright and the others dark.
    dm = CelebAUnpairedDataModule(attribute="Smiling", data_dir=str(celeba_dir), image_size=16,
                                  batch_size=4)
    dm.setup("fit")
    a, b = next(iter(dm.train_dataloader()))
    assert a.shape == b.shape == (4, 3, 16, 16)
    assert a.mean() < 0 < b.mean()  # A: not smiling (dark), B: smiling (bright)
    smiling = dm.train_set.a.dataset.attr[:, dm.attribute_idx]
    assert all(smiling[i] == 0 for i in dm.train_set.a.indices)
    assert all(smiling[i] == 1 for i in dm.train_set.b.indices)


def test_mnist_inverted_pairs_are_unpaired_inversions(mnist_dir):
    dm = MNISTInvertedDataModule(data_dir=str(mnist_dir), batch_size=8, val_fraction=0.0)
    dm.setup("fit")
    data = dm.train_set
    a, b = data[0]
    j = int(data.perm[0])
    assert torch.equal(b, -data.a[j][0])  # B is an inverted MNIST image ...
    assert j != 0  # ... of another digit than A's (the permutation unpairs them)


def test_held_out_class_is_only_in_the_test_split(mnist_dir):
    dm = MNISTHeldOutDataModule(held_out_class=3, data_dir=str(mnist_dir), batch_size=8)
    dm.setup("fit")
    dm.setup("test")
    assert all(int(y) != 3 for _, y in dm.train_set)
    assert all(int(y) != 3 for _, y in dm.val_set)
    assert any(int(y) == 3 for _, y in dm.test_set)


def test_cyclegan_learning_rate_is_constant_then_decays_linearly_to_zero():
    model = CycleGAN((1, 32, 32), g_width=4, n_res_blocks=1, d_width=4, decay_start_epoch=2,
                     decay_epochs=4, lr_g=1e-3, lr_d=2e-3)
    opts = model.configure_optimizers()
    model.optimizers = lambda: opts
    lrs = []
    for epoch in range(8):
        type(model).current_epoch = property(lambda self, e=epoch: e)
        model.on_train_epoch_start()
        lrs.append((opts[0].param_groups[0]["lr"], opts[1].param_groups[0]["lr"]))
    del type(model).current_epoch
    assert [g for g, _ in lrs] == [1e-3, 1e-3, 1e-3, 7.5e-4, 5e-4, 2.5e-4, 0.0, 0.0]
    assert [d for _, d in lrs][3] == 1.5e-3
