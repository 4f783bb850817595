"""Whatever happens to a run, the last good checkpoint survives and the user reads one line.

Issue 15's cases, each reproduced: checkpoints on a full disk and on another filesystem than the
temp dir (1), a CelebA JPEG that goes bad (5), SIGTERM / SIGINT during fit (7), a read-only run
folder, an image grid on a full disk, a truncated CIFAR-10 pickle (9), user errors that used to
leave an empty run folder and W&B run (10), a truncated MNIST file (11).

A full disk is played without root by a file that raises ENOSPC after N bytes; where the
machine lets an unprivileged user mount a small tmpfs in a user namespace (``unshare -rm``),
a real full disk too.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from functools import cache
from pathlib import Path

import pytest
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from lightning_gen import checkpoint_io
from lightning_gen.callbacks import images
from lightning_gen.checkpoint_io import AtomicCheckpointIO, DiskFullError
from lightning_gen.cli import LightningGenCLI, main
from lightning_gen.runs import atomic_write
from tests.faults_helpers import FillingFile, steps_seen
from tests.test_launchers import preempted_fit, slurm_job  # noqa: F401 (a fixture)
from tests.wandb_log import wait_for_run_log

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = str(ROOT / "experiments/quickstart.yaml")
QUIET = ["--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false",
         "--trainer.enable_model_summary", "false"]
TINY = ["--config", QUICKSTART, *QUIET, "--model.init_args.g_width", "8",
        "--model.init_args.d_width", "8", "--data.init_args.image_size", "16",
        "--data.init_args.batch_size", "16"]
CELEBA_TINY = ["--config", str(ROOT / "experiments/dcgan_celeba.yaml"), *QUIET,
               "--model.init_args.g_width", "8", "--model.init_args.d_width", "8",
               "--model.init_args.latent_dim", "8", "--data.image_size", "16",
               "--data.batch_size", "4"]


def callback(name: str, **init_args) -> str:
    spec = {"class_path": f"tests.faults_helpers.{name}", "init_args": init_args}
    return f"--trainer.callbacks+={json.dumps(spec)}"


def fails(args: list[str], capsys) -> tuple[int, str]:
    """Run ``lightning-gen ARGS`` in-process; its exit status and its one ``lightning-gen:``
    line on stderr (asserted to be the only one, without a traceback)."""
    with pytest.raises(SystemExit) as info:
        main(args)
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("lightning-gen:")]
    assert len(lines) == 1, err
    return info.value.code, lines[0]


def only_run_dir() -> Path:
    runs = sorted(Path("runs").glob("*/*"))
    assert len(runs) == 1, runs
    return runs[0]


def temp_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


@cache
def user_namespaces() -> bool:
    """Whether this machine lets us mount a tmpfs in a private mount namespace (no root)."""
    if shutil.which("unshare") is None:
        return False
    probe = "d=$(mktemp -d) && mount -t tmpfs -o size=1m tmpfs $d && umount $d; rmdir $d"
    result = subprocess.run(["unshare", "-rm", "sh", "-c", probe], capture_output=True)
    return result.returncode == 0


def cli_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


# ----------------------------------------------------------------------------------------------
# 1. Checkpoints: atomic beside the target, durable, and a full disk keeps the previous one
@pytest.fixture
def other_fs_dir(tmp_path):
    """A folder on another filesystem than the temp dir where the machine has one (/dev/shm is
    a tmpfs; the temp dir usually is not), else one in tmp_path."""
    tmp_dev = os.stat(tempfile.gettempdir()).st_dev
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK) and os.stat(shm).st_dev != tmp_dev:
        folder = Path(tempfile.mkdtemp(dir=shm, prefix="lightning-gen-test-"))
        yield folder
        shutil.rmtree(folder, ignore_errors=True)
    else:
        yield tmp_path / "ckpts"


def test_a_checkpoint_is_renamed_into_place_from_its_own_folder_and_fsynced(other_fs_dir,
                                                                            monkeypatch):
    replaced, synced = [], []
    real_replace, real_fsync = os.replace, os.fsync
    monkeypatch.setattr(os, "replace", lambda a, b: (replaced.append((Path(a), Path(b))),
                                                     real_replace(a, b))[1])
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    target = other_fs_dir / "checkpoints" / "last.ckpt"
    for step in (1, 2):
        AtomicCheckpointIO().save_checkpoint({"global_step": step, "w": torch.ones(3)}, target)
    assert load(target)["global_step"] == 2
    # Each save: one rename within the destination folder (atomic on its filesystem, whatever
    # the temp dir is), after an fsync of the file; then the folder's fsync.
    assert [(a.parent, b) for a, b in replaced] == [(target.parent, target)] * 2
    assert len(synced) >= 4
    assert sorted(p.name for p in target.parent.iterdir()) == ["last.ckpt"]


def test_atomic_write_fsyncs_file_and_folder_and_a_failed_write_keeps_the_old_file(
        tmp_path, monkeypatch):
    # Configs, PNGs, JSON, caches and samples go through runs.atomic_write.
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (
        synced.append(Path(os.readlink(f"/proc/self/fd/{fd}"))), real_fsync(fd))[1])
    target = tmp_path / "summary.json"
    atomic_write(target, lambda tmp: Path(tmp).write_text('{"fid": 1}'))
    assert [p.parent for p in synced] == [tmp_path, tmp_path.parent]  # the new file, its folder
    assert synced[0].name.startswith(".summary.json.") and synced[1] == tmp_path

    def half_then_full(tmp):
        Path(tmp).write_text('{"fi')
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        atomic_write(target, half_then_full)
    assert target.read_text() == '{"fid": 1}'
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_lightnings_own_checkpoint_io_stages_in_the_temp_dir(other_fs_dir, monkeypatch):
    # Why the suite has its own: Lightning's temporary file lives in the temp dir, and its
    # commit is a copy onto the target when they are on different filesystems.
    staged = []
    real_mkstemp = tempfile.mkstemp

    def mkstemp(*args, **kwargs):
        fd, name = real_mkstemp(*args, **kwargs)
        staged.append(Path(name))
        return fd, name

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    target = other_fs_dir / "last.ckpt"
    TorchCheckpointIO().save_checkpoint({"w": torch.ones(3)}, target)
    AtomicCheckpointIO().save_checkpoint({"w": torch.ones(3)}, target)
    assert staged[-1].parent == target.parent
    if other_fs_dir.stat().st_dev != os.stat(tempfile.gettempdir()).st_dev:
        assert all(p.parent != target.parent for p in staged[:-1])


def test_a_full_disk_keeps_the_previous_checkpoint_and_names_the_space_needed(other_fs_dir,
                                                                             monkeypatch):
    target = other_fs_dir / "last.ckpt"
    old = {"global_step": 10, "w": torch.arange(1000.0)}
    AtomicCheckpointIO().save_checkpoint(old, target)
    monkeypatch.setattr(checkpoint_io, "_open", lambda path: FillingFile(path, limit=1000))
    new = {"global_step": 20, "w": torch.zeros(200_000)}
    with pytest.raises(DiskFullError) as info:
        AtomicCheckpointIO().save_checkpoint(new, target)
    message = str(info.value)
    assert f"no space left for checkpoint {target}" in message
    assert f"in {other_fs_dir} (" in message and "the previous last.ckpt is unchanged" in message
    needed = float(re.search(r"needs ([\d.]+) MB", message).group(1)) * 1e6
    assert abs(needed - checkpoint_io.serialized_size(new)) < 0.01e6
    assert needed >= 0.8e6  # 200,000 float32
    assert torch.equal(load(target)["w"], old["w"])  # the previous one, whole
    assert sorted(p.name for p in other_fs_dir.iterdir()) == ["last.ckpt"]  # no half file


def test_disk_full_during_fit_stops_in_one_line_and_the_last_checkpoint_loads(monkeypatch,
                                                                            capsys):
    opened = []

    def full_after_the_first(path):
        opened.append(path)
        return open(path, "wb") if len(opened) == 1 else FillingFile(path, limit=20_000)

    monkeypatch.setattr(checkpoint_io, "_open", full_after_the_first)
    code, line = fails(["fit", *TINY, "--trainer.max_steps", "8",
                        "--checkpoint.every_n_train_steps", "2"], capsys)
    ckpt = only_run_dir() / "checkpoints/last.ckpt"
    assert code == 1
    assert line.startswith(f"lightning-gen: training stopped: no space left for checkpoint "
                           f"{ckpt}: it needs ")
    assert f"in {ckpt.parent} (" in line and "resume with --ckpt_path last" in line
    needed = float(re.search(r"needs ([\d.]+) MB", line).group(1)) * 1e6
    assert abs(needed - ckpt.stat().st_size) < 0.01e6
    assert load(ckpt)["global_step"] == 2  # the step-2 checkpoint, not half of step 4
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["last.ckpt"]


def test_every_fit_and_a_ddp_fit_save_through_the_suites_checkpoint_io():
    cli = LightningGenCLI(args=TINY, run=False, save_config_callback=None)
    assert type(cli.trainer.strategy.checkpoint_io) is AtomicCheckpointIO
    ddp = LightningGenCLI(args=[*TINY, "--trainer.strategy", "ddp", "--trainer.devices", "2"],
                          run=False, save_config_callback=None)
    assert type(ddp.trainer.strategy.checkpoint_io) is AtomicCheckpointIO


@pytest.mark.usefixtures("slurm_job")  # a SLURM job with a stand-in scontrol in tmp_path
def test_slurms_preemption_checkpoint_is_written_by_the_suites_checkpoint_io(tmp_path,
                                                                            monkeypatch):
    # SIGUSR1 under SLURM: Lightning's handler saves hpc_ckpt_N.ckpt through the strategy's
    # checkpoint IO (ours) and requeues the job, as before (tests/test_launchers.py).
    saved = []
    real_save = AtomicCheckpointIO.save_checkpoint

    def recording_save(self, checkpoint, path, storage_options=None):
        saved.append(Path(path).name)
        return real_save(self, checkpoint, path, storage_options)

    monkeypatch.setattr(AtomicCheckpointIO, "save_checkpoint", recording_save)
    preempted_fit(max_steps=8, at_step=4)
    assert saved == ["hpc_ckpt_1.ckpt"]
    assert (tmp_path / "scontrol.calls").read_text().split() == ["requeue", "4242"]
    run = Path("runs/lightning-gen/quickstart-slurm4242.0")
    assert load(run / "hpc_ckpt_1.ckpt")["global_step"] == 4
    assert not temp_files(run)


@pytest.mark.slow
@pytest.mark.skipif(not user_namespaces(), reason="no unprivileged mount namespaces here: the "
                    "ENOSPC tests above stand in for a real full disk")
def test_a_real_full_disk_on_another_filesystem_keeps_the_previous_checkpoint(tmp_path):
    # A 24 MB tmpfs (not the temp dir's filesystem) as the runs folder; after the step-4
    # checkpoint another writer fills it, so the step-8 checkpoint meets a real ENOSPC.
    disk = tmp_path / "disk"
    disk.mkdir()
    fit = [sys.executable, "-m", "lightning_gen.cli", "fit", *TINY,
           "--trainer.logger", "lightning.pytorch.loggers.CSVLogger",
           "--trainer.logger.save_dir", str(disk / "runs"), "--trainer.max_steps", "12",
           "--checkpoint.every_n_train_steps", "4",
           callback("FillDiskAt", folder=str(disk), step=6, leave=16384)]
    check = ("import sys, torch, pathlib; (c,) = pathlib.Path(sys.argv[1]).glob('runs/**/last.ckpt');"
             "print('STEP', torch.load(c, weights_only=False)['global_step']);"
             "print('FILES', sorted(p.name for p in c.parent.iterdir()))")
    script = (f'mount -t tmpfs -o size=24m tmpfs {disk} && '
              f'{" ".join(map(_quote, fit))}; echo "RC $?"; '
              f'{sys.executable} -c {_quote(check)} {disk}')
    result = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True,
                            text=True, timeout=280, env=cli_env(), cwd=tmp_path)
    out, err = result.stdout, result.stderr
    assert "RC 1" in out, err[-3000:]
    assert "Traceback" not in err
    (line,) = [x for x in err.splitlines() if x.startswith("lightning-gen:")]
    assert "no space left for checkpoint" in line and "No space left on device" in line
    assert "STEP 4" in out and "FILES ['last.ckpt']" in out


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\"'\"'") + "'"


# ----------------------------------------------------------------------------------------------
# 7. SIGTERM / SIGINT during fit: a checkpoint at the next batch boundary, exit 143 / 130
@pytest.mark.slow
def test_sigterm_mid_epoch_saves_the_step_reached_and_resume_continues_from_it(tmp_path,
                                                                             capfd):
    marker = tmp_path / "steps.txt"
    proc = subprocess.Popen(
        [sys.executable, "-m", "lightning_gen.cli", "fit", *TINY, "--trainer.max_steps", "1000",
         callback("StepMarker", path=str(marker), delay=0.2)],
        cwd=tmp_path, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while len(steps_seen(marker)) < 4:  # mid-epoch: an epoch has 84 batches
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        reached = steps_seen(marker)[-1]
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 143, err[-3000:]
    assert "Traceback" not in err
    run = only_run_dir()
    ckpt = run / "checkpoints/last.ckpt"
    saved = load(ckpt)["global_step"]
    assert reached <= saved <= reached + 2  # the batch it was in (2 optimizer steps per batch)
    (line,) = [x for x in err.splitlines() if x.startswith("lightning-gen:")]
    # The step W&B and metrics.csv file the last batch's values at (batches from 0: the
    # checkpoint's d_steps - 1), then the optimizer steps (--trainer.max_steps counts those).
    last_batch = load(ckpt)["gan_steps"]["d_steps"] - 1
    assert last_batch == saved // 2 - 1
    assert line == (f"lightning-gen: stopped by SIGTERM at step {last_batch} ({saved} optimizer "
                    f"steps); saved {ckpt}. Resume: the same command with --ckpt_path last")
    wait_for_run_log(run / "wandb", timeout=30)  # the W&B run was finished (its exit record)

    resumed = tmp_path / "resumed.txt"
    capfd.readouterr()
    main(["fit", *TINY, "--trainer.max_steps", str(saved + 4),
          callback("StepMarker", path=str(resumed)), "--ckpt_path", "last"])
    assert only_run_dir() == run
    # What the rest of the interrupted epoch is, in one line (Lightning warned of "unreliable
    # results" instead, and for GANs decided it from optimizer steps).
    (said,) = [x for x in capfd.readouterr().err.splitlines() if "resumed after" in x]
    done, total, rest = map(int, re.fullmatch(
        r"lightning-gen: resumed after batch (\d+) of (\d+) of epoch 1: the data loaders keep no "
        r"position, so its other (\d+) batches come from a new shuffle of the training data "
        r"\(some images twice, some not at all\); the next epochs are whole", said).groups())
    assert done == saved // 2 and total > done + 4 and rest == total - done
    assert steps_seen(resumed) == [saved + 2, saved + 4]  # went on from the step it reached
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["last.ckpt"]  # no last-v1.ckpt
    last = load(ckpt)
    assert last["gan_steps"] == {"d_steps": saved // 2 + 2, "g_steps": saved // 2 + 2}


@pytest.mark.slow
def test_sigterm_to_rank_0_of_a_ddp_fit_stops_every_rank_at_the_same_batch(tmp_path):
    # Lightning's own SIGTERM handling stops rank 0 alone: a checkpoint there would wait for
    # rank 1 forever (seen here before the ranks agreed on the flag at every batch end).
    marker = tmp_path / "steps.txt"
    proc = subprocess.Popen(
        [sys.executable, "-m", "lightning_gen.cli", "fit", *TINY, "--trainer.max_steps", "1000",
         "--trainer.strategy", "ddp_find_unused_parameters_true", "--trainer.devices", "2",
         callback("StepMarker", path=str(marker), delay=0.2)],
        cwd=tmp_path, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while len(steps_seen(marker)) < 8:  # both ranks write
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)  # rank 0 only; rank 1 is its child process
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 143, err[-3000:]
    ckpt = only_run_dir() / "checkpoints/last.ckpt"
    (line,) = [x for x in err.splitlines() if x.startswith("lightning-gen:")]
    step = load(ckpt)["global_step"]
    assert line == (f"lightning-gen: stopped by SIGTERM at step {step // 2 - 1} ({step} optimizer "
                    f"steps); saved {ckpt}. Resume: the same command with --ckpt_path last")
    assert load(ckpt)["gan_steps"] == {"d_steps": step // 2, "g_steps": step // 2}


def test_ctrl_c_saves_at_the_end_of_the_batch_and_exits_130(capsys):
    with pytest.raises(SystemExit) as info:
        main(["fit", *TINY, "--trainer.max_steps", "1000",
              callback("SignalAt", step=4, signum=int(signal.SIGINT))])
    err = capsys.readouterr().err
    ckpt = only_run_dir() / "checkpoints/last.ckpt"
    assert info.value.code == 130 and "Traceback" not in err
    # A notice at the first Ctrl-C (a second one stops at once), the line at the end.
    assert [x for x in err.splitlines() if x.startswith("lightning-gen:")] == [
        "lightning-gen: interrupted: saving a checkpoint at the end of this batch (press Ctrl-C "
        "again to stop at once)",
        f"lightning-gen: stopped by SIGINT at step 1 (4 optimizer steps); saved {ckpt}. Resume: "
        "the same command with --ckpt_path last"]
    assert load(ckpt)["global_step"] == 4
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # given back


@pytest.mark.parametrize("rank", [0, 1])
def test_ctrl_c_under_ddp_is_announced_by_rank_0_alone(rank, monkeypatch, capsys):
    # Ctrl-C reaches every rank of a DDP fit (one process group): the notice came once per rank.
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    from lightning_gen.faults import SaveOnInterrupt

    monkeypatch.setattr(rank_zero_only, "rank", rank)
    callback = SaveOnInterrupt()
    callback._on_signal(signal.SIGINT, None)
    assert callback.signum == signal.SIGINT  # every rank stops at the batch end
    lines = [x for x in capsys.readouterr().err.splitlines() if x]
    assert lines == ([
        "lightning-gen: interrupted: saving a checkpoint at the end of this batch (press Ctrl-C "
        "again to stop at once)"] if rank == 0 else [])


# ----------------------------------------------------------------------------------------------
# 5. Damaged data files: named in one line, after the last good state is saved
def test_a_celeba_jpeg_that_goes_bad_is_named_after_the_state_is_saved(celeba_dir, capsys,
                                                                       monkeypatch):
    monkeypatch.setenv("LIGHTNING_GEN_EXACT_WORKERS", "1")  # read in a worker process
    image = celeba_dir / "celeba/img_align_celeba/000003.jpg"  # in the training partition
    code, line = fails(["fit", *CELEBA_TINY, "--data.data_dir", str(celeba_dir),
                        "--data.num_workers", "1", "--trainer.max_steps", "40",
                        callback("CorruptAt", path=str(image), step=2)], capsys)
    ckpt = only_run_dir() / "checkpoints/last.ckpt"
    assert code == 1
    step, opt = map(int, re.match(
        r"lightning-gen: training stopped at step (\d+) \((\d+) optimizer steps\): ",
        line).groups())
    assert opt == 2 * (step + 1)  # a GAN: D and G steps of batches 0..step
    assert line.startswith(f"lightning-gen: training stopped at step {step} ({opt} optimizer "
                           f"steps): CelebA: cannot "
                           f"read {image} (OSError: ")
    assert line.endswith(f"Saved the state before it: {ckpt}. Resume: the same command with "
                         "--ckpt_path last")
    assert step >= 1 and load(ckpt)["global_step"] == opt


def test_skip_corrupt_skips_and_counts_unreadable_images(celeba_dir, capsys):
    bad = [celeba_dir / f"celeba/img_align_celeba/00000{i}.jpg" for i in (1, 2)]
    bad[0].write_bytes(bad[0].read_bytes()[:300])  # truncated JPEG
    bad[1].write_bytes(b"not an image")
    main(["fit", *CELEBA_TINY, "--data.data_dir", str(celeba_dir), "--data.skip_corrupt", "true",
          "--data.num_workers", "0", "--trainer.max_steps", "16"])  # two epochs of 4 batches
    err = capsys.readouterr().err
    assert load(only_run_dir() / "checkpoints/last.ckpt")["global_step"] == 16
    for path in bad:
        assert err.count(f"lightning-gen: warning: CelebA: skipping {path} (") == 1
    assert ("lightning-gen: warning: CelebA: skipped 2 image file(s) that could not be read "
            "(--data.skip_corrupt true; each is named above)") in err
    assert "Traceback" not in err


# ----------------------------------------------------------------------------------------------
# 9, 11. Truncated CIFAR-10 and MNIST files: one line naming the file; no run folder
def test_a_truncated_cifar10_pickle_is_named(cifar10_dir, capsys):
    batch = cifar10_dir / "cifar-10-batches-py/data_batch_3"
    batch.write_bytes(batch.read_bytes()[:5000])
    code, line = fails(["fit", "--config", str(ROOT / "experiments/dcgan_cifar10.yaml"),
                        "--data.data_dir", str(cifar10_dir), *QUIET], capsys)
    assert code == 2
    assert line.startswith(f"lightning-gen: error: CIFAR-10: cannot read {batch} "
                           "(UnpicklingError: pickle data was truncated): the file is damaged")
    assert not Path("runs").exists()


def test_a_truncated_mnist_file_is_named_not_called_a_failed_download(mnist_dir, capsys):
    images_file = mnist_dir / "MNIST/raw/train-images-idx3-ubyte"
    images_file.write_bytes(images_file.read_bytes()[:3000])
    code, line = fails(["fit", "--config", str(ROOT / "experiments/dcgan_mnist.yaml"),
                        "--data.data_dir", str(mnist_dir), *QUIET], capsys)
    assert code == 2
    assert line.startswith(f"lightning-gen: error: MNIST: cannot read {images_file} "
                           "(RuntimeError: ")
    assert "download" not in line.split("):")[0] and "the download failed" not in line
    assert not Path("runs").exists()


# ----------------------------------------------------------------------------------------------
# 10, 9. User errors: one line, exit 2, no run folder, no W&B run
def test_a_checkpoint_path_that_does_not_exist_is_one_line_before_the_run(capsys):
    code, line = fails(["fit", *TINY, "--ckpt_path", "nope.ckpt"], capsys)
    assert code == 2
    assert line.startswith("lightning-gen: error: --ckpt_path nope.ckpt: no such file.")
    assert not Path("runs").exists() and not list(Path.cwd().rglob("*.wandb"))


@pytest.mark.parametrize("option, config", [("lr_g", QUICKSTART), ("lr_d", QUICKSTART),
                                            ("lr", str(ROOT / "experiments/vae_mnist.yaml"))])
def test_a_negative_learning_rate_names_its_option(option, config, capsys):
    code, line = fails(["fit", "--config", config, f"--model.init_args.{option}", "-0.1"], capsys)
    assert code == 2
    assert line == (f"lightning-gen: error: {option} must be a positive learning rate, got -0.1 "
                    f"(--model.init_args.{option})")
    assert not Path("runs").exists()


@pytest.mark.slow  # as root: a subprocess in a mount namespace
def test_a_read_only_save_dir_is_one_line_before_the_run(tmp_path, capsys):
    target = tmp_path / "readonly"
    target.mkdir()
    args = ["fit", *TINY, "--trainer.logger.init_args.save_dir", str(target / "runs")]
    if os.geteuid() != 0:  # permissions bind an ordinary user
        target.chmod(0o555)
        try:
            code, line = fails(args, capsys)
        finally:
            target.chmod(0o755)
        assert code == 2 and f"{target} is not writable by this user" in line
    else:  # root ignores permissions: a read-only filesystem binds root too
        if not user_namespaces():
            pytest.skip("running as root without mount namespaces: no read-only folder to try")
        script = (f"mount -t tmpfs -o ro,size=1m tmpfs {target} && "
                  f"exec {sys.executable} -m lightning_gen.cli {' '.join(map(_quote, args))}")
        result = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True,
                                text=True, timeout=240, env=cli_env(), cwd=tmp_path)
        code, err = result.returncode, result.stderr
        assert "Traceback" not in err, err
        (line,) = [x for x in err.splitlines() if x.startswith("lightning-gen:")]
        assert code == 2 and f"{target} is on a read-only file system" in line
    assert line.startswith(f"lightning-gen: error: cannot create the run folder {target}/runs/")
    assert "--trainer.logger.init_args.save_dir" in line
    assert not list(tmp_path.rglob("*.wandb"))


def test_an_image_grid_on_a_full_disk_is_one_line_and_the_last_png_stays(monkeypatch, capsys):
    real_write_png, calls = images.write_png, []

    def full_after_the_first_grid(pixels, path):
        calls.append(path)
        if len(calls) <= 2:  # samples_epoch0001.png and samples_last.png
            return real_write_png(pixels, path)
        Path(path).write_bytes(b"\x89PNG half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(images, "write_png", full_after_the_first_grid)
    main(["fit", *TINY, "--trainer.max_steps", "-1", "--trainer.max_epochs", "2",
          "--trainer.limit_train_batches", "2", "--images.every_n_epochs", "1"])
    err = capsys.readouterr().err
    run = only_run_dir()
    folder = run / "images"
    warnings = [x for x in err.splitlines() if x.startswith("lightning-gen:")]
    assert warnings == [f"lightning-gen: warning: could not write the image grid samples at step "
                        f"4 to {folder} (No space left on device); {folder / 'samples_last.png'} "
                        "is the last one written; training goes on"]
    assert (folder / "samples_last.png").read_bytes() == (
        folder / "samples_epoch0001.png").read_bytes()
    assert sorted(p.name for p in folder.iterdir()) == ["samples_epoch0001.png",
                                                        "samples_last.png"]
    assert load(run / "checkpoints/last.ckpt")["global_step"] == 8  # the run went on
