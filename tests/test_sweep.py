"""Sweeps: every shipped spec parses and expands; end to end on a real local Ray instance
and a real MLflow tracking server (the sweep's own), resume after a kill, and a two-node
Ray cluster started separately."""

from __future__ import annotations

import os
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

from bertrep import tracking
from bertrep.sweep import load_spec, parse_overrides, sources, spec_from_dict, trials

SPECS = sorted((REPO / "sweeps").glob("*/*.yaml"))
SMOKE = REPO / "sweeps" / "smoke" / "aufc.yaml"
BIN = Path(sys.executable).parent


@pytest.mark.parametrize("path", SPECS, ids=[str(p.relative_to(REPO)) for p in SPECS])
def test_every_shipped_spec_expands_to_trials(path):
    spec = load_spec(path)
    configs = trials(spec)
    assert configs and len({c.key() for c in configs}) == len(configs)
    assert all(Path(c.data_dir).is_absolute() for c in configs if c.data_dir)
    if spec.kind == "aufc":
        assert any(c.source_task != "base" for c in configs)
        for source in sources(spec, configs):
            assert source.source_task == "base" and source.frozen_layers == 0


def test_paper_spec_is_the_papers_setting():
    configs = trials(load_spec(REPO / "sweeps" / "paper" / "aufc.yaml"))
    assert {c.task for c in configs} == {"mnli", "stsb", "sst2", "pos"}
    assert {c.frozen_layers for c in configs} == set(range(13))
    assert {c.seed for c in configs} == {0, 1, 2}
    assert {c.max_steps for c in configs if c.task == "mnli"} == {6000}
    assert {c.max_steps for c in configs if c.task != "mnli"} == {2000}
    assert {(c.lr, c.batch_size, c.max_length) for c in configs} == {(2e-5, 32, 128)}
    assert len(configs) == 4 * 4 * 13 * 3
    quick = trials(load_spec(REPO / "sweeps" / "quick" / "aufc.yaml"))
    assert {0, 6} <= {c.frozen_layers for c in quick} and len({c.seed for c in quick}) >= 2
    assert {c.source_task for c in quick} >= {"base"} and len({c.task for c in quick}) == 4


def test_overrides_win_everywhere():
    spec = load_spec(REPO / "sweeps" / "paper" / "aufc.yaml", "max_steps=10,seed=[5]")
    assert {(c.max_steps, c.seed) for c in trials(spec)} == {(10, 5)}
    spec = load_spec(SMOKE, "base_model=.,resources.cpus_per_trial=2,frozen_layers=[1]")
    assert {c.base_model for c in trials(spec)} == {str(Path.cwd().resolve())}
    assert {c.frozen_layers for c in trials(spec)} == {1}
    assert spec.resources.cpus_per_trial == 2
    assert parse_overrides("a=1,b=[0, 1],c=x=y") == {"a": 1, "b": [0, 1], "c": "x=y"}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"kind": "aufc", "grids": {}}, "unknown key 'grids'"),
        ({"kind": "aufc", "fixed": {"learning_rate": 1}}, "unknown training parameter "
         "'learning_rate' in fixed"),
        ({"kind": "aufc", "grid": [{"sed": [0]}]}, "unknown training parameter 'sed' in grid"),
        ({"kind": "aufc", "per_task": {"cola": {}}}, "unknown task 'cola' in per_task"),
        ({"kind": "aufc", "resources": {"gpus": 1}}, "unknown key 'gpus' in resources"),
        ({"kind": "aufc", "sources": {"seed": 1}}, "sources cannot set 'seed'"),
        ({"kind": "sweep"}, "kind must be one of"),
    ],
)  # fmt: skip
def test_unknown_keys_are_errors_naming_them(raw, message):
    with pytest.raises(ValueError, match=message):
        spec_from_dict(raw, "x.yaml")


def test_bad_values_name_the_spec():
    spec = spec_from_dict({"kind": "single", "grid": {"task": ["sst2", "cola"]}}, "x.yaml")
    with pytest.raises(ValueError, match="x.yaml: unknown task 'cola'"):
        trials(spec)
    with pytest.raises(ValueError, match="unknown training parameter 'maxsteps'"):
        load_spec(SMOKE, "maxsteps=3")


def test_mlproject_has_the_sweep_entry_points():
    entries = yaml.safe_load((REPO / "MLproject").read_text())["entry_points"]
    for kind in ("single", "aufc", "forgetting"):
        entry = entries[f"sweep_{kind}"]
        assert set(entry["parameters"]) == {"spec", "overrides", "resume"}
        assert f"--kind {kind}" in entry["command"]


# --- end to end: real Ray, real MLflow server, tiny model, real (subsampled) data ---


def store_env(tmp_path: Path, data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RAY_"))}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"
    env["BERTREP_DATA_DIR"] = str(data_dir)
    return env


def sweep_cmd(tiny_model, extra: str = "", *args: str, spec: Path = SMOKE) -> list[str]:
    overrides = f"base_model={tiny_model}" + (f",{extra}" if extra else "")
    return [sys.executable, "-m", "bertrep.sweep", "--spec", str(spec), "--overrides",
            overrides, *args]  # fmt: skip


def runs(env) -> list:
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    return mlflow.search_runs(search_all_experiments=True, output_format="list")


def training_runs(env) -> list:
    return [r for r in runs(env) if r.data.tags.get(tracking.KIND) == "train"]


def parents(env) -> list:
    return [r for r in runs(env) if r.data.tags.get(tracking.KIND) == tracking.SWEEP_KIND]


def check_complete(env, n_trials: int) -> list:
    """Every trial FINISHED exactly once, as a child of the one parent; nothing RUNNING."""
    everything = runs(env)
    assert not [r for r in everything if r.info.status == "RUNNING"]
    (parent,) = parents(env)
    assert parent.info.status == "FINISHED"
    finished = [r for r in training_runs(env) if r.info.status == "FINISHED"]
    keys = Counter(r.data.tags[tracking.CONFIG_KEY] for r in finished)
    assert len(keys) == n_trials and set(keys.values()) == {1}
    assert {r.data.tags[tracking.PARENT_RUN] for r in finished} == {parent.info.run_id}
    return finished


@pytest.mark.slow
def test_mlflow_run_sweep_aufc_then_rerun_adds_nothing(tiny_model, data_dir, tmp_path):
    env = store_env(tmp_path, data_dir)
    cmd = [BIN / "mlflow", "run", REPO, "-e", "sweep_aufc", "--env-manager", "local"]
    cmd += ["-P", f"spec={SMOKE}", "-P", f"overrides=base_model={tiny_model}"]
    started = time.time()
    done = subprocess.run([str(c) for c in cmd], env=env, cwd=tmp_path, capture_output=True,
                          text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    print(f"smoke sweep_aufc: {time.time() - started:.0f}s")
    # 2 targets x 2 sources x 2 frozen levels x 2 seeds; the sources are the sst2 k=0 runs
    finished = check_complete(env, 16)
    (parent,) = parents(env)
    assert parent.data.tags[tracking.SWEEP_DIGEST] and parent.data.metrics["sweep/trials"] == 16
    client = MlflowClient()
    versions = client.search_model_versions("name = 'bertrep-sst2'")
    assert len(versions) == 2 and {v.tags[tracking.SEED] for v in versions} == {"0", "1"}
    by_key = {v.tags[tracking.CONFIG_KEY]: v for v in versions}
    transfer = [r for r in finished if r.data.tags[tracking.SOURCE_TASK] == "sst2"]
    assert len(transfer) == 8
    for r in transfer:
        name, version = r.data.tags[tracking.BASE_MODEL][len("models:/") :].split("/")
        source = client.get_model_version(name, version)
        assert source.tags[tracking.SEED] == r.data.tags[tracking.SEED]
        assert source.tags[tracking.CONFIG_KEY] in by_key
    startup = [r.data.metrics[tracking.TRIAL_STARTUP] for r in finished]
    assert all(0 < s < 120 for s in startup)
    # a second run finds every key FINISHED and trains nothing
    again = subprocess.run(sweep_cmd(tiny_model), env=env, cwd=tmp_path, capture_output=True,
                           text=True)  # fmt: skip
    assert again.returncode == 0, again.stderr[-4000:]
    assert len(training_runs(env)) == 16
    assert not [r for r in runs(env) if r.info.status == "RUNNING"]


def run_smoke_spec(kind: str, tiny_model, data_dir, tmp_path) -> dict[str, str]:
    """Run sweeps/smoke/<kind>.yaml from the tiny model into a fresh store; its env."""
    env = store_env(tmp_path, data_dir)
    spec = REPO / "sweeps" / "smoke" / f"{kind}.yaml"
    cmd = sweep_cmd(tiny_model, "", "--kind", kind, spec=spec)
    done = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-4000:]
    return env


@pytest.mark.slow
def test_forgetting_sweep_trains_its_source_then_both_modes(tiny_model, data_dir, tmp_path):
    env = run_smoke_spec("forgetting", tiny_model, data_dir, tmp_path)
    finished = check_complete(env, 3)  # the SST-2 source, then sequential and shuffled
    by_mode = {r.data.tags[tracking.MODE]: r for r in finished}
    (version,) = MlflowClient().search_model_versions("name = 'bertrep-sst2'")
    uri = f"models:/bertrep-sst2/{version.version}"
    assert by_mode["single"].info.run_id == version.run_id
    assert by_mode["sequential"].data.tags[tracking.BASE_MODEL] == uri  # starts from A
    assert by_mode["shuffled"].data.params["reference_model"] == uri  # drift against A
    for mode in ("sequential", "shuffled"):
        run_id = by_mode[mode].info.run_id
        drift = MlflowClient().get_metric_history(run_id, tracking.drift_metric("sst2", 2))
        assert sorted(m.step for m in drift) == [0, 1, 2, 3, 4]  # fractions of 4 updates


@pytest.mark.slow
def test_single_sweep_keeps_its_deliberately_failed_run(tiny_model, data_dir, tmp_path):
    env = run_smoke_spec("single", tiny_model, data_dir, tmp_path)
    finished = check_complete(env, 3)
    failed = [r for r in finished if float(r.data.params["lr"]) >= 1e3]
    (bad,) = failed
    assert bad.data.tags[tracking.DIVERGED] == "true" and bad.data.tags[tracking.DIVERGED_REASON]
    # the sweep's server stored artifacts beside the store (mlflow-artifacts:/ URIs)
    files = list(tmp_path.glob(f"**/{bad.info.run_id}/artifacts/activations/sst2/*.parquet"))
    assert files, "a diverged run keeps its activations"


@pytest.mark.slow
def test_killed_sweep_resumes_without_duplicates(tiny_model, data_dir, tmp_path):
    env = store_env(tmp_path, data_dir)
    proc = subprocess.Popen(sweep_cmd(tiny_model), env=env, cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # fmt: skip
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            done = [r for r in training_runs(env) if r.info.status == "FINISHED"]
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
    assert len([r for r in training_runs(env) if r.info.status == "FINISHED"]) < 16
    resumed = subprocess.run(sweep_cmd(tiny_model, "", "--resume"), env=env, cwd=tmp_path,
                             capture_output=True, text=True)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    check_complete(env, 16)


@pytest.fixture
def ray_cluster(tmp_path):
    """A head node and a second node, one CPU each, on loopback, started by `ray start`."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    # Ray 2.60 turns token auth on for clusters where a token exists (~/.ray, written by
    # any local ray.init); a second `ray start` does not follow: keep loopback open.
    env["RAY_AUTH_MODE"] = "disabled"
    temp = Path("/tmp") / f"ray-{os.getpid()}"  # Unix socket paths must stay short
    ray = str(BIN / "ray")
    common = ["--num-cpus=1", "--node-ip-address=127.0.0.1", "--disable-usage-stats"]
    head = [ray, "start", "--head", f"--port={port}", f"--temp-dir={temp}", *common]
    head += ["--include-dashboard=false"]
    subprocess.run(head, env=env, check=True, capture_output=True)
    try:
        node = [ray, "start", f"--address=127.0.0.1:{port}", *common]
        subprocess.run(node, env=env, check=True, capture_output=True)
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([ray, "stop", "--force"], env=env, capture_output=True)


@pytest.mark.slow
def test_sweep_on_a_two_node_ray_cluster(tiny_model, data_dir, tmp_path, ray_cluster):
    env = store_env(tmp_path, data_dir) | {"RAY_ADDRESS": ray_cluster, "RAY_AUTH_MODE": "disabled"}
    done = subprocess.run(sweep_cmd(tiny_model, "seed=[0]"), env=env, cwd=tmp_path,
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    finished = check_complete(env, 8)
    nodes = {r.data.tags[tracking.RAY_NODE_ID] for r in finished}
    assert len(nodes) == 2
