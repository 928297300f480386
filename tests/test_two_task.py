"""Two-task training on a tiny model: sequential A -> B and shuffled A + B log the
checkpoint series, both scores and per-layer CKA on both probe sets at every checkpoint."""

from __future__ import annotations

import mlflow
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from bertrep import tracking
from bertrep.data import activations
from bertrep.tracking import registry
from bertrep.train import alone_on_a, checkpoint_steps, run
from bertrep.training.config import Runtime, TrainConfig
from bertrep.training.model import load_model

pytestmark = pytest.mark.slow

QUIET = Runtime(progress=False)
STEPS = [0, 1, 3, 5, 7, 10]  # the default fractions of 10 updates


def two_task(tiny_model, data_dir, **overrides) -> TrainConfig:
    values = dict(
        base_model=str(tiny_model),
        data_dir=str(data_dir),
        task="pos",
        source_task="sst2",
        mode="sequential",
        max_steps=10,
        source_steps=4,
        batch_size=8,
        lr=1e-3,
        max_train_examples=64,
        max_eval_examples=32,
        probe_tokens=120,
        save_checkpoint=False,
    )
    return TrainConfig(**(values | overrides))


def history(run_id: str, key: str) -> dict[int, float]:
    return {m.step: m.value for m in MlflowClient().get_metric_history(run_id, key)}


def artifact_names(run_id: str, path: str) -> list[str]:
    return sorted(a.path.rsplit("/", 1)[-1] for a in MlflowClient().list_artifacts(run_id, path))


def assert_checkpoint_series(run_id: str, source: str, target: str) -> None:
    for key in (tracking.eval_metric("accuracy"), tracking.eval_metric("accuracy", source)):
        assert sorted(history(run_id, key)) == STEPS, key
    for key in (tracking.eval_metric("norm_score"), tracking.eval_metric("norm_score", source)):
        assert sorted(history(run_id, key)) == STEPS, key
    for probe in (source, target):
        for layer in range(3):  # embeddings + 2 blocks
            drift = history(run_id, tracking.drift_metric(probe, layer))
            assert sorted(drift) == STEPS
            assert all(0.0 <= v <= 1.0 + 1e-9 for v in drift.values())
        expected = sorted(f"step_{s}.parquet" for s in STEPS)
        assert artifact_names(run_id, tracking.activations_dir(probe)) == expected


def test_checkpoint_schedule():
    cfg = TrainConfig(max_steps=2000)
    assert checkpoint_steps(cfg) == [0, 200, 600, 1000, 1400, 2000]
    assert checkpoint_steps(TrainConfig(max_steps=10, checkpoints="0.5")) == [5, 10]


def test_sequential_run_trains_a_then_b(tiny_model, data_dir, mlflow_store):
    run_id = run(two_task(tiny_model, data_dir), QUIET)
    r = MlflowClient().get_run(run_id)
    assert r.info.status == "FINISHED" and r.data.tags[tracking.MODE] == "sequential"
    assert sorted(history(run_id, tracking.phase_metric(tracking.A_PHASE, "loss"))) == [1, 2, 3, 4]
    assert sorted(history(run_id, tracking.LOSS)) == list(range(1, 11))
    assert_checkpoint_series(run_id, "sst2", "pos")
    for probe in ("sst2", "pos"):
        # the start of the B phase is the A-tuned reference itself
        for layer in range(3):
            assert history(run_id, tracking.drift_metric(probe, layer))[0] == pytest.approx(1.0)
        # B-phase updates move the blocks (the embeddings too: nothing is frozen)
        assert history(run_id, tracking.drift_metric(probe, 2))[10] < 1.0


def test_sequential_from_a_registered_model_keeps_its_head(tiny_model, data_dir, mlflow_store):
    single = TrainConfig(base_model=str(tiny_model), data_dir=str(data_dir), task="sst2",
                         max_steps=3, batch_size=8, max_train_examples=32, max_eval_examples=32,
                         probe_tokens=120)  # fmt: skip
    source_run = run(single, QUIET)
    uri = registry.find_registered("sst2", {tracking.SEED: "0"})
    cfg = two_task(tiny_model, data_dir, base_model=uri, frozen_layers=1, save_checkpoint=True)
    run_id = run(cfg, QUIET)
    assert history(run_id, tracking.phase_metric(tracking.A_PHASE, "loss")) == {}  # A phase skipped
    # Two heads fit no Hugging Face class: the run's checkpoint loads with both, and the B
    # phase never touched A's head, so it is the registered model's.
    both, _, meta = load_model(f"runs:/{run_id}/{tracking.CHECKPOINT}", [])
    assert list(both.heads) == meta["heads"] == ["sst2", "pos"]
    source, _, _ = load_model(uri, [])
    assert torch.equal(both.heads["sst2"].out.weight, source.heads["sst2"].out.weight)
    start = history(run_id, tracking.eval_metric("accuracy", "sst2"))[0]
    registered = MlflowClient().search_runs(
        [MlflowClient().get_run(run_id).info.experiment_id], "tags.mode = 'single'"
    )[0]
    assert start == pytest.approx(registered.data.metrics[tracking.eval_metric("accuracy")])
    # the B phase's first tables are the registered model's read-out (same probe set)
    step0 = mlflow.artifacts.download_artifacts(
        run_id=run_id, artifact_path="activations/sst2/step_0.parquet"
    )
    own = mlflow.artifacts.download_artifacts(
        run_id=source_run, artifact_path="activations/sst2/step_3.parquet"
    )
    np.testing.assert_array_equal(activations.read_states(step0), activations.read_states(own))
    # frozen embeddings and block 1 do not move: CKA 1 there at every checkpoint
    for probe in ("sst2", "pos"):
        for layer in (0, 1):
            drift = history(run_id, tracking.drift_metric(probe, layer))
            assert all(v == pytest.approx(1.0, abs=1e-6) for v in drift.values())


def test_shuffled_run_mixes_both_tasks(tiny_model, data_dir, mlflow_store):
    cfg = two_task(tiny_model, data_dir, mode="shuffled", sampling="uniform")
    # Another A model of the same base and seed, trained differently, is not the reference
    other = TrainConfig(base_model=str(tiny_model), data_dir=str(data_dir), task="sst2",
                        max_steps=3, batch_size=8, max_train_examples=32, max_eval_examples=32,
                        probe_tokens=100)  # fmt: skip
    run(other, QUIET)
    with pytest.raises(ValueError, match="needs a model fine-tuned on sst2 alone"):
        run(cfg, QUIET)
    reference = alone_on_a(cfg)  # tuned on A alone with this run's settings
    assert reference.registers_source and reference.task == "sst2" and reference.mode == "single"
    run(reference, QUIET)  # found in the registry by its config key
    run_id = run(cfg, QUIET)
    r = MlflowClient().get_run(run_id)
    assert r.info.status == "FINISHED" and r.data.tags[tracking.MODE] == "shuffled"
    assert_checkpoint_series(run_id, "sst2", "pos")


def test_shuffled_without_reference_is_a_clear_error(tiny_model, data_dir, mlflow_store):
    with pytest.raises(ValueError, match="shuffled mode needs a model fine-tuned on sst2 alone"):
        run(two_task(tiny_model, data_dir, mode="shuffled"), QUIET)
