"""What a sweep searches and what it optimises, checked against the experiment before any trial.

* :func:`load_space` reads a search space: a YAML of dotted config keys to distributions in
  the words of Optuna's ``suggest_*`` arguments, and :class:`Param` turns each into CLI options.
* :func:`check_space` checks every key against the experiment's resolved config and every
  boundary value (``low``, ``high``, each choice) against the CLI's parser.
* :func:`logged_names` says which metric names an experiment logs, from its config alone, so
  an objective it does not log is refused before the first trial.
"""

from __future__ import annotations

import difflib
import importlib
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from lightning_gen.callbacks.metrics_file import _QUALITY_KEYS

TYPES = {"float": ("low", "high", "log", "step"), "int": ("low", "high", "log", "step"),
         "categorical": ("choices",)}


@dataclass
class Param:
    """One searched value: the Optuna parameter ``name`` and the config keys it sets.

    ``keys`` are canonical dotted config keys (``model.init_args.lr_g``); a key may end in a
    list index (``model.init_args.betas.0``: Adam's beta1)."""

    name: str
    type: str
    args: dict[str, Any]
    keys: list[str]

    def suggest(self, trial) -> Any:
        """The trial's value (Optuna's ``suggest_float`` / ``suggest_int`` /
        ``suggest_categorical``)."""
        if self.type == "categorical":
            return trial.suggest_categorical(self.name, self.args["choices"])
        suggest = trial.suggest_float if self.type == "float" else trial.suggest_int
        return suggest(self.name, **self.args)

    def boundary_values(self) -> list[Any]:
        if self.type == "categorical":
            return list(self.args["choices"])
        return [self.args["low"], self.args["high"]]


def load_space(path: str | Path) -> list[Param]:
    """The parameters of a search-space YAML::

        model.init_args.lr_g: {type: float, low: 0.0001, high: 0.001, log: true}
        model.init_args.n_critic: {type: int, low: 1, high: 5, step: 1}
        trainer.precision: {type: categorical, choices: [32-true, bf16-mixed]}
        lr: {type: float, low: 0.0001, high: 0.001, log: true,
             keys: [model.init_args.lr_g, model.init_args.lr_d]}   # one value, two keys

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a mapping of keys to distributions, or a distribution Optuna would
            refuse (``low > high``, ``log`` with ``low <= 0``, no ``choices``, ...).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--space {path}: no such file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"--space {path} is not valid YAML: {err}") from err
    if not isinstance(data, dict) or not data:
        raise ValueError(f"--space {path}: expected a mapping of dotted config keys to "
                         "distributions, e.g. 'model.init_args.lr_g: {type: float, low: 1.0e-4, "
                         "high: 1.0e-3, log: true}'")
    return [_param(path, str(name), spec) for name, spec in data.items()]


def _number(path: Path, name: str, field: str, value: Any, kind: str) -> float | int:
    try:  # YAML 1.1 reads 1e-4 (no dot) as a string
        number = float(value) if kind == "float" else value
    except (TypeError, ValueError):
        number = None
    if kind == "int" and not (isinstance(number, int) and not isinstance(number, bool)):
        number = None
    if number is None or (isinstance(number, float) and not math.isfinite(number)):
        what = "an integer" if kind == "int" else "a number"
        raise ValueError(f"--space {path}: {name}: {field} must be {what}, got {value!r}")
    return number


def _param(path: Path, name: str, spec: Any) -> Param:
    where = f"--space {path}: {name}"
    if not isinstance(spec, dict) or spec.get("type") not in TYPES:
        raise ValueError(f"{where}: expected {{type: float|int|categorical, ...}}, got {spec!r}")
    kind = spec["type"]
    unknown = set(spec) - {"type", "keys", *TYPES[kind]}
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {', '.join(sorted(unknown))} for type "
                         f"{kind} (fields: {', '.join(TYPES[kind])}, keys)")
    keys = spec.get("keys", [name])
    if isinstance(keys, str):
        keys = [keys]
    if not isinstance(keys, list) or not keys or not all(isinstance(k, str) for k in keys):
        raise ValueError(f"{where}: keys must be a list of dotted config keys")
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices or not all(
                c is None or isinstance(c, (bool, int, float, str)) for c in choices):
            raise ValueError(f"{where}: choices must be a non-empty list of numbers, strings, "
                             "booleans or null")
        return Param(name, kind, {"choices": choices}, keys)
    for field in ("low", "high"):
        if field not in spec:
            raise ValueError(f"{where}: {field} is missing")
    args = {f: _number(path, name, f, spec[f], kind) for f in ("low", "high")}
    args["log"] = bool(spec.get("log", False))
    if spec.get("step") is not None:
        args["step"] = _number(path, name, "step", spec["step"], kind)
    if args["low"] > args["high"]:
        raise ValueError(f"{where}: low ({args['low']}) is above high ({args['high']})")
    if args["log"] and (args["low"] <= 0 or args.get("step") not in (None, 1)):
        raise ValueError(f"{where}: log: true needs low > 0 and no step (other than 1 for int)")
    return Param(name, kind, args, keys)


# --- keys ----------------------------------------------------------------------------------
def _node(config: Any, parts: Sequence[str]) -> tuple[bool, Any]:
    for part in parts:
        if isinstance(config, dict) and part in config:
            config = config[part]
        elif isinstance(config, (list, tuple)) and part.isdigit() and int(part) < len(config):
            config = config[int(part)]
        else:
            return False, None
    return True, config


def canonical_key(config: dict, key: str) -> str | None:
    """``key`` as it stands in the resolved ``config``; ``data.batch_size`` (LightningCLI's
    shorthand) becomes ``data.init_args.batch_size``. ``None`` if the config has no such key."""
    parts = key.split(".")
    candidates = [parts]
    if len(parts) > 1 and parts[1] != "init_args":
        candidates.append([parts[0], "init_args", *parts[1:]])
    for candidate in candidates:
        found, value = _node(config, candidate)
        if found and not isinstance(value, dict):
            return ".".join(candidate)
    return None


def _leaves(config: Any, prefix: str = "") -> list[str]:
    if isinstance(config, dict):
        return [leaf for k, v in config.items() for leaf in _leaves(v, f"{prefix}{k}.")]
    return [prefix[:-1]]


def resolve_keys(params: list[Param], config: dict, space: str) -> None:
    """Replace each param's keys by their canonical form, or raise naming the first unknown."""
    for param in params:
        resolved = []
        for key in param.keys:
            canonical = canonical_key(config, key)
            if canonical is None:
                close = difflib.get_close_matches(key, _leaves(config), n=1, cutoff=0.75)
                hint = f" (did you mean {close[0]}?)" if close else ""
                raise ValueError(f"--space {space}: unknown config key '{key}': the experiment's "
                                 f"config has no such option{hint}")
            resolved.append(canonical)
        param.keys = resolved


def cli_value(value: Any) -> str:
    """A value as a command-line option's text (``true``, ``null``, ``0.0003``, ``bf16-mixed``)."""
    if isinstance(value, str):
        return value
    if isinstance(value, float):
        return repr(value)
    return json.dumps(value)


def overrides(params: list[Param], values: dict[str, Any], config: dict) -> list[str]:
    """``--key=value`` options that give the trial its values. Keys ending in a list index set
    that element in the config's list, passed whole (``--model.init_args.betas=[0.3, 0.999]``)."""
    options: dict[str, Any] = {}
    for param in params:
        for key in param.keys:
            head, _, last = key.rpartition(".")
            _, parent = _node(config, head.split(".")) if head else (False, None)
            if last.isdigit() and isinstance(parent, (list, tuple)):
                items = options.setdefault(head, list(parent))
                items[int(last)] = values[param.name]
            else:
                options[key] = values[param.name]
    return [f"--{key}={json.dumps(v) if isinstance(v, list) else cli_value(v)}"
            for key, v in options.items()]


# --- what an experiment logs ---------------------------------------------------------------
# The terms each family's steps log (train/<term> every step, val/<term> and test/<term> at
# the end of those loops), by class name along the model's MRO (checked against the models by
# tests/test_sweep_space.py). GANs log no validation values.
FAMILY_TERMS = {
    "VAE": ("loss", "elbo", "reconstruction_nll", "kl"),
    "PixelCNN": ("nll_bits_per_dim", "nll_nats_per_image", "loss"),
    "Autoencoder": ("loss",),
    "Classifier": ("loss", "acc"),
    "GANBase": (),
}
GAN_TRAIN = ("d_loss", "g_loss")
METRICS_CALLBACKS = ("GenerativeMetricsCallback", "TrainingMetrics")


def _class(config: dict, section: str) -> type:
    # Already imported by the CLI's parser, which resolved the config.
    module, _, name = str((config.get(section) or {}).get("class_path")).rpartition(".")
    return getattr(importlib.import_module(module), name)


def metrics_sources(config: dict) -> list[tuple[dict, str]]:
    """(init_args, where) of every metrics callback that runs while fitting."""
    sources = []
    metrics = config.get("metrics")
    if isinstance(metrics, dict):
        sources.append((metrics, "--metrics.every_n_epochs"))
    callbacks = (config.get("trainer") or {}).get("callbacks") or []
    for callback in callbacks if isinstance(callbacks, list) else [callbacks]:
        if isinstance(callback, dict) and str(callback.get("class_path", "")).rsplit(
                ".", 1)[-1] in METRICS_CALLBACKS:
            args = dict(callback.get("init_args") or {})
            args.setdefault("every_n_epochs", 0 if callback["class_path"].endswith(
                "TrainingMetrics") else 1)
            sources.append((args, "trainer.callbacks"))
    return sources


def logged_names(config: dict) -> tuple[set[str], list[str]]:
    """The metric names a fit of ``config`` logs, and notes on what it does not log and why.

    * ``metrics/<fid|is_mean|is_std|kid_mean|kid_std|precision|recall>`` only where a metrics
      callback runs while fitting (``--metrics.every_n_epochs N`` > 0, or one in
      ``trainer.callbacks``), under its ``prefix``; ``gan_test`` only for a class-conditional model
      with a ``classifier:`` extractor;
    * ``train/<term>`` of the model's family (GANs: ``train/d_loss``, ``train/g_loss``);
    * ``val/<term>`` where the model has a validation step, the data a validation split
      (``val_fraction`` > 0, or an official one) and ``trainer.limit_val_batches`` is not 0.

    For a model class outside the suite's families the names are unknown: the returned set is
    empty and the notes say so (the sweep then checks the objective when the first trial logs).
    """
    names: set[str] = set()
    notes: list[str] = []
    model_args = (config.get("model") or {}).get("init_args") or {}
    for args, where in metrics_sources(config):
        if int(args.get("every_n_epochs") or 0) <= 0:
            notes.append(f"metrics/* only with {where} N > 0 (off in this config)")
            continue
        prefix = args.get("prefix", "metrics/")
        keys = set(_QUALITY_KEYS) - {"gan_test"}
        if str(args.get("feature_extractor", "")).startswith("classifier:") and int(
                model_args.get("num_classes") or 0) > 0:
            keys.add("gan_test")
        names |= {f"{prefix}{k}" for k in keys}
    try:
        cls = _class(config, "model")
    except Exception:  # noqa: BLE001 (reported below as unknown)
        cls = None
    family = next((c.__name__ for c in getattr(cls, "__mro__", ()) if c.__name__ in
                   FAMILY_TERMS), None)
    if family is None:
        notes.append(f"cannot tell what {getattr(cls, '__name__', 'the model')} logs")
        return set(), notes
    if family == "GANBase":
        names |= {f"train/{t}" for t in GAN_TRAIN}
        notes.append("GANs log no val/* values")
        return names, notes
    names |= {f"train/{t}" for t in FAMILY_TERMS[family]}
    data_args = (config.get("data") or {}).get("init_args") or {}
    try:
        official = bool(getattr(_class(config, "data"), "official_val_split", False))
    except Exception:  # noqa: BLE001
        official = False
    limit = (config.get("trainer") or {}).get("limit_val_batches")
    if limit is not None and float(limit) == 0:
        notes.append("val/* off (trainer.limit_val_batches 0)")
    elif not official and float(data_args.get("val_fraction", 0.1) or 0) == 0:
        notes.append("val/* only with data.val_fraction > 0 (0 in this config)")
    else:
        names |= {f"val/{t}" for t in FAMILY_TERMS[family]}
    return names, notes


# --- the experiment's config ---------------------------------------------------------------
def _one_line(err: BaseException) -> str:
    """jsonargparse's nested message in one line: the keys and the complaint, not the union
    subtypes it tried."""
    skip = ("Subtypes:", "Errors:", "Given value", "Does not validate",
            "- Expected a <class 'NoneType'>")
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    kept = [ln.lstrip("- ") for ln in lines if not ln.startswith(skip)]
    return " ".join(kept) or str(err)


def parse_config(args: list[str]) -> dict:
    """The config ``lightning-gen fit ARGS`` would run, resolved by the CLI's own parser (the
    YAML, the options and every default), as a plain dict; nothing is instantiated.

    Raises:
        ValueError: the parser refuses an option (one line naming it).
    """
    from lightning_gen.cli import LightningGenCLI, default_logger

    class ParseOnly(LightningGenCLI):
        def before_instantiate_classes(self) -> None:
            pass

        def instantiate_classes(self) -> None:
            pass

        def _parse_ckpt_path(self) -> None:
            pass

        def _set_seed(self) -> None:
            pass

    saved_argv = sys.argv
    sys.argv = sys.argv[:1]  # LightningCLI warns when it sees both args and a command line
    try:
        cli = ParseOnly(args=args, run=False, parser_kwargs={"exit_on_error": False},
                        trainer_defaults={"logger": default_logger()}, save_config_callback=None)
    except SystemExit as err:  # --help and friends
        raise ValueError(f"the options {' '.join(args)} are refused (exit {err.code})") from None
    except Exception as err:  # noqa: BLE001 (argparse.ArgumentError, jsonargparse's errors)
        raise ValueError(f"the experiment's options are refused: {_one_line(err)}") from None
    finally:
        sys.argv = saved_argv
    return cli.config.as_dict()


def check_space_values(params: list[Param], config: dict, base: list[str], space: str) -> None:
    """Parse the experiment with each param at its ``low``, its ``high`` and each of its
    choices: a value the config's option does not take (a float for an int option, a choice
    that is not one of a ``Literal``'s) is named in one line before any trial starts."""
    rounds = max(len(p.boundary_values()) for p in params)
    for i in range(rounds):
        values = {p.name: p.boundary_values()[min(i, len(p.boundary_values()) - 1)]
                  for p in params}
        try:
            parse_config([*base, *overrides(params, values, config)])
        except ValueError as err:
            shown = ", ".join(f"{k}={v}" for k, v in values.items())
            raise ValueError(f"--space {space}: the experiment refuses {shown}: "
                             f"{str(err).split(': ', 1)[-1]}") from None
