"""`bertrep data DIR`: the built-in tasks' data from the Hugging Face hub, written into a
local folder in the layout bertrep reads (GLUE's TSVs, CoNLL-2003's text), so that every
later run reads local files (`DATA=DIR`, `--data_dir DIR` or BERTREP_DATA_DIR=DIR).

    bertrep data ~/data/bertrep                 # all five tasks
    bertrep data ~/data/bertrep --tasks sst2,pos

Resumable: each file is written whole (through a temporary name) and its SHA-256 beside
it (`train.tsv.sha256`); a file already there whose content matches its recorded digest
is skipped.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from bertrep import env
from bertrep.data.identity import file_digest
from bertrep.data.readers import class_names
from bertrep.data.task_spec import DataError, TaskSpec
from bertrep.data.tasks import TASKS, dataset_rows, get_task, hub_id

Loader = Callable[[TaskSpec, str], object]  # (task, split) -> a datasets.Dataset


def hub_split(spec: TaskSpec, split: str):
    """A split as the hub serves it."""
    import datasets

    try:
        return datasets.load_dataset(
            spec.hub_path, spec.hub_config, split=split, revision=spec.hub_revision
        )
    except Exception as error:  # offline, not found, a network error: one line
        offline = " (HF_HUB_OFFLINE is set: `make data` unsets it)" if env.hub_offline() else ""
        raise DataError(
            f"{hub_id(spec, split)} could not be read from the hub{offline}: "
            f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        ) from None


def is_done(path: Path) -> bool:
    """Written before and unchanged since: its content matches the digest beside it."""
    recorded = path.with_name(path.name + ".sha256")
    if not path.is_file() or not recorded.is_file():
        return False
    return recorded.read_text().split()[0] == file_digest(path)


def targets(spec: TaskSpec, folder: Path) -> dict[str, Path]:
    """split -> the file the task reads it from (its first folder and file name)."""
    return {s: folder / spec.folders[0] / names[0] for s, names in spec.local_files.items()}


def fetch(
    folder: str | os.PathLike,
    tasks: list[str] | None = None,
    load: Loader = hub_split,
    progress: bool = True,
) -> list[tuple[Path, str]]:
    """Write each built-in task's splits into `folder`: [(file, "written" | "kept")]."""
    from tqdm import tqdm

    folder = Path(folder).expanduser().resolve()
    specs = [get_task(t) for t in (tasks or list(TASKS))]
    for spec in specs:
        if not spec.folders or spec.own:
            raise DataError(f"{spec.where}: only built-in tasks are written by `bertrep data`")
    jobs = [(spec, split, path) for spec in specs for split, path in targets(spec, folder).items()]
    done = []
    for spec, split, path in tqdm(jobs, desc="bertrep data", unit="file", disable=not progress):
        if is_done(path):
            done.append((path, "kept"))
            continue
        dataset = load(spec, split)
        text = conll_text(spec, dataset) if spec.kind == "tagging" else tsv_text(spec, dataset)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        partial.write_text(text, encoding="utf-8")
        partial.replace(path)
        path.with_name(path.name + ".sha256").write_text(f"{file_digest(path)}  {path.name}\n")
        done.append((path, "written"))
    return done


def _clean(text: str) -> str:
    """A field of a quoting-free TSV: no tab or line break inside (spaces kept)."""
    return str(text).replace("\t", " ").replace("\r", " ").replace("\n", " ")


def _spelled(spec: TaskSpec, label) -> str:
    """A label as the task's files spell it (a hub class name through the aliases)."""
    if spec.kind == "regression":
        return repr(float(label))
    return spec.label_aliases.get(str(label), str(label))


def tsv_text(spec: TaskSpec, dataset) -> str:
    """A GLUE TSV: a header of the task's text and label columns, a row per labelled
    example (the hub's unlabelled test rows are left out)."""
    rows = dataset_rows(spec, dataset, hub_id(spec, "?"))
    lines = ["\t".join((*spec.text_columns, spec.label_column))]
    lines += [
        "\t".join((*map(_clean, row.texts), _spelled(spec, row.label)))
        for row in rows
        if row.label is not None
    ]
    return "\n".join(lines) + "\n"


def conll_text(spec: TaskSpec, dataset) -> str:
    """CoNLL-2003's text: `token POS chunk NER` per word, a blank line after a sentence;
    the chunk and NER columns by the dataset's own class names ("O" where it has none)."""
    rows = dataset_rows(spec, dataset, hub_id(spec, "?"))
    extra = []  # per column, per sentence: its tag names (None where the dataset has none)
    for column in ("chunk_tags", "ner_tags"):
        names = class_names(dataset, column)
        values = dataset[column] if column in dataset.column_names else [None] * len(rows)
        extra.append([[names[v] if names else str(v) for v in s] if s else None for s in values])
    out = []
    for i, row in enumerate(rows):
        for j, (word, tag) in enumerate(zip(row.texts, row.label, strict=True)):
            rest = [c[i][j] if c[i] else "O" for c in extra]
            out.append(" ".join((_clean(word), _spelled(spec, tag), *rest)))
        out.append("")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> None:
    """`bertrep data DIR`: write the built-in tasks' data from the hub into DIR."""
    import argparse
    import sys

    from bertrep.errors import InputError

    parser = argparse.ArgumentParser(
        prog="bertrep data",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("folder", help="where to write (created if absent)")
    parser.add_argument("--tasks", default=",".join(TASKS), help="comma-separated built-in tasks")
    args = parser.parse_args(argv)
    try:
        done = fetch(args.folder, [t.strip() for t in args.tasks.split(",") if t.strip()])
    except (InputError, ValueError, FileNotFoundError) as error:
        sys.exit(f"bertrep data: {error}")
    written = sum(how == "written" for _, how in done)
    folder = Path(args.folder).resolve()
    print(f"{written} files written, {len(done) - written} already there: {folder}")
    print(f"use it with DATA={args.folder} (make) or BERTREP_DATA_DIR={args.folder}")
