"""MLflow names and run lookups on a real temporary SQLite store; the local server's
helpers (store URIs, stopping a process tree). No mocks."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import psutil
import pytest
from mlflow.tracking import MlflowClient

from bertrep import env, tracking
from bertrep.sweeps import runs as sweep_runs
from bertrep.tracking import registry, server


def test_metric_and_tag_names():
    assert tracking.drift_metric("sst2", 3) == "drift/sst2/layer_3"
    assert tracking.phase_metric(tracking.A_PHASE, "loss") == "train_a/loss"
    assert tracking.LOSS == tracking.phase_metric(tracking.TRAIN_PHASE, "loss") == "train/loss"
    assert tracking.eval_metric("accuracy", "pos") == "eval/pos/accuracy"
    assert tracking.BEST_ORIGIN == tracking.BEST_SOURCE == "best_origin"
    assert tracking.registered_model_name("pos") == "bertrep-pos"
    assert tracking.is_model_uri("models:/bertrep-pos/1") and tracking.is_model_uri("runs:/r/c")
    assert not tracking.is_model_uri("minilm") and not tracking.is_model_uri("/models/x")
    for local in ("/srv/mlruns/1", "file:///srv/mlruns/1", "file:/x", "mlruns/1", "C:\\mlruns"):
        assert server.is_local_location(local), local
    for store in ("mlflow-artifacts:/1", "s3://bucket/1", "dbfs:/databricks/mlflow/1"):
        assert not server.is_local_location(store), store
    assert tracking.is_server_uri("https://mlflow.example") and not tracking.is_server_uri(
        "sqlite:///mlflow.db"
    )


def train_run(key: str, status: str = "FINISHED", **tags) -> str:
    """A training run as train.py tags it, ended with `status`."""
    tags = {tracking.KIND: tracking.TRAIN_KIND, tracking.CONFIG_KEY: key} | tags
    run = MlflowClient().create_run(sweep_runs.experiment_id("t"), tags=tags)
    MlflowClient().set_terminated(run.info.run_id, status)
    return run.info.run_id


def test_find_source_is_the_newest_version_with_that_config_key(mlflow_store):
    assert registry.find_source("sst2", "k1") is None  # no registered model yet
    first, _, newest = (
        registry.register_model("sst2", f"runs:/{run}/model", run, {tracking.CONFIG_KEY: key})
        for key in ("k1", "k2", "k1")
        for run in [train_run(key)]
    )
    assert (first, newest) == ("models:/bertrep-sst2/1", "models:/bertrep-sst2/3")
    assert registry.find_source("sst2", "k1") == newest
    assert registry.find_source("sst2", "k2") == "models:/bertrep-sst2/2"
    assert registry.find_source("sst2", "k3") is None and registry.find_source("pos", "k1") is None
    version = MlflowClient().get_model_version("bertrep-sst2", "3")
    assert version.tags[tracking.RUN_ID] == version.run_id
    registry.ensure_registered_model("sst2")  # again: no error


def test_finished_keys_are_finished_training_runs_of_every_experiment(mlflow_store):
    train_run("done")
    train_run("failed", "FAILED")
    train_run("killed", "KILLED")
    other = MlflowClient().create_run(sweep_runs.experiment_id("other"), tags={
        tracking.KIND: tracking.TRAIN_KIND, tracking.CONFIG_KEY: "elsewhere"})  # fmt: skip
    MlflowClient().set_terminated(other.info.run_id, "FINISHED")
    parent = MlflowClient().create_run(sweep_runs.experiment_id("t"), tags={
        tracking.KIND: tracking.SWEEP_KIND, tracking.CONFIG_KEY: "not-a-run"})  # fmt: skip
    MlflowClient().set_terminated(parent.info.run_id, "FINISHED")
    assert sweep_runs.finished_keys() == {"done", "elsewhere"}


def test_resume_finds_the_unfinished_parent_and_ends_its_children(mlflow_store, monkeypatch):
    monkeypatch.delenv(env.MLFLOW_RUN_ID, raising=False)
    exp = sweep_runs.sweep_experiment()
    assert sweep_runs.experiment_name(exp) == tracking.DEFAULT_EXPERIMENT
    tags = {tracking.KIND: tracking.SWEEP_KIND, tracking.SWEEP_DIGEST: "d1"}
    done = sweep_runs.start_parent(exp, tags)
    MlflowClient().set_terminated(done, "FINISHED")
    killed = sweep_runs.start_parent(exp, tags)
    MlflowClient().set_terminated(killed, "KILLED")
    assert sweep_runs.unfinished_parent(exp, "d1") == killed
    assert sweep_runs.unfinished_parent(exp, "d2") is None
    assert sweep_runs.start_parent(exp, tags, killed) == killed
    assert MlflowClient().get_run(killed).info.status == "RUNNING"
    child = MlflowClient().create_run(exp, tags={tracking.PARENT_RUN: killed}).info.run_id
    sweep_runs.end_sweep(mlflow_store, killed, "KILLED")
    assert MlflowClient().get_run(child).info.status == "KILLED"
    assert MlflowClient().get_run(killed).info.status == "KILLED"
    assert sweep_runs.end_stale_children(killed) == 0


def test_a_run_never_stays_running(mlflow_store):
    with pytest.raises(RuntimeError), tracking.start_run("t") as run:
        raise RuntimeError("boom")
    failed = MlflowClient().get_run(run.info.run_id)
    assert failed.info.status == "FAILED"
    assert failed.data.tags[tracking.FAILURE_REASON] == "RuntimeError: boom"
    with pytest.raises(KeyboardInterrupt), tracking.start_run("t") as run:
        raise KeyboardInterrupt
    assert MlflowClient().get_run(run.info.run_id).info.status == "KILLED"
    with tracking.start_run("t") as run:
        logger = tracking.MetricLogger(run.info.run_id, every=2)
        logger.log({tracking.LOSS: math.inf, tracking.LR: 0.1}, step=1)  # sent: 2 points
        logger.log({tracking.LOSS: 1.5}, step=2)
        logger.flush()
        sweep_runs.log_trial_stats(run.info.run_id, 2.5, 1)
    history = MlflowClient().get_metric_history(run.info.run_id, tracking.LOSS)
    assert [(m.step, m.value) for m in history] == [(1, 1e308), (2, 1.5)]
    assert sweep_runs.first_step_time(run.info.run_id) == history[0].timestamp / 1000
    metrics = MlflowClient().get_run(run.info.run_id).data.metrics
    assert (metrics[tracking.TRIAL_STARTUP], metrics[tracking.TRIAL_INDEX]) == (2.5, 1)
    assert MlflowClient().get_run(run.info.run_id).info.status == "FINISHED"


def test_probe_sets_are_dataset_inputs_local_or_from_the_hub(mlflow_store, tmp_path):
    """A local probe file names its source; a hub split (hf://...) has none MLflow can
    resolve, and is logged without one."""
    import pandas as pd

    local = tmp_path / "dev.tsv"
    local.write_text("sentence\tlabel\n")
    rows = pd.DataFrame({"sentence": [0, 1], "position": [1, 2], "token_id": [7, 9]})
    meta = {"task": "sst2", "split": "validation", "rows": 2, "max_length": 64, "seed": 0}
    with tracking.start_run("t") as run:
        tracking.log_probe_input(rows, meta | {"file": str(local), "digest": "a" * 16})
        tracking.log_probe_input(rows, meta | {"file": "hf://nyu-mll/glue/sst2:validation",
                                               "task": "stsb", "digest": "b" * 16})  # fmt: skip
    inputs = MlflowClient().get_run(run.info.run_id).inputs.dataset_inputs
    by_name = {i.dataset.name: i.dataset for i in inputs}
    assert by_name["sst2-probe"].digest == "a" * 16 and str(local) in by_name["sst2-probe"].source
    assert by_name["stsb-probe"].digest == "b" * 16


def test_download_model_fetches_a_registered_checkpoint(mlflow_store, tmp_path):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    with tracking.start_run("t") as run:
        tracking.log_artifact(folder, tracking.CHECKPOINT)
    source = f"runs:/{run.info.run_id}/{tracking.CHECKPOINT}"
    uri = registry.register_model("pos", source, run.info.run_id, {tracking.SEED: 0})
    assert uri == "models:/bertrep-pos/1"
    local = registry.download_model(uri)
    assert registry.download_model("models:/bertrep-pos@seed0") == local  # the seed's alias
    assert (Path(local) / "config.json").read_text() == "{}"
    assert registry.download_model(uri) == local  # cached
    with pytest.raises(ValueError, match="names no version"):
        registry.download_model("models:/bertrep-pos")


def test_aliases_name_the_base_model_and_keep_seed_s_for_minilm(mlflow_store):
    """Sources of several base models in one store: one alias per base model and seed,
    `seed<s>` only for MiniLM (as before), none for a diverged source."""
    slugs = {
        "answerdotai/ModernBERT-base": "modernbert-base",
        "/data/models/my.Tiny_BERT/": "my-tiny_bert",
        "minilm": "minilm",
        "models:/bertrep-sst2/3": "bertrep-sst2-3",
        "...": "model",
    }
    assert {base: registry.base_model_slug(base) for base in slugs} == slugs
    register = {}
    for base in ("minilm", "answerdotai/ModernBERT-base", "/m/roberta", "diverged/x"):
        tags = {tracking.SEED: 1, tracking.BASE_MODEL: base}
        source, run = "runs:/r/checkpoint", train_run(base)
        register[base] = registry.register_model(
            "sst2", source, run, tags, alias=base != "diverged/x"
        )
    aliases = MlflowClient().get_registered_model("bertrep-sst2").aliases
    assert aliases == {"seed1": 1, "minilm-seed1": 1, "modernbert-base-seed1": 2,
                       "roberta-seed1": 3}  # fmt: skip
    for alias, version in aliases.items():  # each resolves to its own base model's version
        by_alias = MlflowClient().get_model_version_by_alias("bertrep-sst2", alias)
        assert f"models:/bertrep-sst2/{by_alias.version}" == register[by_alias.tags["base_model"]]
        assert int(by_alias.version) == version


def test_store_uris_are_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(env.MLFLOW_TRACKING_URI, "sqlite:///sub/mlflow.db")
    assert server.store_uri() == f"sqlite:///{tmp_path.resolve()}/sub/mlflow.db"
    assert server.artifacts_beside(server.store_uri()) == tmp_path.resolve() / "sub/mlartifacts"
    monkeypatch.setenv(env.MLFLOW_TRACKING_URI, "http://127.0.0.1:5000")
    assert server.store_uri() == "http://127.0.0.1:5000"
    before = mlflow.get_tracking_uri()
    with server.tracking_at("sqlite:////elsewhere/m.db"):
        assert mlflow.get_tracking_uri() == "sqlite:////elsewhere/m.db"
        assert os.environ[env.MLFLOW_TRACKING_URI] == "sqlite:////elsewhere/m.db"
    assert mlflow.get_tracking_uri() == before
    assert os.environ[env.MLFLOW_TRACKING_URI] == "http://127.0.0.1:5000"


# A parent that starts a child, says its pid, and waits for stdin to close (never here).
TREE = """
import subprocess, sys
child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                         stdin=subprocess.PIPE)
print(child.pid, flush=True)
sys.stdin.read()
"""


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_stop_tree_stops_a_process_and_its_children():
    proc = subprocess.Popen([sys.executable, "-c", TREE], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        child = int(proc.stdout.readline())
        assert not gone(child)
        server.stop_tree(proc.pid, timeout_s=30)  # returns once both have exited
        assert proc.poll() is not None and gone(child)
    finally:
        proc.kill()
        proc.wait()
