"""Every encoder family end to end, on a tiny random model of it (tests/encoder_families.py)
and the real data: a source run registers, a transfer from it with blocks 1..2 frozen
leaves their hidden states as the source's, a sequential run starts its B phase at the A
model, and an extract run of the registered source reproduces its run's read-out. Every
activation table holds L + 1 = 5 hidden states and says what hidden state L is. Sources
of two base models in one store keep apart, by alias and by config key."""

from __future__ import annotations

import dataclasses
import os

import mlflow
import numpy as np
import pytest
from encoder_families import FAMILY_TYPES, make_tiny_encoder
from mlflow.tracking import MlflowClient
from transformers import AutoTokenizer

from bertrep import tracking
from bertrep.data import activations
from bertrep.tracking import registry
from bertrep.train import run
from bertrep.training.config import Runtime, TrainConfig
from bertrep.training.model import load_model, minilm_path

pytestmark = pytest.mark.slow

QUIET = Runtime(progress=False)
LAYERS = 4  # the tiny encoders' blocks: L + 1 = 5 hidden states
FROZEN = 2
BUDGET = dict(
    max_steps=2,
    batch_size=8,
    lr=1e-3,  # enough for 2 updates to move the trained blocks past float16's resolution
    max_train_examples=16,
    max_eval_examples=16,
    probe_tokens=50,
    diverge_margin=0.0,  # 2 updates leave sst2 near chance: not diverged, so aliased
)


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(minilm_path())


@pytest.fixture(scope="module")
def family_store(tmp_path_factory):
    """One SQLite store for a worker's family runs (as conftest's `mlflow_store` makes
    one per test): a fresh store costs seconds of migrations, and each family's runs keep
    apart anyway, by their own base model folder (config keys, aliases, best_B)."""
    folder = tmp_path_factory.mktemp("families")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        for name in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID"):
            patch.delenv(name, raising=False)
        patch.chdir(folder)
        mlflow.set_tracking_uri(uri)
        yield uri
        while mlflow.active_run():
            mlflow.end_run()
    os.environ.pop("MLFLOW_EXPERIMENT_ID", None)  # set by MLflow, not by the patch


def table(run_id: str, task: str) -> tuple[np.ndarray, dict]:
    """The run's last activation table on `task`'s probe set: (5, N, width) states and
    its metadata."""
    client = MlflowClient()
    files = [f.path for f in client.list_artifacts(run_id, tracking.activations_dir(task))]
    last = max(files, key=tracking.activations_step)
    path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=last)
    return activations.read_states(path), activations.read_meta(path)


def assert_tables(run_id: str, tasks: list[str], family: str) -> dict[str, np.ndarray]:
    """Each probe task's table of the run: L + 1 hidden states, width 32, and metadata
    naming the model type and what hidden state L is."""
    final_norm = family == "modernbert"
    expected = "block L after the final norm (final_norm)" if final_norm else "output of block L"
    out = {}
    for task in tasks:
        states, meta = table(run_id, task)
        assert states.shape[0] == meta["num_hidden_states"] == LAYERS + 1, (family, task)
        assert meta["width"] == 32 and meta["model_type"] == family
        assert meta["last_hidden_state"] == expected
        out[task] = states.astype(np.float32)
    return out


@pytest.mark.parametrize("family", FAMILY_TYPES)
def test_a_family_runs_source_transfer_sequential_and_extract(
    family, tokenizer, tmp_path, data_dir, family_store
):
    base = make_tiny_encoder(family, tmp_path / family, tokenizer)
    # ALBERT's blocks share their weights: freezing 2 of 4 needs them untied, and the
    # source a transfer looks up is the one with the transfer's untie_blocks
    common = dict(base_model=str(base), data_dir=str(data_dir), untie_blocks=family == "albert")
    transfer = TrainConfig(
        task="pos", source_task="sst2", frozen_layers=FROZEN, probe_tasks="sst2,pos",
        **common, **BUDGET,
    )  # fmt: skip
    source = TrainConfig(**(common | BUDGET | transfer.source_fields()))
    assert source.registers_source
    source_id = run(source, QUIET)
    assert MlflowClient().get_run(source_id).info.status == "FINISHED"
    source_states = assert_tables(source_id, ["sst2"], family)["sst2"]
    uri = registry.find_source("sst2", source.key())
    assert uri == MlflowClient().get_run(source_id).data.tags[tracking.REGISTERED_AS]

    # transfer: the frozen stem and blocks 1..2 read out as the source's; block 4 trained
    transfer_id = run(dataclasses.replace(transfer, base_model=uri), QUIET)
    moved = assert_tables(transfer_id, ["sst2", "pos"], family)["sst2"]
    np.testing.assert_allclose(moved[: FROZEN + 1], source_states[: FROZEN + 1], atol=2e-3)
    assert not np.allclose(moved[LAYERS], source_states[LAYERS], atol=2e-3)

    # sequential A -> B from the pretrained encoder: B starts at the A model (drift 1)
    sequential = TrainConfig(task="pos", source_task="sst2", mode="sequential", source_steps=2,
                             checkpoints="0,1", **common, **BUDGET)  # fmt: skip
    sequential_id = run(sequential, QUIET)
    assert_tables(sequential_id, ["sst2", "pos"], family)
    for probe in ("sst2", "pos"):
        by_layer = [
            MlflowClient().get_metric_history(sequential_id, tracking.drift_metric(probe, h))
            for h in range(LAYERS + 2)
        ]  # hidden states 0..L at steps 0 and 2; no hidden state L + 1
        assert [len(series) for series in by_layer] == [2] * (LAYERS + 1) + [0]
        drift0 = [next(m.value for m in series if m.step == 0) for series in by_layer[:-1]]
        assert drift0 == pytest.approx([1.0] * (LAYERS + 1), abs=1e-5)

    # extract: the registered source, loaded back, reads out what its run logged
    extract = TrainConfig(task="sst2", mode="extract", **(common | BUDGET | {"base_model": uri}))
    extracted = assert_tables(run(extract, QUIET), ["sst2"], family)["sst2"]
    np.testing.assert_allclose(extracted, source_states, atol=2e-3)


def test_sources_of_two_base_models_keep_apart_by_alias_and_by_key(
    tokenizer, tmp_path, data_dir, mlflow_store
):
    """sst2 seed 0 on a BERT and on a RoBERTa in one store: each base model's alias names
    its own source, and a transfer from either starts from its own base model's source,
    whether it names the alias or the sweep looks the source up by config key."""
    client = MlflowClient()
    for family in ("bert", "roberta"):
        base = make_tiny_encoder(family, tmp_path / family, tokenizer)
        source = TrainConfig(task="sst2", base_model=str(base), data_dir=str(data_dir), **BUDGET)
        registered = client.get_run(run(source, QUIET)).data.tags[tracking.REGISTERED_AS]
        version = client.get_model_version_by_alias("bertrep-sst2", f"{family}-seed0")
        assert registered == f"models:/bertrep-sst2/{version.version}"
        assert version.tags[tracking.MODEL_TYPE] == family
        assert version.tags[tracking.BASE_MODEL] == str(base)
    assert set(client.get_registered_model("bertrep-sst2").aliases) == {"bert-seed0",
                                                                       "roberta-seed0"}  # fmt: skip
    for family in ("bert", "roberta"):
        transfer = TrainConfig(task="pos", source_task="sst2", base_model=str(tmp_path / family),
                               data_dir=str(data_dir), save_checkpoint=True, **BUDGET)  # fmt: skip
        source = TrainConfig(**(dataclasses.asdict(transfer) | transfer.source_fields()))
        by_key = registry.find_source("sst2", source.key())
        alias = f"models:/bertrep-sst2@{family}-seed0"
        by_alias = client.get_model_version_by_alias("bertrep-sst2", f"{family}-seed0")
        assert by_key == f"models:/bertrep-sst2/{by_alias.version}"
        run_id = run(dataclasses.replace(transfer, base_model=alias), QUIET)
        tags = client.get_run(run_id).data.tags
        assert (tags[tracking.BASE_MODEL], tags[tracking.MODEL_TYPE]) == (alias, family)
        model, _, meta = load_model(f"runs:/{run_id}/{tracking.CHECKPOINT}", [])
        assert model.encoder.config.model_type == family
        # what it started from describes itself as the sst2 source trained on this base
        assert meta["base"]["base_model"] == str(tmp_path / family)
        assert meta["base"]["heads"] == ["sst2"]
