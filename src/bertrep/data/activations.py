"""Per-layer token activations on a probe set, as a Parquet table.

One row per probe token (`sentence`, `position`, `token_id`), one column per hidden
state h = 0..L (`layer_0` = the embedding output, `layer_h` = the output of block h),
each a fixed-size list of the model's width, so a single hidden state reads alone:

    >>> import pyarrow.parquet as pq
    >>> t = pq.read_table("step_60.parquet", columns=["layer_3"])

The file's metadata (`bertrep.activations`) holds the probe digest, run id, step,
storage dtype and shapes, and (a run's tables) the encoder's `model_type` and what its
hidden state L is (`last_hidden_state`: "output of block L", or block L after a final
norm: `encoders.describe`); CKA compares two tables only if digests and rows agree
(`check_comparable`). Reading needs pyarrow and numpy only; `bertrep.training.readout` extracts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

if TYPE_CHECKING:
    from bertrep.data.probe_sets import ProbeSet

META_KEY = b"bertrep.activations"


def layer_column(layer: int) -> str:
    return f"layer_{layer}"


def write_table(
    path: str | Path, states: np.ndarray, probe: ProbeSet, meta: dict, dtype: str = "float16"
) -> Path:
    """Write (L + 1, N, width) states over `probe` to Parquet, one column per layer."""
    n_layers, n, width = states.shape
    if n != len(probe):
        raise ValueError(f"states have {n} rows, probe set {probe.digest} has {len(probe)}")
    stored = states.astype(dtype)
    if not np.isfinite(stored).all() and np.isfinite(states).all():
        raise ValueError(f"activations overflow {dtype}; store them as float32")
    columns = {
        "sentence": pa.array(probe.sentence, pa.int32()),
        "position": pa.array(probe.position, pa.int32()),
        "token_id": pa.array(probe.token_id, pa.int32()),
    }
    for layer in range(n_layers):
        flat = pa.array(stored[layer].reshape(-1))
        columns[layer_column(layer)] = pa.FixedSizeListArray.from_arrays(flat, width)
    full_meta = {
        **meta,
        "probe_digest": probe.digest,
        "probe_task": probe.meta["task"],
        "dtype": dtype,
        "num_hidden_states": n_layers,
        "width": width,
        "rows": n,
    }
    table = pa.table(columns).replace_schema_metadata({META_KEY: json.dumps(full_meta)})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Row groups of one layer-column chunk each keep single-layer reads cheap.
    pq.write_table(table, path, compression="zstd", use_dictionary=False)
    return path


class TableError(ValueError):
    """An activation table that cannot be read or compared: names the file and the problem."""


def read_meta(path: str | Path) -> dict:
    """The table's `bertrep.activations` metadata; a clear error for a file that is not one."""
    try:
        metadata = pq.read_schema(path).metadata or {}
    except (OSError, pa.ArrowInvalid) as error:
        raise TableError(f"{path}: not a readable Parquet file ({error})") from None
    if META_KEY not in metadata:
        raise TableError(f"{path}: not an activation table (no {META_KEY.decode()} metadata)")
    return json.loads(metadata[META_KEY])


def read_layers(path: str | Path, layers: list[int] | None = None) -> dict[int, np.ndarray]:
    """{h: (N, width) array in the stored dtype} for the requested hidden states (all if
    None). A truncated file or a NaN/inf value is a TableError naming the file."""
    meta = read_meta(path)
    layers = list(range(meta["num_hidden_states"])) if layers is None else layers
    try:
        table = pq.read_table(path, columns=[layer_column(layer) for layer in layers])
    except (OSError, pa.ArrowInvalid) as error:
        raise TableError(f"{path}: cannot read its layers ({error})") from None
    out = {}
    for layer in layers:
        column = table[layer_column(layer)].combine_chunks()
        values = column.values.to_numpy().reshape(len(column), meta["width"])
        if len(values) != meta["rows"]:
            raise TableError(f"{path}: {len(values)} rows, its metadata says {meta['rows']}")
        if not np.isfinite(values).all():
            raise TableError(f"{path}: {layer_column(layer)} holds NaN or inf")
        out[layer] = values
    return out


def read_states(path: str | Path, layers: list[int] | None = None) -> np.ndarray:
    """(len(layers), N, width) array in the stored dtype (all hidden states if None)."""
    return np.stack(list(read_layers(path, layers).values()))


def read_rows(path: str | Path) -> np.ndarray:
    """(N, 2) int64 (sentence, position) of each row: the row order CKA relies on."""
    table = pq.read_table(path, columns=["sentence", "position"])
    return np.stack([table[c].to_numpy().astype(np.int64) for c in table.column_names], 1)


def check_comparable(path_a: str | Path, path_b: str | Path) -> None:
    """Two tables may be compared row by row only if they share the probe digest and the
    row order; anything else is a TableError naming both files."""
    a, b = read_meta(path_a), read_meta(path_b)
    if a["probe_digest"] != b["probe_digest"]:
        raise TableError(
            f"probe sets differ: {path_a} has {a['probe_digest']} ({a['probe_task']}), "
            f"{path_b} has {b['probe_digest']} ({b['probe_task']})"
        )
    if a["rows"] != b["rows"] or not np.array_equal(read_rows(path_a), read_rows(path_b)):
        raise TableError(f"row order differs between {path_a} and {path_b}")
