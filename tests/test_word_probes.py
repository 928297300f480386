"""Word probe sets and word tables: the same drawn words whatever the tokenizer, each
word's vector by its rule, and the CKA across two models on the words both kept."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from bertrep.analysis.across import _pair_rows, by_base_model, slug
from bertrep.data import activations
from bertrep.data.tasks import Example, get_task
from bertrep.data.word_probes import build_word_probe_set, word_spans
from bertrep.maths.cka import cka_profile
from bertrep.training.model import load_model, minilm_path
from bertrep.training.readout import extract_words

PAIRS = [
    Example(("an unbelievable film .", "a film"), 1.0),
    Example(("dull", "tedious and far too long"), 0.0),
    Example(("it works", "yes"), 0.5),
]


@pytest.fixture(scope="module")
def minilm_tokenizer():
    return AutoTokenizer.from_pretrained(minilm_path())


def test_the_draw_depends_on_words_seed_and_rule_only():
    stsb = get_task("stsb")
    one = build_word_probe_set(stsb, PAIRS, split="validation", n_words=6, seed=0, rule="first")
    again = build_word_probe_set(stsb, PAIRS, split="validation", n_words=6, seed=0, rule="first")
    assert one.digest == again.digest and one.meta["available"] == 15  # 4+2 + 1+5 + 2+1 words
    assert np.array_equal(one.sentence, again.sentence)
    assert np.array_equal(one.position, again.position)
    rows = list(zip(one.sentence.tolist(), one.position.tolist(), strict=True))
    assert rows == sorted(rows) and len(set(rows)) == 6
    mean = build_word_probe_set(stsb, PAIRS, split="validation", n_words=6, seed=0, rule="mean")
    assert mean.digest != one.digest and np.array_equal(mean.position, one.position)
    with pytest.raises(ValueError, match="word rule 'last' is not one of first, mean"):
        build_word_probe_set(stsb, PAIRS, split="validation", n_words=6, seed=0, rule="last")


def test_word_spans_map_each_word_of_both_texts_to_its_tokens(minilm_tokenizer):
    encodings, spans = word_spans(minilm_tokenizer, get_task("stsb"), PAIRS[:1], 128)
    tokens = minilm_tokenizer.convert_ids_to_tokens(encodings[0]["input_ids"])
    words = [[tokens[p] for p in positions] for positions in spans[0]]
    assert words == [["an"], ["unbelievable"], ["film"], ["."], ["a"], ["film"]]
    _, short = word_spans(minilm_tokenizer, get_task("stsb"), PAIRS[1:2], 6)
    # [CLS] dull [SEP] ted ##ious [SEP]: the second text's last four words are cut
    assert [len(p) for p in short[0]] == [1, 2, 0, 0, 0, 0]
    _, partial = word_spans(minilm_tokenizer, get_task("stsb"), PAIRS[1:2], 5)
    # [CLS] dull [SEP] ted [SEP]: "tedious" lost a sub-token, so it has no vector either
    assert [len(p) for p in partial[0]] == [1, 0, 0, 0, 0, 0]


def test_bpe_words_and_wordpiece_words_are_the_same_rows(minilm_tokenizer, tiny_bpe_tokenizer):
    bpe = AutoTokenizer.from_pretrained(tiny_bpe_tokenizer)
    task = get_task("stsb")
    _, wordpiece_spans = word_spans(minilm_tokenizer, task, PAIRS, 128)
    _, bpe_spans = word_spans(bpe, task, PAIRS, 128)
    for a, b in zip(wordpiece_spans, bpe_spans, strict=True):
        assert len(a) == len(b) and all(a) and all(b)  # every word, on both sides
    assert [len(p) for p in bpe_spans[0]] != [len(p) for p in wordpiece_spans[0]]


@pytest.mark.parametrize("rule", ["first", "mean"])
def test_a_words_vector_is_its_first_sub_token_or_their_mean(tiny_model, rule):
    model, tokenizer, _ = load_model(str(tiny_model), [])
    task = get_task("stsb")
    probe = build_word_probe_set(task, PAIRS, split="validation", n_words=15, seed=0, rule=rule)
    kept, states = extract_words(model, tokenizer, probe, PAIRS, max_length=128, pad_id=0)
    assert len(kept) == 15 and states.shape == (3, 15, 32)
    encodings, spans = word_spans(tokenizer, task, PAIRS, 128)
    model.eval()
    for row in range(len(kept)):
        s, w = int(kept.sentence[row]), int(kept.position[row])
        batch = {k: torch.tensor([v]) for k, v in encodings[s].items()}
        with torch.no_grad():
            hidden = torch.stack(model.hidden_states(**batch))[:, 0, spans[s][w]]
        want = hidden[:, 0] if rule == "first" else hidden.mean(1)
        np.testing.assert_allclose(states[:, row], want.numpy(), rtol=0, atol=1e-5)
        assert kept.token_id[row] == encodings[s]["input_ids"][spans[s][w][0]]


def test_a_table_of_no_kept_words_is_written_and_compares_with_none(tiny_model, tmp_path):
    model, tokenizer, _ = load_model(str(tiny_model), [])
    sst2 = [Example(("a gripping film",), 1), Example(("dull",), 0)]
    probe = build_word_probe_set(get_task("sst2"), sst2, split="validation", n_words=4,
                                 seed=0, rule="mean")  # fmt: skip
    kept, states = extract_words(model, tokenizer, probe, sst2, max_length=2, pad_id=0)
    assert len(kept) == 0 and states.shape == (3, 0, 32)  # [CLS] [SEP]: no word
    path = activations.write_table(tmp_path / "none.parquet", states, kept, {})
    assert activations.read_meta(path)["rows"] == 0
    assert _pair_rows([path, path], ["biased"]) == []


def test_cross_model_cka_uses_the_words_both_kept(tmp_path, tiny_model):
    """Two tables with different kept words: the CKA is that of the shared rows, and a
    table against itself has 1 on the diagonal."""
    rng = np.random.default_rng(0)
    task = get_task("stsb")
    probe = build_word_probe_set(task, PAIRS, split="validation", n_words=14, seed=0,
                                 rule="first")  # fmt: skip
    assert len(probe) == 14
    states = rng.normal(size=(3, 14, 8)).astype(np.float32)
    other = rng.normal(size=(2, 14, 5)).astype(np.float32)
    keep_b = np.arange(14) != 3  # b lost word 3 to truncation
    b_probe = type(probe)(probe.sentence[keep_b], probe.position[keep_b],
                          probe.token_id[keep_b], probe.meta)  # fmt: skip
    a = activations.write_table(tmp_path / "a.parquet", states, probe, {"word_rule": "first"})
    b = activations.write_table(tmp_path / "b.parquet", other[:, keep_b], b_probe, {})
    rows = _pair_rows([a, b], ["biased"])
    assert {r["words"] for r in rows} == {13} and len(rows) == 3 * 2
    stored = [x.astype(np.float16).astype(np.float64) for x in (states, other)]  # as kept
    want = cka_profile(stored[0][:, keep_b], stored[1][:, keep_b])
    got = np.array([[r["cka"] for r in rows if r["layer_a"] == i] for i in range(3)])
    np.testing.assert_allclose(got, want, rtol=1e-6)
    same = _pair_rows([a, a], ["biased"])
    assert [r["cka"] for r in same if r["layer_a"] == r["layer_b"]] == pytest.approx([1.0] * 3)


def test_base_models_are_named_by_folder_and_a_clash_is_refused():
    assert slug("answerdotai/ModernBERT-base") == "modernbert-base"
    assert slug("/models/My Model/") == "my-model"

    class Run:
        def __init__(self, root):
            self.root_model = root

    groups = by_base_model([Run("/b/x"), Run("/a/y"), Run("/b/x")])
    assert list(groups) == ["/a/y", "/b/x"] and len(groups["/b/x"]) == 2
    with pytest.raises(ValueError, match="base models /a/x and /b/x would share the folder"):
        by_base_model([Run("/a/x"), Run("/b/x")])


def test_one_model_spelled_two_ways_is_one_base_model(tiny_model, tmp_path, monkeypatch):
    """A folder by its content: an absolute and a relative spelling, and a moved copy,
    are one base model, named by the first spelling met."""
    import shutil

    shutil.copytree(tiny_model, tmp_path / "copy")
    monkeypatch.chdir(tiny_model.parent)

    class Run:
        def __init__(self, root):
            self.root_model = root

    runs = [Run(str(tiny_model)), Run(tiny_model.name), Run(str(tmp_path / "copy"))]
    assert by_base_model(runs) == {str(tiny_model): runs}
