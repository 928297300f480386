"""Own tasks from task files: each kind from each source format, the metrics against
hand-computed values, the built-in tasks as files, and every bad-input line."""

from __future__ import annotations

import json
import os
import re

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bertrep.data import tasks
from bertrep.data.metrics import chance_score, f1_macro, mcc, score
from bertrep.data.readers import Example
from bertrep.data.task_spec import DataError, read_task_file
from bertrep.data.tasks import get_task, load_split, register
from bertrep.errors import InputError
from bertrep.training.config import TrainConfig

REVIEWS = [("a fine film", "pos"), ("dull and long", "neg"), ("great fun", "pos"),
           ("not good", "neg"), ("lovely", "pos")]  # fmt: skip
PAIRS = [("A man sings.", "A man is singing.", 4.5), ("A cat.", "A dog runs.", 0.5),
         ("Two kids.", "Two children.", 4.0)]  # fmt: skip
TAGGED = [(["The", "cat", "sat"], ["DET", "NOUN", "VERB"]), (["Dogs", "bark"], ["NOUN", "VERB"])]


def write(path, text: str):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def task_file(folder, body: str, name: str = "task.yaml"):
    return write(folder / name, body)


def csv_task(folder, name="reviews", extra=""):
    rows = "text,stars\n" + "".join(f"{t},{label}\n" for t, label in REVIEWS)
    write(folder / "data" / "train.csv", rows)
    write(folder / "data" / "dev.csv", rows)
    return task_file(folder, f"""name: {name}
kind: classification
text_columns: [text]
label_column: stars
metric: f1_macro
files: {{train: data/train.csv, validation: data/dev.csv}}
{extra}""", f"{name}.yaml")  # fmt: skip


def jsonl_pairs(folder):
    lines = "".join(json.dumps({"s1": a, "s2": b, "sim": s}) + "\n" for a, b, s in PAIRS)
    write(folder / "train.jsonl", lines)
    write(folder / "dev.jsonl", lines)
    return task_file(
        folder,
        """name: similar
kind: regression
text_columns: [s1, s2]
label_column: sim
metric: spearman
files: {train: train.jsonl, validation: dev.jsonl}
""",
    )


def parquet_tags(folder):
    table = pa.table({"words": [w for w, _ in TAGGED], "tags": [t for _, t in TAGGED]})
    folder.mkdir(parents=True)
    pq.write_table(table, folder / "train.parquet")
    pq.write_table(table, folder / "dev.parquet")
    return task_file(
        folder,
        """name: upos
kind: tagging
text_columns: [words]
label_column: tags
files: {train: train.parquet, validation: dev.parquet}
""",
    )


def conll_tags(folder):
    text = "".join(" ".join(f"{w}\t{t}\n" for w, t in zip(ws, ts, strict=True)).replace(" ", "")
                   + "\n" for ws, ts in TAGGED)  # fmt: skip
    write(folder / "train.conll", text)
    write(folder / "dev.conll", text)
    return task_file(
        folder,
        """name: upos
kind: tagging
text_columns: [words]
label_column: tags
labels: [DET, NOUN, VERB]
files: {train: train.conll, validation: dev.conll}
""",
    )


@pytest.fixture(autouse=True)
def fresh_registry():
    """Each test names its own tasks."""
    tasks._OWN.clear()
    yield
    tasks._OWN.clear()


def test_a_csv_classification_task(tmp_path):
    spec = get_task(str(csv_task(tmp_path)))
    assert (spec.name, spec.kind, spec.metric) == ("reviews", "classification", "f1_macro")
    assert spec.labels == ("neg", "pos") and spec.labels_from == "training split"
    examples, source = load_split(spec, "validation")
    assert source == str(tmp_path / "data" / "dev.csv")
    assert [(e.texts, e.label) for e in examples[:2]] == [
        (("a fine film",), 1),
        (("dull and long",), 0),
    ]
    assert get_task("reviews") is spec  # known by name once read


def test_a_jsonl_regression_and_parquet_and_conll_tagging(tmp_path):
    pairs = get_task(str(jsonl_pairs(tmp_path / "pairs")))
    examples, _ = load_split(pairs, "train")
    assert [(e.texts, e.label) for e in examples] == [((a, b), s) for a, b, s in PAIRS]
    upos = get_task(str(parquet_tags(tmp_path / "parquet")))
    assert upos.labels == ("DET", "NOUN", "VERB")
    examples, _ = load_split(upos, "validation")
    assert [(e.texts, e.label) for e in examples] == [(["The", "cat", "sat"], [0, 1, 2]),
                                                       (["Dogs", "bark"], [1, 2])]  # fmt: skip
    tasks._OWN.clear()
    conll = get_task(str(conll_tags(tmp_path / "conll")))
    assert [e.label for e in load_split(conll, "train")[0]] == [[0, 1, 2], [1, 2]]


def test_a_save_to_disk_folder_and_a_hub_dataset(tmp_path):
    features = datasets.Features({"text": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["bad", "good"])})  # fmt: skip
    split = datasets.Dataset.from_dict({"text": ["yes", "no", "fine"], "label": [1, 0, 1]},
                                       features=features)  # fmt: skip
    datasets.DatasetDict({"train": split, "test": split}).save_to_disk(tmp_path / "saved")
    spec = get_task(str(task_file(tmp_path, """name: saved
kind: classification
text_columns: [text]
eval_split: test
disk: saved
""")))  # fmt: skip
    assert spec.labels == ("bad", "good") and spec.labels_from == "dataset"
    assert [e.label for e in load_split(spec, "test")[0]] == [1, 0, 1]
    body = "name: h\nkind: classification\ntext_columns: [text]\nlabels: [bad, good]\n"
    hub = read_task_file(task_file(tmp_path, body + "hub: {path: user/data}\n", "h.yaml"))
    assert [e.label for e in tasks.hub_examples(hub, split)] == [1, 0, 1]


@pytest.mark.parametrize("task", ["sst2", "stsb", "mnli", "rte", "pos"])
def test_builtin_tasks_read_the_fixture_as_before(task, fixture_data):
    """The built-in tasks' files give the TaskSpec values they always had (so their
    config keys and probe digests stay), and read the fixture's rows."""
    spec = get_task(task)
    assert not spec.own and spec.digest == "" and spec.source.endswith(f"{task}.yaml")
    examples, source = load_split(spec, spec.eval_split, data_dir=fixture_data)
    assert len(examples) == 48 and source.startswith(str(fixture_data))
    expected = {"sst2": ("classification", "accuracy", ("0", "1")),
                "stsb": ("regression", "pearson", ()),
                "mnli": ("classification", "accuracy", ("entailment", "neutral", "contradiction")),
                "rte": ("classification", "accuracy", ("entailment", "not_entailment")),
                "pos": ("tagging", "accuracy", tasks.CONLL_POS_TAGS)}  # fmt: skip
    assert (spec.kind, spec.metric, spec.labels) == expected[task]


# Config keys and probe digests of built-in tasks on the fixture's rows, computed before
# the built-in tasks became task files (commit fb4a213): a store made before keeps its runs.
KEYS_BEFORE = [
    (dict(task="sst2"), "464285f172aa179c"),
    (dict(task="pos", frozen_layers=3, source_task="sst2"), "50c4625d9c5958d0"),
    (dict(task="stsb", mode="sequential", source_task="mnli"), "e62a7d531880ef6f"),
    (dict(task="rte", probe_tasks="sst2,pos", mode="extract"), "b872e1791cf4bd03"),
]
DIGESTS_BEFORE = {"sst2": "0747324ae3e8f279", "stsb": "19e75889081fae8d",
                  "mnli": "6df0018bf8fcb322", "rte": "7f51a83b82b6b3b4",
                  "pos": "3b07d4bb78f1cba5"}  # fmt: skip


def test_builtin_config_keys_and_probe_digests_are_unchanged(fixture_data, monkeypatch):
    from transformers import AutoTokenizer

    from bertrep.data.encode import encode
    from bertrep.data.probe_sets import build_probe_set
    from bertrep.training.model import minilm_path

    monkeypatch.setenv("BERTREP_DATA_DIR", str(fixture_data))
    for fields, key in KEYS_BEFORE:
        cfg = TrainConfig(**fields)
        assert (cfg.task_files, cfg.own_tasks(), cfg.key()) == ("", {}, key), fields
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    for task, digest in DIGESTS_BEFORE.items():
        spec = get_task(task)
        examples, file = load_split(spec, spec.eval_split)
        probe = build_probe_set(encode(spec, examples, tokenizer, 128), task=task,
                                split=spec.eval_split, file=file, tokenizer_digest="x",
                                max_length=128, n_tokens=100, seed=0,
                                task_digest=spec.digest)  # fmt: skip
        assert probe.digest == digest, task


def test_own_task_identity_is_content_not_place(tmp_path):
    first = csv_task(tmp_path / "a")
    key = TrainConfig(task=str(first), base_model="minilm").key()
    moved = tmp_path / "b"
    moved.mkdir()
    (tmp_path / "a").rename(moved / "a")
    tasks._OWN.clear()
    cfg = TrainConfig(task=str(moved / "a" / "reviews.yaml"), base_model="minilm")
    assert cfg.task == "reviews" and cfg.task_files == str(moved / "a" / "reviews.yaml")
    assert cfg.key() == key  # moved: the same run
    tasks._OWN.clear()
    edited = moved / "a" / "reviews.yaml"
    edited.write_text(edited.read_text().replace("f1_macro", "mcc"))
    assert TrainConfig(task=str(edited), base_model="minilm").key() != key  # edited: retrain
    tasks._OWN.clear()
    data = moved / "a" / "data" / "train.csv"
    data.write_text(data.read_text() + "more,pos\n")
    assert TrainConfig(task=str(edited), base_model="minilm").key() != key


def test_metrics_against_hand_computed_values():
    predictions, labels = np.array([0, 0, 1, 1, 2, 0]), np.array([0, 1, 1, 1, 2, 2])
    # F1: class 0 2·1/(3+1) = 0.5, class 1 2·2/(2+3) = 0.8, class 2 2·1/(1+2) = 2/3
    assert f1_macro(predictions, labels) == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    # R_K: c = 4, s = 6, told (3, 2, 1), true (1, 3, 2): (24 − 11) / √((36 − 14)(36 − 14))
    assert mcc(predictions, labels) == pytest.approx(13 / 22)
    assert mcc(np.array([0, 0]), np.array([0, 1])) == 0.0  # a constant side
    spec = get_task("sst2")
    out = score(spec, np.array([1, 1, 0, 0]), np.array([1, 0, 0, 0]))
    assert out == pytest.approx({"accuracy": 0.75, "f1_macro": (2 / 3 + 0.8) / 2,
                                 "mcc": (3 * 4 - 8) / np.sqrt((16 - 8) * (16 - 10))})  # fmt: skip
    stsb = score(get_task("stsb"), np.array([1.0, 2.0, 3.0]), np.array([1.0, 3.0, 2.0]))
    assert stsb == pytest.approx({"pearson": 0.5, "spearman": 0.5})


def test_chance_is_the_metric_of_the_majority_prediction(tmp_path):
    examples = [Example(("x",), label) for label in (0, 0, 0, 1)]
    assert chance_score(get_task("sst2"), examples) == 0.75
    spec = get_task(str(csv_task(tmp_path)))  # f1_macro: only the majority class scores
    assert chance_score(spec, examples) == pytest.approx((2 * 3 / 7) / 2)
    mcc_task = get_task(str(csv_task(tmp_path / "m", name="m", extra="")))
    assert chance_score(mcc_task.__class__(**{**mcc_task.__dict__, "metric": "mcc"}), examples) == 0
    assert chance_score(get_task("stsb"), [Example(("a", "b"), 1.0)]) == 0.0


HEAD = "name: x\nkind: classification\ntext_columns: [t]\n"
FILES = "files: {train: a.csv, validation: a.csv}\n"
BAD = [
    (HEAD + FILES + "colour: red\n", r"task.yaml: unknown key 'colour' \(known: name, kind"),
    ("name: x\nkind: ranking\ntext_columns: [t]\n" + FILES,
     r"task.yaml: unknown kind 'ranking' \(known: classification, regression, tagging\)"),
    ("name: x\nkind: regression\nmetric: accuracy\ntext_columns: [t]\n" + FILES,
     r"task.yaml: unknown metric 'accuracy' for a regression task \(known: pearson, spearman\)"),
    (HEAD, r"task.yaml: say where the data is with one of files, disk or hub"),
    (HEAD + "files: {train: a.csv}\n", r"task.yaml: files has no 'validation' split"),
    ("kind: classification\n", r"task.yaml: missing key 'name'"),
    (HEAD.replace("name: x", "name: sst2") + FILES, r"task.yaml: name 'sst2' is a built-in task"),
    ("name: [x\n", r"task.yaml, line 2: not YAML"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "match"), BAD, ids=[m.split(": ", 1)[1][:28] for _, m in BAD])
def test_bad_task_files_get_one_line(tmp_path, body, match):
    write(tmp_path / "a.csv", "t,label\nx,1\n")
    with pytest.raises(DataError, match=match) as e:
        get_task(str(task_file(tmp_path, body)))
    assert "\n" not in str(e.value)


LABELS = "labels: [pos, neg]\n"
BAD_DATA = [
    ("classification", "t,stars\nok,pos\n", LABELS,
     "train.csv, row 1: missing column 'label' (it has t, stars)"),
    ("classification", "t,label\nok,pos\nbad,meh\n", LABELS,
     "train.csv, row 3: label 'meh' is not one of pos, neg"),
    ("regression", "t,label\nok,1.5\nbad,high\n", "",
     "train.csv, row 3: score 'high' is not a number"),
    ("classification", "t,label\n", "labels: [pos]\n", "train.csv: no examples (an empty split)"),
]  # fmt: skip


@pytest.mark.parametrize(("kind", "rows", "extra", "match"), BAD_DATA)
def test_bad_data_gets_one_line_naming_file_and_row(tmp_path, kind, rows, extra, match):
    write(tmp_path / "train.csv", rows)
    path = task_file(tmp_path, f"name: x\nkind: {kind}\ntext_columns: [t]\n{extra}"
                     "files: {train: train.csv, validation: train.csv}\n")  # fmt: skip
    with pytest.raises(DataError, match=re.escape(match)):
        load_split(get_task(str(path)), "train")


def test_a_tagging_row_whose_words_and_tags_differ_is_named(tmp_path):
    rows = [{"w": ["a", "b"], "t": ["X", "Y"]}, {"w": ["c"], "t": ["X", "Y"]}]
    write(tmp_path / "t.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    path = task_file(tmp_path, "name: t\nkind: tagging\ntext_columns: [w]\nlabel_column: t\n"
                     "labels: [X, Y]\nfiles: {train: t.jsonl, validation: t.jsonl}\n")  # fmt: skip
    with pytest.raises(DataError, match=re.escape("t.jsonl, row 2: 1 words but 2 tags")):
        load_split(get_task(str(path)), "train")


def test_two_files_of_one_name_are_refused_naming_both(tmp_path):
    first = csv_task(tmp_path / "one")
    second = csv_task(tmp_path / "two", extra="metric: mcc\n".replace("metric: mcc\n", ""))
    second.write_text(second.read_text().replace("f1_macro", "accuracy"))
    register(first)
    with pytest.raises(DataError, match=f"two tasks are named 'reviews': {first} and {second}"):
        register(second)


def test_an_unknown_task_in_a_config_is_one_input_error(tmp_path, monkeypatch):
    with pytest.raises(InputError, match="unknown task 'cola'; known tasks: sst2, stsb"):
        TrainConfig(task="cola")
    folder = tmp_path / "mine"
    csv_task(folder)
    monkeypatch.setenv("BERTREP_TASKS", str(folder))
    assert TrainConfig(task="reviews", base_model="minilm").task_files == str(
        folder / "reviews.yaml"
    )


def sst2_as_csv(folder, fixture_data, name="reviews"):
    """An own task of real rows: the fixture's SST-2 sentences as CSV, labels neg/pos."""
    import csv

    for split, file in (("train", "train.csv"), ("validation", "dev.csv")):
        examples, _ = load_split(get_task("sst2"), split, data_dir=fixture_data)
        (folder / "data").mkdir(parents=True, exist_ok=True)
        with open(folder / "data" / file, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["text", "stars"])
            writer.writerows((e.texts[0], ("neg", "pos")[e.label]) for e in examples)
    body = (
        f"name: {name}\nkind: classification\ntext_columns: [text]\nlabel_column: stars\n"
        "metric: f1_macro\nfiles: {train: data/train.csv, validation: data/dev.csv}\n"
    )
    return task_file(folder, body, f"{name}.yaml")


def test_a_run_on_an_own_task_records_it_and_a_second_file_of_its_name_is_refused(
    tiny_model, fixture_data, mlflow_store, tmp_path
):
    from mlflow.tracking import MlflowClient

    from bertrep import tracking
    from bertrep.train import run
    from bertrep.training.config import Runtime

    path = sst2_as_csv(tmp_path / "mine", fixture_data)
    cfg = TrainConfig(task=str(path), base_model=str(tiny_model), max_steps=4, batch_size=8,
                      lr=1e-3, probe_tokens=100)  # fmt: skip
    run_id = run(cfg, Runtime(progress=False))
    got = MlflowClient().get_run(run_id)
    tags, metrics = got.data.tags, got.data.metrics
    assert tags[tracking.TASK] == "reviews" and got.data.params["task_files"] == str(path)
    assert tags[f"{tracking.TASK_FILE}reviews"] == str(path)
    assert tags[f"{tracking.TASK_LABELS}reviews"] == json.dumps(["neg", "pos"])
    assert tags[f"{tracking.TASK_DIGEST}reviews"] == get_task("reviews").digest
    # chance of f1_macro: the majority class (pos, 25 of 48) alone: F1 2·25/73 over 2 classes
    assert metrics[tracking.CHANCE] == pytest.approx(25 / 73)
    assert {"eval/f1_macro", "eval/accuracy", "eval/mcc"} <= set(metrics)
    assert metrics[tracking.FINAL_SCORE] == metrics["eval/f1_macro"]
    assert got.info.status == "FINISHED"
    other = sst2_as_csv(tmp_path / "theirs", fixture_data)
    other.write_text(other.read_text().replace("f1_macro", "mcc"))
    tasks._OWN.clear()
    with pytest.raises(InputError, match=f"task name 'reviews' is taken in this store by {path}"):
        run(TrainConfig(task=str(other), base_model=str(tiny_model), max_steps=1),
            Runtime(progress=False))  # fmt: skip
    assert len(MlflowClient().search_runs([got.info.experiment_id])) == 1  # nothing recorded


def test_train_on_a_bad_task_file_exits_1_with_one_line_and_records_nothing(tmp_path):
    import subprocess
    import sys

    bad = task_file(tmp_path, HEAD + FILES + "colour: red\n")
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    done = subprocess.run([sys.executable, "-m", "bertrep.train", "--task", str(bad)],
                          capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "MLFLOW_TRACKING_URI": store})  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].startswith(f"bertrep.train: {bad}: unknown key")
    assert not (tmp_path / "mlflow.db").exists()  # no store, so no run, was made


def test_a_probe_task_list_written_with_spaces_keeps_its_key():
    """Only a field naming a task file is rewritten: one of names stays as written (it is
    in the config key, as before task files)."""
    cfg = TrainConfig(task="rte", probe_tasks="sst2, pos", mode="extract")
    assert cfg.probe_tasks == "sst2, pos" and cfg.probe_task_list == ["sst2", "pos"]


def test_inferred_labels_apply_aliases_and_skip_empty_values(tmp_path):
    write(tmp_path / "t.csv", "t,label\na,pos\nb,+\nc,\nd,neg\n")
    spec = get_task(str(task_file(tmp_path, HEAD + "label_aliases: {'+': pos}\n"
                                  "files: {train: t.csv, validation: t.csv}\n")))  # fmt: skip
    assert spec.labels == ("neg", "pos")  # "+" is pos; the empty cell is no label
    numbers = task_file(
        tmp_path / "n",
        HEAD.replace("name: x", "name: n") + "files: {train: t.csv, validation: t.csv}\n",
    )
    write(tmp_path / "n" / "t.csv", "t,label\na,10\nb,2\nc,1\n")
    assert get_task(str(numbers)).labels == ("1", "2", "10")  # numbers in numeric order


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        ("files: {train: a.csv, validation: a.csv}\nhub: {path: u/d}\n",
         "say where the data is with one of files, disk or hub; got files and hub"),
        ("labels: [yes, no]\nfiles: {train: a.csv, validation: a.csv}\n",
         "labels: [True, False] holds a YAML boolean; quote the names"),
        ("labels: [a, b]\nlabel_aliases: {x: c}\nfiles: {train: a.csv, validation: a.csv}\n",
         "label_aliases: 'c' is not one of the labels"),
    ],
)  # fmt: skip
def test_more_bad_task_files(tmp_path, extra, match):
    with pytest.raises(DataError, match=re.escape(match)):
        get_task(str(task_file(tmp_path, HEAD + extra)))


def test_row_numbers_are_lines_and_a_later_row_missing_a_column_is_named(tmp_path):
    write(tmp_path / "q.csv", 't,label\n"two\nlines",pos\nok,meh\n')
    path = task_file(tmp_path, HEAD + "labels: [pos]\nfiles: {train: q.csv, validation: q.csv}\n")
    with pytest.raises(DataError, match=re.escape("q.csv, row 4: label 'meh'")):
        load_split(get_task(str(path)), "train")  # the quoted row spans lines 2-3
    tasks._OWN.clear()
    write(tmp_path / "j" / "t.jsonl", '{"t": "a", "label": "pos"}\n\n{"t": "b"}\n')
    path = task_file(
        tmp_path / "j", HEAD + "labels: [pos]\nfiles: {train: t.jsonl, validation: t.jsonl}\n"
    )
    with pytest.raises(DataError, match=re.escape("t.jsonl, row 3: missing column 'label'")):
        load_split(get_task(str(path)), "train")


def test_integer_labels_without_class_names_index_the_labels():
    plain = datasets.Dataset.from_dict({"sentence": ["a", "b"], "label": [1, 0]})  # no ClassLabel
    assert [e.label for e in tasks.hub_examples(get_task("sst2"), plain)] == [1, 0]


def test_a_checkpoint_names_the_files_of_its_own_heads(tmp_path):
    from bertrep.training.model import _know_head_tasks, task_files_of

    spec = get_task(str(csv_task(tmp_path)))
    meta = task_files_of(["sst2", "reviews"])
    assert meta == {"task_files": {"reviews": spec.source}}  # built-in heads need none
    tasks._OWN.clear()
    _know_head_tasks(meta)  # where a checkpoint is loaded, its heads' tasks are known
    assert get_task("reviews").digest == spec.digest


def test_per_task_may_name_an_own_task_the_grid_gives_by_file(tmp_path):
    from bertrep.sweeps.spec import spec_from_dict, trials

    own = csv_task(tmp_path)
    raw = {"kind": "single", "grid": {"task": [str(own)]}, "per_task": {"reviews": {"lr": 0.5}},
           "fixed": {"base_model": "minilm"}}  # fmt: skip
    (cfg,) = trials(spec_from_dict(raw, "x.yaml"))
    assert (cfg.task, cfg.lr, cfg.task_files) == ("reviews", 0.5, str(own))
