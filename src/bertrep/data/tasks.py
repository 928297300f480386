"""Tasks: which ones there are, and reading a split of one.

A task is named three ways, wherever a task is accepted (train's --task, a sweep's
task and source_task axes, probe tasks, an analysis spec's tasks):
- a built-in task: sst2, stsb, mnli, rte, pos (task files in bertrep/data/builtin_tasks);
- a task file: a path ending in .yaml or .yml (bertrep.data.task_spec says what it holds);
- a short name: <name>.yaml in the folder $BERTREP_TASKS names.
Once read, a task file's task is known by its name in this process.

Where a built-in task's rows come from:
- a local data folder (`--data_dir` or `BERTREP_DATA_DIR`): GLUE's own layout
  (`<data_dir>/SST-2/train.tsv`, `MNLI/dev_matched.tsv`, ...; lower-case folder names
  such as `sst2/` work too) and CoNLL-2003 (`conll2003/{train,valid,test}.txt`).
  Other file names per split: `--data_files "train=my_train.tsv,validation_matched=/abs/dev.tsv"`
  (relative names are taken inside the task's folder).
- the Hugging Face hub, when no data folder is given.
An own task's rows come from where its file says (files, disk or hub).

    >>> from bertrep.data.tasks import get_task, load_split
    >>> examples, source = load_split(get_task("sst2"), "validation", data_dir="../shared/data")
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import re
from pathlib import Path

from bertrep import env
from bertrep.data.readers import (
    Example,
    Row,
    class_names,
    raw_labels,
    read_file,
    table_rows,
    to_examples,
)
from bertrep.data.task_spec import DataError, TaskSpec, read_task_file

__all__ = ["DataError", "Example", "TaskSpec"]

BUILTIN_FOLDER = Path(__file__).parent / "builtin_tasks"
BUILTIN_ORDER = ("sst2", "stsb", "mnli", "rte", "pos")
TASKS: dict[str, TaskSpec] = {
    name: read_task_file(BUILTIN_FOLDER / f"{name}.yaml", builtin=True) for name in BUILTIN_ORDER
}
CONLL_POS_TAGS = TASKS["pos"].labels  # the 47 tags, in the hub's order
GET_DATA = (
    "get one with `bertrep data DIR` and pass it (DATA=DIR for make, --data_dir or "
    "BERTREP_DATA_DIR), or set HF_HUB_OFFLINE=0 to read the hub directly"
)

_OWN: dict[str, TaskSpec] = {}  # own tasks read in this process, by name


def is_task_file(ref: str) -> bool:
    return ref.lower().endswith((".yaml", ".yml"))


def register(path: str | os.PathLike) -> TaskSpec:
    """Read a task file and know its task by name from now on; a second, different
    file of the same name (or a built-in name) is one error naming both."""
    spec = read_task_file(path)
    if spec.name in TASKS:
        raise DataError(f"{spec.source}: name {spec.name!r} is a built-in task; choose another")
    known = _OWN.get(spec.name)
    if known and (known.source, known.digest) == (spec.source, spec.digest):
        return known  # its labels already resolved
    if known and known.source != spec.source:  # its files lie beside it: another task
        raise DataError(
            f"two tasks are named {spec.name!r}: {known.source} and {spec.source}; rename one"
        )
    _OWN[spec.name] = spec = _with_labels(spec)
    return spec


def get_task(ref: str) -> TaskSpec:
    """A built-in task by name, a task file by path, an own task read before (or in
    $BERTREP_TASKS) by name."""
    if is_task_file(ref):
        return register(ref)
    if ref in TASKS:
        return TASKS[ref]
    if ref in _OWN:
        return _OWN[ref]
    folder = os.environ.get(env.TASKS_DIR, "")
    for suffix in (".yaml", ".yml"):
        if folder and (Path(folder) / f"{ref}{suffix}").is_file():
            return register(Path(folder) / f"{ref}{suffix}")
    where = (
        f", nor a task file in {folder}"
        if folder
        else f" (or a folder of them in ${env.TASKS_DIR})"
    )
    raise ValueError(
        f"unknown task {ref!r}; known tasks: {', '.join(known_tasks())}; "
        f"an own task is named by its task file (.yaml){where}"
    )


def known_tasks() -> list[str]:
    """Built-in tasks, own tasks read in this process, and those in $BERTREP_TASKS."""
    names = [*TASKS, *_OWN]
    folder = os.environ.get(env.TASKS_DIR, "")
    if folder and Path(folder).is_dir():
        names += sorted(p.stem for p in Path(folder).glob("*.y*ml") if p.stem not in names)
    return names


def display_name(task: str) -> str:
    """How a person names a task (SST-2) or the pretrained model's row (base)."""
    spec = TASKS.get(task) or _OWN.get(task)
    return (spec.display_name or spec.name) if spec else task


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path | None:
    """The data folder: the argument if given, else $BERTREP_DATA_DIR, else None (the hub)."""
    value = str(data_dir) if data_dir else os.environ.get(env.DATA_DIR, "")
    if not value:
        return None
    path = Path(value).expanduser().resolve()
    if not path.is_dir():
        raise FileNotFoundError(f"data folder {path} does not exist: {GET_DATA}")
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
    spec: TaskSpec, split: str, data_dir: Path | None, data_files: dict[str, str] | None = None
) -> Path:
    """The file holding `split`: an own task's, else the one inside `data_dir` (see the
    module docstring)."""
    if spec.files:
        if data_files:
            raise DataError(f"data_files is for built-in tasks; {spec.where} names its own files")
        if split not in spec.files:
            raise ValueError(f"task {spec.name} has no split {split!r}; splits: {spec.splits}")
        path = Path(spec.files[split])
        if not path.is_file():
            raise FileNotFoundError(f"{spec.where}: files.{split}: {path} does not exist")
        return path
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


def source_of(spec: TaskSpec, data_dir: str | os.PathLike | None) -> str:
    """Where a task's rows are read from: "files", "disk", "folder" or "hub"."""
    if spec.files:
        return "files"
    if spec.disk:
        return "disk"
    if spec.folders and resolve_data_dir(data_dir) is not None:
        return "folder"
    return "hub"


def load_split(
    spec: TaskSpec,
    split: str,
    *,
    data_dir: str | os.PathLike | None = None,
    data_files: str | dict[str, str] | None = None,
) -> tuple[list[Example], str]:
    """All examples of one split, and where they came from (a file path or a hub id)."""
    rows, source = read_rows(spec, split, data_dir=data_dir, data_files=data_files)
    return to_examples(spec, rows, source), source


def read_rows(
    spec: TaskSpec,
    split: str,
    *,
    data_dir: str | os.PathLike | None = None,
    data_files: str | dict[str, str] | None = None,
) -> tuple[list[Row], str]:
    """A split's rows as read (labels as written), and where they came from."""
    if isinstance(data_files, str):
        data_files = parse_data_files(data_files)
    source = source_of(spec, data_dir)
    if source == "disk":
        return _disk_rows(spec, split), f"{spec.disk}:{split}"
    if source == "hub":  # data_files names files in a data folder: none here
        return _hub_rows(spec, split), hub_id(spec, split, revision=False)
    path = local_file(spec, split, resolve_data_dir(data_dir), data_files)
    return read_file(spec, path), str(path)


def hub_id(spec: TaskSpec, split: str, revision: bool = True) -> str:
    """hf://path/config[@revision]:split (the revision in identities, not in logs)."""
    revision = f"@{spec.hub_revision}" if spec.hub_revision and revision else ""
    return f"hf://{spec.hub_path}/{spec.hub_config or ''}{revision}:{split}"


def _hub_rows(spec: TaskSpec, split: str) -> list[Row]:
    """A split from the Hugging Face hub (needs network or a warm HF cache)."""
    import datasets

    try:
        ds = datasets.load_dataset(
            spec.hub_path, spec.hub_config, split=split, revision=spec.hub_revision
        )
    except Exception as error:
        if env.hub_offline():
            raise DataError(
                f"{spec.where}: {hub_id(spec, split)} cannot be read with HF_HUB_OFFLINE set "
                f"and no data folder given: {GET_DATA}"
            ) from None
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise DataError(f"{spec.where}: {hub_id(spec, split)}: {first}") from None
    return dataset_rows(spec, ds, hub_id(spec, split))


def _disk_rows(spec: TaskSpec, split: str) -> list[Row]:
    return dataset_rows(spec, _disk_split(spec, split), f"{spec.disk}:{split}")


def _disk_split(spec: TaskSpec, split: str):
    import datasets

    if not Path(spec.disk).is_dir():
        raise FileNotFoundError(f"{spec.where}: disk: {spec.disk} does not exist")
    saved = datasets.load_from_disk(spec.disk)
    if not isinstance(saved, datasets.DatasetDict):
        raise DataError(f"{spec.where}: disk: {spec.disk} holds one split, not a DatasetDict")
    if split not in saved:
        raise DataError(
            f"{spec.where}: disk: {spec.disk} has no split {split!r} ({', '.join(saved)})"
        )
    return saved[split]


def dataset_rows(spec: TaskSpec, dataset, where: str) -> list[Row]:
    """Rows of a `datasets.Dataset`: a hub split with the hub's own column names, or a
    save_to_disk split with the task's; an integer class label read by its name."""
    hub = spec.hub_path and not spec.disk
    columns = (spec.hub_text_columns, spec.hub_label_column) if hub else None
    label_at = spec.hub_label_column if hub else spec.label_column
    names = class_names(dataset, label_at)
    return table_rows(spec, dataset, itertools.count(), where, columns=columns, names=names)


def hub_examples(spec: TaskSpec, dataset) -> list[Example]:
    """Examples of a hub split (a `datasets.Dataset` with the hub's schema)."""
    where = hub_id(spec, str(getattr(dataset, "split", "") or "?"))
    return to_examples(spec, dataset_rows(spec, dataset, where), where)


def _with_labels(spec: TaskSpec) -> TaskSpec:
    """An own task without `labels`: the dataset's class names, else the sorted labels
    of its training split (numbers in numeric order), recorded in `labels_from`."""
    if spec.labels or spec.kind == "regression":
        return spec
    if spec.disk or (spec.hub_path and not spec.files):
        names = _dataset_class_names(spec)
        if names:
            return dataclasses.replace(spec, labels=names, labels_from="dataset")
    rows, where = read_rows(spec, spec.train_split)
    found = raw_labels(rows, spec.kind == "tagging", spec.label_aliases)
    if not found:
        raise DataError(f"{where}: no labels in the {spec.train_split} split")
    number = re.compile(r"-?\d+")
    ordered = sorted(found, key=lambda x: (0, int(x), x) if number.fullmatch(x) else (1, 0, x))
    return dataclasses.replace(spec, labels=tuple(ordered), labels_from="training split")


def _dataset_class_names(spec: TaskSpec) -> tuple[str, ...]:
    import datasets

    if spec.disk:
        return class_names(_disk_split(spec, spec.train_split), spec.label_column)
    try:
        builder = datasets.load_dataset_builder(
            spec.hub_path, spec.hub_config, revision=spec.hub_revision
        )
    except Exception as error:  # offline, not found: one line
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise DataError(
            f"{spec.where}: hub {spec.hub_path}: no labels given, and {first}"
        ) from None
    return class_names(builder.info.features, spec.hub_label_column)
