"""Debiasing VAE (Amini, Soleimany, Schwarting, Bhatia & Rus 2019, "Uncovering and Mitigating
Algorithmic Bias through Learned Latent Structure").

A binary classifier whose encoder is also a VAE's: the encoder outputs the class logit and the
posterior ``(mu, logvar)``; the decoder reconstructs the image from ``z``. Both are trained
jointly (``losses.dbvae_loss``). Before each epoch the training set is encoded and every image
is drawn with probability inversely proportional to the estimated density of its latent code
(:func:`debiasing_probabilities`, the paper's Algorithm 1), so faces whose features are rare in
the data (the lecture's point: e.g. pale or dark skin, hats, unusual poses) are seen more often.

Shipped task: a CelebA attribute classifier (``Smiling``), with accuracy reported per subgroup
of other attributes (``Male`` x ``Pale_Skin``) in ``subgroup_accuracy_<split>.csv`` of the run
folder (:func:`subgroup_accuracy`), with (``debias: true``) and without (``false``) resampling.
"""

from __future__ import annotations

import csv
import itertools
import math
from pathlib import Path
from typing import Literal

import torch

from datamodules.celeba import ATTRIBUTES
from lightning_gen.losses import dbvae_loss, gaussian_kl, reparameterize
from lightning_gen.models.vae import VAE
from lightning_gen.nets.conv import ConvDecoder, ConvEncoder


def debiasing_probabilities(mu: torch.Tensor, num_bins: int = 10, alpha: float = 0.001
                            ) -> torch.Tensor:
    """The DB-VAE's resampling probabilities (Amini et al. 2019, Algorithm 1), ``(N,)``, float64.

    For each latent dimension ``i`` the codes ``mu[:, i]`` of the whole training set are binned
    into ``num_bins`` equal-width bins between their minimum and maximum (the last bin closed, as
    ``numpy.histogram``); ``Q_i(b)`` is the fraction of images in bin ``b``. Image ``x`` is drawn
    with probability ``W(x) ∝ prod_i 1 / (Q_i(b_i(x)) + alpha)``, normalised to sum to 1
    (computed as a softmax of ``-sum_i log(Q_i + alpha)``, so hundreds of dimensions do not
    overflow). ``alpha`` smooths the estimate: ``alpha -> inf`` gives uniform sampling.
    """
    if mu.dim() != 2 or mu.shape[0] == 0:
        raise ValueError(f"mu must be (N, latent_dim) with N > 0, got {tuple(mu.shape)}")
    if num_bins < 1:
        raise ValueError(f"num_bins must be >= 1, got {num_bins}")
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")
    mu = mu.detach().to("cpu", torch.float64)
    n = mu.shape[0]
    low, high = mu.min(0).values, mu.max(0).values
    width = (high - low).clamp_min(torch.finfo(torch.float64).tiny)
    bins = ((mu - low) / width * num_bins).floor().long().clamp_(0, num_bins - 1)  # (N, d)
    counts = torch.zeros(num_bins, mu.shape[1], dtype=torch.float64)
    counts.scatter_add_(0, bins, torch.ones_like(mu))
    density = counts / n  # (num_bins, d): Q_i(b)
    log_w = -torch.log(density.gather(0, bins) + alpha).sum(1)  # (N,)
    return torch.softmax(log_w, dim=0)


def subgroup_accuracy(correct: torch.Tensor, groups: torch.Tensor, names: tuple[str, ...]
                      ) -> list[dict]:
    """Accuracy overall and in every subgroup given by the 0/1 values of ``names``.

    Args:
        correct: ``(N,)`` bool, whether each prediction was right.
        groups: ``(N, len(names))`` 0/1 values of the subgroup attributes.
        names: Attribute names of the columns of ``groups``.

    Returns rows ``{"subgroup", "n", "accuracy"}``: ``"all"`` first, then one per combination
    (``"Male=1,Pale_Skin=0"``), in the order of ``itertools.product((1, 0), ...)``; ``accuracy``
    is NaN for an empty subgroup.
    """
    correct, groups = correct.bool().cpu(), groups.long().cpu()
    rows = [{"subgroup": "all", "n": len(correct),
             "accuracy": correct.float().mean().item() if len(correct) else math.nan}]
    for values in itertools.product((1, 0), repeat=len(names)):
        member = (groups == torch.tensor(values)).all(1) if names else torch.ones_like(correct)
        n = int(member.sum())
        rows.append({"subgroup": ",".join(f"{a}={v}" for a, v in zip(names, values, strict=True)),
                     "n": n, "accuracy": correct[member].float().mean().item() if n else math.nan})
    return rows


def format_table(rows: list[dict], title: str) -> str:
    """The rows of :func:`subgroup_accuracy` as a fixed-width text table, with the spread of
    the subgroups' accuracies (the paper's measure of bias: their variance)."""
    lines = [title, f"{'subgroup':<40} {'n':>8} {'accuracy':>9}"]
    lines += [f"{r['subgroup']:<40} {r['n']:>8} {r['accuracy']:>9.4f}" for r in rows]
    accs = torch.tensor([r["accuracy"] for r in rows[1:] if r["n"] > 0], dtype=torch.float64)
    if len(accs):
        lines.append(f"{'subgroups: min':<40} {'':>8} {accs.min().item():>9.4f}")
        lines.append(f"{'subgroups: std':<40} {'':>8} {accs.std(unbiased=False).item():>9.4f}")
    return "\n".join(lines)


def write_table(path: Path, rows: list[dict], debias: bool, split: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["split", "debias", "subgroup", "n", "accuracy"])
        writer.writeheader()
        for row in rows:
            writer.writerow({"split": split, "debias": debias, **row})


def compare_tables(paths: list[str | Path]) -> str:
    """One text table of several runs' ``subgroup_accuracy_<split>.csv`` files side by side
    (e.g. the baseline's and the debiasing run's): a column of accuracies per file, headed by
    its ``debias`` value, and the subgroups' min and standard deviation per column."""
    tables = []
    for path in paths:
        with open(path) as f:
            tables.append(list(csv.DictReader(f)))
    if not tables or any(not t for t in tables):
        raise ValueError("each subgroup accuracy file needs at least one row")
    subgroups = [r["subgroup"] for r in tables[0]]
    if any([(r["subgroup"], r["n"], r["split"]) for r in t]
           != [(r["subgroup"], r["n"], r["split"]) for r in tables[0]] for t in tables[1:]):
        raise ValueError("the files count other images per subgroup; compare the same split of "
                         "the same data and attributes")
    heads = [f"debias={t[0]['debias']}" for t in tables]
    lines = [f"{'subgroup':<40} {'n':>8} " + " ".join(f"{h:>13}" for h in heads)]
    for i, name in enumerate(subgroups):
        accs = " ".join(f"{float(t[i]['accuracy']):>13.4f}" for t in tables)
        lines.append(f"{name:<40} {tables[0][i]['n']:>8} {accs}")
    for label, stat in (("min", torch.min), ("std", lambda a: a.std(unbiased=False))):
        values = []
        for t in tables:
            a = torch.tensor([float(r["accuracy"]) for r in t[1:] if int(r["n"]) > 0],
                             dtype=torch.float64)
            values.append(f"{stat(a).item() if len(a) else math.nan:>13.4f}")
        lines.append(f"{'subgroups: ' + label:<40} {'':>8} " + " ".join(values))
    return "\n".join(lines)


class DBVAE(VAE):
    """Debiasing VAE: classifier of ``target_attribute`` and VAE sharing one encoder.

    The loss is ``c1 * BCE + c2 * L_VAE`` (``losses.dbvae_loss``) with ``L_VAE`` the VAE's
    negative ELBO (``beta``-weighted KL) per image divided by the number of pixel values, so
    it is in nats per dimension, commensurate with the cross-entropy. With ``debias`` every
    epoch after the first is drawn from the training set with :func:`debiasing_probabilities`
    of the current encoder's ``mu`` (the DataModule must be ``CelebAAttributesDataModule``);
    epoch 0 is drawn uniformly (the encoder is untrained), as is the epoch a run resumes in
    (Lightning creates its loader before the model can set the weights).

    Args:
        image_shape: ``(C, H, W)`` (linked from the DataModule by the CLI).
        target_attribute: The CelebA attribute the classifier predicts.
        subgroup_attributes: Attributes whose 0/1 combinations form the subgroups of the
            accuracy table (``Male`` x ``Pale_Skin``: 4 subgroups).
        debias: Resample the training set each epoch (the DB-VAE); ``False`` is the baseline
            (the same network and loss, data drawn uniformly).
        num_bins: Histogram bins per latent dimension.
        alpha: Smoothing of the density estimate (larger: closer to uniform).
        vae_on: ``"all"`` images (every CelebA image is a face) or only ``"positive"`` ones
            (the paper's face/non-face setting: the VAE learns the faces' latent structure).
        c1: Weight of the classification loss.
        c2: Weight of the VAE loss.
        latent_dim, width, beta, likelihood, gaussian_std, lr, num_fixed_samples,
            sample_seed: as for :class:`~lightning_gen.models.VAE`.
        num_shown: Images in the grids of the most and least up-weighted training faces.
    """

    def __init__(
        self,
        image_shape: tuple[int, int, int] = (3, 64, 64),
        target_attribute: str = "Smiling",
        subgroup_attributes: tuple[str, ...] = ("Male", "Pale_Skin"),
        debias: bool = True,
        num_bins: int = 10,
        alpha: float = 0.001,
        vae_on: Literal["all", "positive"] = "all",
        c1: float = 1.0,
        c2: float = 1.0,
        latent_dim: int = 100,
        width: int = 32,
        beta: float = 1.0,
        likelihood: Literal["bernoulli", "gaussian"] = "gaussian",
        gaussian_std: float = 0.1,
        lr: float = 5e-4,
        num_shown: int = 32,
        num_fixed_samples: int = 64,
        sample_seed: int = 0,
    ) -> None:
        for name in (target_attribute, *subgroup_attributes):
            if name not in ATTRIBUTES:
                raise ValueError(f"unknown CelebA attribute {name!r}; choose from "
                                 f"{', '.join(ATTRIBUTES)}")
        if target_attribute in subgroup_attributes:
            raise ValueError(f"{target_attribute} is the target; it cannot define subgroups")
        if num_bins < 1 or alpha < 0:
            raise ValueError(f"need num_bins >= 1 and alpha >= 0, got {num_bins}, {alpha}")
        if vae_on not in ("all", "positive"):
            raise ValueError(f"vae_on must be 'all' or 'positive', got {vae_on!r}")
        if c1 < 0 or c2 < 0:
            raise ValueError(f"c1 and c2 must be >= 0, got {c1}, {c2}")
        super().__init__(image_shape=image_shape, latent_dim=latent_dim, width=width, beta=beta,
                         likelihood=likelihood, gaussian_std=gaussian_std, lr=lr,
                         num_fixed_samples=num_fixed_samples, sample_seed=sample_seed)
        self.target_index = ATTRIBUTES.index(target_attribute)
        self.group_indices = [ATTRIBUTES.index(a) for a in subgroup_attributes]
        self._eval_outputs: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.last_tables: dict[str, list[dict]] = {}
        self.last_probabilities: torch.Tensor | None = None

    def build_networks(self) -> tuple[ConvEncoder, ConvDecoder]:
        hp = self.hparams  # encoder: (logit, mu, logvar)
        return (ConvEncoder(hp.image_shape, 1 + 2 * hp.latent_dim, width=hp.width, norm="batch"),
                ConvDecoder(hp.image_shape, hp.latent_dim, width=hp.width, output="none"))

    def check_datamodule(self, datamodule) -> None:
        super().check_datamodule(datamodule)
        if getattr(datamodule, "label_kind", None) != "attributes":
            raise ValueError(f"DBVAE classifies CelebA attributes; {type(datamodule).__name__} "
                             "has no attribute targets (use datamodules.CelebAAttributesDataModule)")
        if self.hparams.debias and not hasattr(datamodule, "set_sampling_weights"):
            raise ValueError(f"debias: true resamples the training set, which "
                             f"{type(datamodule).__name__} cannot do; use "
                             "datamodules.CelebAAttributesDataModule (or --model.init_args.debias "
                             "false for the baseline)")

    # ------------------------------------------------------------------------------------------
    def encode_all(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Class logit ``(B,)`` and posterior ``(mu, logvar)``, each ``(B, latent_dim)``."""
        out = self.encoder(x)
        mu, logvar = out[:, 1:].chunk(2, dim=1)
        return out[:, 0], mu, logvar.clamp(-30.0, 20.0)

    def encode(self, x, labels=None):
        _, mu, logvar = self.encode_all(x)
        return mu, logvar

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """Logit of ``target_attribute``, ``(B,)``."""
        return self.encode_all(x)[0]

    def forward(self, x: torch.Tensor, labels=None) -> dict[str, torch.Tensor]:
        logits, mu, logvar = self.encode_all(x)
        z = reparameterize(mu, logvar)
        decoded = self.decode(z)
        return {"logits": logits, "mu": mu, "logvar": logvar, "z": z, "decoded": decoded,
                "log_px": self.log_likelihood(decoded, x), "kl": gaussian_kl(mu, logvar)}

    def _step(self, batch, stage: str) -> torch.Tensor:
        x, attributes = batch[0], batch[1]
        hp = self.hparams
        y = attributes[:, self.target_index].float()
        out = self(x)
        dims = math.prod(hp.image_shape)
        vae = (-out["log_px"] + hp.beta * out["kl"]) / dims  # nats per dimension, (B,)
        mask = y if hp.vae_on == "positive" else torch.ones_like(y)
        loss = dbvae_loss(out["logits"], y, vae, mask, hp.c1, hp.c2)
        correct = (out["logits"] > 0) == y.bool()
        terms = {"loss": loss, "accuracy": correct.float().mean(), "vae": vae.mean(),
                 "kl": out["kl"].mean(),
                 "classification": torch.nn.functional.binary_cross_entropy_with_logits(
                     out["logits"].float(), y)}
        terms = {f"{stage}/{k}": v for k, v in terms.items()}
        if stage == "train":
            self.log_terms(terms, losses=[f"{stage}/loss", f"{stage}/accuracy"])
        else:
            self.log_dict(terms, prog_bar=True, sync_dist=True)
            self._eval_outputs.append((correct.detach(),
                                       attributes[:, self.group_indices].detach().long()))
        return loss

    # ------------------------------------------------------------------------------------------
    # Per-subgroup accuracy: validation and test
    def on_validation_epoch_start(self) -> None:
        self._eval_outputs = []

    on_test_epoch_start = on_validation_epoch_start

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            self._write_table("val", show=False)

    def on_test_epoch_end(self) -> None:
        self._write_table("test", show=True)

    def on_fit_end(self) -> None:
        if "val" in self.last_tables and self.trainer.is_global_zero:
            print(format_table(self.last_tables["val"], self._title("val")), flush=True)

    def _title(self, split: str) -> str:
        hp = self.hparams
        mode = "with debiasing" if hp.debias else "without debiasing"
        return f"{hp.target_attribute} accuracy per subgroup, {split} split, {mode}"

    def _write_table(self, split: str, show: bool) -> None:
        if self._eval_outputs:
            correct = torch.cat([c for c, _ in self._eval_outputs])
            groups = torch.cat([g for _, g in self._eval_outputs])
        else:
            correct = torch.zeros(0, dtype=torch.bool, device=self.device)
            groups = torch.zeros(0, len(self.group_indices), dtype=torch.long, device=self.device)
        self._eval_outputs = []
        if self.trainer.world_size > 1:  # every rank's predictions (a collective: all call it)
            correct = self.all_gather(correct.long()).flatten(0, 1).bool()
            groups = self.all_gather(groups).flatten(0, 1)
        rows = subgroup_accuracy(correct, groups, tuple(self.hparams.subgroup_attributes))
        self.last_tables[split] = rows
        if not self.trainer.is_global_zero:
            return
        from lightning_gen.runs import run_dir

        path = run_dir(self.trainer) / f"subgroup_accuracy_{split}.csv"
        write_table(path, rows, bool(self.hparams.debias), split)
        if show:
            print(f"{format_table(rows, self._title(split))}\n(written to {path})", flush=True)

    # ------------------------------------------------------------------------------------------
    # Resampling (Algorithm 1): before every epoch but the first
    def on_train_epoch_start(self) -> None:
        if not self.hparams.debias or self.current_epoch == 0:
            return
        datamodule = self.trainer.datamodule
        mu, attributes = self.encode_training_set(datamodule)
        probs = debiasing_probabilities(mu, self.hparams.num_bins, self.hparams.alpha)
        if self.trainer.world_size > 1:  # BatchNorm statistics differ per rank: rank 0's wins
            probs = self.trainer.strategy.broadcast(probs, src=0)
        datamodule.set_sampling_weights(probs, epoch=self.current_epoch)
        self.last_probabilities = probs
        n = len(probs)
        self.log_dict({"resample/max_weight": float(probs.max() * n),
                       "resample/effective_fraction": float(1.0 / (probs.pow(2).sum() * n))})
        if self.trainer.is_global_zero:
            self._show_resampling(datamodule, probs, attributes)

    @torch.no_grad()
    def encode_training_set(self, datamodule) -> tuple[torch.Tensor, torch.Tensor]:
        """``mu`` ``(N, latent_dim)`` and attributes ``(N, 40)`` of the training images in
        dataset order, the encoder in eval mode (BatchNorm's running statistics)."""
        was_training = self.training
        self.eval()
        mus, attrs = [], []
        try:
            for x, a in datamodule.encoding_dataloader():
                mus.append(self.encode(x.to(self.device))[0].float().cpu())
                attrs.append(a)
        finally:
            self.train(was_training)
        return torch.cat(mus), torch.cat(attrs)

    def _show_resampling(self, datamodule, probs: torch.Tensor, attributes: torch.Tensor) -> None:
        """Grids of the most and least up-weighted training faces and ``resampling_weights.csv``
        (mean weight relative to uniform per subgroup) in the run folder."""
        from lightning_gen.callbacks.images import image_grid, log_grid
        from lightning_gen.runs import run_dir

        k = min(self.hparams.num_shown, len(probs))
        order = probs.argsort(descending=True)
        for name, idx in (("most_upweighted", order[:k]), ("least_upweighted", order.flip(0)[:k])):
            images = torch.stack([datamodule.train_set[int(i)][0] for i in idx])
            log_grid(self.trainer, name, image_grid(images, 8), epochs_done=self.current_epoch)
        relative = probs * len(probs)  # 1 = uniform
        names = tuple(self.hparams.subgroup_attributes)
        groups = attributes[:, self.group_indices].long()
        path = run_dir(self.trainer) / "resampling_weights.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["epoch", "subgroup", "n", "mean_weight_vs_uniform"])
            for values in itertools.product((1, 0), repeat=len(names)):
                member = (groups == torch.tensor(values)).all(1)
                label = ",".join(f"{a}={v}" for a, v in zip(names, values, strict=True))
                mean = relative[member].mean().item() if member.any() else math.nan
                writer.writerow([self.current_epoch, label, int(member.sum()), f"{mean:.4f}"])

    @torch.no_grad()
    def log_images(self, batch) -> dict[str, torch.Tensor]:
        x = batch[0][:32]
        x_hat = self.to_image(self.decode(self.encode(x)[0]))
        pairs = torch.stack([x, x_hat], dim=1).flatten(0, 1)  # input / reconstruction
        return {"reconstructions": pairs, "samples": self.to_image(self.decode(self.fixed_noise))}

