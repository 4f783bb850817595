"""Shared by the checkpoint-safety and evaluation-fault tests: a tiny DCGAN run and an
evaluator classifier on format-true MNIST files, crafted checkpoints, a read-only folder."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch

from lightning_gen.cli import main
from tests import fakedata
from tests.metrics_helpers import classifier_checkpoint

ROOT = Path(__file__).resolve().parent.parent


def fit_dcgan(root: Path, data_dir: Path) -> Path:
    """One step of a tiny DCGAN on MNIST files; its ``checkpoints/last.ckpt`` (with the run's
    ``config.yaml`` beside ``checkpoints/``)."""
    run = root / "dcgan"
    main(["fit", "--config", str(ROOT / "experiments" / "quickstart.yaml"),
          "--model", "lightning_gen.models.DCGAN", "--model.latent_dim", "8",
          "--model.g_width", "8", "--model.d_width", "8",
          "--data", "datamodules.MNISTDataModule", "--data.data_dir", str(data_dir),
          "--data.image_size", "28", "--data.batch_size", "16", "--data.num_workers", "0",
          "--trainer.max_steps", "1", "--trainer.logger", "false",
          "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
          "--trainer.default_root_dir", str(run), "--images.every_n_epochs", "0"])
    return run / "checkpoints" / "last.ckpt"


def make_runs(root: Path) -> dict:
    data = fakedata.write_mnist(root / "mnist", n_train=64, n_test=96)
    cwd = os.getcwd()
    os.chdir(root)
    try:
        dcgan = fit_dcgan(root, data)
    finally:
        os.chdir(cwd)
    classifier = classifier_checkpoint(root / "clf.ckpt", image_shape=(1, 28, 28))
    return {"dcgan": dcgan, "classifier": classifier, "root": root, "mnist": data}


def error_line(capsys, *args: str, code: int = 2) -> str:
    """Run ``lightning-gen ARGS`` in-process; it must exit ``code`` with exactly one error line
    on stderr and no traceback. Returns that line."""
    with pytest.raises(SystemExit) as info:
        main(list(args))
    assert info.value.code == code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("lightning-gen: error:")]
    assert len(lines) == 1, err
    return lines[0]


class SystemPayload:
    """Unpickling this runs ``os.system(command)``: the classic malicious checkpoint."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def pickle_payload_checkpoint(path: Path, marker: Path) -> Path:
    torch.save({"state_dict": {}, "hyper_parameters": {"lr": SystemPayload(f"touch {marker}")}},
               path)
    return path


def class_path_checkpoint(real: Path, path: Path, marker: Path, where: str) -> Path:
    """``real`` with ``subprocess.run(args="touch MARKER", shell=True)`` as the model's
    (``where="model"``) or the DataModule's (``"data"``) class: plain data, safe to unpickle."""
    ckpt = torch.load(real, weights_only=True)
    key = "hyper_parameters" if where == "model" else "datamodule_hyper_parameters"
    ckpt[key] = {"_class_path": "subprocess.run", "args": f"touch {marker}", "shell": True}
    torch.save(ckpt, path)
    return path


@pytest.fixture
def read_only_dir(tmp_path):
    """A folder nobody can write into: chmod for a normal user; a read-only tmpfs as root
    (root writes through permission bits)."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"as root, a read-only folder needs a read-only mount: {mounted.stderr}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=False)
