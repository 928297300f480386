"""Freezing as docs/definitions.md defines it, heads, and checkpoints that load back."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from bertrep.data.tasks import get_task
from bertrep.training.model import TaskModel, load_model, loss_fn, save_checkpoint


def batch(tokenizer, n=3):
    enc = tokenizer(
        ["a good film", "a bad one here", "fine"][:n], padding=True, return_tensors="pt"
    )
    return dict(enc)


def trainable_blocks(model: TaskModel) -> list[bool]:
    blocks = model.encoder.encoder.layer
    return [all(p.requires_grad for p in b.parameters()) for b in blocks]


@pytest.mark.parametrize("k", [0, 1, 2])
def test_freeze_marks_embeddings_and_first_k_blocks(tiny_model, k):
    model, _, _ = load_model(str(tiny_model), ["sst2"])
    model.freeze(k)
    embeddings_trainable = all(p.requires_grad for p in model.encoder.embeddings.parameters())
    assert embeddings_trainable == (k == 0)
    assert trainable_blocks(model) == [i >= k for i in range(model.num_layers)]
    assert all(p.requires_grad for p in model.heads.parameters())
    model.train()
    frozen = [model.encoder.embeddings, *model.encoder.encoder.layer[:k]] if k else []
    assert all(not m.training for f in frozen for m in f.modules())  # no dropout there
    assert all(m.training for m in model.encoder.encoder.layer[k:].modules())


def test_frozen_prefix_gets_no_gradient_and_no_dropout(tiny_model):
    model, tok, _ = load_model(str(tiny_model), ["sst2"])
    model.freeze(1)
    model.train()
    inputs = batch(tok)
    # the frozen prefix is deterministic in training mode: no dropout below block 2
    first = model.hidden_states(**inputs)[1]
    second = model.hidden_states(**inputs)[1]
    torch.testing.assert_close(first, second)
    loss = loss_fn(get_task("sst2"), model("sst2", **inputs), torch.tensor([1, 0, 1]))
    loss.backward()
    assert all(p.grad is None for p in model.encoder.embeddings.parameters())
    assert all(p.grad is None for p in model.encoder.encoder.layer[0].parameters())
    assert all(p.grad is not None for p in model.encoder.encoder.layer[1].parameters())


def test_all_layers_frozen_trains_only_heads_and_range_is_checked(tiny_model):
    model, _, _ = load_model(str(tiny_model), ["pos"])
    model.freeze(model.num_layers)
    assert not any(trainable_blocks(model))
    with pytest.raises(ValueError, match="frozen_layers=3 is outside 0..2"):
        model.freeze(3)


def test_heads_shapes(tiny_model):
    model, tok, _ = load_model(str(tiny_model), ["sst2", "stsb", "pos", "mnli"])
    inputs = batch(tok)
    width = inputs["input_ids"].shape[1]
    assert model("sst2", **inputs).shape == (3, 2)
    assert model("stsb", **inputs).shape == (3, 1)
    assert model("mnli", **inputs).shape == (3, 3)
    assert model("pos", **inputs).shape == (3, width, 47)


def test_checkpoint_round_trip(tiny_model, tmp_path):
    model, tok, _ = load_model(str(tiny_model), ["sst2"])
    model.eval()
    inputs = batch(tok)
    expected = model("sst2", **inputs)
    save_checkpoint(model, tok, tmp_path / "ckpt", {"task": "sst2"})
    # an ordinary Hugging Face folder ...
    encoder = AutoModel.from_pretrained(tmp_path / "ckpt")
    AutoTokenizer.from_pretrained(tmp_path / "ckpt")
    torch.testing.assert_close(
        encoder(**inputs).last_hidden_state, model.encoder(**inputs).last_hidden_state
    )
    # ... and with our heads: the sst2 head comes back, a new task gets a fresh one
    again, _, meta = load_model(str(tmp_path / "ckpt"), ["sst2", "pos"])
    again.eval()
    assert meta["task"] == "sst2" and meta["heads"] == ["sst2"]
    torch.testing.assert_close(again("sst2", **inputs), expected)
    assert "pos" in again.heads


def test_missing_local_model_is_one_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="base_model folder ./nowhere does not exist"):
        load_model("./nowhere", ["sst2"])


@pytest.mark.parametrize(("head_lr", "head_rate"), [(0.0, 1e-4), (3e-3, 3e-3)])
def test_heads_train_at_head_lr_and_the_encoder_at_lr(tiny_model, tmp_path, head_lr, head_rate):
    """Past warm-up the optimizer's groups hold lr for every trainable encoder weight and
    head_lr (when set) for every head weight; frozen weights are in no group."""
    from accelerate import Accelerator

    from bertrep.training.config import Runtime, TrainConfig
    from bertrep.training.loop import Context, make_optimizer

    model, _, _ = load_model(str(tiny_model), ["sst2"])
    model.freeze(1)
    cfg = TrainConfig(lr=1e-4, head_lr=head_lr, warmup_ratio=0.0)
    ctx = Context(cfg, Accelerator(cpu=True), None, 0, "", tmp_path, Runtime())
    optimizer, _ = make_optimizer(ctx, model, steps=10)
    rates = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    heads = {id(p) for p in [*model.heads.parameters(), *model.encoder.pooler.parameters()]}
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert set(rates) == trainable
    assert sorted({rates[i] for i in heads}) == pytest.approx([head_rate])
    assert sorted({rates[i] for i in trainable - heads}) == pytest.approx([1e-4])
