"""The frozen-prefix cache: the same numbers as running the prefix, computed once."""

from __future__ import annotations

import os
import shutil
import time

import pytest
import torch
from mlflow.tracking import MlflowClient
from transformers import AutoTokenizer

from bertrep import env, tracking
from bertrep.data.encode import collate, encode
from bertrep.data.tasks import Example, get_task
from bertrep.train import run
from bertrep.training import prefix
from bertrep.training.config import Runtime, TrainConfig
from bertrep.training.model import load_model


@pytest.fixture
def setup(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv(env.CACHE_DIR, str(tmp_path / "cache"))
    prefix.clear()
    model, tok, _ = load_model(str(tiny_model), ["sst2"])
    examples = [Example((" ".join(["word"] * (2 + i % 7)) + f" {i}",), i % 2) for i in range(20)]
    data = encode(get_task("sst2"), examples, AutoTokenizer.from_pretrained(tiny_model), 32)
    data.key = "twenty-sentences"
    yield model, tok, data
    prefix.clear()


def states_of(model, data, tok, memory_gb=1.0, disk_gb=1.0, uses=100):
    return prefix.prefix_states(model, data, tok.pad_token_id, memory_gb, disk_gb, uses)


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
    one = states_of(model, data, tok)
    for got, want in zip(one, direct(model, data, tok, 1), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    model.freeze(2)
    two = states_of(model, data, tok)
    for got, want in zip(two, direct(model, data, tok, 2), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert states_of(model, data, tok) is two


def test_nothing_cached_without_frozen_layers_identity_or_room(setup):
    model, tok, data = setup
    assert states_of(model, data, tok) is None
    model.freeze(1)
    assert states_of(model, data, tok, memory_gb=1e-9, disk_gb=1e-9) is None
    # fewer than half as many examples read as there are to precompute: not worth it
    assert states_of(model, data, tok, uses=9) is None
    data.key = ""
    assert states_of(model, data, tok) is None


def test_forward_from_the_prefix_matches_the_full_forward(setup):
    model, tok, data = setup
    model.freeze(1)
    states = states_of(model, data, tok)
    model.eval()
    batch = collate(data, [0, 5, 9], tok.pad_token_id, states)
    batch.pop("labels")
    cached = model("sst2", **batch)
    batch.pop("prefix_states")
    torch.testing.assert_close(cached, model("sst2", **batch), rtol=1e-5, atol=1e-5)


def test_an_entry_on_disk_serves_a_fresh_process_bit_for_bit(setup):
    model, tok, data = setup
    model.freeze(2)
    computed = [t.clone() for t in states_of(model, data, tok)]
    (stored,) = prefix.folder().glob("*.npz")
    prefix.clear()  # what a new worker process holds: nothing
    # uses=0 would never compute: these states can only come from the file
    again = states_of(model, data, tok, uses=0)
    assert len(again) == len(computed)
    assert all(torch.equal(a, b) for a, b in zip(again, computed, strict=True))
    prefix.clear()
    assert states_of(model, data, tok, disk_gb=0.0, uses=0) is None  # no disk: not read
    assert list(prefix.folder().glob("*.npz")) == [stored]


def test_an_entry_is_named_by_the_frozen_weights_not_the_path(setup, tiny_model, tmp_path):
    model, tok, data = setup
    model.freeze(1)
    first = prefix.entry_ids(model.encoder, data.key, 1)[1]
    copy = shutil.copytree(tiny_model, tmp_path / "elsewhere")
    moved, _, _ = load_model(str(copy), ["sst2"])
    moved.freeze(1)
    assert prefix.entry_ids(moved.encoder, data.key, 1)[1] == first
    with torch.no_grad():  # a block above the prefix: the same prefix
        next(moved.encoder.encoder.layer[1].parameters()).add_(1.0)
    assert prefix.entry_ids(moved.encoder, data.key, 1)[1] == first
    with torch.no_grad():  # block 1 itself: another prefix
        next(moved.encoder.encoder.layer[0].parameters()).add_(1.0)
    assert prefix.entry_ids(moved.encoder, data.key, 1)[1] != first
    assert prefix.entry_ids(model.encoder, "other data", 1)[1] != first


def test_the_disk_budget_evicts_the_least_recently_used(setup):
    model, tok, data = setup
    model.freeze(1)
    paths = []
    for i, key in enumerate(("a", "b", "c")):
        data.key = key
        states_of(model, data, tok)
        (path,) = set(prefix.folder().glob("*.npz")) - set(paths)
        os.utime(path, ns=(10**18 + i, 10**18 + i))  # written in this order, long ago
        paths.append(path)
    prefix.clear()
    data.key = "a"
    assert states_of(model, data, tok, uses=0) is not None  # read: now the most recent
    size = paths[0].stat().st_size
    assert prefix.evict(2 * size + size // 2) == [paths[1]]  # b: least recently used
    assert sorted(prefix.folder().glob("*.npz")) == sorted([paths[0], paths[2]])
    data.key = "d"  # a new entry over a budget of one: only it stays
    states_of(model, data, tok, disk_gb=1.5 * size / 2**30)
    assert len(list(prefix.folder().glob("*.npz"))) == 1
    assert not list(prefix.folder().glob("*.partial"))


def test_damaged_entries_and_killed_writers_leave_no_trace(setup):
    model, tok, data = setup
    model.freeze(1)
    states_of(model, data, tok)
    (entry,) = prefix.folder().glob("*.npz")
    entry.write_bytes(b"not a zip")  # torn, or written by something else
    prefix.clear()
    assert states_of(model, data, tok, uses=0) is None and not entry.exists()
    stale, fresh = prefix.folder() / "a.1.partial", prefix.folder() / "b.2.partial"
    stale.write_bytes(b"x" * 10)
    fresh.write_bytes(b"x" * 10)
    old = time.time() - prefix.STALE_PARTIAL_S - 60
    os.utime(stale, (old, old))
    assert prefix.evict(2**30) == [stale] and fresh.exists()


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
        run_id = run(cfg, Runtime(progress=False, prefix_cache_gb=gb, prefix_disk_gb=0.0))
        history = MlflowClient().get_metric_history(run_id, tracking.LOSS)
        losses.append([m.value for m in sorted(history, key=lambda m: m.step)])
    assert len(losses[0]) == 6
    assert losses[0] == pytest.approx(losses[1], rel=1e-4, abs=1e-5)
