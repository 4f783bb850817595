"""The ``lightning-gen`` command's process (``lightning_gen.__main__``): Python's cyclic garbage
collector stays off the objects the CLI's imports create, and off everything left at exit; the
Trainer's commands import W&B before Lightning, so that ``wandb.init`` does not walk the call
stack over ~4,000 modules for each of its pydantic models."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# A child process that counts full (generation 2) collections while it runs `code`, then prints
# what it saw as JSON.
PROBE = """
import gc, json, sys
full = []
gc.callbacks.append(lambda phase, info: full.append(1)
                    if phase == "stop" and info["generation"] == 2 else None)
{code}
print(json.dumps({{"full_collections": len(full), "frozen": gc.get_freeze_count(),
                  "enabled": gc.isenabled()}}))
"""


ENTRY = """
import lightning_gen.__main__ as entry
try:
    entry.main(["fit", "--help"])
except SystemExit as stop:
    assert stop.code in (0, None), stop.code
import lightning_gen.cli  # imported by the command
"""


def side_by_side(children: dict[str, subprocess.Popen]) -> dict:
    """Wait for child processes started together (each mostly imports, on one core), reap all
    of them before any assertion, and return the JSON each printed last."""
    outputs = {name: child.communicate(timeout=300) for name, child in children.items()}
    for name, child in children.items():
        assert child.returncode == 0, outputs[name][1][-3000:]
    return {name: json.loads(out.strip().splitlines()[-1]) for name, (out, _) in outputs.items()}


@pytest.fixture(scope="module")
def gc_probes() -> dict:
    """A plain import of the CLI and the command's process, probed side by side."""
    return side_by_side({name: subprocess.Popen(
        [sys.executable, "-c", PROBE.format(code=code)], cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name, code in (("import", "import lightning_gen.cli"), ("entry", ENTRY))})


def test_the_console_script_is_the_entry_point_module():
    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "lightning-gen"]
    assert script.value == "lightning_gen.__main__:main"


def test_importing_the_cli_runs_full_collections_over_its_objects(gc_probes):
    # The cost the entry point avoids: a plain import walks the heap several times.
    seen = gc_probes["import"]
    assert seen["full_collections"] >= 1 and seen["frozen"] == 0


def test_the_command_imports_without_a_full_collection_and_leaves_its_objects_frozen(gc_probes):
    seen = gc_probes["entry"]
    assert seen["full_collections"] == 0
    assert seen["frozen"] > 100_000  # the imports' objects (~0.5 M) sit in the permanent generation
    assert seen["enabled"]  # the collector runs again for what the run creates


def test_python_dash_m_lightning_gen_is_the_command(tmp_path):
    result = subprocess.run([sys.executable, "-m", "lightning_gen", "fit", "--help"],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "--config" in result.stdout and "--model" in result.stdout


# `lightning-gen --help` and `lightning-gen compare` in a child: the exit code, and whether
# torch or Lightning were imported.
LIGHT = """
import json, sys
import lightning_gen.__main__ as entry
try:
    entry.main({args!r})
    code = 0
except SystemExit as stop:
    code = stop.code
print(json.dumps({{"code": code, "imported": sorted({{"torch", "lightning", "wandb"}}
                                                   & set(sys.modules))}}))
"""


@pytest.mark.parametrize("args, code", [
    (["--help"], 0), ([], 2),
    (["compare", "notes"], 2),  # not a run folder: one line, exit 2
    (["compare", "--help"], 0),
])
def test_help_and_compare_import_neither_torch_nor_lightning(args, code, tmp_path):
    (tmp_path / "notes").mkdir()
    result = subprocess.run([sys.executable, "-c", LIGHT.format(args=args)], capture_output=True,
                            text=True, timeout=120, cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr[-3000:]
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen == {"code": code, "imported": []}
    if args == ["compare", "notes"]:
        assert result.stderr.strip().splitlines() == [
            "lightning-gen: error: 'notes' is not a run folder (no config.yaml in it)"]


def test_help_into_a_closed_pipe_is_not_a_traceback():
    """`lightning-gen --help | head -1`: the reader leaves before the list is written."""
    child = subprocess.Popen([sys.executable, "-m", "lightning_gen", "--help"], cwd=ROOT,
                             env={**os.environ, "PYTHONPATH": str(ROOT)},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    child.stdout.close()  # before the child's interpreter has started
    err = child.stderr.read().decode()
    assert child.wait(timeout=120) == 0, err
    assert err == ""


# A child process that imports what `lightning-gen <args>` imports, then counts the calls of
# inspect.getmodule (pydantic's stack walk, each call a loop over sys.modules on Python < 3.13)
# while an offline W&B run starts and finishes.
WANDB_PROBE = """
import inspect, json, sys, tempfile
import lightning_gen.__main__ as entry
first = entry.import_wandb_first({args!r})
import lightning_gen.cli
import wandb
calls = []
getmodule = inspect.getmodule
inspect.getmodule = lambda *a, **k: calls.append(1) or getmodule(*a, **k)
with tempfile.TemporaryDirectory() as folder:
    wandb.init(mode="offline", dir=folder, project="entry-point").finish()
print(json.dumps({{"first": first, "getmodule_calls": len(calls)}}))
"""


WITHOUT = ["evaluate", "--help"]  # not a Trainer command: W&B is imported after Lightning
WITH = ["fit", "--config", "experiments/vae_mnist.yaml",
        "--trainer.logger", "lightning_gen.loggers.WandbLogger"]


@pytest.fixture(scope="module")
def wandb_probes(tmp_path_factory) -> dict:
    """Both probes, run side by side."""
    children = {}
    for name, args in (("without", WITHOUT), ("with", WITH)):
        folder = tmp_path_factory.mktemp(f"wandb-{name}")
        env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "offline",
               "WANDB_SILENT": "true", "WANDB_DIR": str(folder), "TMPDIR": str(folder),
               "WANDB_CONFIG_DIR": str(folder / ".wandb-config"),
               "WANDB_CACHE_DIR": str(folder / ".wandb-cache")}
        children[name] = subprocess.Popen(
            [sys.executable, "-c", WANDB_PROBE.format(args=args)], cwd=folder, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return side_by_side(children)


def test_wandb_imported_after_lightning_walks_the_stack_for_its_models(wandb_probes):
    # The cost the entry point avoids: ~1,200 sys.modules loops in wandb.init (Python < 3.13).
    seen = wandb_probes["without"]
    assert not seen["first"]
    if sys.version_info < (3, 13):
        assert seen["getmodule_calls"] > 300


def test_a_trainer_command_imports_wandb_first_so_its_run_starts_without_the_walk(wandb_probes):
    seen = wandb_probes["with"]
    assert seen["first"]
    assert seen["getmodule_calls"] < 20


def test_only_the_trainer_commands_import_wandb_first():
    seen = subprocess.run([sys.executable, "-c", """
import json, sys
import lightning_gen.__main__ as entry
cases = [["evaluate", "--run", "x"], ["compare", "a", "b"], ["sweep", "--help"], ["fit", "--help"],
         ["test", "-h"], [], ["fit", "--trainer.logger", "false"],
         ["fit", "-c", "x.yaml", "--trainer.logger=lightning.pytorch.loggers.CSVLogger"]]
print(json.dumps([entry.import_wandb_first(a) for a in cases] + ["wandb" in sys.modules]))
"""], capture_output=True, text=True, timeout=300, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert seen.returncode == 0, seen.stderr[-3000:]
    assert json.loads(seen.stdout.strip().splitlines()[-1]) == [False] * 9
