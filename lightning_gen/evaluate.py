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

import json
import math
import os
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
import yaml
from PIL import Image
from tqdm.auto import tqdm

from lightning_gen.checkpoints import hyper_parameters, load_checkpoint, resolve_class
from lightning_gen.eval_records import (
    RunRecorder,
    checkpoints_table,
    find_checkpoints,
    protocol_name,
    summary_line,
)
from lightning_gen.metrics.diagnostics import check_options as check_diagnostics
from lightning_gen.metrics.diagnostics import diagnose
from lightning_gen.metrics.diagnostics import wanted as diagnostics_wanted
from lightning_gen.metrics.evaluator import is_conditional, load_split
from lightning_gen.metrics.extractors import build_extractor, to_uint8
from lightning_gen.metrics.likelihood import (
    check_parzen_options,
    likelihood_metrics,
    nll_metrics,
    parzen_metrics,
)
from lightning_gen.models.base import GenerativeModel
from lightning_gen.outputs import (
    ResultsNotSavedError,
    check_dir_writable,
    check_file_writable,
    check_sample_folder,
    remove_old_samples,
)
from lightning_gen.protocols import (
    PROTOCOLS,
    ProtocolRun,
    SpreadEvaluator,
    cli_defaults,
    metric_lines,
    protocol_line,
    with_protocol,
)
from lightning_gen.published import published_for
from lightning_gen.run_record import versions
from lightning_gen.runs import atomic_write

# ----------------------------------------------------------------------------------------------
# Loading a run


def _read_run_config(path: Path) -> dict:
    """A run's ``config.yaml`` as a mapping; a one-line error naming the file otherwise."""
    try:
        cfg = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        raise ValueError(f"run config {path} is not valid YAML{line} "
                         f"({getattr(err, 'problem', None) or type(err).__name__}); fix it or pass "
                         "--run_config with a valid one") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"cannot read run config {path} ({err})") from None
    if cfg is None:
        return {}
    if not isinstance(cfg, dict):
        raise ValueError(f"run config {path} holds a {type(cfg).__name__}, not a mapping with "
                         "data and model sections; fix it or pass --run_config")
    return cfg


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


def load_run(ckpt_path: str, config: str | None = None, data_dir: str | None = None,
             trust_checkpoint: bool = False):
    """``(model, datamodule)`` of a checkpoint written by ``lightning-gen fit``.

    With ``config`` (a run's ``config.yaml`` or an experiment YAML), the model is built from the
    config's ``model`` section and the checkpoint must match it; otherwise the model is built from
    the hyperparameters stored in the checkpoint.

    The checkpoint is unpickled safely, and the classes it (or the config) names are built only
    if they are suite models / DataModules (:mod:`lightning_gen.checkpoints`), unless
    ``trust_checkpoint``.
    """
    path = Path(ckpt_path)
    ckpt = load_checkpoint(path, trust=trust_checkpoint)
    if not isinstance(ckpt.get("state_dict"), dict):
        raise ValueError(f"{path} is not a Lightning checkpoint (no state_dict)")
    hparams = hyper_parameters(ckpt)
    source = f"checkpoint {path}"
    if hparams.get("_class_path"):
        _check_generator(resolve_class(hparams["_class_path"], GenerativeModel,
                                       trust=trust_checkpoint, source=source, role="model class"))

    cfg_path = Path(config) if config else run_config_path(path)
    cfg = {}
    if config and not cfg_path.is_file():
        raise FileNotFoundError(f"config not found: {cfg_path}")
    if cfg_path.is_file():
        cfg = _read_run_config(cfg_path)

    # Data: config > checkpoint's datamodule hyperparameters.
    data_cfg = cfg.get("data") if isinstance(cfg.get("data"), dict) else None
    dm_hp = ckpt.get("datamodule_hyper_parameters")
    dm_hp = dm_hp if isinstance(dm_hp, dict) else {}
    if data_cfg and "class_path" in data_cfg:
        data_cls, data_kwargs = data_cfg["class_path"], dict(data_cfg.get("init_args") or {})
        data_source = f"run config {cfg_path}"
    elif dm_hp.get("_class_path"):
        data_cls, data_kwargs, data_source = dm_hp["_class_path"], _public(dm_hp), source
    else:
        raise ValueError(f"no data configuration for {path}: pass --run_config with a data section")
    if data_dir is not None:
        data_kwargs["data_dir"] = data_dir
    data_class = resolve_class(data_cls, L.LightningDataModule, trust=trust_checkpoint,
                               source=data_source, role="data class")
    try:
        datamodule = data_class(**data_kwargs)
    except TypeError as err:
        raise ValueError(f"cannot build {data_cls} from {data_source} ({err})") from None

    # Model: config's model section (checked against the checkpoint) > checkpoint hparams.
    model_cfg = cfg.get("model") if (config and isinstance(cfg.get("model"), dict)) else None
    model_source = source
    if model_cfg and "class_path" in model_cfg:
        model_cls, model_kwargs = model_cfg["class_path"], dict(model_cfg.get("init_args") or {})
        model_source = f"run config {cfg_path}"
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
    model_class = resolve_class(model_cls, GenerativeModel, trust=trust_checkpoint,
                                source=model_source, role="model class")
    try:
        model = model_class(**_tuples(model_kwargs))
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
# Commands


def _fabric(accelerator: str, devices: int) -> L.Fabric:
    strategy = "ddp" if devices > 1 else "auto"
    fabric = L.Fabric(accelerator=accelerator, devices=devices, strategy=strategy,
                      precision="32-true")
    fabric.launch()
    return fabric


@with_protocol
def evaluate(
    ckpt_path: str,
    run_config: str | None = None,
    num_samples: int = 50_000,
    reference: str | None = None,
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
    trust_checkpoint: bool = False,
    parzen: bool = False,
    parzen_samples: int = 10_000,
    parzen_val_images: int = 1000,
    neighbours: int = 0,
    neighbours_k: int = 5,
    memorization_percentile: float = 1.0,
    mode_coverage: bool = False,
    mode_threshold: float | None = None,
    protocol: str | None = None,
    seeds: int = 1,
    lpips_weights: str | None = None,
    lpips_net: str = "alex",
) -> dict:
    """Evaluate a checkpoint as papers do: FID, IS, KID, precision/recall, likelihoods, PSNR.

    Likelihoods: ELBO/IWAE of VAEs, PixelCNN test NLL, Parzen-window log-likelihood.
    Image-to-image models (SRResNet/SRGAN, pix2pix): PSNR, SSIM and LPIPS of their
    translations of the first ``num_samples`` test pairs against the targets (pix2pix also
    FID of outputs vs targets in ``feature_extractor``'s space), under the model's own protocol
    (Y channel and border crop for super-resolution, RGB for colorization); the JSON is
    ``<run>/eval/paired[-<extractor>][-lpips_...]_test_<n>.json`` (docs/models.md).

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
        num_samples: Generated samples (50,000 in the papers); 0: no sample metrics (no
            extractor loaded, no reference features), only the rest of the evaluation: a
            likelihood model's test likelihood (VAE/CVAE ELBO/IWAE, PixelCNN/PixelRNN exact
            NLL) and ``--parzen`` (whose samples are ``--parzen_samples``); refused where
            nothing else would be computed (a GAN without ``--parzen``, an image-to-image
            model: ``num_samples`` is its number of test pairs).
        reference: Real split to compare with: ``train`` or ``test`` (``val`` for CelebA);
            default: train. Image-to-image models: test, the split of the pairs they are
            scored on (another split is refused).
        feature_extractor: ``inception`` (torch-fidelity's Inception-v3), ``vgg16``
            (precision/recall's space), ``clip-vit-b-32`` (CLIP-FID), ``dinov2-vit-l-14``
            (FD-DINOv2), each optionally ``<name>:<weights file or hub folder>``; or
            ``classifier:<checkpoint>`` (an evaluator trained with experiments/evaluator_*.yaml).
        weights_path: Local weights for offline clusters: the Inception-v3, VGG-16 or CLIP file,
            or for DINOv2 a pre-filled torch hub folder; default: download once.
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
        iw_samples: Importance samples of the IWAE bound for likelihood models (0: ELBO only;
            5000 in Burda et al. 2016, decoded in chunks so memory does not grow with it).
        accelerator: ``auto``, ``cpu``, ``gpu``, ...
        devices: Devices (DDP processes when > 1).
        progress: Show progress bars.
        trust_checkpoint: Load the checkpoints (and the classes they name) even if they hold
            more than the suite's checkpoints do; only for files whose origin you trust.
        parzen: Also report the Parzen-window log-likelihood of the test split (Goodfellow et
            al. 2014): Gaussian kernels on ``parzen_samples`` samples, pixels on [0, 1], sigma
            from ``np.logspace(-1, 0, 10)`` picked on held-out training images.
        parzen_samples: Samples the kernels sit on (10,000 in the paper).
        parzen_val_images: Images of the DataModule's validation split (the seeded hold-out of
            the training split) that pick sigma (1,000 in the paper's code).
        neighbours: Memorization view (0: off): ``neighbours_<json stem>.png`` beside the JSON
            shows the first ``neighbours`` samples, each with its nearest training images in
            the extractor's feature space and in pixel space, and the JSON gets
            ``memorization_fraction`` (and ``_pixels``) over all samples (docs/evaluation.md).
        neighbours_k: Nearest training images shown per sample.
        memorization_percentile: ``q``: a sample counts as memorized when its nearest training
            image is at most as far as the ``q``-th percentile of training images' distances to
            their nearest other training image.
        mode_coverage: The classifier extractor's predicted-class histogram of unconditional
            samples against the reference split's labels (``modes_covered``, ``mode_kl``,
            ``modes_<json stem>.png``); needs ``classifier:<ckpt>``.
        mode_threshold: Share of the samples a class needs to count as covered (default
            ``0.1 / num_classes``).
        protocol: A benchmark's settings (``lightning_gen.protocols.PROTOCOLS``):
            ``pytorch-gan-collections``, ``mimicry`` (50,000 samples vs train, Inception),
            ``studiogan`` (10,000 vs test, Inception), ``inception-score-50k``,
            ``parzen-mnist``, ``binarized-mnist-iwae``, ``exact-test-nll``. Options given
            explicitly beat the preset. Its name goes into the JSON and, when none of its
            settings is overridden, names the results in results.jsonl and W&B; published
            numbers measured that way (``lightning_gen/published.csv``) are printed beside
            the measured ones.
        seeds: Repeat the sampling with this many seeds (``seed + k * ceil(num_samples /
            batch_size)``, k = 0..seeds-1; the reference features are computed once): the
            JSON holds each seed's values and their mean, std and min, the flat metrics the
            mean.
        lpips_weights: LPIPS of image-to-image models: ``None`` the published LPIPS (the
            torchvision backbone is downloaded once, torchmetrics' linear layers); a file
            written by ``lightning_gen.metrics.paired.write_lpips_weights`` (offline clusters);
            ``random`` (tests: numbers filed under ``paired-lpips_random``).
        lpips_net: LPIPS backbone: ``alex`` (the LPIPS paper's default), ``vgg`` or
            ``squeeze``.
    """
    run_protocol = ProtocolRun.of(locals())  # first: the arguments as given and preset
    # None: the default, told apart from an explicit split (paired models take only "test").
    explicit_reference = reference
    if reference is None:
        reference = run_protocol.settings["reference"] = "train"
    _check_num_samples(num_samples, isc_splits)
    if num_samples == 0:
        _check_no_sample_options(seeds=seeds, neighbours=neighbours, mode_coverage=mode_coverage)
    _check_counts(kid_subsets=kid_subsets, kid_subset_size=kid_subset_size,
                  iw_samples=iw_samples)
    if parzen:
        check_parzen_options(parzen_samples, parzen_val_images)
    check_diagnostics(feature_extractor, num_samples, neighbours, neighbours_k,
                      memorization_percentile, mode_coverage, mode_threshold)
    checkpoints = find_checkpoints(ckpt_path)
    single = len(checkpoints) == 1
    if out is not None and not single:
        raise ValueError(f"--out names one JSON but {ckpt_path} holds {len(checkpoints)} "
                         "checkpoints; drop --out (each JSON goes to <run>/eval/)")
    kind = feature_extractor.partition(":")[0]

    def json_path(ckpt, paired: dict | None = None) -> Path:
        """``--out``, else ``<run>/eval/<extractor>_<split>_<n>.json``; a paired model's is
        named after what it was scored on (its protocol, the test split, the pairs)."""
        name = "" if single else f"_{ckpt.path.stem}"
        stem = (f"{paired['feature_extractor_spec']}_test_{paired['num_samples']}" if paired
                else f"{kind}_{reference}_{num_samples}" if num_samples else "likelihood_test")
        return Path(out) if out else (run_config_path(ckpt.path).parent / "eval"
                                      / f"{stem}{name}.json")

    for ckpt in checkpoints:  # every output is checked before any work
        check_file_writable(json_path(ckpt), "--out")
    fabric = _fabric(accelerator, devices)
    evaluator, done = None, []
    rank0 = fabric.global_rank == 0
    with RunRecorder(protocol_name(kind, reference, num_samples)) as recorder:
        bar = tqdm(checkpoints, desc="checkpoints", unit="ckpt",
                   disable=single or not progress or not rank0)
        for ckpt in bar:
            started = time.perf_counter()
            model, datamodule = load_run(str(ckpt.path), run_config, data_dir, trust_checkpoint)
            if getattr(model, "paired_eval", None) is not None:  # image-to-image: PSNR/SSIM/...
                _check_paired_options(model, num_samples=num_samples, parzen=parzen,
                                      neighbours=neighbours,
                                      mode_coverage=mode_coverage, seeds=seeds,
                                      reference=explicit_reference, protocol=run_protocol.name)
                result = _evaluate_paired(model, datamodule, feature_extractor, weights_path,
                                          trust_checkpoint, lpips_weights, lpips_net,
                                          num_samples, batch_size, seed, fabric,
                                          progress and single, ckpt.path)
                generic = protocol_name(result["feature_extractor_spec"], "test",
                                        result["num_samples"])
                paired = result
            else:
                paired, generic = None, protocol_name(kind, reference, num_samples)
                if num_samples == 0:  # the likelihoods alone: no extractor, no reference
                    _check_something_to_compute(model, parzen)
                else:
                    _check_sample_count(num_samples, isc_splits)
                if evaluator is None and num_samples:  # one extractor and reference for all
                    extractor = build_extractor(feature_extractor, weights_path, trust_checkpoint)
                    evaluator = SpreadEvaluator(extractor, batch_size=batch_size, cache_dir=cache_dir,
                                                isc_splits=isc_splits, kid_subsets=kid_subsets,
                                                kid_subset_size=kid_subset_size, seeds=seeds)
                    evaluator.keep_generated = diagnostics_wanted(neighbours, mode_coverage)
                    _check_cache_writable(evaluator, datamodule, reference)
                # Parzen first: its data checks are cheap and fail before the long feature work.
                extra = (parzen_metrics(model, datamodule, parzen_samples, parzen_val_images, seed,
                                        batch_size, fabric.device, progress=progress and rank0)
                         if parzen else {})
                result = _evaluate_model(model, datamodule, evaluator, ckpt.path, feature_extractor,
                                         reference, num_samples, seed, batch_size, isc_splits,
                                         kid_subsets, iw_samples, fabric, progress and single)
                result.update(extra)
                if evaluator is not None:
                    result.update(diagnose(
                        model, datamodule, evaluator, json_path(ckpt), reference=reference,
                        num_samples=num_samples, seed=seed, batch_size=batch_size,
                        device=fabric.device, rank0=rank0, progress=progress and single,
                        neighbours=neighbours, neighbours_k=neighbours_k,
                        memorization_percentile=memorization_percentile,
                        mode_coverage=mode_coverage, mode_threshold=mode_threshold))
            # Last: every metric is in `result` when the published numbers are matched.
            result.update(run_protocol.record())
            result.update(published_for(result, model, datamodule, run_protocol))
            result["elapsed_s"] = round(time.perf_counter() - started, 2)
            # The code behind the numbers (torch-fidelity's features and formulas, the device).
            result["versions"] = versions(device=fabric.device, world_size=fabric.world_size)
            # The names the numbers are filed under (results.jsonl, W&B eval/<name>/...): the
            # preset's for the metrics it defines when all its settings held, else
            # <extractor>-<split>-<n>; "results_protocol" is the first (the sample metrics'
            # when there are any). ("protocol" is the --protocol preset asked for, or null.)
            result["results_protocols"] = run_protocol.filing(result, generic)
            result["results_protocol"] = next(iter(result["results_protocols"]))
            if rank0:
                path = json_path(ckpt, paired)
                if paired is not None:  # named only now: checked as the generic name was
                    check_file_writable(path, "--out")
                result["json_path"] = str(path)
                # Printed first: a write that fails still leaves the numbers on the screen.
                if single:
                    print(format_table(result), flush=True)
                else:
                    bar.write(summary_line(ckpt, result))
                _write_json(path, result)
                recorder.record(ckpt, result)
            done.append((ckpt, result))
            del model
    if rank0:
        if not single:
            print(checkpoints_table(done), flush=True)
        print("\n".join(recorder.lines), flush=True)
    return done[0][1] if single else [result for _, result in done]


def _write_json(path: Path, result: dict) -> None:
    text = json.dumps(result, indent=2) + "\n"
    try:
        atomic_write(path, lambda tmp: Path(tmp).write_text(text))
    except OSError as err:
        raise ResultsNotSavedError(
            f"could not write the results to {path} ({err.strerror or err}); they are "
            "printed above") from None


def _evaluate_model(model, datamodule, evaluator, ckpt_path, feature_extractor, reference,
                    num_samples, seed, batch_size, isc_splits, kid_subsets, iw_samples, fabric,
                    progress) -> dict:
    model.to(fabric.device)
    # evaluator None (--num_samples 0): no sample metrics, no extractor, no reference.
    sampled = {"feature_extractor": "none", "feature_extractor_spec": None, "reference": None}
    if evaluator is not None:
        try:
            sampled = evaluator.evaluate(model, datamodule, reference, num_samples, seed=seed,
                                         device=fabric.device, progress=progress)
        except NotImplementedError as err:  # e.g. the plain Autoencoder: no prior to sample from
            raise ValueError(_cannot_sample(model, err)) from err
        sampled.update({"feature_extractor": evaluator.extractor.name,
                        "feature_extractor_spec": feature_extractor,
                        "reference": evaluator.reference_info, "isc_splits": isc_splits,
                        "kid_subsets": kid_subsets})
    result = {
        **sampled,
        "num_samples": num_samples,
        "model": type(model).__module__ + "." + type(model).__name__,
        "checkpoint": str(Path(ckpt_path).resolve()),
        "seed": seed,
        "batch_size": batch_size,
        "devices": fabric.world_size,
    }
    if hasattr(model, "importance_weighted_bound"):
        result.update(likelihood_metrics(model, datamodule, "test", iw_samples, batch_size, seed,
                                         fabric.device, progress))
    elif hasattr(model, "nll"):  # autoregressive (PixelCNN): the exact test NLL
        result.update(nll_metrics(model, datamodule, "test", batch_size, fabric.device, progress))
    return result


def _check_paired_options(model, *, num_samples: int, parzen: bool, neighbours: int,
                          mode_coverage: bool, seeds: int, reference: str | None,
                          protocol: str | None) -> None:
    """Refuse, in one line, the sampling-only options a paired model cannot honour (it is scored
    on the test pairs, not by sampling), instead of ignoring them. ``reference`` is the split
    given explicitly (``None``: the default); a ``protocol`` preset is a benchmark of sample
    metrics, so its split is not reported as the user's."""
    if num_samples == 0:
        raise ValueError(f"--num_samples 0 (no sample metrics) leaves nothing to compute for "
                         f"{type(model).__name__}, an image-to-image model scored on "
                         "--num_samples test pairs (PSNR, SSIM, LPIPS); use 2 or more")
    preset_split = PROTOCOLS[protocol].settings.get("reference") if protocol else None
    given = [flag for flag, on in (
        (f"--protocol {protocol}", protocol is not None),
        ("--parzen", parzen), (f"--neighbours {neighbours}", neighbours),
        ("--mode_coverage", mode_coverage), (f"--seeds {seeds}", seeds > 1),
        (f"--reference {reference}", reference not in (None, "test", preset_split))) if on]
    if given:
        raise ValueError(f"{', '.join(given)}: not available for {type(model).__name__}, an "
                         "image-to-image model scored on the test pairs (PSNR, SSIM, LPIPS; "
                         "--reference test or none); drop these options")


def _evaluate_paired(model, datamodule, feature_extractor, weights_path, trust_checkpoint,
                     lpips_weights, lpips_net, num_samples, batch_size, seed, fabric,
                     progress, ckpt_path) -> dict:
    """PSNR / SSIM / LPIPS (/ FID) of a paired image-to-image model on the test pairs."""
    from lightning_gen.metrics.paired import build_lpips, paired_metrics, protocol_description

    options = dict(model.paired_eval)
    extractor = (build_extractor(feature_extractor, weights_path, trust_checkpoint)
                 if options.get("fid") else None)
    dataset = load_split(datamodule, "test")
    model.to(fabric.device)
    metrics = paired_metrics(model, dataset, batch_size=batch_size, device=fabric.device,
                             num_pairs=num_samples, lpips=build_lpips(lpips_weights, lpips_net),
                             extractor=extractor, progress=progress, seed=seed)
    n = metrics["num_pairs"]
    return {
        **metrics,
        "paired_eval": options,
        "paired_protocol": protocol_description(options, lpips_net, lpips_weights,
                                                extractor.name if extractor else None),
        "num_samples": n,
        "feature_extractor": extractor.name if extractor else "none",
        "feature_extractor_spec": paired_spec(feature_extractor if extractor else None,
                                              lpips_net, lpips_weights,
                                              "lpips" in metrics),
        "lpips_net": lpips_net,
        "lpips_weights": lpips_weights or "published",
        "reference": {"dataset": type(datamodule).__name__, "split": "test", "num_images": n},
        "model": type(model).__module__ + "." + type(model).__name__,
        "checkpoint": str(Path(ckpt_path).resolve()),
        "seed": seed,
        "batch_size": batch_size,
        "devices": fabric.world_size,
    }


def paired_spec(feature_extractor: str | None, lpips_net: str, lpips_weights: str | None,
                lpips_computed: bool) -> str:
    """The protocol prefix of paired results (``eval/<prefix>-test-<n>/...`` in
    ``results.jsonl`` and W&B): ``paired``, ``-<extractor kind>`` with FID, and the LPIPS
    network and weights unless they are the published AlexNet's (a weights file is taken to
    hold the published weights): ``paired-classifier-lpips_vgg``, ``paired-lpips_random``,
    ``paired-lpips_vgg_random``."""
    spec = "paired" + (f"-{feature_extractor.partition(':')[0]}" if feature_extractor else "")
    lpips = [lpips_net] if lpips_net != "alex" else []
    lpips += ["random"] if lpips_weights == "random" else []
    if lpips_computed and lpips:
        spec += "-lpips_" + "_".join(lpips)
    return spec


#: ``k`` of precision/recall's k-NN balls (GenerativeEvaluator's default): each set needs
#: ``k + 1`` samples.
PRC_NEIGHBORHOOD = 3


def _check_num_samples(num_samples: int, isc_splits: int) -> None:
    """Refuse, before any work, sample counts no metric can be computed from (FID needs 2)."""
    if isc_splits < 1:
        raise ValueError(f"--isc_splits must be at least 1, got {isc_splits}")
    if num_samples < 2 and num_samples != 0:
        raise ValueError(f"--num_samples {num_samples} is too few: use 2 or more (papers use "
                         "50000), or 0 for no sample metrics (a likelihood model's test "
                         "likelihood, --parzen true)")


def _check_no_sample_options(*, seeds: int, neighbours: int, mode_coverage: bool) -> None:
    """Refuse, before any work, options about samples with ``--num_samples 0``."""
    given = [flag for flag, on in ((f"--seeds {seeds}", seeds > 1),
                                   (f"--neighbours {neighbours}", neighbours > 0),
                                   ("--mode_coverage", mode_coverage)) if on]
    if given:
        raise ValueError(f"{', '.join(given)}: about the sample metrics, which --num_samples 0 "
                         "does not compute; drop them or use --num_samples 2 or more")


def _has_likelihood(model) -> bool:
    """A VAE/CVAE (ELBO/IWAE) or an autoregressive model (exact NLL)."""
    return hasattr(model, "importance_weighted_bound") or hasattr(model, "nll")


def _check_something_to_compute(model, parzen: bool) -> None:
    """``--num_samples 0`` computes no sample metrics: refuse it where nothing else would be."""
    if not (parzen or _has_likelihood(model)):
        raise ValueError(f"--num_samples 0 (no sample metrics) leaves nothing to compute for "
                         f"{type(model).__name__}, which has no test likelihood: add --parzen "
                         "true (its samples: --parzen_samples) or use --num_samples 2 or more")


def _check_counts(*, kid_subsets: int, kid_subset_size: int, iw_samples: int) -> None:
    """Refuse counts whose metric cannot be computed (KID of no subset, or of one-sample
    subsets, is NaN; a negative IWAE k was taken for 0), before any work."""
    if kid_subsets < 1:
        raise ValueError(f"--kid_subsets must be at least 1, got {kid_subsets} (torch-fidelity "
                         "uses 100)")
    if kid_subset_size < 2:
        raise ValueError(f"--kid_subset_size must be at least 2 (KID's unbiased MMD needs two "
                         f"samples per subset), got {kid_subset_size} (torch-fidelity uses 1000)")
    if iw_samples < 0:
        raise ValueError(f"--iw_samples must be 0 (ELBO only) or more, got {iw_samples} "
                         "(Burda et al. 2016 use 5000)")


def _check_sample_count(num_samples: int, isc_splits: int) -> None:
    """Refuse sample counts the sample metrics cannot be computed from: the Inception Score of
    a split of one sample is exactly 1 whatever the model (its KL term is 0), so each split
    needs 2; precision/recall needs ``k + 1``. (Paired models score test pairs: no IS.)"""
    minimum = max(2 * isc_splits, PRC_NEIGHBORHOOD + 1)
    if num_samples < minimum:
        raise ValueError(
            f"--num_samples {num_samples} is too few: the Inception Score needs 2 samples per "
            f"split (--isc_splits {isc_splits}; one gives exactly 1) and precision/recall "
            f"{PRC_NEIGHBORHOOD + 1}; use --num_samples {minimum} or more, or fewer "
            "--isc_splits (papers use 50000 samples, 10 splits)")


def _check_cache_writable(evaluator, datamodule, split: str) -> None:
    """The reference cache entry exists, or its folder can be written."""
    if split not in ("train", "test", "val"):
        return  # load_split names the valid splits when the evaluation starts
    dataset = load_split(datamodule, split)
    entry = evaluator.cache.path(evaluator.reference_key(datamodule, split, len(dataset)))
    if not entry.is_file():
        check_dir_writable(evaluator.cache.cache_dir, "--cache_dir")


def format_table(result: dict) -> str:
    rows = [("FID", "fid"), ("IS (mean)", "is_mean"), ("IS (std)", "is_std"),
            ("KID (mean)", "kid_mean"), ("KID (std)", "kid_std"), ("precision", "precision"),
            ("recall", "recall"), ("density", "density"), ("coverage", "coverage"),
            ("GAN-test accuracy", "gan_test"), ("test ELBO (nats)", "test_elbo_nats"),
            ("test IWAE (nats)", "test_iwae_nats"), ("test NLL (nats)", "test_nll_nats"),
            ("test bits/dim", "test_bits_per_dim"), ("Parzen LL (nats)", "parzen_ll_nats"),
            ("Parzen LL stderr", "parzen_ll_stderr"), ("Parzen sigma", "parzen_sigma"),
            ("memorized (feat.)", "memorization_fraction"),
            ("memorized (pixels)", "memorization_fraction_pixels"),
            ("modes covered", "modes_covered"), ("mode KL (nats)", "mode_kl"),
            ("PSNR (dB)", "psnr"), ("SSIM", "ssim"), ("LPIPS", "lpips")]
    lines = metric_lines(rows, result)
    lines += [f"{label:<18} not computed: {why}"
              for label, why in result.get("not_computed", {}).items()]
    ref = result["reference"]
    if ref is None:  # --num_samples 0
        sampled = [f"{'samples':<18} 0 (no sample metrics: no extractor, no reference)"]
    else:
        sampled = [f"{'samples':<18} {result['num_samples']}",
                   f"{'extractor':<18} {result['feature_extractor']}",
                   f"{'reference':<18} {ref['dataset']} {ref['split']} ({ref['num_images']} "
                   f"images{', cached' if ref.get('from_cache') else ''})"]
    lines += [f"{'protocol':<18} {protocol_line(result)}",
              *([f"{'seeds':<18} {', '.join(map(str, result['seeds']))}"]
                if result.get("seeds") else []),
              *([f"{'paired protocol':<18} {result['paired_protocol']}"]
                if result.get("paired_protocol") else []),
              *([f"{'likelihood':<18} {result['likelihood_of']}"]
                if result.get("likelihood_of") else []),
              *sampled,
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
    overwrite: bool = False,
    trust_checkpoint: bool = False,
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
        overwrite: Write into a folder that is not empty, deleting the samples an earlier
            ``sample`` wrote there (``NNNNNN.png``, ``samples.npz``, ``labels.txt``) first.
        trust_checkpoint: Load the checkpoint (and the classes it names) even if it holds more
            than the suite's checkpoints do; only for files whose origin you trust.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be positive, got {num_samples}")
    folder = check_sample_folder(out, overwrite)
    fabric = _fabric(accelerator, 1)
    model, _ = load_run(ckpt_path, run_config, trust_checkpoint=trust_checkpoint)
    model.to(fabric.device)
    conditional = is_conditional(model)
    if class_label is not None and not conditional:
        raise ValueError(f"{type(model).__name__} is not class-conditional; drop --class_label")
    if class_label is not None and not 0 <= class_label < int(model.hparams.num_classes):
        raise ValueError(f"--class_label {class_label} is not a class of this "
                         f"{type(model).__name__}: its classes are 0..."
                         f"{int(model.hparams.num_classes) - 1}")
    if overwrite:
        remove_old_samples(folder)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    try:
        with _stopped_by_sigterm():
            _write_samples(model, folder, created, written, fabric, num_samples, batch_size, seed,
                           class_label, npz, progress)
    except KeyboardInterrupt as err:
        # A partial set would pass for a whole one (`fidelity --input1 DIR`): none is left.
        images = sum(1 for path in written if path.suffix == ".png" and path.is_file())
        for path in written:
            path.unlink(missing_ok=True)
        for tmp in folder.glob(".[0-9]*.png.tmp"):
            tmp.unlink(missing_ok=True)
        if created and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
        raise Interrupted(
            f"sample stopped by {getattr(err, 'signal_name', 'SIGINT')} after {images} of "
            f"{num_samples} samples; removed them from {folder} (an incomplete set is not "
            "left behind): run it again", getattr(err, "exit_code", 130)) from None
    print(f"Wrote {num_samples} samples to {folder}", flush=True)
    return folder


class Interrupted(Exception):
    """A command stopped by Ctrl-C / SIGTERM: one line for the user, and the exit status."""

    def __init__(self, message: str, exit_code: int = 130) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class _Terminated(KeyboardInterrupt):
    signal_name, exit_code = "SIGTERM", 143


class _stopped_by_sigterm:
    """SIGTERM (``timeout``, a scheduler) raises :class:`_Terminated` as Ctrl-C raises
    KeyboardInterrupt, so the cleanup of an interrupted command runs for both (main thread
    only; the previous handler is restored)."""

    def __enter__(self):
        import signal
        import threading

        self._previous = None
        if threading.current_thread() is threading.main_thread():
            def stop(signum, frame):
                raise _Terminated()

            self._previous = signal.signal(signal.SIGTERM, stop)
        return self

    def __exit__(self, *exc) -> None:
        import signal

        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def _save_png(image: np.ndarray, path: Path) -> None:
    """``path`` appears whole or not at all: written to a hidden temporary name beside it (not
    matched by ``*.png``), then renamed."""
    tmp = path.with_name(f".{path.name}.tmp")
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(tmp, format="PNG")
    os.replace(tmp, path)


def _write_samples(model, folder: Path, created: bool, written: list[Path], fabric,
                   num_samples: int, batch_size: int, seed: int, class_label: int | None,
                   npz: bool, progress: bool) -> None:
    """The sample loop of :func:`sample`; every file it writes is appended to ``written``."""
    conditional = is_conditional(model)
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
            written.append(folder / f"{i:06d}.png")
            _save_png(image, written[-1])
        if npz:
            arrays.append(images)
    if all_labels:
        labels = torch.cat(all_labels).numpy()
        text = "\n".join(str(int(y)) for y in labels) + "\n"
        written.append(folder / "labels.txt")
        atomic_write(written[-1], lambda tmp: Path(tmp).write_text(text))
    if npz:
        extra = {"labels": torch.cat(all_labels).numpy()} if all_labels else {}

        def write(tmp: str) -> None:
            with open(tmp, "wb") as f:
                np.savez(f, arr_0=np.concatenate(arrays), **extra)

        written.append(folder / "samples.npz")
        atomic_write(written[-1], write)


def main(args: list[str]) -> None:
    """``lightning-gen evaluate ...`` / ``lightning-gen sample ...`` (``args`` without the
    program name)."""
    import sys

    from jsonargparse import CLI

    try:
        commands = {"evaluate": evaluate, "sample": sample}
        # A --protocol's settings become the defaults: explicit options beat them.
        with _stopped_by_sigterm():
            CLI(commands, args=args, as_positional=False,
                set_defaults=cli_defaults(commands, args))
    except ResultsNotSavedError as err:  # the work is done and printed; only the file is missing
        print(f"lightning-gen: error: {err}", file=sys.stderr)
        sys.exit(1)
    except Interrupted as err:
        print(f"lightning-gen: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
    except KeyboardInterrupt as err:  # evaluate writes every file whole (atomically) or not
        print(f"lightning-gen: stopped by {getattr(err, 'signal_name', 'SIGINT')}; the checkpoint "
              "being evaluated has no results (no JSON, no results.jsonl row), those finished "
              "before it keep theirs", file=sys.stderr)
        sys.exit(getattr(err, "exit_code", 130))
