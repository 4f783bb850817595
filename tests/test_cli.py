"""The `lightning-gen` command: configs, runs, tracking, resuming and errors a user can cause."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch.cli import LightningCLI
from PIL import Image

from lightning_gen.cli import LightningGenCLI, main
from lightning_gen.loggers import resolve_offline
from tests.wandb_log import config_keys, history, wait_for_run_log

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted((ROOT / "experiments").glob("*.yaml"))
FAST = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--data.num_workers", "0"]


def only_run_dir() -> Path:
    runs = sorted(Path("runs").glob("*/*"))
    assert len(runs) == 1, runs
    return runs[0]


@pytest.mark.parametrize("config", EXPERIMENTS, ids=[p.stem for p in EXPERIMENTS])
def test_every_experiment_yaml_parses_and_instantiates(config):
    text = config.read_text()
    assert text.startswith("#"), "each YAML names its paper in a top comment"
    assert "seed_everything" in yaml.safe_load(text)
    cli = LightningGenCLI(args=["--config", str(config)], run=False,
                          save_config_callback=None)
    assert tuple(cli.model.hparams.image_shape) == tuple(cli.datamodule.image_shape)
    assert cli.trainer is not None


@pytest.mark.parametrize("name", ["dcgan_mnist", "ae_mnist", "vae_mnist"])
def test_mnist_experiments_fit_20_steps_on_mnist_files(name, mnist_dir):
    main(["fit", "--config", str(ROOT / f"experiments/{name}.yaml"), "--data.data_dir",
          str(mnist_dir), "--trainer.max_steps", "20", *FAST])
    run = only_run_dir()
    ckpt = torch.load(run / "checkpoints/last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 20
    assert (run / "config.yaml").exists() and list((run / "images").glob("*_last.png"))


@pytest.mark.parametrize("name, data", [("dcgan_cifar10.yaml", "cifar10_dir"),
                                        ("dcgan_celeba.yaml", "celeba_dir"),
                                        ("vae_celeba.yaml", "celeba_dir")])
def test_cifar10_and_celeba_experiments_fit_on_their_file_formats(name, data, request):
    main(["fit", "--config", str(ROOT / "experiments" / name), "--data.data_dir",
          str(request.getfixturevalue(data)), "--data.batch_size", "4", "--trainer.max_steps", "4",
          *FAST])
    run = only_run_dir()
    assert torch.load(run / "checkpoints/last.ckpt", weights_only=False)["global_step"] == 4
    assert list((run / "images").glob("*_last.png"))


def test_empty_data_dir_exits_nonzero_with_one_clear_message(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    cmd = [sys.executable, "-m", "lightning_gen.cli", "fit", "--config",
           str(ROOT / "experiments/dcgan_mnist.yaml"), "--data.data_dir", str(empty),
           "--trainer.max_steps", "20"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert str(empty) in result.stderr and "MNIST/raw/train-images-idx3-ubyte" in result.stderr
    assert list(empty.iterdir()) == [] and not (tmp_path / "runs").exists()


def test_unknown_config_key_is_named_in_the_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["fit", "--config", str(ROOT / "experiments/quickstart.yaml"),
              "--model.init_args.no_such_option", "3"])
    assert info.value.code != 0
    assert "no_such_option" in capsys.readouterr().err


def test_wrong_type_is_named_in_the_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["fit", "--config", str(ROOT / "experiments/quickstart.yaml"),
              "--model.init_args.latent_dim", "many"])
    assert info.value.code != 0
    assert "latent_dim" in capsys.readouterr().err


def test_bad_value_is_one_line_without_traceback(capsys):
    with pytest.raises(SystemExit) as info:
        main(["fit", "--config", str(ROOT / "experiments/quickstart.yaml"),
              "--model.init_args.n_critic", "0"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "n_critic must be >= 1" in err and "Traceback" not in err


@pytest.mark.parametrize("command", ["fit", "validate"])
def test_a_subcommand_builds_only_its_own_parser_and_resolves_the_same_config(
        command, capsys, monkeypatch):
    args = [command, "--config", str(ROOT / "experiments/vae_mnist.yaml"), "--print_config"]
    built = []
    prepare = LightningGenCLI._prepare_subcommand_parser

    def counted(self, klass, subcommand, **kwargs):
        built.append(subcommand)
        return prepare(self, klass, subcommand, **kwargs)

    monkeypatch.setattr(LightningGenCLI, "_prepare_subcommand_parser", counted)
    with pytest.raises(SystemExit):
        main(args)
    alone = capsys.readouterr().out
    assert built == [command]
    # All four parsers, as LightningCLI builds them: the printed config is the same.
    monkeypatch.setattr(LightningGenCLI, "subcommands", lambda self: LightningCLI.subcommands())
    built.clear()
    with pytest.raises(SystemExit):
        main(args)
    assert built == ["fit", "validate", "test", "predict"]
    assert "vae_mnist" in alone and capsys.readouterr().out == alone


def test_an_unknown_subcommand_lists_all_four(capsys):
    with pytest.raises(SystemExit) as info:
        main(["fitt", "--config", str(ROOT / "experiments/quickstart.yaml")])
    assert info.value.code != 0
    assert "'fit', 'validate', 'test', 'predict'" in capsys.readouterr().err


def test_quickstart_writes_samples_checkpoint_and_wandb_run_and_says_where(capsys):
    main(["fit", "--config", str(ROOT / "experiments/quickstart.yaml"),
          "--trainer.max_steps", "6", *FAST])
    out = capsys.readouterr().out
    run = only_run_dir()
    png = run / "images/samples_last.png"
    assert f"Images (samples): {png}" in out
    assert f"Checkpoint:  {run / 'checkpoints/last.ckpt'}" in out
    assert "W&B offline run: " in out and "wandb sync" in out
    grid = Image.open(png)
    assert grid.size == (8 * 34 + 2, 8 * 34 + 2)  # 8x8 samples of 32 px, 2 px padding
    assert (run / "checkpoints/last.ckpt").exists()


def test_wandb_offline_run_holds_hyperparameters_metrics_and_images():
    main(["fit", "--config", str(ROOT / "experiments/quickstart.yaml"),
          "--trainer.max_steps", "10", "--trainer.log_every_n_steps", "1", *FAST])
    run = only_run_dir()
    log = wait_for_run_log(run / "wandb")
    rows = history(log)
    keys = {k for row in rows for k in row}
    assert {"train/d_loss", "train/g_loss", "train/d_steps", "trainer/global_step"} <= keys
    image_rows = [r for r in rows if r.get("images/samples/_type") == "images/separated"]
    # At Lightning's logging step (5 batches), not trainer.global_step (10 optimizer steps).
    assert image_rows and image_rows[-1]["trainer/global_step"] == 5
    assert list(Path(log).parent.glob("files/media/images/**/*.png"))
    # The resolved config, nested (tests/test_wandb_record.py reads its values).
    assert {"model", "data", "trainer", "seed_everything"} <= config_keys(log)
    assert not {"latent_dim", "lr_g", "n_critic", "batch_size"} & config_keys(log)


def test_saved_config_is_the_resolved_one():
    main(["fit", "--config", str(ROOT / "experiments/quickstart.yaml"),
          "--trainer.max_steps", "2", "--model.init_args.latent_dim", "7", *FAST])
    config = yaml.safe_load((only_run_dir() / "config.yaml").read_text())
    assert config["model"]["class_path"] == "lightning_gen.models.DCGAN"
    assert config["model"]["init_args"]["latent_dim"] == 7
    assert config["trainer"]["max_steps"] == 2 and config["seed_everything"] == 0
    # Defaults the YAML did not spell out are resolved too.
    assert config["model"]["init_args"]["optimizer"] == "adam"


def test_csv_logger_is_selectable(capsys):
    main(["fit", "--config", str(ROOT / "experiments/quickstart.yaml"), "--trainer.max_steps",
          "2", "--trainer.logger", "lightning.pytorch.loggers.CSVLogger",
          "--trainer.logger.save_dir", "runs", "--trainer.log_every_n_steps", "1", *FAST])
    (metrics,) = Path("runs").glob("**/metrics.csv")  # the run folder's tidy file
    assert "train/d_loss" in metrics.read_text()
    # The CSVLogger's own (wide) file, moved aside in the same folder.
    assert "train/d_loss" in (metrics.parent / "metrics_wide.csv").read_text().splitlines()[0]
    assert (metrics.parent / "images/samples_last.png").exists()
    assert (metrics.parent / "config.yaml").exists()


def test_offline_unless_logged_in(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    assert resolve_offline(None) is True
    (tmp_path / "netrc").write_text("machine api.wandb.ai\n  login user\n  password abc\n")
    assert resolve_offline(None) is False
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert resolve_offline(None) is True
    assert resolve_offline(False) is False


def test_ckpt_path_last_resumes_the_gan_run_in_its_folder():
    args = ["fit", "--config", str(ROOT / "experiments/quickstart.yaml"), *FAST]
    main([*args, "--trainer.max_steps", "4"])
    run = only_run_dir()
    first = torch.load(run / "checkpoints/last.ckpt", weights_only=False)
    main([*args, "--trainer.max_steps", "8", "--ckpt_path", "last"])
    assert only_run_dir() == run  # continued in the same folder
    second = torch.load(run / "checkpoints/last.ckpt", weights_only=False)
    assert second["global_step"] == 8
    assert second["gan_steps"] == {"d_steps": 4, "g_steps": 4}
    assert torch.equal(first["state_dict"]["fixed_noise"], second["state_dict"]["fixed_noise"])
    # Adam's per-parameter step count continued from the restored state (2 -> 4), so both
    # optimizers' states were restored rather than restarted.
    for opt_state in second["optimizer_states"]:
        assert {int(s["step"]) for s in opt_state["state"].values()} == {4}


def test_a_fast_dev_run_writes_nothing_that_ckpt_path_last_or_compare_would_take(capsys):
    # It wrote a folder with metrics.csv and images but no config.yaml: `compare 'runs/*/*'`
    # then stopped at it ("not a run folder"), and Lightning 2.6 saved a last.ckpt there.
    args = ["fit", "--config", str(ROOT / "experiments/quickstart.yaml"), *FAST]
    main([*args, "--trainer.max_steps", "4"])
    run = only_run_dir()
    capsys.readouterr()
    main([*args, "--trainer.fast_dev_run", "true"])
    assert set(Path("runs").glob("*/*")) == {run}
    assert "nothing was written" in capsys.readouterr().out
    main([*args, "--trainer.max_steps", "8", "--ckpt_path", "last"])
    assert torch.load(run / "checkpoints/last.ckpt", weights_only=False)["global_step"] == 8


def test_a_fast_dev_run_without_a_logger_leaves_the_folder_to_the_real_run(tmp_path):
    args = ["fit", "--config", str(ROOT / "experiments/quickstart.yaml"), *FAST,
            "--trainer.logger", "false", "--trainer.default_root_dir", str(tmp_path / "run")]
    main([*args, "--trainer.fast_dev_run", "true"])
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())
    main([*args, "--trainer.max_steps", "2"])  # was refused: "already holds a run"
    assert (tmp_path / "run/config.yaml").is_file()


def test_ckpt_path_last_without_an_earlier_run_is_a_clear_error(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(ROOT / "experiments/quickstart.yaml"), "--ckpt_path", "last"])
    assert "no earlier run of 'quickstart'" in capsys.readouterr().err


def test_resuming_a_checkpoint_of_other_images_is_a_clear_error(mnist_dir, capsys):
    main(["fit", "--config", str(ROOT / "experiments/quickstart.yaml"),
          "--trainer.max_steps", "2", *FAST])  # digits at 32x32
    ckpt = next(Path("runs").glob("*/*/checkpoints/last.ckpt"))
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(ROOT / "experiments/dcgan_mnist.yaml"), "--data.data_dir",
              str(mnist_dir), "--ckpt_path", str(ckpt), *FAST])  # MNIST at 28x28
    err = capsys.readouterr().err
    assert "(1, 32, 32)" in err and "(1, 28, 28)" in err and "Traceback" not in err
    # Reported before the second run started: no run folder, no W&B run for it.
    assert len(list(Path("runs").glob("*/*"))) == 1


def test_a_conditional_model_on_data_with_other_labels_is_a_clear_error(capsys):
    # cgan_celeba's model is conditioned on CelebA's 40 attributes; digits have 10 classes.
    with pytest.raises(SystemExit) as info:
        main(["fit", "--config", str(ROOT / "experiments/cgan_celeba.yaml"),
              "--data", "datamodules.DigitsDataModule", "--data.image_size", "32",
              "--trainer.max_steps", "2", *FAST])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "Traceback" not in err
    assert "GAN is conditioned on 40 binary attributes but DigitsDataModule yields 10 classes" in err
    assert not Path("runs").exists() and not list(Path.cwd().rglob("config.yaml"))


@pytest.mark.parametrize("command, step", [("validate", "validation_step"),
                                           ("test", "test_step"), ("predict", "predict_step")])
def test_a_subcommand_without_its_step_is_a_one_line_error(command, step, capsys):
    # The README lists validate|test|predict: a GAN has none of those steps (and no model a
    # predict_step); the user gets one line naming the step, not Lightning's traceback.
    main(["fit", "--config", str(ROOT / "experiments/quickstart.yaml"),
          "--trainer.max_steps", "2", *FAST])
    ckpt = next(Path("runs").glob("*/*/checkpoints/last.ckpt"))
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main([command, "--config", str(ROOT / "experiments/quickstart.yaml"),
              "--ckpt_path", str(ckpt), *FAST])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith(f"lightning-gen: error: DCGAN defines no {step}()")


def test_trainer_flags_the_machine_cannot_honour_are_one_line(capsys):
    # Lightning raises MisconfigurationException for these (no GPU for --trainer.accelerator
    # gpu, more devices than the machine has); devices 0 is refused on every machine.
    with pytest.raises(SystemExit) as info:
        main(["fit", "--config", str(ROOT / "experiments/quickstart.yaml"),
              "--trainer.accelerator", "cpu", "--trainer.devices", "0", *FAST])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("lightning-gen: error: `Trainer(devices='0')`")
    assert not Path("runs").exists()


def test_cpu_devices_the_machine_cannot_run_are_one_line(capsys):
    # -2 was Lightning's TypeError traceback; more processes than cores (--trainer.devices 64
    # on 2 cores) started them all and had not begun training after 5 minutes.
    cores = len(os.sched_getaffinity(0))
    for devices, line in (
            ("-2", "lightning-gen: error: --trainer.devices -2: `devices` selected with "
                   "`CPUAccelerator` should be an int > 0."),
            (str(cores + 1), f"lightning-gen: error: --trainer.devices {cores + 1} on the CPU "
                             f"starts {cores + 1} training processes, and this machine has "
                             f"{cores} CPU cores: use --trainer.devices {cores} or fewer (or "
                             "--trainer.accelerator gpu on a GPU machine)")):
        with pytest.raises(SystemExit) as info:
            main(["fit", "--config", str(ROOT / "experiments/quickstart.yaml"),
                  "--trainer.accelerator", "cpu", "--trainer.strategy", "ddp",
                  "--trainer.devices", devices, *FAST])
        err = capsys.readouterr().err
        assert info.value.code == 2 and "Traceback" not in err
        assert err.strip().splitlines()[-1] == line
        assert not Path("runs").exists()


# A regression would hang inside the process group's C++ rendezvous, which the default
# (signal) timeout cannot interrupt; the thread method ends the test run loudly instead.
@pytest.mark.timeout(120, method="thread")
def test_num_nodes_without_a_launcher_is_an_error_not_a_hang(capsys, monkeypatch):
    # Rank 0 of a 2-node world would otherwise wait for node 1 until the 30-minute timeout.
    for key in ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    for key in [k for k in os.environ if k.startswith(("SLURM_", "TORCHELASTIC_"))]:
        monkeypatch.delenv(key)
    with pytest.raises(SystemExit) as info:
        main(["fit", "--config", str(ROOT / "experiments/quickstart.yaml"),
              "--trainer.accelerator", "cpu", "--trainer.strategy", "ddp",
              "--trainer.num_nodes", "2", "--trainer.devices", "1", *FAST])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "Traceback" not in err
    assert "--trainer.num_nodes 2 needs a process on every node" in err
    assert not Path("runs").exists()


def test_the_first_run_prints_no_line_its_user_cannot_act_on(tmp_path):
    """The README's first run (quickstart GAN, W&B offline): no Lightning advertisement, no
    deprecation raised inside Lightning, no "no validation_step" (GANs have none by design), no
    W&B warning that an offline run has no URL."""
    result = subprocess.run(
        [sys.executable, "-m", "lightning_gen", "fit", "--config",
         str(ROOT / "experiments/quickstart.yaml"), "--trainer.max_steps", "2",
         "--data.num_workers", "0"],
        cwd=tmp_path, capture_output=True, text=True, timeout=240,
        env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
             "WANDB_MODE": "offline", "WANDB_SILENT": "false"})  # W&B's lines as a user sees them
    assert result.returncode == 0, result.stderr[-2000:]
    output = result.stdout + result.stderr
    assert "Trainable params" in output and "wandb: Run summary:" in output  # what should come
    for line in ("Tip:", "litlogger", "LeafSpec", "validation_step", "URL not available"):
        assert line not in output, line


def test_the_end_of_fit_lists_every_grid_and_the_final_evaluation_values(tmp_path, capsys):
    (tmp_path / "vae.yaml").write_text(
        "model:\n  class_path: lightning_gen.models.VAE\n  init_args: {latent_dim: 4, width: 4}\n"
        "data:\n  class_path: datamodules.DigitsDataModule\n"
        "  init_args: {image_size: 8, val_fraction: 0.2}\n"
        "trainer:\n  max_epochs: 2\n  limit_train_batches: 2\n  limit_val_batches: 1\n")
    main(["fit", "--config", str(tmp_path / "vae.yaml"), "--trainer.callbacks+=lightning_gen."
          "callbacks.LatentTraversalCallback", "--trainer.callbacks.num_dims=2", *FAST])
    out = capsys.readouterr().out
    run = only_run_dir()
    for name in ("latent_traversal", "reconstructions", "samples"):  # callback's and model's
        assert f"Images ({name}): {run / 'images' / (name + '_last.png')}" in out
    summary = json.loads((run / "summary.json").read_text())
    (final,) = [line for line in out.splitlines() if line.startswith("Final:")]
    assert f"val/elbo {summary['val/elbo']['last']:.6g}" in final
    assert "train/" not in final  # evaluation values, not training losses
