"""Sweeps end to end on a real local Ray instance and a real MLflow tracking server (the
sweep's own): resume after a kill, a moved data folder trains nothing new, and a two-node
Ray cluster started separately. The specs themselves: tests/test_spec.py."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import mlflow
import pytest
import yaml
from conftest import REPO
from mlflow.tracking import MlflowClient

from bertrep import env, tracking
from bertrep.sweep import main

SMOKE = REPO / "sweeps" / "smoke" / "aufc.yaml"
BIN = Path(sys.executable).parent
SST2_VERSIONS = f"name = '{tracking.registered_model_name('sst2')}'"


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


# --- end to end: real Ray, real MLflow server, tiny model, real (subsampled) data ---


def store_env(tmp_path: Path, data_dir: Path) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RAY_"))}
    out[env.MLFLOW_TRACKING_URI] = f"{tracking.SQLITE_URI}{tmp_path / 'mlflow.db'}"
    out["PATH"] = f"{BIN}{os.pathsep}{out['PATH']}"
    out[env.DATA_DIR] = str(data_dir)
    return out


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


def check_complete(store, n_trials: int) -> list:
    """Every trial FINISHED exactly once, as a child of the one parent; nothing RUNNING."""
    everything = runs(store)
    assert not [r for r in everything if r.info.status == "RUNNING"]
    (parent,) = parents(store)
    assert parent.info.status == "FINISHED"
    finished = [r for r in training_runs(store) if r.info.status == "FINISHED"]
    keys = Counter(r.data.tags[tracking.CONFIG_KEY] for r in finished)
    assert len(keys) == n_trials and set(keys.values()) == {1}
    assert {r.data.tags[tracking.PARENT_RUN] for r in finished} == {parent.info.run_id}
    return finished


@pytest.mark.slow
def test_mlflow_run_sweep_aufc_then_rerun_adds_nothing(tiny_model, data_dir, tmp_path):
    store = store_env(tmp_path, data_dir)
    cmd = [BIN / "mlflow", "run", REPO, "-e", "sweep_aufc", "--env-manager", "local"]
    cmd += ["-P", f"spec={SMOKE}", "-P", f"overrides=base_model={tiny_model}"]
    started = time.time()
    done = subprocess.run([str(c) for c in cmd], env=store, cwd=tmp_path, capture_output=True,
                          text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    print(f"smoke sweep_aufc: {time.time() - started:.0f}s")
    # 2 targets x 2 sources x 2 frozen levels x 2 seeds (the sources are the sst2 k=0
    # runs), and the pretrained model's read-out
    finished = check_complete(store, 17)
    (parent,) = parents(store)
    assert parent.data.tags[tracking.SWEEP_DIGEST]
    assert parent.data.metrics[tracking.SWEEP_TRIALS] == 17
    client = MlflowClient()
    versions = client.search_model_versions(SST2_VERSIONS)
    assert len(versions) == 2 and {v.tags[tracking.SEED] for v in versions} == {"0", "1"}
    by_key = {v.tags[tracking.CONFIG_KEY]: v for v in versions}
    transfer = [r for r in finished if r.data.tags[tracking.SOURCE_TASK] == "sst2"]
    assert len(transfer) == 8
    for r in transfer:
        name, version = r.data.tags[tracking.BASE_MODEL][len(tracking.MODELS_URI) :].split("/")
        source = client.get_model_version(name, version)
        assert source.tags[tracking.SEED] == r.data.tags[tracking.SEED]
        assert source.tags[tracking.CONFIG_KEY] in by_key
    startup = [r.data.metrics[tracking.TRIAL_STARTUP] for r in finished]
    assert all(math.isfinite(s) and s > 0 for s in startup)
    # workers are reused: start-up (imports, data, weights) is paid once per worker
    assert max(r.data.metrics[tracking.TRIAL_INDEX] for r in finished) > 1
    # a second run finds every key FINISHED and trains nothing
    again = subprocess.run(sweep_cmd(tiny_model), env=store, cwd=tmp_path, capture_output=True,
                           text=True)  # fmt: skip
    assert again.returncode == 0, again.stderr[-4000:]
    assert len(training_runs(store)) == 17
    assert not [r for r in runs(store) if r.info.status == "RUNNING"]


def run_smoke_spec(kind: str, tiny_model, data_dir, tmp_path) -> dict[str, str]:
    """Run sweeps/smoke/<kind>.yaml from the tiny model into a fresh store; its env."""
    store = store_env(tmp_path, data_dir)
    spec = REPO / "sweeps" / "smoke" / f"{kind}.yaml"
    cmd = sweep_cmd(tiny_model, "", "--kind", kind, spec=spec)
    done = subprocess.run(cmd, env=store, cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-4000:]
    return store


@pytest.mark.slow
def test_forgetting_sweep_trains_its_source_then_both_modes(tiny_model, data_dir, tmp_path):
    store = run_smoke_spec("forgetting", tiny_model, data_dir, tmp_path)
    finished = check_complete(store, 3)  # the SST-2 source, then sequential and shuffled
    by_mode = {r.data.tags[tracking.MODE]: r for r in finished}
    (version,) = MlflowClient().search_model_versions(SST2_VERSIONS)
    uri = f"{tracking.MODELS_URI}{tracking.registered_model_name('sst2')}/{version.version}"
    assert by_mode["single"].info.run_id == version.run_id
    assert by_mode["sequential"].data.tags[tracking.BASE_MODEL] == uri  # starts from A
    assert by_mode["shuffled"].data.params["reference_model"] == uri  # drift against A
    for mode in ("sequential", "shuffled"):
        run_id = by_mode[mode].info.run_id
        drift = MlflowClient().get_metric_history(run_id, tracking.drift_metric("sst2", 2))
        assert sorted(m.step for m in drift) == [0, 1, 2, 3]  # fractions of 3 updates


@pytest.mark.slow
def test_single_sweep_keeps_its_deliberately_failed_run(tiny_model, data_dir, tmp_path):
    store = run_smoke_spec("single", tiny_model, data_dir, tmp_path)
    finished = check_complete(store, 3)
    failed = [r for r in finished if float(r.data.params["lr"]) >= 1e3]
    (bad,) = failed
    assert bad.data.tags[tracking.DIVERGED] == "true" and bad.data.tags[tracking.DIVERGED_REASON]
    # the sweep's server stored artifacts beside the store (mlflow-artifacts:/ URIs)
    files = list(tmp_path.glob(f"**/{bad.info.run_id}/artifacts/activations/sst2/*.parquet"))
    assert files, "a diverged run keeps its activations"


@pytest.mark.slow
def test_moved_data_folder_trains_nothing_new(tiny_model, data_dir, tmp_path):
    """A run is what it reads, not where: after the data folder moves, the same sweep
    finds its source and its trial FINISHED by config key and trains nothing."""
    first = tmp_path / "data"
    for task in ("sst2", "stsb", "conll2003"):  # the sources also extract on POS
        (first / task).mkdir(parents=True)
        for file in (data_dir / task).iterdir():
            shutil.copyfile(file, first / task / file.name)  # real files, never links
    store = store_env(tmp_path, first)
    grid = "task=[stsb],source_task=[sst2],frozen_layers=[0],seed=[0]"  # a source, a target
    done = subprocess.run(sweep_cmd(tiny_model, grid), env=store, cwd=tmp_path,
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    check_complete(store, 2)
    moved = tmp_path / "elsewhere" / "moved-data"
    moved.parent.mkdir()
    shutil.move(first, moved)
    assert not first.exists() and not any(p.is_symlink() for p in moved.rglob("*"))
    store[env.DATA_DIR] = str(moved)
    again = subprocess.run(sweep_cmd(tiny_model, grid), env=store, cwd=tmp_path,
                           capture_output=True, text=True)  # fmt: skip
    assert again.returncode == 0, again.stderr[-4000:]
    assert len(training_runs(store)) == 2
    (rerun,) = [p for p in parents(store) if p.data.metrics.get(tracking.SWEEP_SKIPPED) == 1]
    assert rerun.info.status == "FINISHED" and rerun.data.metrics[tracking.SWEEP_TRIALS] == 1
    # the rerun read the moved folder (its trial list, stored beside the store by its server)
    (listed,) = tmp_path.glob(f"**/{rerun.info.run_id}/artifacts/{tracking.SWEEP_TRIALS_FILE}")
    assert {t["data_dir"] for t in json.loads(listed.read_text())} == {str(moved.resolve())}


@pytest.mark.slow
def test_killed_sweep_resumes_without_duplicates(tiny_model, data_dir, tmp_path):
    store = store_env(tmp_path, data_dir)
    proc = subprocess.Popen(sweep_cmd(tiny_model), env=store, cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            done = [r for r in training_runs(store) if r.info.status == "FINISHED"]
            if len(done) >= 4:  # sources done, transfer trials under way
                break
            time.sleep(1)
        assert proc.poll() is None, "the sweep ended before it could be killed"
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    assert len([r for r in training_runs(store) if r.info.status == "FINISHED"]) < 17
    resumed = subprocess.run(sweep_cmd(tiny_model, "", "--resume"), env=store, cwd=tmp_path,
                             capture_output=True, text=True)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    check_complete(store, 17)


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
    done = subprocess.run(sweep_cmd(tiny_model, "seed=[0]"), env=store, cwd=tmp_path,
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    finished = check_complete(store, 9)  # seed 0 of the grid, and the read-out
    nodes = {r.data.tags[tracking.RAY_NODE_ID] for r in finished}
    assert len(nodes) == 2
