"""One name per concept: TrainConfig = CLI = MLproject; conda.yaml = pyproject."""

from __future__ import annotations

import argparse
import dataclasses

import pytest
import tomllib
import yaml
from conftest import REPO

from bertrep.config import TrainConfig, add_arguments, from_namespace


def test_mlproject_train_parameters_match_config():
    spec = yaml.safe_load((REPO / "MLproject").read_text())
    params = spec["entry_points"]["train"]["parameters"]
    command = spec["entry_points"]["train"]["command"]
    for f in dataclasses.fields(TrainConfig):
        assert f.name in params, f"MLproject train lacks parameter {f.name}"
        default = params[f.name]["default"]
        assert TrainConfig.from_dict({f.name: str(default)}) == TrainConfig(
            **{f.name: f.default}
        ), f"MLproject default of {f.name} differs from TrainConfig"
        assert f"--{f.name} {{{f.name}}}" in command


def test_conda_env_matches_pyproject():
    conda = yaml.safe_load((REPO / "conda.yaml").read_text())
    pip = next(d["pip"] for d in conda["dependencies"] if isinstance(d, dict))
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert sorted(pip) == sorted(project)


def test_cli_flags_are_config_fields():
    parser = argparse.ArgumentParser()
    add_arguments(parser, TrainConfig)
    args = parser.parse_args(
        ["--task", "pos", "--frozen_layers", "3", "--save_checkpoint", "false"]
    )
    cfg = from_namespace(args, TrainConfig)
    assert cfg == TrainConfig(task="pos", frozen_layers=3, save_checkpoint=False)
    assert TrainConfig.from_dict({"max_steps": "60.0"}).max_steps == 60


def test_bad_values_are_clear_errors():
    with pytest.raises(ValueError, match="unknown training parameter 'learning_rate'"):
        TrainConfig.from_dict({"learning_rate": 1e-3})
    with pytest.raises(ValueError, match="unknown task 'cola'"):
        TrainConfig(task="cola")
    with pytest.raises(ValueError, match="unknown task 'nli'"):
        TrainConfig(probe_tasks="sst2,nli")
    with pytest.raises(ValueError, match="frozen_layers=-1 is out of range"):
        TrainConfig(frozen_layers=-1)
    with pytest.raises(ValueError, match="'2.5' is not an integer"):
        TrainConfig.from_dict({"seed": "2.5"})


def test_config_key_is_stable_and_sensitive():
    assert TrainConfig().key() == TrainConfig().key()
    assert TrainConfig(seed=1).key() != TrainConfig().key()
