"""Centered kernel alignment (CKA): exact linear CKA profiles, streaming, numpy or torch.

    from bertrep.cka import cka_profile, linear_cka, StreamingCKA
    profile = cka_profile(states_a, states_b)          # (L_a, L_b), every layer pair
    value = linear_cka(x, y, debiased=True)            # one pair, x (n, p1), y (n, p2)
    stream = StreamingCKA()
    for xs, ys in chunks:                              # the same rows of every layer
        stream.update(xs, ys)
    profile = stream.result()

Definitions (DESIGN.md). For X (n, p1), Y (n, p2) with centred columns,
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

Products and sums run in float64 (dtype="float32": the large products in float32, their
sums still float64), never under autocast; float16 inputs are cast before any product.
torch is imported only for torch inputs.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from contextlib import ExitStack
from typing import Any, Literal

import numpy as np

__all__ = ["RBF_MAX_N", "StreamingCKA", "cka_profile", "linear_cka", "profile_flops", "rbf_cka"]

Route = Literal["auto", "gram", "feature"]
# Gram tiles of all layers held at once: 3 tiles per side at n = 5,000 with 26 layers.
# Smaller tiles waste less on GPUs, which compute full (not symmetric) diagonal tiles.
_TILE_BYTES = 1 << 30
# Rows per chunk when cka_profile takes the feature route: bounds the stacked float copy.
_FEATURE_CHUNK_BYTES = 1 << 30
# Rows per float32 product before its sum is carried on in float64 (dtype="float32").
_F32_ROWS = 1024
# A float64 centred sum of squares below 1e-24 of the raw one is rounding noise
# (relative spread 1e-12): the layer is constant.
_CONSTANT_REL = 1e-24
RBF_MAX_N = 10_000


# --------------------------------------------------------------------------- backends


def _is_torch(x: Any) -> bool:
    return type(x).__module__.partition(".")[0] == "torch"


class _NumpyOps:
    """The few operations numpy and torch spell differently; torch twin below.

    Statistics are float64; `work` is the dtype of the large products (the Gram tiles
    and XᵀY), float64 by default. In float32 mode their sums still run in float64:
    tiles are cast up before their inner products, and XᵀY adds float32 products of
    at most _F32_ROWS rows into float64.
    """

    def __init__(self, work: str):
        self.work = np.dtype(work)
        self.itemsize = self.work.itemsize

    def cast(self, x: Any) -> np.ndarray:
        return np.asarray(x, dtype=np.float64)

    def to_work(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x, dtype=self.work)

    def zeros(self, *shape: int) -> np.ndarray:
        # Fortran order lets BLAS accumulate into 2-D sums in place (add_product).
        return np.zeros(shape, order="F")

    def empty(self, *shape: int) -> np.ndarray:
        return np.empty(shape)

    def empty_work(self, size: int) -> np.ndarray:
        return np.empty(size, dtype=self.work)

    def all_finite(self, layers: list[Any]) -> np.ndarray:
        return np.array([np.isfinite(x).all() for x in layers], dtype=bool)

    def stack(self, xs: list[Any]) -> np.ndarray:
        return np.stack(xs)

    def matmul(self, a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
        np.matmul(a, b, out=out)

    def row_dots(self, a: np.ndarray) -> np.ndarray:
        return np.einsum("ij,ij->i", a, a)

    def add_product(self, c: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """c += a @ b for float64 c (P, Q) (Fortran order), a (P, m), b (m, Q)."""
        if self.work != np.float64:
            for k in range(0, a.shape[1], _F32_ROWS):
                part = self.to_work(a[:, k : k + _F32_ROWS]) @ self.to_work(b[k : k + _F32_ROWS])
                c += part
            return c
        try:
            from scipy.linalg.blas import get_blas_funcs
        except ImportError:
            c += a @ b
            return c
        gemm = get_blas_funcs("gemm", (a, b, c))
        # In place (beta = 1): no (P, Q) temporary. a = xᵀ and b.T = yᵀ are Fortran
        # views of C-ordered chunks, so nothing is copied either.
        return gemm(1.0, a, b.T, beta=1.0, c=c, trans_b=True, overwrite_c=True)

    def add_gram(self, c: np.ndarray, z: np.ndarray) -> np.ndarray:
        """c += zᵀz; in float64 numpy's own zᵀz is a symmetric product (syrk), half the flops."""
        if self.work != np.float64:
            return self.add_product(c, z.T, z)
        c += z.T @ z
        return c

    def numpy(self, x: Any) -> np.ndarray:
        return np.asarray(x, dtype=np.float64)

    def no_autocast(self) -> ExitStack:
        return ExitStack()


class _TorchOps:
    def __init__(self, work: str, device: Any):
        import torch

        self.torch = torch
        self.work = getattr(torch, work)
        self.itemsize = torch.finfo(self.work).bits // 8
        self.device = device

    def cast(self, x: Any) -> Any:
        return self.torch.as_tensor(x).to(device=self.device, dtype=self.torch.float64)

    def to_work(self, x: Any) -> Any:
        return x.to(self.work)

    def zeros(self, *shape: int) -> Any:
        return self.torch.zeros(shape, dtype=self.torch.float64, device=self.device)

    def empty(self, *shape: int) -> Any:
        return self.torch.empty(shape, dtype=self.torch.float64, device=self.device)

    def empty_work(self, size: int) -> Any:
        return self.torch.empty(size, dtype=self.work, device=self.device)

    def all_finite(self, layers: list[Any]) -> np.ndarray:
        flags = [self.torch.isfinite(self.torch.as_tensor(x, device=self.device)).all()
                 for x in layers]  # fmt: skip
        return self.torch.stack(flags).cpu().numpy()  # one device sync for all layers

    def stack(self, xs: list[Any]) -> Any:
        return self.torch.stack(xs)

    def matmul(self, a: Any, b: Any, out: Any) -> None:
        self.torch.matmul(a, b, out=out)

    def row_dots(self, a: Any) -> Any:
        return self.torch.bmm(a[:, None, :], a[:, :, None]).reshape(-1)

    def add_product(self, c: Any, a: Any, b: Any) -> Any:
        if self.work == self.torch.float64:
            return c.addmm_(a, b)
        for k in range(0, a.shape[1], _F32_ROWS):
            c += self.to_work(a[:, k : k + _F32_ROWS]) @ self.to_work(b[k : k + _F32_ROWS])
        return c

    def add_gram(self, c: Any, z: Any) -> Any:
        return self.add_product(c, z.T, z)

    def numpy(self, x: Any) -> np.ndarray:
        return x.detach().to("cpu", self.torch.float64).numpy()

    def no_autocast(self) -> ExitStack:
        stack = ExitStack()
        stack.enter_context(self.torch.no_grad())
        stack.enter_context(self.torch.autocast(self.device.type, enabled=False))
        return stack


def _ops_for(layers: Sequence[Any], dtype: str) -> _NumpyOps | _TorchOps:
    if dtype not in ("float64", "float32"):
        raise ValueError(f"dtype must be 'float64' or 'float32', got {dtype!r}")
    for x in layers:
        if _is_torch(x):
            return _TorchOps(dtype, x.device)
    return _NumpyOps(dtype)


# --------------------------------------------------------------------------- validation


def _as_layers(xs: Any, side: str) -> list[Any]:
    """A sequence of (n, p) arrays, one (n, p) array or a stacked (L, n, p) array -> list."""
    if hasattr(xs, "ndim"):
        if xs.ndim not in (2, 3):
            raise ValueError(f"{side} must be (n, p) or (L, n, p); got shape {tuple(xs.shape)}")
        xs = [xs] if xs.ndim == 2 else list(xs)
    layers = list(xs)
    if not layers:
        raise ValueError(f"{side} has no layers")
    for i, x in enumerate(layers):
        if getattr(x, "ndim", None) != 2:
            shape = tuple(getattr(x, "shape", ()))
            raise ValueError(f"{side} layer {i} must be a 2-D (n, p) array; got shape {shape}")
    return layers


def _check(ops: Any, xs: list[Any], ys: list[Any]) -> int:
    """Row count shared by all layers; raises on ragged row counts or NaN/inf."""
    rows = {}
    for side, layers in (("xs", xs), ("ys", ys)):
        n0 = layers[0].shape[0]
        for i, x in enumerate(layers):
            if x.shape[0] != n0:
                raise ValueError(f"{side} layer {i} has {x.shape[0]} rows but layer 0 has {n0}")
        rows[side] = n0
    finite = ops.all_finite(xs + ys)
    if not finite.all():
        i = int(np.flatnonzero(~finite)[0])
        side, i = ("xs", i) if i < len(xs) else ("ys", i - len(xs))
        raise ValueError(f"{side} layer {i} contains NaN or inf")
    if rows["xs"] != rows["ys"]:
        raise ValueError(
            f"xs has {rows['xs']} rows but ys has {rows['ys']}: CKA needs the same rows "
            "(probe tokens) on both sides"
        )
    return rows["xs"]


def _check_n(n: int, debiased: bool) -> None:
    if debiased and n < 4:
        raise ValueError(f"debiased CKA needs at least 4 rows; got n = {n}")
    if n < 2:
        raise ValueError(f"CKA needs at least 2 rows; got n = {n}")


# --------------------------------------------------------------------------- estimator


def _finish(n: int, cross: dict, self_x: dict, self_y: dict, debiased: bool) -> np.ndarray:
    """CKA (Lx, Ly) from T, dd (Lx, Ly) of the pairs and T, dd, sd, raw (L,) of each layer.

    raw is the uncentred sum of squares. Constant layers, and layers whose debiased
    self-HSIC is not positive, give NaN rows or columns with a warning.
    """

    def hsic(t, dd, s1, s2):
        if not debiased:
            return t
        return t - n / (n - 2) * dd + s1 * s2 / ((n - 1) * (n - 2))

    hx = hsic(self_x["T"], self_x["dd"], self_x["sd"], self_x["sd"])
    hy = hsic(self_y["T"], self_y["dd"], self_y["sd"], self_y["sd"])
    hxy = hsic(cross["T"], cross["dd"], self_x["sd"][:, None], self_y["sd"][None, :])
    with np.errstate(invalid="ignore", divide="ignore"):
        out = hxy / np.sqrt(np.outer(hx, hy))
    for side, st, h in (("xs", self_x, hx), ("ys", self_y, hy)):
        constant = st["sd"] <= _CONSTANT_REL * st["raw"]
        for i in np.flatnonzero(constant | ~(h > 0)):
            why = "is constant (zero variance)" if constant[i] else "has a non-positive self-HSIC"
            warnings.warn(f"{side} layer {i} {why}; its CKA is NaN", RuntimeWarning, stacklevel=3)
            if side == "xs":
                out[i, :] = np.nan
            else:
                out[:, i] = np.nan
    return out


# --------------------------------------------------------------------------- gram route


def _centre(ops: Any, layers: list[Any]) -> tuple[list[Any], dict]:
    """Centred copies of the (n, p) layers and per-layer d (L, n), sd and raw (L,)."""
    centred, d, mean_sq = [], [], []
    for x in layers:
        x = ops.cast(x)
        mean = x.mean(0)
        xc = x - mean
        d.append((xc * xc).sum(1))
        centred.append(ops.to_work(xc))
        mean_sq.append((mean * mean).sum())
    d, mean_sq = ops.numpy(ops.stack(d)), ops.numpy(ops.stack(mean_sq))
    sd = d.sum(1)
    return centred, {"d": d, "sd": sd, "raw": sd + d.shape[1] * mean_sq}


def _gram_inner(ops: Any, xcs: list[Any], ycs: list[Any]) -> tuple[np.ndarray, np.ndarray]:
    """<Kc_i, Lc_j> for all pairs (Lx, Ly) and ||Kc_l||² (Lx + Ly,) of centred layers.

    Grams are built tile by tile over the upper triangle of row tiles (off-diagonal
    tiles count twice), so memory is bounded by _TILE_BYTES whatever n; all cross
    pairs of a tile come out of one product of the flattened tiles.
    """
    zs, lx = xcs + ycs, len(xcs)
    nz, n = len(zs), zs[0].shape[0]
    max_rows = max(1, math.isqrt(_TILE_BYTES // (ops.itemsize * nz)))
    b = -(-n // -(-n // max_rows))  # equal tiles: ceil(n / number of tiles)
    buf = ops.empty_work(nz * b * b)
    cross, self_ = ops.zeros(lx, nz - lx), ops.zeros(nz)
    for r0 in range(0, n, b):
        r1 = min(r0 + b, n)
        for c0 in range(r0, n, b):
            c1 = min(c0 + b, n)
            tiles = buf[: nz * (r1 - r0) * (c1 - c0)].reshape(nz, r1 - r0, c1 - c0)
            for z, tile in zip(zs, tiles, strict=True):
                # On the diagonal z[r] @ z[r].T is one buffer times its transpose: numpy
                # hands it to syrk, half the flops of a general product.
                ops.matmul(z[r0:r1], z[c0:c1].T, out=tile)
            flat = ops.cast(tiles.reshape(nz, -1))
            weight = 1.0 if r0 == c0 else 2.0
            cross += weight * (flat[:lx] @ flat[lx:].T)
            self_ += weight * ops.row_dots(flat)
    return ops.numpy(cross), ops.numpy(self_)


def _profile_gram(ops: Any, xs: list[Any], ys: list[Any], debiased: bool) -> np.ndarray:
    n = xs[0].shape[0]
    xcs, sx = _centre(ops, xs)
    ycs, sy = _centre(ops, ys)
    t_xy, t_self = _gram_inner(ops, xcs, ycs)
    t_x, t_y = t_self[: len(xs)], t_self[len(xs) :]
    cross = {"T": t_xy, "dd": sx["d"] @ sy["d"].T}
    self_x = {"T": t_x, "dd": (sx["d"] ** 2).sum(1), "sd": sx["sd"], "raw": sx["raw"]}
    self_y = {"T": t_y, "dd": (sy["d"] ** 2).sum(1), "sd": sy["sd"], "raw": sy["raw"]}
    return _finish(n, cross, self_x, self_y, debiased)


# --------------------------------------------------------------------------- feature route


class StreamingCKA:
    """Exact linear CKA profile of two models' layers, fed chunk by chunk of rows.

        stream = StreamingCKA(debiased=True)
        for xs, ys in chunks:       # sequences of (m, p_l) arrays, or (L, m, p)
            stream.update(xs, ys)
        profile = stream.result()   # (Lx, Ly) numpy float64

    Memory is O((P + Q)²), P and Q the summed layer widths, whatever the number of
    rows n. Sums run in float64 (products in float32 on request, see cka_profile), on
    the device of the first chunk. Rows
    are shifted by the first chunk's column means r, exact algebra that keeps the
    centring corrections small; with X̃ = X − r and a_i = ||x̃_i||² per layer, it
    accumulates X̃ᵀỸ (P, Q), each layer's X̃ᵀX̃, column sums, Σa, aᵀb, X̃ᵀa, X̃ᵀb (and
    the y twins). `result()` centres them exactly (see `_centred_terms`).
    """

    def __init__(self, *, debiased: bool = False, dtype: str = "float64"):
        self.debiased = debiased
        self.dtype = dtype
        self.n = 0
        self._ops: Any = None

    def update(self, xs: Any, ys: Any) -> None:
        """Add one chunk: xs and ys hold the same m rows of every layer of each model."""
        xs, ys = _as_layers(xs, "xs"), _as_layers(ys, "ys")
        if self._ops is None:
            ops = _ops_for(xs + ys, self.dtype)
            m = _check(ops, xs, ys)
            self._start(ops, xs, ys)
        else:
            ops = self._ops
            for side, layers, st in (("xs", xs, self._x), ("ys", ys, self._y)):
                widths = [x.shape[1] for x in layers]
                if widths != st["widths"]:
                    raise ValueError(f"{side} chunk has widths {widths}; before: {st['widths']}")
            m = _check(ops, xs, ys)
        with ops.no_autocast():
            x, y = self._shifted(xs, self._x), self._shifted(ys, self._y)
            self._xy = ops.add_product(self._xy, x.T, y)
            a, b = (x * x) @ self._x["e"], (y * y) @ self._y["e"]  # (m, L) squared row norms
            self._ab += a.T @ b
            self._xb += x.T @ b
            self._ya += y.T @ a
            for st, z, r in ((self._x, x, a), (self._y, y, b)):
                off = st["off"]
                for i, block in enumerate(st["self"]):
                    zi = z[:, off[i] : off[i + 1]]
                    st["self"][i] = ops.add_gram(block, zi)
                st["s"] += z.sum(0)
                st["sa"] += r.sum(0)
                st["aa"] += (r * r).sum(0)
                st["za"] += z.T @ r
        self.n += m

    def result(self) -> np.ndarray:
        """CKA profile (Lx, Ly) over all rows seen so far, numpy float64."""
        if self._ops is None:
            raise ValueError("StreamingCKA.result() called before any update()")
        _check_n(self.n, self.debiased)
        with self._ops.no_autocast():
            x, y = self._x, self._y
            cross = _centred_terms(
                self._ops, self.n, self._xy, x["s"], y["s"], x["sa"], y["sa"],
                self._ab, self._xb, self._ya, x["e"], y["e"], x["off"], y["off"],
            )  # fmt: skip
            self_x, self_y = self._self_terms(x), self._self_terms(y)
        return _finish(self.n, cross, self_x, self_y, self.debiased)

    # -- internals

    def _start(self, ops: Any, xs: list[Any], ys: list[Any]) -> None:
        self._ops = ops
        with ops.no_autocast():
            self._x, self._y = self._side(xs), self._side(ys)
        p, q = self._x["off"][-1], self._y["off"][-1]
        lx, ly = len(xs), len(ys)
        self._xy = ops.zeros(p, q)
        self._ab, self._xb, self._ya = ops.zeros(lx, ly), ops.zeros(p, ly), ops.zeros(q, lx)

    def _side(self, layers: list[Any]) -> dict:
        """Per-model state: reference means and the accumulators of one side."""
        ops = self._ops
        widths = [x.shape[1] for x in layers]
        off = [0, *np.cumsum(widths).tolist()]
        e = np.zeros((off[-1], len(widths)))  # which stacked column belongs to which layer
        for i in range(len(widths)):
            e[off[i] : off[i + 1], i] = 1.0
        p, lz = off[-1], len(widths)
        return {
            "widths": widths, "off": off, "e": ops.cast(e),
            "ref": [ops.cast(x).mean(0) for x in layers],
            "self": [ops.zeros(w, w) for w in widths],
            "s": ops.zeros(p), "sa": ops.zeros(lz), "aa": ops.zeros(lz), "za": ops.zeros(p, lz),
        }  # fmt: skip

    def _shifted(self, layers: list[Any], st: dict) -> Any:
        """(m, P) float64 stack of the layers minus their reference means."""
        ops, off = self._ops, st["off"]
        m = layers[0].shape[0]
        out = ops.empty(m, off[-1])
        for i, x in enumerate(layers):
            out[:, off[i] : off[i + 1]] = ops.cast(x)
            out[:, off[i] : off[i + 1]] -= st["ref"][i]
        return out

    def _self_terms(self, st: dict) -> dict:
        """T, dd, sd and raw (L,) of each layer of one side against itself."""
        ops, n, off = self._ops, self.n, st["off"]
        t, dd = np.empty(len(st["self"])), np.empty(len(st["self"]))
        for i, block in enumerate(st["self"]):
            s, sa = st["s"][off[i] : off[i + 1]], st["sa"][i : i + 1]
            za = st["za"][off[i] : off[i + 1], i : i + 1]
            aa = st["aa"][i : i + 1, None]
            e, o = ops.cast(np.ones((block.shape[0], 1))), [0, block.shape[0]]
            one = _centred_terms(ops, n, block, s, s, sa, sa, aa, za, za, e, e, o, o)
            t[i], dd[i] = one["T"][0, 0], one["dd"][0, 0]
        s, r = ops.numpy(st["s"]), np.concatenate([ops.numpy(v) for v in st["ref"]])
        e, sa = ops.numpy(st["e"]), ops.numpy(st["sa"])
        sd = sa - ((s * s) @ e) / n
        raw = sa + 2 * (r * s) @ e + n * (r * r) @ e  # Σ||x_i||² = Σ||x̃_i + r||²
        return {"T": t, "dd": dd, "sd": sd, "raw": raw}


def _centred_terms(ops, n, xy, sx, sy, sa, sb, ab, xb, ya, ex, ey, offx, offy) -> dict:
    """T = ||Xcᵀ Yc||²_F and dd = dxᵀ dy (Lx, Ly) from sums over shifted rows X̃, Ỹ.

    xy = X̃ᵀỸ (P, Q); sx, sy column sums (P,), (Q,); sa, sb = Σa, Σb (L,); ab = aᵀb
    (Lx, Ly); xb = X̃ᵀb (P, Ly); ya = Ỹᵀa (Q, Lx); ex (P, Lx), ey (Q, Ly) layer
    indicators with column offsets offx, offy. With m = s/n, Xcᵀ Yc = X̃ᵀỸ − n m_x m_yᵀ,
    and dx_i = a_i − 2 x̃_i·m_x + |m_x|² expands dxᵀdy into
    aᵀb − 2 m_y·Ỹᵀa − 2 m_x·X̃ᵀb + 4 m_xᵀ X̃ᵀỸ m_y + |m_y|² Σa + |m_x|² Σb − 3n |m_x|²|m_y|².
    """
    mx, my = sx / n, sy / n
    t = np.empty((len(offx) - 1, len(offy) - 1))
    for i in range(t.shape[0]):  # one layer's rows at a time bounds the temporary
        rows = slice(offx[i], offx[i + 1])
        c = xy[rows] - mx[rows, None] * sy[None, :]
        t[i] = ops.numpy((c * c).sum(0) @ ey)
    mx2, my2 = (mx * mx) @ ex, (my * my) @ ey
    dd = (
        ab
        - 2 * (my[:, None] * ya).T @ ey
        - 2 * ex.T @ (mx[:, None] * xb)
        + 4 * ex.T @ (mx[:, None] * (xy @ (my[:, None] * ey)))
        + sa[:, None] * my2[None, :]
        + mx2[:, None] * sb[None, :]
        - 3 * n * mx2[:, None] * my2[None, :]
    )
    return {"T": t, "dd": ops.numpy(dd)}


# --------------------------------------------------------------------------- public


def profile_flops(n: int, widths_x: Sequence[int], widths_y: Sequence[int]) -> dict[str, float]:
    """Floating-point operations of each exact route for a profile of n rows.

    A general product of (a, k) by (k, b) counts 2·a·k·b, a symmetric one (syrk) a·a·k.
    gram: every layer's Gram n²·p (symmetric), inner products of all pairs and self
    terms 2·n²·(Lx·Ly + Lx + Ly) (an upper bound: tiles cover a bit more than half).
    feature: XᵀY for all pairs 2·n·P·Q, each layer's XᵀX 2·n·p².
    """
    px, py = list(widths_x), list(widths_y)
    lx, ly = len(px), len(py)
    gram = n * n * (sum(px) + sum(py) + 2 * (lx * ly + lx + ly))
    feature = 2 * n * (sum(px) * sum(py) + sum(w * w for w in px + py))
    return {"gram": float(gram), "feature": float(feature)}


def cka_profile(
    xs: Any, ys: Any, *, debiased: bool = False, route: Route = "auto", dtype: str = "float64"
) -> np.ndarray:
    """Linear CKA of every layer of one model against every layer of another.

    xs: Lx layers of shape (n, p_i), as a sequence or an (Lx, n, p) array (numpy, or
    torch on any device); ys likewise with Ly layers and the same n rows. Returns a
    numpy float64 (Lx, Ly) array. route "auto" takes the exact route with less
    arithmetic (`profile_flops`); "gram" and "feature" force one. dtype "float32"
    runs the large products in float32 with float64 sums (agrees to ~1e-9 in tests).
    """
    xs, ys = _as_layers(xs, "xs"), _as_layers(ys, "ys")
    ops = _ops_for(xs + ys, dtype)
    n = _check(ops, xs, ys)
    _check_n(n, debiased)
    if route == "auto":
        flops = profile_flops(n, [x.shape[1] for x in xs], [y.shape[1] for y in ys])
        route = min(flops, key=flops.__getitem__)
    if route == "gram":
        with ops.no_autocast():
            return _profile_gram(ops, xs, ys, debiased)
    if route != "feature":
        raise ValueError(f"route must be 'auto', 'gram' or 'feature', got {route!r}")
    width = sum(x.shape[1] for x in xs) + sum(y.shape[1] for y in ys)
    chunk = max(1, _FEATURE_CHUNK_BYTES // (ops.itemsize * width))
    stream = StreamingCKA(debiased=debiased, dtype=dtype)
    for r0 in range(0, n, chunk):
        stream.update([x[r0 : r0 + chunk] for x in xs], [y[r0 : r0 + chunk] for y in ys])
    return stream.result()


def linear_cka(x: Any, y: Any, *, debiased: bool = False) -> float:
    """Linear CKA of x (n, p1) and y (n, p2), numpy or torch; see the module docstring."""
    return float(cka_profile([x], [y], debiased=debiased)[0, 0])


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
    _check(_NumpyOps("float64"), [x], [y])
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
