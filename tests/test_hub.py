"""The Hugging Face hub path, offline: `datasets` objects built with the hub datasets'
own schemas (feature names, ClassLabel names in the hub's order, split names), filled
with rows of the local files, load to the same examples as the local-folder path.

The schemas below are written out as the hub publishes them (nyu-mll/glue configs,
eriktks/conll2003's Parquet export), not derived from bertrep's task table: a label
order that disagreed with the hub would fail here.
"""

from __future__ import annotations

import datasets
import pytest

from bertrep.data.tasks import get_task, hub_examples, load_split

GLUE_SPLITS = {
    "sst2": ["train", "validation", "test"],
    "stsb": ["train", "validation", "test"],
    "rte": ["train", "validation", "test"],
    "mnli": ["train", "validation_matched", "validation_mismatched", "test_matched",
             "test_mismatched"],
}  # fmt: skip
GLUE_LABELS = {  # ClassLabel names, index order, as on the hub
    "sst2": ["negative", "positive"],
    "mnli": ["entailment", "neutral", "contradiction"],
    "rte": ["entailment", "not_entailment"],
}
GLUE_TEXTS = {
    "sst2": ["sentence"],
    "stsb": ["sentence1", "sentence2"],
    "rte": ["sentence1", "sentence2"],
    "mnli": ["premise", "hypothesis"],
}
# How the local GLUE TSVs spell a label, where it is not the hub's name.
TSV_NAMES = {"sst2": {"0": "negative", "1": "positive"}}
CONLL_POS = ['"', "''", "#", "$", "(", ")", ",", ".", ":", "``", "CC", "CD", "DT", "EX",
             "FW", "IN", "JJ", "JJR", "JJS", "LS", "MD", "NN", "NNP", "NNPS", "NNS", "NN|SYM",
             "PDT", "POS", "PRP", "PRP$", "RB", "RBR", "RBS", "RP", "SYM", "TO", "UH", "VB",
             "VBD", "VBG", "VBN", "VBP", "VBZ", "WDT", "WP", "WP$", "WRB"]  # fmt: skip
ROWS = 60


def glue_split(task: str, examples, spec) -> datasets.Dataset:
    """A GLUE split as the hub serves it, from local examples."""
    features = {c: datasets.Value("string") for c in GLUE_TEXTS[task]}
    if task == "stsb":
        features["label"] = datasets.Value("float32")
    else:
        features["label"] = datasets.ClassLabel(names=GLUE_LABELS[task])
    features["idx"] = datasets.Value("int32")
    rows = {c: [] for c in features}
    for i, ex in enumerate(examples):
        for column, text in zip(GLUE_TEXTS[task], ex.texts, strict=True):
            rows[column].append(text)
        if task == "stsb":
            rows["label"].append(ex.label)
        else:
            name = spec.labels[ex.label]  # the local file's spelling
            rows["label"].append(GLUE_LABELS[task].index(TSV_NAMES.get(task, {}).get(name, name)))
        rows["idx"].append(i)
    return datasets.Dataset.from_dict(rows, features=datasets.Features(features))


@pytest.mark.parametrize("task", ["sst2", "stsb", "mnli", "rte"])
def test_glue_schemas_load_as_the_local_files(task, data_dir):
    spec = get_task(task)
    assert spec.hub_path == "nyu-mll/glue" and spec.hub_config == task
    assert spec.eval_split in GLUE_SPLITS[task] and "train" in GLUE_SPLITS[task]
    assert list(spec.hub_text_columns) == GLUE_TEXTS[task]
    local, _ = load_split(spec, spec.eval_split, data_dir=data_dir)
    local = local[:ROWS]
    hub = datasets.DatasetDict({s: glue_split(task, local, spec) for s in GLUE_SPLITS[task]})
    loaded = hub_examples(spec, hub[spec.eval_split])
    assert len(loaded) == len(local)
    for ours, theirs in zip(local, loaded, strict=True):
        assert tuple(theirs.texts) == tuple(ours.texts)
        if task == "stsb":
            assert theirs.label == pytest.approx(ours.label, abs=1e-6)  # stored float32
        else:
            assert theirs.label == ours.label


def test_glue_test_rows_without_labels_are_dropped(data_dir):
    spec = get_task("sst2")
    local, _ = load_split(spec, "validation", data_dir=data_dir)
    split = glue_split("sst2", local[:3], spec)
    unlabelled = split.map(lambda row: {"label": -1})
    assert hub_examples(spec, datasets.concatenate_datasets([split, unlabelled])) == local[:3]


def test_conll_parquet_export_loads_as_the_local_file(data_dir):
    spec = get_task("pos")
    assert (spec.hub_path, spec.hub_revision) == ("eriktks/conll2003", "refs/convert/parquet")
    local, _ = load_split(spec, "validation", data_dir=data_dir)
    local = local[:ROWS]
    tags = datasets.Sequence(datasets.ClassLabel(names=CONLL_POS))
    features = datasets.Features({
        "id": datasets.Value("string"),
        "tokens": datasets.Sequence(datasets.Value("string")),
        "pos_tags": tags,
        "chunk_tags": datasets.Sequence(datasets.Value("int64")),
        "ner_tags": datasets.Sequence(datasets.Value("int64")),
    })  # fmt: skip
    rows = {
        "id": [str(i) for i in range(len(local))],
        "tokens": [list(ex.texts) for ex in local],
        "pos_tags": [[CONLL_POS.index(spec.labels[t]) for t in ex.label] for ex in local],
        "chunk_tags": [[0] * len(ex.texts) for ex in local],
        "ner_tags": [[0] * len(ex.texts) for ex in local],
    }
    hub = datasets.DatasetDict(
        {s: datasets.Dataset.from_dict(rows, features=features) for s in ("train", "validation")}
    )
    assert hub_examples(spec, hub[spec.eval_split]) == local
