"""`lightning-gen --help` lists every command with one line; each command's own --help works."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from lightning_gen import cli
from lightning_gen.cli import main

COMMANDS = ["fit", "validate", "test", "evaluate", "sample", "compare", "sweep"]


def command_lines(text: str) -> dict[str, str]:
    """``{command: description}`` from the indented lines under ``commands:``."""
    block = text.split("\ncommands:\n", 1)[1].split("\n\n", 1)[0]
    return dict(re.fullmatch(r"  (\S+)\s+(.+)", line).groups() for line in block.splitlines())


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_top_level_help_lists_every_command_with_one_line(flag, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([flag])
    assert exit_info.value.code == 0
    lines = command_lines(capsys.readouterr().out)
    assert list(lines) == COMMANDS
    assert all(len(text) > 20 for text in lines.values())


def test_no_command_prints_the_list_and_fails(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([])
    assert exit_info.value.code == 2
    assert list(command_lines(capsys.readouterr().err)) == COMMANDS


@pytest.mark.parametrize("command, option", [
    ("fit", "--trainer.max_epochs"),       # LightningCLI's own help, as before
    ("validate", "--ckpt_path"),
    ("test", "--ckpt_path"),
    ("evaluate", "--feature_extractor"),
    ("sample", "--num_samples"),
    pytest.param("compare", "--group", marks=pytest.mark.skipif(
        not (Path(cli.__file__).parent / "compare.py").exists(),
        reason="lightning_gen/compare.py comes with branch `compare`")),
    ("sweep", "--objective"),
])
def test_each_listed_command_has_its_own_help(command, option, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert option in capsys.readouterr().out


def test_the_readme_shows_the_command_list_as_it_is(capsys):
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    shown = readme.split("$ lightning-gen --help\n", 1)[1].split("```", 1)[0]
    with pytest.raises(SystemExit):
        main(["--help"])
    assert command_lines(capsys.readouterr().out) == command_lines("\n" + shown + "\n")
