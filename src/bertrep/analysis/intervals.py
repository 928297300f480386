"""The analysis's uncertainty: intervals and floors of its CKA profiles, its Mean-CKA and
AuFC cells, seed bands, and which cells cannot be told apart.

    intervals = Intervals(BootstrapRule(replicates=200))
    band = intervals.profile(key, (path_x, path_y), (hx, hy), (sx, sy), estimate)
    cell = mean_cka_interval(intervals, cross_keys, self_keys, self_profiles, value)
    aufc = aufc_intervals(cells, seeds, rule)

Every profile on one probe set is resampled with the same sentence draw (seeded by the
rule's seed and the probe digest), so a Mean-CKA replicate is the same formula applied
to the cross and self profiles of one replicate. An interval is of the reported number
(biased CKA at this probe size) over other draws of probe sentences, not of the
population CKA (bertrep.maths.bootstrap). AuFC cells get a t-interval over their seeds: with
two or three seeds a bootstrap of the mean is no 95% interval (two seeds give their
range, which covers the mean about half the time). The numerics are in bertrep.maths.bootstrap.
"""

from __future__ import annotations

import itertools
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from bertrep.analysis.cells import FLAG, FLOAT, INT, TEXT, typed
from bertrep.data import activations
from bertrep.maths.bootstrap import (
    Resampling,
    Side,
    bootstrap_profile,
    percentile_interval,
    permutation_floor,
    seed_band,
    sentence_weights,
)

# Prepared sides kept at once: the target seeds a Mean-CKA column compares against and
# the source model of the moment (3 seeds + 1 in the paper's setting). Each holds its
# layers' Grams: L x n² float32, ~1.2 GB for BERT-base at n = 5,000.
_SIDES_KEPT = 6


@dataclass(frozen=True)
class BootstrapRule:
    """replicates: sentence resamples per probe set (0: no intervals); level: the
    intervals' coverage; seed: the draws' seed (with each probe digest)."""

    replicates: int = 200
    level: float = 0.95
    seed: int = 0


@dataclass(frozen=True)
class Band:
    """One profile's (Lx, Ly) interval ends, permutation floor and the number of
    replicates each cell kept (a replicate with a non-positive self term is left out)."""

    low: np.ndarray
    high: np.ndarray
    floor: np.ndarray
    kept: np.ndarray


def _stable(text: str) -> int:
    return zlib.crc32(text.encode())


class Intervals:
    """Bootstrap replicates (B, Lx, Ly) and floors (Lx, Ly) of the biased profiles the
    analysis computes, by profile key, with the sentence draw of each probe set."""

    def __init__(self, rule: BootstrapRule) -> None:
        self.rule = rule
        self.replicates: dict[tuple, np.ndarray] = {}
        self.floors: dict[tuple, np.ndarray] = {}
        self._draws: dict[str, Resampling] = {}
        self._sides: OrderedDict[tuple, Side] = OrderedDict()

    def _draw(self, path: Path, digest: str) -> Resampling:
        if digest not in self._draws:
            sentence = activations.read_rows(path)[:, 0]
            seed = self.rule.seed + _stable(digest)
            self._draws[digest] = sentence_weights(sentence, self.rule.replicates, seed)
        return self._draws[digest]

    def _side(self, path: Path, hidden: tuple, states: np.ndarray, draw: Resampling) -> Side:
        key = (str(path), hidden)
        if key not in self._sides:
            self._sides[key] = Side(states, draw)
            while len(self._sides) > _SIDES_KEPT:
                self._sides.popitem(last=False)
        self._sides.move_to_end(key)
        return self._sides[key]

    def profile(
        self,
        key: tuple,
        paths: tuple[Path, Path],
        hidden: tuple[tuple[int, ...], tuple[int, ...]],
        states: tuple[np.ndarray, np.ndarray],
        estimate: np.ndarray,
    ) -> Band:
        """The band of one biased profile whose point estimate is `estimate` (Lx, Ly).
        key = profile_key(...) of (x, y); the replicates and floor are kept under it for
        the Mean-CKA cells, and a profile met again (as another kind, or transposed) is
        not resampled twice."""
        probe, run_x, run_y, step_x, step_y, hx, hy = key
        flipped = (probe, run_y, run_x, step_y, step_x, hy, hx)
        if key not in self.replicates and flipped in self.replicates:
            self.replicates[key] = self.replicates[flipped].transpose(0, 2, 1)
            self.floors[key] = self.floors[flipped].T
        if key not in self.replicates:
            digest = activations.read_meta(paths[0])["probe_digest"]
            draw = self._draw(paths[0], digest)
            x = self._side(paths[0], hidden[0], states[0], draw)
            y = self._side(paths[1], hidden[1], states[1], draw)
            self.replicates[key] = bootstrap_profile(x, y)
            self.floors[key] = permutation_floor(x, y)
        reps = self.replicates[key]
        low, high = percentile_interval(reps, self.rule.level, estimate)
        return Band(low, high, self.floors[key], np.isfinite(reps).sum(axis=0))


def mean_cka_interval(
    intervals: Intervals, cross_keys: list, self_keys: list, self_point: np.ndarray, value: float
) -> dict:
    """One Mean-CKA cell's interval (ci_low, ci_high), its floor (the cell with every
    cross profile at its permutation floor) and whether the interval reaches it, and
    with three or more self pairs its seed band: the Mean-CKA each self pair would give
    against the mean of the others, and whether the interval overlaps that band (the
    source is then as similar to the target as another seed of it is)."""
    level = intervals.rule.level
    cross = np.nanmean([intervals.replicates[k] for k in cross_keys], axis=0)  # (B, L, L)
    self_ = np.nanmean([intervals.replicates[k] for k in self_keys], axis=0)
    values = 1 + (cross - self_).mean(axis=(1, 2))
    low, high = (float(v) for v in percentile_interval(values, level, np.float64(value)))
    floor = np.mean([intervals.floors[k] for k in cross_keys], axis=0)
    floor = float(1 + (floor - self_point.mean(axis=0)).mean())
    known = np.isfinite([low, high]).all()  # a flag compares only known ends: else None
    out = {"ci_low": low, "ci_high": high, "ci_level": level, "floor": floor,
           "near_floor": bool(low <= floor) if known and np.isfinite(floor) else None,
           "seed_band_low": np.nan, "seed_band_high": np.nan, "within_seed_band": None}  # fmt: skip
    if len(self_point) >= 3:
        others = (self_point.sum(axis=0) - self_point) / (len(self_point) - 1)
        band = 1 + (self_point - others).mean(axis=(1, 2))  # each pair vs the others' mean
        out |= {"seed_band_low": float(band.min()), "seed_band_high": float(band.max()),
                "within_seed_band": bool(high >= band.min() and low <= band.max())
                if known else None}  # fmt: skip
    return out


def seed_band_table(profiles: pd.DataFrame) -> pd.DataFrame:
    """Per target and cell of its self profiles (biased), the lowest and highest CKA over
    all seed pairs, where a target has three or more seeds (three pairs)."""
    rows = []
    self_ = profiles[(profiles.kind == "self") & (profiles.estimator == "biased")]
    for target, g in self_.groupby("target") if len(self_) else []:
        pairs = [p.pivot(index="hidden_x", columns="hidden_y", values="cka")
                 for _, p in g.groupby(["run_x", "run_y"])]  # fmt: skip
        if len(pairs) < 3:
            continue
        low, high = seed_band(np.stack([p.to_numpy() for p in pairs]))
        cells = itertools.product(enumerate(pairs[0].index), enumerate(pairs[0].columns))
        for (i, a), (j, b) in cells:
            rows.append({"target": target, "hidden_x": a, "hidden_y": b, "low": low[i, j],
                         "high": high[i, j], "pairs": len(pairs)})  # fmt: skip
    return typed(rows, SEED_BAND_COLUMNS)


SEED_BAND_COLUMNS = {"target": TEXT, "hidden_x": INT, "hidden_y": INT, "low": FLOAT, "high": FLOAT,
                     "pairs": INT}  # fmt: skip
# what aufc_intervals adds to the AuFC cells
AUFC_INTERVAL_COLUMNS = {"ci_low": FLOAT, "ci_high": FLOAT, "ci_level": FLOAT, "near_floor": FLAG}


def aufc_intervals(cells: pd.DataFrame, seeds: pd.DataFrame, rule: BootstrapRule) -> pd.DataFrame:
    """The AuFC cells with a t-interval of the mean over their seeds (ci_low, ci_high;
    a cell of one seed, or none, has none) and near_floor: whether it reaches 0, a source
    no better than chance (unknown without an interval)."""
    cells = cells.copy()
    cells["ci_low"], cells["ci_high"], cells["ci_level"] = np.nan, np.nan, rule.level
    cells["near_floor"] = pd.Series([None] * len(cells), dtype="boolean", index=cells.index)
    if not rule.replicates:
        return cells
    for i, cell in cells.iterrows():
        mine = seeds[(seeds.source == cell.source) & (seeds.target == cell.target)
                     & (seeds.variant == cell.variant)].value.to_numpy(dtype=float)  # fmt: skip
        if len(mine) < 2 or not np.isfinite(cell.value):
            continue
        half = stats.t.ppf((1 + rule.level) / 2, len(mine) - 1) * stats.sem(mine)
        cells.loc[i, ["ci_low", "ci_high"]] = cell.value - half, cell.value + half
        cells.at[i, "near_floor"] = bool(cell.value - half <= 0)
    return cells


TIES_COLUMNS = {"matrix": TEXT, "target": TEXT, "source": TEXT, "value": FLOAT, "ci_low": FLOAT,
                "ci_high": FLOAT, "best_source": TEXT, "tied_with_best": FLAG}  # fmt: skip


def indistinguishable(cells: pd.DataFrame, matrix: str) -> pd.DataFrame:
    """A table of TIES_COLUMNS: per target column of a matrix with intervals: its best source,
    and for every other source whether its interval overlaps the best's (None: one of
    them has none). Cells without a number take no part."""
    rows = []
    usable = cells[np.isfinite(cells.value.to_numpy(dtype=float)) & (cells.source != cells.target)]
    for target, column in usable.groupby("target"):
        best = column.loc[column.value.idxmax()]
        for _, cell in column.iterrows():
            ends = [cell.ci_low, cell.ci_high, best.ci_low, best.ci_high]
            known = np.isfinite(np.array(ends, dtype=float)).all()
            overlap = cell.ci_high >= best.ci_low and best.ci_high >= cell.ci_low
            rows.append(
                {"matrix": matrix, "target": target, "source": cell.source,
                 "value": cell.value, "ci_low": cell.ci_low, "ci_high": cell.ci_high,
                 "best_source": best.source,
                 "tied_with_best": (bool(overlap) if known else None)
                 if cell.source != best.source else False}
            )  # fmt: skip
    return typed(rows, TIES_COLUMNS)
