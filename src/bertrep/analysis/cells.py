"""What a cell of the analysis holds when it holds no plain number, and tables whose
columns keep their types whatever they hold.

    status = target_status(best=0.50, chance=0.50)          # "at chance"
    frame = typed(rows, {"value": FLOAT, "near_floor": FLAG, "status": TEXT})

Every table with cells (best_B per task, scores, AuFC, the k = 0 transfer matrix,
Mean-CKA) has a `status` column with one label of `LABELS`; every matrix, figure and
summary line shows the same label where a number is missing or unreliable, so an
outcome of training is never a crash and never a silently dropped cell. The labels'
meanings are in docs/definitions.md ("Cell labels").
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import numpy as np
import pandas as pd

from bertrep.tracking import BASE_SOURCE

OK = "ok"  # a number, with an interval where the table has intervals
MISSING = "missing"  # nothing to compute it from: no runs, no tables, no such k
AT_CHANCE = "at chance"  # the target's full fine-tuning scored exactly chance: norm undefined
NOT_LEARNED = "not learned"  # ... scored below chance: a normalized score would be inverted
BELOW_MARGIN = "not learned at this budget"  # above chance by less than the spec's min_margin
DIVERGED = "diverged"  # every run it needs diverged (tagged, or not above chance)
SINGLE_SEED = "single seed"  # one seed: no interval (AuFC), no pair of seeds (Mean-CKA)
UNDEFINED = "undefined"  # inputs exist, the formula does not apply (a constant layer's CKA)

# what gives a target its numbers where its own label says it was not learned (the
# missing table's remedy: a sweep of the same spec would train nothing more)
MORE_UPDATES = ("more updates for the target's full fine-tuning (max_steps in the sweep "
                "specs), or, where it beat chance by less than aufc.min_margin, a lower "
                "margin in the analysis spec")  # fmt: skip
TARGET_LABELS = (AT_CHANCE, NOT_LEARNED, BELOW_MARGIN)  # its runs finished, its scores say
LABELS = (OK, MISSING, AT_CHANCE, NOT_LEARNED, BELOW_MARGIN, DIVERGED, SINGLE_SEED, UNDEFINED)

MEANING = {
    OK: "computed",
    MISSING: "no runs or tables to compute it from",
    AT_CHANCE: "the target's full fine-tuning scored exactly chance (best_B = chance): "
    "normalized scores are undefined",
    NOT_LEARNED: "the target's full fine-tuning scored below chance: normalized scores "
    "would be inverted, so none is given",
    BELOW_MARGIN: "the target's full fine-tuning beat chance by less than the analysis's "
    "aufc.min_margin: its normalized scores would be mostly noise, so none is given "
    "(more updates, max_steps, or a lower margin would give them)",
    DIVERGED: "every run it needs diverged",
    SINGLE_SEED: "one seed only: no interval (AuFC), no pair of seeds (Mean-CKA)",
    UNDEFINED: "the inputs exist but the formula does not apply (e.g. a constant layer)",
}

# Column kinds of `typed`: pandas dtypes that hold "nothing" without turning to objects.
# TEXT holds "" for nothing, so comparisons never meet a missing value.
FLOAT, INT, FLAG, TEXT = "float64", "Int64", "boolean", "text"


def remedy_kind(status: str) -> str:
    """The kind of sweep whose command a missing cell of this status gives as its remedy:
    none ("": MORE_UPDATES) where the target's label says it was not learned."""
    return "" if status in TARGET_LABELS else "aufc"


def target_status(best: float, chance: float, margin: float = 0.0) -> str:
    """Whether a target's normalized scores exist: best_B against chance_B, and against
    chance_B + margin (in the metric's units) when a margin is asked for."""
    if not (math.isfinite(best) and math.isfinite(chance)):
        return MISSING
    if math.isclose(best, chance, rel_tol=0.0, abs_tol=1e-12):
        return AT_CHANCE
    if best < chance:
        return NOT_LEARNED
    return BELOW_MARGIN if best - chance < margin - 1e-12 else OK


def typed(rows: Iterable[Mapping] | pd.DataFrame, columns: Mapping[str, str]) -> pd.DataFrame:
    """A frame of `rows` with at least `columns` (name -> FLOAT, INT, FLAG or TEXT), each
    of its kind even when the frame is empty or a column holds only NaN or None (an
    absent column is all missing); other columns are kept as they are, after these."""
    frame = rows.copy() if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))
    for name, kind in columns.items():
        values = frame[name] if name in frame else pd.Series([None] * len(frame), dtype=object)
        frame[name] = _cast(values, kind)
    extra = [c for c in frame.columns if c not in columns]
    return frame[[*columns, *extra]].reset_index(drop=True)


def _cast(values: pd.Series, kind: str) -> pd.Series:
    if kind == FLOAT:
        return pd.to_numeric(values.astype(object).where(values.notna(), np.nan)).astype(FLOAT)
    if kind == INT:
        return pd.to_numeric(values.astype(object).where(values.notna(), None)).astype(INT)
    if kind == FLAG:
        known = values.astype(object).where(values.notna(), None)
        return known.map(lambda v: None if v is None else bool(v)).astype(FLAG)
    return values.astype(object).where(values.notna(), "").map(str).astype(object)


def why_empty(label: str) -> str:
    """What a cell without a number shows: its label, "missing" where the label says
    nothing (ok, or none: a table logged before labels existed)."""
    return MISSING if label in (OK, "") else label


def has_values(frame: pd.DataFrame) -> bool:
    """Whether a matrix (or a column of numbers) holds any finite number."""
    return bool(np.isfinite(frame.to_numpy(dtype=float)).any())


def matrix(cells_: pd.DataFrame, tasks: tuple[str, ...], **where) -> pd.DataFrame:
    """(sources, targets) frame of a cell table: rows the tasks then base, NaN if missing."""
    return _grid(cells_, tasks, "value", np.nan, where).astype(float)


def labels(cells_: pd.DataFrame, tasks: tuple[str, ...], **where) -> pd.DataFrame:
    """The `status` of each cell of `matrix(cells_, tasks, **where)`: "missing" where the
    table has no row."""
    return _grid(cells_, tasks, "status", MISSING, where)


def _grid(cells_: pd.DataFrame, tasks, column: str, empty, where: dict) -> pd.DataFrame:
    rows = [*tasks, BASE_SOURCE]
    frame = pd.DataFrame(empty, index=rows, columns=list(tasks), dtype=object)
    if cells_.empty or column not in cells_:
        return frame
    sel = cells_
    for k, v in where.items():
        sel = sel[sel[k] == v]
    for source, target, value in zip(sel.source, sel.target, sel[column], strict=True):
        if source in frame.index and target in frame.columns:
            frame.loc[source, target] = value
    return frame
