"""What a run's W&B record holds, read back from the offline log: the resolved config (nested,
no flat duplicates), group/tags/job type, images with the PNG's pixels at the scalars' step,
alternative x-axes, and one W&B run across a resume with one command to upload it all."""

from __future__ import annotations

import glob
import io
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from lightning_gen.callbacks.images import image_grid, log_grid
from lightning_gen.run_record import set_wandb_defaults
from tests.test_metrics_file import VAE_YAML
from tests.wandb_log import (
    config,
    history,
    metric_definitions,
    read_records,
    run_info,
    wait_for_run_log,
)

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = str(ROOT / "experiments/quickstart.yaml")
BATCHES_PER_EPOCH = 3
BATCH_SIZE = 16
# A quickstart fit (DCGAN: two optimizer steps per batch) shrunk to 2 epochs of 3 batches, a grid
# after each epoch, scalars at every step.
FIT = ["fit", "--config", QUICKSTART, "--trainer.accelerator", "cpu",
       "--model.init_args.g_width", "8", "--model.init_args.d_width", "8",
       "--data.init_args.image_size", "16", "--data.init_args.batch_size", str(BATCH_SIZE),
       "--data.init_args.num_workers", "0", "--trainer.limit_train_batches", str(BATCHES_PER_EPOCH),
       "--trainer.max_epochs", "2", "--trainer.log_every_n_steps", "1", "--images.every_n_epochs",
       "1", "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
LRS = ("0.0002", "0.0001")
# What the run record adds to the resolved config (git only when run from a checkout).
ADDED = {"experiment", "model_family", "dataset", "image_shape", "params", "versions"}


def cli(cwd: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "offline", "WANDB_SILENT": "true",
           "WANDB_DIR": str(cwd), "WANDB_CONFIG_DIR": str(cwd / ".wandb-config"),
           "WANDB_CACHE_DIR": str(cwd / ".wandb-cache")}
    return subprocess.Popen([sys.executable, "-m", "lightning_gen", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(process: subprocess.Popen) -> str:
    out, _ = process.communicate(timeout=600)
    assert process.returncode == 0, out
    return out


def the_run(cwd: Path) -> Path:
    (run,) = (cwd / "runs").glob("*/*")
    return run


@pytest.fixture(scope="module")
def fits(tmp_path_factory) -> dict[str, Path]:
    """Two quickstart fits that differ only in lr_g (run side by side): lr_g -> run folder."""
    cwds = {lr: tmp_path_factory.mktemp(f"lr{lr}") for lr in LRS}
    processes = {lr: cli(cwd, *FIT, "--model.init_args.lr_g", lr) for lr, cwd in cwds.items()}
    for process in processes.values():
        finish(process)
    return {lr: the_run(cwd) for lr, cwd in cwds.items()}


@pytest.fixture(scope="module")
def resumed(fits, tmp_path_factory) -> tuple[Path, str]:
    """The first fit, copied, continued with --ckpt_path last for a third epoch: (run, stdout)."""
    cwd = tmp_path_factory.mktemp("resumed")
    shutil.copytree(fits[LRS[0]].parents[2] / "runs", cwd / "runs")
    out = finish(cli(cwd, *FIT, "--model.init_args.lr_g", LRS[0], "--trainer.max_epochs", "3",
                     "--ckpt_path", "last"))
    return the_run(cwd), out


def wandb_log(run: Path, segment: int = -1) -> Path:
    wait_for_run_log(run / "wandb")
    return sorted(run.glob("wandb/offline-run-*/run-*.wandb"))[segment]


def flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def test_wandb_config_is_the_resolved_config_nested_with_no_flat_duplicates(fits):
    for lr, run in fits.items():
        stored = config(wandb_log(run))
        saved = yaml.safe_load((run / "config.yaml").read_text())
        assert stored["model"]["class_path"] == "lightning_gen.models.DCGAN"
        assert stored["data"]["class_path"] == "datamodules.DigitsDataModule"
        assert stored["trainer"]["precision"] == "32-true" and stored["seed_everything"] == 0
        assert stored["model"]["init_args"]["lr_g"] == float(lr)
        assert stored["data"]["init_args"]["batch_size"] == BATCH_SIZE
        # Every key of config.yaml, with its value, and nothing at the root but what the run
        # record adds: no flat hyperparameters, no `_instantiator`.
        assert {key: stored[key] for key in saved} == saved
        assert ADDED <= set(stored) <= set(saved) | ADDED | {"git"}
        assert not {"lr_g", "latent_dim", "batch_size", "image_size", "_instantiator"} & set(stored)


def test_two_runs_differing_in_lr_g_differ_in_that_config_key_only(fits):
    a, b = (flatten(config(wandb_log(fits[lr]))) for lr in LRS)
    assert set(a) == set(b)
    assert {key for key in a if a[key] != b[key]} == {"model.init_args.lr_g"}


def test_run_record_names_the_experiment_model_data_parameters_and_versions(fits):
    stored = config(wandb_log(fits[LRS[0]]))
    assert (stored["experiment"], stored["model_family"], stored["dataset"]) == (
        "quickstart", "DCGAN", "Digits")
    assert stored["image_shape"] == [1, 16, 16]
    params = stored["params"]
    assert params["generator"] > 0 and params["discriminator"] > 0
    assert params["total"] == params["generator"] + params["discriminator"]
    versions = stored["versions"]
    assert versions["torch"] == torch.__version__ and versions["python"].count(".") == 2
    assert {"lightning", "lightning_gen", "cuda", "device"} <= set(versions)
    if (ROOT / ".git").exists():  # a checkout (a worktree's .git is a file)
        assert len(stored["git"]["commit"]) == 40 and isinstance(stored["git"]["dirty"], bool)


def test_group_tags_and_job_type_default_and_are_saved_in_config_yaml(fits):
    for run in fits.values():
        info = run_info(wandb_log(run))
        assert info["id"] == run.name
        assert info["group"] == "quickstart" and info["job_type"] == "fit"
        assert info["tags"] == ["DCGAN", "Digits", "32-true"]
        saved = yaml.safe_load((run / "config.yaml").read_text())["trainer"]["logger"]
        assert saved["init_args"]["group"] == "quickstart"
        assert saved["init_args"]["tags"] == ["DCGAN", "Digits", "32-true"]
        assert saved["init_args"]["job_type"] == "fit"


def test_group_tags_and_job_type_from_the_yaml_or_command_line_win():
    config_ = yaml.safe_load(Path(QUICKSTART).read_text())
    args = config_["trainer"]["logger"]["init_args"]
    args.update(group="sweep-3", tags=[], job_type=None)
    config_["trainer"]["precision"] = "bf16-mixed"
    set_wandb_defaults(config_, job_type="fit")
    assert (args["group"], args["tags"], args["job_type"]) == ("sweep-3", [], "fit")
    # Other loggers are left alone.
    csv = {"trainer": {"logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                                  "init_args": {"save_dir": "runs"}}}}
    set_wandb_defaults(csv, job_type="fit")
    assert csv["trainer"]["logger"]["init_args"] == {"save_dir": "runs"}


def test_wandb_images_are_the_png_pixels_at_the_scalars_step(fits):
    run = fits[LRS[0]]
    log = wandb_log(run)
    rows = history(log)
    images = [r for r in rows if r.get("images/samples/_type") == "images/separated"]
    # The caption says when, and what the grid shows.
    assert [r["images/samples/captions"] for r in images] == [
        ["after 1 epochs, step 3 | G(z) of fixed noise z"],
        ["after 2 epochs, step 6 | G(z) of fixed noise z"]]
    for epoch, row in enumerate(images, start=1):
        (name,) = row["images/samples/filenames"]
        stored = np.asarray(Image.open(log.parent / "files" / name).convert("RGB"), dtype=int)
        local = np.asarray(Image.open(run / f"images/samples_epoch{epoch:04d}.png").convert("RGB"),
                           dtype=int)
        assert stored.shape == local.shape == (8 * 18 + 2, 8 * 18 + 2, 3)
        assert np.abs(stored - local).max() <= 1  # 1/255
        assert len(np.unique(stored)) > 2  # not the 0/1 pixels of a float grid
        # The file says what it shows too (its Description text).
        assert Image.open(log.parent / "files" / name).text["Description"] == (
            "G(z) of fixed noise z")
        # Encoded once: W&B holds the epoch's PNG file itself.
        assert (log.parent / "files" / name).read_bytes() == (
            run / f"images/samples_epoch{epoch:04d}.png").read_bytes()
        # The step Lightning logs scalars at: batches done (3 per epoch), not the optimizer
        # steps of trainer.global_step (2 per batch for this GAN: 6, 12).
        assert row["trainer/global_step"] == epoch * BATCHES_PER_EPOCH
    # One x-axis: the step column never goes back (it went 2, 6, 3, ... with images at the
    # optimizer step).
    steps = [r["trainer/global_step"] for r in rows]
    assert steps == sorted(steps)
    scalar_steps = [r["trainer/global_step"] for r in rows if "train/g_loss" in r]
    assert scalar_steps == list(range(2 * BATCHES_PER_EPOCH))
    ckpt = torch.load(run / "checkpoints/last.ckpt", weights_only=False, map_location="cpu")
    logged_at = ckpt["loops"]["fit_loop"]["epoch_loop.state_dict"]["_batches_that_stepped"]
    assert images[-1]["trainer/global_step"] == logged_at != ckpt["global_step"]


def test_g_steps_epoch_and_images_seen_are_alternative_x_axes(fits):
    log = wandb_log(fits[LRS[0]])
    axes = metric_definitions(log)
    assert axes["*"] == "trainer/global_step"
    assert {name: axes.get(name) for name in ("train/g_steps", "epoch", "images_seen")} == {
        "train/g_steps": "", "epoch": "", "images_seen": ""}
    scalars = [r for r in history(log) if "train/g_loss" in r]
    for row in scalars:  # each row carries every axis
        step = row["trainer/global_step"]
        assert row["train/g_steps"] == step + 1  # n_critic = 1: one G update per batch
        assert row["epoch"] == step // BATCHES_PER_EPOCH
        assert row["images_seen"] == (step + 1) * BATCH_SIZE  # this batch included


def test_resume_continues_the_wandb_run_and_one_command_uploads_every_segment(resumed):
    run, out = resumed
    wait_for_run_log(run / "wandb")
    segments = sorted(run.glob("wandb/offline-run-*"))
    assert len(segments) == 2
    logs = [next(s.glob("run-*.wandb")) for s in segments]
    for log in logs:
        assert any(r.WhichOneof("record_type") == "exit" for r in read_records(log))
    assert {run_info(log)["id"] for log in logs} == {run.name}
    # The continuation records the whole config again, and goes on along the same x-axis.
    assert config(logs[1])["model"]["class_path"] == "lightning_gen.models.DCGAN"
    steps = [r["trainer/global_step"] for r in history(logs[1]) if "train/g_loss" in r]
    assert steps == list(range(2 * BATCHES_PER_EPOCH, 3 * BATCHES_PER_EPOCH))
    (line,) = [ln for ln in out.splitlines() if ln.startswith("W&B offline run: ")]
    command = line.split("(upload: ", 1)[1].rstrip(")")
    words = shlex.split(command)
    assert words[:2] == ["wandb", "sync"] and len(words) == 3
    # Every segment, as the shell expands the pattern (the command runs where the fit ran).
    cwd = run.parents[2]
    assert sorted(cwd / p for p in glob.glob(words[2], root_dir=cwd)) == segments
    # wandb itself takes the command as one run's segments.
    dry = subprocess.run(f"{shlex.quote(sys.executable)} -m {command} --dry-run", shell=True,
                         capture_output=True, text=True, timeout=120, cwd=cwd,
                         env={**os.environ, "WANDB_MODE": "offline"})
    assert dry.returncode == 0, dry.stderr
    assert "Would sync 2 run(s)" in dry.stdout + dry.stderr


def test_tensorboard_gets_the_png_pixels_at_the_logging_step_too(tmp_path):
    from lightning import Trainer
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torchvision.utils import save_image

    trainer = Trainer(logger=TensorBoardLogger(tmp_path / "tb"), accelerator="cpu",
                      enable_progress_bar=False, enable_model_summary=False)
    trainer.fit_loop.epoch_loop._batches_that_stepped = 7  # as after 7 training batches
    grid = image_grid(torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1,
                      nrow=2)
    png = log_grid(trainer, "samples", grid, epochs_done=1)
    trainer.logger.experiment.flush()
    events = EventAccumulator(trainer.logger.log_dir)
    events.Reload()
    (image,) = events.Images("images/samples")
    assert image.step == 7
    stored = np.asarray(Image.open(io.BytesIO(image.encoded_image_string)).convert("RGB"), int)
    local = np.asarray(Image.open(png).convert("RGB"), int)
    assert stored.shape == local.shape == (2 * 10 + 2, 2 * 10 + 2, 3)
    assert np.abs(stored - local).max() <= 1
    # The PNG holds what torchvision's save_image writes for the grid.
    save_image(grid, tmp_path / "torchvision.png")
    assert np.array_equal(np.asarray(Image.open(tmp_path / "torchvision.png").convert("RGB"), int),
                          local)


def test_wandb_mode_disabled_writes_no_wandb_run(tmp_path, monkeypatch, capsys):
    """W&B's own switch: nothing under wandb/, no W&B line, and the setting survives the run
    (Lightning set WANDB_MODE=dryrun for an offline logger: the next run of the process, a
    sweep's next trial, was then recorded after all)."""
    import wandb

    from lightning_gen.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    try:
        for lr in LRS:  # two runs in one process
            main([*FIT, "--model.init_args.lr_g", lr])
            assert os.environ["WANDB_MODE"] == "disabled"
    finally:
        # W&B keeps the settings of its first setup for the whole process: a later test's
        # offline run would be disabled too (and its run log never appear).
        wandb.teardown()
    runs = sorted((tmp_path / "runs").glob("*/*"))
    assert len(runs) == 2 and all((run / "checkpoints/last.ckpt").is_file() for run in runs)
    assert not list(tmp_path.rglob("*.wandb")) and not list(tmp_path.rglob("wandb"))
    assert "W&B" not in capsys.readouterr().out


# test_metrics_file's VAE (2 epochs of 3 batches) with the suite's W&B logger.
VAE_WANDB = ["--trainer.logger=lightning_gen.loggers.WandbLogger",
             "--trainer.logger.init_args.name=vae", "--trainer.logger.init_args.save_dir=runs",
             "--trainer.accelerator=cpu", "--data.init_args.num_workers=0",
             "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


def test_validate_and_test_of_a_checkpoint_log_at_its_step_in_wandb(tmp_path):
    # Lightning restores no loop state outside fit: W&B got a trained checkpoint's validation
    # and test results at step 0, epoch 0, the left edge of the training curves.
    (tmp_path / "vae.yaml").write_text(VAE_YAML)
    finish(cli(tmp_path, "fit", "--config", "vae.yaml", *VAE_WANDB))
    run = the_run(tmp_path)
    ckpt = run / "checkpoints/last.ckpt"
    loops = torch.load(ckpt, weights_only=False, map_location="cpu")["loops"]
    step = loops["fit_loop"]["epoch_loop.state_dict"]["_batches_that_stepped"]
    assert step == 2 * 3  # 2 epochs of 3 batches
    fit_val = [r for r in history(wandb_log(run)) if "val/elbo" in r]
    # fit validates inside an epoch's last batch, before Lightning counts it: steps 2 and 5
    assert [(r["trainer/global_step"], r["epoch"]) for r in fit_val] == [(2, 0), (5, 1)]
    for stage, name in (("validate", "val/elbo"), ("test", "test/elbo")):
        before = set((tmp_path / "runs").glob("*/*"))
        finish(cli(tmp_path, stage, "--config", "vae.yaml", *VAE_WANDB, "--ckpt_path", str(ckpt)))
        (stage_run,) = set((tmp_path / "runs").glob("*/*")) - before  # a W&B run of its own
        log = wandb_log(stage_run)
        assert run_info(log)["job_type"] == stage
        (row,) = [r for r in history(log) if name in r]
        # The checkpoint's step and epoch: where its training would have logged next.
        assert (row["trainer/global_step"], row["epoch"]) == (step, 1)
