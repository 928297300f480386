"""Task-transfer metrics: normalized scores, AuFC, Mean-CKA and comparisons of transfer matrices.

    from bertrep.maths.transfer import aufc, mean_cka, normalize
    area = aufc([0, 3, 6, 9, 12], scores, num_layers=12, chance=0.5, best=0.92)
    value = mean_cka(cross_profiles, self_profiles)     # (S, L, L) stacks or (L, L)

Definitions (docs/definitions.md):
- norm(s) = (s − chance_B) / (best_B − chance_B) for target task B.
- AuFC(A→B): trapezoid area under norm(score_B) against x = k / L over the grid of
  frozen-layer counts k, which must include 0 and L.
- Mean-CKA(A→B) = 1 + mean over all (i, j) of (cross − self), cross and self each
  averaged over their seed pairs first.
Pure functions on arrays; no I/O.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "MatrixCorrelation",
    "aufc",
    "average_transferability",
    "correlation",
    "matrix_correlation",
    "mean_cka",
    "normalize",
]


def _finite(name: str, a: np.ndarray) -> None:
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or inf: {a.tolist()}")


def normalize(score: Any, chance: float, best: float, *, strict: bool = True) -> Any:
    """(score − chance) / (best − chance): 0 at chance, 1 at full fine-tuning.

    score: a float or an array of any shape; returns the same kind. Where best equals
    chance (or either is not finite) the score is undefined: an error, or with
    strict=False NaN (a training run logs it and goes on).
    """
    problem = ""
    if not (np.isfinite(chance) and np.isfinite(best)):
        problem = f"chance and best must be finite; got chance={chance}, best={best}"
    elif best == chance:
        problem = f"best equals chance ({best}): the normalized score is undefined"
    if problem and strict:
        raise ValueError(problem)
    if problem:
        out = np.full(np.shape(score), np.nan)
        return float(out) if out.ndim == 0 else out
    out = (np.asarray(score, dtype=np.float64) - chance) / (best - chance)
    return float(out) if out.ndim == 0 else out


def aufc(
    ks: Any,
    scores: Any,
    *,
    num_layers: int,
    chance: float,
    best: float,
    require_endpoints: bool = True,
) -> float:
    """Area under the normalized score against the frozen fraction x = k / num_layers.

    ks: (m,) distinct frozen-layer counts in 0..num_layers, any order; scores: (m,)
    target-task scores at those k. Trapezoid rule over the sorted grid, so the area of
    a constant normalized score 1 over the full grid [0, L] is 1. Without
    require_endpoints the area covers only the grid's own span.
    """
    ks, scores = np.asarray(ks), np.asarray(scores, dtype=np.float64)
    if ks.ndim != 1 or ks.shape != scores.shape:
        raise ValueError(f"ks and scores must be 1-D of equal length: {ks.shape}, {scores.shape}")
    if len(ks) < 2:
        raise ValueError(f"AuFC needs at least 2 grid points; got ks = {ks.tolist()}")
    if not np.all(ks == np.round(ks)):
        raise ValueError(f"ks must be whole numbers of frozen layers; got {ks.tolist()}")
    if num_layers < 1:
        raise ValueError(f"num_layers must be positive; got {num_layers}")
    _finite("scores", scores)
    order = np.argsort(ks, kind="stable")
    ks, scores = ks[order].astype(np.int64), scores[order]
    if np.any(np.diff(ks) == 0):
        raise ValueError(f"ks has duplicates: {ks.tolist()}")
    if ks[0] < 0 or ks[-1] > num_layers:
        raise ValueError(f"ks must lie in 0..{num_layers}; got {ks.tolist()}")
    if require_endpoints and (ks[0] != 0 or ks[-1] != num_layers):
        raise ValueError(
            f"the k grid {ks.tolist()} must include 0 and num_layers = {num_layers} "
            "(pass require_endpoints=False to integrate over its own span)"
        )
    x, y = ks / num_layers, normalize(scores, chance, best)
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2))


def _mean_profile(name: str, a: Any) -> np.ndarray:
    """(L, L) profile, or the mean of an (S, L, L) stack over seed pairs."""
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 3:
        if a.shape[0] == 0:
            raise ValueError(f"{name} is an empty stack of profiles")
        a = a.mean(0)
    if a.ndim != 2:
        raise ValueError(f"{name} must be (L, L) or (S, L, L); got shape {a.shape}")
    _finite(name, a)
    return a


def mean_cka(cross: Any, self_: Any) -> float:
    """1 + mean over cells of (cross − self), each averaged over its stack first.

    cross: (L, L) or (S1, L, L) CKA profiles of source-model layers against target-
    model layers over seed pairs; self_: (L, L) or (S2, L, L) profiles between target
    seeds s ≠ s'. S1 and S2 may differ.
    """
    c, s = _mean_profile("cross", cross), _mean_profile("self_", self_)
    if c.shape != s.shape:
        raise ValueError(f"cross profile {c.shape} and self profile {s.shape} differ in shape")
    return float(1.0 + np.mean(c - s))


def _square(name: str, m: Any) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] < 2:
        raise ValueError(f"{name} must be a square (T, T) matrix with T >= 2; got {m.shape}")
    return m


def average_transferability(matrix: Any) -> np.ndarray:
    """Row means of a (T, T) source × target matrix over its finite off-diagonal cells ->
    (T,); NaN for a row with none (a missing cell is left out, never read as 0)."""
    m = _square("matrix", matrix)
    use = ~np.eye(len(m), dtype=bool) & np.isfinite(m)
    return np.array(
        [row[mask].mean() if mask.any() else np.nan for row, mask in zip(m, use, strict=True)]
    )


class MatrixCorrelation(NamedTuple):
    pearson: float
    spearman: float
    cells: int


def matrix_correlation(a: Any, b: Any) -> MatrixCorrelation:
    """Pearson and Spearman correlation of two (T, T) matrices over the off-diagonal
    cells finite in both (a missing cell is left out); a ValueError when fewer than 3."""
    a, b = _square("a", a), _square("b", b)
    if a.shape != b.shape:
        raise ValueError(f"matrices differ in shape: {a.shape} vs {b.shape}")
    use = ~np.eye(len(a), dtype=bool) & np.isfinite(a) & np.isfinite(b)
    return correlation(a[use], b[use])


def correlation(x: Any, y: Any) -> MatrixCorrelation:
    """Pearson and Spearman correlation of paired cells x, y (m,), m >= 3."""
    from scipy import stats

    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"cells must be paired 1-D arrays: {x.shape} vs {y.shape}")
    _finite("a", x)
    _finite("b", y)
    if len(x) < 3:
        raise ValueError(f"need at least 3 off-diagonal cells to correlate; got {len(x)}")
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        raise ValueError("a matrix is constant off the diagonal: correlation undefined")
    return MatrixCorrelation(
        pearson=float(stats.pearsonr(x, y).statistic),
        spearman=float(stats.spearmanr(x, y).statistic),
        cells=len(x),
    )
