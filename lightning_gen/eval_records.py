"""Evaluation results kept with their run: ``<run>/eval/results.jsonl`` and the run's W&B run.

``lightning-gen evaluate`` scores one checkpoint or every checkpoint of a run
(:func:`find_checkpoints`); for a checkpoint inside a run folder (``<run>/checkpoints/*.ckpt``
beside ``<run>/config.yaml`` or ``<run>/wandb``) each evaluation appends one line to
``<run>/eval/results.jsonl`` (:func:`append_row`) and, when the run used W&B, sends the values
to that same W&B run as ``eval/<protocol>/<metric>`` (:class:`RunRecorder`):

* online: the run (id = the run folder's name) is resumed;
* offline: a new ``<run>/wandb/offline-run-*`` segment with the run's id and ``resume``, as a
  resumed training run writes, which ``wandb sync`` uploads into that run.

The summary keys hold the values of the latest-step checkpoint evaluated with that protocol
(read back from ``results.jsonl``, so evaluating an old snapshot later does not replace them);
history rows carry the checkpoint's logging step in ``trainer/global_step``, so
``eval/<protocol>/fid`` can be drawn against the training curves.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import yaml

from lightning_gen.checkpoints import CheckpointError, load_checkpoint
from lightning_gen.metrics.evaluator import GenerativeEvaluator

RESULTS = "results.jsonl"
# Numbers `evaluate` reports that are metrics (not settings such as kid_subset_size).
METRICS = ("fid", "is_mean", "is_std", "kid_mean", "kid_std", "precision", "recall", "density",
           "coverage", "gan_test", "test_elbo_nats", "test_iwae_nats", "test_nll_nats",
           "test_bits_per_dim", "parzen_ll_nats", "parzen_ll_stderr", "parzen_sigma",
           "memorization_fraction", "memorization_fraction_pixels", "nn_distance_median",
           "nn_distance_median_pixels", "modes_covered", "mode_kl", "psnr", "ssim", "lpips")
# Computed on the test split, not from the samples: a sample protocol does not name them.
LIKELIHOOD_METRICS = ("test_elbo_nats", "test_iwae_nats", "test_nll_nats", "test_bits_per_dim",
                      "parzen_ll_nats", "parzen_ll_stderr", "parzen_sigma")


# ----------------------------------------------------------------------------------------------
# Which checkpoints


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint file and the training progress stored in it (``None`` where unreadable)."""

    path: Path
    global_step: int | None
    epoch: int | None
    step: int | None  # the logging step: `trainer/global_step` in W&B, `step` in metrics.csv

    @property
    def run(self) -> Path | None:
        return run_folder(self.path)


def read_progress(path: str | os.PathLike) -> Checkpoint:
    """Steps and epoch of a checkpoint, read without unpickling any object
    (``weights_only=True``, memory-mapped: the weights are not read)."""
    path = Path(path)
    try:
        ckpt = load_checkpoint(path, mmap=True)
    except (CheckpointError, FileNotFoundError):  # not loadable safely: evaluated anyway, its steps unknown
        return Checkpoint(path, None, None, None)
    if not isinstance(ckpt, dict):
        return Checkpoint(path, None, None, None)
    global_step, epoch = ckpt.get("global_step"), ckpt.get("epoch")
    loop = ((ckpt.get("loops") or {}).get("fit_loop") or {}).get("epoch_loop.state_dict") or {}
    step = loop.get("_batches_that_stepped", global_step)
    return Checkpoint(path, _int(global_step), _int(epoch), _int(step))


def _int(value) -> int | None:
    return int(value) if isinstance(value, (int, float)) else None


def run_folder(ckpt_path: str | os.PathLike) -> Path | None:
    """``<run>`` for ``<run>/checkpoints/<name>.ckpt`` when ``<run>`` is a run folder (holds
    ``config.yaml`` or ``wandb/``); ``None`` for a checkpoint anywhere else."""
    path = Path(ckpt_path).resolve()
    run = path.parent.parent
    if path.parent.name == "checkpoints" and ((run / "config.yaml").is_file()
                                              or (run / "wandb").is_dir()):
        return run
    return None


def find_checkpoints(spec: str) -> list[Checkpoint]:
    """The checkpoints ``--ckpt_path`` names: a file, a run folder (every
    ``checkpoints/*.ckpt`` of it) or a glob pattern (quoted on the command line).

    Several are returned run by run in step order (the ``global_step`` stored in each, not the
    file name). Checkpoints of one run at the same step hold the same training state (e.g.
    ``last.ckpt`` and the snapshot written at that step): only one of them is kept, a named
    snapshot rather than ``last.ckpt``.
    """
    path = Path(spec)
    if path.is_file():
        return [read_progress(path)]
    if path.is_dir():
        folder = path / "checkpoints" if (path / "checkpoints").is_dir() else path
        files = sorted(folder.glob("*.ckpt"))
        if not files:
            raise FileNotFoundError(f"no checkpoints (*.ckpt) in {folder}")
    elif glob.has_magic(spec):
        files = sorted(Path(p) for p in glob.glob(spec, recursive=True) if Path(p).is_file())
        if not files:
            raise FileNotFoundError(f"no checkpoint matches {spec!r}")
    else:
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if len(files) == 1:
        return [read_progress(files[0])]

    def order(c: Checkpoint):
        run = c.run or c.path.parent
        return (str(run), c.global_step is None, c.global_step or 0, c.path.name == "last.ckpt",
                c.path.name)

    kept, seen = [], set()
    for ckpt in sorted((read_progress(f) for f in files), key=order):
        key = (str(ckpt.run or ckpt.path.parent), ckpt.global_step)
        if ckpt.global_step is not None and key in seen:
            continue
        seen.add(key)
        kept.append(ckpt)
    return kept


# ----------------------------------------------------------------------------------------------
# results.jsonl


def protocol_name(extractor_kind: str, reference: str, num_samples: int,
                  named: str | None = None) -> str:
    """E.g. ``inception-train-50000``, ``classifier-test-1000``; ``named`` (a
    ``--protocol`` whose settings are all in effect, e.g. ``pytorch-gan-collections``) instead
    when given."""
    return named or f"{extractor_kind}-{reference}-{num_samples}"


def likelihood_protocols(result: dict) -> dict[str, str]:
    """The name each likelihood metric of ``result`` is filed under when no ``--protocol``
    names it: what computed it and the split it scores, as ``<extractor>-<split>-<N>`` names
    the sample metrics (which the likelihoods depend on neither): ``elbo-test``,
    ``iwae_k64-test`` (k importance samples), ``exact_nll-test`` (NLL and bits/dim),
    ``parzen_10000_val1000-test`` (kernels, and the held-out images that picked sigma)."""
    split = result.get("likelihood_split", "test")
    names = {"test_elbo_nats": f"elbo-{split}", "test_nll_nats": f"exact_nll-{split}",
             "test_bits_per_dim": f"exact_nll-{split}"}
    if "iwae_k" in result:
        names["test_iwae_nats"] = f"iwae_k{result['iwae_k']}-{split}"
    if "parzen_num_samples" in result:
        parzen = f"parzen_{result['parzen_num_samples']}"
        if "parzen_val_images" in result:
            parzen += f"_val{result['parzen_val_images']}"
        names.update(dict.fromkeys(("parzen_ll_nats", "parzen_ll_stderr", "parzen_sigma"),
                                   f"{parzen}-test"))
    return {k: v for k, v in names.items() if k in result}


def metric_values(result: dict) -> dict[str, float]:
    return {k: float(result[k]) for k in METRICS if isinstance(result.get(k), (int, float))}


def make_row(ckpt: Checkpoint, protocol: str, result: dict,
             keys: Iterable[str] | None = None) -> dict:
    """The results.jsonl row of ``result``'s metrics (only ``keys`` when given)."""
    metrics = metric_values(result)
    if keys is not None:
        metrics = {k: v for k, v in metrics.items() if k in set(keys)}
    return {
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "protocol": protocol,
        "checkpoint": str(ckpt.path.resolve()),
        "step": ckpt.step,
        "global_step": ckpt.global_step,
        "epoch": ckpt.epoch,
        "metrics": metrics,
        "json_path": result.get("json_path"),
    }


def append_row(path: str | os.PathLike, row: dict) -> Path:
    """Append ``row`` as one JSON line, in one write, flushed and fsynced: a crash leaves the
    file without the row or with all of it. A partial last line left by an earlier crash stays
    on its own line (:func:`read_rows` skips it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(row, sort_keys=False) + "\n"
    with open(path, "ab+") as f:
        if f.tell() > 0:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                line = "\n" + line
        f.write(line.encode())
        f.flush()
        os.fsync(f.fileno())
    return path


def read_rows(path: str | os.PathLike) -> list[dict]:
    """The complete rows of a ``results.jsonl`` (a partial line from a crash is skipped)."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


# ----------------------------------------------------------------------------------------------
# The run's W&B run


def _loggers(config: dict) -> list[dict]:
    logger = (config.get("trainer") or {}).get("logger")
    loggers = logger if isinstance(logger, list) else [logger]
    return [lg for lg in loggers if isinstance(lg, dict)]


def wandb_settings(run: Path) -> dict | None:
    """How to reach the W&B run of run folder ``run`` (id, project, entity, name, group, tags,
    offline), or ``None`` when the run did not use W&B (no ``wandb/`` folder and no W&B logger
    in its ``config.yaml``)."""
    config = {}
    if (run / "config.yaml").is_file():
        config = yaml.safe_load((run / "config.yaml").read_text()) or {}
    logger = next((lg for lg in _loggers(config)
                   if str(lg.get("class_path", "")).endswith("WandbLogger")), None)
    if logger is None and not (run / "wandb").is_dir():
        return None
    args = dict((logger or {}).get("init_args") or {})
    # The id W&B already has for this run (its segments' run-<id>.wandb), else the config's
    # version, else the folder's name (the suite's WandbLogger: version == folder name).
    logs = sorted((run / "wandb").glob("*run-*/run-*.wandb"), key=lambda p: p.parent.name)
    run_id = logs[-1].stem[len("run-"):] if logs else (args.get("version") or run.name)
    return {"id": run_id, "project": args.get("project") or run.parent.name,
            "entity": args.get("entity"), "name": args.get("name"), "group": args.get("group"),
            "tags": args.get("tags"), "offline": args.get("offline")}


class RunRecorder:
    """Appends each evaluation to its run's ``results.jsonl`` and W&B run; one W&B run is open
    at a time (a sweep over one run's checkpoints opens it once). Use as a context manager;
    ``lines`` says where the values went.

    A result's metrics are filed under ``result["results_protocols"]`` (``{name: [metric,
    ...]}``, one row per name) when it has them, else all under ``protocol``."""

    def __init__(self, protocol: str) -> None:
        self.protocol = protocol
        self.lines: list[str] = []
        self._run: Path | None = None
        self._wandb = None
        self._protocols: dict[str, None] = {}  # names sent to the open W&B run, in order

    def record(self, ckpt: Checkpoint, result: dict) -> list[dict] | None:
        run = ckpt.run
        if run is None:
            self._note(f"Not in a run folder ({ckpt.path}): results only in the JSON, no "
                       "results.jsonl, no W&B run")
            return None
        filing = result.get("results_protocols") or {self.protocol: None}
        rows = [make_row(ckpt, name, result, keys) for name, keys in filing.items()]
        for row in rows:
            results = append_row(run / "eval" / RESULTS, row)
        self._note(f"Results:     {results}")
        if run != self._run:
            self._finish()
            self._run = run
            self._start(run)
        if self._wandb is not None:
            values = {f"eval/{row['protocol']}/{k}": v for row in rows
                      for k, v in row["metrics"].items()}
            if rows[0]["step"] is not None:
                values["trainer/global_step"] = rows[0]["step"]
            self._wandb.log(values)
            self._protocols.update(dict.fromkeys(row["protocol"] for row in rows))
        return rows

    def _note(self, line: str) -> None:
        if line not in self.lines:
            self.lines.append(line)

    def _start(self, run: Path) -> None:
        settings = wandb_settings(run)
        if settings is None:
            self._note(f"W&B:         not used by {run}")
            return
        if os.environ.get("WANDB_MODE", "").lower() == "disabled":
            self._note("W&B:         disabled (WANDB_MODE=disabled)")
            return
        import wandb

        from lightning_gen.loggers import resolve_offline

        offline = resolve_offline(settings["offline"])
        extra = {k: settings[k] for k in ("entity", "name", "group", "tags") if settings[k]}
        try:
            # resume="allow": continue the run with this id (online), or write a segment that
            # `wandb sync` uploads as a resume of it (offline), as a resumed training run does.
            # No console capture: the run's output.log stays the training's.
            self._wandb = wandb.init(
                id=settings["id"], project=settings["project"], dir=str(run.resolve()),
                resume="allow", mode="offline" if offline else "online",
                settings=wandb.Settings(console="off", x_disable_stats=True), **extra)
        except Exception as err:  # noqa: BLE001 - the results are safe in results.jsonl
            self._note(f"W&B:         could not open run {settings['id']} ({err}); the values "
                       "are in results.jsonl")
            self._wandb = None
            return
        # The training history's x-axis (the `wandb` branch defines it for training).
        self._wandb.define_metric("eval/*", step_metric="trainer/global_step")

    def _finish(self) -> None:
        if self._wandb is None or self._run is None:
            return
        run, wb = self._run, self._wandb
        self._wandb = None
        every = read_rows(run / "eval" / RESULTS)
        for protocol in self._protocols or [self.protocol]:
            rows = [r for r in every if r.get("protocol") == protocol]
            if not rows:
                continue
            # summary: the latest-step checkpoint's values (latest evaluation on ties)
            latest = max(enumerate(rows), key=lambda ir: (ir[1].get("step") is not None,
                                                         ir[1].get("step") or 0, ir[0]))[1]
            for key, value in latest["metrics"].items():
                wb.summary[f"eval/{protocol}/{key}"] = value
            wb.summary[f"eval/{protocol}/step"] = latest.get("step")
        self._protocols = {}
        offline = wb.offline
        url = None if offline else getattr(wb, "url", None)
        wb.finish()
        if offline:
            segment = Path(wb.settings.sync_dir)
            self._note(f"W&B offline run: {segment}  (upload into run {wb.id}: wandb sync "
                       f"{segment})")
        else:
            self._note(f"W&B run:     {url}")

    def close(self) -> None:
        self._finish()
        self._run = None

    def __enter__(self) -> RunRecorder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ----------------------------------------------------------------------------------------------
# One reference for many checkpoints


class SweepEvaluator(GenerativeEvaluator):
    """:class:`GenerativeEvaluator` that keeps each reference split's features in memory, so
    evaluating many checkpoints extracts (or reads from the disk cache) the real images once."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._references: dict[str, tuple[dict, dict]] = {}

    def reference(self, datamodule, split: str = "train", device=None,
                  num_images: int | None = None, min_images: int = 0,
                  progress: bool = False) -> dict:
        key = json.dumps([type(datamodule).__name__, str(getattr(datamodule, "data_dir", "")),
                          list(getattr(datamodule, "image_shape", ())), split, num_images,
                          min_images, str(device)])
        if key not in self._references:
            out = super().reference(datamodule, split, device, num_images, min_images, progress)
            self._references[key] = (out, dict(self.reference_info))
        out, self.reference_info = self._references[key][0], dict(self._references[key][1])
        return out


def summary_line(ckpt: Checkpoint, result: dict) -> str:
    values = "  ".join(f"{k} {v:.6g}" for k, v in metric_values(result).items())
    return f"step {ckpt.step} (global_step {ckpt.global_step}, {ckpt.path.name}): {values}"


def checkpoints_table(done: Iterable[tuple[Checkpoint, dict]]) -> str:
    done = list(done)
    names = [k for k in METRICS if any(k in r for _, r in done)]
    lines = ["  ".join([f"{'step':>8}", f"{'global_step':>11}", *(f"{n:>12}" for n in names),
                        "checkpoint"])]
    for ckpt, result in done:
        cells = [f"{'' if ckpt.step is None else ckpt.step:>8}",
                 f"{'' if ckpt.global_step is None else ckpt.global_step:>11}",
                 *(f"{result[n]:>12.6g}" if n in result else f"{'':>12}" for n in names),
                 str(ckpt.path)]
        lines.append("  ".join(cells))
    return "\n".join(lines)
