"""Tokenization, its cache, padding and batching."""

from __future__ import annotations

import numpy as np
import pytest
from transformers import AutoTokenizer

from bertrep.data import encode as enc
from bertrep.data.tasks import Example, get_task


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    return AutoTokenizer.from_pretrained(tiny_model)


def test_tagging_labels_sit_on_first_subtokens(tokenizer):
    spec = get_task("pos")
    ex = Example(["Nonchalantly", "EU", "rejects"], [1, 2, 3])
    data = enc.encode(spec, [ex], tokenizer, max_length=32)
    ids, labels = data.input_ids[0], data.labels[0]
    tokens = tokenizer.convert_ids_to_tokens(ids.tolist())
    scored = [(t, int(lab)) for t, lab in zip(tokens, labels, strict=True) if lab != enc.IGNORE]
    assert [lab for _, lab in scored] == [1, 2, 3]
    assert all(not t.startswith("##") for t, _ in scored)
    assert len(tokens) > len(scored) + 2  # "nonchalantly" splits, and [CLS]/[SEP] are ignored
    assert labels[0] == enc.IGNORE and labels[-1] == enc.IGNORE


def test_pairs_truncate_and_carry_segments(tokenizer):
    spec = get_task("rte")
    long = " ".join(["word"] * 200)
    data = enc.encode(spec, [Example((long, "short one"), 0)], tokenizer, max_length=24)
    assert len(data.input_ids[0]) == 24
    assert set(data.token_type_ids[0].tolist()) == {0, 1}


def test_cache_round_trip_and_reuse(tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv("BERTREP_CACHE_DIR", str(tmp_path))
    spec = get_task("pos")
    examples = [Example(["EU", "rejects", "German"], [22, 42, 16]), Example(["Peter"], [22])]
    first = enc.encode_cached(spec, examples, "in-memory", tokenizer, 32)
    files = list((tmp_path / "tokenized").glob("pos-*.arrow"))
    assert len(files) == 1
    mtime = files[0].stat().st_mtime_ns
    second = enc.encode_cached(spec, examples, "in-memory", tokenizer, 32)
    assert files[0].stat().st_mtime_ns == mtime  # read, not rewritten
    for a, b in zip(first.input_ids + first.labels, second.input_ids + second.labels, strict=True):
        np.testing.assert_array_equal(a, b)
    enc.encode_cached(spec, examples, "in-memory", tokenizer, 16)  # another key
    assert len(list((tmp_path / "tokenized").glob("pos-*.arrow"))) == 2


def test_collate_pads_and_masks(tokenizer):
    spec = get_task("sst2")
    data = enc.encode(spec, [Example(("a b c d e",), 1), Example(("a",), 0)], tokenizer, 32)
    batch = enc.collate(data, [0, 1], tokenizer.pad_token_id)
    assert batch["input_ids"].shape == (2, 7)
    assert batch["attention_mask"].sum(1).tolist() == [7, 3]
    assert (batch["input_ids"][1, 3:] == tokenizer.pad_token_id).all()
    assert batch["labels"].tolist() == [1, 0]


def test_length_grouped_batches_cover_each_epoch_once():
    lengths = np.random.default_rng(0).integers(3, 60, size=1003)
    sampler = enc.LengthGroupedBatches(lengths, batch_size=16, seed=1, group=4)
    first, second = list(sampler), list(sampler)
    for epoch in (first, second):
        assert sorted(i for b in epoch for i in b) == list(range(1003))
        assert len(epoch) == len(sampler)
    assert first != second  # a new order each epoch
    # grouped: the mean length spread within a batch is far below random batching
    spread = np.mean([np.ptp(lengths[b]) for b in first if len(b) > 1])
    assert spread < 0.5 * np.ptp(lengths)


def test_tokenizer_digest_ignores_truncation_state(tokenizer, tiny_model_other_vocab):
    before = enc.tokenizer_digest(tokenizer)
    tokenizer(["some text"], truncation=True, max_length=5)
    assert enc.tokenizer_digest(tokenizer) == before
    other = AutoTokenizer.from_pretrained(tiny_model_other_vocab)
    assert enc.tokenizer_digest(other) != before
