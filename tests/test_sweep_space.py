"""Search spaces and objectives checked against experiments; the example spaces; W&B Sweeps'
agent arguments as `lightning-gen fit` parses them."""

from __future__ import annotations

import json
import math
import re
import shlex
from pathlib import Path

import pytest
import torch
import yaml
from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

from lightning_gen.cli import LightningGenCLI, main
from lightning_gen.sweep import parser, prepare
from lightning_gen.sweep_space import load_space, logged_names, overrides, parse_config
from tests.metrics_helpers import classifier_checkpoint

ROOT = Path(__file__).resolve().parents[1]
SPACES = sorted(p for p in (ROOT / "experiments/sweeps").glob("*.yaml")
                if not p.name.endswith(".wandb.yaml"))
WANDB_SPACES = sorted((ROOT / "experiments/sweeps").glob("*.wandb.yaml"))


def documented_command(space: Path) -> list[str]:
    """The `lightning-gen sweep ...` line in the space's header comment, as arguments."""
    line = next(ln for ln in space.read_text().splitlines() if "lightning-gen sweep " in ln)
    args = shlex.split(line.lstrip("# ").split("lightning-gen sweep ", 1)[1])
    return [str(ROOT / a) if a.startswith("experiments/") else a for a in args]


@pytest.mark.parametrize("space", SPACES, ids=[p.stem for p in SPACES])
def test_each_example_space_fits_its_experiment_and_objective(space):
    text = space.read_text()
    header = "".join(ln for ln in text.splitlines() if ln.startswith("#"))
    assert text.startswith("#") and re.search(r"\(\D+ (19|20)\d\d", header)  # the paper
    command = documented_command(space)
    for arg in command:  # an evaluator run the command's classifier glob names
        if arg.startswith("classifier:"):
            classifier_checkpoint(arg.partition(":")[2].replace("*", "0"))
    args, extra = parser().parse_known_args(command)
    params, _, config, direction = prepare(args, extra)
    assert direction == ("maximize" if args.objective == "val/elbo" else "minimize")
    assert not args.objective.startswith(("train/d_", "train/g_"))  # a GAN player's loss
    assert args.objective in logged_names(config)[0]
    for param in params:  # both ends of each range, as options the experiment takes
        for value in param.boundary_values():
            assert overrides([param], {param.name: value}, config)


def test_index_keys_and_shared_keys_become_whole_options():
    config = parse_config(["--config", str(ROOT / "experiments/dcgan_cifar10.yaml")])
    args, extra = parser().parse_known_args(documented_command(
        ROOT / "experiments/sweeps/dcgan_lr_beta1.yaml"))
    params = prepare(args, extra)[0]
    assert [p.keys for p in params] == [["model.init_args.lr_g", "model.init_args.lr_d"],
                                        ["model.init_args.betas.0"]]
    options = overrides(params, {"lr": 3e-4, "model.init_args.betas.0": 0.25}, config)
    assert options == ["--model.init_args.lr_g=0.0003", "--model.init_args.lr_d=0.0003",
                       "--model.init_args.betas=[0.25, 0.999]"]
    parsed = parse_config(["--config", str(ROOT / "experiments/dcgan_cifar10.yaml"), *options])
    assert list(parsed["model"]["init_args"]["betas"]) == [0.25, 0.999]


def test_a_value_the_experiment_refuses_is_named_before_any_trial(tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("data.batch_size: {type: float, low: 8, high: 64}\n")
    args, extra = parser().parse_known_args([
        "--config", str(ROOT / "experiments/quickstart.yaml"), "--space", str(space),
        "--trials", "2", "--objective", "train/g_loss"])
    with pytest.raises(ValueError, match=r"refuses data.batch_size=8.0: .*batch_size.*int"):
        prepare(args, extra)
    with pytest.raises(ValueError, match="low .* is above high"):
        space.write_text("model.init_args.lr_g: {type: float, low: 1.0e-3, high: 1.0e-4}\n")
        load_space(space)


@pytest.mark.parametrize("name", ["vae_mnist", "pixelcnn_mnist", "ae_mnist", "evaluator_mnist"])
def test_logged_names_are_what_the_models_steps_log(name, monkeypatch):
    """The resolver's table against the models themselves: the names their training and
    validation steps log on a batch."""
    config = ROOT / f"experiments/{name}.yaml"
    names, _ = logged_names(parse_config(["--config", str(config)]))
    model = LightningGenCLI(args=["--config", str(config)], run=False,
                            save_config_callback=None).model
    seen: set[str] = set()
    monkeypatch.setattr(model, "log", lambda key, *a, **k: seen.add(key))
    monkeypatch.setattr(model, "log_dict", lambda d, *a, **k: seen.update(d))
    shape = tuple(model.hparams.image_shape)
    batch = [torch.rand(4, *shape) * 2 - 1, torch.randint(0, 10, (4,))]
    model.training_step(batch, 0)
    model.validation_step(batch, 0)
    assert names == seen and any(n.startswith("val/") for n in names)


def test_metrics_callback_and_validation_split_decide_what_is_logged():
    quickstart = ["--config", str(ROOT / "experiments/quickstart.yaml")]
    names, notes = logged_names(parse_config(quickstart))
    assert names == {"train/d_loss", "train/g_loss"}
    names, _ = logged_names(parse_config([*quickstart, "--metrics.every_n_epochs", "2"]))
    assert {"metrics/fid", "metrics/is_mean", "metrics/kid_mean", "metrics/precision"} < names
    assert "metrics/gan_test" not in names
    vae = ["--config", str(ROOT / "experiments/vae_mnist.yaml")]
    assert "val/elbo" not in logged_names(parse_config([*vae, "--data.val_fraction", "0"]))[0]
    assert "val/elbo" not in logged_names(parse_config(
        [*vae, "--trainer.limit_val_batches", "0"]))[0]


def agent_command(space: Path, values: dict) -> list[str]:
    """The command a W&B agent runs for these values: the file's `command`, `${env}` left
    out, `${args}` built by wandb's own code (`--key=value`, values as Python prints them)."""
    spec = yaml.safe_load(space.read_text())
    flags = create_sweep_command_args({"args": {k: {"value": v} for k, v in values.items()}})
    command = []
    for chunk in spec["command"]:
        if chunk == "${args}":
            command += flags["args"]
        elif chunk != "${env}":
            command.append(str(ROOT / chunk) if chunk.startswith("experiments/") else chunk)
    assert command[:2] == ["lightning-gen", "fit"]
    return command[2:]


def test_wandb_agent_arguments_parse_into_the_intended_config():
    space = ROOT / "experiments/sweeps/dcgan_lr_beta1.wandb.yaml"
    values = {"model.init_args.lr_g": 3.1e-05, "model.init_args.lr_d": 0.00042,
              "model.init_args.betas": [0.3, 0.999]}
    args = agent_command(space, values)
    assert "--model.init_args.betas=[0.3, 0.999]" in args  # as the agent writes it
    config = parse_config(args)
    init = config["model"]["init_args"]
    assert (init["lr_g"], init["lr_d"], list(init["betas"])) == (3.1e-05, 0.00042, [0.3, 0.999])
    assert config["metrics"]["every_n_epochs"] == 5
    assert set(yaml.safe_load(space.read_text())["parameters"]) == set(values)


@pytest.fixture
def wandb_agent_env(monkeypatch):
    """The environment a W&B sweep agent gives its command. wandb keeps the settings it read
    from the environment in a process-wide singleton: reset it afterwards, or later tests'
    runs in this process would take the agent's run id."""
    import wandb

    monkeypatch.setenv("WANDB_SWEEP_ID", "abc123")
    monkeypatch.setenv("WANDB_RUN_ID", "r4nd0m1d")
    yield
    wandb.teardown()


def test_a_wandb_agent_run_is_a_fit_in_the_agents_run_folder(wandb_agent_env):
    space = ROOT / "experiments/sweeps/quickstart_lr.wandb.yaml"
    # The digits evaluator the command's glob names (an untrained one, of this test's size).
    classifier_checkpoint("runs/lightning-gen/evaluator_digits-0/checkpoints/last.ckpt",
                          image_shape=(1, 16, 16))
    args = agent_command(space, {"model.init_args.lr_g": 0.0007, "model.init_args.lr_d": 6e-05,
                                 "data.batch_size": 32})
    main(["fit", *args, "--trainer.max_steps", "2", "--trainer.accelerator", "cpu",
          "--model.init_args.g_width", "8", "--model.init_args.d_width", "8",
          "--data.image_size", "16", "--trainer.enable_progress_bar", "false",
          "--images.every_n_epochs", "0", "--metrics.num_samples", "64"])
    run = Path("runs/lightning-gen/r4nd0m1d")
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["model"]["init_args"]["lr_g"] == 0.0007
    assert config["data"]["init_args"]["batch_size"] == 32
    assert (run / "checkpoints/last.ckpt").is_file()
    # The sweep's metric (what the agent reports to W&B) is in the run's summary.
    summary = json.loads((run / "summary.json").read_text())
    objective = yaml.safe_load(space.read_text())["metric"]["name"]
    assert summary[objective]["protocol"] == "classifier-train-64"
    assert math.isfinite(summary[objective]["last"]) and summary[objective]["last"] > 0


def test_a_classifier_glob_in_trainer_callbacks_is_refused_and_a_path_is_kept(tmp_path):
    # A sweep pins a --metrics glob on every trial's command line; one inside trainer.callbacks
    # cannot be pinned there, so each trial would resolve it again: refused in one line.
    from lightning_gen.sweep import SweepError, check_extractors

    ckpt = classifier_checkpoint(tmp_path / "evaluator-0/last.ckpt", image_shape=(1, 16, 16))
    pattern = str(tmp_path / "evaluator-*/last.ckpt")
    callback = {"class_path": "lightning_gen.callbacks.GenerativeMetricsCallback",
                "init_args": {"every_n_epochs": 1, "feature_extractor": f"classifier:{pattern}"}}
    with pytest.raises(SweepError, match=r"^trainer.callbacks: a sweep cannot hold the glob"):
        check_extractors({"trainer": {"callbacks": [callback]}})
    callback["init_args"]["feature_extractor"] = f"classifier:{ckpt}"
    assert check_extractors({"trainer": {"callbacks": [callback]}}) is None
    assert check_extractors({"metrics": {"every_n_epochs": 1, "feature_extractor":
                                         f"classifier:{pattern}"}}) == str(ckpt)
