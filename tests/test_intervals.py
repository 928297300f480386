"""The analysis-level intervals (bertrep.analysis.intervals) on tables and replicates made here:
Mean-CKA cells from stored replicates, their floor and seed band, AuFC t-intervals,
the seed-band table and which cells cannot be told apart."""

import itertools

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from bertrep.analysis.intervals import (
    BootstrapRule,
    Intervals,
    aufc_intervals,
    indistinguishable,
    mean_cka_interval,
    seed_band_table,
)


def test_mean_cka_interval_from_stored_replicates_with_floor_and_seed_band():
    rng = np.random.default_rng(0)
    intervals = Intervals(BootstrapRule(replicates=400, level=0.9))
    cross, self_ = ["c1", "c2"], ["s1", "s2", "s3"]
    for key, centre in [("c1", 0.6), ("c2", 0.7), ("s1", 0.9), ("s2", 0.8), ("s3", 0.85)]:
        intervals.replicates[key] = centre + 0.01 * rng.standard_normal((400, 2, 2))
        intervals.floors[key] = np.full((2, 2), 0.05)
    self_point = np.stack([np.full((2, 2), c) for c in (0.9, 0.8, 0.85)])
    value = 1 + 0.65 - 0.85
    cell = mean_cka_interval(intervals, cross, self_, self_point, value)
    reps = (
        1
        + np.mean([intervals.replicates[k] for k in cross], 0).mean((1, 2))
        - np.mean([intervals.replicates[k] for k in self_], 0).mean((1, 2))
    )
    assert cell["ci_low"] < value < cell["ci_high"] and cell["ci_level"] == 0.9
    assert cell["ci_high"] - cell["ci_low"] == pytest.approx(
        np.subtract(*np.percentile(reps, [95, 5])), rel=0.2
    )
    assert cell["floor"] == pytest.approx(1 + 0.05 - 0.85)
    assert cell["near_floor"] is False
    # each self pair against the mean of the other two: 1 + 0.9 − 0.825, 1 + 0.8 − 0.875, ...
    assert cell["seed_band_low"] == pytest.approx(1 + 0.8 - 0.875)
    assert cell["seed_band_high"] == pytest.approx(1 + 0.9 - 0.825)
    assert cell["within_seed_band"] is False  # 0.8 lies below the band [0.925, 1.075]


def test_aufc_gets_a_t_interval_over_its_seeds_and_none_from_one_seed():
    cells = pd.DataFrame(
        [
            {"source": "sst2", "target": "pos", "variant": "aufc", "value": 0.5},
            {"source": "base", "target": "pos", "variant": "aufc", "value": 0.7},
        ]
    )
    seeds = pd.DataFrame(
        [{"source": "sst2", "target": "pos", "variant": "aufc", "value": v} for v in (0.4, 0.6)]
        + [{"source": "base", "target": "pos", "variant": "aufc", "value": 0.7}]
    )
    out = aufc_intervals(cells, seeds, BootstrapRule()).set_index("source")
    half = stats.t.ppf(0.975, 1) * np.std([0.4, 0.6], ddof=1) / np.sqrt(2)
    assert (out.loc["sst2", "ci_low"], out.loc["sst2", "ci_high"]) == pytest.approx(
        (0.5 - half, 0.5 + half)
    )
    assert bool(out.loc["sst2", "near_floor"]) is True  # two seeds: the interval reaches 0
    assert np.isnan(out.loc["base", "ci_low"]) and pd.isna(out.loc["base", "near_floor"])


def test_ties_with_the_best_and_unknown_where_an_interval_is_missing():
    cells = pd.DataFrame(
        [
            {"source": "a", "target": "t", "value": 0.9, "ci_low": 0.85, "ci_high": 0.95},
            {"source": "b", "target": "t", "value": 0.8, "ci_low": 0.7, "ci_high": 0.86},
            {"source": "c", "target": "t", "value": 0.5, "ci_low": 0.4, "ci_high": 0.6},
            {"source": "d", "target": "t", "value": 0.6, "ci_low": np.nan, "ci_high": np.nan},
            {"source": "t", "target": "t", "value": 1.0, "ci_low": 1.0, "ci_high": 1.0},
        ]
    )
    ties = indistinguishable(cells, "m").set_index("source")
    assert set(ties.index) == {"a", "b", "c", "d"} and (ties.best_source == "a").all()
    tied = ties.tied_with_best  # a nullable flag: NA where an interval is missing
    assert tied.astype(object).where(tied.notna(), None).to_dict() == {
        "a": False, "b": True, "c": False, "d": None}  # fmt: skip


def test_seed_band_table_needs_three_seed_pairs():
    rows = []
    for (pair, value), (i, j) in itertools.product(
        [(("r0", "r1"), 0.9), (("r0", "r2"), 0.7), (("r1", "r2"), 0.8)], [(1, 1), (1, 2)]
    ):
        rows.append(
            {
                "kind": "self",
                "estimator": "biased",
                "target": "sst2",
                "run_x": pair[0],
                "run_y": pair[1],
                "hidden_x": i,
                "hidden_y": j,
                "cka": value + 0.01 * j,
            }
        )
    band = seed_band_table(pd.DataFrame(rows)).set_index(["hidden_x", "hidden_y"])
    assert band.loc[(1, 2), "low"] == pytest.approx(0.72)
    assert band.loc[(1, 2), "high"] == pytest.approx(0.92) and (band.pairs == 3).all()
    two = pd.DataFrame([r for r in rows if r["run_y"] != "r2" or r["run_x"] != "r1"])
    assert seed_band_table(two).empty
