"""The analysis tables on small made-up inputs (no store): AuFC and the original code's
variant against independent formulas, the missing-input list, the transfer matrix, the
forgetting summary, and every figure drawn from empty tables without a crash."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bertrep.analysis import cells
from bertrep.analysis.cells import matrix, typed
from bertrep.analysis.forgetting import FORGETTING_COLUMNS, forgetting_summary
from bertrep.analysis.profiles import MEAN_CKA_COLUMNS, PROFILE_COLUMNS
from bertrep.analysis.schemas import CORRELATION_COLUMNS, conform
from bertrep.analysis.tables import (
    CELL_COLUMNS,
    K0_COLUMNS,
    SCORE_COLUMNS,
    AufcRule,
    Inputs,
    aufc_tables,
    best_scores,
    transfer_k0,
    transfer_scores,
)
from bertrep.figures import draw_all

L = 12


def inputs() -> Inputs:
    return Inputs([], None, ("sst2", "stsb"), ("biased",), False, [])


def scores(ks, values, *, seed=0, source="base", target="sst2", chance=0.5, best=0.9):
    rows = [
        {"target": target, "source": source, "frozen_layers": k, "seed": seed, "num_layers": L,
         "score": v, "chance": chance, "best": best,
         "norm_score": (v - chance) / (best - chance), "diverged": False,
         "run_id": f"r{seed}k{k}", "source_version": "", "status": cells.OK}
        for k, v in zip(ks, values, strict=True)
    ]  # fmt: skip
    return typed(rows, SCORE_COLUMNS)


def cell(table: pd.DataFrame, variant: str, source: str = "base", target: str = "sst2"):
    """The one row of a cell: every cell of the matrix has one, with or without a number."""
    (row,) = table[(table.variant == variant) & (table.source == source)
                   & (table.target == target)].itertuples()  # fmt: skip
    return row


def test_aufc_and_the_original_codes_variant_on_a_full_grid():
    rng = np.random.default_rng(0)
    y = rng.uniform(0.5, 0.9, L + 1)
    table, per_seed = aufc_tables(scores(range(L + 1), y), AufcRule(), inputs())
    ours = cell(table, "aufc").value
    norm = (y - 0.5) / 0.4
    assert ours == pytest.approx(np.trapezoid(norm, np.arange(L + 1) / L), abs=1e-12)
    # sklearn.metrics.auc(np.arange(0, 1, 1/12), scores) over the original k = 0..11,
    # which are our k = 1..12: the trapezoid over x = 0, 1/12, ..., 11/12
    paper = cell(table, "aufc_paper").value
    assert paper == pytest.approx(np.trapezoid(norm[1:], np.arange(0, 1, 1 / 12)), abs=1e-12)
    perfect, _ = aufc_tables(scores(range(L + 1), [0.9] * (L + 1)), AufcRule(), inputs())
    assert (cell(perfect, "aufc").value, cell(perfect, "aufc_paper").value) == pytest.approx(
        (1.0, 11 / 12)
    )
    # the other cells of the matrix have no runs: a row each, labelled, no number
    others = table[(table.source != "base") | (table.target != "sst2")]
    assert len(others) == 2 * 5 and set(others.status) == {cells.MISSING}
    assert others.value.isna().all()
    assert len(per_seed) == 2


def test_seeds_average_and_gaps_are_listed_never_filled():
    both = pd.concat(
        [scores([0, 6, 12], [0.9, 0.7, 0.5]), scores([0, 6, 12], [0.9, 0.9, 0.9], seed=1)]
    )
    known = inputs()
    table, per_seed = aufc_tables(both, AufcRule(), known)
    aufc = cell(table, "aufc")
    assert aufc.value == pytest.approx((0.5 + 1.0) / 2) and aufc.seeds == 2
    # the original variant needs every k = 1..12: listed missing, not computed from two
    paper = cell(table, "aufc_paper")
    assert np.isnan(paper.value) and paper.status == "missing"
    assert any(m.what == "aufc_paper" and "base->sst2" in m.detail for m in known.missing)
    gappy = pd.concat(
        [scores([0, 6, 12], [0.9, 0.7, 0.5]), scores([0, 12], [0.9, 0.9], seed=1)],
        ignore_index=True,
    )
    gappy.loc[gappy.index[0], "score"] = np.nan  # a finished run without a score
    known = inputs()
    table, _ = aufc_tables(gappy, AufcRule(), known)
    assert table.value.isna().all()
    details = sorted(m.detail for m in known.missing if m.what == "AuFC")
    assert details == [
        "base->sst2 seed 0: no finished run with a score at k = [0]",
        "base->sst2 seed 1: no finished run with a score at k = [6]",
    ]


def test_the_endpoints_rule_and_two_runs_at_one_k():
    known = inputs()
    table, _ = aufc_tables(scores([0, 6], [0.9, 0.7]), AufcRule(), known)
    assert table.value.isna().all() and "needs 0 and L = 12" in known.missing[0].detail
    table, _ = aufc_tables(scores([0, 6], [0.9, 0.7]), AufcRule(require_endpoints=False), inputs())
    # over its own span [0, 1/2]: (1 + 0.5) / 2 * 0.5
    assert cell(table, "aufc").value == pytest.approx(0.375)
    twice = pd.concat([scores([0, 6, 12], [0.9, 0.7, 0.5]), scores([6], [0.8])])
    twice.iloc[-1, twice.columns.get_loc("run_id")] = "other"
    known = inputs()
    assert aufc_tables(twice, AufcRule(), known)[0].value.isna().all()
    assert "runs r0k6, other share a k" in known.missing[0].detail


def test_a_target_below_the_margin_is_not_learned_at_this_budget():
    """best_B is the mean of the k = 0 base runs; SST-2 at 0.55 and 0.62 (mean 0.585)
    beats its chance 0.5 by 0.085: under a 0.1 margin it has no normalized score."""
    from bertrep.analysis.collect import TrainRun

    def run(task, seed, score):
        return TrainRun(f"{task}{seed}", task, "single", "base", 0, seed, "minilm", "minilm",
                        "key", False, 6, score, 0.5)  # fmt: skip

    known = Inputs([run("sst2", 0, 0.55), run("sst2", 1, 0.62), run("stsb", 0, 0.9)], None,
                   ("sst2", "stsb"), ("biased",), False, [])  # fmt: skip
    best = best_scores(known, min_margin=0.1).set_index("task")
    assert best.loc["sst2", "best"] == pytest.approx(0.585)
    assert best.status.to_dict() == {"sst2": cells.BELOW_MARGIN, "stsb": cells.OK}
    assert "sst2: best_B 0.5850 vs chance 0.5000" in known.missing[0].detail
    assert best_scores(known).status.tolist() == [cells.OK, cells.OK]  # no margin: as before


def test_best_b_averages_the_seeds_of_the_targets_own_frozen_grid():
    """A seed trained only as another target's source (sst2 seed 3, needed by a fourth
    stsb seed) joins neither best_B nor the margin decision: 0.55, 0.62, 0.60 (mean 0.59,
    below a 0.1 margin over chance 0.5), not with 0.70 (mean 0.6175, over it); nor the
    target's transfer grid. Where every grid seed diverged, the target is diverged."""
    from bertrep.analysis.collect import TrainRun

    def run(seed, score, k=0, source="base", diverged=False):
        return TrainRun(f"{source}{seed}k{k}", "sst2", "single", source, k, seed, "minilm",
                        "minilm", "key", diverged, 6, score, 0.5)  # fmt: skip

    full = [run(0, 0.55), run(1, 0.62), run(2, 0.60), run(3, 0.70)]
    alone = Inputs(full, None, ("sst2",), ("biased",), False, [])
    assert best_scores(alone, min_margin=0.1).best.item() == pytest.approx(0.6175)
    grid = Inputs([*full, *(run(s, 0.5, k=6) for s in range(3))], None, ("sst2",),
                  ("biased",), False, [])  # fmt: skip
    best = best_scores(grid, min_margin=0.1)
    assert best.best.item() == pytest.approx(0.59) and best.runs.item() == 3
    assert best.status.item() == cells.BELOW_MARGIN
    # nor is it a point of the target's grid: its base k = 0 cell keeps seeds 0..2
    points = transfer_scores(grid, best_scores(grid))
    assert sorted(points[points.frozen_layers == 0].seed) == [0, 1, 2]
    assert points[points.frozen_layers == 0].norm_score.mean() == pytest.approx(1.0)
    # a grid of k = 0 runs from another task's models has the same seeds
    other = Inputs([*full, *(run(s, 0.6, source="stsb") for s in range(3))], None,
                   ("sst2", "stsb"), ("biased",), False, [])  # fmt: skip
    assert best_scores(other).set_index("task").best["sst2"] == pytest.approx(0.59)
    failed = [run(s, 0.5, diverged=True) for s in range(3)]
    lost = Inputs([*failed, run(3, 0.70), *(run(s, 0.5, k=6) for s in range(3))], None,
                  ("sst2",), ("biased",), False, [])  # fmt: skip
    assert best_scores(lost)[["runs", "status"]].values.tolist() == [[0, cells.DIVERGED]]
    assert lost.missing[-1].detail == (
        "sst2: every k=0 run from the pretrained model at its grid seeds [0, 1, 2] diverged"
    )


def test_transfer_matrix_rows_are_sources_base_last_and_missing_cells_stay_empty():
    grid = pd.concat([scores([0], [0.8]), scores([0, 6], [0.7, 0.6], source="stsb")])
    frame = matrix(transfer_k0(inputs(), grid), ("sst2", "stsb"))
    assert list(frame.index) == ["sst2", "stsb", "base"] and list(frame.columns) == ["sst2", "stsb"]
    assert frame.loc["base", "sst2"] == pytest.approx(0.75)
    assert frame.loc["stsb", "sst2"] == pytest.approx(0.5)
    assert frame.isna().sum().sum() == 4


def test_forgetting_summary_counts_only_what_a_sequential_run_forgot_of_a():
    rows = []
    for mode in ("sequential", "shuffled"):
        for role, task, norms in (("A", "sst2", [1.0, 0.6]), ("B", "pos", [0.1, 0.9])):
            for step, v in zip((0, 10), norms, strict=True):
                rows.append({"run_id": mode, "mode": mode, "task_a": "sst2", "task_b": "pos",
                             "seed": 0, "step": step, "scored": role, "task": task,
                             "norm_score": v})  # fmt: skip
    out = forgetting_summary(pd.DataFrame(rows)).set_index(["run_id", "scored"])
    assert out.loc[("sequential", "A"), "forgotten"] == pytest.approx(0.4)
    assert np.isnan(out.loc[("sequential", "B"), "forgotten"])  # learned, not forgotten
    assert out.forgotten.notna().sum() == 1


def test_forgetting_summary_lists_runs_by_their_settings_not_their_run_ids():
    rows = [{"run_id": rid, "mode": "sequential", "task_a": a, "task_b": b, "seed": 0,
             "step": step, "scored": role, "task": a if role == "A" else b, "norm_score": 0.5}
            for rid, a, b in (("z", "pos", "sst2"), ("y", "sst2", "mnli"), ("x", "sst2", "pos"))
            for role in ("B", "A") for step in (0, 10)]  # fmt: skip
    out = forgetting_summary(pd.DataFrame(rows))
    assert list(zip(out.task_a, out.task_b, out.scored, strict=True)) == [
        ("pos", "sst2", "A"),
        ("pos", "sst2", "B"),
        ("sst2", "mnli", "A"),
        ("sst2", "mnli", "B"),
        ("sst2", "pos", "A"),
        ("sst2", "pos", "B"),
    ]


def test_no_figure_is_drawn_of_empty_tables(tmp_path):
    """Tables as the analysis writes them when it found nothing: typed, without rows. A
    figure with nothing to show is not drawn (the summary says what it needs)."""
    empty = {
        "profiles": typed([], PROFILE_COLUMNS),
        "mean_cka": typed([], MEAN_CKA_COLUMNS),
        "transfer_k0": typed([], K0_COLUMNS),
        "aufc": typed([], CELL_COLUMNS),
        "scores": typed([], SCORE_COLUMNS),
        "correlation": typed([], CORRELATION_COLUMNS),
        "forgetting": typed([], FORGETTING_COLUMNS),
        "forgetting_cka": typed([], PROFILE_COLUMNS),
        "runs": pd.DataFrame(columns=["run_id", "seed"]),
    }
    assert draw_all(empty, tmp_path, ("sst2", "stsb")) == []


def test_an_older_runs_tables_redraw_after_conform(tmp_path):
    """Tables a run logged before cell labels (no status column; empty ones without any
    column) are made to today's columns: nothing to show draws nothing, a number draws
    its matrix with the other cells labelled missing."""
    old = {
        name: pd.DataFrame()
        for name in (
            "profiles",
            "mean_cka",
            "transfer_k0",
            "scores",
            "correlation",
            "forgetting",
            "forgetting_cka",
        )
    }
    old["runs"] = pd.DataFrame(columns=["run_id", "seed"])
    old["aufc"] = pd.DataFrame(columns=["source", "target", "variant", "value", "seeds"])
    assert draw_all(conform(old), tmp_path, ("sst2", "stsb")) == []
    old["aufc"] = pd.DataFrame([{"source": "base", "target": "sst2", "variant": "aufc",
                                 "value": 0.7, "seeds": 2}])  # fmt: skip
    drawn = draw_all(conform(old), tmp_path, ("sst2", "stsb"))
    assert {p.name for p in drawn} == {"aufc.png", "aufc.pdf"}
    assert conform(old)["aufc"].status.tolist() == [""]  # logged before labels: says nothing


def test_a_forgetting_score_panel_says_when_a_task_has_no_normalized_score():
    """MNLI below the margin: its line is empty, and its legend entry says why."""
    import matplotlib.pyplot as plt

    from bertrep.figures.forgetting import _score_panel

    rows = [{"run_id": "r", "mode": "sequential", "task_a": "sst2", "task_b": "mnli",
             "scored": role, "task": task, "fraction": f, "norm_score": value}
            for f in (0.0, 1.0)
            for role, task, value in (("A", "sst2", 1.0 - f), ("B", "mnli", np.nan))]  # fmt: skip
    fig, ax = plt.subplots()
    _score_panel(ax, pd.DataFrame(rows), "r")
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    plt.close(fig)
    assert labels == ["SST-2 (old task A)", "MNLI (new task B: no normalized score)"]
