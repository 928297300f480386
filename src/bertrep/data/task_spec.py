"""What a task is, as data: the `TaskSpec`, and the task file (YAML) that defines one.

    spec = read_task_file("tasks/reviews.yaml")

A task file needs only these keys (docs/own-tasks.md has one example of each kind):

    name: reviews                   # how runs, tables and figures name it
    kind: classification            # classification | regression | tagging
    text_columns: [review]          # one or two; tagging: one column of word lists
    label_column: stars             # tagging: a column of per-word tag lists
    labels: [neg, pos]              # optional: else the dataset's class names, else the
                                    # sorted labels of the training split
    metric: accuracy                # accuracy f1_macro mcc | pearson spearman | accuracy
    train_split: train              # the defaults
    eval_split: validation
    files: {train: train.csv, validation: dev.csv}  # CSV, TSV, JSONL, Parquet or CoNLL
                                    # text, relative to the task file; or
    disk: saved/                    # a folder written by datasets' save_to_disk; or
    hub: {path: user/data, config: null, revision: null}

The built-in tasks are such files (bertrep/data/builtin_tasks/); what they need beyond
these keys is there too: `display_name`, `data_folder` (their layout inside a data
folder: folder spellings, fallback file names, CoNLL-2003's columns), `label_aliases`,
and the hub's own column names (`hub.text_columns`, `hub.label_column`).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bertrep.errors import InputError

KINDS = ("classification", "regression", "tagging")
METRICS = {  # per kind, the default first
    "classification": ("accuracy", "f1_macro", "mcc"),
    "regression": ("pearson", "spearman"),
    "tagging": ("accuracy",),
}
SUFFIXES = (".csv", ".tsv", ".jsonl", ".json", ".parquet", ".conll", ".txt")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class DataError(InputError):
    """A task file or data file that cannot be read as it should; the message names the
    file and the key or row."""


@dataclass(frozen=True)
class TaskSpec:
    """One task, as its task file says.

    kind: "classification" (one label per text or text pair), "regression" (one float),
    or "tagging" (one label per word; the first sub-token carries it).
    labels: class names in index order; `label_aliases` maps other spellings to them.
    Where the data is: `files` (split -> file), `disk` (a save_to_disk folder), the hub
    (`hub_*`), or for built-in tasks a layout inside the data folder (`folders`,
    `local_files`: split -> candidate file names, first found wins) with the hub as
    fallback.
    """

    name: str
    kind: str
    metric: str
    eval_split: str = "validation"
    train_split: str = "train"
    display_name: str = ""  # how figures and tables name it (SST-2); else its name
    description: str = ""
    text_columns: tuple[str, ...] = ()
    label_column: str = "label"
    labels: tuple[str, ...] = ()
    labels_from: str = "task file"  # task file | dataset | training split
    label_aliases: dict[str, str] = field(default_factory=dict)
    folders: tuple[str, ...] = ()
    local_files: dict[str, tuple[str, ...]] = field(default_factory=dict)
    conll_columns: int = 0  # CoNLL text: columns per line (0: any number >= 2)
    conll_tag_column: int = -1  # ... and the one holding the tag
    files: dict[str, str] = field(default_factory=dict)  # split -> absolute path
    disk: str = ""
    hub_path: str = ""
    hub_config: str | None = None
    hub_revision: str | None = None
    hub_text_columns: tuple[str, ...] = ()
    hub_label_column: str = "label"
    source: str = ""  # the task file read
    digest: str = ""  # sha256 of an own task file's content; "" for a built-in task

    @property
    def num_labels(self) -> int:
        """Output width of the task head: classes, 1 for regression, tags for tagging."""
        return 1 if self.kind == "regression" else len(self.labels)

    @property
    def splits(self) -> tuple[str, ...]:
        if self.files:
            return tuple(self.files)
        if self.local_files:
            return tuple(self.local_files)
        return tuple(dict.fromkeys((self.train_split, self.eval_split)))

    @property
    def own(self) -> bool:
        """A task a user defined (it has a digest), not one of the built-in ones."""
        return bool(self.digest)

    @property
    def where(self) -> str:
        """How error messages name it: an own task by its file, a built-in one by name."""
        return self.source if self.own else self.name


KEYS = ("name", "kind", "text_columns", "label_column", "labels", "metric", "train_split",
        "eval_split", "files", "disk", "hub", "display_name", "description", "data_folder",
        "label_aliases")  # fmt: skip
HUB_KEYS = ("path", "config", "revision", "text_columns", "label_column")
FOLDER_KEYS = ("folders", "files", "conll")


def read_task_file(path: str | Path, builtin: bool = False) -> TaskSpec:
    """The task a task file defines; one DataError naming the file and the key otherwise.
    A built-in task's file gets no digest (its identity is its name, as always)."""
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise DataError(f"task file {path} does not exist")
    text = path.read_bytes()
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f", line {mark.line + 1}" if mark else ""
        why = str(getattr(error, "problem", None) or error).splitlines()[0]
        raise DataError(f"{path}{line}: not YAML ({why})") from None
    digest = "" if builtin else hashlib.sha256(text).hexdigest()[:16]
    return spec_from_dict(raw, path, digest)


def spec_from_dict(raw: Any, path: Path, digest: str = "") -> TaskSpec:
    if not isinstance(raw, dict):
        raise DataError(f"{path}: a task file is a mapping of keys ({', '.join(KEYS[:6])}, ...)")
    _known(raw, KEYS, path, "")
    name = _text(raw, "name", path, required=True)
    if not NAME.match(name) or name == "base":
        raise DataError(f"{path}: name {name!r} must be letters, digits, _ . - (and not base)")
    kind = _text(raw, "kind", path, required=True)
    if kind not in KINDS:
        raise DataError(f"{path}: unknown kind {kind!r} (known: {', '.join(KINDS)})")
    metric = _text(raw, "metric", path) or METRICS[kind][0]
    if metric not in METRICS[kind]:
        raise DataError(
            f"{path}: unknown metric {metric!r} for a {kind} task "
            f"(known: {', '.join(METRICS[kind])})"
        )
    texts = _names(raw, "text_columns", path, required=True)
    if not 1 <= len(texts) <= (1 if kind == "tagging" else 2):
        most = "one column of word lists" if kind == "tagging" else "one or two columns"
        raise DataError(f"{path}: text_columns must name {most}; got {list(texts)}")
    labels = _names(raw, "labels", path)
    if kind == "regression" and labels:
        raise DataError(f"{path}: labels: a regression task has no labels")
    values: dict[str, Any] = dict(
        name=name, kind=kind, metric=metric, text_columns=texts,
        label_column=_text(raw, "label_column", path) or "label",
        labels=labels, labels_from="task file" if labels else "",
        train_split=_text(raw, "train_split", path) or "train",
        eval_split=_text(raw, "eval_split", path) or "validation",
        display_name=_text(raw, "display_name", path), description=_text(raw, "description", path),
        label_aliases=_aliases(raw.get("label_aliases"), labels, path),
        source=str(path), digest=digest,
    )  # fmt: skip
    values |= _where(raw, path, values)
    return TaskSpec(**values)


def _where(raw: dict, path: Path, values: dict) -> dict:
    """Where the data is: files, disk, hub, or a data-folder layout (with the hub)."""
    given = [k for k in ("files", "disk", "hub") if raw.get(k)]
    if len(given) != 1 or (raw.get("data_folder") and given != ["hub"]):
        raise DataError(
            f"{path}: say where the data is with one of files, disk or hub"
            + (f"; got {' and '.join(given)}" if len(given) > 1 else "")
        )
    out: dict[str, Any] = _hub(raw.get("hub"), path, values) if raw.get("hub") else {}
    if raw.get("files"):
        files = raw["files"]
        if not isinstance(files, dict):
            raise DataError(f"{path}: files must map a split to a file")
        out["files"] = {str(s): str((path.parent / str(f)).resolve()) for s, f in files.items()}
        for split in (values["train_split"], values["eval_split"]):
            if split not in out["files"]:
                raise DataError(f"{path}: files has no {split!r} split (it has {', '.join(files)})")
        for split, file in out["files"].items():
            if Path(file).suffix.lower() not in SUFFIXES:
                raise DataError(
                    f"{path}: files.{split}: {Path(file).name} is not one of {', '.join(SUFFIXES)}"
                )
    elif raw.get("disk"):
        out["disk"] = str((path.parent / str(raw["disk"])).resolve())
    elif raw.get("data_folder"):
        out |= _data_folder(raw["data_folder"], path)
    return out


def _hub(hub: Any, path: Path, values: dict) -> dict:
    if not isinstance(hub, dict) or not hub.get("path"):
        raise DataError(f"{path}: hub must be a mapping with a path (and config, revision)")
    _known(hub, HUB_KEYS, path, "hub.")
    return {
        "hub_path": str(hub["path"]),
        "hub_config": None if hub.get("config") is None else str(hub["config"]),
        "hub_revision": None if hub.get("revision") is None else str(hub["revision"]),
        "hub_text_columns": _names(hub, "text_columns", path) or values["text_columns"],
        "hub_label_column": _text(hub, "label_column", path) or values["label_column"],
    }


def _data_folder(layout: Any, path: Path) -> dict:
    if not isinstance(layout, dict):
        raise DataError(f"{path}: data_folder must be a mapping ({', '.join(FOLDER_KEYS)})")
    _known(layout, FOLDER_KEYS, path, "data_folder.")
    files = layout.get("files") or {}
    conll = layout.get("conll") or {}
    return {
        "folders": _names(layout, "folders", path, required=True),
        "local_files": {str(s): tuple(map(str, names)) for s, names in files.items()},
        "conll_columns": int(conll.get("columns", 0)),
        "conll_tag_column": int(conll.get("tag_column", -1)),
    }


def _aliases(raw: Any, labels: tuple[str, ...], path: Path) -> dict[str, str]:
    """label_aliases: other spellings -> a label (of `labels`, where given)."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise DataError(f"{path}: label_aliases must map a spelling to a label; got {raw!r}")
    out = {str(k): str(v) for k, v in raw.items()}
    unknown = [v for v in out.values() if labels and v not in labels]
    if unknown:
        raise DataError(f"{path}: label_aliases: {unknown[0]!r} is not one of the labels")
    return out


def _known(raw: dict, keys: tuple[str, ...], path: Path, prefix: str) -> None:
    for key in raw:
        if key not in keys:
            raise DataError(f"{path}: unknown key {prefix}{key!r} (known: {', '.join(keys)})")


def _text(raw: dict, key: str, path: Path, required: bool = False) -> str:
    value = raw.get(key)
    if value is None or value == "":
        if required:
            raise DataError(f"{path}: missing key {key!r}")
        return ""
    if not isinstance(value, str | int | float):
        raise DataError(f"{path}: {key} must be a string; got {value!r}")
    return str(value)


def _names(raw: dict, key: str, path: Path, required: bool = False) -> tuple[str, ...]:
    value = raw.get(key)
    if value is None:
        if required:
            raise DataError(f"{path}: missing key {key!r}")
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str | int) for v in value):
        raise DataError(f"{path}: {key} must be a list of names; got {value!r}")
    if any(isinstance(v, bool) for v in value):  # YAML reads yes/no/true/false so
        raise DataError(f"{path}: {key}: {value!r} holds a YAML boolean; quote the names")
    return tuple(str(v) for v in value)
