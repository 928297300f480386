"""Rogue dimensions (Timkey & van Schijndel 2021, "All Bark and No Bite"): a few dimensions
with huge variance can dominate similarity measures such as linear CKA.

    from bertrep.maths.rogue import dimension_share_profile, dimension_shares, standardize
    from bertrep.maths.rogue import variance_shares
    shares = variance_shares(x, top=3)         # (3,) variance held by the top 1, 2, 3 dims
    z = standardize(x)                         # (n, p): columns of mean 0 and std 1
    top = dimension_shares(x, y)               # DimensionShare(share, index, side)
    profile = dimension_share_profile(xs, ys)  # (Lx, Ly) largest share of every layer pair

For X (n, p1), Y (n, p2) with centred columns x_a, y_b, biased linear CKA's numerator is
T = ||Xcᵀ Yc||²_F = Σ_a Σ_b (x_aᵀ y_b)². Dimension a of X holds the share Σ_b (x_aᵀ y_b)² / T
of it, dimension b of Y the share Σ_a (x_aᵀ y_b)² / T; each side's shares sum to 1. A share
near 1 means one dimension decides the CKA. Standardizing every column removes that.

Pure numpy; every sum runs in float64.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from bertrep.maths.layers import as_layers, one_layer

__all__ = [
    "DimensionShare",
    "dimension_share_profile",
    "dimension_shares",
    "shares_by_dimension",
    "standardize",
    "variance_shares",
]


class DimensionShare(NamedTuple):
    """The single dimension holding the largest share of T; (nan, -1, "") when T = 0."""

    share: float
    index: int  # column of x or of y
    side: str  # "x" or "y"


def variance_shares(x: Any, top: int = 3) -> np.ndarray:
    """Cumulative shares of the total variance held by the largest 1..top dimensions.

    x: (n, p) one layer's activations. Returns (top,) float64: out[k] is the share of
    Σ_d var(x_d) held by the k + 1 dimensions of largest variance; NaN for a constant x.
    """
    x = one_layer(x, "x", min_rows=2)
    if not 1 <= top <= x.shape[1]:
        raise ValueError(f"top must be between 1 and p = {x.shape[1]}; got {top}")
    var = np.sort(_centred(x).var(0))[::-1]
    total = var.sum()
    if total == 0:
        return np.full(top, np.nan)
    return np.cumsum(var[:top]) / total


def standardize(x: Any) -> np.ndarray:
    """x (n, p) with every column centred and divided by its (population) std.

    A constant column comes out zero. Returns float64 for float64 (or integer) input and
    float32 for float32/float16 input; the statistics are float64 either way.
    """
    x = one_layer(x, "x", min_rows=2)
    xc = _centred(x)
    std = xc.std(0)
    # Tested on the input, not on std: a constant column's centred values are rounding
    # residue of its mean, which std alone would blow up to ±1.
    std[x.max(0) == x.min(0)] = np.inf
    return (xc / std).astype(np.result_type(x.dtype, np.float32))


def shares_by_dimension(x: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
    """Every dimension's share of T: (p1,) for x's columns and (p2,) for y's, float64, each
    summing to 1 (NaN when T = 0). x (n, p1), y (n, p2) with the same rows."""
    xc, yc = _pair(x, y)
    return _shares(xc, yc)


def dimension_shares(x: Any, y: Any) -> DimensionShare:
    """The largest single-dimension share of T over both sides, x (n, p1) and y (n, p2);
    on a tie the x side is reported."""
    xc, yc = _pair(x, y)
    return _top(*_shares(xc, yc))


def dimension_share_profile(xs: Any, ys: Any) -> np.ndarray:
    """Largest single-dimension share (dimension_shares) of every layer pair, (Lx, Ly).

    xs: (Lx, n, p1) array or a sequence of (n, p_i) layers; ys likewise with the same n
    rows. Each layer is centred once (float64), and every pair's Xcᵀ Yc comes from one
    float32 product of the stacked centred layers (shares are ratios of its squares:
    float32 changes them by ~1e-6 relative), squared and summed in float64.
    """
    xs, ys = _stack(xs, "xs"), _stack(ys, "ys")
    if xs[0].shape[0] != ys[0].shape[0]:
        raise ValueError(f"xs has {xs[0].shape[0]} rows but ys has {ys[0].shape[0]}")
    xc = np.concatenate([_centred(x) for x in xs], axis=1).astype(np.float32)
    yc = np.concatenate([_centred(y) for y in ys], axis=1).astype(np.float32)
    product = xc.T @ yc  # every pair's Xcᵀ Yc, as blocks
    ex, ey = np.cumsum([0] + [x.shape[1] for x in xs]), np.cumsum([0] + [y.shape[1] for y in ys])
    out = np.empty((len(xs), len(ys)))
    for i, j in np.ndindex(len(xs), len(ys)):
        block = np.square(product[ex[i] : ex[i + 1], ey[j] : ey[j + 1]], dtype=np.float64)
        out[i, j] = _top(*_split(block)).share
    return out


def _shares(xc: np.ndarray, yc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return _split(np.square(xc.T @ yc))  # (p1, p2): (x_aᵀ y_b)²


def _split(c2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each dimension's share of Σ c2, for the rows' and the columns' dimensions."""
    total = c2.sum()
    if total == 0:
        return np.full(c2.shape[0], np.nan), np.full(c2.shape[1], np.nan)
    return c2.sum(1) / total, c2.sum(0) / total


def _top(sx: np.ndarray, sy: np.ndarray) -> DimensionShare:
    if np.isnan(sx).any():
        return DimensionShare(float("nan"), -1, "")
    a, b = int(sx.argmax()), int(sy.argmax())
    if sx[a] >= sy[b]:
        return DimensionShare(float(sx[a]), a, "x")
    return DimensionShare(float(sy[b]), b, "y")


def _centred(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    return x - x.mean(0)


def _pair(x: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
    x, y = one_layer(x, "x", min_rows=2), one_layer(y, "y", min_rows=2)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x has {x.shape[0]} rows but y has {y.shape[0]}: need the same rows")
    return _centred(x), _centred(y)


def _stack(xs: Any, side: str) -> list[np.ndarray]:
    layers = as_layers(xs, side, single=False)
    return [one_layer(x, f"{side} layer {i}", min_rows=2) for i, x in enumerate(layers)]
