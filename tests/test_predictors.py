"""The transfer-predictor shoot-out (bertrep.analysis.predictors.shootout) on tables made here:
its correlations equal scipy's on its own cell table, its intervals come from seeds,
and diagonal-only CKA is the Mean-CKA formula on the diagonal."""

import itertools

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from bertrep.analysis.intervals import BootstrapRule
from bertrep.analysis.predictors import shootout

TASKS = ("mnli", "stsb", "sst2", "pos")


def _tables(rng) -> dict[str, pd.DataFrame]:
    pairs = [(s, t) for s, t in itertools.product((*TASKS, "base"), TASKS) if s != t]
    quality = {p: rng.random() for p in pairs}
    mean_cka = pd.DataFrame(
        [
            {
                "source": s,
                "target": t,
                "estimator": e,
                "value": quality[(s, t)] + rng.normal(0, 0.1),
            }
            for s, t in pairs
            for e in ("biased", "debiased")
        ]
    )
    profiles = []
    for (s, t), q in quality.items():
        for pair, layer in itertools.product(range(2), (1, 2)):
            profiles.append(
                {
                    "kind": "cross",
                    "estimator": "biased",
                    "source": s,
                    "target": t,
                    "hidden_x": layer,
                    "hidden_y": layer,
                    "cka": q * layer / 2 + pair,
                }
            )
            profiles.append(
                {
                    "kind": "cross",
                    "estimator": "biased",
                    "source": s,
                    "target": t,
                    "hidden_x": 1,
                    "hidden_y": 2,
                    "cka": 9.0,
                }
            )  # off the diagonal
    for t, layer in itertools.product(TASKS, (1, 2)):
        profiles.append(
            {
                "kind": "self",
                "estimator": "biased",
                "source": np.nan,
                "target": t,
                "hidden_x": layer,
                "hidden_y": layer,
                "cka": 0.8,
            }
        )
    seeds = pd.DataFrame(
        [
            {
                "source": s,
                "target": t,
                "variant": "aufc",
                "seed": seed,
                "value": quality[(s, t)] + rng.normal(0, 0.05),
            }
            for s, t in pairs
            for seed in (0, 1)
        ]
    )
    scores = pd.DataFrame(
        [
            {
                "source": s,
                "target": t,
                "frozen_layers": k,
                "seed": seed,
                "norm_score": quality[(s, t)] * 0.5 + rng.normal(0, 0.05),
            }
            for s, t in pairs
            for seed in (0, 1)
            for k in (0, 6)
        ]
    )
    logme = pd.DataFrame(
        [
            {
                "source": s,
                "target": t,
                "run_id": f"{s}{seed}",
                "seed": seed,
                "rows": 100,
                "value": -quality[(s, t)] + rng.normal(0, 0.2),
            }
            for s, t in pairs
            for seed in ((0,) if s == "base" else (0, 1))
        ]
    )
    return {
        "mean_cka": mean_cka,
        "profiles": pd.DataFrame(profiles),
        "aufc_seeds": seeds,
        "scores": scores,
        "logme": logme,
    }


def test_correlations_equal_scipy_on_the_cell_table():
    tables = _tables(np.random.default_rng(0))
    cells, table = shootout(tables, TASKS, BootstrapRule(replicates=50, seed=1))
    assert len(cells) == 16 and set(table.predictor) == {"mean_cka", "diag_cka", "logme"}
    assert len(table) == 12 and set(table.scope) == {"all cells", "within target"}
    for r in table.itertuples():
        # base's k = 0 score is 1 by construction: not an outcome
        both = cells[(cells.source != "base") | (r.outcome != "transfer_k0")]
        x, y = both[r.predictor], both[r.outcome]
        if r.scope == "all cells":
            spearman, kendall = stats.spearmanr(x, y).statistic, stats.kendalltau(x, y).statistic
        else:  # the mean over target columns of the within-column values
            columns = [both.target == t for t in TASKS]
            spearman = np.mean([stats.spearmanr(x[c], y[c]).statistic for c in columns])
            kendall = np.mean([stats.kendalltau(x[c], y[c]).statistic for c in columns])
        assert r.cells == len(both) == (12 if r.outcome == "transfer_k0" else 16)
        assert r.spearman == pytest.approx(spearman, abs=1e-12)
        assert r.kendall == pytest.approx(kendall, abs=1e-12)
        assert r.spearman_low <= r.spearman <= r.spearman_high
        assert r.kendall_low <= r.kendall <= r.kendall_high
    # the cell values are what they should be: outcomes the mean over seeds, LogME the
    # mean over source models, diagonal CKA 1 + mean diag(cross) − mean diag(self)
    seeds = tables["aufc_seeds"]
    one = cells.set_index(["source", "target"]).loc[("sst2", "pos")]
    assert one.aufc == pytest.approx(
        seeds[(seeds.source == "sst2") & (seeds.target == "pos")].value.mean()
    )
    lm = tables["logme"]
    assert one.logme == pytest.approx(lm[(lm.source == "sst2") & (lm.target == "pos")].value.mean())
    p = tables["profiles"]
    diag = p[
        (p.kind == "cross")
        & (p.source == "sst2")
        & (p.target == "pos")
        & (p.hidden_x == p.hidden_y)
    ]
    assert one.diag_cka == pytest.approx(1 + diag.cka.mean() - 0.8)


def test_intervals_are_seeded_and_an_unrankable_pair_says_why():
    tables = _tables(np.random.default_rng(2))
    a = shootout(tables, TASKS, BootstrapRule(replicates=30, seed=5))[1]
    b = shootout(tables, TASKS, BootstrapRule(replicates=30, seed=5))[1]
    pd.testing.assert_frame_equal(a, b)
    tables["logme"] = tables["logme"].iloc[:0]
    _, table = shootout(tables, TASKS, BootstrapRule(replicates=10))
    row = table[(table.predictor == "logme") & (table.outcome == "aufc")].iloc[0]
    assert row.scope == "all cells"
    assert row.cells == 0 and np.isnan(row.spearman) and "too few" in row.note
