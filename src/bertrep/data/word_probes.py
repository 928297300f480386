"""Word probe sets: fixed words on which models with different tokenizers are compared.

Token probe sets (`probe_sets`) belong to one tokenizer: their rows are token
positions. Two encoder families split the same sentence into different tokens, so a
comparison across families reads words instead. For task T: the words of T's validation
split (a tagging task's own words; a sentence's whitespace-separated words, both texts
of a pair in order), N of them drawn uniformly without replacement over (sentence, word)
with a seeded generator, sorted by (sentence, word). The draw depends on no tokenizer.

A model's vector for a word is read by `rule`: `first` (the word's first sub-token, as
tagging labels sit) or `mean` (the mean over its sub-tokens). The rule is part of the
digest. A word the tokenizer truncated away has no vector: each model's word table holds
the rows it kept, and a comparison uses the rows both sides kept.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np

from bertrep.data.encode import for_words
from bertrep.data.probe_sets import ProbeSet
from bertrep.data.tasks import Example, TaskSpec

WORD_RULES = ("first", "mean")
SELECTION_RULE = "uniform-without-replacement over (sentence, word), whitespace words; v1"


def sentence_words(spec: TaskSpec, example: Example) -> tuple[list[str], ...]:
    """The words of each of the example's texts (one list for tagging and single texts)."""
    if spec.kind == "tagging":
        return (list(example.texts),)
    return tuple(str(text).split() for text in example.texts)


def build_word_probe_set(
    spec: TaskSpec,
    examples: list[Example],
    *,
    split: str,
    n_words: int,
    seed: int,
    rule: str,
) -> ProbeSet:
    """Draw the probe words of one split: rows (sentence, word index over the sentence's
    texts in order). `token_id` is -1 here; a model's table records its first sub-token."""
    if rule not in WORD_RULES:
        raise ValueError(f"word rule {rule!r} is not one of {', '.join(WORD_RULES)}")
    words = [sentence_words(spec, ex) for ex in examples]
    counts = np.array([sum(len(text) for text in w) for w in words], dtype=np.int64)
    total = int(counts.sum())
    if total == 0:
        raise ValueError(f"{spec.name} {split} has no words to probe")
    sentence = np.repeat(np.arange(len(words)), counts)
    word = np.concatenate([np.arange(c) for c in counts])
    pick = np.sort(np.random.default_rng(seed).choice(total, min(n_words, total), replace=False))
    meta = {
        "task": spec.name,
        "split": split,
        "n_words": n_words,
        "seed": seed,
        "word_rule": rule,
        "rule": SELECTION_RULE,
        "data": hashlib.sha256(json.dumps(words).encode()).hexdigest()[:16],
    }
    if spec.own:
        meta["task_digest"] = spec.digest
    meta["digest"] = hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:16]
    meta |= {"rows": int(len(pick)), "available": total}
    return ProbeSet(sentence[pick], word[pick], np.full(len(pick), -1), meta)


def word_spans(
    tokenizer, spec: TaskSpec, examples: list[Example], max_length: int
) -> tuple[list[dict], list[list[list[int]]]]:
    """Each example tokenized from its words (`for_words`: byte-level tokenizers get the
    prefix space), and for each of its words the token positions it became: [] where
    truncation cut the word, wholly or in part (a word's vector needs all of it).
    Returns (encodings as dicts of id lists, spans)."""
    words_tokenizer = for_words(tokenizer)
    encodings, spans = [], []
    for example in examples:
        texts = sentence_words(spec, example)
        enc = words_tokenizer(
            *texts, is_split_into_words=True, truncation=True, max_length=max_length
        )
        whole = _positions(words_tokenizer(*texts, is_split_into_words=True), texts)
        cut = _positions(enc, texts)
        encodings.append(dict(enc))
        spans.append([p if len(p) == len(w) else [] for p, w in zip(cut, whole, strict=True)])
    return encodings, spans


def _positions(enc, texts: tuple[list[str], ...]) -> list[list[int]]:
    """The token positions of each word of `texts` (over both texts, in order) in `enc`."""
    offsets = np.cumsum([0, *(len(t) for t in texts)])
    positions: list[list[int]] = [[] for _ in range(offsets[-1])]
    for pos, (seq, w) in enumerate(zip(enc.sequence_ids(), enc.word_ids(), strict=True)):
        if w is not None and seq is not None:
            positions[offsets[seq] + w].append(pos)
    return positions
