"""``lightning-gen evaluate`` files the likelihoods (ELBO/IWAE, exact NLL, Parzen) under names
of what computed them (``iwae_k64-test``, ``exact_nll-test``, ``parzen_<n>_val<m>-test``), not
under the sample metrics' ``<extractor>-<split>-<N>``; ``--num_samples 0`` computes only them.

Untrained tiny models in run folders (``config.yaml`` naming fake MNIST, an offline W&B folder),
an untrained classifier extractor."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from datamodules import MNISTDataModule
from lightning_gen.cli import main
from lightning_gen.eval_records import read_rows
from lightning_gen.models import VAE
from lightning_gen.protocols import ProtocolRun
from tests import fakedata
from tests.metrics_helpers import classifier_checkpoint, save_module_checkpoint
from tests.test_eval_records import finished_log
from tests.wandb_log import summary


def make_run(root: Path, model) -> dict:
    data = fakedata.write_mnist(root / "mnist", n_train=64, n_test=32)
    run = root / "runs" / "lightning-gen" / f"{type(model).__name__.lower()}-tiny"
    ckpt = save_module_checkpoint(model, run / "checkpoints" / "last.ckpt",
                                  datamodule=MNISTDataModule(data_dir=str(data)))
    (run / "config.yaml").write_text(yaml.safe_dump({
        "data": {"class_path": "datamodules.MNISTDataModule",
                 "init_args": {"data_dir": str(data)}}}))
    (run / "wandb").mkdir()  # the run used W&B: evaluate writes an offline segment
    return {"run": run, "ckpt": ckpt,
            "classifier": classifier_checkpoint(root / "clf.ckpt", image_shape=(1, 28, 28))}


def evaluate(tiny: dict, root: Path, *extra: str) -> dict:
    out = root / f"eval{len(list(root.glob('eval*.json')))}.json"
    main(["evaluate", "--ckpt_path", str(tiny["ckpt"]), "--batch_size", "16",
          "--kid_subset_size", "10", "--isc_splits", "4", "--accelerator", "cpu",
          "--progress", "false", "--cache_dir", str(root / "cache"), "--reference", "test",
          "--out", str(out), *extra])
    return json.loads(out.read_text())


def wandb_summary(run: Path, before: set[Path]) -> dict:
    (segment,) = set((run / "wandb").glob("offline-run-*")) - before
    return summary(finished_log(segment))


def test_a_vaes_likelihoods_are_filed_under_what_computed_them(tmp_path, capsys, monkeypatch):
    # `--num_samples 20 --feature_extractor classifier:CLF --iw_samples 64` filed the IWAE under
    # eval/classifier-test-20/test_iwae_nats: named after samples and features it does not
    # depend on, without k, so a later k = 5000 overwrote it in W&B's summary.
    monkeypatch.setenv("WANDB_MODE", "offline")
    tiny = make_run(tmp_path, VAE(latent_dim=4, width=8))
    clf = f"classifier:{tiny['classifier']}"
    segments = set()
    result = evaluate(tiny, tmp_path, "--num_samples", "20", "--feature_extractor", clf,
                      "--iw_samples", "4")
    sample, elbo, iwae = read_rows(tiny["run"] / "eval" / "results.jsonl")
    assert (sample["protocol"], elbo["protocol"], iwae["protocol"]) == (
        "classifier-test-20", "elbo-test", "iwae_k4-test")
    assert elbo["metrics"] == {"test_elbo_nats": pytest.approx(result["test_elbo_nats"])}
    assert iwae["metrics"] == {"test_iwae_nats": pytest.approx(result["test_iwae_nats"])}
    assert "fid" in sample["metrics"] and not any(k.startswith("test_") for k in sample["metrics"])
    assert result["results_protocols"] == {"classifier-test-20": list(sample["metrics"]),
                                           "elbo-test": ["test_elbo_nats"],
                                           "iwae_k4-test": ["test_iwae_nats"]}
    assert ("protocol           classifier-test-20; elbo-test: test_elbo_nats; iwae_k4-test: "
            "test_iwae_nats\n") in capsys.readouterr().out
    first = wandb_summary(tiny["run"], segments)
    assert first["eval/iwae_k4-test/test_iwae_nats"] == pytest.approx(result["test_iwae_nats"])
    assert first["eval/elbo-test/test_elbo_nats"] == pytest.approx(result["test_elbo_nats"])
    assert "eval/classifier-test-20/test_iwae_nats" not in first
    assert first["eval/classifier-test-20/fid"] == pytest.approx(result["fid"])

    # Another k with the same sample settings: its own key, beside k = 4's.
    segments = set((tiny["run"] / "wandb").glob("offline-run-*"))
    again = evaluate(tiny, tmp_path, "--num_samples", "20", "--feature_extractor", clf,
                     "--iw_samples", "8")
    second = wandb_summary(tiny["run"], segments)
    assert second["eval/iwae_k8-test/test_iwae_nats"] == pytest.approx(again["test_iwae_nats"])
    assert "eval/iwae_k4-test/test_iwae_nats" not in second  # k = 4's value is not replaced
    assert [r["protocol"] for r in read_rows(tiny["run"] / "eval" / "results.jsonl")][3:] == [
        "classifier-test-20", "elbo-test", "iwae_k8-test"]


def test_exact_nll_and_parzen_have_their_own_names_and_named_protocols_keep_theirs():
    nll = {"fid": 3.0, "test_nll_nats": 80.0, "test_bits_per_dim": 0.15,
           "likelihood_split": "test"}
    parzen = {"fid": 3.0, "parzen_ll_nats": -10.0, "parzen_ll_stderr": 1.0, "parzen_sigma": 0.2,
              "parzen_num_samples": 10000, "parzen_val_images": 1000}
    plain = ProtocolRun.of({"protocol": None})
    assert plain.filing(nll, "inception-test-100") == {
        "inception-test-100": ["fid"], "exact_nll-test": ["test_nll_nats", "test_bits_per_dim"]}
    assert plain.filing(parzen, "inception-test-100") == {
        "inception-test-100": ["fid"],
        "parzen_10000_val1000-test": ["parzen_ll_nats", "parzen_ll_stderr", "parzen_sigma"]}
    # A named protocol whose settings hold still names the metrics it defines.
    assert ProtocolRun.of({"protocol": "exact-test-nll"}).filing(nll, "inception-test-100") == {
        "inception-test-100": ["fid"], "exact-test-nll": ["test_nll_nats", "test_bits_per_dim"]}
    vae = {"test_elbo_nats": -90.0, "test_iwae_nats": -88.0, "iwae_k": 5000,
           "likelihood_split": "test"}
    named = ProtocolRun.of({"protocol": "binarized-mnist-iwae", "iw_samples": 5000})
    assert named.filing(vae, "x") == {"binarized-mnist-iwae": ["test_elbo_nats",
                                                               "test_iwae_nats"]}
    overridden = ProtocolRun.of({"protocol": "binarized-mnist-iwae", "iw_samples": 64})
    assert overridden.filing({**vae, "iwae_k": 64}, "x") == {
        "elbo-test": ["test_elbo_nats"], "iwae_k64-test": ["test_iwae_nats"]}


def no_extractor(*args, **kwargs):
    raise AssertionError("--num_samples 0 loaded a feature extractor")


def test_num_samples_0_computes_the_likelihoods_alone(tmp_path, capsys, monkeypatch):
    # `--num_samples 0` was refused ("too few: use 2 or more"): a PixelCNN's bits/dim or a VAE's
    # IWAE needed Inception weights and a sample evaluation. Now it is the likelihoods alone.
    import lightning_gen.evaluate as evaluate_module
    from lightning_gen.models import PixelCNN

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setattr(evaluate_module, "build_extractor", no_extractor)
    tiny = make_run(tmp_path, PixelCNN(hidden=4, n_layers=1, num_levels=4, num_fixed_samples=0))
    result = evaluate(tiny, tmp_path, "--num_samples", "0")  # --feature_extractor inception
    (row,) = read_rows(tiny["run"] / "eval" / "results.jsonl")
    assert row["protocol"] == "exact_nll-test"
    assert row["metrics"] == {"test_nll_nats": pytest.approx(result["test_nll_nats"]),
                              "test_bits_per_dim": pytest.approx(result["test_bits_per_dim"])}
    assert "fid" not in result and result["feature_extractor"] == "none"
    assert result["results_protocols"] == {"exact_nll-test": ["test_nll_nats",
                                                              "test_bits_per_dim"]}
    out = capsys.readouterr().out
    assert "protocol           exact_nll-test\n" in out
    assert "samples            0 (no sample metrics: no extractor, no reference)" in out
    assert not (tmp_path / "cache").exists()  # no reference features
    final = wandb_summary(tiny["run"], set())
    assert final["eval/exact_nll-test/test_bits_per_dim"] == pytest.approx(
        result["test_bits_per_dim"])
    assert not any(k.startswith("eval/") and "inception" in k for k in final)


def test_num_samples_0_is_refused_where_nothing_else_is_computed(tmp_path, capsys, monkeypatch):
    from lightning_gen.models import DCGAN
    from tests.security_helpers import error_line

    monkeypatch.setattr("lightning_gen.evaluate.build_extractor", no_extractor)
    tiny = make_run(tmp_path, DCGAN(latent_dim=8, g_width=8, d_width=8))
    common = ["evaluate", "--ckpt_path", str(tiny["ckpt"]), "--accelerator", "cpu",
              "--progress", "false", "--cache_dir", str(tmp_path / "cache")]
    err = error_line(capsys, *common, "--num_samples", "0")
    assert "--num_samples 0 (no sample metrics) leaves nothing to compute for DCGAN" in err
    assert "--parzen true" in err
    err = error_line(capsys, *common, "--num_samples", "0", "--seeds", "3")
    assert "--seeds 3: about the sample metrics, which --num_samples 0 does not compute" in err
    assert "or 0 for no sample metrics" in error_line(capsys, *common, "--num_samples", "1")
    assert not (tmp_path / "cache").exists() and not (tiny["run"] / "eval").exists()

    # With --parzen the GAN has its Parzen numbers, from --parzen_samples samples.
    monkeypatch.setenv("WANDB_MODE", "disabled")
    result = evaluate(tiny, tmp_path, "--num_samples", "0", "--parzen", "true",
                      "--parzen_samples", "20", "--parzen_val_images", "5")
    (row,) = read_rows(tiny["run"] / "eval" / "results.jsonl")
    assert row["protocol"] == "parzen_20_val5-test"
    assert set(row["metrics"]) == {"parzen_ll_nats", "parzen_ll_stderr", "parzen_sigma"}
    assert result["parzen_num_samples"] == 20 and "fid" not in result
