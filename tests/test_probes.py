"""Probe sets: deterministic, special-free, and named by what decides them."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from transformers import AutoTokenizer

from bertrep.data.encode import encode, tokenizer_digest
from bertrep.data.probe_sets import ProbeSet, build_probe_set
from bertrep.data.tasks import Example, get_task

SENTENCES = [
    Example((f"the film number {i} is good and not bad at all",), i % 2) for i in range(40)
]


def probe(tokenizer, examples=SENTENCES, **overrides):
    data = encode(get_task("sst2"), examples, tokenizer, 64)
    kwargs = dict(
        task="sst2",
        split="validation",
        file="mem",
        tokenizer_digest=tokenizer_digest(tokenizer),
        max_length=64,
        n_tokens=100,
        seed=0,
    )
    return build_probe_set(data, **(kwargs | overrides)), data


def test_probe_rows_are_sorted_special_free_and_reproducible(tiny_model):
    tok = AutoTokenizer.from_pretrained(tiny_model)
    p, data = probe(tok)
    q, _ = probe(tok)
    assert len(p) == 100 and p.digest == q.digest
    np.testing.assert_array_equal(p.position, q.position)
    keys = p.sentence * 1000 + p.position
    assert (np.diff(keys) > 0).all()
    assert not set(p.token_id.tolist()) & {tok.cls_token_id, tok.sep_token_id, tok.pad_token_id}
    for s, pos, t in zip(p.sentence, p.position, p.token_id, strict=True):
        assert data.input_ids[s][pos] == t


def test_digest_follows_every_input(tiny_model, tiny_model_other_vocab):
    tok = AutoTokenizer.from_pretrained(tiny_model)
    base = probe(tok)[0].digest
    assert probe(tok, seed=1)[0].digest != base
    assert probe(tok, n_tokens=50)[0].digest != base
    assert probe(tok, max_length=63)[0].digest != base
    assert probe(tok, file="elsewhere")[0].digest == base  # where the file lies is not identity
    assert probe(tok, examples=SENTENCES[:-1])[0].digest != base
    other = AutoTokenizer.from_pretrained(tiny_model_other_vocab)
    assert probe(other)[0].digest != base


def test_small_split_takes_every_token(tiny_model):
    tok = AutoTokenizer.from_pretrained(tiny_model)
    p, data = probe(tok, examples=SENTENCES[:2], n_tokens=10_000)
    assert len(p) == sum(len(ids) - 2 for ids in data.input_ids)
    assert p.meta["rows"] == len(p) and p.meta["available"] == len(p)


def test_table_round_trip(tiny_model):
    p, _ = probe(AutoTokenizer.from_pretrained(tiny_model))
    table = p.to_table()
    assert isinstance(table, pa.Table)
    q = ProbeSet.from_table(table)
    assert q.digest == p.digest
    np.testing.assert_array_equal(q.token_id, p.token_id)


def every_token(data, tokenizer, task: str) -> list[tuple[int, int]]:
    """(sentence, position) of every probe candidate of `data`: a probe set that takes
    all of them."""
    p = build_probe_set(data, task=task, split="validation", file="mem",
                        tokenizer_digest=tokenizer_digest(tokenizer), max_length=128,
                        n_tokens=10**9, seed=0)  # fmt: skip
    return list(zip(p.sentence.tolist(), p.position.tolist(), strict=True))


def test_bpe_probe_set_leaves_out_exactly_the_added_specials(tiny_bpe_tokenizer):
    tok = AutoTokenizer.from_pretrained(tiny_bpe_tokenizer)
    words = ["EU", "rejects", "German", "lamb"]
    tagged = [Example(words[: 1 + i % 4], [0] * (1 + i % 4)) for i in range(8)]
    pairs = [Example(("a man is slicing a tomato", "someone cuts it"), 1.0)] * 3
    for task, examples in (("sst2", SENTENCES[:8]), ("pos", tagged), ("stsb", pairs)):
        data = encode(get_task(task), examples, tok, 64)
        ids = [x.tolist() for x in data.input_ids]
        added = {tok.convert_tokens_to_ids(t) for t in ("<s>", "</s>")}
        expected = [(s, i) for s, x in enumerate(ids) for i, t in enumerate(x) if t not in added]
        assert every_token(data, tok, task) == expected
        assert all(x[0] == tok.cls_token_id and x[-1] == tok.sep_token_id for x in ids)
        # a pair holds </s></s> between its texts: both added, both left out
        assert len(expected) == sum(len(x) - (4 if task == "stsb" else 2) for x in ids)


@pytest.mark.parametrize("task", ["sst2", "stsb", "pos"])
def test_bert_mask_picks_the_positions_the_id_rule_did(data_dir, task):
    from bertrep.data.tasks import load_split
    from bertrep.training.model import minilm_path

    tok = AutoTokenizer.from_pretrained(minilm_path())
    spec = get_task(task)
    examples, _ = load_split(spec, spec.eval_split, data_dir=data_dir)
    data = encode(spec, examples, tok, 128)
    # the rule before the special-tokens mask: every id but [CLS], [SEP] and [PAD]
    excluded = [tok.cls_token_id, tok.sep_token_id, tok.pad_token_id]
    before = [(s, int(i)) for s, ids in enumerate(data.input_ids)
              for i in np.flatnonzero(~np.isin(ids, excluded))]  # fmt: skip
    assert len(before) > 10_000
    assert every_token(data, tok, task) == before
