"""What goes wrong around evaluate / sample / fit --ckpt_path is one line, exit 2, before the
work, with nothing half-written and old files intact (issue 15, cases 2, 3, 4, 6, 8, 9, 11)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lightning_gen.cli import main
from tests import security_helpers
from tests.security_helpers import ROOT, error_line, make_runs

read_only_dir = security_helpers.read_only_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return make_runs(tmp_path_factory.mktemp("runs"))


def _evaluate_args(runs, tmp_path, *extra: str) -> list[str]:
    return ["evaluate", "--ckpt_path", str(runs["dcgan"]), "--num_samples", "40",
            "--reference", "test", "--feature_extractor", f"classifier:{runs['classifier']}",
            "--batch_size", "16", "--kid_subset_size", "20", "--isc_splits", "4",
            "--accelerator", "cpu", "--progress", "false",
            "--cache_dir", str(tmp_path / "cache"), "--out", str(tmp_path / "r.json"), *extra]


# ---- case 3: evaluate checks where it writes before the work -----------------------------------

def test_evaluate_out_naming_a_folder_is_refused_before_the_work(runs, tmp_path, capsys):
    (tmp_path / "folder").mkdir()
    err = error_line(capsys, *_evaluate_args(runs, tmp_path, "--out", str(tmp_path / "folder")))
    assert f"--out {tmp_path / 'folder'} is a folder" in err
    assert not (tmp_path / "cache").exists()  # no reference features were computed


def test_evaluate_out_on_a_read_only_place_is_refused(runs, tmp_path, read_only_dir, capsys):
    out = read_only_dir / "eval" / "r.json"
    err = error_line(capsys, *_evaluate_args(runs, tmp_path, "--out", str(out)))
    assert f"--out {out}: cannot write in {read_only_dir}" in err
    assert not (tmp_path / "cache").exists()


def test_evaluate_read_only_cache_dir_is_refused(runs, tmp_path, read_only_dir, capsys):
    err = error_line(capsys, *_evaluate_args(runs, tmp_path, "--cache_dir", str(read_only_dir)))
    assert f"--cache_dir {read_only_dir}: cannot write" in err
    assert not (tmp_path / "r.json").exists()


def test_results_are_printed_when_writing_them_fails(runs, tmp_path, capsys, monkeypatch):
    import lightning_gen.evaluate as ev

    def full_disk(path, write):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ev, "atomic_write", full_disk)
    err = error_line(capsys, *_evaluate_args(runs, tmp_path), code=1)
    assert f"could not write the results to {tmp_path / 'r.json'} (No space left on device)" in err
    # capsys was read by error_line: run the table check on a second, successful evaluation.
    monkeypatch.undo()
    main(_evaluate_args(runs, tmp_path))
    table = capsys.readouterr().out
    assert "FID" in table and json.loads((tmp_path / "r.json").read_text())["fid"] > 0


# ---- case 11: too few samples refused before generating -----------------------------------------

@pytest.mark.parametrize("n", [2, 3, 10, 19])
def test_too_few_samples_are_refused_up_front(runs, tmp_path, capsys, n):
    # 10 samples in 10 splits gave an Inception Score of exactly 1.0 (one sample per split).
    args = _evaluate_args(runs, tmp_path, "--num_samples", str(n), "--isc_splits", "10")
    err = error_line(capsys, *args)
    assert f"--num_samples {n} is too few" in err and "--num_samples 20 or more" in err
    assert "one gives exactly 1" in err
    assert not (tmp_path / "cache").exists()


def test_four_samples_with_two_splits_evaluate(runs, tmp_path):
    # The real minimum: precision/recall's k-NN (k = 3) needs 4 samples, each IS split 2.
    main(_evaluate_args(runs, tmp_path, "--num_samples", "4", "--batch_size", "4",
                        "--isc_splits", "2"))
    assert json.loads((tmp_path / "r.json").read_text())["num_samples"] == 4


# ---- case 4: a corrupt reference cache is set aside and recomputed -------------------------------

@pytest.mark.parametrize("damage", ["truncated", "empty", "keys_missing"])
def test_corrupt_reference_cache_is_reported_moved_aside_and_recomputed(damage, runs, tmp_path,
                                                                       capsys):
    main(_evaluate_args(runs, tmp_path))
    first = json.loads((tmp_path / "r.json").read_text())
    entry = Path(first["reference"]["cache_file"])
    if damage == "truncated":
        entry.write_bytes(entry.read_bytes()[:500])
    elif damage == "empty":
        entry.write_bytes(b"")
    else:
        np.savez(entry.open("wb"), features=np.zeros((2, 3), np.float32))
    capsys.readouterr()
    main(_evaluate_args(runs, tmp_path))
    err = capsys.readouterr().err
    assert f"reference cache {entry} is corrupt" in err and "recomputing" in err
    second = json.loads((tmp_path / "r.json").read_text())
    assert second["fid"] == pytest.approx(first["fid"], rel=1e-6)
    assert len(list(entry.parent.glob(entry.name + ".corrupt-*"))) == 1
    with np.load(entry) as data:  # written anew, whole
        assert data["features"].shape[0] == 96


# ---- case 9: a malformed run config.yaml ----------------------------------------------------------

@pytest.mark.parametrize("text, expected", [("model: [unclosed\n", "is not valid YAML"),
                                            ("- a\n- b\n", "holds a list, not a mapping")])
def test_malformed_run_config_is_one_line_naming_it(text, expected, runs, tmp_path, capsys):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    ckpt = run / "checkpoints" / "last.ckpt"
    ckpt.write_bytes(runs["dcgan"].read_bytes())
    (run / "config.yaml").write_text(text)
    args = _evaluate_args(runs, tmp_path)
    args[args.index("--ckpt_path") + 1] = str(ckpt)
    err = error_line(capsys, *args)
    assert f"run config {run / 'config.yaml'} " in err and expected in err


# ---- cases 6 and 9: sample's folder ----------------------------------------------------------------

def _sample(runs, out, n, *extra):
    main(["sample", "--ckpt_path", str(runs["dcgan"]), "--num_samples", str(n), "--out",
          str(out), "--npz", "true", "--accelerator", "cpu", "--progress", "false", *extra])


def test_sample_into_a_folder_with_samples_refuses_and_keeps_them(runs, tmp_path, capsys):
    out = tmp_path / "samples"
    _sample(runs, out, 10)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        _sample(runs, out, 3, "--seed", "1")
    err = capsys.readouterr().err
    assert info.value.code == 2 and "Traceback" not in err
    assert f"--out {out} is not empty (11 entries)" in err and "--overwrite true" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_sample_overwrite_replaces_the_old_samples(runs, tmp_path):
    out = tmp_path / "samples"
    _sample(runs, out, 10)
    (out / "notes.txt").write_text("mine")
    _sample(runs, out, 3, "--overwrite", "true")
    assert sorted(p.name for p in out.iterdir()) == ["000000.png", "000001.png", "000002.png",
                                                      "notes.txt", "samples.npz"]
    assert np.load(out / "samples.npz")["arr_0"].shape[0] == 3


def test_sample_out_that_cannot_be_a_folder_is_one_line(runs, tmp_path, read_only_dir, capsys):
    a_file = tmp_path / "file.png"
    a_file.write_bytes(b"x")
    assert f"--out {a_file} is a file" in error_line(
        capsys, "sample", "--ckpt_path", str(runs["dcgan"]), "--out", str(a_file))
    below = a_file / "samples"
    assert f"{a_file} is a file, so no folder can be created below it" in error_line(
        capsys, "sample", "--ckpt_path", str(runs["dcgan"]), "--out", str(below))
    ro = read_only_dir / "samples"
    assert f"--out {ro}: cannot write in {read_only_dir}" in error_line(
        capsys, "sample", "--ckpt_path", str(runs["dcgan"]), "--out", str(ro))
    assert a_file.read_bytes() == b"x"


# ---- cases 2 and 8: fit / validate --ckpt_path ----------------------------------------------------

FAST = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--data.num_workers", "0"]


def _fit_mnist(runs, *extra):
    main(["fit", "--config", str(ROOT / "experiments/dcgan_mnist.yaml"), "--data.data_dir",
          str(runs["mnist"]), "--model.init_args.g_width", "8", "--model.init_args.d_width", "8",
          "--data.batch_size", "16", *FAST, *extra])


@pytest.fixture
def broken(tmp_path):
    good = tmp_path / "good.ckpt"
    torch.save({"state_dict": {}}, good)
    (tmp_path / "truncated.ckpt").write_bytes(good.read_bytes()[:200])
    (tmp_path / "empty.ckpt").write_bytes(b"")
    (tmp_path / "random.ckpt").write_bytes(np.random.RandomState(0).bytes(4096))
    (tmp_path / "a_folder.ckpt").mkdir()
    return {"truncated": ("truncated.ckpt", "is truncated or corrupt"),
            "empty": ("empty.ckpt", "is empty (0 bytes)"),
            "random": ("random.ckpt", "is not a PyTorch checkpoint"),
            "folder": ("a_folder.ckpt", "is a directory")}


@pytest.mark.parametrize("command", ["fit", "validate"])
@pytest.mark.parametrize("kind", ["truncated", "empty", "random", "folder"])
def test_a_corrupt_checkpoint_is_one_line_and_writes_nothing(command, kind, broken, runs,
                                                            tmp_path, capsys):
    name, expected = broken[kind]
    err = error_line(capsys, command, "--config", str(ROOT / "experiments/vae_mnist.yaml"),
                     "--data.data_dir", str(runs["mnist"]), "--ckpt_path", str(tmp_path / name),
                     *FAST)
    assert f"checkpoint {tmp_path / name} {expected}" in err
    assert not (tmp_path / "runs").exists()


def test_ckpt_path_last_onto_a_truncated_last_ckpt_adds_no_wandb_segment(runs, tmp_path, capsys):
    _fit_mnist(runs, "--trainer.max_steps", "2")
    (run,) = Path("runs").glob("*/*")
    last = run / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:3000])
    segments = sorted(p.name for p in (run / "wandb").glob("offline-run-*"))
    capsys.readouterr()
    err = error_line(capsys, "fit", "--config", str(ROOT / "experiments/dcgan_mnist.yaml"),
                     "--data.data_dir", str(runs["mnist"]), "--ckpt_path", "last", *FAST)
    assert f"checkpoint {last} is truncated or corrupt" in err
    assert sorted(p.name for p in (run / "wandb").glob("offline-run-*")) == segments
    assert list(Path("runs").glob("*/*")) == [run]


def test_a_checkpoint_of_another_model_is_refused_before_the_run(runs, tmp_path, capsys):
    main(["fit", "--config", str(ROOT / "experiments/vae_mnist.yaml"), "--data.data_dir",
          str(runs["mnist"]), "--model.init_args.width", "8", "--trainer.max_steps", "1", *FAST])
    (vae_run,) = Path("runs").glob("*/*")
    capsys.readouterr()
    err = error_line(capsys, "fit", "--config", str(ROOT / "experiments/dcgan_mnist.yaml"),
                     "--data.data_dir", str(runs["mnist"]), "--trainer.max_steps", "10",
                     "--ckpt_path", str(vae_run / "checkpoints/last.ckpt"), *FAST)
    assert "is a checkpoint of lightning_gen.models.VAE but the config builds " \
        "lightning_gen.models.DCGAN" in err
    assert list(Path("runs").glob("*/*")) == [vae_run]


def test_overrides_with_ckpt_path_are_applied_or_refused(runs, tmp_path, capsys):
    _fit_mnist(runs, "--trainer.max_steps", "2")
    (first,) = Path("runs").glob("*/*")
    ckpt = first / "checkpoints" / "last.ckpt"
    capsys.readouterr()
    # An architecture change would not fit the weights: refused, naming the option.
    err = error_line(capsys, "fit", "--config", str(ROOT / "experiments/dcgan_mnist.yaml"),
                     "--data.data_dir", str(runs["mnist"]), "--ckpt_path", str(ckpt),
                     "--model.init_args.lr_g", "0.005", "--model.init_args.latent_dim", "64",
                     *FAST)
    assert "--model.init_args.latent_dim 64 (the checkpoint's is 100)" in err
    assert "lr_g" not in err
    assert list(Path("runs").glob("*/*")) == [first]
    # A learning rate is applied: to the model, the saved config and the restored optimizer.
    _fit_mnist(runs, "--ckpt_path", str(ckpt), "--model.init_args.lr_g", "0.005",
               "--trainer.max_steps", "4")
    assert "applying lr_g=0.005 (checkpoint: 0.0002)" in capsys.readouterr().err
    (second,) = set(Path("runs").glob("*/*")) - {first}
    resumed = torch.load(second / "checkpoints/last.ckpt", weights_only=True)
    assert resumed["global_step"] == 4 and resumed["hyper_parameters"]["lr_g"] == 0.005
    assert [g["lr"] for g in resumed["optimizer_states"][0]["param_groups"]] == [0.005]
    assert [g["lr"] for g in resumed["optimizer_states"][1]["param_groups"]] == [0.0002]
    assert "lr_g: 0.005" in (second / "config.yaml").read_text()


def test_overrides_with_ckpt_path_last_are_applied_or_refused_too(runs, tmp_path, capsys):
    _fit_mnist(runs, "--trainer.max_steps", "2")
    (run,) = Path("runs").glob("*/*")
    capsys.readouterr()
    err = error_line(capsys, "fit", "--config", str(ROOT / "experiments/dcgan_mnist.yaml"),
                     "--data.data_dir", str(runs["mnist"]), "--ckpt_path", "last",
                     "--model.init_args.g_width", "16", *FAST)
    assert "--model.init_args.g_width 16 (the checkpoint's is 8)" in err
    _fit_mnist(runs, "--ckpt_path", "last", "--model.init_args.lr_d", "0.001",
               "--trainer.max_steps", "4")
    assert list(Path("runs").glob("*/*")) == [run]  # continued in its folder
    resumed = torch.load(run / "checkpoints/last.ckpt", weights_only=True)
    assert resumed["global_step"] == 4
    assert [g["lr"] for g in resumed["optimizer_states"][1]["param_groups"]] == [0.001]
