"""The `bertrep` console script: every stage listed with one line, each stage's own
command line behind it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bertrep import cli


def test_help_lists_every_stage_with_one_line(capsys):
    cli.main(["--help"])
    out = capsys.readouterr().out
    for stage, (_, what) in cli.STAGES.items():
        assert f"  {stage}" in out and what in out
    cli.main([])
    assert capsys.readouterr().out == out


def test_a_stage_runs_its_modules_own_command_line(capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["bertrep", "sweep", "--help"])  # cli names the stage
    with pytest.raises(SystemExit) as done:
        cli.main(["sweep", "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: bertrep sweep") and "--resume" in out


def test_an_unknown_stage_is_one_line_naming_it():
    with pytest.raises(SystemExit, match="unknown stage 'trian' \\(stages: train, sweep"):
        cli.main(["trian"])


def test_python_dash_m_bertrep_is_the_same_command():
    done = subprocess.run([sys.executable, "-m", "bertrep", "--help"], capture_output=True,
                          text=True, check=True)  # fmt: skip
    assert "stages:" in done.stdout and "analyze" in done.stdout
