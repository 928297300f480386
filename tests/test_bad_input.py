"""Bad input through the command lines users run: one line naming the thing and the
problem, exit status 1, no traceback, and no run recorded as FINISHED (most are refused
before any run starts). The readers' own errors (file, row, key): test_tasks, test_spec,
test_activations, test_analyze."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import mlflow
import pytest
import yaml
from conftest import REPO

from bertrep import analyze, env, sweep, train
from bertrep.data.tasks import DataError, get_task, load_split
from bertrep.errors import InputError
from bertrep.sweeps.spec import load_spec, spec_from_dict


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


@pytest.fixture
def store(tmp_path, monkeypatch):
    """An empty SQLite store for the commands run in this process; SIGTERM's handler (the
    commands install theirs) restored afterwards."""
    handler = signal.getsignal(signal.SIGTERM)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv(env.MLFLOW_TRACKING_URI, uri)
    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(uri)
    yield tmp_path
    signal.signal(signal.SIGTERM, handler)


def one_line_exit(main, args: list[str]) -> str:
    """The command's error: SystemExit with one line (exit status 1), no traceback."""
    with pytest.raises(SystemExit) as stopped:
        main(args)
    message = stopped.value.code
    assert isinstance(message, str) and "\n" not in message, message
    return message


def finished_runs(tmp_path) -> list:
    if not (tmp_path / "mlflow.db").exists():
        return []
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
def test_train_refuses_bad_input_in_one_line(tiny_model, store, args, message):
    (store / "EMPTY").mkdir()
    base = [] if "--base_model" in args else ["--base_model", str(tiny_model)]
    line = one_line_exit(train.main, [*TRAIN, *base, *args])
    assert line.startswith("bertrep.train: ") and message in line, line
    assert finished_runs(store) == []


@pytest.mark.slow
def test_train_on_a_malformed_file_exits_1_and_its_run_ends_failed(tiny_model, data_dir, tmp_path):
    """As users run it (a process: exit status 1, the reason on stderr's last line); the
    probe task's split is read inside the run, which ends FAILED with the reason."""
    (tmp_path / "SST-2").mkdir()
    for split in ("train.tsv", "dev.tsv"):
        (tmp_path / "SST-2" / split).write_text((data_dir / "sst2" / split).read_text())
    (tmp_path / "STS-B").mkdir()
    (tmp_path / "STS-B" / "dev.tsv").write_text("sentence1\tsentence2\tscore\na\tb\tfive\n")
    args = ["--task", "sst2", "--probe_tasks", "sst2,stsb", "--data_dir", str(tmp_path)]
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RAY_"))}
    environ[env.MLFLOW_TRACKING_URI] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cmd = [sys.executable, "-m", "bertrep.train", *TRAIN, "--base_model", str(tiny_model), *args]
    done = subprocess.run(cmd, env=environ, cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last == f"bertrep.train: {tmp_path}/STS-B/dev.tsv, row 2: score 'five' is not a number"
    mlflow.set_tracking_uri(environ[env.MLFLOW_TRACKING_URI])
    (run,) = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert run.info.status == "FAILED" and "score 'five'" in run.data.tags["failure_reason"]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"kind": "aufc", "grid": {"task": "sst2", "seed": []}}, "grid axis 'seed' is empty"),
        ({"kind": "aufc", "grid": {"task": "sst2", "frozen_layers": -1}},
         "frozen_layers=-1 is out of range"),
    ],
)  # fmt: skip
def test_sweep_refuses_a_bad_spec_in_one_line_before_anything_runs(store, spec, message):
    (store / "s.yaml").write_text(yaml.safe_dump(spec))
    line = one_line_exit(sweep.main, ["--spec", str(store / "s.yaml")])
    assert line.startswith("bertrep.sweep: ") and message in line, line
    assert not (store / "mlflow.db").exists()  # nothing was opened


@pytest.mark.slow
def test_analysis_refuses_a_spec_naming_sweeps_that_do_not_exist(store):
    spec = yaml.safe_load((REPO / "analysis" / "smoke.yaml").read_text())
    spec["sweeps"] = {"single": "no-such-sweep", "aufc": "no-such-sweep", "forgetting": ""}
    (store / "a.yaml").write_text(yaml.safe_dump(spec))
    line = one_line_exit(analyze.main, ["--spec", str(store / "a.yaml")])
    assert "no-such-sweep" in line, line
    assert finished_runs(store) == []
    (store / "b.yaml").write_text("name: x\nsweeps: {aufc: [\n")
    line = one_line_exit(analyze.main, ["--spec", str(store / "b.yaml")])
    assert line.startswith("bertrep.analyze: ") and "b.yaml, line 3: not valid YAML" in line
