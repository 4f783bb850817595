"""A checkpoint (or a run's config.yaml) someone else made cannot run code: not by unpickling,
not by naming a class to call. The suite's own checkpoints, of every model, still load."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from lightning_gen.checkpoints import load_checkpoint
from lightning_gen.cli import main
from tests.security_helpers import (
    ROOT,
    class_path_checkpoint,
    error_line,
    make_runs,
    pickle_payload_checkpoint,
)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return make_runs(tmp_path_factory.mktemp("runs"))


def _commands(ckpt, runs, tmp_path) -> dict[str, list[str]]:
    """The four ways the suite reads a checkpoint, each given ``ckpt``."""
    clf = f"classifier:{runs['classifier']}"
    evaluate = ["evaluate", "--num_samples", "40", "--reference", "test", "--batch_size", "16",
                "--isc_splits", "4", "--kid_subset_size", "20", "--accelerator", "cpu",
                "--progress", "false", "--cache_dir", str(tmp_path / "cache"),
                "--out", str(tmp_path / "out.json")]
    return {
        "sample": ["sample", "--ckpt_path", str(ckpt), "--num_samples", "4",
                   "--out", str(tmp_path / "samples"), "--accelerator", "cpu",
                   "--progress", "false"],
        "evaluate": [*evaluate, "--ckpt_path", str(ckpt), "--feature_extractor", clf],
        "fit": ["fit", "--config", str(ROOT / "experiments/dcgan_mnist.yaml"),
                "--data.data_dir", str(runs["mnist"]), "--ckpt_path", str(ckpt),
                "--trainer.max_steps", "2", "--trainer.enable_progress_bar", "false"],
        "classifier": [*evaluate, "--ckpt_path", str(runs["dcgan"]),
                       "--feature_extractor", f"classifier:{ckpt}"],
    }


COMMANDS = ["sample", "evaluate", "fit", "classifier"]


@pytest.mark.parametrize("command", COMMANDS)
def test_a_pickle_payload_never_runs(command, runs, tmp_path, capsys):
    marker = tmp_path / "PWNED"
    evil = pickle_payload_checkpoint(tmp_path / "evil.ckpt", marker)
    err = error_line(capsys, *_commands(evil, runs, tmp_path)[command])
    assert not marker.exists()
    assert "holds posix.system" in err and "--trust_checkpoint true" in err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "out.json").exists()


# fit and the classifier extractor never build a DataModule from a checkpoint.
@pytest.mark.parametrize("command, where", [(c, "model") for c in COMMANDS]
                         + [("sample", "data"), ("evaluate", "data")])
def test_a_class_path_to_subprocess_run_is_never_called(command, where, runs, tmp_path, capsys):
    marker = tmp_path / "PWNED"
    crafted = class_path_checkpoint(runs["dcgan"], tmp_path / "crafted.ckpt", marker, where)
    err = error_line(capsys, *_commands(crafted, runs, tmp_path)[command])
    assert not marker.exists()
    assert "'subprocess.run'" in err and "refused" in err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "out.json").exists()


@pytest.mark.parametrize("section", ["model", "data"])
@pytest.mark.parametrize("command", ["sample", "evaluate"])
def test_a_run_config_naming_subprocess_run_is_never_called(command, section, runs, tmp_path,
                                                            capsys):
    # A downloaded run folder: the real checkpoint beside a config.yaml naming subprocess.run.
    marker = tmp_path / "PWNED"
    run = tmp_path / "downloaded"
    (run / "checkpoints").mkdir(parents=True)
    ckpt = run / "checkpoints" / "last.ckpt"
    ckpt.write_bytes(runs["dcgan"].read_bytes())
    config = yaml.safe_load((runs["dcgan"].parent.parent / "config.yaml").read_text())
    config[section] = {"class_path": "subprocess.run",
                       "init_args": {"args": f"touch {marker}", "shell": True}}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    args = _commands(ckpt, runs, tmp_path)[command]
    if section == "model":  # the model section is read from an explicit --run_config
        args += ["--run_config", str(run / "config.yaml")]
    err = error_line(capsys, *args)
    assert not marker.exists()
    if section == "data":
        assert f"run config {run / 'config.yaml'} names 'subprocess.run'" in err
    else:  # the model a config names must be the checkpoint's
        assert "checkpoint holds a lightning_gen.models.DCGAN but the config names " \
            "subprocess.run" in err


def test_the_payload_does_not_run_in_a_real_process_either(runs, tmp_path):
    marker = tmp_path / "PWNED"
    evil = pickle_payload_checkpoint(tmp_path / "evil.ckpt", marker)
    proc = subprocess.run(
        [sys.executable, "-m", "lightning_gen.cli", "sample", "--ckpt_path", str(evil),
         "--num_samples", "2", "--out", str(tmp_path / "s"), "--accelerator", "cpu"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 2 and not marker.exists()
    assert proc.stderr.strip().splitlines()[-1].startswith("lightning-gen: error: checkpoint ")
    assert "Traceback" not in proc.stderr


def test_trust_checkpoint_loads_the_pickle_with_a_warning(runs, tmp_path, capsys):
    marker = tmp_path / "PWNED"
    evil = pickle_payload_checkpoint(tmp_path / "evil.ckpt", marker)
    # Trusted, the payload runs (that is what the flag means); the file is still no model.
    with pytest.raises(SystemExit):
        main(["sample", "--ckpt_path", str(evil), "--num_samples", "2", "--out",
              str(tmp_path / "s"), "--accelerator", "cpu", "--trust_checkpoint", "true"])
    assert marker.exists()
    err = capsys.readouterr().err
    assert err.startswith(f"lightning-gen: warning: --trust_checkpoint: loading {evil} ")
    assert "Traceback" not in err


def test_allowlisted_types_load_without_the_flag(tmp_path):
    # What a callback or an older Lightning may put into a checkpoint besides plain values.
    ckpt = {"state_dict": {"w": torch.ones(2)},
            "callbacks": {"Best": {"score": np.float64(1.5), "step": np.int64(3),
                                   "dirpath": pathlib.PurePosixPath("/runs/x")}}}
    torch.save(ckpt, tmp_path / "a.ckpt")
    loaded = load_checkpoint(tmp_path / "a.ckpt")
    assert loaded["callbacks"]["Best"]["score"] == 1.5
    assert loaded["callbacks"]["Best"]["dirpath"] == pathlib.PurePosixPath("/runs/x")


def test_lightnings_own_load_of_ckpt_path_uses_the_allowlist(runs, tmp_path, capsys):
    # trainer.fit(ckpt_path=...) unpickles the file again (weights_only=True): numpy scalars and
    # paths, which a callback may store, must load there too, without the opt-in.
    ckpt = torch.load(runs["dcgan"], weights_only=True)
    ckpt["extra"] = {"best": np.float64(0.5), "dir": pathlib.PurePosixPath("/runs/x")}
    path = tmp_path / "with_numpy.ckpt"
    torch.save(ckpt, path)
    steps = ckpt["global_step"] + 2
    main(["fit", "--config", str(ROOT / "experiments/quickstart.yaml"),
          "--model", "lightning_gen.models.DCGAN", "--model.latent_dim", "8",
          "--model.g_width", "8", "--model.d_width", "8",
          "--data", "datamodules.MNISTDataModule", "--data.data_dir", str(runs["mnist"]),
          "--data.image_size", "28", "--data.batch_size", "16", "--data.num_workers", "0",
          "--trainer.max_steps", str(steps), "--trainer.logger", "false",
          "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir",
          str(tmp_path / "resumed"), "--images.every_n_epochs", "0", "--ckpt_path", str(path)])
    resumed = load_checkpoint(tmp_path / "resumed/checkpoints/last.ckpt")
    assert resumed["global_step"] == steps  # continued from the checkpoint's step
    assert "--trust_checkpoint" not in capsys.readouterr().err
