"""Bad input through the command lines users run: one line naming the thing and the
problem, exit status 1, no traceback, and no run recorded as FINISHED (most are refused
before any run starts). The readers' own errors (file, row, key): test_tasks, test_spec,
test_activations, test_analyze."""

from __future__ import annotations

import os
import subprocess
import sys

import mlflow
import pytest
import yaml
from conftest import REPO

from bertrep import env
from bertrep.errors import InputError
from bertrep.spec import load_spec, spec_from_dict
from bertrep.tasks import DataError, get_task, load_split


def test_wrong_encoding_names_file_row_and_byte(tmp_path):
    (tmp_path / "SST-2").mkdir()
    (tmp_path / "SST-2" / "dev.tsv").write_bytes(b"sentence\tlabel\ngood\t1\ncaf\xe9 film\t0\n")
    with pytest.raises(DataError, match=r"SST-2/dev.tsv, row 3: not UTF-8 text \(byte 0xe9\)$"):
        load_split(get_task("sst2"), "validation", data_dir=tmp_path)


def test_malformed_yaml_and_empty_grid_axis(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: aufc\ngrid: {task: [sst2, stsb}\n")
    with pytest.raises(InputError, match=r"bad.yaml, line 2: not valid YAML"):
        load_spec(bad)
    with pytest.raises(InputError, match="x.yaml: grid axis 'seed' is empty: the grid has no"):
        spec_from_dict({"kind": "aufc", "grid": {"task": "sst2", "seed": []}}, "x.yaml")


def cli(module: str, args: list[str], tmp_path, **environ) -> subprocess.CompletedProcess:
    store = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RAY_"))}
    store[env.MLFLOW_TRACKING_URI] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    return subprocess.run([sys.executable, "-m", module, *args], env=store | environ,
                          cwd=tmp_path, capture_output=True, text=True)  # fmt: skip


def finished_runs(tmp_path) -> list:
    if not (tmp_path / "mlflow.db").exists():
        return []
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    return [r for r in runs if r.info.status == "FINISHED"]


TRAIN = ["--max_steps", "2", "--max_train_examples", "16", "--max_eval_examples", "8",
         "--probe_tokens", "20"]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--task", "sst2", "--lr", "-1"], "lr=-1.0 is out of range"),
        (["--task", "sst2", "--frozen_layers", "9"], "frozen_layers=9 is outside 0..2 for this"),
        (["--task", "sst2", "--base_model", "no-such-org/no-such-bert"],
         "base_model 'no-such-org/no-such-bert' is not a local folder, an MLflow model URI or"),
        (["--task", "sst2", "--data_dir", "EMPTY"], "no sst2 validation file found; looked for "),
    ],
)  # fmt: skip
def test_train_refuses_bad_input_in_one_line(tiny_model, tmp_path, args, message):
    (tmp_path / "EMPTY").mkdir()
    base = [] if "--base_model" in args else ["--base_model", str(tiny_model)]
    done = cli("bertrep.train", [*TRAIN, *base, *args], tmp_path, HF_HUB_OFFLINE="1")
    assert done.returncode == 1, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("bertrep.train: ") and message in last, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert finished_runs(tmp_path) == []


@pytest.mark.slow
def test_train_on_a_malformed_file_ends_failed_saying_where(tiny_model, data_dir, tmp_path):
    """A probe task's split is read inside the run: the run ends FAILED with the reason."""
    (tmp_path / "SST-2").mkdir()
    for split in ("train.tsv", "dev.tsv"):
        (tmp_path / "SST-2" / split).write_text((data_dir / "sst2" / split).read_text())
    (tmp_path / "STS-B").mkdir()
    (tmp_path / "STS-B" / "dev.tsv").write_text("sentence1\tsentence2\tscore\na\tb\tfive\n")
    args = ["--task", "sst2", "--probe_tasks", "sst2,stsb", "--data_dir", str(tmp_path)]
    done = cli("bertrep.train", [*TRAIN, "--base_model", str(tiny_model), *args], tmp_path)
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.endswith("STS-B/dev.tsv, row 2: score 'five' is not a number"), last
    assert finished_runs(tmp_path) == []
    (run,) = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert run.info.status == "FAILED" and "score 'five'" in run.data.tags["failure_reason"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"kind": "aufc", "grid": {"task": "sst2", "seed": []}}, "grid axis 'seed' is empty"),
        ({"kind": "aufc", "grid": {"task": "sst2", "frozen_layers": -1}},
         "frozen_layers=-1 is out of range"),
    ],
)  # fmt: skip
def test_sweep_refuses_a_bad_spec_in_one_line_before_anything_runs(tmp_path, spec, message):
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    done = cli("bertrep.sweep", ["--spec", str(tmp_path / "s.yaml")], tmp_path)
    assert done.returncode == 1, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("bertrep.sweep: ") and message in last, last
    assert "Traceback" not in done.stderr and not (tmp_path / "mlflow.db").exists()


@pytest.mark.slow
def test_analysis_refuses_a_spec_naming_sweeps_that_do_not_exist(tmp_path):
    spec = yaml.safe_load((REPO / "analysis" / "smoke.yaml").read_text())
    spec["sweeps"] = {"single": "no-such-sweep", "aufc": "no-such-sweep", "forgetting": ""}
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(spec))
    done = cli("bertrep.analyze", ["--spec", str(tmp_path / "a.yaml")], tmp_path)
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert "no-such-sweep" in last and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert finished_runs(tmp_path) == []
    bad = tmp_path / "b.yaml"
    bad.write_text("name: x\nsweeps: {aufc: [\n")
    done = cli("bertrep.analyze", ["--spec", str(bad)], tmp_path)
    assert done.returncode == 1 and "b.yaml, line 3: not valid YAML" in done.stderr
