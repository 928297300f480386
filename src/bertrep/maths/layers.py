"""The one check of activations handed to the maths: each side a list of 2-D (n, p)
layers with the same n rows, every value finite. numpy and torch arrays alike.

    xs = as_layers(states, "xs")          # (L, n, p), (n, p) or a sequence of (n, p)
    check_finite({"xs": xs, "ys": ys})
    n = shared_rows({"xs": xs, "ys": ys})
"""

from __future__ import annotations

from typing import Any

import numpy as np


def as_layers(xs: Any, side: str, single: bool = True) -> list[Any]:
    """A sequence of (n, p) arrays, a stacked (L, n, p) array or (with `single`) one
    (n, p) array -> a list of (n, p) layers sharing their row count; raises naming the
    side and layer."""
    if hasattr(xs, "ndim"):
        if xs.ndim not in ((2, 3) if single else (3,)):
            shapes = "(n, p) or (L, n, p)" if single else "(L, n, p) or a sequence of (n, p)"
            raise ValueError(f"{side} must be {shapes}; got shape {tuple(xs.shape)}")
        xs = [xs] if xs.ndim == 2 else list(xs)
    layers = list(xs)
    if not layers:
        raise ValueError(f"{side} has no layers")
    for i, x in enumerate(layers):
        if getattr(x, "ndim", None) != 2:
            shape = tuple(getattr(x, "shape", ()))
            raise ValueError(f"{side} layer {i} must be a 2-D (n, p) array; got shape {shape}")
        if x.shape[0] != layers[0].shape[0]:
            raise ValueError(
                f"{side} layer {i} has {x.shape[0]} rows but layer 0 has {layers[0].shape[0]}"
            )
    return layers


def check_finite(sides: dict[str, list[Any]], finite: Any = None) -> None:
    """Raise naming the first layer holding NaN or inf. `finite`: one flag per layer, the
    sides' layers in order (a backend may compute them on its device); numpy's by default."""
    named = [(side, i) for side, layers in sides.items() for i in range(len(layers))]
    if finite is None:
        finite = [bool(np.isfinite(np.asarray(x)).all()) for ls in sides.values() for x in ls]
    bad = np.flatnonzero(~np.asarray(finite, dtype=bool))
    if len(bad):
        side, i = named[int(bad[0])]
        raise ValueError(f"{side} layer {i} contains NaN or inf")


def shared_rows(sides: dict[str, list[Any]]) -> int:
    """The row count (probe tokens) every side shares; raises naming two that differ."""
    (first, layers), *rest = sides.items()
    n = layers[0].shape[0]
    for side, other in rest:
        if other[0].shape[0] != n:
            raise ValueError(
                f"{first} has {n} rows but {side} has {other[0].shape[0]}: the comparison "
                "needs the same rows (probe tokens) on both sides"
            )
    return n


def one_layer(x: Any, name: str, min_rows: int = 1) -> np.ndarray:
    """One finite (n, p) layer as a numpy array, with at least `min_rows` rows and a column."""
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (n, p) array; got shape {x.shape}")
    if x.shape[0] < min_rows or x.shape[1] < 1:
        raise ValueError(f"{name} needs at least {min_rows} rows and 1 column; got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf")
    return x
