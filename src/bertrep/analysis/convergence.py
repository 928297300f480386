"""Whether the head-only trials converged: the k = L runs of the transfer grid against
the same runs trained longer.

A run that repeats a cell of the grid (target, source, k, seed) with more updates than
the grid's run of that cell is a convergence check, not another point of the grid:

    scores, longer = split_longer(transfer_scores(inputs, best))
    table = convergence_table(scores, longer)

For each target and source, the check compares the mean normalized score over seeds of
the k = L runs with that of their longer runs (twice the updates in the shipped
sweeps): the cell converged when the mean moved by less than the standard deviation of
the grid runs' scores over seeds (docs/definitions.md, "Convergence of frozen trials").
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from bertrep.analysis import cells
from bertrep.analysis.cells import FLAG, FLOAT, INT, TEXT, typed

CELL = ["target", "source", "frozen_layers", "seed"]

CONVERGENCE_COLUMNS = {"target": TEXT, "source": TEXT, "frozen_layers": INT, "seeds": INT,
                       "steps": INT, "longer_steps": INT, "norm_score": FLOAT,
                       "longer_norm_score": FLOAT, "move": FLOAT, "seed_sd": FLOAT,
                       "converged": FLAG, "run_ids": TEXT, "status": TEXT}  # fmt: skip


def split_longer(scores: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the grid, the longer runs): of the k = L runs of one cell, those with the fewest
    updates are the grid's; any with more are convergence checks. (Two runs of a cell
    at k < L stay in the grid, where AuFC lists them as ambiguous.)"""
    if not len(scores):
        return scores, scores.iloc[:0]
    least = scores.groupby(CELL, dropna=False).max_steps.transform("min")
    longer = (scores.max_steps > least) & (scores.frozen_layers == scores.num_layers)
    return scores[~longer].reset_index(drop=True), scores[longer].reset_index(drop=True)


def convergence_table(scores: pd.DataFrame, longer: pd.DataFrame) -> pd.DataFrame:
    """One row per (target, source) with k = L grid runs: the mean normalized score over
    its seeds, the mean of the longer runs, how far that moved from the mean of the same
    seeds' grid runs, the grid's seed standard deviation and whether the move is smaller
    (status: ok; missing where no longer run exists; single seed; the target's label
    where no normalized score does)."""
    rows = []
    full = scores[scores.frozen_layers == scores.num_layers]
    for (target, source), grid in full.groupby(["target", "source"], sort=True):
        row = {"target": target, "source": source, "frozen_layers": int(grid.num_layers.iloc[0]),
               "steps": int(grid.max_steps.min()), "seeds": len(grid)}  # fmt: skip
        status = grid.status.iloc[0]
        if status != cells.OK:
            rows.append(row | {"status": status})
            continue
        mine = longer[(longer.target == target) & (longer.source == source)
                      & (longer.frozen_layers == row["frozen_layers"])]  # fmt: skip
        mine = mine[mine.max_steps == mine.max_steps.min()] if len(mine) else mine
        paired = grid.merge(mine, on="seed", suffixes=("", "_longer"))
        row["norm_score"] = float(grid.norm_score.mean())
        row["seed_sd"] = float(grid.norm_score.std(ddof=1)) if len(grid) > 1 else np.nan
        if not len(paired):
            rows.append(row | {"status": cells.MISSING})
            continue
        move = abs(float(paired.norm_score_longer.mean()) - float(paired.norm_score.mean()))
        sd = row["seed_sd"]
        rows.append(
            row
            | {
                "longer_steps": int(paired.max_steps_longer.iloc[0]),
                "longer_norm_score": float(paired.norm_score_longer.mean()),
                "move": move,
                "converged": bool(move < sd or move == 0) if np.isfinite(sd) else None,
                "run_ids": ",".join([*paired.run_id, *paired.run_id_longer]),
                "status": cells.OK if np.isfinite(sd) else cells.SINGLE_SEED,
            }
        )
    return typed(rows, CONVERGENCE_COLUMNS)


def summary_lines(table: pd.DataFrame) -> list[str]:
    """The printed check: per target, whether every source's head-only runs converged
    (none where no cell has a longer run: nothing was checked)."""
    if not len(table) or table.longer_steps.isna().all():
        return []
    lines = ["## Did the head-only trials converge?", "",
             "k = L runs against the same seeds trained longer: converged where the mean "
             "normalized score moved by less than its standard deviation over seeds.", "",
             "| target | source | updates | norm score | longer | moved | seed sd | converged |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in table.itertuples():
        if r.status not in (cells.OK, cells.SINGLE_SEED):
            verdict = r.status
        else:
            verdict = {True: "yes", False: "**no**"}.get(r.converged, "no interval")
        longer = "" if pd.isna(r.longer_steps) else f"{r.longer_norm_score:.3f} ({r.longer_steps})"
        lines.append(f"| {r.target} | {r.source} | {r.steps} | {_num(r.norm_score)} | {longer} "
                     f"| {_num(r.move)} | {_num(r.seed_sd)} | {verdict} |")  # fmt: skip
    lines.append("")
    for target, group in table.groupby("target", sort=True):
        verdicts = group.converged.map(lambda v: None if pd.isna(v) else bool(v))
        failed = ", ".join(group.source[verdicts == False])  # noqa: E712
        unchecked = ", ".join(group.source[verdicts.isna()])
        checked = len(group) - int(verdicts.isna().sum())
        text = [f"not converged from {failed}" if failed else
                "every source checked converged" if checked else ""]  # fmt: skip
        text += [f"not checked: {unchecked}"] if unchecked else []
        lines.append(f"- {target}: " + "; ".join(t for t in text if t))
    return [*lines, ""]


def _num(value) -> str:
    return "" if pd.isna(value) else f"{value:.3f}"
