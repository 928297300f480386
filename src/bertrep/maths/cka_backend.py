"""Building blocks both exact CKA routes share: the numpy/torch shim, the input checks,
and the HSIC terms with the formula that turns them into CKA (see bertrep.maths.cka for the
algebra).

The routes live in bertrep.maths.cka (gram) and bertrep.maths.cka_streaming (feature); these pieces
sit below both so neither route module imports the other's internals. torch is imported
only when an input is a torch tensor.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import numpy as np

from bertrep.maths.layers import check_finite, shared_rows

__all__ = ["PairTerms", "SideTerms"]

# Rows per float32 product before its sum is carried on in float64 (float32 work dtype).
_F32_ROWS = 1024
# Gram entries per float32 inner product of flattened tiles before float64 takes over.
_F32_ENTRIES = 1 << 15
DTYPES = ("auto", "float32", "float64")
# A float64 centred sum of squares below 1e-24 of the raw one is rounding noise
# (relative spread 1e-12): the layer is constant.
_CONSTANT_REL = 1e-24


# --------------------------------------------------------------------------- terms


@dataclass(frozen=True)
class PairTerms:
    """Exact statistics of every layer pair of two models, numpy float64 (Lx, Ly) each.

    t = ||Xcᵀ Yc||²_F = <Kc, Lc>_F; dd = dxᵀ dy, with dx = diag(Kc) the squared centred
    row norms of layer X.
    """

    t: np.ndarray
    dd: np.ndarray


@dataclass(frozen=True)
class SideTerms:
    """Exact statistics of each layer of one model against itself, numpy float64 (L,) each.

    t = ||XcᵀXc||²_F, dd = dxᵀ dx, sd = Σ dx = ||Xc||²_F, and raw = ||X||²_F, the
    uncentred sum of squares, which tells a constant layer (sd ≈ 0 relative to raw).
    """

    t: np.ndarray
    dd: np.ndarray
    sd: np.ndarray
    raw: np.ndarray


def _hsic(n: int, t: Any, dd: Any, sd1: Any, sd2: Any, debiased: bool) -> Any:
    """n(n−3) HSIC_u (debiased) or T (biased), broadcasting over layers."""
    if not debiased:
        return t
    return t - n / (n - 2) * dd + sd1 * sd2 / ((n - 1) * (n - 2))


def _finish(n: int, cross: PairTerms, x: SideTerms, y: SideTerms, debiased: bool) -> np.ndarray:
    """CKA (Lx, Ly) of n rows from the pair terms and each side's own terms.

    Constant layers, and layers whose debiased self-HSIC is not positive, give NaN rows
    (xs) or columns (ys) with a RuntimeWarning, so one dead layer does not sink a profile.
    """
    hx = _hsic(n, x.t, x.dd, x.sd, x.sd, debiased)
    hy = _hsic(n, y.t, y.dd, y.sd, y.sd, debiased)
    hxy = _hsic(n, cross.t, cross.dd, x.sd[:, None], y.sd[None, :], debiased)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = hxy / np.sqrt(np.outer(hx, hy))
    for side, terms, h in (("xs", x, hx), ("ys", y, hy)):
        constant = terms.sd <= _CONSTANT_REL * terms.raw
        for i in np.flatnonzero(constant | ~(h > 0)):
            why = "is constant (zero variance)" if constant[i] else "has a non-positive self-HSIC"
            # stacklevel 3: the caller of the public function (cka_profile, result()).
            warnings.warn(f"{side} layer {i} {why}; its CKA is NaN", RuntimeWarning, stacklevel=3)
            if side == "xs":
                out[i, :] = np.nan
            else:
                out[:, i] = np.nan
    return out


# --------------------------------------------------------------------------- checks


def _check(ops: Any, xs: list[Any], ys: list[Any]) -> int:
    """Row count shared by all layers (of `as_layers`); raises on NaN/inf or sides whose
    row counts differ."""
    sides = {"xs": xs, "ys": ys}
    check_finite(sides, ops.all_finite(xs + ys))
    return shared_rows(sides)


def _check_n(n: int, debiased: bool) -> None:
    if debiased and n < 4:
        raise ValueError(f"debiased CKA needs at least 4 rows; got n = {n}")
    if n < 2:
        raise ValueError(f"CKA needs at least 2 rows; got n = {n}")


# --------------------------------------------------------------------------- backends


def _is_torch(x: Any) -> bool:
    return type(x).__module__.partition(".")[0] == "torch"


class _NumpyOps:
    """The few operations numpy and torch spell differently; torch twin below.

    Statistics are float64; `work` is the dtype of the large products (the Gram tiles
    and XᵀY; see _work_dtype). In float32 their sums still run in float64: the tiles'
    inner products add float32 products of _F32_ENTRIES entries into float64, XᵀY
    float32 products of at most _F32_ROWS rows.
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

    def tile_products(self, flat: np.ndarray) -> np.ndarray:
        """flat @ flat.T (m, m) in float64 for m flattened Gram tiles flat (m, e) of the
        work dtype: in float32, products of _F32_ENTRIES entries summed in float64."""
        if self.work == np.float64:
            return flat @ flat.T
        out = np.zeros((flat.shape[0], flat.shape[0]))
        for k in range(0, flat.shape[1], _F32_ENTRIES):
            part = flat[:, k : k + _F32_ENTRIES]
            out += part @ part.T
        return out

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

    def tile_products(self, flat: Any) -> Any:
        if self.work == self.torch.float64:
            return flat @ flat.T
        out = self.zeros(flat.shape[0], flat.shape[0])
        for k in range(0, flat.shape[1], _F32_ENTRIES):
            part = flat[:, k : k + _F32_ENTRIES]
            out += part @ part.T
        return out

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


def _work_dtype(layers: Sequence[Any], dtype: str) -> str:
    """The dtype of the large products: as asked, or for "auto" float64 when an input is
    float64 and float32 otherwise (float16 or float32 inputs: their own rounding is far
    above that of float32 products with float64 sums)."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}; got {dtype!r}")
    if dtype != "auto":
        return dtype
    narrow = {"float16", "bfloat16", "float32"}
    dtypes = {str(x.dtype).removeprefix("torch.") for x in layers}
    return "float32" if dtypes <= narrow else "float64"


def _ops_for(layers: Sequence[Any], dtype: str) -> _NumpyOps | _TorchOps:
    work = _work_dtype(layers, dtype)
    for x in layers:
        if _is_torch(x):
            return _TorchOps(work, x.device)
    return _NumpyOps(work)
