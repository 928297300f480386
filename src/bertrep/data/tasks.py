"""Tasks: what each task's data looks like, where it comes from, how it is scored.

Every quirk of a task (text columns, label set, metric, eval split, file names)
is data in its `TaskSpec`, not an `if task == ...` somewhere else.

Two sources:
- a local folder (`--data_dir` or `BERTREP_DATA_DIR`): GLUE's own layout
  (`<data_dir>/SST-2/train.tsv`, `MNLI/dev_matched.tsv`, ...; lower-case folder names
  such as `sst2/` work too) and CoNLL-2003 (`conll2003/{train,valid,test}.txt`).
  Other file names per split: `--data_files "train=my_train.tsv,validation_matched=/abs/dev.tsv"`
  (relative names are taken inside the task's folder).
- the Hugging Face hub, when no data folder is given.

    >>> from bertrep.data.tasks import get_task, load_split
    >>> examples = load_split(get_task("sst2"), "validation", data_dir="../shared/data")
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bertrep import env
from bertrep.errors import InputError

# The 47 Penn Treebank tags of CoNLL-2003, in the order the Hugging Face conll2003
# dataset numbers them, so hub and local data share one label index.
CONLL_POS_TAGS = (
    '"', "''", "#", "$", "(", ")", ",", ".", ":", "``", "CC", "CD", "DT", "EX", "FW", "IN",
    "JJ", "JJR", "JJS", "LS", "MD", "NN", "NNP", "NNPS", "NNS", "NN|SYM", "PDT", "POS", "PRP",
    "PRP$", "RB", "RBR", "RBS", "RP", "SYM", "TO", "UH", "VB", "VBD", "VBG", "VBN", "VBP",
    "VBZ", "WDT", "WP", "WP$", "WRB",
)  # fmt: skip


class DataError(InputError):
    """A data file that cannot be read as the task says; the message names file and row."""


@dataclass(frozen=True)
class TaskSpec:
    """One task's quirks, as data.

    kind: "classification" (one label per text or text pair), "regression" (one float),
    or "tagging" (one label per word; the first sub-token carries it).
    labels: class names in index order; for TSV files also the spellings accepted
    (`label_aliases` maps other spellings, e.g. GLUE's "0"/"1", to these names).
    local_files: split -> candidate file names inside the task folder, first found wins.
    """

    name: str
    kind: str
    metric: str
    eval_split: str
    display_name: str = ""  # how figures and tables name it (SST-2); else its name
    text_columns: tuple[str, ...] = ()
    label_column: str = "label"
    labels: tuple[str, ...] = ()
    label_aliases: dict[str, str] = field(default_factory=dict)
    folders: tuple[str, ...] = ()
    local_files: dict[str, tuple[str, ...]] = field(default_factory=dict)
    hub_path: str = ""
    hub_config: str | None = None
    hub_revision: str | None = None
    hub_text_columns: tuple[str, ...] = ()
    hub_label_column: str = "label"

    @property
    def num_labels(self) -> int:
        """Output width of the task head: classes, 1 for regression, tags for tagging."""
        return 1 if self.kind == "regression" else len(self.labels)

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(self.local_files)


TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec(
            name="sst2",
            display_name="SST-2",
            kind="classification",
            metric="accuracy",
            eval_split="validation",
            text_columns=("sentence",),
            labels=("0", "1"),
            folders=("SST-2", "sst2"),
            local_files={"train": ("train.tsv",), "validation": ("dev.tsv",)},
            hub_path="nyu-mll/glue",
            hub_config="sst2",
            hub_text_columns=("sentence",),
        ),
        TaskSpec(
            name="stsb",
            display_name="STS-B",
            kind="regression",
            metric="pearson",
            eval_split="validation",
            text_columns=("sentence1", "sentence2"),
            label_column="score",
            folders=("STS-B", "stsb"),
            local_files={"train": ("train.tsv",), "validation": ("dev.tsv",)},
            hub_path="nyu-mll/glue",
            hub_config="stsb",
            hub_text_columns=("sentence1", "sentence2"),
        ),
        TaskSpec(
            name="mnli",
            display_name="MNLI",
            kind="classification",
            metric="accuracy",
            eval_split="validation_matched",
            text_columns=("sentence1", "sentence2"),
            label_column="gold_label",
            # The GLUE hub config numbers them in this order.
            labels=("entailment", "neutral", "contradiction"),
            folders=("MNLI", "mnli"),
            # After GLUE's own names, the real but partial files of an offline copy
            # (a 9,999-pair train sample, a 1,000-pair dev sample; see data SOURCES.md).
            # The file actually read is logged with every run.
            local_files={
                "train": ("train.tsv", "train_sample_9999.tsv"),
                "validation_matched": ("dev_matched.tsv", "dev_matched_textfooler1k_tok.tsv"),
                "validation_mismatched": (
                    "dev_mismatched.tsv",
                    "dev_mismatched_textfooler1k_tok.tsv",
                ),
            },
            hub_path="nyu-mll/glue",
            hub_config="mnli",
            hub_text_columns=("premise", "hypothesis"),
        ),
        TaskSpec(
            name="rte",
            display_name="RTE",
            kind="classification",
            metric="accuracy",
            eval_split="validation",
            text_columns=("sentence1", "sentence2"),
            labels=("entailment", "not_entailment"),
            folders=("RTE", "rte"),
            local_files={"train": ("train.tsv",), "validation": ("dev.tsv",)},
            hub_path="nyu-mll/glue",
            hub_config="rte",
            hub_text_columns=("sentence1", "sentence2"),
        ),
        TaskSpec(
            name="pos",
            display_name="POS",
            kind="tagging",
            metric="accuracy",
            eval_split="validation",
            labels=CONLL_POS_TAGS,
            folders=("conll2003", "CoNLL-2003", "conll"),
            local_files={
                "train": ("train.txt", "eng.train"),
                "validation": ("valid.txt", "dev.txt", "eng.testa"),
                "test": ("test.txt", "eng.testb"),
            },
            # Script datasets no longer load; this revision is the hub's Parquet export.
            hub_path="eriktks/conll2003",
            hub_revision="refs/convert/parquet",
            hub_text_columns=("tokens",),
            hub_label_column="pos_tags",
        ),
    )
}


def display_name(task: str) -> str:
    """How a person names a task (SST-2) or the pretrained model's row (base)."""
    spec = TASKS.get(task)
    return (spec.display_name or spec.name) if spec else task


def get_task(name: str) -> TaskSpec:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}")
    return TASKS[name]


@dataclass
class Example:
    """One example. texts: one or two strings, or the words of a tagged sentence.
    label: class index, float score, or one tag index per word."""

    texts: tuple[str, ...] | list[str]
    label: int | float | list[int]


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path | None:
    """The data folder: the argument if given, else $BERTREP_DATA_DIR, else None (the hub)."""
    value = str(data_dir) if data_dir else os.environ.get(env.DATA_DIR, "")
    if not value:
        return None
    path = Path(value).expanduser().resolve()
    if not path.is_dir():
        raise FileNotFoundError(f"data folder {path} does not exist")
    return path


def parse_data_files(value: str) -> dict[str, str]:
    """'train=a.tsv,validation=b.tsv' -> {'train': 'a.tsv', 'validation': 'b.tsv'}."""
    out: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in value.split(","))):
        split, sep, name = item.partition("=")
        if not sep or not split or not name:
            raise ValueError(f"data_files entry {item!r} is not of the form split=file")
        out[split.strip()] = name.strip()
    return out


def local_file(
    spec: TaskSpec, split: str, data_dir: Path, data_files: dict[str, str] | None = None
) -> Path:
    """The file holding `split` of `spec` inside `data_dir` (see the module docstring)."""
    if split not in spec.local_files and split not in (data_files or {}):
        raise ValueError(f"task {spec.name} has no split {split!r}; splits: {spec.splits}")
    folders = [data_dir / f for f in spec.folders if (data_dir / f).is_dir()]
    if (data_files or {}).get(split):
        named = Path(data_files[split]).expanduser()
        candidates = [named] if named.is_absolute() else [f / named for f in folders]
    else:
        candidates = [f / name for f in folders for name in spec.local_files[split]]
    for path in candidates:
        if path.is_file():
            return path
    tried = ", ".join(str(p) for p in candidates) or f"{data_dir}/{{{','.join(spec.folders)}}}/"
    raise FileNotFoundError(f"no {spec.name} {split} file found; looked for {tried}")


def check_utf8(path: Path) -> None:
    """Data files are UTF-8: otherwise one error naming the row and the byte."""
    data = path.read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as error:
        row = data[: error.start].count(b"\n") + 1
        byte = data[error.start : error.start + 1].hex()
        raise DataError(f"{path}, row {row}: not UTF-8 text (byte 0x{byte})") from None


def read_tsv(spec: TaskSpec, path: Path) -> list[Example]:
    """Read a GLUE-style TSV with quoting off (STS-B loses rows otherwise)."""
    check_utf8(path)
    with open(path, encoding="utf-8", newline="") as f:
        rows = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(rows, None)
        if not header or header == [""]:
            raise DataError(f"{path}: empty file, expected a header row")
        wanted = (*spec.text_columns, spec.label_column)
        missing = [c for c in wanted if c not in header]
        if missing:
            raise DataError(
                f"{path}, row 1: missing column {missing[0]!r} (header has {', '.join(header)})"
            )
        cols = [header.index(c) for c in spec.text_columns]
        label_col = header.index(spec.label_column)
        examples = []
        for lineno, row in enumerate(rows, start=2):
            if len(row) < len(header):
                raise DataError(
                    f"{path}, row {lineno}: {len(row)} fields, header has {len(header)}"
                )
            label = _parse_label(spec, row[label_col].strip(), path, lineno)
            examples.append(Example(tuple(row[c] for c in cols), label))
    if not examples:
        raise DataError(f"{path}: no examples after the header")
    return examples


def _parse_label(spec: TaskSpec, raw: str, path: Path, lineno: int) -> int | float:
    if spec.kind == "regression":
        try:
            value = float(raw)
        except ValueError:
            raise DataError(f"{path}, row {lineno}: score {raw!r} is not a number") from None
        if not np.isfinite(value):
            raise DataError(f"{path}, row {lineno}: score {raw!r} is not finite")
        return value
    name = spec.label_aliases.get(raw, raw)
    if name not in spec.labels:
        raise DataError(
            f"{path}, row {lineno}: label {raw!r} is not one of {', '.join(spec.labels)}"
        )
    return spec.labels.index(name)


def read_conll(spec: TaskSpec, path: Path) -> list[Example]:
    """Read CoNLL-2003 (`token POS chunk NER` per line, blank line between sentences)."""
    examples: list[Example] = []
    words: list[str] = []
    tags: list[int] = []
    tag_index = {t: i for i, t in enumerate(spec.labels)}
    check_utf8(path)
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            parts = line.split()
            if not parts or parts[0] == "-DOCSTART-":
                if words:
                    examples.append(Example(words, tags))
                    words, tags = [], []
                continue
            if len(parts) != 4:
                raise DataError(
                    f"{path}, row {lineno}: {len(parts)} columns, expected 4 (token POS chunk NER)"
                )
            if parts[1] not in tag_index:
                raise DataError(f"{path}, row {lineno}: unknown POS tag {parts[1]!r}")
            words.append(parts[0])
            tags.append(tag_index[parts[1]])
    if words:
        examples.append(Example(words, tags))
    if not examples:
        raise DataError(f"{path}: empty file, no sentences")
    return examples


def load_split(
    spec: TaskSpec,
    split: str,
    *,
    data_dir: str | os.PathLike | None = None,
    data_files: str | dict[str, str] | None = None,
) -> tuple[list[Example], str]:
    """All examples of one split, and where they came from (a file path or a hub id)."""
    folder = resolve_data_dir(data_dir)
    if isinstance(data_files, str):
        data_files = parse_data_files(data_files)
    if folder is None:
        return _load_hub(spec, split), f"hf://{spec.hub_path}/{spec.hub_config or ''}:{split}"
    path = local_file(spec, split, folder, data_files)
    reader = read_conll if spec.kind == "tagging" else read_tsv
    return reader(spec, path), str(path)


def _load_hub(spec: TaskSpec, split: str) -> list[Example]:
    """Load a split from the Hugging Face hub (needs network or a warm HF cache)."""
    import datasets

    ds = datasets.load_dataset(
        spec.hub_path, spec.hub_config, split=split, revision=spec.hub_revision
    )
    return hub_examples(spec, ds)


def hub_examples(spec: TaskSpec, rows) -> list[Example]:
    """Examples of a hub split (a `datasets.Dataset`, or any iterable of its rows).

    The hub datasets number their labels in `spec.labels` order (GLUE's ClassLabel
    names, CoNLL-2003's pos_tags names), which tests check against the hub schemas;
    unlabelled rows (GLUE test splits, label -1) are dropped."""
    out = []
    for row in rows:
        texts = [row[c] for c in spec.hub_text_columns]
        label: Any = row[spec.hub_label_column]
        if spec.kind == "tagging":
            out.append(Example(list(texts[0]), [int(t) for t in label]))
        elif label is None or (spec.kind == "classification" and int(label) < 0):
            continue
        else:
            out.append(
                Example(tuple(texts), float(label) if spec.kind == "regression" else int(label))
            )
    return out
