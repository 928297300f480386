"""End-to-end training runs: real data (subsampled), tiny random BERTs, a real MLflow
store read back with MLflow's own client, and `mlflow run` of the MLproject."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from conftest import REPO
from mlflow.tracking import MlflowClient
from transformers import AutoModel

from bertrep import tracking
from bertrep.analysis import collect
from bertrep.data import activations
from bertrep.errors import InputError
from bertrep.tracking import registry
from bertrep.train import run
from bertrep.training import model as model_module
from bertrep.training import readout as probing
from bertrep.training.config import Runtime, TrainConfig

pytestmark = pytest.mark.slow

QUIET = Runtime(progress=False)


def small(tiny_model, data_dir, **overrides) -> TrainConfig:
    values = dict(
        base_model=str(tiny_model),
        data_dir=str(data_dir),
        max_steps=4,
        batch_size=8,
        lr=1e-3,
        max_train_examples=64,
        max_eval_examples=48,
        probe_tokens=150,
    )
    return TrainConfig(**(values | overrides))


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters(), strict=True))


def table_meta(run_id: str, artifact: str) -> dict:
    local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact)
    return json.loads(pq.read_schema(local).metadata[b"bertrep.activations"])


def artifacts(run_id: str) -> list[str]:
    return [item.path for item in list_all(run_id)]


def list_all(run_id: str, path: str | None = None) -> list:
    """Every artifact file of a run (FileInfo: path, file_size), folders walked."""
    out = []
    for item in MlflowClient().list_artifacts(run_id, path):
        out += list_all(run_id, item.path) if item.is_dir else [item]
    return out


@pytest.mark.parametrize(
    ("task", "metric"),
    [
        ("sst2", "accuracy"),
        ("stsb", "pearson"),
        ("pos", "accuracy"),
        ("mnli", "accuracy"),
        ("rte", "accuracy"),
    ],
)
def test_one_run_per_task(tiny_model, data_dir, mlflow_store, task, metric):
    cfg = small(tiny_model, data_dir, task=task, eval_every=2)
    run_id = run(cfg, QUIET)
    r = MlflowClient().get_run(run_id)
    assert r.info.status == "FINISHED"
    assert r.data.params["task"] == task and r.data.params["max_steps"] == "4"
    assert r.data.tags[tracking.TASK] == task and r.data.tags[tracking.SEED] == "0"
    assert r.data.tags[tracking.FROZEN_LAYERS] == "0" and r.data.tags[tracking.DIVERGED] in (
        "true",
        "false",
    )
    history = MlflowClient().get_metric_history(run_id, tracking.LOSS)
    assert [m.step for m in history] == [1, 2, 3, 4]
    evals = MlflowClient().get_metric_history(run_id, tracking.eval_metric(metric))
    assert [m.step for m in evals] == [2, 4]
    assert np.isfinite(r.data.metrics[tracking.NORM_SCORE])
    assert r.data.metrics[tracking.THROUGHPUT] > 0
    files = artifacts(run_id)
    table = f"activations/{task}/step_4.parquet"
    assert table in files and f"probes/{task}.parquet" in files
    # full fine-tuning from the pretrained model: a registered MLflow Model, no checkpoint
    assert r.data.tags[tracking.REGISTERED_AS] == f"models:/bertrep-{task}/1"
    assert not any(f.startswith(tracking.CHECKPOINT) for f in files)
    local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=table)
    t = pq.read_table(local)
    assert [c for c in t.column_names if c.startswith("layer_")] == [
        "layer_0",
        "layer_1",
        "layer_2",
    ]
    assert t.num_rows == 150
    meta = json.loads(t.schema.metadata[b"bertrep.activations"])
    assert meta["run_id"] == run_id and meta["step"] == 4


def test_frozen_run_stores_what_it_trained_and_loads_back_whole(
    tiny_model, data_dir, mlflow_store, tmp_path
):
    start = tmp_path / "start"
    shutil.copytree(tiny_model, start)
    cfg = small(start, data_dir, task="sst2", frozen_layers=1)
    run_id = run(cfg, QUIET)
    ckpt = Path(mlflow.artifacts.download_artifacts(f"runs:/{run_id}/checkpoint"))
    # the embeddings and block 1 are the start model's: only block 2 and the pooler stored
    assert not (ckpt / "model.safetensors").exists()
    stored = (ckpt / model_module.TRAINED_FILE).stat().st_size
    assert stored < 0.1 * (Path(tiny_model) / "model.safetensors").stat().st_size
    loaded, tokenizer, meta = model_module.load_model(f"runs:/{run_id}/checkpoint", ["sst2"])
    assert meta["base_model"] == str(start) and list(loaded.heads) == ["sst2"]
    base = AutoModel.from_pretrained(start)
    assert same_weights(loaded.encoder.embeddings, base.embeddings)
    assert same_weights(loaded.encoder.encoder.layer[0], base.encoder.layer[0])
    assert not same_weights(loaded.encoder.encoder.layer[1], base.encoder.layer[1])
    # the loaded model computes what the trained one did: its logged read-out
    ((probe, data),) = probing.probe_sets(cfg, tokenizer)
    states = probing.extract(loaded, data, probe, pad_id=tokenizer.pad_token_id)
    table = mlflow.artifacts.download_artifacts(
        run_id=run_id, artifact_path="activations/sst2/step_4.parquet"
    )
    logged = activations.read_states(table)
    np.testing.assert_allclose(states.astype(np.float16), logged, rtol=0, atol=0)
    # a start model whose frozen weights changed since is refused, not silently used
    changed = AutoModel.from_pretrained(start)
    with torch.no_grad():
        changed.embeddings.word_embeddings.weight[5] += 1.0
    changed.save_pretrained(start)
    model_module._load_pretrained.cache_clear()  # a process reads a folder once
    with pytest.raises(InputError, match="no longer holds the frozen weights"):
        model_module.load_model(f"runs:/{run_id}/checkpoint", ["sst2"])
    # the bytes it reports are those of what it stored (beside the config, written by MLflow)
    sizes = {a.path: a.file_size for a in list_all(run_id)}
    stored = sum(v for k, v in sizes.items() if k != tracking.CONFIG_FILE)
    reported = MlflowClient().get_run(run_id).data.metrics[tracking.ARTIFACT_BYTES]
    assert reported == stored and any(k.startswith(tracking.CHECKPOINT) for k in sizes)


def test_run_starts_from_another_run_and_probes_other_tasks(tiny_model, data_dir, mlflow_store):
    source = run(small(tiny_model, data_dir, task="sst2"), QUIET)
    # full fine-tuning from the pretrained model registers the source model
    uri = registry.find_registered("sst2", {tracking.SEED: "0"})
    assert uri == "models:/bertrep-sst2/1"
    assert MlflowClient().get_run(source).data.tags[tracking.REGISTERED_AS] == uri
    version = MlflowClient().get_model_version("bertrep-sst2", "1")
    assert version.run_id == source and version.tags[tracking.BASE_MODEL] == str(tiny_model)
    cfg = small(tiny_model, data_dir, task="rte", base_model=uri,
                source_task="sst2", probe_tasks="rte,sst2")  # fmt: skip
    target = run(cfg, QUIET)
    files = artifacts(target)
    assert "activations/rte/step_4.parquet" in files and "activations/sst2/step_4.parquet" in files
    table = "activations/sst2/step_4.parquet"
    # same probe set, so the two models are comparable on it
    assert table_meta(source, table)["probe_digest"] == table_meta(target, table)["probe_digest"]
    tags = MlflowClient().get_run(target).data.tags
    assert tags[tracking.SOURCE_TASK] == "sst2"
    # each probe set is a dataset input of the run, found by its digest
    inputs = MlflowClient().get_run(target).inputs.dataset_inputs
    probes = {i.dataset.name: i for i in inputs}
    assert sorted(probes) == ["rte-probe", "sst2-probe"]
    sst2 = probes["sst2-probe"]
    assert sst2.dataset.digest == tags[tracking.probe_tag("sst2")]
    assert {t.key: t.value for t in sst2.tags}["mlflow.data.context"] == "probe"
    assert json.loads(sst2.dataset.profile)["num_rows"] == 150
    found = mlflow.search_runs(
        filter_string=f"datasets.digest = '{sst2.dataset.digest}'", output_format="list"
    )
    assert sorted(r.info.run_id for r in found) == sorted([source, target])


def test_all_frozen_run_references_the_tables_it_would_extract(
    tiny_model, data_dir, mlflow_store, tmp_path
):
    source = run(small(tiny_model, data_dir, task="sst2", probe_tasks="sst2,rte"), QUIET)
    uri = MlflowClient().get_run(source).data.tags[tracking.REGISTERED_AS]
    cfg = small(tiny_model, data_dir, task="rte", base_model=uri, source_task="sst2",
                frozen_layers=2, probe_tasks="rte,sst2,stsb")  # fmt: skip
    reused = run(cfg, QUIET)
    extracted = run(cfg, Runtime(progress=False, reuse_tables=False))
    tags = MlflowClient().get_run(reused).data.tags
    # the source logged rte and sst2 on the same probe sets: referenced; stsb it never read
    assert (
        tags[tracking.activations_from_tag("rte")]
        == f"runs:/{source}/activations/rte/step_4.parquet"
    )
    assert tracking.activations_from_tag("stsb") not in tags
    files = artifacts(reused)
    assert "activations/stsb/step_4.parquet" in files
    assert not any(f.startswith(("activations/rte", "activations/sst2")) for f in files)
    assert tracking.activations_from_tag("rte") not in MlflowClient().get_run(extracted).data.tags
    store = collect.Store(cache_dir=tmp_path / "cache")
    referencing = store.train_run(store.client.get_run(reused))
    for task in ("rte", "sst2"):
        # what the reference points at is what the run writes when it extracts
        own = mlflow.artifacts.download_artifacts(
            run_id=extracted,
            artifact_path=f"activations/{task}/step_4.parquet",
            dst_path=str(tmp_path / task),
        )
        referenced = activations.read_states(store.activations(referencing, task))
        np.testing.assert_array_equal(referenced, activations.read_states(own))
    # a run that trains any layer extracts its own tables
    partly = run(dataclasses.replace(cfg, frozen_layers=1), QUIET)
    assert "activations/rte/step_4.parquet" in artifacts(partly)


def test_other_tokenizer_gets_other_probe_digest(
    tiny_model, tiny_model_other_vocab, data_dir, mlflow_store
):
    a = run(small(tiny_model, data_dir, task="sst2", save_checkpoint=False), QUIET)
    b = run(small(tiny_model_other_vocab, data_dir, task="sst2", save_checkpoint=False), QUIET)
    table = "activations/sst2/step_4.parquet"
    assert table_meta(a, table)["probe_digest"] != table_meta(b, table)["probe_digest"]
    assert "checkpoint/model.safetensors" not in artifacts(b)


def test_failed_run_is_tagged_diverged_and_kept(tiny_model, data_dir, mlflow_store):
    cfg = small(tiny_model, data_dir, task="sst2", lr=1e4, max_grad_norm=0.0, max_steps=6)
    run_id = run(cfg, QUIET)
    r = MlflowClient().get_run(run_id)
    assert r.info.status == "FINISHED"
    assert r.data.tags[tracking.DIVERGED] == "true" and r.data.tags[tracking.DIVERGED_REASON]
    assert any(p.startswith("activations/sst2/") for p in artifacts(run_id))


def test_a_crashing_run_ends_failed(tiny_model, data_dir, mlflow_store, tmp_path):
    (tmp_path / "RTE").mkdir()
    (tmp_path / "RTE" / "train.tsv").write_text(
        "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n"
    )
    (tmp_path / "RTE" / "dev.tsv").write_text(
        "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n"
    )
    cfg = small(tiny_model, tmp_path, task="rte", probe_tasks="rte,sst2")  # no sst2 data there
    with pytest.raises(FileNotFoundError, match="no sst2 validation file"):
        run(cfg, QUIET)  # found before anything is recorded: the run's key reads every file
    assert mlflow.search_runs(search_all_experiments=True, output_format="list") == []
    (tmp_path / "SST-2").mkdir()
    (tmp_path / "SST-2" / "dev.tsv").write_text("sentence\tlabel\na film\tmaybe\n")
    with pytest.raises(ValueError, match="dev.tsv.*maybe"):
        run(cfg, QUIET)  # the probe set's split is read inside the run: it ends FAILED
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert [r.info.status for r in runs] == ["FAILED"]


def test_mlflow_run_of_the_project(tiny_model, data_dir, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env["BERTREP_DATA_DIR"] = str(data_dir)
    params = {
        "task": "pos",
        "base_model": tiny_model,
        "max_steps": 3,
        "lr": 1e-3,
        "max_train_examples": 32,
        "max_eval_examples": 16,
        "probe_tokens": 100,
        "frozen_layers": 2,
    }
    cmd = [Path(sys.executable).parent / "mlflow", "run", REPO, "-e", "train"]
    cmd += ["--env-manager", "local"]
    for key, value in params.items():
        cmd += ["-P", f"{key}={value}"]
    done = subprocess.run(
        [str(c) for c in cmd], env=env, cwd=tmp_path, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    (r,) = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert r.info.status == "FINISHED"
    assert r.data.tags[tracking.FROZEN_LAYERS] == "2"
    assert "activations/pos/step_3.parquet" in artifacts(r.info.run_id)


def test_terminated_run_ends_killed(tiny_model, data_dir, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cmd = [sys.executable, "-m", "bertrep.train", "--task", "sst2", "--base_model",
           str(tiny_model), "--data_dir", str(data_dir), "--max_steps", "100000",
           "--max_train_examples", "64", "--progress", "false"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stderr=subprocess.DEVNULL)
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            try:
                runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
            except Exception:  # the store is still being created by the child
                runs = []
            if runs and tracking.LOSS in runs[0].data.metrics:  # inside the training loop
                break
            time.sleep(0.5)  # poll again; the condition, not the wait, decides
        assert proc.poll() is None, "the run ended before it could be terminated"
        proc.terminate()
        assert proc.wait(timeout=60) != 0
    finally:
        proc.kill()
    (r,) = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert r.info.status == "KILLED"


# Golden numbers of a tiny fixed case (the session's tiny BERT, seed 0, the first 64
# shuffled training examples of the real data, torch 2.13.0 CPU), as torchtune's recipe
# tests do: a change to batching, the optimiser, the schedule or the loss moves them.
GOLDEN = {
    "sst2": ([0.691435, 0.694355, 0.695922, 0.685549], 0.4791666666666667),
    "stsb": ([7.729476, 11.002924, 11.347349, 13.685897], -0.13420280814170837),
}


@pytest.mark.parametrize("task", sorted(GOLDEN))
def test_golden_losses_and_score_of_a_tiny_fixed_run(tiny_model, data_dir, mlflow_store, task):
    losses, score = GOLDEN[task]
    run_id = run(small(tiny_model, data_dir, task=task), QUIET)
    client = MlflowClient()
    history = sorted(client.get_metric_history(run_id, tracking.LOSS), key=lambda m: m.step)
    np.testing.assert_allclose([m.value for m in history], losses, rtol=2e-4)
    assert client.get_run(run_id).data.metrics[tracking.FINAL_SCORE] == pytest.approx(
        score, abs=1e-3
    )
