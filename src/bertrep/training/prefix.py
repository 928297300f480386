"""The frozen prefix, computed once.

With frozen_layers = k >= 1 the stem and blocks 1..k are a fixed feature
extractor (no gradient, no dropout): their output for a training example is the
same at every step, in every epoch, and in every run from the same base model. It
is computed once per (base model, training set, k) in a process and fed to blocks
k+1..L at each step. A run that freezes more layers than a cached entry starts
from the deepest cached layer below its k, so a sweep over k pays for each block
of the prefix once.
"""

from __future__ import annotations

import torch

from bertrep import encoders
from bertrep.data.encode import Encoded, collate, eval_batches

# (base model, training set) -> {k: one (len_i, h) float32 tensor per example}
_CACHE: dict[tuple[str, str], dict[int, list[torch.Tensor]]] = {}


def nbytes(data: Encoded, width: int) -> int:
    return int(data.lengths().sum()) * width * 4


@torch.no_grad()
def prefix_states(
    model,
    data: Encoded,
    base_model: str,
    pad_id: int,
    max_gb: float,
    uses: int,
    batch_size: int = 64,
) -> list[torch.Tensor] | None:
    """Layer-k outputs of every example of `data` (k = model.frozen_layers), or None when
    nothing is frozen, the data has no identity, the states would exceed `max_gb`, or the
    run reads fewer examples (`uses`: steps x batch size) than computing them costs."""
    k = model.frozen_layers
    width = model.encoder.config.hidden_size
    if k == 0 or not data.key or nbytes(data, width) > max_gb * 2**30:
        return None
    entry = _CACHE.get((base_model, data.key), {})
    if k in entry:
        return entry[k]
    if uses < len(data):  # less than an epoch: running the prefix per batch is cheaper
        return None
    entry = _CACHE.setdefault((base_model, data.key), entry)
    if _cached_bytes() + nbytes(data, width) > max_gb * 2**30:
        # Over budget: keep only this training set's entry (a sweep worker moves on to
        # other data and base models; what it had is cheap to recompute once).
        for key in [key for key in _CACHE if _CACHE[key] is not entry]:
            del _CACHE[key]
        for j in [j for j in entry if j != max((j for j in entry if j < k), default=-1)]:
            del entry[j]
    below = max((j for j in entry if j < k), default=0)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    states: list[torch.Tensor] = [None] * len(data)  # type: ignore[list-item]
    # float32 whatever the training precision: these values stand in for the prefix
    with torch.autocast(device_type=device.type, enabled=False):
        for index in eval_batches(data, batch_size):
            batch = collate(data, index, pad_id, entry.get(below))
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
    entry[k] = states
    return states


def _cached_bytes() -> int:
    return sum(
        sum(t.numel() * t.element_size() for t in states)
        for entry in _CACHE.values()
        for states in entry.values()
    )


def clear() -> None:
    _CACHE.clear()
