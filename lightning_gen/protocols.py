"""Named evaluation protocols (``lightning-gen evaluate --protocol NAME``) and the spread of
the sample metrics over seeds (``--seeds K``).

A protocol is a preset of ``evaluate``'s keyword arguments, the settings a known benchmark
measured its numbers with (sample count, reference split, extractor, ...). An option given
explicitly beats the preset: on the command line the preset becomes the parser's defaults
(:func:`cli_defaults`), so anything given on the command line or in a ``--config`` file wins;
in Python :func:`with_protocol` fills in only the arguments the caller did not pass.

``--seeds K`` repeats the sampling with ``K`` seeds. Repetition ``k`` uses base seed
``seed + k * n_batches`` (``n_batches = ceil(num_samples / batch_size)``), so its batches draw
seeds ``seed + k * n_batches + b``: no seed is used twice, and repetition ``k`` scores exactly
the samples ``evaluate --seed seed + k * n_batches`` (or ``sample``) would. The reference
features are computed once.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lightning_gen.eval_records import (
    LIKELIHOOD_METRICS,
    METRICS,
    SweepEvaluator,
    likelihood_protocols,
    metric_values,
    protocol_name,
)

#: The metrics of sampled evaluation (all but the test-split likelihoods and paired scores).
SAMPLE_METRICS = tuple(k for k in METRICS
                       if k not in LIKELIHOOD_METRICS and k not in ("psnr", "ssim", "lpips"))
#: The settings that fix the samples' protocol (``<extractor>-<reference>-<N>``).
SAMPLE_SETTINGS = ("num_samples", "reference", "feature_extractor")


@dataclass(frozen=True)
class Protocol:
    """A benchmark's evaluation settings: ``settings`` are keyword arguments of ``evaluate``.

    ``metrics``: the result keys it defines, which results.jsonl and W&B file under its name
    (every other metric keeps the name of the settings it was measured with); ``None``: the
    sample metrics when ``settings`` fix the samples' protocol (:data:`SAMPLE_SETTINGS`), else
    none."""

    name: str
    settings: Mapping[str, Any]
    summary: str  # what it measures, one line (docs table, README cells)
    source: str  # where the protocol is defined / used
    notes: str = ""
    metrics: tuple[str, ...] | None = None

    def names(self) -> tuple[str, ...]:
        """The metrics filed under this protocol's name when all its settings are in effect."""
        if self.metrics is not None:
            return self.metrics
        return SAMPLE_METRICS if all(k in self.settings for k in SAMPLE_SETTINGS) else ()


PROTOCOLS: dict[str, Protocol] = {p.name: p for p in [
    Protocol(
        "pytorch-gan-collections",
        {"num_samples": 50_000, "reference": "train", "feature_extractor": "inception",
         "isc_splits": 10},
        "Inception FID/IS of 50,000 samples vs the training split",
        "https://github.com/w86763777/pytorch-gan-collections",
        "FID against the statistics of the whole CIFAR-10 training set (50,000 images); IS in "
        "10 splits."),
    Protocol(
        "mimicry",
        {"num_samples": 50_000, "reference": "train", "feature_extractor": "inception",
         "isc_splits": 10},
        "Inception FID/IS of 50,000 samples vs 50,000 training images",
        "https://github.com/kwotsin/mimicry (Lee & Town 2020)",
        "Same settings as pytorch-gan-collections on CIFAR-10 (its training split has 50,000 "
        "images); on larger training splits (CelebA) Mimicry uses 50,000 of them, the suite "
        "all of them."),
    Protocol(
        "studiogan",
        {"num_samples": 10_000, "reference": "test", "feature_extractor": "inception",
         "isc_splits": 10},
        "Inception FID/IS of 10,000 samples vs the test split",
        "https://github.com/POSTECH-CVLab/PyTorch-StudioGAN (tables of 2021)",
        "StudioGAN's older CIFAR-10 tables: 10,000 generated vs the 10,000 test images."),
    Protocol(
        "inception-score-50k",
        {"num_samples": 50_000, "feature_extractor": "inception", "isc_splits": 10},
        "Inception Score of 50,000 samples in 10 splits (Salimans et al. 2016)",
        "https://arxiv.org/abs/1606.03498",
        "The IS of the GAN papers of 2016-2018 (e.g. WGAN-GP); the reference split does not "
        "enter the IS.", metrics=("is_mean", "is_std")),
    Protocol(
        "parzen-mnist",
        {"parzen": True, "parzen_samples": 10_000},
        "Gaussian Parzen-window log-likelihood of the MNIST test set from 10,000 samples",
        "Goodfellow et al. 2014 (https://arxiv.org/abs/1406.2661), after Breuleux et al. 2011",
        "sigma chosen by cross-validation on held-out data; nats per test image, +- standard "
        "error over the test images.",
        metrics=("parzen_ll_nats", "parzen_ll_stderr", "parzen_sigma")),
    Protocol(
        "binarized-mnist-iwae",
        {"iw_samples": 5000},
        "IWAE bound with k = 5,000 importance samples on the binarized MNIST test set",
        "Burda et al. 2016 (https://arxiv.org/abs/1509.00519)",
        "The data's binarization is the run's data setting, not an evaluate option.",
        metrics=("test_elbo_nats", "test_iwae_nats")),
    Protocol(
        "exact-test-nll",
        {},
        "exact test-set negative log-likelihood (autoregressive models)",
        "van den Oord et al. 2016 (https://arxiv.org/abs/1601.06759)",
        "Sets nothing: an exact likelihood of the whole test split does not depend on evaluate's "
        "settings; named so published rows can say how they were measured.",
        metrics=("test_nll_nats", "test_bits_per_dim")),
]}


def markdown() -> str:
    """The protocols as a Markdown table (docs/evaluation.md holds it)."""
    lines = ["| `--protocol` | sets | measures | defined by |", "| --- | --- | --- | --- |"]
    for p in PROTOCOLS.values():
        sets = ", ".join(f"`{k}={v}`" for k, v in p.settings.items()) or "nothing"
        lines.append(f"| `{p.name}` | {sets} | {p.summary}. {p.notes} | {p.source} |")
    return "\n".join(lines)


def evaluate_parameters(func: Callable | None = None) -> dict[str, inspect.Parameter]:
    """The keyword arguments of ``evaluate`` (``func``), as this installation has them."""
    if func is None:
        from lightning_gen.evaluate import evaluate as func
    return dict(inspect.signature(func).parameters)


def get_protocol(name: str) -> Protocol:
    if name not in PROTOCOLS:
        raise ValueError(f"unknown --protocol {name!r}; choose one of {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name]


def preset(name: str | None, parameters: Mapping[str, inspect.Parameter] | None = None) -> dict:
    """The keyword arguments protocol ``name`` sets (``{}`` for ``None``); refuses a protocol
    that sets an argument this ``evaluate`` does not take, rather than applying half of it."""
    if name is None:
        return {}
    protocol = get_protocol(name)
    parameters = evaluate_parameters() if parameters is None else parameters
    missing = [k for k in protocol.settings if k not in parameters]
    if missing:
        raise ValueError(f"--protocol {name} sets {', '.join(missing)}, which this version of "
                         "lightning-gen evaluate does not have")
    return dict(protocol.settings)


def with_protocol(func: Callable) -> Callable:
    """Let ``func(..., protocol=NAME)`` take the protocol's settings for every argument the
    caller did not pass (explicit arguments win, whatever their value)."""
    signature = inspect.signature(func)

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        given = signature.bind(*args, **kwargs).arguments
        settings = preset(given.get("protocol"), signature.parameters)
        return func(*args, **{**{k: v for k, v in settings.items() if k not in given}, **kwargs})

    return wrapper


def cli_defaults(components: dict, args: list[str], command: str = "evaluate") -> dict:
    """``set_defaults`` for jsonargparse's ``CLI(components, args=args)``: the named protocol's
    settings as ``<command>.<key>`` defaults, so that every value given on the command line or
    in a ``--config`` file beats the preset. The arguments are parsed once to find the protocol
    (it may come from a config file)."""
    if not args or args[0] != command:
        return {}
    from jsonargparse import CLI, capture_parser

    # Flags that print and exit are left out of this first parse (the real one handles them:
    # `--protocol X --print_config` shows X's settings); a parse that fails here is reported by
    # the real one.
    first = [a for a in args[1:]
             if a not in ("-h", "--help") and not a.startswith("--print_config")]
    parser = capture_parser(lambda: CLI(components[command], args=first, as_positional=False))
    parser.exit_on_error = False
    try:
        name = parser.parse_args(first).protocol
    except Exception:  # noqa: BLE001 - an invalid command line: the real parse reports it
        return {}
    return {f"{command}.{k}": v
            for k, v in preset(name, evaluate_parameters(components[command])).items()}


@dataclass
class ProtocolRun:
    """What ``evaluate`` records about its protocol: the name given, the preset settings that
    were overridden, and every setting in effect (for matching published numbers)."""

    name: str | None
    settings: dict = field(default_factory=dict)
    overrides: dict = field(default_factory=dict)

    @classmethod
    def of(cls, arguments: Mapping[str, Any]) -> ProtocolRun:
        """From ``evaluate``'s arguments (its ``locals()`` before any other statement)."""
        seeds = arguments.get("seeds", 1)
        if not isinstance(seeds, int) or seeds < 1:
            raise ValueError(f"--seeds must be a positive integer, got {seeds}")
        name = arguments.get("protocol")
        settings = {k: v for k, v in arguments.items() if not k.startswith("_")}
        wanted = dict(get_protocol(name).settings) if name else {}
        overrides = {k: settings.get(k) for k, v in wanted.items() if settings.get(k) != v}
        return cls(name, settings, overrides)

    @property
    def exact(self) -> bool:
        """The named protocol's settings are all in effect."""
        return self.name is not None and not self.overrides

    def satisfies(self, protocol: str) -> bool:
        """Every setting of ``protocol`` is in effect (named or not)."""
        wanted = PROTOCOLS[protocol].settings if protocol in PROTOCOLS else None
        return wanted is not None and all(k in self.settings and self.settings[k] == v
                                          for k, v in wanted.items())

    def record(self) -> dict:
        out: dict[str, Any] = {"protocol": self.name}
        if self.overrides:
            out["protocol_overrides"] = dict(self.overrides)
        return out

    def filing(self, result: dict, generic: str) -> dict[str, list[str]]:
        """The names ``result``'s metrics are filed under in results.jsonl and W&B,
        ``{name: [metric, ...]}``: the named protocol's for the metrics it defines
        (:meth:`Protocol.names`) when all its settings are in effect; for the others
        ``generic`` (``<extractor>-<split>-<N>``) for the sample metrics, and the likelihoods'
        own names (:func:`~lightning_gen.eval_records.likelihood_protocols`: ``iwae_k64-test``,
        ...), which depend on neither the extractor nor the sample count. (A likelihood
        protocol does not name the FID of whatever samples were drawn beside it, nor
        inception-score-50k an FID whose reference split it does not fix.)"""
        named = set(PROTOCOLS[self.name].names()) if self.exact and self.name in PROTOCOLS else ()
        own = likelihood_protocols(result)
        out: dict[str, list[str]] = {}
        for key in metric_values(result):
            out.setdefault(self.name if key in named else own.get(key, generic), []).append(key)
        return out or {generic: []}


def protocol_line(result: dict) -> str:
    """The protocol of an evaluate result, for its table: the names its metrics are filed
    under, the sample metrics' bare, the others with their metrics
    (``classifier-test-20; elbo-test: test_elbo_nats; iwae_k64-test: test_iwae_nats``), and
    what a named ``--protocol`` did: ``pytorch-gan-collections (inception-train-50000)``,
    ``inception-train-40 (pytorch-gan-collections with num_samples=40)``,
    ``classifier-test-100; exact-test-nll: test_nll_nats, test_bits_per_dim``,
    ``classifier-test-100 (exact-test-nll defines none of these metrics)``."""
    generic = None
    if result.get("num_samples") and result.get("reference"):
        kind = str(result.get("feature_extractor_spec", "")).partition(":")[0]
        generic = protocol_name(kind, result["reference"]["split"], result["num_samples"])
    name, overrides = result.get("protocol"), result.get("protocol_overrides")
    filing = result.get("results_protocols") or {name or generic: []}
    listed = "; ".join(n if n == generic or len(filing) == 1 else f"{n}: {', '.join(keys)}"
                       for n, keys in filing.items())
    if name is None:
        return listed
    if overrides:
        return f"{listed} ({name} with {', '.join(f'{k}={v}' for k, v in overrides.items())})"
    if list(filing) == [name]:
        return f"{name} ({generic})" if generic else name
    if name not in filing:
        return f"{listed} ({name} defines none of these metrics)"
    return listed


def metric_lines(rows: list[tuple[str, str]], result: dict) -> list[str]:
    """The metric rows of evaluate's table: the value (the mean over seeds), with ``--seeds``
    the std and min, and the published number of a matching protocol and the difference."""
    spread, published = result.get("spread") or {}, result.get("published") or {}
    head = [f"{'metric':<18}", f"{'mean' if spread else 'value':<12}"]
    rule = ["-" * 18, "-" * 12]
    if spread:
        head += [f"{'std':<12}", f"{'min':<12}"]
        rule += ["-" * 12] * 2
    if published:
        head += [f"{'published':<12}", f"{'difference':<12}", "source"]
        rule += ["-" * 12] * 2 + ["-" * 24]
    lines = [" ".join(head).rstrip(), " ".join(rule)]
    for label, key in rows:
        if key not in result:
            continue
        cells = [f"{label:<18}", f"{result[key]:<12.6g}"]
        if spread:
            s = spread.get(key)
            cells += [f"{s['std']:<12.4g}", f"{s['min']:<12.6g}"] if s else [" " * 12] * 2
        if key in published:
            p = published[key]
            cells += [f"{p['value']:<12.6g}", f"{p['difference']:<+12.4g}",
                      f"{p['source']} ({p['protocol']})"]
        lines.append(" ".join(cells).rstrip())
    return lines


# ----------------------------------------------------------------------------------------------
# Spread over seeds


def repetition_seeds(seed: int, seeds: int, num_samples: int, batch_size: int) -> list[int]:
    """Base seeds of ``seeds`` repetitions: ``seed + k * n_batches``, disjoint batch seeds."""
    n_batches = math.ceil(num_samples / batch_size)
    return [seed + k * n_batches for k in range(seeds)]


def spread(values: list[float]) -> dict:
    """``values`` with their mean, standard deviation (sample std, ``ddof=1``) and minimum."""
    array = np.asarray(values, dtype=float)
    return {"values": [float(v) for v in array], "mean": float(array.mean()),
            "std": float(array.std(ddof=1)) if len(array) > 1 else 0.0,
            "min": float(array.min())}


class SpreadEvaluator(SweepEvaluator):
    """:class:`SweepEvaluator` whose :meth:`evaluate` repeats the sampling ``seeds`` times
    (:func:`repetition_seeds`) against one reference (kept in memory): the metrics of
    :data:`~lightning_gen.eval_records.METRICS` become their mean, with ``"seeds"`` and
    ``"spread"`` (``{metric: {"values", "mean", "std", "min"}}``) beside them."""

    def __init__(self, *args, seeds: int = 1, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if seeds < 1:
            raise ValueError(f"--seeds must be a positive integer, got {seeds}")
        self.seeds = seeds

    def evaluate(self, model, datamodule, split: str = "train", num_samples: int = 50_000,
                 seed: int = 0, device=None, progress: bool = False) -> dict:
        if self.seeds == 1:
            return super().evaluate(model, datamodule, split, num_samples, seed, device, progress)
        seeds = repetition_seeds(seed, self.seeds, num_samples, self.batch_size)
        runs, first_samples = [], None
        for s in seeds:
            runs.append(super().evaluate(model, datamodule, split,
                                                              num_samples, s, device, progress))
            if first_samples is None:  # --neighbours / --mode_coverage look at the first seed's
                first_samples = self.__dict__.get("last_generated")
        if first_samples is not None:
            self.last_generated = first_samples
        result = dict(runs[0])
        keys = [k for k in METRICS if all(isinstance(r.get(k), (int, float)) for r in runs)]
        result["spread"] = {k: spread([r[k] for r in runs]) for k in keys}
        result.update({k: result["spread"][k]["mean"] for k in keys})
        result["seeds"] = seeds
        return result
