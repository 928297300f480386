"""LogME: the maximum evidence of a linear model on frozen features (You et al., ICML 2021).

    from bertrep.maths.logme import evidence, logme, logme_fit
    score = logme(features, labels)                     # features (n, D), class ids (n,)
    score = logme(features, targets, regression=True)   # real targets (n,)
    fit = logme_fit(features, labels)                   # alpha, beta, evidence per target

Definitions (You, Liu, Long, Jordan 2021). For features F (n, D), one target y (n,),
weights w ~ N(0, α⁻¹I) and noise N(0, β⁻¹), the log evidence log p(y | F, α, β) is

    L(α, β) = n/2 log β + D/2 log α − n/2 log 2π − β/2 ||Fm − y||² − α/2 ||m||² − 1/2 log|A|

with A = αI + βFᵀF and m = βA⁻¹Fᵀy. LogME maximizes L over α, β > 0 by the paper's
fixed point γ = Σ βσᵢ/(α + βσᵢ), α = γ/mᵀm, β = (n − γ)/||Fm − y||² (σᵢ the eigenvalues
of FᵀF) from α = β = 1, and reports L/n averaged over the targets: the one-hot column of
each class present for classification, the single target for regression. Higher is better.

One thin SVD F = U diag(s) Vᵀ, shared by all targets, gives every term for n < D and
n ≥ D alike; `evidence` computes L/n from explicit D × D matrices, the independent check.
The iteration stops when α and β each change by under a relative 1e-10 (the paper: 1e-3 on
α/β), or L/n by under 1e-12, which ends runs whose finite supremum lies at α → ∞ (no
linear signal) or, for n ≤ D, β → ∞ (y interpolated); it warns after 10,000 steps. With
n > rank F and y exactly linear in F, L is unbounded: a ValueError. Pure numpy, float64.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, NamedTuple

import numpy as np

__all__ = ["LogMEFit", "evidence", "logme", "logme_fit"]

_TOL = 1e-10
_STALL = 1e-12
_MAX_ITER = 10_000


class LogMEFit(NamedTuple):
    """Per target column: alpha, beta, evidence (L/n) (K,); targets (n, K), classes sorted."""

    alpha: np.ndarray
    beta: np.ndarray
    evidence: np.ndarray
    targets: np.ndarray


def _inputs(features: Any, labels: Any, regression: bool) -> tuple[np.ndarray, np.ndarray]:
    """features as float64 (n, D) and the target columns (n, K), or one ValueError."""
    f, labels = np.asarray(features, dtype=np.float64), np.asarray(labels)
    if f.ndim != 2:
        raise ValueError(f"features must be a 2-D (n, D) array; got shape {f.shape}")
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D (n,); got shape {labels.shape}")
    if len(f) != len(labels):
        raise ValueError(f"features have {len(f)} rows but labels have {len(labels)}")
    if len(f) < 2:
        raise ValueError(f"LogME needs at least 2 samples; got {len(f)}")
    if not np.isfinite(f).all():
        raise ValueError("features contain NaN or inf")
    if not f.any():
        raise ValueError("features are all zero: the evidence has no maximum")
    if labels.dtype.kind in "fc" and not np.isfinite(labels).all():
        raise ValueError("labels contain NaN or inf")
    if regression:
        if labels.dtype.kind not in "iufb":
            raise ValueError(f"regression targets must be numbers; got dtype {labels.dtype}")
        if not labels.any():
            raise ValueError("regression targets are all zero: the evidence has no maximum")
        return f, labels.astype(np.float64)[:, None]
    classes, index = np.unique(labels, return_inverse=True)
    if len(classes) < 2:
        raise ValueError(f"classification needs at least 2 classes; got {classes.tolist()}")
    return f, (index[:, None] == np.arange(len(classes))).astype(np.float64)


def _step(
    s2: np.ndarray, z: np.ndarray, rest: np.ndarray, n: int, d: int, alpha, beta
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """L/n at (α, β) of every target (K,), z = Uᵀy (k, K), and the fixed point's next
    (α, β) of each: all targets of one feature matrix in one pass."""
    s2 = s2[:, None]
    denom = alpha + beta * s2  # (k, K)
    gamma = np.sum(beta * s2 / denom, axis=0)
    m_sq = np.sum((beta * z) ** 2 * s2 / denom**2, axis=0)
    res = np.sum((alpha * z / denom) ** 2, axis=0) + rest
    # A has D − k eigenvalues α beyond the k of the SVD when D > n.
    logdet = np.sum(np.log(denom), axis=0) + (d - len(s2)) * np.log(alpha)
    total = (n * np.log(beta) + d * np.log(alpha) - n * math.log(2 * math.pi)
             - beta * res - alpha * m_sq - logdet)  # fmt: skip
    return total / (2 * n), gamma / m_sq, (n - gamma) / res


def _fit(s2: np.ndarray, z: np.ndarray, rest: np.ndarray, n: int, d: int) -> tuple:
    """(alpha, beta, L/n), each (K,), where each target's fixed point from α = β = 1
    settles; a settled target keeps its values while the others go on."""
    k = z.shape[1]
    alpha, beta, last = np.ones(k), np.ones(k), np.full(k, -np.inf)
    out = np.ones(k), np.ones(k), np.full(k, np.nan)
    done = np.zeros(k, dtype=bool)
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):  # settled targets
        for _ in range(_MAX_ITER):
            value, new_alpha, new_beta = _step(s2, z, rest, n, d, alpha, beta)
            settled = (np.abs(new_alpha - alpha) <= _TOL * alpha) & (
                np.abs(new_beta - beta) <= _TOL * beta
            )
            stalled = np.abs(value - last) <= _STALL * np.maximum(1.0, np.abs(value))
            now = ~done & (settled | stalled)
            for kept, current in zip(out, (alpha, beta, value), strict=True):
                kept[now] = current[now]
            done |= now
            if done.all():
                return out
            alpha = np.where(done, alpha, new_alpha)
            beta = np.where(done, beta, new_beta)
            last = np.where(done, last, value)
    warnings.warn(f"LogME did not converge in {_MAX_ITER} steps", RuntimeWarning, stacklevel=3)
    for kept, current in zip(out, (alpha, beta, value), strict=True):
        kept[~done] = current[~done]
    return out


def logme_fit(features: Any, labels: Any, *, regression: bool = False) -> LogMEFit:
    """The maximizing alpha, beta and L/n of every target column; arguments as `logme`."""
    f, targets = _inputs(features, labels, regression)
    n, d = f.shape
    u, s, _ = np.linalg.svd(f, full_matrices=False)
    z = u.T @ targets  # (k, K)
    # y's part outside F's column space: y − Uz summed directly, not ||y||² − ||z||².
    rest = ((targets - u @ z) ** 2).sum(0)
    rank = int(np.sum(s > s[0] * max(n, d) * np.finfo(np.float64).eps))
    exact = rest + (z[rank:] ** 2).sum(0) <= 1e-20 * (targets**2).sum(0)  # least squares
    if rank < n and exact.any():
        raise ValueError(
            f"target {exact.argmax()} is exactly linear in the features: L is unbounded"
        )
    alpha, beta, ev = _fit(s**2, z, rest, n, d)
    return LogMEFit(alpha=alpha, beta=beta, evidence=ev, targets=targets)


def logme(features: Any, labels: Any, *, regression: bool = False) -> float:
    """LogME of features (n, D) for labels (n,): class ids of any kind (a target per class
    present) or, with regression=True, real targets. The maximized L/n, mean over targets."""
    return float(np.mean(logme_fit(features, labels, regression=regression).evidence))


def evidence(features: Any, y: Any, alpha: float, beta: float) -> float:
    """L(α, β)/n for features (n, D) and one target y (n,), straight from the formula with
    the explicit D × D matrix A (solve, slogdet): the independent check of `logme_fit`."""
    f, y = np.asarray(features, dtype=np.float64), np.asarray(y, dtype=np.float64)
    n, d = f.shape
    a = alpha * np.eye(d) + beta * f.T @ f
    m = beta * np.linalg.solve(a, f.T @ y)
    _, logdet = np.linalg.slogdet(a)
    total = (n * np.log(beta) + d * np.log(alpha) - n * np.log(2 * np.pi)
             - beta * np.sum((f @ m - y) ** 2) - alpha * m @ m - logdet) / 2  # fmt: skip
    return float(total / n)
