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
A seed that stopped before its cap (on its held-out score, or at a non-finite loss) at
a constant rate without warm-up has no longer run: a larger cap would repeat it update
for update, so it is its own (`stopped_early` counts them). Such seeds alone judge a
cell only where every seed is one: else it is missing a longer run.
The table counts the seeds tagged diverged (a non-finite loss, or a final score within
the run's diverge_margin of chance: a head stuck on one class is one case). A cell whose
every seed diverged passes without having learned, and the printed check names it.
A target without normalized scores (at chance, not learned, below the margin) is
checked on its raw scores: the normalization is one affine map per target, so the
verdict is the same in either unit.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from bertrep.analysis import cells
from bertrep.analysis.cells import FLAG, FLOAT, INT, TEXT, typed

CELL = ["target", "source", "frozen_layers", "seed"]

# norm_score, longer_norm_score: normalized where the target has them (else NaN); score,
# longer_score: raw; move and seed_sd are in the unit `scale` names (normalized | raw)
CONVERGENCE_COLUMNS = {"target": TEXT, "source": TEXT, "frozen_layers": INT, "seeds": INT,
                       "steps": INT, "longer_steps": INT, "norm_score": FLOAT,
                       "longer_norm_score": FLOAT, "move": FLOAT, "seed_sd": FLOAT,
                       "converged": FLAG, "run_ids": TEXT, "status": TEXT, "score": FLOAT,
                       "longer_score": FLOAT, "scale": TEXT,
                       "diverged_seeds": INT, "stopped_early": INT}  # fmt: skip


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
    """One row per (target, source) with k = L grid runs: the mean score over its seeds,
    the mean of the longer runs, how far that moved from the mean of the same seeds' grid
    runs, the grid's seed standard deviation and whether the move is smaller; normalized
    scores where the target has them, raw ones where it has a label instead (`scale`).
    Seeds without a finite score are left out; a seed that stopped early is its own
    longer run. status: the target's (ok, or its label); for a target with normalized
    scores, missing where no seed has a finite longer run (of its own only where every
    seed stopped early) and single seed where one grid seed has a score (no deviation,
    no verdict)."""
    rows = []
    full = scores[scores.frozen_layers == scores.num_layers]
    for (target, source), grid in full.groupby(["target", "source"], sort=True):
        status = grid.status.iloc[0]
        scale, unit = ("normalized", "norm_score") if status == cells.OK else ("raw", "score")
        row = {"target": target, "source": source, "frozen_layers": int(grid.num_layers.iloc[0]),
               "steps": int(grid.max_steps.min()), "seeds": len(grid), "scale": scale,
               "norm_score": grid.norm_score.mean(), "score": grid.score.mean(),
               "status": status,
               "diverged_seeds": int(grid.diverged.fillna(False).sum())}  # fmt: skip
        mine = longer[(longer.target == target) & (longer.source == source)
                      & (longer.frozen_layers == row["frozen_layers"])]  # fmt: skip
        mine = mine[mine.max_steps == mine.max_steps.min()] if len(mine) else mine
        grid = grid[np.isfinite(grid[unit].to_numpy(dtype=float))]
        mine = mine[np.isfinite(mine[unit].to_numpy(dtype=float))]
        paired = _paired(grid, mine)
        real = paired[paired.run_id != paired.run_id_longer]
        values = grid[unit].to_numpy(dtype=float)
        row["seed_sd"] = float(np.std(values, ddof=1)) if len(values) > 1 else np.nan
        if not len(real) and len(paired) < len(grid):  # only seeds that cannot move: none
            paired = paired.iloc[:0]
        if not len(paired):
            rows.append(row | {"status": cells.MISSING if status == cells.OK else status})
            continue
        move = abs(float(paired[f"{unit}_longer"].mean()) - float(paired[unit].mean()))
        sd = row["seed_sd"]
        rows.append(
            row
            | {
                "longer_steps": int(real.max_steps_longer.iloc[0]) if len(real) else None,
                "stopped_early": len(paired) - len(real),
                "longer_norm_score": float(paired.norm_score_longer.mean()),
                "longer_score": float(paired.score_longer.mean()),
                "move": move,
                "converged": bool(move < sd or move == 0) if np.isfinite(sd) else None,
                "run_ids": ",".join(dict.fromkeys([*paired.run_id, *paired.run_id_longer])),
                "status": status if np.isfinite(sd) else cells.SINGLE_SEED,
            }
        )
    return typed(rows, CONVERGENCE_COLUMNS)


def _paired(grid: pd.DataFrame, longer: pd.DataFrame) -> pd.DataFrame:
    """Each seed's grid run beside its longer run (columns `<name>_longer`); a seed
    without one that stopped before its cap, where a larger cap repeats it update for
    update (`stopped_early`), beside itself."""
    own = grid[grid.stopped_early.fillna(False).astype(bool) & ~grid.seed.isin(longer.seed)]
    pairs = [grid.merge(longer, on="seed", suffixes=("", "_longer")),
             own.merge(own, on="seed", suffixes=("", "_longer"))]  # fmt: skip
    found = [p for p in pairs if len(p)]
    return pd.concat(found) if found else pairs[0]


def summary_lines(table: pd.DataFrame) -> list[str]:
    """The printed check: per target, whether every source's head-only runs converged
    (none where no cell has a longer run: nothing was checked)."""
    if not len(table) or not _checked(table).any():
        return []
    lines = ["## Did the head-only trials converge?", "",
             "k = L runs against the same seeds trained longer: converged where the mean "
             "normalized score moved by less than its standard deviation over seeds (raw "
             "scores where the target has no normalized ones: the verdict is the same). "
             "score: the mean over every seed; longer: over the seeds trained longer and "
             "those that are their own longer run; moved: from those seeds' own scores. "
             "A seed that stopped before its cap (on its held-out score, or at a "
             "non-finite loss) at a constant rate without warm-up is its own longer run: "
             "a larger cap repeats it update for update, so it is not trained again "
             "(`stopped early`). Where every seed diverged (its loss not finite, or its "
             "score at chance), the verdict says so: such a cell passes without having "
             "learned.", "",
             "| target | source | updates | score | longer | moved | seed sd | converged |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in table.itertuples():
        raw = r.scale == "raw"
        verdict = {True: "yes", False: "**no**"}.get(r.converged, "one seed")
        stopped = 0 if pd.isna(r.stopped_early) else int(r.stopped_early)
        if pd.isna(r.longer_steps) and not stopped:
            verdict = "no longer run"
        elif raw and not pd.isna(r.converged):
            verdict += f" (raw scores: {r.status})"
        if r.seeds and (0 if pd.isna(r.diverged_seeds) else r.diverged_seeds) == r.seeds:
            verdict += ", every seed diverged"
        value, later = (r.score, r.longer_score) if raw else (r.norm_score, r.longer_norm_score)
        how = [] if pd.isna(r.longer_steps) else [str(r.longer_steps)]
        how += [f"{stopped} stopped early"] if stopped else []
        longer = f"{_num(later)} ({'; '.join(how)})" if how else ""
        lines.append(f"| {r.target} | {r.source} | {r.steps} | {_num(value)} | {longer} "
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
        every = (group.diverged_seeds.fillna(0) == group.seeds) & (group.seeds > 0)
        stuck = ", ".join(group.source[every])
        text += [f"every seed diverged from {stuck}"] if stuck else []
        lines.append(f"- {target}: " + "; ".join(t for t in text if t))
    return [*lines, ""]


def _num(value) -> str:
    return "" if pd.isna(value) else f"{value:.3f}"


def _checked(table: pd.DataFrame) -> pd.Series:
    """Rows with a longer run for some seed, or a seed that is its own."""
    return table.longer_steps.notna() | (table.stopped_early.fillna(0) > 0)
