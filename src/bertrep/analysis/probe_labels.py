"""What each probe token is: its task label and its token subgroup, for subgroup profiles
and LogME. Activation tables hold only (sentence, position, token id), so the probe set
is rebuilt from the data folder and the tokenizer, and used only if its digest equals
the tables' (same data, tokenizer, length, N, seed and rule): labels never come from
other data than the activations did.

    labels = probe_labels("pos", digest, root_model, params)   # or MissingInput

Per row: `label` (the sentence's class or score; for tagging the tag of the word the
token belongs to) and `group`: "first" (a word's first sub-token, from the tokenizer's
word ids) or "continuation" (its other pieces: for BERT's WordPiece the `##` ones).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from bertrep.analysis.collect import MissingInput
from bertrep.data.encode import IGNORE, encode_cached, tokenizer_digest
from bertrep.data.probe_sets import build_probe_set
from bertrep.data.tasks import get_task, load_split


@dataclass(frozen=True)
class ProbeLabels:
    """label: (N,) float64 task label per probe row; group: (N,) str token subgroup;
    tag: (N,) str tag name for tagging tasks (else empty strings); kind: the task's;
    sentence: (N,) the rows' sentences; digest: the probe set's."""

    label: np.ndarray
    group: np.ndarray
    tag: np.ndarray
    kind: str
    sentence: np.ndarray
    digest: str


def probe_labels(task: str, digest: str, root_model: str, params: dict) -> ProbeLabels:
    """Labels of the rows of probe set `digest`, rebuilt from the data folder with the
    tokenizer of `root_model` and the probe settings in `params` (a training run's)."""
    try:
        settings = tuple(int(float(params[k])) for k in ("max_length", "probe_tokens",
                                                          "probe_seed"))  # fmt: skip
    except (KeyError, ValueError) as error:
        why = f"{task} probe labels: the run lacks its probe settings ({error})"
        raise MissingInput(why) from None
    # where the run read its data: its data_dir (else $BERTREP_DATA_DIR), and its own
    # task's files if it named them
    files = params.get("data_files", "") if params.get("task") == task else ""
    return _labels(task, digest, root_model, settings, params.get("data_dir", ""), files)


@lru_cache(maxsize=8)
def _labels(task, digest, root_model, settings, data_dir: str, data_files: str) -> ProbeLabels:
    from transformers import AutoTokenizer

    from bertrep.training.model import resolve_model_path

    max_length, n_tokens, seed = settings
    spec = get_task(task)
    try:
        tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(root_model))
        examples, file = load_split(
            spec, spec.eval_split, data_dir=data_dir or None, data_files=data_files or None
        )
    except (OSError, ValueError) as error:
        raise MissingInput(f"{task} probe labels: {error}") from None
    data = encode_cached(spec, examples, file, tokenizer, max_length)  # the runs' cache
    probe = build_probe_set(
        data, task=task, split=spec.eval_split, file=file,
        tokenizer_digest=tokenizer_digest(tokenizer), max_length=max_length,
        n_tokens=n_tokens, seed=seed, task_digest=spec.digest,
    )  # fmt: skip
    if probe.digest != digest:
        raise MissingInput(
            f"{task} probe labels: the data folder's {file} gives probe set {probe.digest}, "
            f"the activation tables are of {digest} (other data or tokenizer)"
        )
    if spec.kind == "tagging":
        tags = [_word_tags(data.labels[s]) for s in probe.sentence]
        label = np.array([t[p] for t, p in zip(tags, probe.position, strict=True)], np.float64)
        first = np.array([data.labels[s][p] != IGNORE for s, p in zip(probe.sentence,
                          probe.position, strict=True)])  # fmt: skip
        tag = np.array([spec.labels[int(v)] for v in label])
    else:
        label = np.asarray(data.labels, dtype=np.float64)[probe.sentence]
        starts = _word_starts(spec, examples, tokenizer, max_length)
        first = np.array([starts[s][p] for s, p in zip(probe.sentence, probe.position,
                                                         strict=True)])  # fmt: skip
        tag = np.full(len(label), "", dtype=object)
    group = np.where(first, "first", "continuation")
    return ProbeLabels(label, group, np.asarray(tag, dtype=str), spec.kind, probe.sentence, digest)


def _word_starts(spec, examples, tokenizer, max_length: int) -> list[np.ndarray]:
    """Per example, whether each token opens a word (the tokenizer's own word ids, per
    text of a pair), tokenized as `encode` does (the digest check guards that)."""
    columns = list(zip(*(ex.texts for ex in examples), strict=True))
    enc = tokenizer(*columns, truncation=True, max_length=max_length)
    out = []
    for i in range(len(examples)):
        word = list(zip(enc.word_ids(i), enc.sequence_ids(i), strict=True))  # (word, text)
        opens = [w[0] is not None and (p == 0 or word[p - 1] != w) for p, w in enumerate(word)]
        out.append(np.array(opens))
    return out


def _word_tags(labels: np.ndarray) -> np.ndarray:
    """Each position's word tag: a continuation piece takes the tag before it; special
    tokens (IGNORE before any word) stay IGNORE."""
    out = labels.copy()
    for i in range(1, len(out)):
        if out[i] == IGNORE:
            out[i] = out[i - 1]
    return out
