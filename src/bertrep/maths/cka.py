"""Centered kernel alignment (CKA): exact linear CKA profiles, streaming, numpy or torch.

    from bertrep.maths.cka import cka_profile, linear_cka, StreamingCKA
    profile = cka_profile(states_a, states_b)          # (L_a, L_b), every layer pair
    value = linear_cka(x, y, debiased=True)            # one pair, x (n, p1), y (n, p2)
    stream = StreamingCKA()
    for xs, ys in chunks:                              # the same rows of every layer
        stream.update(xs, ys)
    profile = stream.result()

Definitions (docs/definitions.md). For X (n, p1), Y (n, p2) with centred columns,
CKA = ||YᵀX||²_F / (||XᵀX||_F ||YᵀY||_F). The debiased variant replaces each HSIC
term by the unbiased estimator of Song et al. (2007), as in Kornblith et al. (2019).

Every estimate comes from exact statistics of each layer pair, with Xc, Yc the
centred layers, Kc = Xc Xcᵀ and dx = diag(Kc) (squared centred row norms):

    T  = ||Xcᵀ Yc||²_F = <Kc, Lc>_F      dd = dxᵀ dy      sd = Σ dx = ||Xc||²_F

    biased:    CKA = T_xy / sqrt(T_xx T_yy)
    debiased:  n(n−3) HSIC_u = T − n/(n−2) dd + sd_x sd_y / ((n−1)(n−2))

(Kornblith et al.'s feature-space form of the unbiased HSIC). T for all pairs comes
from the cheaper of two exact routes:

- feature: XᵀY of every pair at once, one GEMM of the horizontally stacked layers,
  accumulated chunk by chunk (StreamingCKA). About 2·n·P·Q flops (P, Q summed widths).
- gram: each layer's centred Gram in row tiles over the upper triangle (symmetric
  products on diagonal tiles) and one product of all layers' flattened tiles per
  tile. About n²·Σp flops: half the feature route at n = 5,000 with 13 layers of
  width 768; the feature route wins when n >> L·p.

The gram route's products of centred tiles run in float32 for float16 or float32 inputs
and in float64 for float64 inputs (dtype="auto"; "float32" or "float64" forces one);
the feature route, whose sums are of uncentred rows, runs in float64 unless asked. Every
sum of products, and all other statistics, run in float64, never under autocast. float32
products agree with float64 ones to ~1e-9 on activations (bench/cka.py, tests).
torch is imported only for torch inputs.

This module holds the public API, the gram route and RBF CKA; the feature route
(StreamingCKA) is in bertrep.maths.cka_streaming, and the numpy/torch shim, input checks and
the terms (PairTerms: T, dd of the pairs; SideTerms: T, dd, sd of each layer) with the
formula above are in bertrep.maths.cka_backend.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from bertrep.maths.cka_backend import (
    PairTerms,
    SideTerms,
    _check,
    _check_n,
    _finish,
    _is_torch,
    _NumpyOps,
    _ops_for,
)
from bertrep.maths.cka_streaming import StreamingCKA
from bertrep.maths.layers import as_layers

__all__ = [
    "ESTIMATORS",
    "RBF_MAX_N",
    "StreamingCKA",
    "cka_profile",
    "cka_profiles",
    "linear_cka",
    "profile_flops",
    "rbf_cka",
]

Route = Literal["auto", "gram", "feature"]
# Gram tiles of all layers held at once, at most _TILE_BYTES and _TILE_ROWS rows a side.
# Small tiles put less of the work on the diagonal, where a CPU's symmetric product
# (OpenBLAS ssyrk: half the flops of a general one in ~90% of its time) gains little and
# a GPU computes the full tile: at n = 5,000 with 26 layers, a profile in 5 × 5 tiles
# of 1,000 rows took 1/1.21 of the time of 2 × 2 of 2,500 on this project's CPU
# (bench/RESULTS.md).
_TILE_BYTES = 1 << 30
_TILE_ROWS = 1024
# Rows per chunk when cka_profile takes the feature route: bounds the stacked float copy.
_FEATURE_CHUNK_BYTES = 1 << 30
RBF_MAX_N = 10_000


# --------------------------------------------------------------------------- public


def profile_flops(n: int, widths_x: Sequence[int], widths_y: Sequence[int]) -> dict[str, float]:
    """Floating-point operations of each exact route for a profile of n rows.

    A general product of (a, k) by (k, b) counts 2·a·k·b, a symmetric one (syrk) a·a·k.
    gram: every layer's Gram n²·p (symmetric), then the inner products of all layers'
    Grams, both models at once, (Lx + Ly)²·n²/2 (symmetric, over the upper half of
    each Gram).
    feature: XᵀY for all pairs 2·n·P·Q, each layer's XᵀX 2·n·p².
    """
    px, py = list(widths_x), list(widths_y)
    lx, ly = len(px), len(py)
    gram = n * n * (sum(px) + sum(py) + (lx + ly) ** 2 / 2)
    feature = 2 * n * (sum(px) * sum(py) + sum(w * w for w in px + py))
    return {"gram": float(gram), "feature": float(feature)}


ESTIMATORS = ("biased", "debiased")


def cka_profile(
    xs: Any, ys: Any, *, debiased: bool = False, route: Route = "auto", dtype: str = "auto"
) -> np.ndarray:
    """Linear CKA of every layer of one model against every layer of another.

    xs: Lx layers of shape (n, p_i), as a sequence or an (Lx, n, p) array (numpy, or
    torch on any device); ys likewise with Ly layers and the same n rows. Returns a
    numpy float64 (Lx, Ly) array. route "auto" takes the exact route with less
    arithmetic (`profile_flops`); "gram" and "feature" force one. dtype: the large
    products' dtype, "auto" (float64 only for float64 inputs), "float32" or "float64";
    their sums are float64 always.
    """
    estimator = ESTIMATORS[int(debiased)]
    return cka_profiles(xs, ys, (estimator,), route=route, dtype=dtype)[estimator]


def cka_profiles(
    xs: Any,
    ys: Any,
    estimators: Sequence[str] = ESTIMATORS,
    *,
    route: Route = "auto",
    dtype: str = "auto",
) -> dict[str, np.ndarray]:
    """{estimator: (Lx, Ly) profile} for "biased" and/or "debiased", from one pass over
    the data: both estimators finish the same exact statistics. Arguments as cka_profile."""
    unknown = [e for e in estimators if e not in ESTIMATORS]
    if unknown or not estimators:
        raise ValueError(f"estimators must be among {ESTIMATORS}; got {list(estimators)}")
    xs, ys = as_layers(xs, "xs"), as_layers(ys, "ys")
    ops = _ops_for(xs + ys, dtype)
    n = _check(ops, xs, ys)
    _check_n(n, "debiased" in estimators)
    if route == "auto":
        flops = profile_flops(n, [x.shape[1] for x in xs], [y.shape[1] for y in ys])
        route = min(flops, key=flops.__getitem__)
    if route == "gram":
        with ops.no_autocast():
            terms = _gram_terms(ops, xs, ys)
        return {e: _finish(n, *terms, e == "debiased") for e in estimators}
    if route != "feature":
        raise ValueError(f"route must be 'auto', 'gram' or 'feature', got {route!r}")
    width = sum(x.shape[1] for x in xs) + sum(y.shape[1] for y in ys)
    chunk = max(1, _FEATURE_CHUNK_BYTES // (8 * width))  # the stacked copy is float64
    # Its sums are of uncentred rows, so float32 products lose more to a large mean:
    # float64 unless asked.
    stream = StreamingCKA(dtype="float64" if dtype == "auto" else dtype)
    for r0 in range(0, n, chunk):
        stream.update([x[r0 : r0 + chunk] for x in xs], [y[r0 : r0 + chunk] for y in ys])
    out = {}
    for e in estimators:
        stream.debiased = e == "debiased"
        out[e] = stream.result()
    return out


def linear_cka(x: Any, y: Any, *, debiased: bool = False) -> float:
    """Linear CKA of x (n, p1) and y (n, p2), numpy or torch; see the module docstring."""
    return float(cka_profile([x], [y], debiased=debiased)[0, 0])


# --------------------------------------------------------------------------- gram route


def _centre(ops: Any, layers: list[Any]) -> tuple[list[Any], np.ndarray, np.ndarray]:
    """Centred work-dtype copies of the (n, p) layers, their squared centred row norms
    d (L, n) and uncentred sums of squares raw (L,), numpy float64."""
    centred, d, mean_sq = [], [], []
    for x in layers:
        x = ops.cast(x)
        mean = x.mean(0)
        xc = x - mean
        d.append((xc * xc).sum(1))
        centred.append(ops.to_work(xc))
        mean_sq.append((mean * mean).sum())
    d, mean_sq = ops.numpy(ops.stack(d)), ops.numpy(ops.stack(mean_sq))
    return centred, d, d.sum(1) + d.shape[1] * mean_sq  # ||X||² = ||Xc||² + n ||mean||²


def tile_rows(n: int, layers: int, itemsize: int, cap: int | None = None) -> int:
    """Rows a side of the gram route's equal tiles over n rows of `layers` layers: at most
    `cap` (default _TILE_ROWS), their tiles of all layers at most _TILE_BYTES."""
    cap = _TILE_ROWS if cap is None else cap
    max_rows = max(1, min(cap, math.isqrt(_TILE_BYTES // (itemsize * layers))))
    return -(-n // -(-n // max_rows))  # ceil(n / number of tiles)


def _gram_inner(ops: Any, xcs: list[Any], ycs: list[Any]) -> tuple[np.ndarray, np.ndarray]:
    """<Kc_i, Lc_j> for all pairs (Lx, Ly) and ||Kc_l||² (Lx + Ly,) of centred layers.

    Grams are built tile by tile over the upper triangle of row tiles (off-diagonal
    tiles count twice), so memory is bounded by _TILE_BYTES whatever n; all cross
    pairs of a tile come out of one product of the flattened tiles.
    """
    zs, lx = xcs + ycs, len(xcs)
    nz, n = len(zs), zs[0].shape[0]
    b = tile_rows(n, nz, ops.itemsize)
    buf = ops.empty_work(nz * b * b)
    inner = ops.zeros(nz, nz)  # <Kc_a, Kc_b> of all layers, both models
    for r0 in range(0, n, b):
        r1 = min(r0 + b, n)
        for c0 in range(r0, n, b):
            c1 = min(c0 + b, n)
            tiles = buf[: nz * (r1 - r0) * (c1 - c0)].reshape(nz, r1 - r0, c1 - c0)
            for z, tile in zip(zs, tiles, strict=True):
                # On the diagonal z[r] @ z[r].T is one buffer times its transpose: numpy
                # hands it to syrk, half the flops of a general product.
                ops.matmul(z[r0:r1], z[c0:c1].T, out=tile)
            weight = 1.0 if r0 == c0 else 2.0
            inner += weight * ops.tile_products(tiles.reshape(nz, -1))
    inner = ops.numpy(inner)
    return inner[:lx, lx:], np.diag(inner).copy()


def _gram_terms(ops: Any, xs: list[Any], ys: list[Any]) -> tuple[PairTerms, SideTerms, SideTerms]:
    """The exact statistics of every pair, and of each side, through centred Grams."""
    xcs, dx, raw_x = _centre(ops, xs)
    ycs, dy, raw_y = _centre(ops, ys)
    t_xy, t_self = _gram_inner(ops, xcs, ycs)
    self_x = _gram_side(t_self[: len(xs)], dx, raw_x)
    self_y = _gram_side(t_self[len(xs) :], dy, raw_y)
    return PairTerms(t=t_xy, dd=dx @ dy.T), self_x, self_y


def _gram_side(t: np.ndarray, d: np.ndarray, raw: np.ndarray) -> SideTerms:
    """One side's terms from its Grams' ||Kc||² t (L,) and diagonals d = diag(Kc) (L, n)."""
    return SideTerms(t=t, dd=(d**2).sum(1), sd=d.sum(1), raw=raw)


# --------------------------------------------------------------------------- rbf


def _gram_rbf(x: np.ndarray, threshold: float) -> np.ndarray | None:
    """RBF Gram (n, n) with bandwidth² = threshold² · median squared distance (Kornblith);
    None when that median is 0 (a constant layer, or mostly repeated rows)."""
    dots = x @ x.T
    sq_norms = np.diag(dots)
    sq_dist = sq_norms[:, None] + sq_norms[None, :] - 2 * dots
    median = np.median(sq_dist)
    if median <= 0:
        return None
    return np.exp(-sq_dist / (2 * threshold**2 * median))


def _centre_gram(gram: np.ndarray, debiased: bool) -> np.ndarray:
    """Centred (n, n) Gram; debiased: the U-statistic centring whose inner products are
    n(n−3)·HSIC_u (Kornblith et al. 2019, after Song et al. 2007). Overwrites gram."""
    n = gram.shape[0]
    if debiased:
        np.fill_diagonal(gram, 0)
        means = gram.sum(0) / (n - 2)
        means -= means.sum() / (2 * (n - 1))
    else:
        means = gram.mean(0)
        means -= means.mean() / 2
    gram -= means[:, None]
    gram -= means[None, :]
    if debiased:
        np.fill_diagonal(gram, 0)
    return gram


def rbf_cka(
    x: Any, y: Any, *, threshold: float = 1.0, debiased: bool = False, max_n: int = RBF_MAX_N
) -> float:
    """CKA with RBF kernels of x (n, p1) and y (n, p2), as in Kornblith et al.'s demo.

    The bandwidth σ satisfies σ² = threshold² · median squared pairwise distance. It
    needs n×n Gram matrices, so n above max_n is refused rather than run out of memory.
    numpy or torch inputs; the work is done in float64 numpy on the host.
    """
    for name, z in (("x", x), ("y", y)):
        if getattr(z, "ndim", None) != 2:
            raise ValueError(f"{name} must be a 2-D (n, p) array; got {getattr(z, 'shape', z)}")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x has {x.shape[0]} rows but y has {y.shape[0]}")
    n = x.shape[0]
    if n > max_n:
        raise ValueError(
            f"rbf_cka needs n×n Gram matrices: n = {n} exceeds the limit max_n = {max_n} "
            f"(~{3 * n * n * 8 / 2**30:.1f} GiB); subsample rows or raise max_n"
        )
    if threshold <= 0:
        raise ValueError(f"threshold must be positive; got {threshold}")
    x, y = _host(x), _host(y)
    _check(_NumpyOps("float64"), as_layers(x, "xs"), as_layers(y, "ys"))
    _check_n(n, debiased)
    grams = []
    for side, z in (("xs", x), ("ys", y)):
        gram = _gram_rbf(z, threshold)
        if gram is None:
            warnings.warn(f"{side} layer 0 has median pairwise distance 0 (constant?); "
                          "its CKA is NaN", RuntimeWarning, stacklevel=2)  # fmt: skip
            return float("nan")
        grams.append(_centre_gram(gram, debiased))
    kx, ky = grams
    return float((kx * ky).sum() / (np.linalg.norm(kx) * np.linalg.norm(ky)))


def _host(x: Any) -> np.ndarray:
    if _is_torch(x):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)
