"""`bertrep data DIR`, offline: `datasets` objects with the hub's own schemas (as
tests/test_hub.py builds them), filled with the fixture's rows, stand in for the hub;
what is written reads back as the same examples, and a second call writes nothing."""

from __future__ import annotations

import datasets
import pytest
from test_hub import CONLL_POS, GLUE_SPLITS, glue_split

from bertrep.data.fetch import fetch, is_done, targets
from bertrep.data.tasks import TASKS, get_task, load_split

CHUNKS = ["O", "B-NP", "I-NP"]
NER = ["O", "B-ORG", "I-ORG"]


def conll_split(examples) -> datasets.Dataset:
    spec = get_task("pos")
    sequence = datasets.Sequence
    features = datasets.Features({
        "id": datasets.Value("string"),
        "tokens": sequence(datasets.Value("string")),
        "pos_tags": sequence(datasets.ClassLabel(names=CONLL_POS)),
        "chunk_tags": sequence(datasets.ClassLabel(names=CHUNKS)),
        "ner_tags": sequence(datasets.ClassLabel(names=NER)),
    })  # fmt: skip
    rows = {
        "id": [str(i) for i in range(len(examples))],
        "tokens": [list(ex.texts) for ex in examples],
        "pos_tags": [[CONLL_POS.index(spec.labels[t]) for t in ex.label] for ex in examples],
        "chunk_tags": [[1] * len(ex.texts) for ex in examples],
        "ner_tags": [[2] * len(ex.texts) for ex in examples],
    }
    return datasets.Dataset.from_dict(rows, features=features)


@pytest.fixture
def hub(fixture_data):
    """(task, split) -> the split as the hub would serve it, from the fixture's rows;
    every call is counted."""
    calls = []

    def load(spec, split):
        calls.append((spec.name, split))
        local_split = split if split in ("train", spec.eval_split) else spec.eval_split
        examples, _ = load_split(spec, local_split, data_dir=fixture_data)
        if spec.kind == "tagging":
            return conll_split(examples)
        assert split in GLUE_SPLITS[spec.name]
        return glue_split(spec.name, examples, spec)

    load.calls = calls
    return load


@pytest.mark.parametrize("task", list(TASKS))
def test_written_files_read_back_as_the_hub_rows(task, tmp_path, fixture_data, hub):
    done = fetch(tmp_path, [task], load=hub, progress=False)
    spec = get_task(task)
    assert [path for path, how in done if how == "written"] == list(
        targets(spec, tmp_path).values()
    )
    for split in ("train", spec.eval_split):
        written, source = load_split(spec, split, data_dir=tmp_path)
        expected, _ = load_split(spec, split, data_dir=fixture_data)
        assert source.startswith(str(tmp_path / spec.folders[0]))
        if spec.kind == "regression":  # the hub stores float32
            assert [e.label for e in written] == pytest.approx(
                [e.label for e in expected], abs=1e-6
            )
            assert [e.texts for e in written] == [e.texts for e in expected]
        else:
            assert written == expected


def test_conll_keeps_chunk_and_ner_names(tmp_path, hub):
    fetch(tmp_path, ["pos"], load=hub, progress=False)
    first = (tmp_path / "conll2003" / "valid.txt").read_text().splitlines()[0].split()
    assert first[2:] == ["B-NP", "I-ORG"] and len(first) == 4


def test_a_second_call_keeps_what_matches_its_digest_and_redoes_the_rest(tmp_path, hub):
    fetch(tmp_path, ["sst2", "rte"], load=hub, progress=False)
    assert len(hub.calls) == 4
    dev = tmp_path / "SST-2" / "dev.tsv"
    assert is_done(dev) and (tmp_path / "SST-2" / "dev.tsv.sha256").is_file()
    dev.write_text(dev.read_text() + "torn")  # a changed (or torn) file is written again
    done = fetch(tmp_path, ["sst2", "rte"], load=hub, progress=False)
    assert [how for _, how in done] == ["kept", "written", "kept", "kept"]
    assert hub.calls[4:] == [("sst2", "validation")]
    assert is_done(dev)


def test_the_command_names_a_task_it_cannot_write(tmp_path, capsys):
    from bertrep.data.fetch import main

    with pytest.raises(SystemExit, match="bertrep data: unknown task 'cola'"):
        main([str(tmp_path), "--tasks", "cola"])
