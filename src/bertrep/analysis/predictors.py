"""Which cheap signal predicts transfer: Mean-CKA, diagonal-only CKA and LogME against the
expensive AuFC and the k = 0 transfer score, as rank correlations with intervals.

    logme_rows = logme_table(inputs)
    cells, table = shootout(out, inputs.tasks, rule)   # out: the analysis's tables so far

Cells are the (source, target) pairs, base included, with source ≠ target. Predictors:
`mean_cka` (the headline estimator's cell), `diag_cka` (the same formula on the diagonal
only: 1 + mean over l of cross(l, l) − self(l, l)) and `logme` (You et al. 2021) of the
source model's last hidden state on the target's probe set with the target's labels:
for sentence tasks each probed sentence's tokens averaged to one feature row with the
sentence's label, for tagging one row per token with its word's tag; mean over the
source's models. Intervals resample seeds: each cell's outcome is the mean over its
seeds drawn with replacement, its LogME the mean over its source models drawn so; the
CKA predictors are held (their sentence intervals are in the Mean-CKA table).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from bertrep.analysis.cells import FLOAT, INT, TEXT, typed
from bertrep.analysis.collect import MissingInput
from bertrep.analysis.intervals import BootstrapRule
from bertrep.analysis.probe_labels import ProbeLabels, probe_labels
from bertrep.analysis.profiles import source_models
from bertrep.analysis.tables import BASE, Inputs, Missing
from bertrep.data import activations
from bertrep.maths.bootstrap import bootstrap_mean, percentile_interval
from bertrep.maths.logme import logme

PREDICTORS = ("mean_cka", "diag_cka", "logme")
OUTCOMES = ("aufc", "transfer_k0")


def logme_table(inputs: Inputs) -> pd.DataFrame:
    """One row per (source model, target): LogME of its last layer on the target's probe
    set. A target whose labels cannot be rebuilt is listed missing."""
    rows = []
    for target in inputs.tasks:
        owners = inputs.full_fine_tuning(target)
        if not owners:
            continue
        try:
            labels = _labels(inputs, target, owners[0])
        except MissingInput as error:
            inputs.missing.append(Missing("LogME", str(error), "single"))
            continue
        for source in (*inputs.tasks, BASE):
            if source == target:
                continue
            for model in source_models(inputs, source):
                try:
                    path = inputs.store.activations(model, target)
                except MissingInput as error:
                    inputs.missing.append(Missing("LogME", str(error), "aufc"))
                    continue
                digest = activations.read_meta(path)["probe_digest"]
                if digest != labels.digest:
                    what = (
                        f"{model.label} on {target}: probe set {digest}, labels of {labels.digest}"
                    )
                    inputs.missing.append(Missing("LogME", what, "aufc"))
                    continue
                try:
                    states = activations.read_layers(path, [model.num_layers])
                    x, y = _rows(states[model.num_layers].astype(np.float64), labels)
                    value = logme(x, y, regression=labels.kind == "regression")
                except ValueError as error:  # a bad table, or features LogME cannot score
                    what = f"{model.label} on {target}: {error}"
                    inputs.missing.append(Missing("LogME", what, "aufc"))
                    continue
                rows.append(
                    {"source": source, "target": target, "run_id": model.run_id,
                     "seed": model.seed, "rows": len(y), "value": value}
                )  # fmt: skip
    return typed(rows, LOGME_COLUMNS)


LOGME_COLUMNS = {"source": TEXT, "target": TEXT, "run_id": TEXT, "seed": INT, "rows": INT,
                 "value": FLOAT}  # fmt: skip


def _labels(inputs: Inputs, task: str, owner) -> ProbeLabels:
    digest = owner.probe_digests.get(task, "")
    return probe_labels(task, digest, owner.root_model, owner.params)


def _rows(states: np.ndarray, labels: ProbeLabels) -> tuple[np.ndarray, np.ndarray]:
    """Feature rows and labels: tokens for tagging, sentence means otherwise."""
    if labels.kind == "tagging":
        return states, labels.label
    starts = np.flatnonzero(np.r_[True, labels.sentence[1:] != labels.sentence[:-1]])
    sizes = np.diff(np.append(starts, len(states)))
    return np.add.reduceat(states, starts, axis=0) / sizes[:, None], labels.label[starts]


def shootout(
    out: dict[str, pd.DataFrame], tasks: tuple[str, ...], rule: BootstrapRule
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(cells, correlations): every predictor and outcome per cell; Spearman and Kendall
    of each predictor with each outcome over the cells both have and, since a target's
    scale (LogME above all) differs from another's, within each target column (the mean
    over columns), with intervals."""
    per_seed = _outcome_seeds(out)
    logme_models = out.get("logme", pd.DataFrame(columns=["source", "target", "value"]))
    keys = sorted(set(per_seed) | set(_cka_cells(out, "mean_cka")))
    mean_cka, diag_cka = _cka_cells(out, "mean_cka"), _cka_cells(out, "diag_cka")
    cells = []
    for source, target in keys:
        if source == target or target not in tasks or source not in (*tasks, BASE):
            continue
        models = logme_models[(logme_models.source == source) & (logme_models.target == target)]
        row = {"source": source, "target": target,
               "mean_cka": mean_cka.get((source, target), np.nan),
               "diag_cka": diag_cka.get((source, target), np.nan),
               "logme": models.value.mean() if len(models) else np.nan}  # fmt: skip
        for outcome in OUTCOMES:
            row[outcome] = np.mean(per_seed.get((source, target), {}).get(outcome, [np.nan]))
        # best_B is the mean of the base k = 0 runs: their normalized score is 1 by
        # construction, no outcome to predict
        if source == BASE:
            row["transfer_k0"] = np.nan
        cells.append(row)
    cells = typed(cells, PREDICTOR_CELL_COLUMNS)
    per_model = {k: g.value.to_numpy() for k, g in logme_models.groupby(["source", "target"])}
    rng = np.random.default_rng(rule.seed)
    table = []
    for predictor in PREDICTORS:
        for outcome in OUTCOMES:
            table += _correlate(cells, predictor, outcome, per_seed, per_model, rule, rng)
    return cells, typed(table, PREDICTOR_COLUMNS)


PREDICTOR_CELL_COLUMNS = {"source": TEXT, "target": TEXT} | dict.fromkeys(
    (*PREDICTORS, *OUTCOMES), FLOAT
)
PREDICTOR_COLUMNS = {"predictor": TEXT, "outcome": TEXT, "scope": TEXT, "cells": INT,
                     "columns": INT, "spearman": FLOAT, "spearman_low": FLOAT,
                     "spearman_high": FLOAT, "kendall": FLOAT, "kendall_low": FLOAT,
                     "kendall_high": FLOAT, "note": TEXT}  # fmt: skip


def _cka_cells(out: dict, name: str) -> dict[tuple, float]:
    """{(source, target): value} of the Mean-CKA cells of the headline estimator, or of
    their diagonal-only counterpart computed from the cross and self profiles."""
    mean = out["mean_cka"]
    if mean.empty:
        return {}
    headline = mean.estimator.iloc[0]
    if name == "mean_cka":
        cells = mean[mean.estimator == headline]
        return {(r.source, r.target): r.value for r in cells.itertuples()}
    p = out["profiles"]
    diag = p[(p.estimator == headline) & (p.hidden_x == p.hidden_y)]
    self_ = diag[diag.kind == "self"].groupby("target").cka.mean()
    cross = diag[diag.kind == "cross"].groupby(["source", "target"]).cka.mean()
    return {(s, t): 1 + v - self_.get(t, np.nan) for (s, t), v in cross.items()}


def _outcome_seeds(out: dict) -> dict[tuple, dict[str, list[float]]]:
    """{(source, target): {outcome: per-seed values}}."""
    found: dict[tuple, dict[str, list[float]]] = {}
    seeds = out["aufc_seeds"]
    for r in seeds[seeds.variant == "aufc"].itertuples():
        found.setdefault((r.source, r.target), {}).setdefault("aufc", []).append(r.value)
    scores = out["scores"]
    k0 = scores[(scores.frozen_layers == 0) & np.isfinite(scores.norm_score)]
    for (source, target), g in k0.groupby(["source", "target"]):
        found.setdefault((source, target), {})["transfer_k0"] = list(g.norm_score)
    return found


def _spearman_kendall(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Spearman's rho (Pearson of average ranks) and Kendall's tau-b of a few paired
    cells, in numpy: the replicates call it thousands of times (equal to scipy's, tests)."""
    rx, ry = stats.rankdata(x), stats.rankdata(y)
    rho = float(np.corrcoef(rx, ry)[0, 1])
    sx, sy = np.sign(x[:, None] - x[None, :]), np.sign(y[:, None] - y[None, :])
    upper = np.triu_indices(len(x), 1)
    concordance = (sx * sy)[upper].sum()
    tau = concordance / np.sqrt((sx[upper] != 0).sum() * (sy[upper] != 0).sum())
    return rho, float(tau)


def _ranks(x: np.ndarray, y: np.ndarray, target: np.ndarray) -> np.ndarray:
    """(2, 2) Spearman and Kendall (columns) over all cells and as the mean over target
    columns of the within-column values (rows; columns of < 3 distinct cells skipped)."""
    out = np.full((2, 2), np.nan)
    if len(x) >= 3 and np.ptp(x) > 0 and np.ptp(y) > 0:
        out[0] = _spearman_kendall(x, y)
    within = []
    for t in np.unique(target):
        mine = target == t
        if mine.sum() >= 3 and np.ptp(x[mine]) > 0 and np.ptp(y[mine]) > 0:
            within.append(_spearman_kendall(x[mine], y[mine]))
    if within:
        out[1] = np.mean(within, axis=0)
    return out


SCOPES = ("all cells", "within target")


def _resampled_means(groups: list, replicates: int, rng) -> np.ndarray:
    """(B, cells): each cell's values (its seeds or models) drawn with replacement and
    averaged, B times, the cells in turn from one generator (maths.bootstrap)."""
    if not groups:
        return np.empty((replicates, 0))
    return np.stack([bootstrap_mean(v, replicates, rng) for v in groups], axis=1)


def _correlate(cells, predictor, outcome, per_seed, per_model, rule, rng) -> list[dict]:
    """Rows (one per scope) of the rank correlations of one predictor with one outcome,
    with bias-corrected percentile intervals over seed resamples."""
    both = cells[np.isfinite(cells[predictor]) & np.isfinite(cells[outcome])]
    x, y = both[predictor].to_numpy(), both[outcome].to_numpy()
    target = both.target.to_numpy()
    point = _ranks(x, y, target)
    reps = []
    if rule.replicates and np.isfinite(point).any():
        keys = list(zip(both.source, both.target, strict=True))
        ys = _resampled_means([per_seed[k][outcome] for k in keys], rule.replicates, rng)
        xs = (_resampled_means([per_model[k] for k in keys], rule.replicates, rng)
              if predictor == "logme" else np.broadcast_to(x, ys.shape))  # fmt: skip
        reps = [_ranks(a, b, target) for a, b in zip(xs, ys, strict=True)]
    if reps:
        low, high = percentile_interval(np.array(reps), rule.level, point)
    else:
        low = high = np.full((2, 2), np.nan)
    rows = []
    for i, scope in enumerate(SCOPES):
        cells_in = len(both) if i == 0 else int(pd.Series(target).value_counts().ge(3).sum())
        note = "" if np.isfinite(point[i]).all() else "too few cells with both values to rank"
        rows.append(
            {"predictor": predictor, "outcome": outcome, "scope": scope,
             "cells": len(both), "columns": cells_in if i else np.nan,
             "spearman": point[i, 0], "spearman_low": low[i, 0], "spearman_high": high[i, 0],
             "kendall": point[i, 1], "kendall_low": low[i, 1], "kendall_high": high[i, 1],
             "note": note}
        )  # fmt: skip
    return rows
