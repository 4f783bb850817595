"""The benchmark scripts run, time both sides alike, and report what they measure.

CPU-sized: width-4 networks, batch 2, a few steps; the figures themselves are not checked.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest

ROOT = Path(__file__).resolve().parents[1]


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def throughput():
    return load("throughput")


def table_rows(text: str) -> list[list[str]]:
    rows = [[c.strip() for c in line.strip().strip("|").split("|")]
            for line in text.splitlines() if line.startswith("| ")]
    return [r for r in rows if r[0] not in ("model", "---", "experiment")]


def test_throughput_prints_one_row_per_loop_with_ratios(throughput, capsys):
    throughput.main(["--device", "cpu", "--models", "dcgan,vae,pggan", "--width", "4",
                     "--batch-size", "2", "--steps", "3", "--lightning", "bare"])
    out = capsys.readouterr().out
    rows = [r for r in table_rows(out) if r[0] != "pggan"]
    assert [(r[0], r[2]) for r in rows] == [("dcgan", "hand"), ("dcgan", "lightning (bare)"),
                                            ("vae", "hand"), ("vae", "lightning (bare)")]
    for _model, batch, loop, steps, ips, ratio, cpu_ips, cpu_ratio, _mem in rows:
        assert (batch, steps) == ("2", "3")
        assert float(ips) > 0 and float(cpu_ips) > 0
        if loop == "hand":
            assert float(ratio) == float(cpu_ratio) == 1.0
        else:
            assert 0 < float(ratio) < 10
    # On CPU the loops timed for a second or two are measured 3 times (the best kept), PGGAN's
    # (seconds per step) once.
    records = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert {(r["model"], r["repeats"]) for r in records} == {("dcgan", 3), ("vae", 3),
                                                               ("pggan", 1)}


def test_throughput_leaves_no_files_behind(throughput, monkeypatch, tmp_path, capsys):
    """The `default` loop writes a CSV log and a run folder: into a temporary folder, removed."""
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # tempfile read TMPDIR at import
    throughput.main(["--device", "cpu", "--models", "dcgan", "--width", "4", "--batch-size", "2",
                     "--steps", "2", "--lightning", "default", "--repeats", "1"])
    assert [r[2] for r in table_rows(capsys.readouterr().out)] == ["hand", "lightning (default)"]
    assert list(tmp_path.iterdir()) == []


def test_both_loops_read_the_clock_with_the_same_number_of_syncs(throughput, monkeypatch,
                                                                 tmp_path):
    """CUDA is synchronised only before the first and after the last timed step, in both loops;
    a sync after every Lightning step would stall the GPU queue on that side alone."""
    calls = []
    monkeypatch.setattr(throughput, "sync", lambda device: calls.append(device))
    args = throughput.argparse.Namespace(device="cpu", precision="32-true", width=4, steps=5,
                                         warmup=2, channels_last=False)
    spec, batch = throughput.SPECS["dcgan"], throughput.make_batch(2, "cpu")
    memory = throughput.PeakMemory("cpu")
    throughput.time_hand(spec, args, batch, memory)
    assert len(calls) == 2
    calls.clear()
    ips, cpu_ips, _ = throughput.time_lightning(spec, args, batch, memory, "bare", tmp_path)
    assert len(calls) == 2
    assert math.isfinite(ips) and ips > 0


def test_each_throughput_setup_times_the_progress_bar_it_names(throughput, monkeypatch,
                                                               tmp_path):
    """``tqdm`` is Lightning's TQDM bar (Lightning 2.6 defaults to Rich's when ``rich`` is
    installed), ``default`` the suite's, ``bare`` none."""
    import lightning as L
    from lightning.pytorch.callbacks import TQDMProgressBar

    from lightning_gen.callbacks import ProgressBar

    made = []

    class Recording(L.Trainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(throughput.L, "Trainer", Recording)
    args = throughput.argparse.Namespace(device="cpu", precision="32-true", width=4, steps=2,
                                         warmup=1, channels_last=False)
    spec, batch = throughput.SPECS["vae"], throughput.make_batch(2, "cpu")
    for variant in ("bare", "default", "tqdm"):
        throughput.time_lightning(spec, args, batch, throughput.PeakMemory("cpu"), variant,
                                  tmp_path)
    bars = [type(t.progress_bar_callback) for t in made]
    assert bars == [type(None), ProgressBar, TQDMProgressBar]


def test_throughput_rejects_float16_on_cpu(throughput):
    with pytest.raises(SystemExit) as exit_info:
        throughput.main(["--device", "cpu", "--precision", "16-mixed"])
    assert exit_info.value.code == 2


def test_amp_check_fits_an_experiment_through_the_cli_and_reports_it(capsys, tmp_path):
    amp_check = load("amp_check")
    code = amp_check.main(["--precision", "bf16-mixed", "--steps", "4", "--batch_size", "8",
                           "--accelerator", "cpu", "--experiments", "dcgan_mnist,vae_mnist",
                           "--jobs", "2", "--workdir", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0, out
    gan, vae = table_rows(out)  # in the order asked for, though fitted at the same time
    experiment, precision, exit_code, steps, _s, non_finite, losses, _scale = gan
    assert (experiment, precision, exit_code, steps) == ("dcgan_mnist", "bf16-mixed", "0", "4")
    assert non_finite.startswith("0 of ") and int(non_finite.split()[-1]) > 0
    assert "d_loss" in losses and "g_loss" in losses
    assert vae[0] == "vae_mnist" and vae[2] == "0" and "loss" in vae[6]
    assert "0 of 2 experiments failed" in out


def test_amp_check_drops_pixelcnn_sample_grids_on_the_cpu_only():
    amp_check = load("amp_check")
    off = ["--model.init_args.num_fixed_samples=0"]
    cpu, cuda = SimpleNamespace(accelerator="cpu"), SimpleNamespace(accelerator="cuda")
    assert amp_check.model_overrides("pixelcnn_cifar10", cpu) == off
    assert amp_check.model_overrides("gated_pixelcnn_cifar10", cpu) == off
    assert amp_check.model_overrides("pixelcnn_cifar10", cuda) == []
    assert amp_check.model_overrides("dcgan_cifar10", cpu) == []


def test_amp_check_counts_non_finite_logged_values(tmp_path):
    amp_check = load("amp_check")
    log = tmp_path / "lightning_logs" / "version_0"
    log.mkdir(parents=True)
    (log / "metrics.csv").write_text(  # the run folder's tidy metrics.csv
        "step,epoch,g_steps,wall_time,name,value\n9,0,5,1.0,train/d_loss,0.5\n"
        "19,0,10,2.0,train/d_loss,nan\n19,0,10,2.0,train/g_loss,inf\n"
        "29,0,15,3.0,train/d_loss,0.25\n29,0,15,3.0,train/g_loss,1.5\n")
    bad, last, count = amp_check.read_log(tmp_path)
    assert (bad, count) == (2, 5)
    assert last == {"train/d_loss": 0.25, "train/g_loss": 1.5}


def test_amp_check_reads_training_files_from_mnist_test_files(tmp_path):
    """cyclegan_mnist_inverted on a GPU machine with only the MNIST test files at hand."""
    import gzip

    from tests.fakedata import write_mnist

    source = write_mnist(tmp_path / "src", n_test=5) / "MNIST" / "raw"
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"):
        (source / name).unlink()
    images = (source / "t10k-images-idx3-ubyte").read_bytes()
    (source / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(images))  # as downloaded
    (source / "t10k-images-idx3-ubyte").unlink()
    amp_check = load("amp_check")
    raw = amp_check.mnist_as_training_data(source, tmp_path / "out") / "MNIST" / "raw"
    assert (raw / "train-images-idx3-ubyte").read_bytes() == images
    assert (raw / "t10k-images-idx3-ubyte").read_bytes() == images
    assert (raw / "train-labels-idx1-ubyte").read_bytes() == (
        source / "t10k-labels-idx1-ubyte").read_bytes()


@pytest.mark.slow
@pytest.mark.parametrize("part, tables, models", [
    # Two models: the script's steps are the same for every model, and every model's hand loop
    # and Lightning loop run in tests/test_parity.py (all seven here cost ~15 s more per pass).
    # On CPU the float16 part runs bf16-mixed, as the bf16 part.
    ("fp16", ["throughput-bf16-mixed.md"], "dcgan,vae"),
    ("bf16", ["throughput-bf16-mixed.md", "throughput-bf16-mixed-channels-last.md",
              "metrics.md"], "dcgan,vae"),
    ("amp", ["amp.md"], ""),
])
def test_gpu_session_script_runs_its_steps_in_dry_run_mode(part, tables, models, tmp_path):
    """The script a GPU session runs, at toy sizes on the CPU: it exits 0 and writes its
    tables (a broken script would waste scarce GPU minutes)."""
    import os
    import subprocess

    out = tmp_path / "out"
    env = {**os.environ, "GPU_SESSION_DRY_RUN": "1", "PYTHON": sys.executable,
           "OMP_NUM_THREADS": "1", "GPU_SESSION_MODELS": models}
    proc = subprocess.run(["bash", "benchmarks/gpu_session.sh", part, str(out)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "torch" in (out / "env.txt").read_text()
    for name in tables:
        text = (out / name).read_text()
        assert "ratio" in text or "0 of 2 experiments failed" in text, text
    if part != "amp":
        rows = table_rows((out / "throughput-bf16-mixed.md").read_text())
        assert {r[0] for r in rows} == set(models.split(","))


# ----------------------------------------------------------------------------------------------
# Issue 16 items 1 and 2: where the per-step milliseconds go, and the end-to-end comparison
def test_overhead_times_every_loop_and_prints_machine_readable_rows(capsys):
    overhead = load("overhead")
    overhead.main(["--models", "vae", "--width", "4", "--batch-size", "4", "--steps", "3",
                   "--warmup", "1", "--repeats", "1"])
    out = capsys.readouterr().out
    rows = [json.loads(line[5:]) for line in out.splitlines() if line.startswith("JSON ")]
    assert [r["loop"] for r in rows] == overhead.LOOPS
    hand = rows[0]["ms_per_step"]
    for row in rows:
        assert row["ms_per_step"] > 0
        assert row["ratio"] == pytest.approx(hand / row["ms_per_step"], rel=1e-3)


def test_metrics_benchmark_extracts_torch_fidelitys_features_and_removes_its_weights(capsys):
    """Without --weights_path the script writes a random Inception-v3 (~95 MB) to a temporary
    folder; both sides' features agree, and the weights are gone afterwards."""
    load("metrics").main(["--num_images", "4", "--batch_size", "4", "--repeats", "1",
                          "--device", "cpu"])
    out = capsys.readouterr().out
    ratio = [line for line in out.splitlines() if line.startswith("ratio suite / torch-fidelity")]
    (diff,) = [line for line in out.splitlines() if line.startswith("max |feature difference|")]
    assert len(ratio) == 1 and float(ratio[0].split(":")[1].split()[0]) > 0
    assert float(diff.split(":")[1]) < 1e-4
    assert list(Path(tempfile.gettempdir()).rglob("*.pth")) == []  # conftest: a per-test TMPDIR


def test_overhead_leaves_no_files_behind(monkeypatch, tmp_path, capsys):
    """The `suite default` loop writes a CSV log: into a temporary folder, removed."""
    overhead = load("overhead")
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # tempfile read TMPDIR at import
    overhead.main(["--models", "vae", "--width", "4", "--batch-size", "4", "--steps", "2",
                   "--warmup", "1", "--repeats", "1", "--loops", "hand,suite default"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("JSON ")]
    assert len(rows) == 2
    assert list(tmp_path.iterdir()) == []


def test_end_to_end_quick_times_the_cli_and_the_plain_script(capsys, tmp_path):
    """Both sides run as whole processes on the MNIST files the script writes; the ratio is
    cli / plain and each breakdown run's figure is relative to the full CLI run."""
    end_to_end = load("end_to_end")
    rows = end_to_end.main(["--quick", "--experiments", "vae_mnist", "--breakdown", "none",
                            "--threads", "1"])
    assert [r["run"] for r in rows] == ["plain", "cli"]
    plain, cli = rows
    assert plain["wall_s"] > plain["loop_s"] > 0
    assert cli["ratio"] == pytest.approx(cli["wall_s"] / plain["wall_s"], rel=5e-3)  # rounded
    assert f"JSON {json.dumps(cli)}" in capsys.readouterr().out
    assert list(Path(tempfile.gettempdir()).iterdir()) == []  # conftest: a per-test TMPDIR


def test_end_to_end_workdir_is_created_and_keeps_the_data_and_runs(monkeypatch, tmp_path):
    """--workdir: the files a run used stay there, to rerun a command of it by hand."""
    end_to_end = load("end_to_end")
    commands = []
    monkeypatch.setattr(end_to_end, "run_timed", lambda cmd, env: commands.append(cmd) or (
        1.0, f"CHILD {json.dumps({'loop_s': 0.5})}\n" if "--plain" in cmd else ""))
    work = tmp_path / "new" / "work"
    end_to_end.main(["--experiments", "vae_mnist", "--n-train", "8", "--n-test", "4",
                     "--epochs", "1", "--breakdown", "none", "--workdir", str(work)])
    raw = work / "data" / "MNIST" / "raw"
    assert (raw / "train-images-idx3-ubyte").stat().st_size == 16 + 8 * 28 * 28
    cli = next(c for c in commands if "fit" in c)
    assert cli[cli.index("--data.data_dir") + 1] == str(work / "data")


def test_end_to_end_plain_loop_and_minimal_lightning_make_the_same_updates(tmp_path,
                                                                           monkeypatch):
    """The minimal LightningModule runs the plain script's own steps: as many updates per
    epoch (last partial batch dropped), the VAE's validation pass included."""
    end_to_end = load("end_to_end")
    data_dir = end_to_end.write_mnist(tmp_path, n_train=100, n_test=8)
    calls = {"train": 0, "val": 0}
    train_step, elbo = end_to_end.Steps.train_step, end_to_end.Steps.elbo_loss

    def counting_train(self, real, backward=None):
        calls["train"] += 1
        assert real.shape == (32, 1, 28, 28)
        return train_step(self, real, backward)

    def counting_elbo(self, x):
        calls["val"] += not self.enc.training
        return elbo(self, x)

    monkeypatch.setattr(end_to_end.Steps, "train_step", counting_train)
    monkeypatch.setattr(end_to_end.Steps, "elbo_loss", counting_elbo)
    config = end_to_end.load_config("vae_mnist", quick=True)  # val_fraction 0.1: 90 + 10
    counts = []
    for run in (end_to_end.plain, end_to_end.minimal_lightning):
        calls.update(train=0, val=0)
        assert run(config, data_dir, 2)["loop_s"] > 0
        counts.append(dict(calls))
    assert counts == [{"train": 4, "val": 2}, {"train": 4, "val": 2}]  # 2 x (90 // 32); 2 x 1


def test_end_to_end_splits_start_up_from_the_training_part(monkeypatch, capsys, tmp_path):
    end_to_end = load("end_to_end")
    seconds = {"plain": 30.0, "plain-start-up": 2.0, "plain-tuned": 27.0, "cli": 40.0,
               "cli-start-up": 7.0, "minimal": 33.0}

    def fake_run(cmd, env):
        if "-c" in cmd:  # an import-only process
            return {"torch": 1.0, "lightning": 2.5}.get(cmd[-1].split()[-1], 3.0), ""
        if "--plain" in cmd or "--minimal" in cmd:
            mode = "plain" if "--plain" in cmd else "minimal"
            zero = cmd[cmd.index("--epochs") + 1] == "0"
            key = "plain-start-up" if zero else "plain-tuned" if "--tuned" in cmd else mode
            return seconds[key], f"noise\nCHILD {json.dumps({'loop_s': seconds[key] - 2})}\n"
        zero = cmd[cmd.index("--trainer.max_epochs") + 1] == "0"
        return seconds["cli-start-up" if zero else "cli"], ""

    monkeypatch.setattr(end_to_end, "run_timed", fake_run)
    rows = end_to_end.main(["--experiments", "dcgan_mnist", "--n-train", "8", "--n-test", "4",
                            "--breakdown", "all", "--workdir", str(tmp_path)])
    by_run = {r["run"]: r for r in rows}
    assert by_run["cli"]["ratio"] == pytest.approx(40 / 30, abs=1e-3)
    assert by_run["minimal lightning"]["wall_s"] == 33.0
    assert by_run["plain tuned"]["ratio"] == pytest.approx(27 / 30, abs=1e-3)
    assert by_run["plain start-up"]["loop_s"] == 0.0
    part = by_run["training part"]
    assert (part["cli_s"], part["plain_s"]) == (33.0, 28.0)
    assert part["ratio"] == pytest.approx(33 / 28, abs=1e-3)
    assert by_run["imports"]["torch"] == 1.0 and by_run["imports"]["lightning"] == 2.5
    out = capsys.readouterr().out
    assert "training part (wall - start-up) cli 33.0 s vs plain 28.0 s: ratio 1.18" in out
    assert "start-up cli 7.0 s vs plain 2.0 s (+5.0 s)" in out


def test_epoch_split_times_each_way_per_epoch_in_its_own_process(capsys):
    """plain / minimal Lightning / the suite's module on a DataModule: one row per run with a
    time for every epoch, relative to the plain loop's median."""
    epoch_split = load("epoch_split")
    rows = epoch_split.main(["--quick", "--runs", "1", "--experiment", "vae_mnist",
                             "--modes", "plain,minimal,suite-dm"])
    assert [r["mode"] for r in rows] == ["plain", "minimal", "suite-dm"]
    for row in rows:
        assert len(row["epoch_s"]) == 2 and min(row["epoch_s"]) > 0
        assert row["vs_plain"] == pytest.approx(row["median_s"] / rows[0]["median_s"], abs=2e-3)
    assert capsys.readouterr().out.count("JSON ") == 3


def test_end_to_end_breakdown_switches_exactly_one_part_off():
    end_to_end = load("end_to_end")
    config = end_to_end.load_config("dcgan_mnist", quick=False)
    full = end_to_end.cli_command("dcgan_mnist", config, Path("D"), Path("R"), 2, False, "full")
    assert full[full.index("--trainer.max_epochs") + 1] == "2"
    for variant, flags in end_to_end.OFF.items():
        cmd = end_to_end.cli_command("dcgan_mnist", config, Path("D"), Path("R"), 2, False,
                                     variant)
        assert " ".join(flags) in " ".join(cmd)
        assert ("--trainer.logger.init_args.save_dir" in cmd) == (variant != "-wandb")
    start = end_to_end.cli_command("dcgan_mnist", config, Path("D"), Path("R"), 2, False,
                                   "start-up")
    assert start[start.index("--trainer.max_epochs") + 1] == "0"


def _count_loss_logs(bar) -> tuple[list[int], L.Trainer]:
    from datamodules import DigitsDataModule
    from lightning_gen.models import DCGAN

    L.seed_everything(0)
    model = DCGAN((1, 16, 16), latent_dim=8, g_width=8, d_width=8)
    logged: list[int] = []
    log = model.log

    def counting_log(name, value, *args, **kwargs):
        if name == "train/d_loss":
            logged.append(model.d_steps)
        return log(name, value, *args, **kwargs)

    model.log = counting_log
    trainer = L.Trainer(accelerator="cpu", max_epochs=1, limit_train_batches=6, logger=False,
                        enable_checkpointing=False, enable_model_summary=False,
                        callbacks=[bar], log_every_n_steps=50)
    trainer.fit(model, DigitsDataModule(image_size=16, batch_size=8, val_fraction=0.0))
    return logged, trainer


def test_losses_are_logged_only_when_the_suites_progress_bar_reads_them():
    """``train_logging="losses"`` with the suite's bar: the losses are logged at the steps the
    bar reads them (the first, then once per ``metrics_interval``) and every term at the last
    step, not at every step; the bar still shows the last loss. With ``metrics_interval=0``
    (or Lightning's own bar, or none) they are logged at every step, as before."""
    from lightning_gen.callbacks import ProgressBar

    slow = ProgressBar(metrics_interval=3600.0)
    logged, trainer = _count_loss_logs(slow)
    assert logged == [1, 6]
    assert slow._metrics["train/d_loss"] == pytest.approx(
        float(trainer.progress_bar_metrics["train/d_loss"]))
    every, _ = _count_loss_logs(ProgressBar(metrics_interval=0.0))
    assert every == [1, 2, 3, 4, 5, 6]


def test_end_to_end_repeats_alternate_the_runs_and_report_medians(monkeypatch, capsys, tmp_path):
    """--repeats 3: plain, cli, plain, cli, ...; wall s is the median, ratio the median of the
    repeats' cli / plain (not the ratio of the medians), each repeat's ratio listed."""
    end_to_end = load("end_to_end")
    order, plain_s, cli_s = [], iter([20.0, 30.0, 25.0]), iter([22.0, 36.0, 26.0])
    folders = []

    def fake_run(cmd, env):
        if "--plain" in cmd:
            order.append("plain")
            return next(plain_s), f"CHILD {json.dumps({'loop_s': 1.0})}\n"
        order.append("cli")
        folders.append(cmd[cmd.index("--trainer.logger.init_args.save_dir") + 1])
        return next(cli_s), ""

    monkeypatch.setattr(end_to_end, "run_timed", fake_run)
    rows = end_to_end.main(["--experiments", "vae_mnist", "--n-train", "8", "--n-test", "4",
                            "--breakdown", "none", "--repeats", "3", "--workdir", str(tmp_path)])
    assert order == ["plain", "cli"] * 3
    # Each repeat runs in folders of its own (a run without a logger refuses a used folder).
    assert len(set(folders)) == 3
    by_run = {r["run"]: r for r in rows}
    assert by_run["plain"]["wall_s"] == 25.0 and by_run["cli"]["wall_s"] == 26.0
    assert by_run["cli"]["ratios"] == [1.1, 1.2, 1.04]
    assert by_run["cli"]["ratio"] == 1.1  # median of the pairs; 26 / 25 would be 1.04
    out = capsys.readouterr().out
    assert "cli / plain in each of 3 alternated repeats: 1.10, 1.20, 1.04 (median 1.10)" in out


def test_gpu_torch_checks_run_on_the_cpu_and_print_one_json_line_per_result(capsys):
    checks = load("gpu_torch_checks")
    checks.main(["--checks", "1,3,4"])
    rows = [json.loads(line[5:]) for line in capsys.readouterr().out.splitlines()
            if line.startswith("JSON ")]
    assert [r["check"] for r in rows] == ["tf32_api", "spectral_norm_amp", "seeded_draws"]
    assert rows[0]["skipped"] is True  # CUDA only
    assert 0 <= rows[1]["relative_error"] < 0.05  # bf16 autocast against float32
    assert set(rows[2]) == {"check", "randperm", "random_split", "fixed_noise", "init", "shuffle"}
