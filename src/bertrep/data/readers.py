"""Reading a task's rows, whatever holds them: GLUE's TSVs, CSV, JSONL, Parquet, CoNLL
text, a `save_to_disk` folder or a hub dataset. Rows are read as they are (`Row`: texts,
raw label, row number), then made `Example`s against the task's labels; every bad row
is one DataError naming the file and the row (its line in a text file, else its index).

    rows = read_file(spec, Path("dev.csv"))
    examples = to_examples(spec, rows, "dev.csv")
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bertrep.data.task_spec import DataError, TaskSpec


@dataclass
class Example:
    """One example. texts: one or two strings, or the words of a tagged sentence.
    label: class index, float score, or one tag index per word."""

    texts: tuple[str, ...] | list[str]
    label: int | float | list[int]


@dataclass
class Row:
    """One row as read: its texts, its label as written (text, a number, a list of tags,
    or None where it has none) and its number in messages."""

    texts: tuple[str, ...] | list[str]
    label: Any
    number: int


def check_utf8(path: Path) -> None:
    """Data files are UTF-8: otherwise one error naming the row and the byte."""
    data = path.read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as error:
        row = data[: error.start].count(b"\n") + 1
        byte = data[error.start : error.start + 1].hex()
        raise DataError(f"{path}, row {row}: not UTF-8 text (byte 0x{byte})") from None


def read_file(spec: TaskSpec, path: Path) -> list[Row]:
    """A split's file, read by its suffix; CoNLL text (.conll, .txt) for tagging only."""
    suffix = path.suffix.lower()
    if suffix in (".conll", ".txt"):
        if spec.kind != "tagging":
            raise DataError(f"{path}: CoNLL text holds tagging data, not a {spec.kind} task")
        return read_conll(spec, path)
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            records = pq.read_table(path).to_pylist()
        except (OSError, ValueError) as error:  # pyarrow's errors are both
            raise DataError(f"{path}: not Parquet ({str(error).splitlines()[0]})") from None
        return table_rows(spec, records, range(1, len(records) + 1), str(path))
    check_utf8(path)
    if suffix in (".jsonl", ".json"):
        return table_rows(spec, *_json_objects(path), str(path))
    try:
        return _csv_rows(spec, path, suffix)
    except csv.Error as error:
        raise DataError(f"{path}: not {suffix[1:].upper()} ({error})") from None


def _csv_rows(spec: TaskSpec, path: Path, suffix: str) -> list[Row]:
    with open(path, encoding="utf-8-sig", newline="") as f:  # -sig: a spreadsheet's BOM
        # GLUE's TSVs hold unbalanced quotes: quoting is off for TSV (STS-B loses rows
        # otherwise), on for CSV.
        quoting = csv.QUOTE_NONE if suffix == ".tsv" else csv.QUOTE_MINIMAL
        reader = csv.reader(f, delimiter="\t" if suffix == ".tsv" else ",", quoting=quoting)
        header = next(reader, None)
        if not header or header == [""]:
            raise DataError(f"{path}: empty file, expected a header row")
        _check_columns(header, (*spec.text_columns, spec.label_column), f"{path}, row 1")
        objects, lines = [], []
        for row in reader:
            if len(row) < len(header):
                raise DataError(
                    f"{path}, row {reader.line_num}: {len(row)} fields, header has {len(header)}"
                )
            objects.append(dict(zip(header, row, strict=False)))
            lines.append(reader.line_num)
    return table_rows(spec, objects, lines, str(path))


def _json_objects(path: Path) -> tuple[list[dict], list[int]]:
    """The records of a JSON Lines file (or a JSON list) and each one's row number."""
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() == ".json" and text.lstrip().startswith("["):
        try:
            objects = json.loads(text)
        except json.JSONDecodeError as error:
            raise DataError(f"{path}, row {error.lineno}: not JSON ({error.msg})") from None
        numbers = list(range(1, len(objects) + 1))
    else:
        objects, numbers = [], []
        for lineno, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    objects.append(json.loads(line))
                except json.JSONDecodeError as error:
                    raise DataError(f"{path}, row {lineno}: not JSON ({error.msg})") from None
                numbers.append(lineno)
    for row, number in zip(objects, numbers, strict=True):
        if not isinstance(row, dict):
            raise DataError(f"{path}, row {number}: not a JSON object")
    return objects, numbers


def _check_columns(columns: Iterable[str], wanted: Iterable[str], where: str) -> None:
    columns = list(columns)
    for column in wanted:
        if column not in columns:
            raise DataError(f"{where}: missing column {column!r} (it has {', '.join(columns)})")


def table_rows(
    spec: TaskSpec,
    objects: Iterable[dict[str, Any]],
    numbers: Iterable[int],
    where: str,
    *,
    columns: tuple[tuple[str, ...], str] | None = None,
    names: tuple[str, ...] = (),
) -> list[Row]:
    """Rows of a table's records (dicts), numbered in messages by `numbers` (their lines
    in a text file). `columns`: (text columns, label column) where they differ from the
    task's (the hub's own names); `names`: the dataset's class names, which an integer
    label indexes (a negative one, GLUE's unlabelled test rows, is no label)."""
    texts_at, label_at = columns or (spec.text_columns, spec.label_column)
    out = []
    for number, record in zip(numbers, objects, strict=False):
        if not out:
            _check_columns(record, (*texts_at, label_at), where)
        elif any(c not in record for c in (*texts_at, label_at)):
            _check_columns(record, (*texts_at, label_at), f"{where}, row {number}")
        texts = [record[c] for c in texts_at]
        label = record[label_at]
        if spec.kind == "tagging":
            out.append(Row(texts[0], _tags(texts[0], label, names, where, number), number))
        else:
            out.append(Row(tuple(map(str, texts)), _named(label, names), number))
    return out


def _named(raw: Any, names: tuple[str, ...]) -> Any:
    """A dataset's integer class label as its name (None where negative: no label)."""
    if names and isinstance(raw, int | np.integer) and not isinstance(raw, bool):
        return names[int(raw)] if raw >= 0 else None
    return raw


def _tags(words: Any, tags: Any, names, where: str, number: int) -> list:
    sequences = list | tuple | np.ndarray
    if not isinstance(words, sequences) or not isinstance(tags, sequences):
        raise DataError(f"{where}, row {number}: a tagging row holds a list of words and tags")
    if len(words) != len(tags):
        raise DataError(f"{where}, row {number}: {len(words)} words but {len(tags)} tags")
    return [_named(t, names) for t in tags]


def read_conll(spec: TaskSpec, path: Path) -> list[Row]:
    """CoNLL text: one word per line, its columns split by white space (the word first,
    the tag in `conll_tag_column`), a blank line between sentences; -DOCSTART- lines are
    skipped. CoNLL-2003: `token POS chunk NER`."""
    rows: list[Row] = []
    words: list[str] = []
    tags: list[str] = []
    check_utf8(path)
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            parts = line.split()
            if not parts or parts[0] == "-DOCSTART-":
                if words:
                    rows.append(Row(words, tags, lineno - len(words)))
                    words, tags = [], []
                continue
            if spec.conll_columns and len(parts) != spec.conll_columns:
                raise DataError(
                    f"{path}, row {lineno}: {len(parts)} columns, expected {spec.conll_columns}"
                )
            if len(parts) < 2:
                raise DataError(f"{path}, row {lineno}: a word and its tag, got {line.strip()!r}")
            tag = parts[spec.conll_tag_column]
            if spec.labels and spec.label_aliases.get(tag, tag) not in spec.labels:
                what = spec.display_name or spec.name
                raise DataError(f"{path}, row {lineno}: unknown {what} tag {tag!r}")
            words.append(parts[0])
            tags.append(tag)
    if words:
        rows.append(Row(words, tags, lineno - len(words) + 1))
    if not rows:
        raise DataError(f"{path}: empty file, no sentences")
    return rows


def label_text(raw: Any) -> str:
    return raw.strip() if isinstance(raw, str) else str(raw)


def raw_labels(rows: list[Row], tagging: bool, aliases: dict[str, str]) -> set[str]:
    """Every label (or tag) in rows, spelled as the task's aliases say; an empty or
    missing value is no label."""
    values = [t for r in rows for t in r.label] if tagging else [r.label for r in rows]
    texts = {label_text(v) for v in values if v is not None}
    return {aliases.get(t, t) for t in texts} - {"", "nan", "None"}


def to_examples(spec: TaskSpec, rows: list[Row], where: str) -> list[Example]:
    """Examples of rows against the task's labels; rows without a label are dropped."""
    index = {name: i for i, name in enumerate(spec.labels)}
    index |= {alias: index[name] for alias, name in spec.label_aliases.items() if name in index}
    shown = ", ".join(spec.labels) if len(spec.labels) <= 12 else f"its {len(spec.labels)} labels"

    def label(raw: Any, number: int) -> int:
        text = label_text(raw)
        if text not in index and isinstance(raw, int) and not isinstance(raw, bool):
            if 0 <= raw < len(spec.labels):  # a class index where no class names came
                return raw
        if text not in index:
            raise DataError(f"{where}, row {number}: label {text!r} is not one of {shown}")
        return index[text]

    out = []
    for row in rows:
        if spec.kind == "regression":
            out.append(Example(row.texts, _score(row.label, where, row.number)))
        elif spec.kind == "tagging":
            out.append(
                Example(list(map(str, row.texts)), [label(t, row.number) for t in row.label])
            )
        elif row.label is not None:
            out.append(Example(row.texts, label(row.label, row.number)))
    if not out:
        raise DataError(f"{where}: no examples (an empty split)")
    return out


def _score(raw: Any, where: str, number: int) -> float:
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise DataError(f"{where}, row {number}: score {raw!r} is not a number") from None
    if not np.isfinite(value):
        raise DataError(f"{where}, row {number}: score {raw!r} is not finite")
    return value


def class_names(features: Any, column: str) -> tuple[str, ...]:
    """The class names of a `datasets` column (ClassLabel, or a sequence of them), from a
    Dataset or its features."""
    features = getattr(features, "features", features) or {}
    feature = features.get(column)
    feature = getattr(feature, "feature", feature)  # Sequence(ClassLabel) / List(ClassLabel)
    return tuple(getattr(feature, "names", None) or ())
