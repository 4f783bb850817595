"""Likelihood numbers of ``lightning-gen evaluate``: test ELBO / IWAE bound of the VAEs, test NLL
of the PixelCNNs, and the Parzen-window estimate of any generator (Goodfellow et al. 2014).

Each loops over a split in batches (sharded over DDP ranks where the values are averaged by
torchmetrics), with a progress bar, and returns flat JSON-ready values. An image whose value is
NaN makes the average NaN (it is not left out), and ``nonfinite_images`` counts such images.
"""

from __future__ import annotations

import math
import sys

import torch
from torch.utils.data import DataLoader, Dataset, Subset, default_collate
from torchmetrics import MeanMetric, SumMetric
from tqdm.auto import tqdm

from lightning_gen.metrics.evaluator import is_conditional, load_split, rank_and_world
from lightning_gen.metrics.parzen import MNIST_SIGMA_GRID, parzen_evaluate


def _batches(dataset: Dataset, batch_size: int, rank: int, world: int):
    """``(b, x, y)`` for the batches ``b = rank, rank + world, ...`` of ``dataset``."""
    for b in range(rank, math.ceil(len(dataset) / batch_size), world):
        items = [dataset[i] for i in range(b * batch_size, min(len(dataset), (b + 1) * batch_size))]
        yield b, torch.stack([x for x, _ in items]), default_collate([y for _, y in items])


def _mean_and_count() -> tuple[MeanMetric, SumMetric]:
    """A mean that keeps NaN (torchmetrics' default, ``nan_strategy="warn"``, drops those
    images with a warning, and the average of the rest looks better than the model is) and a
    count of the images whose value is not finite."""
    return MeanMetric(nan_strategy="disable"), SumMetric()


def _update(mean: MeanMetric, nonfinite: SumMetric, values: torch.Tensor) -> None:
    mean.update(values)
    nonfinite.update((~torch.isfinite(values)).sum().float())


def _nonfinite_info(nonfinite: SumMetric, key: str = "nonfinite_images") -> dict:
    """``{key: n}`` when some image's value was NaN or infinite."""
    n = int(nonfinite.compute())
    return {key: n} if n else {}


def binarization_info(datamodule) -> dict:
    """``{"binarize": mode}`` when the data is binarized (nothing otherwise)."""
    mode = getattr(datamodule, "binarize", "none")
    return {} if mode == "none" else {"binarize": mode}


@torch.no_grad()
def likelihood_of(model, datamodule) -> str:
    """What a VAE's ELBO / IWAE numbers are a bound of: its decoder's distribution over the
    data as evaluated, and which published numbers they can be set against."""
    binarize = getattr(datamodule, "binarize", "none")
    if model.hparams.get("likelihood") == "gaussian":
        return (f"Gaussian decoder (std {model.hparams.gaussian_std} on [-1, 1]) on continuous "
                "intensities: a density, whose nats depend on that scale; not comparable with "
                "likelihoods of discrete images")
    if binarize != "none":
        return (f"Bernoulli decoder on binarized pixels (binarize: {binarize}): a likelihood of "
                "binary images, comparable with binarized-MNIST papers under the same "
                "binarization")
    return ("Bernoulli decoder on grey levels in [0, 1]: a cross-entropy of continuous "
            "intensities, not a likelihood of discrete images; not comparable with "
            "binarized-MNIST papers (for those: experiments/vae_binarized_mnist.yaml)")


def likelihood_metrics(model, datamodule, split: str = "test", iw_samples: int = 64,
                       batch_size: int = 100, seed: int = 0, device="cpu",
                       progress: bool = False) -> dict[str, float]:
    """Test ELBO and IWAE bound (Burda et al. 2016, ``iw_samples`` samples, decoded in chunks so
    5,000 fit in memory) in nats per image, averaged over ``split``; sharded over DDP ranks and
    averaged by torchmetrics. Class-conditional VAEs are scored given the images' labels."""
    dataset = load_split(datamodule, split)
    rank, world = rank_and_world()
    (elbo, bad), (iwae, bad_iwae) = _mean_and_count(), _mean_and_count()
    elbo, bad, iwae, bad_iwae = (m.to(device) for m in (elbo, bad, iwae, bad_iwae))
    fork = [device] if torch.device(device).type == "cuda" else []
    n_batches = math.ceil(len(dataset) / batch_size)
    with torch.random.fork_rng(devices=fork):
        for b, x, y in tqdm(_batches(dataset, batch_size, rank, world), desc=f"likelihood ({split})",
                            total=len(range(rank, n_batches, world)),
                            disable=not progress or rank != 0):
            torch.manual_seed(seed + b)
            x, labels = x.to(device), model.conditioning((x.to(device), y.to(device)))
            out = model(x, labels)
            _update(elbo, bad, out["log_px"] - out["kl"])
            if iw_samples > 0:
                _update(iwae, bad_iwae, model.importance_weighted_bound(x, k=iw_samples,
                                                                        labels=labels))
    result = {"test_elbo_nats": float(elbo.compute()), "likelihood_split": split,
              "likelihood_of": likelihood_of(model, datamodule),
              **binarization_info(datamodule), **_nonfinite_info(bad)}
    if iw_samples > 0:
        result.update({"test_iwae_nats": float(iwae.compute()), "iwae_k": iw_samples,
                       **_nonfinite_info(bad_iwae, "nonfinite_images_iwae")})
    return result


@torch.no_grad()
def nll_metrics(model, datamodule, split: str = "test", batch_size: int = 100, device="cpu",
                progress: bool = False) -> dict:
    """Exact test NLL of an autoregressive model (``model.nll``, nats per image) and in bits per
    dimension (``nats / (C H W ln 2)``), averaged over ``split`` (sharded over DDP ranks)."""
    dataset = load_split(datamodule, split)
    rank, world = rank_and_world()
    nll, bad = (m.to(device) for m in _mean_and_count())
    n_batches = math.ceil(len(dataset) / batch_size)
    dims = None
    for _, x, y in tqdm(_batches(dataset, batch_size, rank, world), desc=f"NLL ({split})",
                        total=len(range(rank, n_batches, world)),
                        disable=not progress or rank != 0):
        x = x.to(device)
        dims = x[0].numel()
        _update(nll, bad, model.nll(x, model.conditioning((x, y.to(device)))))
    nats = float(nll.compute())
    return {"test_nll_nats": nats, "test_bits_per_dim": nats / (dims * math.log(2)),
            "likelihood_split": split, **binarization_info(datamodule), **_nonfinite_info(bad)}


# ----------------------------------------------------------------------------------------------
# Parzen window


def check_parzen_options(num_samples: int, val_images: int) -> None:
    """Refuse, before any work, Parzen options that cannot work."""
    if num_samples < 1:
        raise ValueError(f"--parzen_samples must be at least 1 (Goodfellow et al. use 10000), "
                         f"got {num_samples}")
    if val_images < 1:
        raise ValueError(f"--parzen_val_images must be at least 1 (Goodfellow et al. use 1000), "
                         f"got {val_images}")


def _stack_images(dataset: Dataset, batch_size: int, num_workers: int, desc: str,
                  progress: bool) -> torch.Tensor:
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    parts = [batch[0] if isinstance(batch, (list, tuple)) else batch
             for batch in tqdm(loader, desc=desc, unit="batch", disable=not progress)]
    return torch.cat(parts)


def parzen_validation_set(datamodule, num_images: int) -> tuple[Dataset, str]:
    """The first ``num_images`` of the DataModule's validation split (the seeded hold-out of the
    training split the model did not train on), and a sentence saying so for the JSON.

    A DataModule that holds nothing out (``val_fraction 0``, as ``gan_mnist.yaml``) gives a
    seeded random subset of the training split instead, with a warning: the model has seen
    those images, so sigma may come out smaller than on held-out images.
    """
    if not hasattr(datamodule, "image_shape"):
        raise ValueError(f"--parzen needs image data; {type(datamodule).__name__} has no "
                         "image_shape")
    datamodule.setup("validate")
    val = datamodule.val_set
    name = type(datamodule).__name__
    if not val:  # None or empty
        train = load_split(datamodule, "train")
        if len(train) < num_images:
            raise ValueError(f"--parzen picks sigma on {num_images} training images but {name} "
                             f"has {len(train)}; lower --parzen_val_images")
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(
            datamodule.seed))[:num_images]
        text = (f"{num_images} images of the training split of {name} drawn with seed "
                f"{datamodule.seed} (val_fraction 0: no held-out images; the model trained on "
                "these)")
        if rank_and_world()[0] == 0:
            print(f"lightning-gen: warning: --parzen: {name} holds no validation images "
                  "(val_fraction 0), so sigma is picked on training images the model has seen; "
                  "train with --data.val_fraction > 0 for Goodfellow et al.'s protocol",
                  file=sys.stderr, flush=True)
        return Subset(train, order.tolist()), text
    if getattr(datamodule, "official_val_split", False):
        where = f"the official validation split of {name}"
    else:
        where = (f"the validation split of {name}: val_fraction {datamodule.val_fraction} of "
                 f"the training split, held out with seed {datamodule.seed}")
    if len(val) < num_images:
        raise ValueError(
            f"--parzen picks sigma on {num_images} held-out images but {where} has {len(val)}; "
            "lower --parzen_val_images or raise the run's data.val_fraction (--run_config)")
    return Subset(val, range(num_images)), f"first {num_images} images of {where}"


@torch.no_grad()
def generate_images(model, num_samples: int, seed: int = 0, batch_size: int = 100,
                    device="cpu", progress: bool = False) -> torch.Tensor:
    """``num_samples`` samples on the CPU, sample ``i`` from batch ``i // batch_size`` drawn with
    seed ``seed + batch`` (the samples ``evaluate`` and ``sample`` see); class-conditional models
    get labels ``i % num_classes``."""
    device = torch.device(device)
    conditional = is_conditional(model)
    fork = [device] if device.type == "cuda" else []
    out = []
    for b in tqdm(range(math.ceil(num_samples / batch_size)), desc="Parzen samples",
                  unit="batch", disable=not progress):
        start, end = b * batch_size, min(num_samples, (b + 1) * batch_size)
        labels = (torch.arange(start, end, device=device) % int(model.hparams.num_classes)
                  if conditional else None)
        with torch.random.fork_rng(devices=fork):
            torch.manual_seed(seed + b)
            out.append(model.sample(end - start, labels).float().cpu())
    return torch.cat(out)


def parzen_metrics(model, datamodule, num_samples: int = 10_000, val_images: int = 1000,
                   seed: int = 0, batch_size: int = 100, device="cpu",
                   sigmas=MNIST_SIGMA_GRID, progress: bool = False) -> dict:
    """Parzen-window log-likelihood (Goodfellow et al. 2014) of ``model`` on the test split:
    ``num_samples`` kernels, sigma chosen on ``val_images`` held-out training images, pixels on
    [0, 1] (see :mod:`lightning_gen.metrics.parzen`). Every DDP rank computes the same numbers."""
    check_parzen_options(num_samples, val_images)
    rank, _ = rank_and_world()
    show = progress and rank == 0
    val_set, val_text = parzen_validation_set(datamodule, val_images)
    test_set = load_split(datamodule, "test")
    workers = getattr(datamodule, "num_workers", 0)
    was_training = model.training
    model.to(device).eval()
    try:
        samples = generate_images(model, num_samples, seed, batch_size, device, show)
    finally:
        model.train(was_training)
    to01 = lambda x: ((x + 1) / 2).clamp(0, 1)  # noqa: E731  [-1, 1] -> Goodfellow's [0, 1]
    val = to01(_stack_images(val_set, batch_size, workers, "Parzen val images", show))
    test = to01(_stack_images(test_set, batch_size, workers, "Parzen test images", show))
    result = parzen_evaluate(to01(samples), val, test, sigmas, device=device, progress=show)
    return {**result, "parzen_validation": val_text, "parzen_val_images": len(val),
            "parzen_test_images": len(test),
            **binarization_info(datamodule)}
