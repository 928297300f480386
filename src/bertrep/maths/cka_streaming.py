"""StreamingCKA: the feature route of exact linear CKA, accumulated chunk by chunk of rows.

    from bertrep.maths.cka import StreamingCKA     # re-exported there
    stream = StreamingCKA(debiased=True)
    for xs, ys in chunks:                    # the same rows of every layer of each model
        stream.update(xs, ys)
    profile = stream.result()                # (Lx, Ly) numpy float64

Rows are shifted by reference means r (the first chunk's column means): X̃ = X − r,
with a = ||x̃_l||² per row and layer (b for Y). That is exact algebra that keeps the
centring corrections small. The running sums (below) are centred exactly in
`result()`; the algebra of T and dd is in bertrep.maths.cka's module docstring.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from bertrep.maths.cka_backend import (
    PairTerms,
    SideTerms,
    _check,
    _check_n,
    _finish,
    _ops_for,
)
from bertrep.maths.layers import as_layers

__all__ = ["StreamingCKA"]


class StreamingCKA:
    """Exact linear CKA profile of two models' layers, fed chunk by chunk of rows.

        stream = StreamingCKA(debiased=True)
        for xs, ys in chunks:       # sequences of (m, p_l) arrays, or (L, m, p)
            stream.update(xs, ys)
        profile = stream.result()   # (Lx, Ly) numpy float64

    Memory is O((P + Q)²), P and Q the summed layer widths, whatever the number of
    rows n. Sums run in float64 (products in float32 on request, see cka_profile), on
    the device of the first chunk. It accumulates X̃ᵀỸ and the other sums of
    `_CrossSums` and each side's `_SideSums`; `result()` centres them exactly.
    """

    def __init__(self, *, debiased: bool = False, dtype: str = "float64"):
        self.debiased = debiased
        self.dtype = dtype
        self.n = 0
        self._ops: Any = None

    def update(self, xs: Any, ys: Any) -> None:
        """Add one chunk: xs and ys hold the same m rows of every layer of each model."""
        xs, ys = as_layers(xs, "xs"), as_layers(ys, "ys")
        if self._ops is None:
            ops = _ops_for(xs + ys, self.dtype)
            m = _check(ops, xs, ys)
            self._start(ops, xs, ys)
        else:
            ops = self._ops
            self._x.check_widths(xs, "xs")
            self._y.check_widths(ys, "ys")
            m = _check(ops, xs, ys)
        with ops.no_autocast():
            x, y = self._x.shifted(ops, xs), self._y.shifted(ops, ys)
            a, b = self._x.row_norms(x), self._y.row_norms(y)
            self._cross.add(ops, x, y, a, b)
            self._x.add(ops, x, a)
            self._y.add(ops, y, b)
        self.n += m

    def result(self) -> np.ndarray:
        """CKA profile (Lx, Ly) over all rows seen so far, numpy float64."""
        if self._ops is None:
            raise ValueError("StreamingCKA.result() called before any update()")
        _check_n(self.n, self.debiased)
        ops, n = self._ops, self.n
        with ops.no_autocast():
            cross = _centred_terms(ops, n, self._cross, self._x.margins(), self._y.margins())
            self_x, self_y = _self_terms(ops, n, self._x), _self_terms(ops, n, self._y)
        return _finish(n, cross, self_x, self_y, self.debiased)

    def _start(self, ops: Any, xs: list[Any], ys: list[Any]) -> None:
        self._ops = ops
        with ops.no_autocast():
            self._x, self._y = _SideSums.zeros(ops, xs), _SideSums.zeros(ops, ys)
        self._cross = _CrossSums.zeros(ops, self._x, self._y)


# --------------------------------------------------------------------------- running sums


@dataclass
class _SideSums:
    """Running sums over the rows seen of one model's shifted stack X̃ (m, P), a (m, L).

    widths (L,) and off (L + 1,) place layer l in columns off[l]:off[l + 1]; e (P, L) is
    the 0/1 indicator of which column belongs to which layer; ref the (p_l,) reference
    means r. Sums: grams X̃_lᵀX̃_l (p_l, p_l) per layer, s = Σ x̃ (P,), sa = Σ a (L,),
    aa = Σ a² (L,), za = X̃ᵀa (P, L). Mutable: `add` adds one chunk into it.
    """

    widths: list[int]
    off: list[int]
    e: Any
    ref: list[Any]
    grams: list[Any]
    s: Any
    sa: Any
    aa: Any
    za: Any

    @classmethod
    def zeros(cls, ops: Any, layers: list[Any]) -> _SideSums:
        widths = [x.shape[1] for x in layers]
        off = [0, *np.cumsum(widths).tolist()]
        p, lz = off[-1], len(widths)
        e = np.zeros((p, lz))
        for i in range(lz):
            e[off[i] : off[i + 1], i] = 1.0
        return cls(
            widths=widths, off=off, e=ops.cast(e),
            ref=[ops.cast(x).mean(0) for x in layers],
            grams=[ops.zeros(w, w) for w in widths],
            s=ops.zeros(p), sa=ops.zeros(lz), aa=ops.zeros(lz), za=ops.zeros(p, lz),
        )  # fmt: skip

    def check_widths(self, layers: list[Any], side: str) -> None:
        widths = [x.shape[1] for x in layers]
        if widths != self.widths:
            raise ValueError(f"{side} chunk has widths {widths}; before: {self.widths}")

    def shifted(self, ops: Any, layers: list[Any]) -> Any:
        """(m, P) float64 stack of the layers minus their reference means."""
        off = self.off
        out = ops.empty(layers[0].shape[0], off[-1])
        for i, x in enumerate(layers):
            out[:, off[i] : off[i + 1]] = ops.cast(x)
            out[:, off[i] : off[i + 1]] -= self.ref[i]
        return out

    def row_norms(self, z: Any) -> Any:
        """a (m, L): squared norm of each row of each layer of the shifted stack z (m, P)."""
        return (z * z) @ self.e

    def add(self, ops: Any, z: Any, a: Any) -> None:
        for i, block in enumerate(self.grams):
            self.grams[i] = ops.add_gram(block, z[:, self.off[i] : self.off[i + 1]])
        self.s += z.sum(0)
        self.sa += a.sum(0)
        self.aa += (a * a).sum(0)
        self.za += z.T @ a

    def margins(self) -> _Margins:
        return _Margins(s=self.s, sa=self.sa, e=self.e, off=self.off)


@dataclass
class _CrossSums:
    """Running sums of two models' shifted stacks X̃ (m, P), Ỹ (m, Q) with their row norms
    a (m, Lx), b (m, Ly): xy = X̃ᵀỸ (P, Q), ab = aᵀb (Lx, Ly), xb = X̃ᵀb (P, Ly),
    ya = Ỹᵀa (Q, Lx). Mutable: `add` adds one chunk into it. One layer against itself
    is the special case xy = X̃ᵀX̃, ab = aᵀa, xb = ya = X̃ᵀa.
    """

    xy: Any
    ab: Any
    xb: Any
    ya: Any

    @classmethod
    def zeros(cls, ops: Any, x: _SideSums, y: _SideSums) -> _CrossSums:
        p, q, lx, ly = x.off[-1], y.off[-1], len(x.widths), len(y.widths)
        return cls(xy=ops.zeros(p, q), ab=ops.zeros(lx, ly), xb=ops.zeros(p, ly),
                   ya=ops.zeros(q, lx))  # fmt: skip

    def add(self, ops: Any, x: Any, y: Any, a: Any, b: Any) -> None:
        self.xy = ops.add_product(self.xy, x.T, y)
        self.ab += a.T @ b
        self.xb += x.T @ b
        self.ya += y.T @ a


@dataclass(frozen=True)
class _Margins:
    """What centring needs of one side: column sums s = Σ x̃ (P,), sa = Σ a (L,), the
    (P, L) layer indicator e and the column offsets off (L + 1,)."""

    s: Any
    sa: Any
    e: Any
    off: list[int]


# --------------------------------------------------------------------------- centring


def _centred_terms(ops: Any, n: int, cross: _CrossSums, x: _Margins, y: _Margins) -> PairTerms:
    """T = ||Xcᵀ Yc||²_F and dd = dxᵀ dy (Lx, Ly) from the sums over shifted rows X̃, Ỹ."""
    mx, my = x.s / n, y.s / n
    return PairTerms(
        t=_centred_t(ops, cross, x, y, mx), dd=ops.numpy(_centred_dd(n, cross, x, y, mx, my))
    )


def _centred_t(ops: Any, cross: _CrossSums, x: _Margins, y: _Margins, mx: Any) -> np.ndarray:
    """T (Lx, Ly) from Xcᵀ Yc = X̃ᵀỸ − n m_x m_yᵀ = X̃ᵀỸ − m_x s_yᵀ, with m = s/n."""
    t = np.empty((len(x.off) - 1, len(y.off) - 1))
    for i in range(t.shape[0]):  # one layer's rows at a time bounds the temporary
        rows = slice(x.off[i], x.off[i + 1])
        c = cross.xy[rows] - mx[rows, None] * y.s[None, :]
        t[i] = ops.numpy((c * c).sum(0) @ y.e)
    return t


def _centred_dd(n: int, cross: _CrossSums, x: _Margins, y: _Margins, mx: Any, my: Any) -> Any:
    """dd (Lx, Ly): dx_i = a_i − 2 x̃_i·m_x + |m_x|² expands dxᵀdy into
    aᵀb − 2 m_y·Ỹᵀa − 2 m_x·X̃ᵀb + 4 m_xᵀ X̃ᵀỸ m_y + |m_y|² Σa + |m_x|² Σb − 3n |m_x|²|m_y|².
    """
    mx2, my2 = (mx * mx) @ x.e, (my * my) @ y.e
    return (
        cross.ab
        - 2 * (my[:, None] * cross.ya).T @ y.e
        - 2 * x.e.T @ (mx[:, None] * cross.xb)
        + 4 * x.e.T @ (mx[:, None] * (cross.xy @ (my[:, None] * y.e)))
        + x.sa[:, None] * my2[None, :]
        + mx2[:, None] * y.sa[None, :]
        - 3 * n * mx2[:, None] * my2[None, :]
    )


def _self_terms(ops: Any, n: int, side: _SideSums) -> SideTerms:
    """T, dd, sd and raw (L,) of each layer of one side against itself."""
    off = side.off
    t, dd = np.empty(len(side.grams)), np.empty(len(side.grams))
    for i, block in enumerate(side.grams):
        cols, layer = slice(off[i], off[i + 1]), slice(i, i + 1)
        w = block.shape[0]
        one = _Margins(s=side.s[cols], sa=side.sa[layer], e=ops.cast(np.ones((w, 1))), off=[0, w])
        za = side.za[cols, layer]
        sums = _CrossSums(xy=block, ab=side.aa[layer, None], xb=za, ya=za)
        terms = _centred_terms(ops, n, sums, one, one)
        t[i], dd[i] = terms.t[0, 0], terms.dd[0, 0]
    s, r = ops.numpy(side.s), np.concatenate([ops.numpy(v) for v in side.ref])
    e, sa = ops.numpy(side.e), ops.numpy(side.sa)
    sd = sa - ((s * s) @ e) / n
    raw = sa + 2 * (r * s) @ e + n * (r * r) @ e  # Σ||x_i||² = Σ||x̃_i + r||²
    return SideTerms(t=t, dd=dd, sd=sd, raw=raw)
