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
    for a, b in zip(first.special_tokens_mask, second.special_tokens_mask, strict=True):
        assert a.dtype == b.dtype == bool
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


# What the code before the special-tokens mask and for_words gave for MiniLM's tokenizer
# (bert-base-uncased vocabulary): BERT's encodings must not move.
BERT_WORDS = Example(
    ["Nonchalantly", "EU", "rejects", "German", "[UNK]", "call"], [1, 2, 3, 4, 5, 6]
)
BERT_PAIR = Example(("A man is slicing a tomato.", "Someone cuts a tomato with a knife."), 3.5)
BERT_BEFORE = {
    ("pos", 8): ([101, 2512, 18598, 15706, 7327, 19164, 2446, 102], [0] * 8,
                 [-100, 1, -100, -100, 2, 3, 4, -100]),
    ("pos", 64): ([101, 2512, 18598, 15706, 7327, 19164, 2446, 100, 2655, 102], [0] * 10,
                  [-100, 1, -100, -100, 2, 3, 4, 5, 6, -100]),
    ("stsb", 64): ([101, 1037, 2158, 2003, 26514, 1037, 20856, 1012, 102, 2619, 7659, 1037,
                    20856, 2007, 1037, 5442, 1012, 102], [0] * 9 + [1] * 9, [3.5]),
    ("stsb", 12): ([101, 1037, 2158, 2003, 26514, 102, 2619, 7659, 1037, 20856, 2007, 102],
                   [0] * 6 + [1] * 6, [3.5]),
}  # fmt: skip


@pytest.mark.parametrize(("task", "max_length"), list(BERT_BEFORE))
def test_bert_encodings_are_unchanged(task, max_length):
    from bertrep.training.model import minilm_path

    tok = AutoTokenizer.from_pretrained(minilm_path())
    assert enc.for_words(tok) is tok  # WordPiece: nothing to add
    example = BERT_WORDS if task == "pos" else BERT_PAIR
    data = enc.encode(get_task(task), [example], tok, max_length)
    ids, types, labels = BERT_BEFORE[task, max_length]
    assert data.input_ids[0].tolist() == ids and data.token_type_ids[0].tolist() == types
    got = data.labels[0] if task == "pos" else data.labels
    assert got.tolist() == labels
    # the same as a plain call of the tokenizer, and the mask marks [CLS] and [SEP] only
    texts = [example.texts] if task == "pos" else example.texts
    plain = tok(*texts, is_split_into_words=task == "pos", truncation=True, max_length=max_length)
    assert plain["input_ids"] == ids
    special = np.isin(ids, [tok.cls_token_id, tok.sep_token_id])
    np.testing.assert_array_equal(data.special_tokens_mask[0], special)


def test_bpe_tagging_gives_each_word_its_mid_sentence_ids(tiny_bpe_tokenizer):
    tok = AutoTokenizer.from_pretrained(tiny_bpe_tokenizer)
    words = ["Nonchalantly", "EU", "rejects", "lamb", "Brussels"]
    data = enc.encode(get_task("pos"), [Example(words, [1, 2, 3, 4, 5])], tok, 64)
    ids, labels = data.input_ids[0].tolist(), data.labels[0].tolist()
    # mid-sentence each word follows a space: its ids are those of " word"
    pieces = [tok(" " + w, add_special_tokens=False)["input_ids"] for w in words]
    assert ids == [tok.cls_token_id, *sum(pieces, []), tok.sep_token_id]
    assert pieces[1:] == [
        tok(f"{words[i - 1]} {w}", add_special_tokens=False)["input_ids"][-len(pieces[i]) :]
        for i, w in enumerate(words[1:], 1)
    ]  # the same ids as in a real sentence
    assert pieces[0] != tok(words[0], add_special_tokens=False)["input_ids"]  # the test bites
    starts = np.cumsum([1] + [len(p) for p in pieces[:-1]])
    expected = np.full(len(ids), enc.IGNORE)
    expected[starts] = [1, 2, 3, 4, 5]
    assert labels == expected.tolist()  # one label per word, on its first sub-token
    assert all(tok.convert_ids_to_tokens(ids[s]).startswith("Ġ") for s in starts)
    assert data.special_tokens_mask[0].tolist() == [True] + [False] * (len(ids) - 2) + [True]
    # the loaded tokenizer is left as it was: whole texts keep RoBERTa's own rule
    assert tok.backend_tokenizer.pre_tokenizer.add_prefix_space is False
    cut = enc.encode(get_task("pos"), [Example(words, [1, 2, 3, 4, 5])], tok, 6)
    assert (cut.labels[0] != enc.IGNORE).sum() < len(words)  # truncation drops words


def test_tokenizer_digest_tells_the_prefix_space_apart(tiny_bpe_tokenizer):
    tok = AutoTokenizer.from_pretrained(tiny_bpe_tokenizer)
    spaced = AutoTokenizer.from_pretrained(tiny_bpe_tokenizer, add_prefix_space=True)
    sentence = "EU rejects lamb"
    assert tok(sentence)["input_ids"] != spaced(sentence)["input_ids"]
    digest = enc.tokenizer_digest(tok)
    assert enc.tokenizer_digest(spaced) != digest
    words = enc.for_words(tok)
    assert enc.tokenizer_digest(words) != digest
    pre = words.backend_tokenizer.pre_tokenizer.__getstate__()
    assert pre == spaced.backend_tokenizer.pre_tokenizer.__getstate__()
    assert enc.for_words(spaced) is spaced  # already on: nothing to change
    assert enc.tokenizer_digest(tok) == digest  # for_words changed a copy only
