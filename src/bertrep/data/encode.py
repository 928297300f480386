"""Tokenization (cached on disk), dynamic padding and length-grouped batches.

An `Encoded` split is ragged: one int array of token ids per example, no padding.
Tagging labels sit on each word's first sub-token; other sub-tokens and the
special tokens carry IGNORE, so they count in neither loss nor score. Which tokens are
special is the tokenizer's own word (its special-tokens mask: what its post-processor
added, [CLS]/[SEP] for BERT, <s>/</s> for RoBERTa), never a guess from token ids.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.feather as feather
import torch
from tokenizers import Tokenizer
from tokenizers.models import WordLevel

from bertrep import env
from bertrep.data.tasks import Example, TaskSpec

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

IGNORE = -100
_CACHE_VERSION = 2  # 2: the special-tokens mask is stored; tagging words get a prefix space
_MEMORY: dict[Path, Encoded] = {}  # this process's tokenized splits (never mutated)


@dataclass
class Encoded:
    """input_ids, token_type_ids: one (len_i,) int array per example.
    labels: (n,) int or float array, or for tagging one (len_i,) int array per example.
    special_tokens_mask: one (len_i,) bool array per example, True where the tokenizer
    added the token around the text (text that spells "[SEP]" is text: False)."""

    input_ids: list[np.ndarray]
    token_type_ids: list[np.ndarray]
    labels: np.ndarray | list[np.ndarray]
    special_tokens_mask: list[np.ndarray]
    key: str = ""  # identity of these exact examples (empty: unknown, never cached)

    def __len__(self) -> int:
        return len(self.input_ids)

    def lengths(self) -> np.ndarray:
        return np.fromiter((len(x) for x in self.input_ids), dtype=np.int64, count=len(self))

    def subset(self, index: np.ndarray) -> Encoded:
        labels = (
            [self.labels[i] for i in index] if isinstance(self.labels, list) else self.labels[index]
        )
        key = ""
        if self.key:
            picked = hashlib.sha256(np.asarray(index, dtype=np.int64).tobytes()).hexdigest()
            key = f"{self.key}[{picked[:16]}]"
        return Encoded(
            [self.input_ids[i] for i in index],
            [self.token_type_ids[i] for i in index],
            labels,
            [self.special_tokens_mask[i] for i in index],
            key,
        )


def tokenizer_digest(tokenizer) -> str:
    """Digest of what decides token ids: vocabulary, normalizer, pre-tokenizer (a
    byte-level one's prefix-space setting too), specials.

    Truncation and padding state is dropped: the backend tokenizer carries whatever the
    last call set, and it does not change the vocabulary.
    """
    state = json.loads(tokenizer.backend_tokenizer.to_str())
    state.pop("truncation", None)
    state.pop("padding", None)
    return hashlib.sha256(json.dumps(state, sort_keys=True).encode()).hexdigest()[:16]


def for_words(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """The tokenizer to call on words (`is_split_into_words=True`). A byte-level BPE one
    (RoBERTa, GPT-2, ModernBERT) reads a word start from the space before it, and words
    come without one: they must get the prefix space, so each word is tokenized as it
    would be mid-sentence. Only a copy gets it: whole texts keep the tokenizer's own rule
    (RoBERTa's first word has no space). Others (WordPiece, SentencePiece's Metaspace,
    which already prefixes each word) come back as they are."""
    backend = tokenizer.backend_tokenizer
    if backend.pre_tokenizer is None:
        return tokenizer
    state = json.loads(backend.pre_tokenizer.__getstate__())
    if not _add_prefix_space(state):
        return tokenizer
    # a pre-tokenizer is built from its JSON through a tokenizer that has nothing else
    empty = json.loads(Tokenizer(WordLevel()).to_str())
    words = copy.deepcopy(tokenizer)
    words.backend_tokenizer.pre_tokenizer = Tokenizer.from_str(
        json.dumps(empty | {"pre_tokenizer": state})
    ).pre_tokenizer
    return words


def _add_prefix_space(node) -> bool:
    """Turn on add_prefix_space in every ByteLevel step of a pre-tokenizer's JSON (also
    inside a Sequence); whether any was off."""
    children = node if isinstance(node, list) else []
    if isinstance(node, dict):
        children = list(node.values())
    changed = [_add_prefix_space(child) for child in children]  # visits every step
    if isinstance(node, dict) and node.get("type") == "ByteLevel":
        changed.append(not node.get("add_prefix_space", False))
        node["add_prefix_space"] = True
    return any(changed)


def encode(spec: TaskSpec, examples: list[Example], tokenizer, max_length: int) -> Encoded:
    """Tokenize examples (truncated to max_length tokens, specials included)."""
    if spec.kind == "tagging":
        enc = for_words(tokenizer)(
            [list(ex.texts) for ex in examples],
            is_split_into_words=True,
            truncation=True,
            max_length=max_length,
            return_special_tokens_mask=True,
        )
        labels = []
        for i, ex in enumerate(examples):
            word_ids = enc.word_ids(i)
            lab = np.full(len(word_ids), IGNORE, dtype=np.int64)
            previous = None
            for pos, w in enumerate(word_ids):
                if w is not None and w != previous:
                    lab[pos] = ex.label[w]  # type: ignore[index]
                previous = w
            labels.append(lab)
    else:
        columns = list(zip(*(ex.texts for ex in examples), strict=True))
        enc = tokenizer(
            *columns, truncation=True, max_length=max_length, return_special_tokens_mask=True
        )
        dtype = np.float32 if spec.kind == "regression" else np.int64
        labels = np.asarray([ex.label for ex in examples], dtype=dtype)
    ids = [np.asarray(x, dtype=np.int32) for x in enc["input_ids"]]
    if "token_type_ids" in enc:
        types = [np.asarray(x, dtype=np.int8) for x in enc["token_type_ids"]]
    else:
        types = [np.zeros_like(x, dtype=np.int8) for x in ids]
    special = [np.asarray(x, dtype=bool) for x in enc["special_tokens_mask"]]
    return Encoded(ids, types, labels, special)


def cache_dir() -> Path:
    return env.cache_root() / "tokenized"


def encode_cached(
    spec: TaskSpec, examples: list[Example], source: str, tokenizer, max_length: int
) -> Encoded:
    """`encode`, cached on disk by (task, source file and its mtime/size, tokenizer, length)."""
    stamp = source
    if os.path.isfile(source):
        st = os.stat(source)
        stamp = f"{os.path.abspath(source)}:{st.st_size}:{st.st_mtime_ns}"
    key = hashlib.sha256(
        json.dumps(
            [
                _CACHE_VERSION,
                spec.name,
                stamp,
                len(examples),
                tokenizer_digest(tokenizer),
                max_length,
                *([spec.digest, spec.labels] if spec.own else []),  # an edited task file
            ]
        ).encode()
    ).hexdigest()[:24]
    path = cache_dir() / f"{spec.name}-{key}.arrow"
    if path in _MEMORY:  # a sweep worker runs many trials on the same data
        return _MEMORY[path]
    if path.is_file():
        try:
            _MEMORY[path] = _read_encoded(path, spec.kind == "tagging")
            _MEMORY[path].key = key
            return _MEMORY[path]
        except (OSError, pa.ArrowInvalid):
            path.unlink(missing_ok=True)  # a torn write from a killed run: redo it
    encoded = encode(spec, examples, tokenizer, max_length)
    _write_encoded(path, encoded)
    encoded.key = key
    _MEMORY[path] = encoded
    return encoded


def _ragged(arrays: list[np.ndarray], dtype) -> pa.ListArray:
    offsets = np.zeros(len(arrays) + 1, dtype=np.int32)
    np.cumsum([len(a) for a in arrays], out=offsets[1:])
    flat = np.concatenate(arrays).astype(dtype) if arrays else np.zeros(0, dtype)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat))


def _unragged(column: pa.ChunkedArray) -> list[np.ndarray]:
    array = column.combine_chunks()
    offsets = array.offsets.to_numpy()
    flat = array.values.to_numpy(zero_copy_only=False)
    return [flat[a:b] for a, b in zip(offsets[:-1], offsets[1:], strict=True)]


def _write_encoded(path: Path, e: Encoded) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    labels = _ragged(e.labels, np.int64) if isinstance(e.labels, list) else pa.array(e.labels)
    table = pa.table(
        {
            "input_ids": _ragged(e.input_ids, np.int32),
            "token_type_ids": _ragged(e.token_type_ids, np.int8),
            "labels": labels,
            "special_tokens_mask": _ragged(e.special_tokens_mask, np.bool_),
        }
    )
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    feather.write_feather(table, tmp)
    os.replace(tmp, path)  # atomic: readers never see half a file


def _read_encoded(path: Path, tagging: bool) -> Encoded:
    table = feather.read_table(path, memory_map=False)
    labels = _unragged(table["labels"]) if tagging else table["labels"].to_numpy()
    return Encoded(
        _unragged(table["input_ids"]),
        _unragged(table["token_type_ids"]),
        labels,
        _unragged(table["special_tokens_mask"]),
    )


def collate(
    data: Encoded,
    index: np.ndarray | list[int],
    pad_id: int,
    prefix: list[torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Pad the examples at `index` to the longest of them. With `prefix` (one (len_i, h)
    tensor of frozen-prefix outputs per example) the batch carries `prefix_states`."""
    width = max(len(data.input_ids[i]) for i in index)
    n = len(index)
    ids = np.full((n, width), pad_id, dtype=np.int64)
    types = np.zeros((n, width), dtype=np.int64)
    mask = np.zeros((n, width), dtype=np.int64)
    for row, i in enumerate(index):
        length = len(data.input_ids[i])
        ids[row, :length] = data.input_ids[i]
        types[row, :length] = data.token_type_ids[i]
        mask[row, :length] = 1
    batch = {
        "input_ids": torch.from_numpy(ids),
        "token_type_ids": torch.from_numpy(types),
        "attention_mask": torch.from_numpy(mask),
    }
    if isinstance(data.labels, list):
        labels = np.full((n, width), IGNORE, dtype=np.int64)
        for row, i in enumerate(index):
            labels[row, : len(data.labels[i])] = data.labels[i]
        batch["labels"] = torch.from_numpy(labels)
    else:
        batch["labels"] = torch.from_numpy(data.labels[np.asarray(index)])
    if prefix is not None:
        batch["prefix_states"] = torch.nn.utils.rnn.pad_sequence(
            [prefix[i] for i in index], batch_first=True
        )
    return batch


class LengthGroupedBatches:
    """Batch sampler for training: shuffle, sort by length within mega-batches of `group`
    batches (less padding), shuffle the batches. Each pass is a new epoch, a new order."""

    def __init__(self, lengths: np.ndarray, batch_size: int, seed: int, group: int = 50):
        self.lengths, self.batch_size, self.group = lengths, batch_size, group
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return -(-len(self.lengths) // self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        order = self.rng.permutation(len(self.lengths))
        size, mega = self.batch_size, self.batch_size * self.group
        batches = []
        for start in range(0, len(order), mega):
            chunk = order[start : start + mega]
            chunk = chunk[np.argsort(-self.lengths[chunk], kind="stable")]
            batches += [chunk[i : i + size] for i in range(0, len(chunk), size)]
        for b in self.rng.permutation(len(batches)):
            yield batches[b].tolist()


def eval_batches(data: Encoded, batch_size: int) -> list[np.ndarray]:
    """Fixed batches in length order (least padding); callers restore example order."""
    order = np.argsort(data.lengths(), kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
