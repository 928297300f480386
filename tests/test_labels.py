"""Probe-token labels rebuilt from the data folder (bertrep.analysis.probe_labels): the
rebuilt probe set must be the tables' (same digest), each row gets its sentence's label or
its word's tag, and its subgroup (first sub-token or continuation)."""

import numpy as np
import pytest
from transformers import AutoTokenizer

from bertrep.analysis.collect import MissingInput
from bertrep.analysis.probe_labels import probe_labels
from bertrep.data.encode import IGNORE
from bertrep.training.config import TrainConfig
from bertrep.training.readout import probe_sets


def _probe(task, tiny_model, data_dir):
    cfg = TrainConfig(task=task, base_model=str(tiny_model), data_dir=str(data_dir),
                      max_length=48, probe_tokens=300, probe_seed=3)  # fmt: skip
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    ((probe, data),) = probe_sets(cfg, tokenizer)
    params = {"max_length": "48", "probe_tokens": "300", "probe_seed": "3"}
    return probe, data, tokenizer, params


def test_tagging_rows_carry_their_words_tag_and_group(tiny_model, data_dir, monkeypatch):
    monkeypatch.setenv("BERTREP_DATA_DIR", str(data_dir))
    probe, data, _, params = _probe("pos", tiny_model, data_dir)
    labels = probe_labels("pos", probe.digest, str(tiny_model), params)
    assert len(labels.label) == len(probe) == 300 and labels.digest == probe.digest
    np.testing.assert_array_equal(labels.sentence, probe.sentence)
    for i, (s, p) in enumerate(zip(probe.sentence, probe.position, strict=True)):
        tags = data.labels[s]
        first = tags[p] != IGNORE
        assert labels.group[i] == ("first" if first else "continuation")
        start = p if first else max(q for q in range(p) if tags[q] != IGNORE)
        assert labels.label[i] == tags[start]
    assert {"first", "continuation"} == set(labels.group)
    assert labels.tag[0] and len(set(labels.tag)) > 5  # POS tag names, e.g. NN


@pytest.mark.parametrize("task", ["sst2", "mnli"])
def test_sentence_rows_carry_the_sentence_label_and_wordpiece_group(
    task, tiny_model, data_dir, monkeypatch
):
    # the run's own data_dir is used (no $BERTREP_DATA_DIR); groups come from the
    # tokenizer's word ids, which for BERT's WordPiece open a word at every non-## piece
    monkeypatch.delenv("BERTREP_DATA_DIR", raising=False)
    probe, data, tokenizer, params = _probe(task, tiny_model, data_dir)
    params |= {"data_dir": str(data_dir), "task": task}
    labels = probe_labels(task, probe.digest, str(tiny_model), params)
    np.testing.assert_array_equal(labels.label, np.asarray(data.labels)[probe.sentence])
    pieces = tokenizer.convert_ids_to_tokens(probe.token_id.tolist())
    expected = ["continuation" if t.startswith("##") else "first" for t in pieces]
    assert list(labels.group) == expected and "continuation" in expected


def test_labels_from_other_data_are_refused(tiny_model, data_dir, monkeypatch):
    monkeypatch.setenv("BERTREP_DATA_DIR", str(data_dir))
    probe, _, _, params = _probe("sst2", tiny_model, data_dir)
    with pytest.raises(MissingInput, match="the activation tables are of 0000"):
        probe_labels("sst2", "0000", str(tiny_model), params)
    other = params | {"probe_seed": "4"}  # another draw is another probe set
    with pytest.raises(MissingInput, match="other data or tokenizer"):
        probe_labels("sst2", probe.digest, str(tiny_model), other)
