"""`lightning-gen sweep` end to end on the quickstart (a few steps per trial, SQLite study):
a sweep, one killed and run again, two workers on one study, pruning, and the errors that stop
a sweep before its first trial."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import sqlalchemy
import yaml
from optuna.trial import TrialState
from PIL import Image

from lightning_gen.cli import main
from lightning_gen.sweep_trial import make_storage

ROOT = Path(__file__).resolve().parents[1]
NAME = "quickstart_lr"
STORAGE = f"sqlite:///runs/sweeps/{NAME}/study.db"
FAST = ["--trainer.accelerator", "cpu", "--model.init_args.g_width", "8",
        "--model.init_args.d_width", "8", "--data.init_args.image_size", "16",
        "--data.init_args.batch_size", "16", "--trainer.log_every_n_steps", "1",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--data.num_workers", "0", "--images.every_n_epochs", "0"]
SWEEP = ["--config", str(ROOT / "experiments/quickstart.yaml"),
         "--space", str(ROOT / f"experiments/sweeps/{NAME}.yaml"),
         "--objective", "train/g_loss", "--direction", "minimize", *FAST]


def study() -> optuna.Study:
    return optuna.load_study(study_name=NAME, storage=STORAGE)


def start(*args: str) -> subprocess.Popen:
    """A sweep process of its own (its own session, so the test can kill it with its trial)."""
    return subprocess.Popen(
        [sys.executable, "-m", "lightning_gen.cli", "sweep", *SWEEP, *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)})


def wait_for(condition, timeout: float = 180) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.05)


def trials_where(state: TrialState) -> list:
    path = Path(f"runs/sweeps/{NAME}/study.db")
    if not path.is_file():
        return []
    try:
        return study().get_trials(states=(state,))
    except Exception:  # noqa: BLE001 (the study is being created)
        return []


def test_three_trial_sweep_runs_three_runs_ranks_them_and_plots(capsys):
    main(["sweep", *SWEEP, "--trials", "3", "--in_process", "true",
          "--trainer.max_steps", "6"])
    out = capsys.readouterr().out
    trials = study().trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    runs = sorted(Path("runs/lightning-gen").iterdir())
    assert len(runs) == 3
    for t in trials:  # each trial an ordinary run with its values, number and group
        run = Path(t.user_attrs["run_dir"])
        assert run in runs and (run / "checkpoints/last.ckpt").is_file()
        config = yaml.safe_load((run / "config.yaml").read_text())
        assert config["model"]["init_args"]["lr_g"] == t.params["model.init_args.lr_g"]
        assert config["model"]["init_args"]["lr_d"] == t.params["model.init_args.lr_d"]
        logger = config["trainer"]["logger"]["init_args"]
        assert logger["group"] == NAME and f"trial:{t.number}" in logger["tags"]
        assert t.value == pytest.approx(
            yaml.safe_load((run / "summary.json").read_text())["train/g_loss"]["last"])
    with open(f"runs/sweeps/{NAME}/ranking.csv", newline="") as f:
        ranking = list(csv.DictReader(f))
    assert [float(r["train/g_loss"]) for r in ranking] == sorted(t.value for t in trials)
    best = min(trials, key=lambda t: t.value)
    assert ranking[0]["trial"] == str(best.number) and ranking[0]["rank"] == "1"
    ranked = [ln.split() for ln in out.splitlines() if ln.split()[:1] in (["1"], ["2"], ["3"])]
    assert [r[1] for r in ranked] == [r["trial"] for r in ranking]
    for png in ("history", "parallel_coordinates", "importances"):
        image = Image.open(f"runs/sweeps/{NAME}/{png}.png")
        assert image.size[0] >= 600 and image.size[1] >= 400
        assert f"runs/sweeps/{NAME}/{png}.png" in out
    # compare --sweep gives the same ranking from the study alone.
    main(["compare", "--sweep", NAME, "--out", "out"])
    with open("out/ranking.csv", newline="") as f:
        assert list(csv.DictReader(f)) == ranking


def test_trials_without_a_logger_each_get_a_run_folder_of_their_own():
    main(["sweep", *SWEEP, "--trials", "2", "--in_process", "true",
          "--trainer.max_steps", "4", "--trainer.logger", "false"])
    trials = study().trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    runs = sorted(Path(f"runs/sweeps/{NAME}/runs").iterdir())
    assert [Path(t.user_attrs["run_dir"]).absolute() for t in trials] == [
        r.absolute() for r in runs]
    for t in trials:  # its own values and metrics, not another trial's
        run = Path(t.user_attrs["run_dir"])
        config = yaml.safe_load((run / "config.yaml").read_text())
        assert config["model"]["init_args"]["lr_g"] == t.params["model.init_args.lr_g"]
        with open(run / "metrics.csv", newline="") as f:
            assert sorted({int(r["step"]) for r in csv.DictReader(f)}) == [0, 1]
    assert not Path("config.yaml").exists() and not Path("metrics.csv").exists()


def test_a_killed_sweep_goes_on_where_it_stopped_with_exactly_n_trials(capsys):
    # 200 steps a trial: the second trial runs long enough to be seen RUNNING on a loaded
    # machine (with 6 steps it could end between two looks, and the test waited in vain).
    proc = start("--trials", "2", "--in_process", "true", "--trainer.max_steps", "200")
    try:  # killed (SIGKILL, no clean-up) during its second trial
        wait_for(lambda: (trials_where(TrialState.COMPLETE) and trials_where(TrialState.RUNNING))
                 or proc.poll() is not None)
    finally:
        ended = proc.poll()
        if ended is None:
            os.killpg(proc.pid, signal.SIGKILL)
        output = proc.communicate()[0]
    assert ended is None, (f"the sweep ended (exit {ended}) before it could be killed in its 2nd "
                           f"trial:\n{output[-3000:]}")
    killed = trials_where(TrialState.RUNNING)[0]
    # The same command (trials in processes of their own this time) goes on.
    main(["sweep", *SWEEP, "--trials", "2", "--trainer.max_steps", "200"])
    trials = study().trials
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL,
                                         TrialState.COMPLETE]
    interrupted, retried = trials[killed.number], trials[2]
    assert "stopped" in interrupted.user_attrs["interrupted"]
    assert retried.system_attrs["failed_trial"] == killed.number
    assert retried.params == killed.params  # the interrupted values run again
    assert (Path(f"runs/sweeps/{NAME}/trials/0002.log").read_text().split()[:3]
            == [sys.executable, "-m", "lightning_gen"])  # a process of its own
    out = capsys.readouterr().out
    assert "2 of 2 trials finished" in out and f"retry of trial {killed.number}" in out


def test_a_new_study_file_whose_tables_another_process_creates_meanwhile_still_opens(
        tmp_path, monkeypatch):
    # SQLAlchemy checks whether each table exists, then creates it. Here another process (a
    # reader such as Optuna's dashboard, or a second worker) creates the tables in between, so
    # SQLite's own "table studies already exists" error is raised; the storage opens again.
    url = f"sqlite:///{tmp_path / 'study.db'}"
    create_all = sqlalchemy.MetaData.create_all
    calls = []

    def raced(self, bind, tables=None, checkfirst=True):
        calls.append(checkfirst)
        if len(calls) == 1:
            other = sqlalchemy.create_engine(url)
            create_all(self, other)
            other.dispose()
            checkfirst = False  # this process had found the tables missing
        return create_all(self, bind, tables, checkfirst)

    monkeypatch.setattr(sqlalchemy.MetaData, "create_all", raced)
    storage = make_storage(url)
    assert len(calls) == 2
    optuna.create_study(study_name="s", storage=storage).optimize(lambda t: 1.0, n_trials=1)
    assert [t.value for t in optuna.load_study(study_name="s", storage=url).trials] == [1.0]


def test_two_workers_on_one_study_run_n_trials_in_all_none_twice():
    procs = [start("--trials", "3", "--in_process", "true", "--trainer.max_steps", "10")
             for _ in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    trials = study().trials
    assert [t.number for t in trials] == [0, 1, 2]
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert len({t.user_attrs["run_dir"] for t in trials}) == 3
    assert len(list(Path("runs/lightning-gen").iterdir())) == 3
    workers = {t.user_attrs["worker"] for t in trials}
    assert {w.split(":")[1] for w in workers} == {str(p.pid) for p in procs}, outs


def test_a_trial_clearly_worse_than_the_others_is_pruned():
    # Two earlier trials reported train/g_loss 0 at every step (a test double of their
    # values); the quickstart's non-saturating g_loss is > 0, above their median at once.
    s = optuna.create_study(study_name=NAME, storage=_storage(), direction="minimize")
    for lr in (1e-4, 2e-4):
        s.add_trial(optuna.trial.create_trial(
            params={"model.init_args.lr_g": lr, "model.init_args.lr_d": lr},
            distributions={k: optuna.distributions.FloatDistribution(5e-5, 2e-3, log=True)
                           for k in ("model.init_args.lr_g", "model.init_args.lr_d")},
            value=0.0, intermediate_values=dict.fromkeys(range(100), 0.0)))
    main(["sweep", *SWEEP, "--trials", "3", "--in_process", "true",
          "--pruner_kwargs", '{"n_startup_trials": 2}', "--trainer.max_steps", "40"])
    pruned = study().trials[2]
    assert pruned.state == TrialState.PRUNED
    assert list(pruned.intermediate_values) == [0] and pruned.intermediate_values[0] > 0
    steps = [int(r["step"]) for r in csv.DictReader(
        open(Path(pruned.user_attrs["run_dir"]) / "metrics.csv", newline=""))]
    assert max(steps) <= 1  # stopped after its first step (of 20)


def _storage() -> str:
    Path(f"runs/sweeps/{NAME}").mkdir(parents=True)
    return STORAGE


@pytest.mark.parametrize("change, message", [
    (["--space", "typo.yaml"], "lightning-gen: error: --space typo.yaml: unknown config key "
     "'model.init_args.lr_gg': the experiment's config has no such option (did you mean "
     "model.init_args.lr_g?)"),
    (["--objective", "metrics/fid"], "lightning-gen: error: --objective metrics/fid is not "
     "logged by this experiment (metrics/* only with --metrics.every_n_epochs N > 0 (off in "
     "this config); GANs log no val/* values; it logs train/d_loss, train/g_loss)"),
    (["--direction", None], "lightning-gen: error: --direction minimize|maximize: "
     "'train/g_loss' has no known goal (a GAN player's loss: a low train/g_loss means a weak "
     "discriminator, not good samples; rank by metrics/fid with --metrics.every_n_epochs N)"),
])
def test_an_unknown_key_objective_or_goal_is_one_line_and_starts_no_trial(change, message, capsys):
    Path("typo.yaml").write_text("model.init_args.lr_gg: {type: float, low: 1.0e-4, high: "
                                 "1.0e-3}\n")
    args = list(SWEEP)
    where = args.index(change[0])
    if change[1] is None:  # the option left out
        del args[where:where + 2]
    else:
        args[where + 1] = change[1]
    with pytest.raises(SystemExit) as info:
        main(["sweep", *args, "--trials", "3"])
    assert info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [message]
    assert not Path("runs").exists()


def test_a_missing_evaluator_is_one_line_before_any_trial(capsys):
    evaluator = "runs/lightning-gen/evaluator_digits-*/checkpoints/last.ckpt"
    args = [a if a != "train/g_loss" else "metrics/fid" for a in SWEEP]
    with pytest.raises(SystemExit) as info:
        main(["sweep", *args, "--trials", "3", "--metrics.every_n_epochs", "1",
              "--metrics.feature_extractor", f"classifier:{evaluator}"])
    assert info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"lightning-gen: error: --metrics.feature_extractor: no classifier checkpoint matches "
        f"'{evaluator}'; train one with lightning-gen fit --config "
        "experiments/evaluator_<data>.yaml"]
    assert not Path("runs/sweeps").exists()


def test_a_classifier_glob_is_resolved_once_for_the_whole_study(capsys):
    # Trials ranked in the features of different evaluators are not comparable: the glob
    # resolves to the newest evaluator when the study starts, and a later run of the command
    # (more trials, another worker) keeps that one though a newer evaluator now matches.
    from tests.metrics_helpers import classifier_checkpoint

    pattern = "runs/lightning-gen/evaluator_digits-*/checkpoints/last.ckpt"
    first = classifier_checkpoint(pattern.replace("*", "0"), image_shape=(1, 16, 16))
    args = [a if a != "train/g_loss" else "metrics/fid" for a in SWEEP]
    args += ["--in_process", "true", "--trainer.max_steps", "2", "--metrics.every_n_epochs", "1",
             "--metrics.num_samples", "32", "--metrics.feature_extractor", f"classifier:{pattern}"]
    main(["sweep", *args, "--trials", "1"])
    newer = classifier_checkpoint(pattern.replace("*", "1"), image_shape=(1, 16, 16), seed=1)
    os.utime(newer, (time.time() + 60, time.time() + 60))  # newest, whatever the clock's grain
    main(["sweep", *args, "--trials", "2"])
    trials = study().trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    for t in trials:
        config = yaml.safe_load((Path(t.user_attrs["run_dir"]) / "config.yaml").read_text())
        assert config["metrics"]["feature_extractor"] == f"classifier:{first}"
    out = capsys.readouterr().out
    assert out.count(f"classifier extractor for every trial: {first}") == 2
    assert f"{pattern} now also matches {newer}; the study keeps {first}" in out
    # Naming another checkpoint for the same study is refused in one line.
    with pytest.raises(SystemExit) as info:
        main(["sweep", *args[:-1], f"classifier:{newer}", "--trials", "3"])
    assert info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"lightning-gen: error: study '{NAME}' ({STORAGE}) ranks its trials in the features of "
        f"{first}, not {newer}; give another --study_name for a new study"]
    assert len(study().trials) == 2


def test_a_crashed_trial_fails_with_its_error_line_and_the_sweep_goes_on(capsys):
    # A value the parser takes but the model refuses when it is built: each trial fails.
    Path("bad.yaml").write_text("model.init_args.lr_g: {type: categorical, choices: [-0.1]}\n")
    args = list(SWEEP)
    args[args.index("--space") + 1] = "bad.yaml"
    main(["sweep", *args, "--study_name", NAME, "--trials", "2", "--in_process", "true"])
    trials = study().trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.FAIL]
    line = ("lightning-gen: error: lr_g must be a positive learning rate, got -0.1 "
            "(--model.init_args.lr_g)")
    assert [t.user_attrs["error"] for t in trials] == [line, line]
    out = capsys.readouterr().out
    assert f"trial 1 failed: {line}" in out and "2 of 2 trials finished" in out
    assert "no complete trial" in out and Path(f"runs/sweeps/{NAME}/history.png").is_file()


def test_sweep_plots_name_every_axis_in_full_and_count_whole_trials(monkeypatch, tmp_path):
    # Optuna cuts names of 20+ characters to 17 + "...": both learning rates read
    # "model.init_args.l..." in its plot.
    from lightning_gen import sweep_plots

    study = optuna.create_study()
    study.set_user_attr("objective", "train/g_loss")
    dists = {k: optuna.distributions.FloatDistribution(1e-5, 1e-2, log=True)
             for k in ("model.init_args.lr_g", "model.init_args.lr_d")}
    for value, (lr_g, lr_d) in zip((1.0, 2.0, 3.0), ((1e-4, 2e-4), (1e-3, 5e-4), (3e-5, 1e-3)),
                                   strict=True):
        study.add_trial(optuna.trial.create_trial(
            params={"model.init_args.lr_g": lr_g, "model.init_args.lr_d": lr_d},
            distributions=dists, value=value))
    labels, ticks = {}, {}

    def record(path, plot):
        axes = plot()
        ticks[path.name] = axes.get_xticks() if hasattr(axes, "get_xticks") else None
        labels[path.name] = [t.get_text() for t in axes.get_xticklabels()] if hasattr(
            axes, "get_xticklabels") else None
        return path

    monkeypatch.setattr(sweep_plots, "_save", record)
    sweep_plots.plots(study, tmp_path)
    assert labels["parallel_coordinates.png"] == [
        "train/g_loss", "model.init_args.lr_d", "model.init_args.lr_g"]
    assert all(float(t).is_integer() for t in ticks["history.png"])  # trials: 0, 1, 2


def _study_with_values(values) -> optuna.Study:
    study = optuna.create_study()
    study.set_user_attr("objective", "train/g_loss")
    dists = {k: optuna.distributions.FloatDistribution(1e-5, 1e-2, log=True)
             for k in ("model.init_args.lr_g", "model.init_args.lr_d")}
    for i, value in enumerate(values):
        study.add_trial(optuna.trial.create_trial(
            params={"model.init_args.lr_g": 1e-4 * (i + 1), "model.init_args.lr_d": 3e-4 / (i + 1)},
            distributions=dists, value=value))
    return study


def test_importances_are_fanova_and_absent_when_every_trial_scored_the_same(tmp_path,
                                                                            monkeypatch):
    # Optuna 5's default (PED-ANOVA) draws equal bars here, with only a warning.
    from lightning_gen import sweep_plots

    paths, notes = sweep_plots.plots(_study_with_values([1.0, 1.0, 1.0]), tmp_path)
    assert "importances" not in paths and not (tmp_path / "importances.png").exists()
    assert any(n.startswith("no importances.png") for n in notes)
    titles = {}
    save = sweep_plots._save

    def record(path, plot):
        return save(path, lambda: titles.setdefault(path.name, plot()))

    monkeypatch.setattr(sweep_plots, "_save", record)
    paths, notes = sweep_plots.plots(_study_with_values([1.0, 2.0, 3.0, 2.5]), tmp_path)
    assert paths["importances"].is_file() and not notes
    axes = titles["importances.png"]
    assert "fANOVA" in axes.get_title(loc="left") and not axes.get_title()  # one title, named


def test_every_in_process_trials_wandb_log_records_its_stderr():
    # W&B patches the sys.stderr it finds when first imported, once: imported inside trial 0,
    # it patched that trial's tee only, and trial 1's W&B log had no stderr line.
    process = start("--trials", "2", "--in_process", "true", "--trainer.max_epochs", "1",
                    "--trainer.limit_train_batches", "2", "--trainer.log_every_n_steps", "50")
    out, _ = process.communicate(timeout=300)
    assert process.returncode == 0, out[-2000:]
    logs = sorted(Path("runs/lightning-gen").glob("*/wandb/offline-run-*/files/output.log"))
    assert len(logs) == 2
    for log in logs:  # Lightning's warning, written to stderr by each trial
        assert "smaller than the logging interval" in log.read_text(), log
