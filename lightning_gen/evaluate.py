"""``lightning-gen evaluate`` and ``lightning-gen sample``: paper-style evaluation of a checkpoint.

    lightning-gen evaluate --ckpt_path runs/lightning-gen/dcgan-.../checkpoints/last.ckpt
    lightning-gen evaluate --ckpt_path CKPT --num_samples 2000 --reference test \\
        --feature_extractor classifier:runs/lightning-gen/evaluator_mnist-.../checkpoints/last.ckpt
    lightning-gen evaluate --ckpt_path runs/lightning-gen/dcgan-.../  # every checkpoint, by step
    lightning-gen sample --ckpt_path CKPT --num_samples 50000 --out samples/ --npz true

The model is rebuilt from the checkpoint (its hyperparameters and class are stored in it); the
data from ``--run_config`` if given, else the run's ``config.yaml`` beside ``checkpoints/``, else the
DataModule hyperparameters in the checkpoint. Sample ``i`` comes from batch ``i // batch_size``
generated with seed ``seed + batch``, so ``evaluate`` and ``sample`` with the same seed and batch
size see the same images, on one device or many (``--devices N`` launches N DDP processes).
"""

from __future__ import annotations

import importlib
import json
import math
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
import yaml
from PIL import Image
from torchmetrics import MeanMetric
from tqdm.auto import tqdm

from lightning_gen.eval_records import (
    RunRecorder,
    SweepEvaluator,
    checkpoints_table,
    find_checkpoints,
    protocol_name,
    summary_line,
)
from lightning_gen.metrics.evaluator import is_conditional, load_split
from lightning_gen.metrics.extractors import build_extractor, to_uint8
from lightning_gen.models.base import GenerativeModel
from lightning_gen.runs import atomic_write

# ----------------------------------------------------------------------------------------------
# Loading a run


def _import(class_path: str):
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"cannot import {class_path!r} ({err})") from err


def _public(kwargs: dict) -> dict:
    return {k: v for k, v in kwargs.items() if not k.startswith("_")}


def _tuples(kwargs: dict) -> dict:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}


def _check_generator(cls) -> None:
    if getattr(cls, "sample", None) is GenerativeModel.sample or not hasattr(cls, "sample"):
        raise ValueError(f"{cls.__module__}.{cls.__name__} does not generate samples (no sample "
                         "method); pass the checkpoint of a generator")


def _cannot_sample(model, err: Exception) -> str:
    return (f"{type(model).__name__} does not generate samples ({err}); pass the checkpoint of "
            "a generator")


def run_config_path(ckpt_path: str | Path) -> Path:
    """``<run>/config.yaml`` for ``<run>/checkpoints/<name>.ckpt``."""
    return Path(ckpt_path).resolve().parent.parent / "config.yaml"


def load_run(ckpt_path: str, config: str | None = None, data_dir: str | None = None):
    """``(model, datamodule)`` of a checkpoint written by ``lightning-gen fit``.

    With ``config`` (a run's ``config.yaml`` or an experiment YAML), the model is built from the
    config's ``model`` section and the checkpoint must match it; otherwise the model is built from
    the hyperparameters stored in the checkpoint.
    """
    path = Path(ckpt_path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise ValueError(f"{path} is not a PyTorch checkpoint ({type(err).__name__})") from err
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ValueError(f"{path} is not a Lightning checkpoint (no state_dict)")
    hparams = dict(ckpt.get("hyper_parameters") or {})
    if hparams.get("_class_path"):
        _check_generator(_import(hparams["_class_path"]))

    cfg_path = Path(config) if config else run_config_path(path)
    cfg = {}
    if config and not cfg_path.is_file():
        raise FileNotFoundError(f"config not found: {cfg_path}")
    if cfg_path.is_file():
        cfg = yaml.safe_load(cfg_path.read_text()) or {}

    # Data: config > checkpoint's datamodule hyperparameters.
    data_cfg = cfg.get("data") if isinstance(cfg.get("data"), dict) else None
    if data_cfg and "class_path" in data_cfg:
        data_cls, data_kwargs = data_cfg["class_path"], dict(data_cfg.get("init_args") or {})
    elif ckpt.get("datamodule_hyper_parameters", {}).get("_class_path"):
        dm_hp = ckpt["datamodule_hyper_parameters"]
        data_cls, data_kwargs = dm_hp["_class_path"], _public(dm_hp)
    else:
        raise ValueError(f"no data configuration for {path}: pass --run_config with a data section")
    if data_dir is not None:
        data_kwargs["data_dir"] = data_dir
    datamodule = _import(data_cls)(**data_kwargs)

    # Model: config's model section (checked against the checkpoint) > checkpoint hparams.
    model_cfg = cfg.get("model") if (config and isinstance(cfg.get("model"), dict)) else None
    if model_cfg and "class_path" in model_cfg:
        model_cls, model_kwargs = model_cfg["class_path"], dict(model_cfg.get("init_args") or {})
        if hparams.get("_class_path") and hparams["_class_path"] != model_cls:
            raise ValueError(f"checkpoint holds a {hparams['_class_path']} but the config "
                             f"names {model_cls}")
        model_kwargs.setdefault("image_shape", datamodule.image_shape)
        if model_kwargs.get("image_shape") is None:
            model_kwargs["image_shape"] = datamodule.image_shape
    elif hparams.get("_class_path"):
        model_cls, model_kwargs = hparams["_class_path"], _public(hparams)
    else:
        raise ValueError(f"{path} does not record its model class; pass --run_config")
    try:
        model = _import(model_cls)(**_tuples(model_kwargs))
    except TypeError as err:
        raise ValueError(f"cannot build {model_cls} from the config ({err})") from err
    try:
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as err:
        first = str(err).splitlines()[1].strip() if len(str(err).splitlines()) > 1 else str(err)
        raise ValueError(f"checkpoint {path} does not match the {model_cls} of the config: "
                         f"{first[:200]}") from err
    _check_generator(type(model))
    if hasattr(model, "on_load_checkpoint"):
        model.on_load_checkpoint(ckpt)
    if tuple(model.hparams.get("image_shape", datamodule.image_shape)) != tuple(datamodule.image_shape):
        raise ValueError(f"the model makes images of shape {tuple(model.hparams.image_shape)} but "
                         f"{type(datamodule).__name__} yields {tuple(datamodule.image_shape)}")
    return model.eval(), datamodule


# ----------------------------------------------------------------------------------------------
# Likelihood models


@torch.no_grad()
def likelihood_metrics(model, datamodule, split: str = "test", iw_samples: int = 64,
                       batch_size: int = 100, seed: int = 0, device="cpu",
                       progress: bool = False) -> dict[str, float]:
    """Test ELBO and IWAE bound (Burda et al. 2016, ``iw_samples`` samples) in nats per image,
    averaged over ``split``; sharded over DDP ranks and averaged by torchmetrics."""
    dataset = load_split(datamodule, split)
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    elbo, iwae = MeanMetric().to(device), MeanMetric().to(device)
    batches = range(rank, math.ceil(len(dataset) / batch_size), world)
    fork = [device] if torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=fork):
        for b in tqdm(batches, desc=f"likelihood ({split})", disable=not progress or rank != 0):
            torch.manual_seed(seed + b)
            x = torch.stack([dataset[i][0] for i in range(b * batch_size,
                                                          min(len(dataset), (b + 1) * batch_size))])
            x = x.to(device)
            out = model(x)
            elbo.update(out["log_px"] - out["kl"])
            if iw_samples > 0:
                iwae.update(model.importance_weighted_bound(x, k=iw_samples))
    result = {"test_elbo_nats": float(elbo.compute()), "likelihood_split": split}
    if iw_samples > 0:
        result.update({"test_iwae_nats": float(iwae.compute()), "iwae_k": iw_samples})
    return result


# ----------------------------------------------------------------------------------------------
# Commands


def _fabric(accelerator: str, devices: int) -> L.Fabric:
    strategy = "ddp" if devices > 1 else "auto"
    fabric = L.Fabric(accelerator=accelerator, devices=devices, strategy=strategy,
                      precision="32-true")
    fabric.launch()
    return fabric


def evaluate(
    ckpt_path: str,
    run_config: str | None = None,
    num_samples: int = 50_000,
    reference: str = "train",
    feature_extractor: str = "inception",
    weights_path: str | None = None,
    batch_size: int = 100,
    seed: int = 0,
    out: str | None = None,
    cache_dir: str | None = None,
    data_dir: str | None = None,
    isc_splits: int = 10,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    iw_samples: int = 64,
    accelerator: str = "auto",
    devices: int = 1,
    progress: bool = True,
) -> dict:
    """Evaluate a checkpoint the way papers do: FID, IS, KID, precision/recall (+ ELBO/IWAE).

    Args:
        ckpt_path: Checkpoint written by ``lightning-gen fit``; or a run folder (every
            ``checkpoints/*.ckpt`` of it) or a quoted glob (``'RUN/checkpoints/epoch*.ckpt'``):
            every checkpoint in the order of its stored ``global_step``, one of those at the
            same step (a named snapshot rather than ``last.ckpt``), one JSON each
            (``<run>/eval/<extractor>_<reference>_<num_samples>_<checkpoint>.json``). Each
            evaluation of a checkpoint in a run folder is appended to
            ``<run>/eval/results.jsonl`` and, if the run used W&B, sent to its W&B run as
            ``eval/<protocol>/<metric>``.
        run_config: A run config (or experiment YAML) whose ``data`` and ``model`` sections to
            use; the checkpoint must match its model. Default: the run's ``config.yaml`` for the
            data, the checkpoint's hyperparameters for the model. (``--config`` is jsonargparse's
            file of options for this command.)
        num_samples: Generated samples (50,000 in the papers).
        reference: Real split to compare with (``train`` or ``test``; ``val`` for CelebA).
        feature_extractor: ``inception`` (torch-fidelity's Inception-v3) or
            ``classifier:<checkpoint>`` (an evaluator trained with experiments/evaluator_*.yaml).
        weights_path: Local Inception-v3 weights (offline clusters); default: download once.
        batch_size: Samples per batch; with ``seed`` it fixes which images are drawn.
        seed: Base seed (batch ``b`` uses ``seed + b``).
        out: JSON path (one checkpoint only); default
            ``<run>/eval/<extractor>_<reference>_<num_samples>.json``.
        cache_dir: Reference-feature cache; default ``$LIGHTNING_GEN_CACHE`` or
            ``~/.cache/lightning-gen/reference``.
        data_dir: Override the DataModule's ``data_dir``.
        isc_splits: Inception Score splits.
        kid_subsets: KID subsets.
        kid_subset_size: KID subset size (capped at the sample count).
        iw_samples: Importance samples of the IWAE bound for likelihood models (0: ELBO only).
        accelerator: ``auto``, ``cpu``, ``gpu``, ...
        devices: Devices (DDP processes when > 1).
        progress: Show progress bars.
    """
    if num_samples < 2:
        raise ValueError(f"num_samples must be at least 2, got {num_samples}")
    checkpoints = find_checkpoints(ckpt_path)
    single = len(checkpoints) == 1
    if out is not None and not single:
        raise ValueError(f"--out names one JSON but {ckpt_path} holds {len(checkpoints)} "
                         "checkpoints; drop --out (each JSON goes to <run>/eval/)")
    fabric = _fabric(accelerator, devices)
    kind = feature_extractor.partition(":")[0]
    evaluator, done = None, []
    rank0 = fabric.global_rank == 0
    with RunRecorder(protocol_name(kind, reference, num_samples)) as recorder:
        bar = tqdm(checkpoints, desc="checkpoints", unit="ckpt",
                   disable=single or not progress or not rank0)
        for ckpt in bar:
            started = time.perf_counter()
            model, datamodule = load_run(str(ckpt.path), run_config, data_dir)
            if evaluator is None:  # one extractor and one reference for every checkpoint
                extractor = build_extractor(feature_extractor, weights_path)
                evaluator = SweepEvaluator(extractor, batch_size=batch_size, cache_dir=cache_dir,
                                           isc_splits=isc_splits, kid_subsets=kid_subsets,
                                           kid_subset_size=kid_subset_size)
            result = _evaluate_model(model, datamodule, evaluator, ckpt.path, feature_extractor,
                                     reference, num_samples, seed, batch_size, isc_splits,
                                     kid_subsets, iw_samples, fabric, progress and single)
            result["elapsed_s"] = round(time.perf_counter() - started, 2)
            if rank0:
                name = "" if single else f"_{ckpt.path.stem}"
                path = Path(out) if out else (run_config_path(ckpt.path).parent / "eval"
                                              / f"{kind}_{reference}_{num_samples}{name}.json")
                _write_json(path, result)
                result["json_path"] = str(path)
                recorder.record(ckpt, result)
                if single:
                    print(format_table(result), flush=True)
                else:
                    bar.write(summary_line(ckpt, result))
            done.append((ckpt, result))
            del model
    if rank0:
        if not single:
            print(checkpoints_table(done), flush=True)
        print("\n".join(recorder.lines), flush=True)
    return done[0][1] if single else [result for _, result in done]


def _write_json(path: Path, result: dict) -> None:
    text = json.dumps(result, indent=2) + "\n"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def _evaluate_model(model, datamodule, evaluator, ckpt_path, feature_extractor, reference,
                    num_samples, seed, batch_size, isc_splits, kid_subsets, iw_samples, fabric,
                    progress) -> dict:
    model.to(fabric.device)
    try:
        metrics = evaluator.evaluate(model, datamodule, reference, num_samples, seed=seed,
                                     device=fabric.device, progress=progress)
    except NotImplementedError as err:  # e.g. the plain Autoencoder: no prior to sample from
        raise ValueError(_cannot_sample(model, err)) from err
    result = {
        **metrics,
        "num_samples": num_samples,
        "feature_extractor": evaluator.extractor.name,
        "feature_extractor_spec": feature_extractor,
        "reference": evaluator.reference_info,
        "model": type(model).__module__ + "." + type(model).__name__,
        "checkpoint": str(Path(ckpt_path).resolve()),
        "seed": seed,
        "batch_size": batch_size,
        "isc_splits": isc_splits,
        "kid_subsets": kid_subsets,
        "devices": fabric.world_size,
    }
    if hasattr(model, "importance_weighted_bound"):
        result.update(likelihood_metrics(model, datamodule, "test", iw_samples, batch_size, seed,
                                         fabric.device, progress))
    return result


def format_table(result: dict) -> str:
    rows = [("FID", "fid"), ("IS (mean)", "is_mean"), ("IS (std)", "is_std"),
            ("KID (mean)", "kid_mean"), ("KID (std)", "kid_std"), ("precision", "precision"),
            ("recall", "recall"), ("CAS (accuracy)", "cas"), ("test ELBO (nats)", "test_elbo_nats"),
            ("test IWAE (nats)", "test_iwae_nats")]
    lines = [f"{'metric':<18} value", f"{'-' * 18} {'-' * 12}"]
    lines += [f"{label:<18} {result[key]:.6g}" for label, key in rows if key in result]
    ref = result["reference"]
    lines += [f"{'samples':<18} {result['num_samples']}",
              f"{'extractor':<18} {result['feature_extractor']}",
              f"{'reference':<18} {ref['dataset']} {ref['split']} ({ref['num_images']} images"
              f"{', cached' if ref.get('from_cache') else ''})",
              f"{'JSON':<18} {result.get('json_path', '')}"]
    return "\n".join(lines)


def sample(
    ckpt_path: str,
    out: str,
    num_samples: int = 50_000,
    batch_size: int = 100,
    seed: int = 0,
    class_label: int | None = None,
    npz: bool = False,
    run_config: str | None = None,
    accelerator: str = "auto",
    progress: bool = True,
) -> Path:
    """Write ``num_samples`` samples of a checkpoint as PNGs ``<out>/000000.png ...``.

    Args:
        ckpt_path: Checkpoint written by ``lightning-gen fit``.
        out: Output folder (created).
        num_samples: Number of samples.
        batch_size: Samples per batch; with ``seed`` it fixes which images are drawn (the same
            ones ``lightning-gen evaluate`` scores).
        seed: Base seed (batch ``b`` uses ``seed + b``).
        class_label: For class-conditional models: draw only this class (default: classes in
            turn, ``i % num_classes``, listed in ``labels.txt``).
        npz: Also write ``samples.npz`` with ``arr_0`` (N, H, W, C) uint8 (and ``labels``).
        run_config: Config whose ``model`` section to build the model from (see ``evaluate``).
        accelerator: ``auto``, ``cpu``, ``gpu``, ...
        progress: Show a progress bar.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be positive, got {num_samples}")
    fabric = _fabric(accelerator, 1)
    model, _ = load_run(ckpt_path, run_config)
    model.to(fabric.device)
    conditional = is_conditional(model)
    if class_label is not None and not conditional:
        raise ValueError(f"{type(model).__name__} is not class-conditional; drop --class_label")
    folder = Path(out)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    arrays, all_labels = [], []
    fork = [fabric.device] if fabric.device.type == "cuda" else []
    for b in tqdm(range(math.ceil(num_samples / batch_size)), desc="sampling", disable=not progress):
        start, end = b * batch_size, min(num_samples, (b + 1) * batch_size)
        labels = None
        if conditional:
            index = torch.arange(start, end, device=fabric.device)
            labels = (torch.full_like(index, class_label) if class_label is not None
                      else index % int(model.hparams.num_classes))
            all_labels.append(labels.cpu())
        with torch.random.fork_rng(devices=fork), torch.no_grad():
            torch.manual_seed(seed + b)
            try:
                images = model.sample(end - start, labels)
            except NotImplementedError as err:  # e.g. the plain Autoencoder
                if created and not any(folder.iterdir()):
                    folder.rmdir()
                raise ValueError(_cannot_sample(model, err)) from err
            images = to_uint8(images).permute(0, 2, 3, 1).cpu().numpy()
        for i, image in zip(range(start, end), images, strict=True):
            pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
            pil.save(folder / f"{i:06d}.png")
        if npz:
            arrays.append(images)
    if all_labels:
        labels = torch.cat(all_labels).numpy()
        (folder / "labels.txt").write_text("\n".join(str(int(y)) for y in labels) + "\n")
    if npz:
        extra = {"labels": torch.cat(all_labels).numpy()} if all_labels else {}

        def write(tmp: str) -> None:
            with open(tmp, "wb") as f:
                np.savez(f, arr_0=np.concatenate(arrays), **extra)

        atomic_write(folder / "samples.npz", write)
    print(f"Wrote {num_samples} samples to {folder}", flush=True)
    return folder


def main(args: list[str]) -> None:
    """``lightning-gen evaluate ...`` / ``lightning-gen sample ...`` (``args`` without the
    program name)."""
    from jsonargparse import CLI

    CLI({"evaluate": evaluate, "sample": sample}, args=args, as_positional=False)
