"""What a run reads, named by content rather than by where it lies: data files and local
model folders hash to the same identity wherever they are moved or copied.

    data_digest([("sst2", "train", ""), ("sst2", "validation", "")], "../shared/data")
    model_identity("/models/tiny-bert")         # sha256:... of its model files

Part of every config key (`TrainConfig.key`), so a moved data folder re-runs nothing.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

from bertrep.data.tasks import (
    get_task,
    hub_id,
    local_file,
    parse_data_files,
    resolve_data_dir,
    source_of,
)

MINILM = "minilm"  # the shipped all-MiniLM-L6-v2, a name and never a folder
# What names a local model folder: its config, tokenizer and weights.
MODEL_FILES = ("config.json", "bertrep.json", "vocab.txt", "tokenizer.json")
WEIGHT_SUFFIXES = (".safetensors", ".bin")


_FILE_DIGESTS: dict[tuple[str, int, int], str] = {}  # (resolved path, size, mtime_ns) -> sha256


def file_digest(path: str | os.PathLike) -> str:
    """sha256 of a file's content, cached in this process by (resolved path, size, mtime)."""
    path = Path(path).resolve()
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _FILE_DIGESTS:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        _FILE_DIGESTS[key] = digest.hexdigest()
    return _FILE_DIGESTS[key]


def split_digest(
    task: str,
    split: str,
    data_dir: str | os.PathLike | None = None,
    data_files: str | dict[str, str] | None = None,
) -> str:
    """What `load_split` reads, named by content: the sha256 of the local file (of a
    save_to_disk split's files), or on the hub the dataset, config, revision and split."""
    spec = get_task(task)
    source = source_of(spec, data_dir)
    if source == "hub":
        return hub_id(spec, split)
    if source == "disk":
        return folder_digest(Path(spec.disk) / split)
    if isinstance(data_files, str):
        data_files = parse_data_files(data_files)
    return file_digest(local_file(spec, split, resolve_data_dir(data_dir), data_files))


def folder_digest(folder: Path) -> str:
    """sha256 of a folder's files: their names (relative) and contents."""
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} does not exist")
    parts = [f"{p.relative_to(folder)}={file_digest(p)}" for p in sorted(folder.rglob("*"))
             if p.is_file()]  # fmt: skip
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def data_digest(
    reads: Iterable[tuple[str, str, str]], data_dir: str | os.PathLike | None = None
) -> str:
    """One digest of the data a run reads, wherever its folder lies. reads: (task, split,
    data_files) as `load_split` gets them; data_dir as there (empty: $BERTREP_DATA_DIR)."""
    parts = sorted({f"{t}:{s}={split_digest(t, s, data_dir, f)}" for t, s, f in reads})
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def model_identity(base_model: str) -> str:
    """base_model as part of a run's identity: a local folder by the content of its model
    files (see MODEL_FILES), so it may move; `minilm`, a hub id or a URI as written."""
    folder = Path(base_model).expanduser()
    if base_model == MINILM or ":/" in base_model or not folder.is_dir():
        return base_model
    files = sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and (p.name in MODEL_FILES or p.suffix in WEIGHT_SUFFIXES)
    )
    if not files:
        return str(folder.resolve())  # no model in it: loading will say so
    lines = "".join(f"{p.name}={file_digest(p)}\n" for p in files)
    return f"sha256:{hashlib.sha256(lines.encode()).hexdigest()}"
