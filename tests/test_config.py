"""One name per concept: TrainConfig = CLI = MLproject; conda.yaml = pyproject."""

from __future__ import annotations

import argparse
import dataclasses
import shutil
from pathlib import Path

import pytest
import tomllib
import yaml
from conftest import REPO

from bertrep import env
from bertrep.data.identity import model_identity
from bertrep.data.tasks import TASKS
from bertrep.training.config import TrainConfig, add_arguments, from_namespace, parse_bool


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
    with pytest.raises(ValueError, match="schedule='cosine' is out of range"):
        TrainConfig(schedule="cosine")


def test_config_key_is_stable_and_sensitive():
    assert TrainConfig().key() == TrainConfig().key()
    assert TrainConfig(seed=1).key() != TrainConfig().key()


# --- run identity: what a run reads, not where it lies ---


def toy_data(folder: Path, tasks=("sst2", "stsb", "pos")) -> Path:
    """Task folders with the files a run reads (content only matters to the key)."""
    for task in tasks:
        spec = TASKS[task]
        (folder / spec.folders[0]).mkdir(parents=True, exist_ok=True)
        for split, names in spec.local_files.items():
            (folder / spec.folders[0] / names[0]).write_text(f"{task} {split}\n")
    return folder


def test_key_names_data_by_content_not_path(tmp_path, monkeypatch):
    monkeypatch.delenv(env.DATA_DIR, raising=False)
    here = toy_data(tmp_path / "a")
    there = tmp_path / "b"
    shutil.copytree(here, there)
    cfg = TrainConfig(task="sst2", data_dir=str(here))
    assert cfg.key() == TrainConfig(task="sst2", data_dir=str(there)).key()
    monkeypatch.setenv(env.DATA_DIR, str(there))  # empty data_dir: $BERTREP_DATA_DIR
    assert TrainConfig(task="sst2").key() == cfg.key()
    (there / "SST-2" / "dev.tsv").write_text("other\n")
    assert TrainConfig(task="sst2").key() != cfg.key()
    monkeypatch.delenv(env.DATA_DIR)
    hub = TrainConfig(task="sst2")  # no folder: the hub dataset, by name
    assert hub.key() == TrainConfig(task="sst2").key() != cfg.key()


def test_key_counts_every_file_the_run_reads(tmp_path):
    folder = toy_data(tmp_path / "data")

    def keys(**fields):
        return TrainConfig(data_dir=str(folder), **fields).key()

    single = {"task": "sst2"}
    probed = {"task": "sst2", "probe_tasks": "stsb"}
    two = {"task": "sst2", "source_task": "stsb", "mode": "sequential"}
    before = [keys(**single), keys(**probed), keys(**two)]
    (folder / "STS-B" / "dev.tsv").write_text("changed\n")  # a probe task's eval split
    after = [keys(**single), keys(**probed), keys(**two)]
    assert before[0] == after[0] and before[1] != after[1] and before[2] != after[2]
    (folder / "STS-B" / "train.tsv").write_text("changed\n")  # A's train split
    assert keys(**two) != after[2] and keys(**probed) == after[1]
    # data_files: another file of the run's own task, by content wherever it lies
    extra = tmp_path / "extra.tsv"
    extra.write_text("sst2 validation\n")  # the same content as SST-2/dev.tsv
    assert keys(task="sst2", data_files=f"validation={extra}") == keys(**single)
    extra.write_text("a held-out set\n")
    assert keys(task="sst2", data_files=f"validation={extra}") != keys(**single)
    with pytest.raises(FileNotFoundError, match="no rte train file found"):
        keys(task="rte")


def test_key_names_a_local_model_by_content(tmp_path, tiny_model):
    copy = shutil.copytree(tiny_model, tmp_path / "moved-model")
    assert model_identity(str(copy)) == model_identity(str(tiny_model))
    assert model_identity(str(copy)).startswith("sha256:")
    cfg = TrainConfig(base_model=str(tiny_model), data_dir=str(toy_data(tmp_path / "d")))
    assert dataclasses.replace(cfg, base_model=str(copy)).key() == cfg.key()
    (copy / "config.json").write_text((copy / "config.json").read_text().replace("32", "33"))
    assert dataclasses.replace(cfg, base_model=str(copy)).key() != cfg.key()
    for name in ("minilm", "bert-base-uncased", "models:/bertrep-sst2/1", "runs:/abc/checkpoint"):
        assert model_identity(name) == name
    two = [dataclasses.replace(cfg, base_model=f"models:/bertrep-sst2/{v}") for v in (1, 2)]
    assert two[0].key() != two[1].key()


def test_registers_source_and_source_fields():
    assert TrainConfig().registers_source
    assert not TrainConfig(save_checkpoint=False).registers_source
    assert not TrainConfig(frozen_layers=1).registers_source
    assert not TrainConfig(task="pos", source_task="sst2").registers_source
    assert not TrainConfig(task="pos", source_task="sst2", mode="shuffled").registers_source
    target = TrainConfig(task="pos", source_task="sst2", frozen_layers=4, seed=3, lr=1e-3)
    source = dataclasses.replace(target, **target.source_fields())
    assert source.registers_source and (source.task, source.seed) == ("sst2", 3)
    assert (source.base_model, source.lr) == (target.base_model, target.lr)


@pytest.mark.parametrize(("value", "expected"), [("true", True), ("No", False), ("1", True)])
def test_booleans_parse_strictly(value, expected):
    assert parse_bool(value) is expected
    assert TrainConfig.from_dict({"save_checkpoint": value}).save_checkpoint is expected
    with pytest.raises(ValueError, match="'ture' is not a boolean"):
        parse_bool("ture")


def test_parameters_added_later_keep_stored_keys_at_their_defaults(tiny_model, data_dir):
    """pooling, head_dropout, untie_blocks, word_probes and head_lr at their defaults leave
    the key as it was before they existed (test_task_files holds keys computed then); any
    other value makes another run."""
    from bertrep.training.config import KEYED_OFF_DEFAULT

    base = TrainConfig(base_model=str(tiny_model), data_dir=str(data_dir), task="sst2")
    assert TrainConfig(**{**base.__dict__, **KEYED_OFF_DEFAULT}).key() == base.key()
    others = {"pooling": "mean", "head_dropout": 0.2, "untie_blocks": True, "word_probes": "first"}
    others |= {"head_lr": 1e-3, "schedule": "constant"}
    keys = {base.key()} | {TrainConfig(**{**base.__dict__, k: v}).key() for k, v in others.items()}
    assert len(keys) == 7
