"""``lightning-gen evaluate`` writes into the run: ``eval/results.jsonl`` rows and the values in
the run's own W&B run; ``--ckpt_path RUN_DIR`` / a glob evaluates every snapshot in step order.

One quickstart fit (3 batches, offline W&B, a snapshot every 2 optimizer steps) is copied into
each test's folder; evaluation uses an untrained classifier extractor and 40 samples."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import yaml

from lightning_gen.cli import main
from lightning_gen.eval_records import append_row, read_rows
from tests.metrics_helpers import classifier_checkpoint
from tests.wandb_log import history, read_records, summary

ROOT = Path(__file__).resolve().parents[1]
PROTOCOL = "classifier-test-40"
FIT = ["--trainer.max_steps", "6", "--model.init_args.g_width", "8", "--model.init_args.d_width", "8", "--trainer.log_every_n_steps", "1",
       "--checkpoint.every_n_train_steps", "2", "--checkpoint.save_top_k", "-1",
       "--images.every_n_epochs", "0", "--trainer.enable_progress_bar", "false",
       "--trainer.enable_model_summary", "false", "--data.num_workers", "0"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run folder with snapshots at global_step 2, 4, 6 (logging steps 0, 1, 2: a GAN takes
    two optimizer steps per batch) and last.ckpt (= the step-6 snapshot), and a W&B segment."""
    root = tmp_path_factory.mktemp("fit")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("WANDB_MODE", "offline")
        mp.setenv("WANDB_DIR", str(root))
        main(["fit", "--config", str(ROOT / "experiments" / "quickstart.yaml"), *FIT])
    (run,) = (root / "runs").glob("*/*")
    names = sorted(p.name for p in (run / "checkpoints").glob("*.ckpt"))
    assert names == ["epoch=0-step=2.ckpt", "epoch=0-step=4.ckpt", "epoch=0-step=6.ckpt",
                     "last.ckpt"]
    return {"run": run, "classifier": classifier_checkpoint(root / "clf.ckpt", (1, 32, 32))}


@pytest.fixture
def run(trained, tmp_path) -> Path:
    """This test's own copy of the run folder (same project/version names, so the same id)."""
    src = trained["run"]
    dst = tmp_path / "runs" / src.parent.name / src.name
    shutil.copytree(src, dst, symlinks=True)
    return dst


def evaluate(ckpt_path, classifier, *extra: str) -> None:
    main(["evaluate", "--ckpt_path", str(ckpt_path), "--num_samples", "40", "--reference", "test",
          "--feature_extractor", f"classifier:{classifier}", "--batch_size", "16",
          "--kid_subset_size", "20", "--isc_splits", "4", "--accelerator", "cpu",
          "--progress", "false", "--cache_dir", "cache", *extra])


def segments(run: Path) -> set[Path]:
    return set((run / "wandb").glob("offline-run-*"))


def finished_log(segment: Path, timeout: float = 60.0) -> Path:
    """The segment's ``run-*.wandb`` once wandb-core has written its exit record."""
    deadline = time.monotonic() + timeout
    while True:
        logs = list(segment.glob("run-*.wandb"))
        if logs and any(r.WhichOneof("record_type") == "exit" for r in read_records(logs[0])):
            return logs[0]
        assert time.monotonic() < deadline, f"no complete run log in {segment}"
        time.sleep(0.2)


def run_record(log: Path):
    return next(r.run for r in read_records(log) if r.WhichOneof("record_type") == "run")


def new_segment_log(run: Path, before: set[Path]) -> Path:
    (segment,) = segments(run) - before
    return finished_log(segment)


def test_evaluate_appends_a_row_and_sends_the_values_to_the_runs_wandb_run(trained, run, capsys):
    before = segments(run)
    ckpt = run / "checkpoints" / "last.ckpt"
    evaluate(ckpt, trained["classifier"])
    out = capsys.readouterr().out

    (row,) = read_rows(run / "eval" / "results.jsonl")
    assert row["protocol"] == PROTOCOL
    assert row["checkpoint"] == str(ckpt.resolve())
    assert (row["step"], row["global_step"], row["epoch"]) == (2, 6, 0)
    assert row["json_path"] == str(run / "eval" / "classifier_test_40.json")  # as before
    result = json.loads(Path(row["json_path"]).read_text())
    assert row["metrics"] == {k: result[k] for k in ("fid", "is_mean", "is_std", "kid_mean",
                                                      "kid_std", "precision", "recall", "density",
                                                      "coverage")}
    assert "FID" in out and f"{result['fid']:.6g}" in out  # today's table is still printed

    # A new offline segment of the same W&B run, which `wandb sync` uploads as a resume.
    log = new_segment_log(run, before)
    record = run_record(log)
    assert record.run_id == run.name and record.resume
    assert summary(log)[f"eval/{PROTOCOL}/fid"] == pytest.approx(row["metrics"]["fid"])
    rows = [r for r in history(log) if f"eval/{PROTOCOL}/fid" in r]
    assert [(r["trainer/global_step"], r[f"eval/{PROTOCOL}/fid"]) for r in rows] == [
        (2, pytest.approx(row["metrics"]["fid"]))]
    assert f"Results:     {run / 'eval' / 'results.jsonl'}" in out
    assert f"W&B offline run: {log.parent}" in out and f"wandb sync {log.parent}" in out


def test_a_protocol_naming_some_metrics_files_them_apart_in_wandb(trained, run, monkeypatch):
    # A protocol that defines only the IS (as inception-score-50k, which fixes no reference
    # split) names the IS; the FID keeps its own protocol, in results.jsonl and in W&B alike.
    from lightning_gen.protocols import PROTOCOLS, Protocol

    clf = f"classifier:{trained['classifier']}"
    monkeypatch.setitem(PROTOCOLS, "tiny-is", Protocol(
        "tiny-is", {"num_samples": 40, "feature_extractor": clf, "isc_splits": 4}, "", "",
        metrics=("is_mean", "is_std")))
    before = segments(run)
    evaluate(run / "checkpoints" / "last.ckpt", trained["classifier"], "--protocol", "tiny-is")
    fid_row, is_row = read_rows(run / "eval" / "results.jsonl")
    assert (fid_row["protocol"], is_row["protocol"]) == (PROTOCOL, "tiny-is")
    log = new_segment_log(run, before)
    final = summary(log)
    assert final[f"eval/{PROTOCOL}/fid"] == pytest.approx(fid_row["metrics"]["fid"])
    assert final["eval/tiny-is/is_mean"] == pytest.approx(is_row["metrics"]["is_mean"])
    assert "eval/tiny-is/fid" not in final and f"eval/{PROTOCOL}/is_mean" not in final
    assert final["eval/tiny-is/step"] == final[f"eval/{PROTOCOL}/step"] == 2
    (logged,) = [r for r in history(log) if "eval/tiny-is/is_mean" in r]
    assert logged[f"eval/{PROTOCOL}/fid"] == pytest.approx(fid_row["metrics"]["fid"])


def test_run_dir_evaluates_every_snapshot_in_step_order(trained, run, capsys, monkeypatch):
    # The extractor is built, and the real images' features extracted, once for all snapshots.
    import lightning_gen.evaluate as evaluate_module
    from lightning_gen.metrics.evaluator import GenerativeEvaluator

    calls = {"extractor": 0, "reference": 0}
    build, reference = evaluate_module.build_extractor, GenerativeEvaluator.reference

    def counted_build(*args, **kwargs):
        calls["extractor"] += 1
        return build(*args, **kwargs)

    def counted_reference(self, *args, **kwargs):
        calls["reference"] += 1
        return reference(self, *args, **kwargs)

    monkeypatch.setattr(evaluate_module, "build_extractor", counted_build)
    monkeypatch.setattr(GenerativeEvaluator, "reference", counted_reference)
    before = segments(run)
    evaluate(run, trained["classifier"])
    out = capsys.readouterr().out

    rows = read_rows(run / "eval" / "results.jsonl")
    # last.ckpt holds the step-6 state again: one row for that step, the named snapshot's.
    assert [(r["step"], r["global_step"], Path(r["checkpoint"]).name) for r in rows] == [
        (0, 2, "epoch=0-step=2.ckpt"), (1, 4, "epoch=0-step=4.ckpt"), (2, 6, "epoch=0-step=6.ckpt")]
    assert len({r["json_path"] for r in rows}) == 3
    assert all(json.loads(Path(r["json_path"]).read_text())["fid"] == r["metrics"]["fid"]
               for r in rows)
    assert calls == {"extractor": 1, "reference": 1}

    log = new_segment_log(run, before)
    curve = [(r["trainer/global_step"], r[f"eval/{PROTOCOL}/fid"]) for r in history(log)
             if f"eval/{PROTOCOL}/fid" in r]
    assert curve == [(r["step"], pytest.approx(r["metrics"]["fid"])) for r in rows]
    final = summary(log)  # the latest step's values
    assert final[f"eval/{PROTOCOL}/fid"] == pytest.approx(rows[-1]["metrics"]["fid"])
    assert final[f"eval/{PROTOCOL}/step"] == 2
    assert "epoch=0-step=6.ckpt" in out and "last.ckpt" not in out


def test_a_glob_is_ordered_by_the_stored_step_not_the_file_name(trained, run, capsys):
    # Names that sort against the steps: a.ckpt is the latest snapshot, c.ckpt the first.
    folder = run / "checkpoints"
    for old, new in [("epoch=0-step=2.ckpt", "c.ckpt"), ("epoch=0-step=4.ckpt", "b.ckpt"),
                     ("epoch=0-step=6.ckpt", "a.ckpt")]:
        (folder / old).rename(folder / new)
    evaluate(str(folder / "?.ckpt"), trained["classifier"], "--progress", "true")
    rows = read_rows(run / "eval" / "results.jsonl")
    assert [(Path(r["checkpoint"]).name, r["step"]) for r in rows] == [
        ("c.ckpt", 0), ("b.ckpt", 1), ("a.ckpt", 2)]
    err = capsys.readouterr().err  # the progress bar over checkpoints
    assert "checkpoints: 100%" in err and "3/3" in err


def test_no_wandb_run_for_a_bare_checkpoint_or_a_run_without_wandb(trained, run, tmp_path,
                                                                   capsys):
    # A checkpoint outside a run folder: today's JSON only.
    wandb_segments = set(tmp_path.rglob("offline-run-*"))
    bare = tmp_path / "bare" / "model.ckpt"
    bare.parent.mkdir()
    shutil.copy(run / "checkpoints" / "last.ckpt", bare)
    evaluate(bare, trained["classifier"], "--run_config", str(run / "config.yaml"),
             "--out", str(tmp_path / "bare.json"))
    assert json.loads((tmp_path / "bare.json").read_text())["fid"] > 0
    assert "Not in a run folder" in capsys.readouterr().out
    assert not list(tmp_path.rglob("results.jsonl"))
    assert set(tmp_path.rglob("offline-run-*")) == wandb_segments

    # A run that logged without W&B: its results.jsonl row, no W&B run.
    shutil.rmtree(run / "wandb")
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["trainer"]["logger"] = False
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    evaluate(run / "checkpoints" / "last.ckpt", trained["classifier"])
    assert [r["step"] for r in read_rows(run / "eval" / "results.jsonl")] == [2]
    assert f"W&B:         not used by {run}" in capsys.readouterr().out
    assert not (run / "wandb").exists() and not (tmp_path / "wandb").exists()


def test_a_row_cut_short_by_a_crash_is_skipped_and_the_next_row_is_whole(tmp_path):
    path = tmp_path / "eval" / "results.jsonl"
    append_row(path, {"step": 0, "metrics": {"fid": 1.5}})
    with open(path, "a") as f:
        f.write('{"step": 1, "metrics": {"fi')  # killed mid-write
    append_row(path, {"step": 2, "metrics": {"fid": 0.5}})
    assert read_rows(path) == [{"step": 0, "metrics": {"fid": 1.5}},
                               {"step": 2, "metrics": {"fid": 0.5}}]
    lines = path.read_text().splitlines()
    assert len(lines) == 3 and json.loads(lines[2]) == {"step": 2, "metrics": {"fid": 0.5}}
