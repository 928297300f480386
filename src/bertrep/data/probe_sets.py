"""Probe sets: the fixed tokens on which every model of a comparison is read out.

For task T: tokens of T's validation split (after tokenization and truncation),
excluding the special tokens the tokenizer adds around the text (its special-tokens
mask: [CLS] and [SEP] for BERT, <s> and </s> for RoBERTa; [UNK] is text); N of them
drawn uniformly without replacement over (sentence, position) with a seeded generator,
then sorted by (sentence, position). The digest names everything that decides the
selection (task, split, the split's tokens, tokenizer, max length, N, seed, rule), so two
models can be compared on a probe set only if they share the digest.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from bertrep.data.encode import Encoded

SELECTION_RULE = "uniform-without-replacement over (sentence, position), no specials; v1"


@dataclass
class ProbeSet:
    """sentence, position, token_id: (N,) arrays in row order; meta: what made them."""

    sentence: np.ndarray
    position: np.ndarray
    token_id: np.ndarray
    meta: dict

    @property
    def digest(self) -> str:
        return self.meta["digest"]

    def __len__(self) -> int:
        return len(self.sentence)

    def to_table(self) -> pa.Table:
        table = pa.table(
            {
                "sentence": pa.array(self.sentence, pa.int32()),
                "position": pa.array(self.position, pa.int32()),
                "token_id": pa.array(self.token_id, pa.int32()),
            }
        )
        return table.replace_schema_metadata({"bertrep.probe": json.dumps(self.meta)})

    @classmethod
    def from_table(cls, table: pa.Table) -> ProbeSet:
        meta = json.loads(table.schema.metadata[b"bertrep.probe"])
        cols = {c: table[c].to_numpy() for c in ("sentence", "position", "token_id")}
        return cls(**cols, meta=meta)


def build_probe_set(
    encoded: Encoded,
    *,
    task: str,
    split: str,
    file: str,
    tokenizer_digest: str,
    max_length: int,
    n_tokens: int,
    seed: int,
    task_digest: str = "",
) -> ProbeSet:
    """Draw the probe tokens of one split. Fewer than n_tokens available: take them all.
    `task_digest`: an own task file's content digest (its labels, columns, metric), part
    of the identity; built-in tasks have none, so their digests stay as they were."""
    sentence, position, token_id = [], [], []
    # Only the tokens the tokenizer added are left out. For BERT these are the positions
    # the rule once found by id ([CLS], [SEP], [PAD]; Encoded holds no padding) wherever
    # the text does not spell one, so the digests made before stay as they were.
    for i, (ids, special) in enumerate(
        zip(encoded.input_ids, encoded.special_tokens_mask, strict=True)
    ):
        keep = np.flatnonzero(~special)
        sentence.append(np.full(len(keep), i, dtype=np.int64))
        position.append(keep)
        token_id.append(ids[keep])
    sentence, position, token_id = map(np.concatenate, (sentence, position, token_id))
    total = len(sentence)
    if total == 0:
        raise ValueError(f"{task} {split} ({file}) has no tokens to probe")
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(total, size=min(n_tokens, total), replace=False))
    # Candidates are enumerated in (sentence, position) order, so sorting the draw
    # sorts the rows by (sentence, position) too.
    meta = {
        "task": task,
        "split": split,
        "file": file,
        "tokenizer": tokenizer_digest,
        "max_length": max_length,
        "n_tokens": n_tokens,
        "seed": seed,
        "rule": SELECTION_RULE,
    }
    if task_digest:
        meta["task_digest"] = task_digest
    # The data's own tokens enter the identity too: the same split name read from
    # another file (a sample, a different release) is another probe set.
    data = hashlib.sha256(np.concatenate(encoded.input_ids).astype(np.int32).tobytes())
    meta["data"] = data.hexdigest()[:16]
    identity = {k: v for k, v in meta.items() if k != "file"}  # where it lies is no identity
    meta["digest"] = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    meta["rows"] = int(len(pick))
    meta["available"] = int(total)
    return ProbeSet(sentence[pick], position[pick], token_id[pick], meta)
