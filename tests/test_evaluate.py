"""``lightning-gen evaluate`` and ``lightning-gen sample`` on checkpoints written by
``lightning-gen fit`` (DCGAN and VAE, one step each on format-true MNIST files)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from lightning_gen.cli import main
from lightning_gen.evaluate import load_run
from lightning_gen.metrics import to_uint8, write_random_inception_weights
from tests import fakedata
from tests.metrics_helpers import classifier_checkpoint

ROOT = Path(__file__).resolve().parent.parent

REQUIRED = {"fid", "is_mean", "is_std", "kid_mean", "kid_std", "precision", "recall",
            "density", "coverage", "num_samples", "feature_extractor", "reference"}


def _fit(root: Path, data_dir: Path, model: str, extra: list[str]) -> Path:
    run = root / model.rsplit(".", 1)[-1]
    main(["fit", "--config", str(ROOT / "experiments" / "quickstart.yaml"),
          "--model", model, *extra,
          "--data", "datamodules.MNISTDataModule", "--data.data_dir", str(data_dir),
          "--data.image_size", "28", "--data.batch_size", "16",
          "--trainer.max_steps", "1", "--trainer.logger", "false",
          "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(run),
          "--images.every_n_epochs", "0"])
    return run / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    data = fakedata.write_mnist(root / "mnist", n_train=64, n_test=96)
    cwd = os.getcwd()
    os.chdir(root)
    try:
        dcgan = _fit(root, data, "lightning_gen.models.DCGAN",
                     ["--model.latent_dim", "8", "--model.g_width", "8", "--model.d_width", "8"])
        vae = _fit(root, data, "lightning_gen.models.VAE",
                   ["--model.latent_dim", "4", "--model.width", "8"])
    finally:
        os.chdir(cwd)
    classifier = classifier_checkpoint(root / "clf.ckpt", image_shape=(1, 28, 28))
    return {"dcgan": dcgan, "vae": vae, "classifier": classifier, "root": root}


def _evaluate(ckpt, classifier, out, *extra) -> dict:
    main(["evaluate", "--ckpt_path", str(ckpt), "--num_samples", "40", "--reference", "test",
          "--feature_extractor", f"classifier:{classifier}", "--batch_size", "16",
          "--kid_subset_size", "20", "--isc_splits", "4", "--accelerator", "cpu",
          "--progress", "false", "--cache_dir", str(Path(out).parent / "cache"),
          "--out", str(out), *extra])
    return json.loads(Path(out).read_text())


def test_evaluate_dcgan_writes_the_json_and_prints_a_table(runs, tmp_path, capsys):
    result = _evaluate(runs["dcgan"], runs["classifier"], tmp_path / "dcgan.json")
    assert REQUIRED <= set(result)
    assert all(np.isfinite(result[k]) for k in ("fid", "is_mean", "kid_mean", "precision"))
    assert result["num_samples"] == 40 and result["reference"]["split"] == "test"
    assert result["reference"]["num_images"] == 96
    assert result["feature_extractor"].startswith("classifier-")
    assert result["model"] == "lightning_gen.models.dcgan.DCGAN"
    table = capsys.readouterr().out
    assert "FID" in table and f"{result['fid']:.6g}" in table


def test_evaluate_json_names_the_code_and_device_behind_its_numbers(runs, tmp_path):
    import torch_fidelity
    import torchmetrics

    result = _evaluate(runs["dcgan"], runs["classifier"], tmp_path / "dcgan.json")
    versions = result["versions"]
    assert versions["torch"] == torch.__version__
    assert versions["torch_fidelity"] == torch_fidelity.__version__
    assert versions["torchmetrics"] == torchmetrics.__version__
    assert versions["device"] and versions["num_devices"] == 1


def test_evaluate_vae_reports_elbo_and_importance_weighted_bound(runs, tmp_path, capsys):
    result = _evaluate(runs["vae"], runs["classifier"], tmp_path / "vae.json",
                       "--iw_samples", "8")
    assert REQUIRED <= set(result)
    assert result["iwae_k"] == 8 and result["likelihood_split"] == "test"
    # Burda et al. (2016), Theorem 1: log p(x) >= IWAE_k >= ELBO; in nats, 28x28 Bernoulli.
    assert result["test_iwae_nats"] >= result["test_elbo_nats"]
    assert -784 * 10 < result["test_elbo_nats"] < 0
    # Grey digits under a Bernoulli decoder: the JSON and the table say what the nats are.
    assert result["likelihood_of"].startswith("Bernoulli decoder on grey levels in [0, 1]")
    assert "not comparable with binarized-MNIST papers" in result["likelihood_of"]
    assert f"likelihood         {result['likelihood_of']}" in capsys.readouterr().out


def test_sample_writes_pngs_that_torch_fidelity_reads(runs, tmp_path):
    out = tmp_path / "samples"
    main(["sample", "--ckpt_path", str(runs["dcgan"]), "--num_samples", "1000", "--out", str(out),
          "--npz", "true", "--seed", "3", "--batch_size", "250", "--progress", "false"])
    from torch_fidelity.datasets import ImagesPathDataset
    from torch_fidelity.utils import glob_samples_paths

    files = glob_samples_paths(str(out), False, "png,jpg,jpeg", verbose=False)
    dataset = ImagesPathDataset(files)  # what `fidelity --input1 DIR` reads
    assert len(dataset) == 1000
    first = dataset[0]
    assert first.dtype == torch.uint8 and tuple(first.shape) == (3, 28, 28)
    array = np.load(out / "samples.npz")["arr_0"]
    assert array.shape == (1000, 28, 28, 1) and array.dtype == np.uint8
    assert np.array_equal(np.asarray(Image.open(out / "000999.png")), array[999, ..., 0])
    # Sample i of batch b comes from seed + b: the images `evaluate` scores with that seed.
    model, _ = load_run(str(runs["dcgan"]))
    torch.manual_seed(3 + 0)
    expected = to_uint8(model.sample(250))[:, 0].numpy()
    assert np.array_equal(array[:250, ..., 0], expected)


def test_fidelity_command_accepts_the_sample_folder(runs, tmp_path):
    out = tmp_path / "samples"
    main(["sample", "--ckpt_path", str(runs["dcgan"]), "--num_samples", "4", "--out", str(out),
          "--progress", "false"])
    weights = write_random_inception_weights(tmp_path / "inception.pth")
    fidelity = Path(sys.executable).parent / "fidelity"
    proc = subprocess.run(
        [str(fidelity), "--input1", str(out), "--isc", "--isc-splits", "2", "--no-cuda",
         "--feature-extractor-weights-path", str(weights), "--json", "--silent"],
        capture_output=True, text=True, timeout=240,
        env={**os.environ, "OMP_NUM_THREADS": "2"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["inception_score_mean"] >= 1.0


def _error(capsys, *args) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lightning-gen: error: ") and "\n" not in err  # one line
    return err


def test_bad_inputs_are_one_line_errors(runs, tmp_path, capsys):
    ckpt, clf = str(runs["dcgan"]), f"classifier:{runs['classifier']}"
    base = ["evaluate", "--ckpt_path", ckpt, "--accelerator", "cpu", "--progress", "false",
            "--cache_dir", str(tmp_path / "cache"), "--out", str(tmp_path / "x.json")]

    config = yaml.safe_load((runs["dcgan"].parent.parent / "config.yaml").read_text())
    config["model"]["init_args"]["latent_dim"] = 16  # not the checkpoint's 8
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump(config))
    assert "does not match" in _error(capsys, *base, "--run_config", str(other),
                                      "--feature_extractor", clf)

    not_inception = tmp_path / "vgg.pth"
    torch.save({"features.0.weight": torch.zeros(3)}, not_inception)
    assert "is not torch-fidelity's Inception-v3" in _error(
        capsys, *base, "--weights_path", str(not_inception))

    assert "fewer than the 500 requested" in _error(
        capsys, *base, "--feature_extractor", clf, "--num_samples", "500", "--reference", "test")
    assert "reference split 'valid' does not exist" in _error(
        capsys, *base, "--feature_extractor", clf, "--reference", "valid")
    assert "does not generate samples" in _error(
        capsys, "evaluate", "--ckpt_path", str(runs["classifier"]), "--accelerator", "cpu")
    assert "checkpoint not found" in _error(
        capsys, "evaluate", "--ckpt_path", str(tmp_path / "missing.ckpt"))
    assert not (tmp_path / "x.json").exists()


def test_a_model_without_a_prior_is_a_one_line_error(runs, tmp_path, capsys):
    # The plain Autoencoder has no sample(): evaluate and sample must say so in one line
    # (exit 2), before any work, not print a traceback, and sample leaves no folder.
    from datamodules import MNISTDataModule
    from lightning_gen.models import Autoencoder
    from tests.metrics_helpers import save_module_checkpoint

    ckpt = save_module_checkpoint(Autoencoder(latent_dim=4, width=8), tmp_path / "ae.ckpt",
                                  datamodule=MNISTDataModule(data_dir=str(runs["root"] / "mnist")))
    err = _error(capsys, "evaluate", "--ckpt_path", str(ckpt), "--num_samples", "40",
                 "--reference", "test", "--feature_extractor", f"classifier:{runs['classifier']}",
                 "--accelerator", "cpu", "--progress", "false",
                 "--cache_dir", str(tmp_path / "cache"), "--out", str(tmp_path / "ae.json"))
    assert "Autoencoder does not generate samples" in err
    assert not (tmp_path / "ae.json").exists()
    err = _error(capsys, "sample", "--ckpt_path", str(ckpt), "--num_samples", "4",
                 "--out", str(tmp_path / "samples"), "--accelerator", "cpu", "--progress", "false")
    assert "Autoencoder does not generate samples" in err
    assert not (tmp_path / "samples").exists()


@pytest.mark.parametrize("command", ["evaluate", "sample"])
def test_help_describes_the_command_in_a_whole_sentence(command, capsys):
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0
    usage, description, *_ = capsys.readouterr().out.split("\n\n")
    text = " ".join(description.split())
    assert usage.startswith("usage:") and text.endswith(".")
    assert text.count("(") == text.count(")"), text


def test_a_nan_likelihood_is_not_left_out_of_the_average_and_is_counted():
    # torchmetrics' MeanMetric drops NaN by default (with a warning): the average of the other
    # images was reported as the model's test ELBO.
    from datamodules import DigitsDataModule
    from lightning_gen.metrics.evaluator import load_split
    from lightning_gen.metrics.likelihood import likelihood_metrics
    from lightning_gen.models import VAE

    model = VAE((1, 28, 28), latent_dim=4, width=8).eval()
    forward = model.forward

    def one_nan(x, labels=None):
        out = forward(x, labels)
        out["log_px"][0] = float("nan")
        return out

    model.forward = one_nan
    data = DigitsDataModule(image_size=28, batch_size=100)
    result = likelihood_metrics(model, data, split="test", iw_samples=0, batch_size=100)
    assert np.isnan(result["test_elbo_nats"])
    images = len(load_split(data, "test"))
    assert result["nonfinite_images"] == -(-images // 100)  # one image per batch


@pytest.mark.parametrize("stop", ["SIGINT", "SIGTERM"])
def test_an_interrupted_sample_leaves_no_partial_set(runs, tmp_path, capsys, monkeypatch, stop):
    # Ctrl-C (or `timeout`'s SIGTERM) during `sample` printed a KeyboardInterrupt traceback (or
    # nothing) and left the PNGs written so far, a set `fidelity --input1 DIR` takes for whole.
    import signal

    import lightning_gen.evaluate as ev

    save, saved = ev._save_png, []

    def interrupted_at_the_sixth(image, path):
        if len(saved) == 5:
            if stop == "SIGINT":
                raise KeyboardInterrupt
            os.kill(os.getpid(), signal.SIGTERM)
        save(image, path)
        saved.append(path)

    monkeypatch.setattr(ev, "_save_png", interrupted_at_the_sixth)
    handler = signal.getsignal(signal.SIGTERM)
    out = tmp_path / "samples"
    with pytest.raises(SystemExit) as stopped:
        main(["sample", "--ckpt_path", str(runs["dcgan"]), "--num_samples", "12", "--out",
              str(out), "--npz", "true", "--batch_size", "4", "--progress", "false"])
    assert stopped.value.code == (130 if stop == "SIGINT" else 143)
    err = capsys.readouterr().err.strip()
    assert err == (f"lightning-gen: sample stopped by {stop} after 5 of 12 samples; removed them "
                   f"from {out} (an incomplete set is not left behind): run it again")
    assert all(path.name.endswith(".png") for path in saved) and not out.exists()
    assert signal.getsignal(signal.SIGTERM) is handler  # restored
    # A folder that existed stays, empty; a whole run writes every file.
    out.mkdir()
    saved.clear()
    monkeypatch.setattr(ev, "_save_png", save)
    main(["sample", "--ckpt_path", str(runs["dcgan"]), "--num_samples", "12", "--out",
          str(out), "--npz", "true", "--batch_size", "4", "--progress", "false"])
    assert sorted(p.name for p in out.iterdir()) == [f"{i:06d}.png" for i in range(12)] + [
        "samples.npz"]


def test_an_interrupted_evaluate_is_one_line_and_writes_nothing(runs, tmp_path, capsys,
                                                                monkeypatch):
    from lightning_gen.metrics.evaluator import GenerativeEvaluator

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(GenerativeEvaluator, "generated", ctrl_c)
    out = tmp_path / "dcgan.json"
    with pytest.raises(SystemExit) as stopped:
        _evaluate(runs["dcgan"], runs["classifier"], out)
    assert stopped.value.code == 130
    err = capsys.readouterr().err.strip()
    assert err.startswith("lightning-gen: stopped by SIGINT; the checkpoint being evaluated has "
                          "no results") and "\n" not in err
    assert not out.exists() and not list(tmp_path.glob(".*.tmp"))


def test_counts_no_metric_can_use_are_refused_before_any_work(runs, tmp_path, capsys):
    # --kid_subsets 0 / --kid_subset_size 0 wrote KID NaN into the JSON, results.jsonl and W&B;
    # --iw_samples -1 silently dropped the IWAE bound.
    out = tmp_path / "x.json"
    base = ["evaluate", "--ckpt_path", str(runs["vae"]), "--num_samples", "40",
            "--reference", "test", "--feature_extractor", f"classifier:{runs['classifier']}",
            "--accelerator", "cpu", "--progress", "false", "--cache_dir", str(tmp_path / "c"),
            "--out", str(out)]
    assert "--kid_subsets must be at least 1, got 0" in _error(capsys, *base, "--kid_subsets", "0")
    assert "--kid_subset_size must be at least 2" in _error(capsys, *base,
                                                           "--kid_subset_size", "1")
    assert "--iw_samples must be 0 (ELBO only) or more, got -1" in _error(
        capsys, *base, "--iw_samples", "-1")
    assert not out.exists() and not (tmp_path / "c").exists()
