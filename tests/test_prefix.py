"""The frozen-prefix cache: the same numbers as running the prefix, computed once."""

from __future__ import annotations

import pytest
import torch
from mlflow.tracking import MlflowClient
from transformers import AutoTokenizer

from bertrep import tracking
from bertrep.data.encode import collate, encode
from bertrep.data.tasks import Example, get_task
from bertrep.train import run
from bertrep.training import prefix
from bertrep.training.config import Runtime, TrainConfig
from bertrep.training.model import load_model


@pytest.fixture
def setup(tiny_model):
    prefix.clear()
    model, tok, _ = load_model(str(tiny_model), ["sst2"])
    examples = [Example((" ".join(["word"] * (2 + i % 7)) + f" {i}",), i % 2) for i in range(20)]
    data = encode(get_task("sst2"), examples, AutoTokenizer.from_pretrained(tiny_model), 32)
    data.key = "twenty-sentences"
    yield model, tok, data
    prefix.clear()


def direct(model, data, tok, layer: int) -> list[torch.Tensor]:
    model.eval()
    with torch.no_grad():
        out = []
        for i in range(len(data)):
            batch = collate(data, [i], tok.pad_token_id)
            batch.pop("labels")
            out.append(model.hidden_states(**batch)[layer][0])
    return out


def test_states_equal_the_running_prefix_and_deeper_k_builds_on_shallower(setup):
    model, tok, data = setup
    model.freeze(1)
    one = prefix.prefix_states(model, data, "tiny", tok.pad_token_id, max_gb=1.0, uses=100)
    for got, want in zip(one, direct(model, data, tok, 1), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    model.freeze(2)
    two = prefix.prefix_states(model, data, "tiny", tok.pad_token_id, max_gb=1.0, uses=100)
    for got, want in zip(two, direct(model, data, tok, 2), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert prefix.prefix_states(model, data, "tiny", tok.pad_token_id, max_gb=1.0, uses=100) is two


def test_nothing_cached_without_frozen_layers_identity_or_room(setup):
    model, tok, data = setup
    assert prefix.prefix_states(model, data, "tiny", tok.pad_token_id, max_gb=1.0, uses=100) is None
    model.freeze(1)
    assert (
        prefix.prefix_states(model, data, "tiny", tok.pad_token_id, max_gb=1e-9, uses=100) is None
    )
    # fewer examples read than there are to precompute: not worth it
    assert prefix.prefix_states(model, data, "tiny", tok.pad_token_id, max_gb=1.0, uses=19) is None
    data.key = ""
    assert prefix.prefix_states(model, data, "tiny", tok.pad_token_id, max_gb=1.0, uses=100) is None


def test_forward_from_the_prefix_matches_the_full_forward(setup):
    model, tok, data = setup
    model.freeze(1)
    states = prefix.prefix_states(model, data, "tiny", tok.pad_token_id, max_gb=1.0, uses=100)
    model.eval()
    batch = collate(data, [0, 5, 9], tok.pad_token_id, states)
    batch.pop("labels")
    cached = model("sst2", **batch)
    batch.pop("prefix_states")
    torch.testing.assert_close(cached, model("sst2", **batch), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_training_with_and_without_the_cache_agree(tiny_model, data_dir, mlflow_store):
    cfg = TrainConfig(
        base_model=str(tiny_model), data_dir=str(data_dir), task="pos", frozen_layers=1,
        max_steps=6, batch_size=8, lr=1e-3, max_train_examples=48, max_eval_examples=32,
        probe_tokens=100, save_checkpoint=False,
    )  # fmt: skip
    losses = []
    for gb in (0.0, 1.0):
        prefix.clear()
        run_id = run(cfg, Runtime(progress=False, prefix_cache_gb=gb))
        history = MlflowClient().get_metric_history(run_id, tracking.LOSS)
        losses.append([m.value for m in sorted(history, key=lambda m: m.step)])
    assert len(losses[0]) == 6
    assert losses[0] == pytest.approx(losses[1], rel=1e-4, abs=1e-5)
