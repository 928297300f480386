"""Per-layer token activations on a probe set, as a Parquet table.

One row per probe token (`sentence`, `position`, `token_id`), one column per hidden
state (`layer_0` = embeddings, `layer_l` = block l), each a fixed-size list of the
layer's width, so a single layer reads alone:

    >>> import pyarrow.parquet as pq
    >>> t = pq.read_table("step_60.parquet", columns=["layer_3"])

The file's metadata (`bertrep.activations`) holds the probe digest, run id, step,
storage dtype and shapes; CKA compares two tables only if digests and rows agree.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from bertrep.encode import Encoded, collate
from bertrep.probes import ProbeSet

META_KEY = b"bertrep.activations"


def layer_column(layer: int) -> str:
    return f"layer_{layer}"


@torch.no_grad()
def extract(
    model, data: Encoded, probe: ProbeSet, *, pad_id: int, batch_size: int = 64, device=None
) -> np.ndarray:
    """Hidden states at the probe tokens: (L + 1, N, width) float32, rows in probe order.

    Runs in float32 with autocast off: the CKA downstream wants the model's own values.
    """
    was_training = model.training
    model.eval()
    device = device or next(model.parameters()).device
    sentences = np.unique(probe.sentence)
    out = None
    row_of = np.searchsorted(sentences, probe.sentence)  # probe row -> sentence slot
    by_sentence = np.argsort(row_of, kind="stable")
    starts = np.searchsorted(row_of[by_sentence], np.arange(len(sentences) + 1))
    with torch.autocast(device_type=torch.device(device).type, enabled=False):
        for first in range(0, len(sentences), batch_size):
            index = sentences[first : first + batch_size]
            batch = {k: v.to(device) for k, v in collate(data, index, pad_id).items()}
            batch.pop("labels")
            states = torch.stack(model.hidden_states(**batch)).float()  # (L+1, b, t, h)
            if out is None:
                out = np.empty((states.shape[0], len(probe), states.shape[-1]), np.float32)
            rows = by_sentence[starts[first] : starts[first + len(index)]]
            slot = row_of[rows] - first
            picked = states[:, torch.as_tensor(slot), torch.as_tensor(probe.position[rows])]
            out[:, rows] = picked.cpu().numpy()
    model.train(was_training)
    return out


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


def read_meta(path: str | Path) -> dict:
    return json.loads(pq.read_schema(path).metadata[META_KEY])


def read_layers(path: str | Path, layers: list[int] | None = None) -> dict[int, np.ndarray]:
    """{layer: (N, width) array in the stored dtype} for the requested layers (all if None)."""
    meta = read_meta(path)
    layers = list(range(meta["num_hidden_states"])) if layers is None else layers
    table = pq.read_table(path, columns=[layer_column(layer) for layer in layers])
    out = {}
    for layer in layers:
        column = table[layer_column(layer)].combine_chunks()
        out[layer] = column.values.to_numpy().reshape(len(column), meta["width"])
    return out
