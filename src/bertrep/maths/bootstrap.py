"""How sure a CKA or transfer number is: sentence-level bootstrap intervals, the
permutation floor of CKA, and seed bands. Pure numerics on arrays, no I/O.

    draw = sentence_weights(sentence, replicates=200, seed=0)      # rows sorted by sentence
    x, y = Side(states_x, draw), Side(states_y, draw)              # (L, n, p) each
    reps = bootstrap_profile(x, y)                                 # (B, Lx, Ly) biased CKA
    low, high = percentile_interval(reps, 0.95, estimate)          # (Lx, Ly) each
    floor = permutation_floor(x, y)                                # (Lx, Ly)

Resampling. Tokens of one sentence are correlated, so a replicate draws the probe set's
S sentences with replacement and keeps every probe token of each drawn sentence as many
times as it was drawn: row i gets weight w_i = c_s, the count of its sentence s. Nothing
is re-extracted and no rows are copied: with Kc the centred Gram of a layer, its
weighted row sums a = Kc w and W = Σ w, the weighted-centred HSIC term of the resampled
rows is

    T_w(K, L) = wᵀ(Kc ∘ Lc)w − (2/W) Σ_i w_i a_i b_i + (wᵀa)(wᵀb)/W²

(b = Lc w), ||X̃ᵀỸ||²_F of the explicitly resampled rows centred by their own mean.
A sentence drawn c times would pair with itself c² times there, c(c − 1) of them pairs
of distinct but identical copies: biased CKA, a V-statistic, counts them as extra
perfect matches, and every replicate lands above the estimate (at n = 2,000, 13% of the
quick study's profile cells had their estimate outside the interval). So a replicate
drops those pairs from the first term, Σ_s c_s(c_s − 1) M_ss with M_ss = Σ_{i,j∈s}
Kc_ij Lc_ij; its replicates then sit around the estimate (tests: the plain replicates,
`pair_copies=True`, equal CKA of the explicitly resampled rows to 1e-10; the default
ones equal that with those pairs removed). Biased CKA = T(K, L) / sqrt(T(K, K) T(L, L));
with few long sentences the dropped pairs can make a self term non-positive: such a
replicate is NaN and left out, and callers report how many were kept.

What an interval is of: the reported number, biased CKA at this n, over other draws of
sentences like these (tests: it covers the mean of the estimator over fresh draws at the
nominal rate, at p/n from 0.01 to 0.15). It is not an interval for the population CKA:
the biased estimator's own bias, which grows with width / n (see the floor), stays in
both ends; the debiased estimator aims at the population value, but its i ≠ j sums have
no meaning once rows repeat, so it gets no interval.

Grams are of globally centred layers (any constant shift drops out of the weighted
centring, and the products lose less to cancellation); they run in float32 for
float16/float32 inputs, float64 for float64 ones, and every sum of products runs in
float64.

Permutation floor. Shuffling one side's rows uniformly keeps both Grams and gives
E[tr(Kc P Lc Pᵀ)] = tr Kc tr Lc / (n − 1) (centred Grams sum to zero off the diagonal by
rows), so the expected biased CKA of unrelated rows is exact and free:

    floor = ||Xc||²_F ||Yc||²_F / ((n − 1) sqrt(T_xx T_yy))

(the RV coefficient's permutation mean, Josse, Pagès & Husson 2008). The debiased
numerator's permutation mean is exactly 0, so its floor is 0.
"""

from __future__ import annotations

import numpy as np
from scipy import sparse

from bertrep.maths.layers import as_layers, check_finite

__all__ = [
    "Resampling",
    "Side",
    "bootstrap_mean",
    "bootstrap_profile",
    "percentile_interval",
    "permutation_floor",
    "seed_band",
    "sentence_weights",
]


class Resampling:
    """B replicates of a probe set's S sentences drawn with replacement.

    starts: (S,) first row of each sentence (rows sorted by sentence); counts: (B, S)
    times each sentence was drawn; weights: (B, n) the same per row; indicator: the
    sparse (S, n) sentence-by-row 0/1 matrix."""

    def __init__(
        self, starts: np.ndarray, counts: np.ndarray, n: int, pair_copies: bool = False
    ) -> None:
        self.starts, self.counts, self.n, self.pair_copies = starts, counts, n, pair_copies
        sizes = np.diff(np.append(starts, n))
        self.weights = np.repeat(counts, sizes, axis=1)
        rows = np.repeat(np.arange(len(starts)), sizes)
        ones = np.ones(n, np.float32)
        self.indicator = sparse.csr_matrix((ones, (rows, np.arange(n))), shape=(len(starts), n))


def sentence_weights(
    sentence: np.ndarray, replicates: int, seed: int, *, pair_copies: bool = False
) -> Resampling:
    """Draw the S distinct sentences of `sentence` (n,), rows sorted by sentence, S times
    with replacement in each of `replicates` replicates. Seeded: the same arguments give
    the same draw. pair_copies=True keeps the pairs of distinct copies of a sentence (the
    plain bootstrap of the resampled rows; see the module docstring)."""
    sentence = np.asarray(sentence)
    if sentence.ndim != 1 or len(sentence) < 2:
        raise ValueError(f"sentence must be a 1-D array of at least 2 rows; got {sentence.shape}")
    if np.any(np.diff(sentence) < 0):
        raise ValueError("rows must be sorted by sentence (probe sets are)")
    if replicates < 1:
        raise ValueError(f"replicates must be at least 1; got {replicates}")
    starts = np.flatnonzero(np.r_[True, sentence[1:] != sentence[:-1]])
    rng = np.random.default_rng(seed)
    size = len(starts)
    counts = rng.multinomial(size, np.full(size, 1 / size), size=replicates).astype(np.float64)
    return Resampling(starts, counts, len(sentence), pair_copies)


class Side:
    """One model's layers on one probe set, prepared for weighted CKA.

    layers: (L, n, p) array or a list of (n, p) arrays, rows in the resampling's order
    (the same for every Side compared). Holds each layer's centred Gram (L, n, n) in the
    work dtype, its weighted row sums (L, n, B) and the replicates' self terms (B, L).
    """

    def __init__(self, layers: np.ndarray | list[np.ndarray], resampling: Resampling) -> None:
        layers = [np.asarray(x) for x in as_layers(layers, "model")]
        n = resampling.n
        if layers[0].shape[0] != n:
            rows = layers[0].shape[0]
            raise ValueError(f"the layers have {rows} rows; the resampling has {n} rows")
        check_finite({"model": layers})
        work = np.float64 if all(x.dtype == np.float64 for x in layers) else np.float32
        self.n, self.resampling = n, resampling
        self.weights = weights = resampling.weights
        self.total = weights.sum(axis=1)  # W: rows in each replicate
        self.grams, self.sums, sd = [], [], []
        for x in layers:
            xc = x.astype(np.float64) - x.astype(np.float64).mean(axis=0)
            sd.append(float(np.einsum("ij,ij->", xc, xc)))
            xw = xc.astype(work)
            self.grams.append(xw @ xw.T)
            # Kc w of every replicate (n, B), and wᵀKc w (B,), from the features.
            projected = xc.T @ weights.T
            self.sums.append((xc @ projected, np.einsum("pb,pb->b", projected, projected)))
        self.sd = np.array(sd)
        self.t = np.array([_inner(k, k) for k in self.grams])  # unweighted ||XcᵀXc||²_F
        self.self_t = np.stack([self.pair_t(self, i, i) for i in range(len(layers))], axis=1)

    def pair_t(self, other: Side, i: int, j: int) -> np.ndarray:
        """(B,) weighted-centred T of layer i of this side against layer j of `other`."""
        counts, indicator = self.resampling.counts, self.resampling.indicator
        # Σ_ij w_i w_j K_ij L_ij with sentence weights: sum K∘L over sentence blocks first
        # (a sparse sentence-by-row indicator each side; K∘L is symmetric). Blocks are a
        # few products each, so the work dtype holds their sums.
        rows = indicator @ (self.grams[i] * other.grams[j])
        blocks = (indicator @ np.ascontiguousarray(rows.T)).astype(np.float64)
        # A sentence drawn c times meets itself c times, not c²: its c(c − 1) pairs of
        # distinct copies are identical rows, extra perfect matches that would lift
        # biased CKA above the estimate in every replicate.
        quadratic = np.einsum("bs,bs->b", counts @ blocks, counts)
        if not self.resampling.pair_copies:
            quadratic -= (counts * (counts - 1)) @ np.diag(blocks)
        (a, wa), (b, wb) = self.sums[i], other.sums[j]
        mixed = np.einsum("ib,ib,bi->b", a, b, self.weights)
        return quadratic - 2 * mixed / self.total + wa * wb / self.total**2


def _inner(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.einsum("ij,ij->", a, b, dtype=np.float64))


def bootstrap_profile(x: Side, y: Side) -> np.ndarray:
    """(B, Lx, Ly) biased linear CKA of every layer pair in every replicate. A layer that
    is constant within a replicate, or whose self term is not positive (see the module
    docstring), gives NaN there; without its copy pairs a cross term near zero may dip
    below it (a replicate of a CKA near 0), and is kept."""
    if x.resampling is not y.resampling:
        raise ValueError("the two sides were prepared with different resamplings")
    out = np.empty((len(x.total), len(x.grams), len(y.grams)))
    with np.errstate(invalid="ignore", divide="ignore"):
        for i in range(len(x.grams)):
            for j in range(len(y.grams)):
                t = x.pair_t(y, i, j)
                out[:, i, j] = t / np.sqrt(x.self_t[:, i] * y.self_t[:, j])
    out[~np.isfinite(out)] = np.nan
    return out


def permutation_floor(x: Side, y: Side) -> np.ndarray:
    """(Lx, Ly) expected biased CKA when one side's rows are shuffled (exact)."""
    if x.n != y.n:
        raise ValueError(f"sides have {x.n} and {y.n} rows")
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.outer(x.sd, y.sd) / ((x.n - 1) * np.sqrt(np.outer(x.t, y.t)))


def percentile_interval(
    replicates: np.ndarray, level: float = 0.95, estimate: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) over axis 0 of the replicates, NaN replicates left out (all NaN: NaN).

    Without `estimate`: the (1 − level)/2 and (1 + level)/2 percentiles. With it (the
    point estimate, shaped like one replicate): Efron's bias-corrected percentiles,
    Φ(2 z0 ± z) with z0 = Φ⁻¹(share of replicates below the estimate), which shift both
    ends by the replicates' median bias (never beyond their range).
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1); got {level}")
    reps = np.asarray(replicates, dtype=np.float64)
    tail = np.full(reps.shape[1:], (1 - level) / 2)
    if estimate is None:
        return _quantiles(reps, tail), _quantiles(reps, 1 - tail)
    from scipy.stats import norm

    estimate = np.asarray(estimate, dtype=np.float64)
    valid = np.maximum(np.isfinite(reps).sum(axis=0), 1)
    below = (reps < estimate).sum(axis=0) + 0.5 * (reps == estimate).sum(axis=0)
    with np.errstate(invalid="ignore"):
        share = np.clip(below / valid, 0.5 / valid, 1 - 0.5 / valid)
        z0 = np.where(np.isfinite(estimate), norm.ppf(share), np.nan)
        z = norm.ppf(tail)
        return _quantiles(reps, norm.cdf(2 * z0 + z)), _quantiles(reps, norm.cdf(2 * z0 - z))


def _quantiles(reps: np.ndarray, q: np.ndarray) -> np.ndarray:
    """The q-th quantile (q per cell, linear interpolation) of each cell's finite
    replicates; NaN where a cell has none or q is NaN."""
    ordered = np.sort(reps, axis=0)  # NaN sort last
    count = np.isfinite(reps).sum(axis=0)
    with np.errstate(invalid="ignore"):
        position = np.where(np.isfinite(q), q, 0) * np.maximum(count - 1, 0)
    below = np.floor(position).astype(np.int64)
    above = np.minimum(below + 1, np.maximum(count - 1, 0))
    low = np.take_along_axis(ordered, below[None], axis=0)[0]
    high = np.take_along_axis(ordered, above[None], axis=0)[0]
    out = low + (position - below) * (high - low)
    return np.where((count > 0) & np.isfinite(q), out, np.nan)


def bootstrap_mean(
    values: np.ndarray, replicates: int, seed: int | np.random.Generator
) -> np.ndarray:
    """(B,) means of the finite `values` (S,) resampled with replacement (e.g. an AuFC cell
    over its seeds; a seed without a value is left out). One value gives B copies of it:
    no spread can be seen from one seed; none gives B NaNs. `seed` may be a generator, whose
    stream the draws continue (several cells resampled in turn)."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1:
        raise ValueError(f"values must be a 1-D array; got {values.shape}")
    values = values[np.isfinite(values)]
    if not len(values):
        return np.full(replicates, np.nan)
    rng = np.random.default_rng(seed)
    return values[rng.integers(0, len(values), size=(replicates, len(values)))].mean(axis=1)


def seed_band(profiles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) per cell: the smallest and largest self-similarity over all seed
    pairs, profiles (P, Lx, Ly) with P >= 3 (three seeds give three pairs)."""
    profiles = np.asarray(profiles, dtype=np.float64)
    if profiles.ndim != 3 or len(profiles) < 3:
        raise ValueError(f"a seed band needs at least 3 seed pairs; got shape {profiles.shape}")
    return profiles.min(axis=0), profiles.max(axis=0)
