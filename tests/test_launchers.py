"""Multi-node launchers and SLURM requeues, through the `lightning-gen` command.

Two "nodes" are two process groups on this machine (gloo, one process each): the same code
paths as on a cluster (Lightning's TorchElastic and SLURM environments, node ranks, one run
folder), not the network between nodes. SLURM is played by its environment variables and a
stand-in `scontrol` on PATH.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lightning_gen.cli import main
from lightning_gen.loggers import slurm_version
from tests.preempt import Preempted

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = str(ROOT / "experiments/quickstart.yaml")
TINY = ["--config", QUICKSTART, "--trainer.accelerator", "cpu",
        "--model.init_args.g_width", "8", "--model.init_args.d_width", "8",
        "--data.init_args.image_size", "16", "--data.init_args.batch_size", "16",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
RENDEZVOUS = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "NODE_RANK",
              "GROUP_RANK", "LOCAL_WORLD_SIZE", "TORCHELASTIC_RUN_ID")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def slurm_vars(job: str = "4242", ntasks: int = 1, procid: int = 0, **extra) -> dict[str, str]:
    """What srun sets for task `procid` of a job of `ntasks` tasks, one task per node."""
    return {"SLURM_JOB_ID": job, "SLURM_JOB_NAME": "train", "SLURM_STEP_ID": "0",
            "SLURM_NTASKS": str(ntasks), "SLURM_NTASKS_PER_NODE": "1", "SLURM_NNODES": str(ntasks),
            "SLURM_NODELIST": "localhost", "SLURM_PROCID": str(procid), "SLURM_LOCALID": "0",
            "SLURM_NODEID": str(procid), **extra}


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in RENDEZVOUS and not k.startswith("SLURM_")}
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return env


def run_dirs() -> list[Path]:
    return sorted(Path("runs/lightning-gen").iterdir())


def wait_all(procs: list[subprocess.Popen]) -> list[tuple[int, str]]:
    results = []
    for proc in procs:
        try:
            out, _ = proc.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise
        results.append((proc.returncode, out))
    return results


# ----------------------------------------------------------------------------------------------
# Multi-node: the torchrun and SLURM commands of docs/scaling.md, two nodes of one process each
@pytest.mark.slow
def test_torchrun_two_nodes_train_into_one_run_folder():
    port = str(free_port())
    procs = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
         "--node_rank", str(node), "--master_addr", "127.0.0.1", "--master_port", port,
         "-m", "lightning_gen", "fit", *TINY, "--trainer.max_steps", "4",
         "--trainer.strategy", "ddp", "--trainer.num_nodes", "2", "--trainer.devices", "1"],
        env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for node in (0, 1)]
    results = wait_all(procs)
    for code, out in results:
        assert code == 0, out[-3000:]
    outputs = "\n".join(out for _, out in results)
    assert "GLOBAL_RANK: 0, MEMBER: 1/2" in outputs and "GLOBAL_RANK: 1, MEMBER: 2/2" in outputs
    (run,) = run_dirs()  # rank 0 writes; the other node's process wrote nothing beside it
    assert (run / "config.yaml").is_file()
    assert torch.load(run / "checkpoints/last.ckpt", weights_only=False)["global_step"] == 4


@pytest.mark.slow
def test_srun_two_nodes_train_into_the_jobs_run_folder():
    port = str(free_port())
    procs = [subprocess.Popen(
        [sys.executable, "-m", "lightning_gen", "fit", *TINY, "--trainer.max_steps", "4",
         "--trainer.strategy", "ddp", "--trainer.num_nodes", "2", "--trainer.devices", "1"],
        env={**clean_env(), **slurm_vars(ntasks=2, procid=rank), "MASTER_PORT": port},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for rank in (0, 1)]
    results = wait_all(procs)
    for code, out in results:
        assert code == 0, out[-3000:]
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in results[1][1]
    assert run_dirs() == [Path("runs/lightning-gen/quickstart-slurm4242.0")]
    run = run_dirs()[0]
    assert torch.load(run / "checkpoints/last.ckpt", weights_only=False)["global_step"] == 4


# ----------------------------------------------------------------------------------------------
# SLURM requeue: `#SBATCH --signal=SIGUSR1@90` -> Lightning checkpoints and runs `scontrol requeue`
@pytest.fixture
def slurm_job(monkeypatch, tmp_path):
    """A one-task SLURM job (id 4242) in this process, with a stand-in `scontrol` that records
    its arguments in tmp_path/scontrol.calls."""
    for key in RENDEZVOUS:
        monkeypatch.delenv(key, raising=False)
    for key, value in slurm_vars().items():
        monkeypatch.setenv(key, value)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "scontrol.calls"}\n')
    scontrol.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return tmp_path


def preempted_fit(max_steps: int, at_step: int) -> None:
    callback = json.dumps({"class_path": "tests.preempt.PreemptAt", "init_args": {"step": at_step}})
    with pytest.raises(Preempted):
        main(["fit", *TINY, "--trainer.max_steps", str(max_steps),
              f"--trainer.callbacks+={callback}"])


def test_preemption_checkpoint_lands_in_the_jobs_run_folder(slurm_job):
    preempted_fit(max_steps=8, at_step=4)
    run = Path("runs/lightning-gen/quickstart-slurm4242.0")
    assert (slurm_job / "scontrol.calls").read_text().split() == ["requeue", "4242"]
    hpc = torch.load(run / "hpc_ckpt_1.ckpt", weights_only=False)
    assert hpc["global_step"] == 4
    assert not list(Path(".").glob("hpc_ckpt_*")), "Lightning's default: the working directory"


def test_requeued_job_continues_from_the_preemption_checkpoint(slurm_job, monkeypatch, capsys):
    preempted_fit(max_steps=8, at_step=4)
    run = Path("runs/lightning-gen/quickstart-slurm4242.0")
    assert not (run / "checkpoints/last.ckpt").exists()  # killed before the end of the epoch
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")  # what SLURM sets in the requeued job
    main(["fit", *TINY, "--trainer.max_steps", "8"])
    assert run_dirs() == [run]
    assert f"continuing from {run / 'hpc_ckpt_1.ckpt'}" in capsys.readouterr().err
    last = torch.load(run / "checkpoints/last.ckpt", weights_only=False)
    assert last["global_step"] == 8
    assert last["gan_steps"] == {"d_steps": 4, "g_steps": 4}  # 2 + 2 before, 2 + 2 after
    for opt_state in last["optimizer_states"]:  # Adam's step count went on, 2 -> 4
        assert {int(s["step"]) for s in opt_state["state"].values()} == {4}


def test_requeued_job_without_a_preemption_checkpoint_continues_from_last_ckpt(slurm_job,
                                                                              monkeypatch):
    """A job requeued after a node failure got no signal: it goes on from checkpoints/last.ckpt."""
    main(["fit", *TINY, "--trainer.max_steps", "4"])
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    main(["fit", *TINY, "--trainer.max_steps", "8"])
    (run,) = run_dirs()
    last = torch.load(run / "checkpoints/last.ckpt", weights_only=False)
    assert last["global_step"] == 8 and last["gan_steps"] == {"d_steps": 4, "g_steps": 4}


def test_requeued_job_without_any_checkpoint_starts_again_in_its_folder(slurm_job, monkeypatch):
    """A node failed before the first checkpoint: the folder holds the job's config.yaml and
    metrics.csv, nothing to continue from. The requeued job runs again there (it is no other
    run's folder), where a new run would be refused."""
    main(["fit", *TINY, "--trainer.max_steps", "4", "--trainer.log_every_n_steps", "1"])
    (run,) = run_dirs()
    shutil.rmtree(run / "checkpoints")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    main(["fit", *TINY, "--trainer.max_steps", "4"])
    assert run_dirs() == [run]
    last = torch.load(run / "checkpoints/last.ckpt", weights_only=False)
    assert last["global_step"] == 4


def test_another_job_in_the_same_folder_does_not_pick_up_the_checkpoint(slurm_job, monkeypatch):
    """Lightning resumes from any hpc_ckpt_N.ckpt in default_root_dir: with the working
    directory as that, the next job started there (another model) would load the first job's
    checkpoint and fail on its shapes, or quietly continue the wrong run."""
    preempted_fit(max_steps=8, at_step=4)
    monkeypatch.setenv("SLURM_JOB_ID", "4243")
    main(["fit", *TINY, "--trainer.max_steps", "2", "--model.init_args.latent_dim", "16"])
    run = Path("runs/lightning-gen/quickstart-slurm4243.0")
    assert torch.load(run / "checkpoints/last.ckpt", weights_only=False)["global_step"] == 2


# ----------------------------------------------------------------------------------------------
# Run ids of SLURM tasks
def test_slurm_run_id_names_job_array_task_and_step(monkeypatch, tmp_path):
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    for key, value in slurm_vars(job="900", SLURM_STEP_ID="3").items():
        monkeypatch.setenv(key, value)
    assert slurm_version("dcgan", tmp_path) == "dcgan-slurm900.3"
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "899")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "7")
    assert slurm_version("dcgan", tmp_path) == "dcgan-slurm899_7.3"


def test_no_slurm_run_id_outside_a_slurm_task(monkeypatch, tmp_path):
    for key in [k for k in os.environ if k.startswith("SLURM_")]:
        monkeypatch.delenv(key)
    assert slurm_version("dcgan", tmp_path) is None
    for key, value in slurm_vars(SLURM_JOB_NAME="interactive").items():  # salloc; Lightning
        monkeypatch.setenv(key, value)                                 # ignores SLURM there too
    assert slurm_version("dcgan", tmp_path) is None


def test_a_requeued_job_gets_its_own_folder_back(monkeypatch, tmp_path):
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    for key, value in slurm_vars(job="900").items():
        monkeypatch.setenv(key, value)
    first = slurm_version("dcgan", tmp_path)
    assert first == "dcgan-slurm900.0"
    (tmp_path / first).mkdir()  # the run starts
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    assert slurm_version("dcgan", tmp_path) == first


def test_a_recycled_job_id_gets_a_new_folder_and_keeps_it_when_requeued(monkeypatch, tmp_path):
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    for key, value in slurm_vars(job="900").items():
        monkeypatch.setenv(key, value)
    (tmp_path / "dcgan-slurm900.0").mkdir()  # runs of earlier jobs that had this id
    (tmp_path / "dcgan-slurm900.0-2").mkdir()
    first = slurm_version("dcgan", tmp_path)
    assert first == "dcgan-slurm900.0-3"
    (tmp_path / first).mkdir()
    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")
    assert slurm_version("dcgan", tmp_path) == first
