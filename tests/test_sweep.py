"""Sweeps end to end on a real local Ray instance and a real MLflow tracking server (the
sweep's own): resume after a kill, a moved data folder trains nothing new, and a two-node
Ray cluster started separately. The specs themselves: tests/test_spec.py."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml
from conftest import REPO, copy_study
from mlflow.tracking import MlflowClient

from bertrep import env, tracking
from bertrep.sweep import main, run_names
from bertrep.tracking import server
from bertrep.training.config import TrainConfig

SMOKE = REPO / "sweeps" / "smoke" / "aufc.yaml"
BIN = Path(sys.executable).parent


def test_mlproject_has_the_sweep_entry_points():
    entries = yaml.safe_load((REPO / "MLproject").read_text())["entry_points"]
    for kind in ("single", "aufc", "forgetting"):
        entry = entries[f"sweep_{kind}"]
        assert set(entry["parameters"]) == {"spec", "overrides", "resume"}
        assert f"--kind {kind}" in entry["command"]


@pytest.mark.parametrize("value", ["ture", "nope", "2"])
def test_resume_flag_parses_strictly(value, capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["--spec", str(SMOKE), "--resume", value])
    assert stopped.value.code == 2 and repr(value) in capsys.readouterr().err


def test_runs_sharing_a_display_name_are_named_by_what_differs():
    a = TrainConfig(task="sst2", seed=1)
    b, c = dataclasses.replace(a, lr=0.1), dataclasses.replace(a, task="pos")
    assert run_names([a, b, c]) == [
        f"sst2 from base, k=0, seed 1, lr={a.lr}",
        "sst2 from base, k=0, seed 1, lr=0.1",
        "pos from base, k=0, seed 1",
    ]


# --- end to end: real Ray, real MLflow server, tiny model, real (subsampled) data ---


def store_env(tmp_path: Path, data_dir: Path) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RAY_"))}
    out[env.MLFLOW_TRACKING_URI] = f"{tracking.SQLITE_URI}{tmp_path / 'mlflow.db'}"
    out["PATH"] = f"{BIN}{os.pathsep}{out['PATH']}"
    out[env.DATA_DIR] = str(data_dir)
    return out


# the smoke AuFC sweep as the smoke study runs it (MiniLM)
SMOKE_CMD = [sys.executable, "-m", "bertrep.sweep", "--spec", str(SMOKE)]
# the smoke AuFC grid on the tests' 2-block tiny BERT: frozen 0 and 2 (= L)
TINY_GRID = [
    {"task": ["sst2", "stsb"], "source_task": "base", "frozen_layers": 0, "seed": [0, 1],
     "probe_tasks": "sst2,stsb,pos", "save_checkpoint": True},
    {"task": ["sst2", "stsb"], "source_task": "base", "frozen_layers": 2, "seed": [0, 1]},
    {"task": ["sst2", "stsb"], "source_task": "sst2", "frozen_layers": [0, 2], "seed": [0, 1]},
    {"mode": "extract", "probe_tasks": "sst2,stsb,pos"},
]  # fmt: skip


def sweep_cmd(tiny_model, extra: str = "", *args: str, spec: Path = SMOKE) -> list[str]:
    overrides = f"base_model={tiny_model}" + (f",{extra}" if extra else "")
    return [sys.executable, "-m", "bertrep.sweep", "--spec", str(spec), "--overrides",
            overrides, *args]  # fmt: skip


def runs(store) -> list:
    mlflow.set_tracking_uri(store[env.MLFLOW_TRACKING_URI])
    return mlflow.search_runs(search_all_experiments=True, output_format="list")


def training_runs(store) -> list:
    return [r for r in runs(store) if r.data.tags.get(tracking.KIND) == tracking.TRAIN_KIND]


def parents(store) -> list:
    return [r for r in runs(store) if r.data.tags.get(tracking.KIND) == tracking.SWEEP_KIND]


def kind_parent(store, kind: str):
    (parent,) = [p for p in parents(store) if p.data.tags.get(tracking.SWEEP_KIND_TAG) == kind]
    return parent


def check_complete(store, n_trials: int, kind: str | None = None) -> list:
    """Every trial FINISHED exactly once, as a child of the one parent (of that kind, in a
    store holding several sweeps); nothing RUNNING."""
    everything = runs(store)
    assert not [r for r in everything if r.info.status == "RUNNING"]
    (parent,) = parents(store) if kind is None else [kind_parent(store, kind)]
    assert parent.info.status == "FINISHED"
    finished = [r for r in training_runs(store) if r.info.status == "FINISHED"]
    if kind is not None:
        finished = [r for r in finished if r.data.tags[tracking.PARENT_RUN] == parent.info.run_id]
    keys = Counter(r.data.tags[tracking.CONFIG_KEY] for r in finished)
    assert len(keys) == n_trials and set(keys.values()) == {1}
    assert {r.data.tags[tracking.PARENT_RUN] for r in finished} == {parent.info.run_id}
    return finished


@pytest.mark.slow
def test_mlflow_run_sweep_aufc_then_rerun_adds_nothing(smoke_study, tmp_path):
    """The smoke study's AuFC sweep, started by `mlflow run`; then a rerun on a copy, with
    the data folder moved."""
    store = copy_study(smoke_study, tmp_path / "study")
    print(f"smoke study: {smoke_study['seconds']:.0f}s")
    # 2 targets x 2 sources (base and the other task) x 2 seeds x (k = 0 and 3, and k = 6
    # at two budgets), and the pretrained model's read-out; the four sources were the
    # single sweep's runs
    finished = check_complete(store, 29, "aufc")
    parent = kind_parent(store, "aufc")
    assert parent.data.tags[tracking.SWEEP_DIGEST]
    assert parent.data.tags["mlflow.project.entryPoint"] == "sweep_aufc"  # mlflow run's run
    assert parent.data.metrics[tracking.SWEEP_TRIALS] == 33
    stored = sum(r.data.metrics[tracking.ARTIFACT_BYTES] for r in finished)
    assert parent.data.metrics[tracking.SWEEP_ARTIFACT_BYTES] == stored > 0
    client = MlflowClient()
    transfer = [r for r in finished if r.data.tags[tracking.SOURCE_TASK] != "base"]
    assert len(transfer) == 16
    sources = set()
    for r in transfer:
        name, version = r.data.tags[tracking.BASE_MODEL][len(tracking.MODELS_URI) :].split("/")
        source = client.get_model_version(name, version)
        assert source.tags[tracking.SEED] == r.data.tags[tracking.SEED]
        origin = client.get_run(source.run_id)  # full fine-tuning of the source, same seed
        assert origin.data.tags[tracking.CONFIG_KEY] == source.tags[tracking.CONFIG_KEY]
        assert (origin.data.tags[tracking.MODE], origin.data.params["lr"]) == ("single", "0.0002")
        sources.add(f"{name}/{source.version}")
    assert len(sources) == 4  # one source per task and seed
    startup = [r.data.metrics[tracking.TRIAL_STARTUP] for r in finished]
    assert all(math.isfinite(s) and s > 0 for s in startup)
    # workers are reused: start-up (imports, data, weights) is paid once per worker
    assert max(r.data.metrics[tracking.TRIAL_INDEX] for r in finished) > 1
    # A second run finds every key FINISHED and trains nothing, even with the data folder
    # moved: a run is what it reads (the files' content), not where they lie.
    moved = tmp_path / "elsewhere" / "moved-data"
    for task in ("sst2", "stsb", "conll2003"):  # what the sweep reads (its probes: STS-B's)
        (moved / task).mkdir(parents=True)
        for file in (Path(store[env.DATA_DIR]) / task).iterdir():
            shutil.copyfile(file, moved / task / file.name)  # real files, never links
    assert not any(p.is_symlink() for p in moved.rglob("*"))
    before = len(training_runs(store))
    again = subprocess.run(SMOKE_CMD, env=store | {env.DATA_DIR: str(moved)},
                           cwd=tmp_path, capture_output=True, text=True)  # fmt: skip
    assert again.returncode == 0, again.stderr[-4000:]
    assert len(training_runs(store)) == before
    assert not [r for r in runs(store) if r.info.status == "RUNNING"]
    newest = max(parents(store), key=lambda p: p.info.start_time)
    assert newest.data.metrics[tracking.SWEEP_SKIPPED] == 33
    # the rerun read the moved folder (its trial list, stored beside the store by its server)
    (listed,) = tmp_path.glob(f"**/{newest.info.run_id}/artifacts/{tracking.SWEEP_TRIALS_FILE}")
    assert {t["data_dir"] for t in json.loads(listed.read_text())} == {str(moved.resolve())}


@pytest.mark.slow
def test_sweep_prints_a_line_per_trial_event_named_as_its_run(smoke_study):
    out = smoke_study["stdout"]
    # the AuFC sweep's sources are the single sweep's runs, found in the registry
    assert "sweep smoke-aufc, sources: 0 to run, 4 finished before" in out
    ended = []
    for stage in ("sources", "trials"):
        lines = [line for line in out.splitlines() if line.startswith(f"smoke-aufc {stage}  ")]
        if not lines:
            continue
        started = [line for line in lines if "| started " in line]
        done = [line for line in lines if "| started " not in line]
        assert len(started) == len(done) and "time left unknown" in started[0]
        assert re.match(rf"smoke-aufc {stage}  (\d+)/\1 done, 0 running, .* none left \|", done[-1])
        ended += done
    assert all(re.search(r"\| .+: (\d+m)?\d+s, (final/score -?\d\.\d{4}(, diverged)?|no score)$",
                         line)
               for line in ended)  # fmt: skip
    names = {r.data.tags[tracking.RUN_NAME] for r in check_complete(smoke_study["env"], 29, "aufc")}
    assert "pos from sst2, k=3, seed 1" in names
    # every run the sweep trained is named in its progress, as the UI names it
    assert sorted(line.split(" | ")[1].rsplit(": ", 1)[0] for line in ended) == sorted(names)
    assert "Trial name" not in out and "+---" not in out  # no Tune tables
    aufc = out[out.index("=== smoke study, sweep aufc") : out.index("=== smoke study, sweep forg")]
    assert len(aufc.splitlines()) < 2 * 25 + 40, aufc  # two lines a trial, a few more


@pytest.mark.slow
def test_forgetting_sweep_starts_both_modes_from_its_source(smoke_study):
    store = smoke_study["env"]
    # the SST-2 source is the one the earlier sweeps trained (one config key): skipped
    finished = check_complete(store, 2, "forgetting")
    by_mode = {r.data.tags[tracking.MODE]: r for r in finished}
    uri = by_mode["sequential"].data.tags[tracking.BASE_MODEL]  # starts from A ...
    assert by_mode["shuffled"].data.params["reference_model"] == uri  # ... drift against A
    name, version = uri[len(tracking.MODELS_URI) :].split("/")
    source = MlflowClient().get_run(MlflowClient().get_model_version(name, version).run_id)
    tags = source.data.tags  # full fine-tuning of A from the same base model and seed
    assert (tags[tracking.TASK], tags[tracking.MODE], tags[tracking.SOURCE_TASK]) == (
        "sst2", "single", "base")  # fmt: skip
    assert tags[tracking.FROZEN_LAYERS] == "0" and tags[tracking.SEED] == "0"
    assert tags[tracking.BASE_MODEL] == by_mode["shuffled"].data.tags[tracking.BASE_MODEL]
    for mode in ("sequential", "shuffled"):
        run_id = by_mode[mode].info.run_id
        drift = MlflowClient().get_metric_history(run_id, tracking.drift_metric("sst2", 2))
        assert sorted(m.step for m in drift) == [0, 20, 40]  # fractions 0, 0.5, 1 of 40


@pytest.mark.slow
def test_single_sweep_keeps_its_deliberately_failed_run(smoke_study):
    store = smoke_study["env"]
    finished = check_complete(store, 7, "single")
    failed = [r for r in finished if float(r.data.params["lr"]) >= 1e3]
    (bad,) = failed
    assert bad.data.tags[tracking.DIVERGED] == "true" and bad.data.tags[tracking.DIVERGED_REASON]
    # named apart from the run of the same task and seed by what differs
    names = {r.data.tags[tracking.RUN_NAME] for r in finished}
    sst2 = "sst2 from base, k=0, seed 0"
    assert names == {"pos from base, k=0, seed 0", "pos from base, k=0, seed 1",
                     "stsb from base, k=0, seed 0", "stsb from base, k=0, seed 1",
                     "sst2 from base, k=0, seed 1", f"{sst2}, lr=0.0002, max_grad_norm=1.0",
                     f"{sst2}, lr=10000.0, max_grad_norm=0.0"}  # fmt: skip
    # its artifacts lie where its experiment keeps them: `mlflow run` made this one on the
    # SQLite file, so in a local folder (a cluster of several nodes refuses that setup)
    experiment = MlflowClient(store[env.MLFLOW_TRACKING_URI]).get_experiment(bad.info.experiment_id)
    assert bad.info.artifact_uri.startswith(experiment.artifact_location)
    tables = smoke_study["tmp"].glob(f"**/{bad.info.run_id}/artifacts/activations/sst2/*.parquet")
    assert list(tables), "a diverged run keeps its activations"


@pytest.mark.slow
def test_a_trial_of_bad_input_fails_once_saying_why(tiny_model, data_dir, tmp_path):
    """frozen_layers beyond the model's blocks fails the same way on every attempt: the
    trial is not retried, the sweep's line says why, the sweep fails."""
    store = store_env(tmp_path, data_dir)
    spec = yaml.safe_load(SMOKE.read_text())
    spec["grid"] = {"task": "sst2", "source_task": "base", "frozen_layers": 3, "seed": 0}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(spec))
    done = subprocess.run(sweep_cmd(tiny_model, spec=tmp_path / "bad.yaml"), env=store,
                          cwd=tmp_path, capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 1, done.stderr[-3000:]
    assert "sweep smoke-aufc failed: 1 of 1 trials failed" in done.stderr
    name = "sst2 from base, k=3, seed 0"
    assert re.search(rf"1/1 done \(1 failed\).* \| FAILED {name} after \d+s, not retried: "
                     r"frozen_layers=3 is outside 0\.\.2 for this model", done.stdout)  # fmt: skip
    assert "RETRYING" not in done.stdout
    assert not training_runs(store)  # refused before its run opened
    (parent,) = parents(store)
    assert parent.info.status == "FAILED"


@pytest.mark.slow
def test_a_longer_repeat_is_trained_only_where_its_trial_used_its_whole_cap(
    tiny_model, data_dir, tmp_path
):
    """Head-only trials at a rate that changes nothing stop after 4 scores (8 updates):
    seed 0's cap of 20 was not reached, so its repeat at 40 would train the same 8
    updates and is skipped; seed 1's cap of 4 was, so its repeat at 8 is trained."""
    store = store_env(tmp_path, data_dir)
    spec = yaml.safe_load(SMOKE.read_text())
    spec["fixed"] |= {"lr": 1e-12, "schedule": "constant", "warmup_ratio": 0.0,
                      "eval_every": 2, "early_stopping": 3, "probe_tasks": "sst2"}  # fmt: skip
    cell = {"task": "sst2", "source_task": "base", "frozen_layers": 2}
    spec["grid"] = [cell | {"seed": 0, "max_steps": [20, 40]},
                    cell | {"seed": 1, "max_steps": [4, 8]}]  # fmt: skip
    (tmp_path / "repeats.yaml").write_text(yaml.safe_dump(spec))
    done = subprocess.run(sweep_cmd(tiny_model, spec=tmp_path / "repeats.yaml"), env=store,
                          cwd=tmp_path, capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "repeats: 1 of 2 not trained: their trials stopped before the cap" in done.stdout
    finished = check_complete(store, 3)
    trained = sorted((int(r.data.params["seed"]), int(r.data.params["max_steps"]),
                      r.data.metrics[tracking.UPDATES]) for r in finished)  # fmt: skip
    assert trained == [(0, 20, 8), (1, 4, 4), (1, 8, 8)]
    named = sorted(r.data.tags[tracking.RUN_NAME] for r in finished)  # apart, as in one stage
    assert named == [
        f"sst2 from base, k=2, seed {s}, max_steps={n}" for s, n in [(0, 20), (1, 4), (1, 8)]
    ]
    (parent,) = parents(store)
    assert parent.data.metrics[tracking.SWEEP_TRIALS] == 4
    assert parent.data.metrics[tracking.SWEEP_SKIPPED] == 1


@pytest.mark.slow
def test_killed_sweep_resumes_without_duplicates(tiny_model, data_dir, tmp_path):
    """kill -9 of the driver once its source stage is done and the trials are under way,
    then --resume: one FINISHED run per config key, nothing left RUNNING."""
    store = store_env(tmp_path, data_dir)
    spec = yaml.safe_load(SMOKE.read_text())
    spec["grid"] = {"task": ["sst2", "stsb"], "source_task": "sst2", "frozen_layers": [0, 2],
                    "seed": 0}  # fmt: skip
    (tmp_path / "four.yaml").write_text(yaml.safe_dump(spec))  # a source, then 4 trials
    cmd = sweep_cmd(tiny_model, spec=tmp_path / "four.yaml")
    proc = subprocess.Popen(cmd, env=store, cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            if len([r for r in training_runs(store) if r.info.status == "FINISHED"]) >= 2:
                break  # the source and a first trial done, the others under way
            time.sleep(0.5)
        assert proc.poll() is None, "the sweep ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)  # the driver alone: its server and Ray live on
        proc.wait()
        assert len([r for r in training_runs(store) if r.info.status == "FINISHED"]) < 5
        resumed = subprocess.run([*cmd, "--resume"], env=store, cwd=tmp_path,
                                 capture_output=True, text=True)  # fmt: skip
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # what the killed driver left behind
        except ProcessLookupError:
            pass
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    check_complete(store, 5)  # the source and the four trials
    (parent,) = parents(store)
    assert parent.data.metrics[tracking.SWEEP_SKIPPED] >= 1  # the trial the killed sweep finished


def two_long_trials(tiny_model, data_dir, tmp_path, steps: int):
    """A sweep of two long trials (sst2 from base, k = 1, seeds 0 and 1) started in the
    background, and the first run seen training: (store, process, run)."""
    store = store_env(tmp_path, data_dir)
    spec = yaml.safe_load(SMOKE.read_text())
    spec["fixed"] |= {"max_steps": steps, "probe_tasks": "sst2"}
    spec["grid"] = {"task": "sst2", "source_task": "base", "frozen_layers": 1, "seed": [0, 1]}
    (tmp_path / "two.yaml").write_text(yaml.safe_dump(spec))
    with open(tmp_path / "out.txt", "w") as out, open(tmp_path / "err.txt", "w") as err:
        proc = subprocess.Popen(sweep_cmd(tiny_model, spec=tmp_path / "two.yaml"), env=store,
                                cwd=tmp_path, stdout=out, stderr=err,
                                start_new_session=True)  # fmt: skip
    client, started = MlflowClient(store[env.MLFLOW_TRACKING_URI]), time.monotonic()
    while time.monotonic() - started < 300 and proc.poll() is None:
        running = [r for r in training_runs(store) if r.info.status == "RUNNING"]
        for r in running:
            if client.get_metric_history(r.info.run_id, tracking.LOSS):
                return store, proc, r
        time.sleep(0.5)
    stop(proc)
    raise AssertionError(f"no trial was seen training: {output(tmp_path)[1][-3000:]}")


def output(tmp_path) -> tuple[str, str]:
    """What `two_long_trials`'s sweep printed: (stdout, stderr)."""
    return (tmp_path / "out.txt").read_text(), (tmp_path / "err.txt").read_text()


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def is_tracking_server(process) -> bool:
    """The sweep's `mlflow server` (not one of Ray's processes, which may come and go)."""
    import psutil

    try:
        return {"server", "--backend-store-uri"} <= set(process.cmdline())
    except psutil.Error:
        return False


@pytest.mark.slow
def test_killed_worker_and_tracking_server_are_recovered_and_nothing_is_lost(
    tiny_model, data_dir, tmp_path
):
    """kill -9 of one trial's worker process mid-training, then of the sweep's MLflow
    server (and its uvicorn worker): the trial runs again (one retry, the default
    resources.max_failures) and the dead attempt's run ends FAILED saying why; the sweep
    starts the server again on the same port and the trials' requests retry; every
    FINISHED run holds every metric point and its activation table."""
    import psutil

    store, proc, victim = two_long_trials(tiny_model, data_dir, tmp_path, steps=300)
    client = MlflowClient(store[env.MLFLOW_TRACKING_URI])
    try:
        os.kill(int(victim.data.tags[tracking.RAY_WORKER].rsplit(":", 1)[1]), signal.SIGKILL)
        (server_proc,) = [p for p in psutil.Process(proc.pid).children(recursive=True)
                          if is_tracking_server(p)]  # fmt: skip
        for p in [*server_proc.children(recursive=True), server_proc]:
            p.kill()
        proc.wait(timeout=400)
    finally:
        stop(proc)
    out, err = output(tmp_path)
    assert proc.returncode == 0, err[-4000:]
    assert "starting it again on the same port (restart 1;" in err
    for r in check_complete(store, 2):
        steps = {m.step for m in client.get_metric_history(r.info.run_id, tracking.LOSS)}
        assert steps == set(range(1, 301)) and tracking.FINAL_SCORE in r.data.metrics
        assert list(tmp_path.glob(f"**/{r.info.run_id}/artifacts/activations/sst2/*.parquet"))
    dead = client.get_run(victim.info.run_id)
    assert dead.info.status == "FAILED"
    reason = dead.data.tags[tracking.FAILURE_REASON]
    assert reason.startswith(f"its worker process {victim.data.tags[tracking.RAY_WORKER]} died")
    key = victim.data.tags[tracking.CONFIG_KEY]
    attempts = [r for r in training_runs(store) if r.data.tags[tracking.CONFIG_KEY] == key]
    assert sorted(r.info.status for r in attempts) == ["FAILED", "FINISHED"]
    assert f"RETRYING {victim.data.tags[tracking.RUN_NAME]}: " in out
    assert re.search(r"smoke-aufc trials  2/2 done, 0 running, .* none left \|", out)


@pytest.fixture
def ray_cluster(tmp_path):
    """A head node and a second node, one CPU each, on loopback, started by `ray start`."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ray_env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    # Ray 2.60 turns token auth on for clusters where a token exists (~/.ray, written by
    # any local ray.init); a second `ray start` does not follow: keep loopback open.
    ray_env["RAY_AUTH_MODE"] = "disabled"
    temp = Path("/tmp") / f"ray-{os.getpid()}"  # Unix socket paths must stay short
    ray = str(BIN / "ray")
    common = ["--num-cpus=1", "--node-ip-address=127.0.0.1", "--disable-usage-stats"]
    head = [ray, "start", "--head", f"--port={port}", f"--temp-dir={temp}", *common]
    head += ["--include-dashboard=false"]
    subprocess.run(head, env=ray_env, check=True, capture_output=True)
    try:
        node = [ray, "start", f"--address=127.0.0.1:{port}", *common]
        subprocess.run(node, env=ray_env, check=True, capture_output=True)
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([ray, "stop", "--force"], env=ray_env, capture_output=True)


@pytest.mark.slow
def test_sweep_on_a_two_node_ray_cluster(tiny_model, data_dir, tmp_path, ray_cluster):
    cluster = {env.RAY_ADDRESS: ray_cluster, "RAY_AUTH_MODE": "disabled"}
    store = store_env(tmp_path, data_dir) | cluster
    # An experiment made straight on the SQLite file keeps artifacts in a local folder,
    # which trials on the other node would fill on their own disk: refused, nothing run.
    mlflow.set_tracking_uri(store[env.MLFLOW_TRACKING_URI])
    local = mlflow.create_experiment("made-before", str(tmp_path / "made-before"))
    assert server.is_local_location(mlflow.get_experiment(local).artifact_location)
    spec = yaml.safe_load(SMOKE.read_text()) | {"grid": TINY_GRID}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(spec))
    cmd = sweep_cmd(tiny_model, "seed=[0]", spec=tmp_path / "tiny.yaml")
    refused = subprocess.run(cmd, cwd=tmp_path, text=True,
                             env=store | {env.MLFLOW_EXPERIMENT_NAME: "made-before"},
                             capture_output=True)  # fmt: skip
    assert refused.returncode == 1 and "which the other 1 node(s) cannot reach" in refused.stderr
    assert not runs(store)  # refused before any run was opened
    done = subprocess.run(cmd, env=store, cwd=tmp_path,
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    finished = check_complete(store, 9)  # seed 0 of the grid, and the read-out
    nodes = {r.data.tags[tracking.RAY_NODE_ID] for r in finished}
    assert len(nodes) == 2
    # every trial's artifacts went through the sweep's server, whichever node ran it
    assert all(r.info.artifact_uri.startswith(tracking.ARTIFACTS_URI) for r in finished)


@pytest.mark.slow
def test_an_aufc_sweep_over_an_own_task_through_the_analysis(tiny_model, fixture_data, tmp_path):
    """An own task (a task file and CSV files of real rows) as target and as source beside
    SST-2, on the fixture's rows (no data folder), then the analysis naming its file."""
    from test_task_files import sst2_as_csv

    own = sst2_as_csv(tmp_path / "mine", fixture_data)
    grid = [
        {"task": ["sst2", str(own)], "source_task": "base", "frozen_layers": [0, 2],
         "seed": 0, "probe_tasks": f"sst2,{own}", "save_checkpoint": True},
        {"task": "sst2", "source_task": str(own), "frozen_layers": [0, 2], "seed": 0},
        {"task": str(own), "source_task": "sst2", "frozen_layers": [0, 2], "seed": 0},
    ]  # fmt: skip
    spec = yaml.safe_load(SMOKE.read_text()) | {
        "grid": grid,
        "per_task": {},
        "sources": {"probe_tasks": f"sst2,{own}"},
    }
    (tmp_path / "own.yaml").write_text(yaml.safe_dump(spec))
    store = store_env(tmp_path, fixture_data)
    done = subprocess.run(sweep_cmd(tiny_model, spec=tmp_path / "own.yaml"), env=store,
                          cwd=tmp_path, capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    finished = check_complete(store, 8)  # 2 targets x (base + the other task) x k 0, 2
    assert {r.data.tags[tracking.TASK] for r in finished} == {"sst2", "reviews"}
    assert {r.data.tags[tracking.SOURCE_TASK] for r in finished} == {"base", "sst2", "reviews"}
    overrides = (f"tasks=[sst2,{own}],sweeps={{aufc: smoke-aufc}},bootstrap.replicates=0,"
                 "diagnostics=false,predictors=false")  # fmt: skip
    cmd = [sys.executable, "-m", "bertrep.analyze", "--spec", str(REPO / "analysis" / "smoke.yaml"),
           "--overrides", overrides]  # fmt: skip
    done = subprocess.run(cmd, env=store, cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-4000:]
    mlflow.set_tracking_uri(store[env.MLFLOW_TRACKING_URI])
    analysis = [r for r in runs(store) if r.data.tags.get(tracking.KIND) == "analysis"][0]
    with server.serve(store[env.MLFLOW_TRACKING_URI], tmp_path / "logs") as uri:
        with server.tracking_at(uri):  # the artifacts went through the sweep's server
            folder = mlflow.artifacts.download_artifacts(
                run_id=analysis.info.run_id, artifact_path="tables", dst_path=str(tmp_path)
            )

    aufc = pd.read_parquet(Path(folder) / "aufc.parquet")
    cells = aufc[aufc.variant == "aufc"].set_index(["source", "target"])
    for cell in [
        ("base", "reviews"),
        ("reviews", "sst2"),
        ("sst2", "reviews"),
    ]:
        assert cell in cells.index and cells.loc[cell, "status"] != "missing", cell
    best = pd.read_parquet(Path(folder) / "best.parquet").set_index("task")
    assert best.loc["reviews", "metric"] == "f1_macro"
    # every trial on it scored against its chance: the majority class (pos, 25 of the 48
    # rows) alone, F1 2·25/73 over two classes, whatever 40 updates of the tiny model reach
    scores = pd.read_parquet(Path(folder) / "scores.parquet")
    mine = scores[scores.target == "reviews"]
    assert len(mine) == 4 and mine.chance.to_numpy() == pytest.approx([25 / 73] * 4)


@pytest.mark.slow
def test_a_sweep_across_two_encoder_families_through_the_analysis(tiny_model, data_dir, tmp_path):
    """The shipped families sweep with its base_model axis on two tiny families (BERT,
    2 blocks; ModernBERT, 4 blocks, local and global attention), then its analysis: each
    family's tables in its own folder, their matrices side by side, and every layer of
    one against every layer of the other on the same words."""
    from encoder_families import make_tiny_encoder
    from transformers import AutoTokenizer

    modernbert = make_tiny_encoder("modernbert", tmp_path / "modernbert",
                                   AutoTokenizer.from_pretrained(tiny_model))  # fmt: skip
    store = store_env(tmp_path, data_dir)
    overrides = (f"base_model=[{tiny_model},{modernbert}],seed=0,max_steps=20,"
                 "max_train_examples=160,max_eval_examples=64,probe_tokens=60")  # fmt: skip
    cmd = [sys.executable, "-m", "bertrep.sweep", "--spec",
           str(REPO / "sweeps" / "smoke" / "families.yaml"), "--overrides", overrides]  # fmt: skip
    done = subprocess.run(cmd, env=store, cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-4000:]
    finished = check_complete(store, 10)  # 2 families x (2 sources, 2 transfers, 1 read-out)
    started = {r.data.tags[tracking.BASE_MODEL] for r in finished}  # folders, or a source
    assert {m for m in started if not m.startswith("models:/")} == {str(tiny_model),
                                                                    str(modernbert)}  # fmt: skip
    cmd = [sys.executable, "-m", "bertrep.analyze", "--spec",
           str(REPO / "analysis" / "families.yaml"), "--overrides",
           "bootstrap.replicates=0,diagnostics=false,predictors=false"]  # fmt: skip
    done = subprocess.run(cmd, env=store, cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "# Across base models" in done.stdout
    mlflow.set_tracking_uri(store[env.MLFLOW_TRACKING_URI])
    analysis = [r for r in runs(store) if r.data.tags.get(tracking.KIND) == "analysis"][0]
    with server.serve(store[env.MLFLOW_TRACKING_URI], tmp_path / "logs") as uri:
        with server.tracking_at(uri):
            where = {"run_id": analysis.info.run_id, "dst_path": str(tmp_path / "a")}
            folder = Path(mlflow.artifacts.download_artifacts(artifact_path="", **where))
    names = {tiny_model.name.lower(), "modernbert"}
    assert {p.name for p in (folder / "tables").iterdir() if p.is_dir()} == names
    for name in names:  # each family's own analysis of its own runs (tiny random models
        # mostly end at chance: the tables say so, cell by cell)
        runs_of = pd.read_parquet(folder / "tables" / name / "runs.parquet")
        assert len(runs_of) == 5 and runs_of.root_model.nunique() == 1
        assert len(pd.read_parquet(folder / "tables" / name / "transfer_k0.parquet")) == 6
    side = pd.read_parquet(folder / "tables" / "base_models.parquet")
    assert set(side.base_model) == {str(tiny_model), str(modernbert)}
    cross = pd.read_parquet(folder / "tables" / "cross_model_cka.parquet")
    pretrained = cross[(cross.model == "pretrained") & (cross.estimator == "biased")]
    depth = {str(tiny_model): 2, str(modernbert): 4}
    for task in ("sst2", "pos"):
        grid = pretrained[pretrained.probe_task == task]
        a, b = grid.base_a.iloc[0], grid.base_b.iloc[0]
        # hidden states 0..2 of the BERT against 0..4 of the ModernBERT, on the same words
        assert sorted(set(grid.layer_a)) == list(range(depth[a] + 1))
        assert sorted(set(grid.layer_b)) == list(range(depth[b] + 1))
        assert grid.cka.between(0, 1 + 1e-9).all() and grid.words.nunique() == 1
    # the fine-tuned pairs only where both families have a k = 0 run that did not fail
    assert "pretrained" in set(cross.model)
    assert set(cross.model) <= {"pretrained", "fine-tuned on sst2", "fine-tuned on pos"}
    # drawn where a matrix has a number (tiny random models may leave every cell empty)
    drawn = (folder / "figures" / "base_models_side_by_side.png").is_file()
    assert drawn == bool(side.value.notna().any())
    assert (folder / "figures" / "cross_model_cka_pos.png").is_file()
