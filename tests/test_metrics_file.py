"""``<run>/metrics.csv`` and ``<run>/summary.json`` in every run folder, W&B's best values, and
``--metrics.every_n_epochs``: the rows are what the loggers received, a killed run keeps every
complete row, a resumed run appends, and sample-quality metrics are off unless switched on."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml

from datamodules import DigitsDataModule
from lightning_gen.callbacks import MetricsFile, TrainingMetrics
from lightning_gen.callbacks.metrics_file import HEADER, goal_of, read_rows
from lightning_gen.cli import main
from lightning_gen.loggers import WandbLogger
from lightning_gen.metrics.extractors import file_digest
from lightning_gen.models import VAE
from tests import wandb_log
from tests.metrics_helpers import classifier_checkpoint
from tests.wandb_log import history, wait_for_run_log

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = str(ROOT / "experiments/quickstart.yaml")
FAST = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--data.num_workers", "0"]
GAN_NAMES = {"train/d_loss", "train/g_loss", "train/d_steps", "train/g_steps"}

VAE_YAML = """\
seed_everything: 0
model:
  class_path: lightning_gen.models.VAE
  init_args: {latent_dim: 4, width: 8}
data:
  class_path: datamodules.DigitsDataModule
  init_args: {image_size: 32, batch_size: 32, val_fraction: 0.2}
trainer:
  max_epochs: 2
  limit_train_batches: 3
  limit_val_batches: 2
  log_every_n_steps: 1
images:
  every_n_epochs: 0
"""


def only_run_dir() -> Path:
    runs = sorted(Path("runs").glob("*/*"))
    assert len(runs) == 1, runs
    return runs[0]


def triples(rows) -> set[tuple[int, str, float]]:
    return {(r["step"], r["name"], r["value"]) for r in rows}


def wandb_scalars(log: Path) -> list[dict]:
    """The scalar history rows W&B stored: ``{"step", "epoch", name: value, ...}``."""
    out = []
    for row in history(log):
        values = {k: v for k, v in row.items() if not k.startswith("_") and "images/" not in k
                  and k not in ("trainer/global_step", "epoch", "images_seen") and isinstance(v, (int, float))}
        if values:
            out.append({"step": row["trainer/global_step"], "epoch": row.get("epoch"), **values})
    return out


def expected_summary(rows: list[dict]) -> dict:
    """summary.json computed independently from the rows: last value, first step of the best."""
    out: dict[str, dict] = {}
    for name in dict.fromkeys(r["name"] for r in rows):
        mine = [r for r in rows if r["name"] == name]
        entry = {"last": mine[-1]["value"], "last_step": mine[-1]["step"]}
        goal = goal_of(name)
        if goal is not None:
            pick = min if goal == "min" else max
            best = pick(r["value"] for r in mine)
            first = next(r for r in mine if r["value"] == best)
            entry.update(best=best, best_step=first["step"], goal=goal)
        out[name] = entry
    return out


def test_goals_follow_the_contract():
    for name in ("metrics/fid", "metrics/kid_mean", "train/loss", "val/loss_epoch",
                 "val/nll_bits_per_dim", "test/nll_nats_per_image"):
        assert goal_of(name) == "min", name
    for name in ("metrics/is_mean", "val/elbo", "val/elbo_epoch", "metrics/precision",
                 "metrics/recall", "metrics/gan_test", "outlier/auroc"):
        assert goal_of(name) == "max", name
    for name in ("metrics/is_std", "metrics/kid_std", "train/g_steps", "val/kl", "epoch"):
        assert goal_of(name) is None, name
    # A GAN's players' terms: a low g_loss means a weak discriminator, not good samples.
    for name in ("train/g_loss", "train/d_loss", "train/d_loss_step", "train/d_r1_penalty",
                 "train/g_pl_loss", "train/g_cycle_loss"):
        assert goal_of(name) is None, name


def test_gan_rows_are_what_wandb_received_with_epoch_and_g_steps():
    main(["fit", "--config", QUICKSTART, "--trainer.max_steps", "12",
          "--trainer.log_every_n_steps", "1", *FAST])
    run = only_run_dir()
    text = (run / "metrics.csv").read_text()
    assert text.splitlines()[0] == ",".join(HEADER)
    rows = read_rows(run / "metrics.csv")
    received = wandb_scalars(wait_for_run_log(run / "wandb"))
    assert len(received) == 6  # 6 batches (12 optimizer steps), one logging call each
    assert triples(rows) == {(r["step"], k, v) for r in received for k, v in r.items()
                             if k not in ("step", "epoch")}
    assert {r["name"] for r in rows} == GAN_NAMES
    for r in rows:  # the g_steps column is the GAN's counter, as the model logs it itself
        g_logged = next(v for v in received if v["step"] == r["step"])["train/g_steps"]
        assert r["g_steps"] == g_logged and r["epoch"] == 0
    steps = [r["step"] for r in rows]
    assert steps == sorted(steps) and len(set(steps)) == 6
    times = [r["wall_time"] for r in rows]
    assert times == sorted(times) and times[0] >= 0


@pytest.mark.parametrize("max_steps, last_step", [(10, 4), (20, 9)])
def test_a_fit_shorter_than_the_logging_interval_logs_its_last_step(max_steps, last_step):
    # 5 batches (10 optimizer steps), and 10 batches, with log_every_n_steps 10 (the YAML's):
    # Lightning writes logs at batch 10 only, so the shorter run left no training values.
    main(["fit", "--config", QUICKSTART, "--trainer.max_steps", str(max_steps), *FAST])
    run = only_run_dir()
    rows = read_rows(run / "metrics.csv")
    assert {(r["step"], r["name"]) for r in rows} == {(last_step, n) for n in GAN_NAMES}
    assert len(rows) == len(GAN_NAMES)  # once each, also where Lightning logs that step itself
    received = wandb_scalars(wait_for_run_log(run / "wandb"))
    assert triples(rows) == {(r["step"], k, v) for r in received for k, v in r.items()
                             if k not in ("step", "epoch")}
    summary = json.loads((run / "summary.json").read_text())
    assert summary["train/g_steps"] == {"last": last_step + 1.0, "last_step": last_step}


def test_an_automatic_optimisation_fit_logs_its_last_step(tmp_path):
    (tmp_path / "vae.yaml").write_text(VAE_YAML)
    main(["fit", "--config", str(tmp_path / "vae.yaml"), "--trainer.max_steps", "2",
          "--trainer.log_every_n_steps", "50", "--trainer.limit_val_batches", "0", *FAST])
    rows = read_rows(only_run_dir() / "metrics.csv")
    assert {r["name"] for r in rows} >= {"train/loss", "train/elbo", "train/kl"}
    assert {r["step"] for r in rows} == {1}


def test_validation_and_epoch_values_match_a_csv_logger_in_the_same_run(tmp_path):
    (tmp_path / "vae.yaml").write_text(VAE_YAML)
    main(["fit", "--config", str(tmp_path / "vae.yaml"), "--trainer.logger",
          "lightning.pytorch.loggers.CSVLogger", "--trainer.logger.save_dir", "runs", *FAST])
    (metrics,) = Path("runs").glob("**/metrics.csv")
    run = metrics.parent
    rows = read_rows(run / "metrics.csv")
    # The CSVLogger's own wide file moved aside (same folder), holding the same values.
    with open(run / "metrics_wide.csv", newline="") as f:
        wide = list(csv.DictReader(f))
    assert triples(rows) == {(int(w["step"]), k, float(v)) for w in wide for k, v in w.items()
                             if v != "" and k not in ("step", "epoch")}
    names = {r["name"] for r in rows}
    assert {"train/loss", "val/loss", "val/elbo"} <= names
    val_steps = sorted({r["step"] for r in rows if r["name"] == "val/elbo"})
    assert len(val_steps) == 2 and all(r["g_steps"] is None for r in rows)  # no GAN counter
    assert [r["epoch"] for r in rows if r["name"] == "val/elbo"] == [0, 1]
    assert json.loads((run / "summary.json").read_text()) == expected_summary(rows)


def test_a_csv_logger_run_continued_in_its_folder_keeps_the_earlier_rows():
    # Lightning's CSV writer deletes metrics.csv in a folder it reopens: not the run's rows.
    args = ["fit", "--config", QUICKSTART, "--trainer.logger",
            "lightning.pytorch.loggers.CSVLogger", "--trainer.logger.save_dir", "runs",
            "--trainer.logger.version", "0", "--trainer.log_every_n_steps", "1", *FAST]
    main([*args, "--trainer.max_steps", "4"])
    (metrics,) = Path("runs").glob("**/metrics.csv")
    first = read_rows(metrics)
    main([*args, "--trainer.max_steps", "8", "--ckpt_path",
          str(metrics.parent / "checkpoints/last.ckpt")])
    rows = read_rows(metrics)
    assert rows[: len(first)] == first and {r["step"] for r in rows[len(first):]} == {2, 3}
    wide = (metrics.parent / "metrics_wide.csv").read_text().splitlines()
    assert len(wide) == 1 + 4  # the CSVLogger's own rows, both runs'


def test_tensorboard_run_folder_holds_what_tensorboard_received():
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    main(["fit", "--config", QUICKSTART, "--trainer.max_steps", "6", "--trainer.logger",
          "lightning.pytorch.loggers.TensorBoardLogger", "--trainer.logger.save_dir", "runs",
          "--trainer.log_every_n_steps", "1", *FAST])
    (metrics,) = Path("runs").glob("**/metrics.csv")
    events = EventAccumulator(str(metrics.parent)).Reload()
    # hp_metric: TensorBoardLogger's placeholder for log_hyperparams, not a logged scalar.
    received = {(e.step, tag, e.value) for tag in events.Tags()["scalars"]
                if tag not in ("epoch", "hp_metric") for e in events.Scalars(tag)}
    rows = read_rows(metrics)
    assert len(rows) == len(received) == 3 * 4
    # TensorBoard stores float32: the same values to its precision.
    assert {(r["step"], r["name"], float(torch.tensor(r["value"]))) for r in rows} == received


def test_without_a_logger_files_go_to_default_root_dir_as_before():
    main(["fit", "--config", QUICKSTART, "--trainer.max_steps", "4", "--trainer.logger",
          "false", "--trainer.default_root_dir", "out", "--trainer.log_every_n_steps", "1",
          *FAST])
    out = Path("out")
    assert (out / "checkpoints/last.ckpt").is_file()  # where Lightning puts it with no logger
    assert (out / "config.yaml").is_file() and (out / "images/samples_last.png").is_file()
    rows = read_rows(out / "metrics.csv")
    assert {r["step"] for r in rows} == {0, 1} and {r["name"] for r in rows} == GAN_NAMES
    assert not Path("runs").exists()


def test_a_new_run_refuses_the_folder_of_an_earlier_run_without_a_logger(capsys):
    args = ["fit", "--config", QUICKSTART, "--trainer.max_steps", "2", "--trainer.logger",
            "false", "--trainer.default_root_dir", "out", "--trainer.log_every_n_steps", "1",
            *FAST]
    main(args)
    out = Path("out")
    files = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    before = {name: (out / name).read_bytes() for name in files}
    capsys.readouterr()
    with pytest.raises(SystemExit) as stopped:
        main([*args, "--model.init_args.lr_g", "0.001"])  # another run, same folder
    assert stopped.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"lightning-gen: error: the run folder {out.absolute()} already "
                           "holds a run (config.yaml, metrics.csv)")
    assert line.endswith(f"--ckpt_path {out.absolute() / 'checkpoints/last.ckpt'}")
    # Nothing of the earlier run changed, nothing was added (no last-v1.ckpt).
    assert sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file()) == files
    assert {name: (out / name).read_bytes() for name in files} == before


def test_a_new_run_refuses_an_earlier_runs_logger_version(capsys):
    args = ["fit", "--config", QUICKSTART, "--trainer.max_steps", "2",
            "--trainer.logger.init_args.version", "mine", *FAST]
    main(args)
    capsys.readouterr()
    with pytest.raises(SystemExit) as stopped:
        main(args)
    assert stopped.value.code == 2
    line = capsys.readouterr().err.strip()
    assert "runs/lightning-gen/mine already holds a run (config.yaml" in line
    assert "Give the new run a folder of its own: another --trainer.logger.init_args.version" in line
    assert len(list(Path("runs/lightning-gen/mine/wandb").glob("offline-run-*"))) == 1


def test_a_run_without_a_logger_continues_in_its_folder():
    args = ["fit", "--config", QUICKSTART, "--trainer.logger", "false",
            "--trainer.default_root_dir", "out", "--trainer.log_every_n_steps", "1", *FAST]
    main([*args, "--trainer.max_steps", "2"])
    first = read_rows(Path("out/metrics.csv"))
    main([*args, "--trainer.max_steps", "4", "--ckpt_path", "out/checkpoints/last.ckpt"])
    rows = read_rows(Path("out/metrics.csv"))
    assert rows[: len(first)] == first and {r["step"] for r in rows[len(first):]} == {1}
    main([*args, "--trainer.max_steps", "6", "--ckpt_path", "last"])
    assert {r["step"] for r in read_rows(Path("out/metrics.csv"))} == {0, 1, 2}


def test_validate_into_a_runs_folder_keeps_the_runs_config(tmp_path):
    (tmp_path / "vae.yaml").write_text(VAE_YAML)
    args = ["--config", str(tmp_path / "vae.yaml"), "--trainer.logger", "false",
            "--trainer.default_root_dir", "out", *FAST]
    main(["fit", *args])
    config = Path("out/config.yaml").read_bytes()
    main(["validate", *args, "--ckpt_path", "out/checkpoints/last.ckpt"])
    main(["test", *args, "--ckpt_path", "out/checkpoints/last.ckpt"])
    assert Path("out/config.yaml").read_bytes() == config
    for stage in ("validate", "test"):
        saved = yaml.safe_load(Path(f"out/config_{stage}.yaml").read_text())
        assert saved["ckpt_path"] == "out/checkpoints/last.ckpt"


def test_validate_and_test_rows_carry_the_checkpoints_step_and_epoch(tmp_path):
    (tmp_path / "vae.yaml").write_text(VAE_YAML)
    args = ["--config", str(tmp_path / "vae.yaml"), "--trainer.logger", "false",
            "--trainer.default_root_dir", "out", *FAST]
    main(["fit", *args])
    fit_rows = read_rows(Path("out/metrics.csv"))
    last_step = max(r["step"] for r in fit_rows)  # 2 epochs x 3 batches: the last batch is step 5
    main(["validate", *args, "--ckpt_path", "out/checkpoints/last.ckpt"])
    main(["test", *args, "--ckpt_path", "out/checkpoints/last.ckpt"])
    later = read_rows(Path("out/metrics.csv"))[len(fit_rows):]
    assert {r["name"].split("/")[0] for r in later} == {"val", "test"}
    # The checkpoint was written after 6 batches of epoch 1; not step 0, epoch 0.
    assert {(r["step"], r["epoch"]) for r in later} == {(last_step + 1, 1)}
    summary = json.loads(Path("out/summary.json").read_text())
    assert summary["test/elbo"]["last_step"] == last_step + 1
    assert summary["val/elbo"]["last_step"] == last_step + 1


def test_sigkill_mid_run_leaves_only_complete_rows(tmp_path):
    cmd = [sys.executable, "-m", "lightning_gen.cli", "fit", "--config", QUICKSTART,
           "--trainer.max_steps", "100000", "--trainer.log_every_n_steps", "1",
           "--trainer.logger", "false", "--trainer.default_root_dir", "run",
           "--model.init_args.g_width", "8", "--model.init_args.d_width", "8", *FAST]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env)
    path = tmp_path / "run/metrics.csv"
    try:
        deadline = time.monotonic() + 240
        while not (path.is_file() and path.read_text().count("\n") > 1 + 4 * 3):
            assert proc.poll() is None and time.monotonic() < deadline, "no rows appeared"
            time.sleep(0.05)
        seen = path.read_text().count("\n")
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    text = path.read_text()
    assert text.endswith("\n") and text.count("\n") >= seen
    lines = list(csv.reader(text.splitlines()))
    assert lines[0] == list(HEADER) and all(len(line) == 6 for line in lines)
    rows = read_rows(path)
    assert len(rows) == len(lines) - 1  # every line parses as a typed row
    by_step: dict[int, set[str]] = {}
    for r in rows:
        by_step.setdefault(r["step"], set()).add(r["name"])
        assert math.isfinite(r["value"]) and r["g_steps"] == r["step"] + 1
    # Every logging call that reached the file is complete: all four values of each step.
    assert len(by_step) >= 3 and all(names == GAN_NAMES for names in by_step.values())
    # summary.json (rewritten atomically) is whole: the summary of the rows up to its step.
    summary = json.loads((tmp_path / "run/summary.json").read_text())
    upto = summary["train/d_loss"]["last_step"]
    assert summary == expected_summary([r for r in rows if r["step"] <= upto])


def test_a_resumed_run_appends_to_its_file_and_cuts_a_torn_line():
    args = ["fit", "--config", QUICKSTART, "--trainer.log_every_n_steps", "1", *FAST]
    main([*args, "--trainer.max_steps", "4"])
    run = only_run_dir()
    first = read_rows(run / "metrics.csv")
    with open(run / "metrics.csv", "a") as f:
        f.write("2,0,3,9.5,train/d_lo")  # as if killed inside a write
    main([*args, "--trainer.max_steps", "8", "--ckpt_path", "last"])
    assert only_run_dir() == run
    text = (run / "metrics.csv").read_text()
    assert text.count("step,epoch") == 1 and "train/d_lo\n" not in text
    rows = read_rows(run / "metrics.csv")
    assert rows[: len(first)] == first
    second = rows[len(first):]
    assert sorted({r["step"] for r in second}) == [2, 3]  # batches 3 and 4 of the run
    assert [r["g_steps"] for r in second] == [3] * 4 + [4] * 4
    assert second[0]["wall_time"] >= first[-1]["wall_time"]  # time of the run, continued
    summary = json.loads((run / "summary.json").read_text())
    assert summary == expected_summary(rows)
    # A GAN player's loss has no best anywhere: not in summary.json, not in W&B.
    assert "best" not in summary["train/g_loss"] and "goal" not in summary["train/d_loss"]
    stored = wandb_log.summary(wait_for_run_log(run / "wandb"))
    assert "train/g_loss.best" not in stored and "train/d_loss.best" not in stored


def fit_fake_quality_and_resume(tmp_path, killed_rows: str = "") -> Path:
    """A VAE run logging FID 3.0 then 5.0 (FakeQuality): one epoch, ``killed_rows`` appended to
    its metrics.csv as a killed process would have, then resumed for a second epoch."""
    (tmp_path / "vae.yaml").write_text(VAE_YAML.replace("trainer:\n", (
        "trainer:\n  callbacks:\n    - class_path: tests.test_metrics_file.FakeQuality\n"
        "      init_args: {fid: [3.0, 5.0], is_mean: [2.0, 1.0]}\n")))
    args = ["fit", "--config", str(tmp_path / "vae.yaml"), *FAST]
    main([*args, "--trainer.max_epochs", "1"])
    run = only_run_dir()
    with open(run / "metrics.csv", "a") as f:
        f.write(killed_rows)
    main([*args, "--trainer.max_epochs", "2", "--ckpt_path", "last"])
    return run


def test_a_resumed_runs_wandb_segment_holds_the_bests_of_the_whole_run(tmp_path):
    # FID 3.0 after the first epoch, 5.0 after the second: the run's best lies in the first
    # segment, which the resumed one did not log.
    run = fit_fake_quality_and_resume(tmp_path)
    assert only_run_dir() == run and len(list((run / "wandb").glob("offline-run-*"))) == 2
    rows = read_rows(run / "metrics.csv")
    assert [r["value"] for r in rows if r["name"] == "metrics/fid"] == [3.0, 5.0]
    summary = json.loads((run / "summary.json").read_text())
    # (No "protocol" beside them: the CLI's --metrics callback, which is off, did not log them.)
    assert summary == expected_summary(rows)
    stored = wandb_log.summary(wait_for_run_log(run / "wandb"))
    assert (stored["metrics/fid.best"], stored["metrics/is_mean.best"]) == (3.0, 2.0)
    for name in ("metrics/fid", "metrics/is_mean", "train/loss", "val/elbo"):
        assert stored[f"{name}.best"] == summary[name]["best"]
        assert stored[f"{name}.best_step"] == summary[name]["best_step"]


def test_a_resumed_runs_summary_forgets_what_a_killed_process_logged_after_the_checkpoint(
        tmp_path):
    # A process killed after its last checkpoint leaves rows the resumed run logs again; a
    # "best" FID among them (1.0 here, after the checkpoint) belonged to weights nobody kept.
    step = 3  # the checkpoint's: 3 batches (its epoch-end values are logged at step 2)
    run = fit_fake_quality_and_resume(tmp_path, killed_rows=(  # a batch and an epoch on
        f"{step},1,,9.0,train/loss,1.0\n{step + 2},1,,99.0,metrics/fid,1.0\n"))
    rows = read_rows(run / "metrics.csv")
    assert [r["value"] for r in rows if r["name"] == "metrics/fid"] == [3.0, 1.0, 5.0]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["metrics/fid"]["best"] == 3.0
    assert summary == expected_summary([r for r in rows if r["wall_time"] not in (9.0, 99.0)])
    stored = wandb_log.summary(wait_for_run_log(run / "wandb"))
    assert stored["metrics/fid.best"] == 3.0


class FakeQuality(L.Callback):
    """Logs given ``metrics/fid`` and ``metrics/is_mean`` values at each training epoch end."""

    def __init__(self, fid: list[float], is_mean: list[float]) -> None:
        self.fid, self.is_mean = fid, is_mean

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        epoch = trainer.current_epoch
        pl_module.log_dict({"metrics/fid": self.fid[epoch], "metrics/is_mean": self.is_mean[epoch]})


def test_summary_and_wandb_hold_the_best_value_and_its_step(tmp_path):
    fid, is_mean = [5.0, 3.0, 4.0, 3.5], [1.0, 2.0, 1.5, 3.0]
    logger = WandbLogger(name="fake", save_dir=str(tmp_path / "runs"), offline=True)
    trainer = L.Trainer(max_epochs=4, limit_train_batches=2, limit_val_batches=0,
                        log_every_n_steps=1, accelerator="cpu", logger=logger,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[FakeQuality(fid, is_mean)])
    MetricsFile().attach(trainer)
    model = VAE(image_shape=(1, 32, 32), latent_dim=4, width=8, num_fixed_samples=0)
    trainer.fit(model, DigitsDataModule(image_size=32, batch_size=16, val_fraction=0.0))
    run = Path(logger.log_dir)
    rows = read_rows(run / "metrics.csv")
    fid_rows = [r for r in rows if r["name"] == "metrics/fid"]
    assert [r["value"] for r in fid_rows] == fid and [r["epoch"] for r in fid_rows] == [0, 1, 2, 3]
    summary = json.loads((run / "summary.json").read_text())
    assert summary == expected_summary(rows)
    assert summary["metrics/fid"] == {"last": 3.5, "last_step": fid_rows[3]["step"], "best": 3.0,
                                      "best_step": fid_rows[1]["step"], "goal": "min"}
    assert summary["metrics/is_mean"]["best_step"] == fid_rows[3]["step"]

    stored = wandb_log.summary(wait_for_run_log(run / "wandb"))
    assert stored["metrics/fid"] == {"min": 3.0, "last": 3.5}
    assert stored["metrics/is_mean"] == {"max": 3.0, "last": 3.0}
    assert stored["metrics/fid.best_step"] == fid_rows[1]["step"]
    assert stored["metrics/is_mean.best_step"] == fid_rows[3]["step"]
    loss = summary["train/loss"]
    assert stored["train/loss"]["min"] == loss["best"]
    assert stored["train/loss.best_step"] == loss["best_step"]


def test_metrics_switch_logs_classifier_fid_into_the_file_and_wandb(tmp_path):
    ckpt = classifier_checkpoint(tmp_path / "clf.ckpt")
    main(["fit", "--config", QUICKSTART, "--trainer.max_epochs", "2",
          "--trainer.limit_train_batches", "2", "--metrics.every_n_epochs", "1",
          "--metrics.feature_extractor", f"classifier:{ckpt}", "--metrics.num_samples", "64",
          "--metrics.reference", "test", "--metrics.batch_size", "32",
          "--metrics.isc_splits", "4", "--metrics.kid_subset_size", "32",
          "--metrics.cache_dir", str(tmp_path / "cache"), *FAST])
    run = only_run_dir()
    rows = [r for r in read_rows(run / "metrics.csv") if r["name"] == "metrics/fid"]
    assert [r["epoch"] for r in rows] == [0, 1] and [r["step"] for r in rows] == [1, 3]
    assert all(math.isfinite(r["value"]) and r["value"] > 0 for r in rows)
    log = wait_for_run_log(run / "wandb")
    received = [(r["step"], r["metrics/fid"]) for r in wandb_scalars(log) if "metrics/fid" in r]
    assert received == [(r["step"], r["value"]) for r in rows]
    # The protocol: in the summary, W&B's summary and the saved config.
    summary = json.loads((run / "summary.json").read_text())
    assert summary["metrics/fid"]["protocol"] == "classifier-test-64"
    assert summary["metrics/fid"]["best"] == min(r["value"] for r in rows)
    stored = wandb_log.summary(log)
    assert stored["metrics/protocol"] == "classifier-test-64"
    assert stored["metrics/fid"]["min"] == summary["metrics/fid"]["best"]
    config = yaml.safe_load((run / "config.yaml").read_text())["metrics"]
    assert config["every_n_epochs"] == 1 and config["num_samples"] == 64
    assert config["feature_extractor"] == f"classifier:{ckpt}" and config["reference"] == "test"


def test_metrics_are_off_by_default_and_build_nothing(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("an extractor or evaluator was built with metrics off")

    monkeypatch.setattr("lightning_gen.callbacks.metrics.build_extractor", refuse)
    monkeypatch.setattr("lightning_gen.callbacks.metrics.GenerativeEvaluator", refuse)
    main(["fit", "--config", QUICKSTART, "--trainer.max_epochs", "1",
          "--trainer.limit_train_batches", "2", *FAST])
    run = only_run_dir()
    assert yaml.safe_load((run / "config.yaml").read_text())["metrics"]["every_n_epochs"] == 0
    assert not [r for r in read_rows(run / "metrics.csv") if r["name"].startswith("metrics/")]


def test_metrics_switch_refuses_a_too_small_split_before_training(tmp_path, capsys):
    ckpt = classifier_checkpoint(tmp_path / "clf.ckpt")
    with pytest.raises(SystemExit) as info:
        main(["fit", "--config", QUICKSTART, "--metrics.every_n_epochs", "1",
              "--metrics.feature_extractor", f"classifier:{ckpt}", "--metrics.reference",
              "test", "--metrics.num_samples", "1000", "--metrics.cache_dir",
              str(tmp_path / "cache"), *FAST])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "Traceback" not in err
    assert "has 297 real images, fewer than the 1000 requested" in err
    assert not list(Path("runs").glob("*/*/checkpoints/*.ckpt"))
    assert not torch.cuda.is_initialized()


def test_a_missing_evaluator_is_one_line_before_the_run_folder(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["fit", "--config", QUICKSTART, "--metrics.every_n_epochs", "1",
              "--metrics.feature_extractor", "classifier:evaluators/*/last.ckpt", *FAST])
    assert info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "lightning-gen: error: no classifier checkpoint matches 'evaluators/*/last.ckpt'; "
        "train one with lightning-gen fit --config experiments/evaluator_<data>.yaml"]
    assert not Path("runs").exists()


def test_a_classifier_glob_takes_the_newest_evaluator_and_says_which(capsys):
    old = classifier_checkpoint("evaluators/a/last.ckpt", seed=0)
    new = classifier_checkpoint("evaluators/b/last.ckpt", seed=1)
    later = time.time() + 60
    os.utime(old, (later, later))  # a is the newest file, though written first
    callback = TrainingMetrics(every_n_epochs=1, num_samples=50,
                               feature_extractor="classifier:evaluators/*/last.ckpt")
    callback.check_datamodule(None)
    assert callback.evaluator.extractor.name == f"classifier-{file_digest(old)}"
    assert file_digest(old) != file_digest(new)
    assert capsys.readouterr().err.strip() == (
        f"lightning-gen: classifier extractor: {old} (newest match of evaluators/*/last.ckpt)")


@pytest.mark.slow
def test_ddp_rank_zero_alone_writes_each_row_once(tmp_path):
    cmd = [sys.executable, "-m", "lightning_gen.cli", "fit", "--config", QUICKSTART,
           "--trainer.accelerator", "cpu", "--trainer.strategy", "ddp", "--trainer.devices", "2",
           "--trainer.max_steps", "8", "--trainer.log_every_n_steps", "1",
           "--model.init_args.g_width", "8", "--model.init_args.d_width", "8",
           "--data.init_args.batch_size", "16", *FAST]
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_PORT", "MASTER_ADDR",
                                                             "WORLD_SIZE", "RANK", "LOCAL_RANK")}
    result = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=280,
                            env={**env, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = (tmp_path / "runs/lightning-gen").iterdir()
    rows = read_rows(run / "metrics.csv")
    assert sorted((r["step"], r["name"]) for r in rows) == sorted(
        (step, name) for step in range(4) for name in GAN_NAMES)
    # The values W&B received on rank 0 (losses averaged over the two ranks).
    received = wandb_scalars(wait_for_run_log(run / "wandb"))
    assert triples(rows) == {(r["step"], k, v) for r in received for k, v in r.items()
                             if k not in ("step", "epoch")}


def test_a_value_logged_once_has_its_best_and_last_in_wandb(tmp_path):
    # W&B keeps a plain summary for a value logged before define_metric: a FID computed once
    # (or a test result) had no metrics/fid.min / .last columns in the runs table.
    logger = WandbLogger(name="fake", save_dir=str(tmp_path / "runs"), offline=True)
    trainer = L.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=0,
                        log_every_n_steps=1, accelerator="cpu", logger=logger,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[FakeQuality([4.0], [2.0])])
    MetricsFile().attach(trainer)
    model = VAE(image_shape=(1, 32, 32), latent_dim=4, width=8, num_fixed_samples=0)
    trainer.fit(model, DigitsDataModule(image_size=32, batch_size=16, val_fraction=0.0))
    stored = wandb_log.summary(wait_for_run_log(Path(logger.log_dir) / "wandb"))
    assert stored["metrics/fid"] == {"min": 4.0, "last": 4.0}
    assert stored["metrics/is_mean"] == {"max": 2.0, "last": 2.0}
