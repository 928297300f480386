"""The analysis's CKA tables, one row per number: profiles of each task, the Mean-CKA
matrix (the forgetting series are `bertrep.analysis.forgetting`'s), computed from
activation tables through the store's download cache.

    rows = task_profiles(inputs)                 # identity, two seeds, failed run
    cells, profiles = mean_cka_tables(inputs)

Every row carries the run ids, probe digest, estimator, n and widths it came from.
Two tables are compared only after `activations.check_comparable`.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from bertrep.analysis import cells
from bertrep.analysis.cells import FLAG, FLOAT, INT, TEXT, typed
from bertrep.analysis.collect import MissingInput, TrainRun
from bertrep.analysis.intervals import Band, mean_cka_interval
from bertrep.analysis.tables import BASE, Inputs, Missing
from bertrep.data import activations
from bertrep.maths import transfer
from bertrep.maths.cka import cka_profiles


@lru_cache(maxsize=16)
def _states(path: Path, hidden: tuple[int, ...]) -> np.ndarray:
    return activations.read_states(path, list(hidden)).astype(np.float32)


# Mean-CKA is defined over blocks 1..L whatever the profiles show (docs/definitions.md).
BLOCKS_ONLY = ("cross", "self")


def _hidden(inputs: Inputs, run: TrainRun, kind: str) -> tuple[int, ...]:
    first = 0 if inputs.embeddings and kind not in BLOCKS_ONLY else 1
    return tuple(range(first, run.num_layers + 1))


def profile_rows(
    inputs: Inputs,
    kind: str,
    probe: str,
    x: TrainRun,
    y: TrainRun,
    *,
    step_x: int | None = None,
    step_y: int | None = None,
    **extra,
) -> Iterator[dict]:
    """Rows of the CKA profile of run x's hidden states (rows) against run y's (columns)
    on `probe`'s probe set, one per (estimator, h_x, h_y)."""
    path_x = inputs.store.activations(x, probe, step_x)
    path_y = inputs.store.activations(y, probe, step_y)
    try:
        activations.check_comparable(path_x, path_y)
    except activations.TableError as error:
        raise activations.TableError(
            f"{x.label} ({x.run_id}) and {y.label} ({y.run_id}) on the {probe} probe set "
            f"cannot be compared: {error}"
        ) from None
    hx, hy = _hidden(inputs, x, kind), _hidden(inputs, y, kind)
    sx, sy = _states(path_x, hx), _states(path_y, hy)
    meta = activations.read_meta(path_x)
    profiles = cka_profiles(sx, sy, inputs.estimators)
    bands = {}
    if inputs.intervals is not None and kind in BOOTSTRAPPED and "biased" in profiles:
        key = profile_key(probe, x.run_id, y.run_id, _step(path_x), _step(path_y), hx, hy)
        bands["biased"] = inputs.intervals.profile(
            key, (path_x, path_y), (hx, hy), (sx, sy), profiles["biased"]
        )
    common = {"kind": kind, "probe_task": probe, "probe_digest": meta["probe_digest"],
              "n": sx.shape[1], "width_x": sx.shape[2], "width_y": sy.shape[2],
              "run_x": x.run_id, "label_x": x.label, "run_y": y.run_id, "label_y": y.label,
              "step_x": _step(path_x), "step_y": _step(path_y)}  # fmt: skip
    for estimator, profile in profiles.items():
        band = bands.get(estimator) or _no_band(estimator, profile.shape)
        for (i, a), (j, b) in itertools.product(enumerate(hx), enumerate(hy)):
            cell = {"estimator": estimator, "hidden_x": a, "hidden_y": b,
                    "cka": float(profile[i, j])}  # fmt: skip
            yield common | cell | _band_cell(band, i, j) | extra


def _band_cell(band: Band, i: int, j: int) -> dict:
    """A profile cell's interval columns; near_floor unknown (None) without an interval,
    never a silent "no"."""
    low, floor = band.low[i, j], band.floor[i, j]
    return {"ci_low": float(low), "ci_high": float(band.high[i, j]),
            "ci_replicates": int(band.kept[i, j]), "floor": float(floor),
            "near_floor": bool(low <= floor) if np.isfinite(low) else None}  # fmt: skip


PROFILE_COLUMNS = {
    "kind": TEXT, "probe_task": TEXT, "probe_digest": TEXT, "estimator": TEXT, "n": INT,
    "width_x": INT, "width_y": INT, "run_x": TEXT, "label_x": TEXT, "run_y": TEXT,
    "label_y": TEXT, "step_x": INT, "step_y": INT, "hidden_x": INT, "hidden_y": INT,
    "cka": FLOAT, "ci_low": FLOAT, "ci_high": FLOAT, "ci_replicates": INT, "floor": FLOAT,
    "near_floor": FLAG, "source": TEXT, "target": TEXT,
}  # fmt: skip


def profile_table(rows: list[dict]) -> pd.DataFrame:
    """Profile rows (of `profile_rows`) as a table of PROFILE_COLUMNS, then their extras."""
    return typed(rows, PROFILE_COLUMNS)


# Profiles with intervals: those behind the task profiles and the Mean-CKA cells (the
# forgetting series get none: their many checkpoints would double the stage's time).
BOOTSTRAPPED = ("identity", "seeds", "diverged", "self", "cross")


def profile_key(probe, run_x, run_y, step_x, step_y, hidden_x, hidden_y) -> tuple:
    """What names one profile's replicates: probe task, both runs and steps, and the
    hidden states of each side (with embeddings, task profiles have one more)."""
    return (probe, run_x, run_y, int(step_x), int(step_y), tuple(hidden_x), tuple(hidden_y))


def _no_band(estimator: str, shape: tuple) -> Band:
    """No interval; the floor is known for the debiased estimator (exactly 0) only."""
    floor = np.zeros(shape) if estimator == "debiased" else np.full(shape, np.nan)
    nothing = np.full(shape, np.nan)
    return Band(nothing, nothing, floor, np.zeros(shape, dtype=int))


def _step(path: Path) -> int:
    return int(activations.read_meta(path).get("step", -1))


def task_profiles(inputs: Inputs) -> list[dict]:
    """Per task on its own probe set: identity (seed 0 against itself), two seeds, and a
    successful against a diverged run where the store has one."""
    rows: list[dict] = []
    for task in inputs.tasks:
        ok, failed = inputs.full_fine_tuning(task), inputs.full_fine_tuning(task, diverged=True)
        pairs = []
        if ok:
            pairs.append(("identity", ok[0], ok[0]))
        if len(ok) >= 2:
            pairs.append(("seeds", ok[0], ok[1]))
        else:
            inputs.missing.append(
                Missing("profile", f"{task}: two seeds of full fine-tuning", "single")
            )
        if ok and failed:
            same_seed = [r for r in ok if r.seed == failed[0].seed] or ok
            pairs.append(("diverged", same_seed[0], failed[0]))
        for kind, x, y in pairs:
            rows += guarded(inputs, "single", profile_rows, inputs, kind, task, x, y, target=task)
    return rows


def guarded(inputs: Inputs, sweep: str, build, *args, **kwargs) -> list[dict]:
    """The rows `build` yields, or none with what was missing (or incomparable) recorded
    beside the `sweep` kind that produces it."""
    try:
        return list(build(*args, **kwargs))
    except MissingInput as error:
        inputs.missing.append(Missing("activations", str(error), sweep))
    except activations.TableError as error:
        inputs.missing.append(Missing("comparable tables", str(error), sweep))
    return []


def source_models(inputs: Inputs, source: str) -> list[TrainRun]:
    """The models a row of the Mean-CKA matrix compares: the pretrained model, or the
    registered full fine-tuning runs of the source task."""
    if source == BASE:
        return inputs.pretrained()
    return [r for r in inputs.full_fine_tuning(source) if r.registered_as]


def mean_cka_tables(inputs: Inputs) -> tuple[pd.DataFrame, list[dict]]:
    """(cells, profile rows): Mean-CKA(A→B) = 1 + mean over cells of (cross − self) on B's
    probe set, cross over (source model, target seed) pairs of distinct runs, self over
    pairs of distinct target seeds. On the diagonal (A = B) cross pairs are exactly the
    self pairs, so the computed cell is 1: kept as computed, not forced. Every cell of
    the matrix has a row per estimator; one without a number says why in `status`."""
    cells_, profiles = [], []
    for target in inputs.tasks:
        with inputs.computing(f"Mean-CKA column {target}"):
            found, rows = _mean_cka_column(inputs, target)
        cells_ += found
        profiles += rows
    return typed(cells_, MEAN_CKA_COLUMNS), profiles


MEAN_CKA_COLUMNS = {
    "source": TEXT, "target": TEXT, "estimator": TEXT, "value": FLOAT, "ci_low": FLOAT,
    "ci_high": FLOAT, "ci_level": FLOAT, "floor": FLOAT, "near_floor": FLAG,
    "seed_band_low": FLOAT, "seed_band_high": FLOAT, "within_seed_band": FLAG,
    "cross_pairs": INT, "self_pairs": INT, "probe_digest": TEXT, "n": INT,
    "source_versions": TEXT, "source_runs": TEXT, "target_runs": TEXT, "status": TEXT,
}  # fmt: skip


def _empty_cells(inputs: Inputs, target: str, sources, status: str) -> list[dict]:
    return [{"source": s, "target": target, "estimator": e, "status": status}
            for s in sources for e in inputs.estimators]  # fmt: skip


def _mean_cka_column(inputs: Inputs, target: str) -> tuple[list[dict], list[dict]]:
    targets = inputs.full_fine_tuning(target)
    every_source = (*inputs.tasks, BASE)
    if len(targets) < 2:
        status = cells.SINGLE_SEED if targets else inputs.empty_status(target)
        what = f"column {target}: needs two seeds of full fine-tuning ({status})"
        inputs.missing.append(Missing("Mean-CKA", what, "aufc"))
        return _empty_cells(inputs, target, every_source, status), []
    self_rows = []
    for a, b in itertools.combinations(targets, 2):
        self_rows += guarded(
            inputs, "aufc", profile_rows, inputs, "self", target, a, b, target=target
        )
    found, profiles = [], list(self_rows)
    for source in every_source:
        models = source_models(inputs, source)
        cross_rows = []
        for m, t in itertools.product(models, targets):
            if m.run_id != t.run_id:
                cross_rows += guarded(inputs, "aufc", profile_rows, inputs, "cross", target, m,
                                       t, source=source, target=target)  # fmt: skip
        if not cross_rows or not self_rows:
            status = inputs.empty_status(source) if not models else cells.MISSING
            what = "the pretrained model's extract run" if source == BASE else f"{source} sources"
            detail = f"{source}->{target}: {what} on {target}'s probe set ({status})"
            inputs.missing.append(Missing("Mean-CKA", detail, "aufc"))
            found += _empty_cells(inputs, target, [source], status)
            continue
        profiles += cross_rows
        with inputs.computing(f"Mean-CKA cell {source}->{target}"):
            found += _mean_cka_cells(inputs, source, target, models, cross_rows, self_rows)
    return found, profiles


def _keys(rows: pd.DataFrame) -> list[tuple]:
    """The profile keys of a frame of profile rows, one per profile."""
    out = []
    for pair, g in rows.groupby(["probe_task", "run_x", "run_y", "step_x", "step_y"]):
        hx, hy = (sorted(int(h) for h in g[c].unique()) for c in ("hidden_x", "hidden_y"))
        out.append(profile_key(*pair, hx, hy))
    return out


def _mean_cka_cells(inputs: Inputs, source, target, models, cross_rows, self_rows) -> list[dict]:
    """One row per estimator; a profile with an undefined cell (a constant layer) gives no
    number (status undefined) and is listed missing, naming its layers."""
    cross, self_ = pd.DataFrame(cross_rows), pd.DataFrame(self_rows)
    out = []
    for estimator in dict.fromkeys(cross.estimator):  # the headline estimator first
        c = cross[cross.estimator == estimator]
        s = self_[self_.estimator == estimator]
        row = {
            "source": source,
            "target": target,
            "estimator": estimator,
            "cross_pairs": c.groupby(["run_x", "run_y"]).ngroups,
            "self_pairs": s.groupby(["run_x", "run_y"]).ngroups,
            "probe_digest": _one(c.probe_digest, f"{source}->{target} probe digests"),
            "n": int(c.n.iloc[0]),
            "source_versions": ",".join(m.registered_as for m in models),
            "source_runs": ",".join(sorted(c.run_x.unique())),
            "target_runs": ",".join(sorted(c.run_y.unique())),
        }
        undefined = pd.concat([c, s])
        undefined = undefined[~np.isfinite(undefined.cka.to_numpy(dtype=float))]
        if len(undefined):
            layers = sorted({*undefined.hidden_x, *undefined.hidden_y})
            what = (f"{source}->{target} ({estimator}): CKA undefined at {len(undefined)} "
                    f"profile cells (a constant layer? hidden states {layers[:6]})")  # fmt: skip
            inputs.missing.append(Missing("Mean-CKA", what, "aufc"))
            out.append(row | {"status": cells.UNDEFINED})
            continue
        value = transfer.mean_cka(_stack(c), _stack(s))
        band = {}
        if inputs.intervals is not None and estimator == "biased":
            band = mean_cka_interval(inputs.intervals, _keys(c), _keys(s), _stack(s), value)
        out.append(row | {"value": value, **band, "status": cells.OK})
    return out


def _stack(rows: pd.DataFrame) -> np.ndarray:
    """(S, Lx, Ly) profiles of a frame of profile rows, one per (run_x, run_y) pair."""
    out = []
    for _, pair in rows.groupby(["run_x", "run_y"]):
        table = pair.pivot(index="hidden_x", columns="hidden_y", values="cka")
        out.append(table.to_numpy())
    return np.stack(out)


def _one(values: pd.Series, what: str):
    unique = values.unique()
    if len(unique) != 1:
        raise ValueError(f"{what} mix {' and '.join(map(str, unique))}: never one matrix")
    return unique[0]
