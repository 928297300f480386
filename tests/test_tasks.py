"""Task loaders on the real data folder and on malformed files the tests write."""

from __future__ import annotations

import re

import numpy as np
import pytest

from bertrep.data.metrics import chance_score, score
from bertrep.data.tasks import TASKS, DataError, get_task, load_split

# Official sizes (GLUE, CoNLL-2003) of the splits the data folder holds in full.
FULL_SPLITS = {
    ("sst2", "train"): 67349,
    ("sst2", "validation"): 872,
    ("stsb", "train"): 5749,
    ("stsb", "validation"): 1500,  # 1,470 if read with CSV quoting on
    ("rte", "train"): 2490,
    ("rte", "validation"): 277,
    ("pos", "train"): 14041,
    ("pos", "validation"): 3250,
    ("pos", "test"): 3453,
}


@pytest.mark.parametrize(("task", "split"), list(FULL_SPLITS))
def test_real_splits_have_official_sizes(data_dir, task, split):
    examples, source = load_split(get_task(task), split, data_dir=data_dir)
    assert len(examples) == FULL_SPLITS[task, split]
    assert source.startswith(str(data_dir.resolve()))


def test_real_stsb_scores_and_pos_tags(data_dir):
    stsb, _ = load_split(get_task("stsb"), "validation", data_dir=data_dir)
    assert all(0.0 <= ex.label <= 5.0 for ex in stsb)
    assert stsb[0].texts == (
        "A man with a hard hat is dancing.",
        "A man wearing a hard hat is dancing.",
    )
    pos, _ = load_split(get_task("pos"), "validation", data_dir=data_dir)
    spec = get_task("pos")
    assert pos[0].texts[0] == "CRICKET" and spec.labels[pos[0].label[0]] == "NNP"
    assert sum(len(ex.texts) for ex in pos) == 51362  # CoNLL-2003 testa tokens


def test_offline_mnli_falls_back_to_the_partial_files(data_dir):
    train, source = load_split(get_task("mnli"), "train", data_dir=data_dir)
    assert len(train) == 9999 and source.endswith("train_sample_9999.tsv")
    dev, source = load_split(get_task("mnli"), "validation_matched", data_dir=data_dir)
    assert len(dev) == 1000 and source.endswith("dev_matched_textfooler1k_tok.tsv")


def test_data_files_names_other_files(data_dir):
    dev, source = load_split(
        get_task("mnli"),
        "validation_matched",
        data_dir=data_dir,
        data_files="validation_matched=dev_matched_hard_tok.tsv",
    )
    assert len(dev) == 4573 and source.endswith("dev_matched_hard_tok.tsv")


def test_data_dir_from_environment(data_dir, monkeypatch):
    monkeypatch.setenv("BERTREP_DATA_DIR", str(data_dir))
    examples, _ = load_split(get_task("rte"), "validation")
    assert len(examples) == 277


GLUE_MNLI_HEADER = (
    "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\t"
    "sentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tgold_label"
)


def write_glue_mnli(root, rows):
    folder = root / "MNLI"
    folder.mkdir(parents=True, exist_ok=True)
    lines = [GLUE_MNLI_HEADER]
    for i, (s1, s2, label) in enumerate(rows):
        parses = "( x )\t( y )\t(ROOT x)\t(ROOT y)"
        lines.append(f"{i}\t{i}\t{i}n\tfiction\t{parses}\t{s1}\t{s2}\t{label}\t{label}")
    for name in ("train.tsv", "dev_matched.tsv", "dev_mismatched.tsv"):
        (folder / name).write_text("\n".join(lines) + "\n")


def test_mnli_in_glue_layout(tmp_path):
    rows = [("A man sleeps.", "Nobody sleeps.", "contradiction"), ('He said "hi', "x", "neutral")]
    write_glue_mnli(tmp_path, rows)
    spec = get_task("mnli")
    dev, source = load_split(spec, "validation_matched", data_dir=tmp_path)
    assert source.endswith("MNLI/dev_matched.tsv")
    assert [ex.label for ex in dev] == [2, 1]
    assert dev[1].texts == ('He said "hi', "x")  # quoting off: the lone quote stays


def one_line_error(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def test_missing_column(tmp_path):
    (tmp_path / "SST-2").mkdir()
    (tmp_path / "SST-2" / "dev.tsv").write_text("sentence\tlabell\ngood film\t1\n")
    with pytest.raises(DataError) as e:
        load_split(get_task("sst2"), "validation", data_dir=tmp_path)
    assert re.search(r"SST-2/dev.tsv, row 1: missing column 'label'", one_line_error(e))


def test_unknown_label(tmp_path):
    write_glue_mnli(tmp_path, [("a", "b", "entailment"), ("c", "d", "maybe")])
    with pytest.raises(DataError) as e:
        load_split(get_task("mnli"), "train", data_dir=tmp_path)
    assert re.search(r"MNLI/train.tsv, row 3: label 'maybe' is not one of", one_line_error(e))


def test_non_numeric_score(tmp_path):
    (tmp_path / "STS-B").mkdir()
    header = (
        "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"
    )
    good = "0\tg\tf\ty\t0\tn\tn\tA man.\tA man.\t5.000"
    bad = "1\tg\tf\ty\t1\tn\tn\tA dog.\tA cat.\tfive"
    (tmp_path / "STS-B" / "train.tsv").write_text("\n".join([header, good, bad]) + "\n")
    with pytest.raises(DataError) as e:
        load_split(get_task("stsb"), "train", data_dir=tmp_path)
    assert re.search(r"STS-B/train.tsv, row 3: score 'five' is not a number", one_line_error(e))


@pytest.mark.parametrize("task", ["sst2", "stsb", "rte", "mnli"])
def test_empty_tsv(tmp_path, task):
    spec = get_task(task)
    folder = tmp_path / spec.folders[0]
    folder.mkdir()
    (folder / spec.local_files["train"][0]).write_text("")
    with pytest.raises(DataError) as e:
        load_split(spec, "train", data_dir=tmp_path)
    assert "train.tsv: empty file" in one_line_error(e)


def test_short_row(tmp_path):
    (tmp_path / "RTE").mkdir()
    (tmp_path / "RTE" / "dev.tsv").write_text("index\tsentence1\tsentence2\tlabel\n0\tonly one\n")
    with pytest.raises(DataError) as e:
        load_split(get_task("rte"), "validation", data_dir=tmp_path)
    assert "RTE/dev.tsv, row 2: 2 fields, header has 4" in one_line_error(e)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("", "valid.txt: empty file"),
        ("-DOCSTART- -X- -X- O\n\nEU NNP B-NP\n", "valid.txt, row 3: 3 columns, expected 4"),
        ("EU NNP B-NP B-ORG\nrejects XYZ B-VP O\n", "valid.txt, row 2: unknown POS tag 'XYZ'"),
    ],
)
def test_malformed_conll(tmp_path, content, expected):
    (tmp_path / "conll2003").mkdir()
    (tmp_path / "conll2003" / "valid.txt").write_text(content)
    with pytest.raises(DataError) as e:
        load_split(get_task("pos"), "validation", data_dir=tmp_path)
    assert expected in one_line_error(e)


def test_missing_file_and_unknown_task(tmp_path):
    with pytest.raises(FileNotFoundError, match="no sst2 train file found"):
        load_split(get_task("sst2"), "train", data_dir=tmp_path)
    with pytest.raises(ValueError, match="unknown task 'cola'"):
        get_task("cola")


def test_chance_and_scores():
    spec = get_task("sst2")
    from bertrep.data.tasks import Example

    examples = [Example(("x",), 1), Example(("y",), 1), Example(("z",), 0)]
    assert chance_score(spec, examples) == pytest.approx(2 / 3)
    assert chance_score(get_task("stsb"), examples) == 0.0
    pos = [Example(["a", "b", "c"], [3, 3, 5]), Example(["d"], [3])]
    assert chance_score(get_task("pos"), pos) == 0.75
    assert score(spec, np.array([1, 0, 1]), np.array([1, 1, 1]))["accuracy"] == pytest.approx(2 / 3)
    s = score(get_task("stsb"), np.array([1.0, 2.0, 3.0]), np.array([2.0, 4.0, 6.5]))
    assert s["spearman"] == pytest.approx(1.0) and 0.99 < s["pearson"] < 1.0


def test_every_task_spec_is_consistent():
    for spec in TASKS.values():
        assert spec.eval_split in spec.local_files
        assert spec.kind in ("classification", "regression", "tagging")
        assert spec.num_labels == (1 if spec.kind == "regression" else len(spec.labels))
