"""The frozen prefix, computed once and shared.

With frozen_layers = k >= 1 the stem and blocks 1..k are a fixed feature extractor
(no gradient, no dropout): their output for a training example is the same at every
step, in every epoch and in every run whose frozen part has the same weights. It is
computed once per (frozen weights, training set, k), kept in the process (a bounded
memory budget) and on disk under the cache folder (a bounded disk budget, least
recently used entries evicted), so every trial of a sweep, in any worker process,
that freezes the same part of the same start model on the same training set reads it
instead of running the prefix. A run that freezes more layers than a stored entry
starts from the deepest stored layer below its k.

An entry is named by content: a digest of the frozen tensors (stem and blocks 1..k),
the training set's identity (its examples and tokenization) and k; what model or path
the weights came from does not matter. Files are written whole, then renamed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import time
import warnings
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from bertrep import encoders, env
from bertrep.data.encode import Encoded, collate, eval_batches
from bertrep.errors import InputError

_VERSION = 1  # of the entry layout and naming; a change orphans older files (evicted)
# what of an encoder's configuration does not change its numbers: where it was read from
_NOT_NUMERIC = {"_name_or_path", "architectures", "transformers_version", "id2label", "label2id"}
STALE_PARTIAL_S = 3600  # a partial file this old is a killed writer's: evicted

# entry id -> one (len_i, h) float32 tensor per example, least recently used first
_MEMORY: OrderedDict[str, list[torch.Tensor]] = OrderedDict()


def nbytes(data: Encoded, width: int) -> int:
    return int(data.lengths().sum()) * width * 4


def folder() -> Path:
    return env.cache_root() / "prefix"


@torch.no_grad()
def prefix_states(
    model,
    data: Encoded,
    pad_id: int,
    memory_gb: float,
    disk_gb: float,
    uses: int,
    batch_size: int = 64,
) -> list[torch.Tensor] | None:
    """Layer-k outputs of every example of `data` (k = model.frozen_layers), or None when
    nothing is frozen, the data has no identity, the states exceed the memory budget (the
    run holds them while it trains), or no entry is stored and the run reads fewer than
    half as many examples (`uses`: steps x batch size) as computing them runs through the
    prefix (a second trial on the same prefix, e.g. another seed, then pays it back)."""
    k = model.frozen_layers
    size = nbytes(data, model.encoder.config.hidden_size)
    if k == 0 or not data.key or size > memory_gb * 2**30:
        return None
    ids = entry_ids(model.encoder, data.key, k)
    states = _load(ids[k], memory_gb, disk_gb)
    if states is not None or 2 * uses < len(data):
        return states
    below, start = 0, None
    for j in sorted((j for j in ids if j < k), reverse=True):  # the deepest stored
        start = _load(ids[j], memory_gb, disk_gb)
        if start is not None:  # (another process may have evicted what was listed)
            below = j
            break
    states = _compute(model, data, pad_id, below, start, batch_size)
    _keep(ids[k], states, size, memory_gb, disk_gb)
    return states


def entry_ids(encoder, data_key: str, k: int) -> dict[int, str]:
    """{j: the id of hidden state j's entry} for j = 1..k (only k for an encoder whose
    blocks share weights: its hidden states below k are not a frozen prefix). An id
    covers the frozen tensors (name, dtype, shape, bytes), the encoder's configuration
    and attention implementation, the device type and the training set."""
    tensors = encoder.state_dict()
    config = {k: v for k, v in encoder.config.to_dict().items() if k not in _NOT_NUMERIC}
    device = next(encoder.parameters()).device.type
    attention = getattr(encoder.config, "_attn_implementation", "")
    hashed: dict[str, str] = {}
    ids = {}
    for j in range(1, k + 1):
        try:
            paths = tuple(f"{path}." for path in encoders.frozen_paths(encoder, j))
        except InputError:  # ALBERT's tied blocks: only all of them are a prefix
            continue
        names = sorted(name for name in tensors if name.startswith(paths))
        for name in names:
            if name not in hashed:
                tensor = tensors[name].detach()
                array = tensor.cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
                what = f"{tensor.dtype}{tuple(tensor.shape)}"
                hashed[name] = f"{what}:{hashlib.sha256(array).hexdigest()}"
        frozen = [[n, hashed[n]] for n in names]
        blob = json.dumps([_VERSION, config, attention, device, data_key, j, frozen], default=str)
        ids[j] = hashlib.sha256(blob.encode()).hexdigest()[:32]
    return ids


def _compute(model, data: Encoded, pad_id: int, below: int, start, batch_size: int):
    """Hidden state k of every example, from hidden state `below` (`start`, or the tokens)."""
    k = model.frozen_layers
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    states: list[torch.Tensor] = [None] * len(data)  # type: ignore[list-item]
    # float32 whatever the training precision: these values stand in for the prefix
    with torch.autocast(device_type=device.type, enabled=False):
        for index in eval_batches(data, batch_size):
            batch = collate(data, index, pad_id, start)
            batch = {name: tensor.to(device) for name, tensor in batch.items()}
            hidden = encoders.run(
                model.encoder,
                batch["input_ids"],
                batch["attention_mask"],
                batch["token_type_ids"],
                start=below,
                stop=k,
                states=batch.get("prefix_states"),
            )
            hidden = hidden.float().cpu()
            for row, i in enumerate(index):
                states[i] = hidden[row, : len(data.input_ids[i])].clone()
    model.train(was_training)
    return states


def _load(entry: str, memory_gb: float, disk_gb: float) -> list[torch.Tensor] | None:
    if entry in _MEMORY:
        _MEMORY.move_to_end(entry)
        return _MEMORY[entry]
    if disk_gb <= 0:
        return None
    path = folder() / f"{entry}.npz"
    try:
        with np.load(path) as stored:
            flat, lengths = stored["states"], stored["lengths"]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):  # a damaged file
        path.unlink(missing_ok=True)
        return None
    with contextlib.suppress(OSError):  # another user's file: read, not touched
        os.utime(path)  # recently used: evicted last
    states = list(torch.from_numpy(flat).split(lengths.tolist()))
    _remember(entry, states, flat.nbytes, memory_gb)
    return states


def _keep(entry: str, states: list[torch.Tensor], size: int, memory_gb: float, disk_gb: float):
    _remember(entry, states, size, memory_gb)
    if disk_gb <= 0 or size > disk_gb * 2**30:
        return
    path = folder() / f"{entry}.npz"
    lengths = np.array([len(s) for s in states], dtype=np.int64)
    partial = None
    try:  # the cache only saves time: a full or read-only disk never fails the run
        folder().mkdir(parents=True, exist_ok=True)
        handle, partial = tempfile.mkstemp(dir=folder(), prefix=f"{entry}.", suffix=".partial")
        with os.fdopen(handle, "wb") as out:
            np.savez(out, states=torch.cat(states).numpy(), lengths=lengths)
        os.replace(partial, path)  # whole or not at all, whichever process writes it
        evict(disk_gb * 2**30, keep=path)
    except OSError as error:
        warnings.warn(f"frozen-prefix cache: {path} not written ({error})", stacklevel=2)
    finally:
        if partial:
            Path(partial).unlink(missing_ok=True)


def _remember(entry: str, states: list[torch.Tensor], size: int, memory_gb: float) -> None:
    if size > memory_gb * 2**30:
        return
    _MEMORY[entry] = states
    while sum(_bytes(s) for s in _MEMORY.values()) > memory_gb * 2**30:
        _MEMORY.popitem(last=False)


def evict(budget: float, keep: Path | None = None) -> list[Path]:
    """Delete the least recently used entries on disk until they take at most `budget`
    bytes (never `keep`, the entry just written), and partial files a killed writer left
    (older than STALE_PARTIAL_S). Returns what was deleted."""
    files, deleted = [], []
    for path in [*folder().glob("*.npz"), *folder().glob("*.partial")]:
        try:
            stat = path.stat()
        except FileNotFoundError:  # another process evicted it
            continue
        if path.suffix == ".partial":
            if time.time() - stat.st_mtime > STALE_PARTIAL_S:
                path.unlink(missing_ok=True)
                deleted.append(path)
            continue
        files.append((stat.st_mtime_ns, stat.st_size, path))
    files.sort()
    total = sum(size for _, size, _ in files)
    for _, size, path in files:
        if total <= budget:
            break
        if path != keep:
            path.unlink(missing_ok=True)
            deleted.append(path)
            total -= size
    return deleted


def _bytes(states: list[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in states)


def clear(disk: bool = False) -> None:
    """Forget what this process holds (and with disk=True, the files too)."""
    _MEMORY.clear()
    if disk:
        evict(0)
