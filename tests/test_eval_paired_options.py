"""``lightning-gen evaluate`` options an image-to-image model cannot honour are refused in one
line; the unpaired default (``--reference train``) is untouched. An untrained SRResNet's
checkpoint (no fit) on format-true CIFAR-10 files keeps each test to seconds."""

from __future__ import annotations

import json

import pytest

from lightning_gen.cli import main


@pytest.fixture
def srresnet(cifar10_dir, tmp_path):
    from datamodules import CIFAR10SuperResDataModule
    from lightning_gen.models import SRResNet
    from tests.metrics_helpers import save_module_checkpoint

    data = {"class_path": f"{CIFAR10SuperResDataModule.__module__}.CIFAR10SuperResDataModule",
            "init_args": {"data_dir": str(cifar10_dir), "image_size": 32, "download": False}}
    (tmp_path / "data.yaml").write_text(json.dumps({"data": data}))  # JSON is YAML
    model = SRResNet(image_shape=(3, 32, 32), width=4, n_blocks=1)
    return save_module_checkpoint(model, tmp_path / "sr.ckpt")


def _evaluate(ckpt, out, *extra) -> dict:
    main(["evaluate", "--ckpt_path", str(ckpt), "--run_config", str(ckpt.parent / "data.yaml"),
          "--num_samples", "8", "--batch_size", "8", "--lpips_weights", "random",
          "--accelerator", "cpu", "--progress", "false", "--out", str(out), *extra])
    return json.loads(out.read_text())


def _refused(capsys, ckpt, out, *extra) -> str:
    with pytest.raises(SystemExit) as stop:
        _evaluate(ckpt, out, *extra)
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lightning-gen: error: ") and "\n" not in err
    assert not out.exists()
    return err


def test_paired_evaluation_refuses_a_reference_split_it_does_not_use(srresnet, tmp_path, capsys):
    # Paired models are scored on the test pairs: `--reference train` was accepted silently
    # (it is the unpaired default, so it could not be told from no option at all).
    err = _refused(capsys, srresnet, tmp_path / "train.json", "--reference", "train")
    assert "--reference train: not available for SRResNet" in err
    assert "test pairs" in err and "--reference test" in err
    # The split it uses is accepted, and so is no --reference at all; both score the test pairs.
    for extra in (["--reference", "test"], []):
        result = _evaluate(srresnet, tmp_path / "ok.json", *extra)
        assert result["reference"]["split"] == "test" and result["num_pairs"] == 8


def test_paired_evaluation_refuses_a_sampling_protocol(srresnet, tmp_path, capsys):
    # A --protocol preset is a benchmark of sample metrics (FID/IS of N samples): a paired
    # model's JSON recorded its name beside PSNR/SSIM numbers it has nothing to do with.
    err = _refused(capsys, srresnet, tmp_path / "p.json", "--protocol", "pytorch-gan-collections")
    assert "--protocol pytorch-gan-collections: not available for SRResNet" in err
    assert "--reference train" not in err  # the preset's split is not the user's option


def test_unpaired_evaluation_still_defaults_to_the_training_split(mnist_dir, tmp_path, capsys):
    from datamodules import MNISTDataModule
    from tests.metrics_helpers import (
        TemplateGenerator,
        classifier_checkpoint,
        save_module_checkpoint,
    )

    data = {"class_path": f"{MNISTDataModule.__module__}.MNISTDataModule",
            "init_args": {"data_dir": str(mnist_dir), "image_size": 28, "download": False}}
    (tmp_path / "data.yaml").write_text(json.dumps({"data": data}))
    ckpt = save_module_checkpoint(TemplateGenerator(image_shape=(1, 28, 28)), tmp_path / "g.ckpt")
    clf = classifier_checkpoint(tmp_path / "clf.ckpt", image_shape=(1, 28, 28))
    out = tmp_path / "g.json"
    main(["evaluate", "--ckpt_path", str(ckpt), "--run_config", str(tmp_path / "data.yaml"),
          "--num_samples", "20", "--isc_splits", "2",
          "--batch_size", "20", "--feature_extractor", f"classifier:{clf}", "--accelerator",
          "cpu", "--progress", "false", "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["reference"]["split"] == "train" and result["reference"]["num_images"] == 128
    assert "classifier-train-20" in capsys.readouterr().out


def test_help_says_which_split_paired_models_use(capsys):
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    text = " ".join(capsys.readouterr().out.split()).lower()
    assert "default: train. image-to-image models: test" in text
