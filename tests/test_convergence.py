"""The convergence check of head-only trials: grid runs against the same runs trained
longer, on small hand-made score tables with known answers."""

from __future__ import annotations

import pandas as pd
import pytest

from bertrep.analysis import cells
from bertrep.analysis.cells import typed
from bertrep.analysis.convergence import convergence_table, split_longer, summary_lines
from bertrep.analysis.tables import SCORE_COLUMNS


def rows(target, source, k, steps, norms, status=cells.OK, first_seed=0, diverged=False):
    """Runs whose raw score is 0.5 + 0.4 * norm (chance 0.5, best 0.9); a target with a
    label instead of normalized scores keeps only the raw ones."""
    return [
        {"target": target, "source": source, "frozen_layers": k, "seed": first_seed + i,
         "max_steps": steps, "num_layers": 6, "score": 0.5 + 0.4 * v,
         "norm_score": v if status == cells.OK else float("nan"), "status": status,
         "diverged": diverged, "run_id": f"{target}-{source}-{k}-{steps}-{first_seed + i}"}
        for i, v in enumerate(norms)
    ]  # fmt: skip


@pytest.fixture
def scores() -> pd.DataFrame:
    found = [
        *rows("sst2", "base", 0, 100, [1.0, 0.9, 1.1]),
        *rows("sst2", "base", 6, 500, [0.2, 0.3, 0.4]),  # sd 0.1
        *rows("sst2", "base", 6, 1000, [0.25, 0.35, 0.45]),  # moved 0.05 < 0.1
        *rows("sst2", "pos", 6, 500, [0.1, 0.1, 0.1]),  # sd 0
        *rows("sst2", "pos", 6, 1000, [0.5, 0.5, 0.5]),  # moved 0.4
        *rows("pos", "base", 6, 500, [0.6, 0.8]),  # sd 0.1414; no longer run
        *rows("pos", "sst2", 6, 500, [0.5]),  # one seed
        *rows("pos", "sst2", 6, 1000, [0.9]),
        *rows("stsb", "base", 6, 500, [0.0, 0.0], status=cells.AT_CHANCE),
        # raw 0.54, 0.58, 0.62 (sd 0.04); seed 0 again, longer: 0.56 (moved 0.02)
        *rows("mnli", "base", 6, 500, [0.1, 0.2, 0.3], status=cells.BELOW_MARGIN),
        *rows("mnli", "base", 6, 1000, [0.15], status=cells.BELOW_MARGIN),
    ]
    return typed(found, SCORE_COLUMNS)


def test_the_longer_runs_leave_the_grid(scores):
    grid, longer = split_longer(scores)
    assert len(grid) + len(longer) == len(scores)
    assert set(longer.max_steps) == {1000} and len(longer) == 8
    assert not grid.duplicated(["target", "source", "frozen_layers", "seed"]).any()
    assert set(grid[grid.frozen_layers == 6].max_steps) == {500}


def test_each_cell_is_converged_where_the_mean_moved_less_than_the_seed_sd(scores):
    table = convergence_table(*split_longer(scores)).set_index(["target", "source"])
    sst2 = table.loc[("sst2", "base")]
    assert sst2.norm_score == pytest.approx(0.3) and sst2.longer_norm_score == pytest.approx(0.35)
    assert sst2.move == pytest.approx(0.05) and sst2.seed_sd == pytest.approx(0.1)
    assert sst2.converged == True and sst2.status == cells.OK  # noqa: E712
    assert (sst2.steps, sst2.longer_steps, sst2.seeds) == (500, 1000, 3)
    pos_source = table.loc[("sst2", "pos")]
    assert pos_source.move == pytest.approx(0.4) and pos_source.seed_sd == pytest.approx(0.0)
    assert pos_source.converged == False  # noqa: E712
    assert table.loc[("pos", "base")].status == cells.MISSING
    assert table.loc[("pos", "base")].seed_sd == pytest.approx(0.1414, abs=1e-4)
    assert table.loc[("pos", "sst2")].status == cells.SINGLE_SEED
    assert pd.isna(table.loc[("pos", "sst2")].converged)
    assert table.loc[("stsb", "base")].status == cells.AT_CHANCE
    assert sst2.scale == "normalized" and sst2.score == pytest.approx(0.62)
    # no normalized scores: judged on raw ones, seed 0's move against the grid's sd
    mnli = table.loc[("mnli", "base")]
    assert mnli.scale == "raw" and mnli.status == cells.BELOW_MARGIN
    assert mnli.move == pytest.approx(0.02) and mnli.seed_sd == pytest.approx(0.04)
    assert mnli.converged == True and pd.isna(mnli.norm_score)  # noqa: E712
    assert mnli.longer_score == pytest.approx(0.56)
    assert len(table) == 6  # k = 0 runs are not checked


def test_the_summary_says_per_target_which_sources_did_not_converge(scores):
    text = "\n".join(summary_lines(convergence_table(*split_longer(scores))))
    assert "- sst2: not converged from pos" in text
    assert "| sst2 | base | 500 | 0.300 | 0.350 (1000) | 0.050 | 0.100 | yes |" in text
    assert "- pos: not checked: base, sst2" in text  # no longer run; one seed
    assert "- stsb: not checked: base" in text
    assert "| stsb | base | 500 | 0.500 |  |  | 0.000 | no longer run |" in text
    assert "| pos | sst2 | 500 | 0.500 | 0.900 (1000) | 0.400 |  | one seed |" in text
    assert ("| mnli | base | 500 | 0.580 | 0.560 (1000) | 0.020 | 0.040 | yes (raw scores: "
            "not learned at this budget) |") in text  # fmt: skip
    assert "- mnli: every source checked converged" in text


def test_no_runs_no_check():
    empty = typed([], SCORE_COLUMNS)
    grid, longer = split_longer(empty)
    assert convergence_table(grid, longer).empty
    assert summary_lines(convergence_table(grid, longer)) == []


def test_without_longer_runs_nothing_is_printed_and_k_below_l_stays_in_the_grid():
    found = typed([*rows("sst2", "base", 6, 500, [0.2, 0.3]),
                   *rows("sst2", "base", 3, 100, [0.5, 0.6]),
                   *rows("sst2", "base", 3, 200, [0.7, 0.8])], SCORE_COLUMNS)  # fmt: skip
    grid, longer = split_longer(found)
    assert longer.empty and len(grid) == 6  # two runs of a k = 3 cell: AuFC's to judge
    table = convergence_table(grid, longer)
    assert list(table.status) == [cells.MISSING] and summary_lines(table) == []


def test_a_seed_without_a_score_is_left_out_not_the_cell():
    """STS-B's Pearson is NaN for a constant prediction: that seed drops out of the mean
    and deviation (0.2 and 0.4: sd 0.1414), seed 0's longer run still judges the cell."""
    found = typed([*rows("stsb", "base", 6, 500, [0.2, float("nan"), 0.4]),
                   *rows("stsb", "base", 6, 1000, [0.25])], SCORE_COLUMNS)  # fmt: skip
    (row,) = convergence_table(*split_longer(found)).itertuples()
    assert row.seed_sd == pytest.approx(0.1414, abs=1e-4) and row.move == pytest.approx(0.05)
    assert row.converged == True and row.status == cells.OK  # noqa: E712


def test_a_cell_whose_every_seed_diverged_passes_but_is_named():
    """A head stuck on one class on every seed scores the same trained longer: it passes
    the check (move 0), and the table and the printed check say every seed diverged. One
    diverged seed of three is not named."""
    found = typed([*rows("sst2", "stsb", 6, 500, [0.0, 0.0, 0.0], diverged=True),
                   *rows("sst2", "stsb", 6, 1000, [0.0, 0.0, 0.0], diverged=True),
                   *rows("sst2", "pos", 6, 500, [0.0, 0.5, 0.6]),
                   *rows("sst2", "pos", 6, 1000, [0.0, 0.5, 0.6])], SCORE_COLUMNS)  # fmt: skip
    found.loc[found.run_id == "sst2-pos-6-500-0", "diverged"] = True
    table = convergence_table(*split_longer(found)).set_index("source")
    stuck = table.loc["stsb"]
    assert stuck.diverged_seeds == 3 and stuck.converged == True  # noqa: E712
    assert table.loc["pos"].diverged_seeds == 1 and table.loc["pos"].move == 0.0
    text = "\n".join(summary_lines(table.reset_index()))
    assert (
        "| sst2 | stsb | 500 | 0.000 | 0.000 (1000) | 0.000 | 0.000 | yes, every seed diverged |"
        in text
    )
    assert "| sst2 | pos | 500 | 0.367 | 0.367 (1000) | 0.000 | 0.321 | yes |" in text
    assert "- sst2: every source checked converged; every seed diverged from stsb" in text


def test_a_seed_that_stopped_before_its_cap_is_its_own_longer_run():
    """Seeds that early-stopped before the cap (at a constant rate) have no longer run: a
    larger cap would repeat them, so each counts as its own (move 0). A seed with a real
    longer run keeps it. Seeds of their own alone judge a cell only where every seed is
    one: a seed that used its whole cap without a longer run leaves it unchecked."""
    found = typed([*rows("pos", "base", 6, 500, [0.6, 0.7, 0.8]),
                   *rows("pos", "base", 6, 1000, [1.0]),
                   *rows("pos", "mnli", 6, 500, [0.2, 0.4]),
                   *rows("pos", "sst2", 6, 500, [0.5, 0.6])], SCORE_COLUMNS)  # fmt: skip
    found["stopped_early"] = found.max_steps == 500
    found.loc[found.run_id == "pos-mnli-6-500-1", "stopped_early"] = False  # used its cap
    table = convergence_table(*split_longer(found)).set_index("source")
    base = table.loc["base"]  # seed 0: 0.6 -> 1.0; seeds 1 and 2 their own: 0.7, 0.8
    assert base.stopped_early == 2 and base.longer_steps == 1000
    assert base.longer_norm_score == pytest.approx(2.5 / 3) and base.move == pytest.approx(0.4 / 3)
    assert base.converged == False  # noqa: E712  (0.133 is not below the sd, 0.1)
    assert base.run_ids.split(",") == [f"pos-base-6-{s}" for s in
                                       ("500-0", "500-1", "500-2", "1000-0")]  # fmt: skip
    sst2 = table.loc["sst2"]  # both seeds their own
    assert sst2.stopped_early == 2 and pd.isna(sst2.longer_steps) and sst2.move == 0.0
    assert sst2.converged == True  # noqa: E712
    mnli = table.loc["mnli"]  # seed 0 its own, seed 1 unchecked: not judged on seed 0
    assert mnli.status == cells.MISSING and pd.isna(mnli.converged)
    text = "\n".join(summary_lines(table.reset_index()))
    row = "| pos | base | 500 | 0.700 | 0.833 (1000; 2 stopped early) | 0.133 | 0.100 | **no** |"
    assert row in text
    assert "| pos | sst2 | 500 | 0.550 | 0.550 (2 stopped early) | 0.000 | 0.071 | yes |" in text
    assert "| pos | mnli | 500 | 0.300 |  |  | 0.141 | no longer run |" in text
    assert "- pos: not converged from base; not checked: mnli" in text
    assert "stopped before its cap" in text
