"""The analysis's tidy tables, one row per number, built from collected runs.

    inputs = Inputs(runs, store, tasks, estimators, embeddings=False)   # what sweeps logged
    best = best_scores(inputs, min_margin=0.1)   # best_B per task, from raw k = 0 scores
    scores = transfer_scores(inputs, best)
    cells, seeds = aufc_tables(scores, AufcRule(grid=(0, 3, 6)), inputs)

Every row carries what it was computed from (run ids, registered versions, k, seeds), so
each number traces back to its runs. CKA tables: `profiles`; the maths: `transfer`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from bertrep import tracking
from bertrep.analysis import cells
from bertrep.analysis.cells import FLAG, FLOAT, INT, TEXT, typed
from bertrep.analysis.collect import Store, TrainRun
from bertrep.analysis.intervals import Intervals
from bertrep.data.tasks import get_task
from bertrep.maths import transfer

BASE = tracking.BASE_SOURCE  # the row of the pretrained model


@dataclass
class Missing:
    """What the analysis could not find, and the kind of sweep that would produce it (the
    `missing` table gives its command, `bertrep.analyze.sweep_command`; "" where no sweep
    would)."""

    what: str
    detail: str
    kind: str = "aufc"  # single | aufc | forgetting | ""


@dataclass
class Inputs:
    runs: list[TrainRun]
    store: Store  # where activation tables, metric histories and registered versions are
    tasks: tuple[str, ...]
    estimators: tuple[str, ...]
    embeddings: bool  # whether hidden state 0 (the embedding output) joins the profiles
    missing: list[Missing]
    intervals: Intervals | None = None  # bootstrap replicates of the profiles, if asked
    setting: str = ""  # the shipped setting analysed (sweeps/<setting>/), for commands
    place: list[str] = field(default_factory=list)  # what is being computed, outermost first
    failed_at: str = ""  # where the first error was raised (the analysis's one-line report)

    @contextmanager
    def computing(self, what: str) -> Iterator[None]:
        """Name what the code inside computes (a table, then a cell), so that an error
        raised there is reported with it (`failed_at`)."""
        self.place.append(what)
        try:
            yield
        except Exception:
            self.failed_at = self.failed_at or ", ".join(self.place)
            raise
        finally:
            self.place.pop()

    def select(self, **tags) -> list[TrainRun]:
        """Runs whose attributes equal every given value, by seed."""
        out = [r for r in self.runs if all(getattr(r, k) == v for k, v in tags.items())]
        return sorted(out, key=lambda r: (r.seed, r.run_id))

    def full_fine_tuning(self, task: str, diverged: bool = False) -> list[TrainRun]:
        """k = 0 single-task runs of `task` from the pretrained model (best_B, the target
        models of Mean-CKA, the registered sources): the seeds of one configuration, the
        one most runs share. With diverged=True, the failed runs instead."""
        runs = self.select(task=task, mode="single", source_task=BASE, frozen_layers=0)
        if diverged:
            return [r for r in runs if r.failed]
        groups: dict[tuple, list[TrainRun]] = {}
        for r in runs:
            if not r.failed:
                groups.setdefault(_run_setting(r), []).append(r)
        # the most seeds; on a tie the registered sources, which transfer started from
        return max(groups.values(), key=lambda g: (len(g), sum(bool(r.registered_as) for r in g)),
                   default=[])  # fmt: skip

    def grid_seeds(self, task: str) -> set[int]:
        """The seeds of `task`'s own transfer grid: those with a single-task run on it from
        another task's model, or from the pretrained model at k ≥ 1 (none: it has no
        grid, and every seed of its full fine-tuning counts)."""
        runs = self.select(task=task, mode="single")
        return {r.seed for r in runs if r.source_task != BASE or r.frozen_layers > 0}

    def normalizing_runs(self, task: str, diverged: bool = False) -> list[TrainRun]:
        """The full fine-tuning runs best_B averages (diverged=True: the failed ones): those
        at `task`'s grid seeds where it has a grid, so that a seed trained only as another
        target's source leaves its scale as it was."""
        runs, grid = self.full_fine_tuning(task, diverged), self.grid_seeds(task)
        return [r for r in runs if r.seed in grid] if grid else runs

    def pretrained(self) -> list[TrainRun]:
        return self.select(mode=tracking.EXTRACT_MODE)

    def source_status(self, source: str) -> str:
        """Whether a row of the transfer matrices has models: the pretrained model
        always; a task when its full fine-tuning succeeded (DIVERGED: every run failed)."""
        if source == BASE or self.full_fine_tuning(source):
            return cells.OK
        return cells.DIVERGED if self.full_fine_tuning(source, diverged=True) else cells.MISSING

    def empty_status(self, task: str) -> str:
        """The label of a cell that lacks `task`'s models (as a source, or the target's
        seeds): diverged where every run of it failed, else missing."""
        status = self.source_status(task)
        return cells.MISSING if status == cells.OK else status

    def pairs(self) -> list[tuple[str, str]]:
        """Every (source, target) cell of a transfer matrix: task rows, then base."""
        return [(s, t) for s in (*self.tasks, BASE) for t in self.tasks]


def _run_setting(run: TrainRun) -> tuple:
    """A run's configuration but for its seed (and where it read or wrote): what makes
    two runs seeds of one setting."""
    skip = {"seed", "data_dir", "data_files", "probe_tasks", "save_checkpoint"}
    return tuple(sorted((k, v) for k, v in run.params.items() if k not in skip))


# --- scores: best_B, the transfer grid, AuFC ---


BEST_COLUMNS = {"task": TEXT, "metric": TEXT, "best": FLOAT, "chance": FLOAT, "runs": INT,
                "run_ids": TEXT, "status": TEXT}  # fmt: skip


def best_scores(inputs: Inputs, min_margin: float = 0.0) -> pd.DataFrame:
    """best_B of each task: the mean raw final score of its successful full fine-tuning
    runs from the pretrained model (never a normalized score logged during a sweep), and
    its status: ok, at chance, not learned, not learned at this budget (best_B against
    chance_B and chance_B + min_margin), diverged (every run failed) or missing (no run)."""
    rows = []
    for task in inputs.tasks:
        runs = inputs.normalizing_runs(task)
        row = {"task": task, "metric": get_task(task).metric, "runs": len(runs)}
        if not runs:
            status = cells.DIVERGED if inputs.normalizing_runs(task, True) else cells.MISSING
            grid = inputs.grid_seeds(task)
            at = f" at its grid seeds {sorted(grid)}" if grid else ""
            detail = (
                f"every k=0 run from the pretrained model{at} diverged"
                if status == cells.DIVERGED
                else f"no k=0 run from the pretrained model{at}"
            )
            inputs.missing.append(Missing("best_B", f"{task}: {detail}", "aufc"))
            rows.append(row | {"status": status})
            continue
        best, chance = float(np.mean([r.final_score for r in runs])), runs[0].chance
        status = cells.target_status(best, chance, min_margin)
        if status != cells.OK:
            what = f"{task}: best_B {best:.4f} vs chance {chance:.4f}: {cells.MEANING[status]}"
            inputs.missing.append(Missing("best_B", what, cells.remedy_kind(status)))
        rows.append(row | {"best": best, "chance": chance, "status": status,
                           "run_ids": ",".join(r.run_id for r in runs)})  # fmt: skip
    return typed(rows, BEST_COLUMNS)


def learned_best(best: pd.DataFrame) -> dict[str, float]:
    """{task: best_B} of the tasks whose normalized scores exist (status ok)."""
    ok = best[best.status == cells.OK]
    return dict(zip(ok.task, ok.best, strict=True))


def target_statuses(best: pd.DataFrame) -> dict[str, str]:
    return dict(zip(best.task, best.status, strict=True))


def transfer_scores(inputs: Inputs, best: pd.DataFrame) -> pd.DataFrame:
    """One row per single-task run on a target in the transfer grid: its source (base or
    the task of the registered version it started from), k, seed, raw and normalized
    score. The grid is the target's full fine-tuning setting (its lr): a deliberately
    failed run of a single sweep is profiled, not part of the grid."""
    best_of, learned = dict(zip(best.task, best.best, strict=True)), learned_best(best)
    status = target_statuses(best)
    rows = []
    lr = {t: {r.params.get("lr") for r in inputs.full_fine_tuning(t)[:1]} for t in inputs.tasks}
    seeds = {t: inputs.grid_seeds(t) for t in inputs.tasks}
    for r in inputs.select(mode="single"):
        if r.task not in inputs.tasks or r.source_task not in (BASE, *inputs.tasks):
            continue
        if lr[r.task] and r.params.get("lr") not in lr[r.task]:
            continue
        if r.source_task == BASE and seeds[r.task] and r.seed not in seeds[r.task]:
            continue  # a source model at a seed its task's own grid lacks: no grid point
        norm = transfer.normalize(
            r.final_score, r.chance, learned.get(r.task, np.nan), strict=False
        )
        rows.append(
            {
                "target": r.task,
                "source": r.source_task,
                "frozen_layers": r.frozen_layers,
                "seed": r.seed,
                "max_steps": int(float(r.params.get("max_steps", 0) or 0)),
                "num_layers": r.num_layers,
                "score": r.final_score,
                "chance": r.chance,
                "best": best_of.get(r.task, np.nan),
                "norm_score": norm,
                "diverged": r.diverged,
                "stopped_early": r.stopped_early,
                "run_id": r.run_id,
                "source_version": r.base_model if tracking.is_model_uri(r.base_model) else "",
                "status": status.get(r.task, cells.MISSING),
            }
        )
    return typed(rows, SCORE_COLUMNS)


SCORE_COLUMNS = {"target": TEXT, "source": TEXT, "frozen_layers": INT, "seed": INT,
                 "max_steps": INT, "num_layers": INT, "score": FLOAT, "chance": FLOAT,
                 "best": FLOAT, "norm_score": FLOAT, "diverged": FLAG, "run_id": TEXT,
                 "source_version": TEXT, "status": TEXT, "stopped_early": FLAG}  # fmt: skip


@dataclass(frozen=True)
class AufcRule:
    """Which k enter AuFC: `grid` (default: every k the runs have), which must include 0
    and L unless require_endpoints is false; a target whose best_B beats chance by less
    than `min_margin` (its metric's units) gets no normalized score."""

    grid: tuple[int, ...] = ()
    require_endpoints: bool = True
    min_margin: float = 0.0


VARIANTS = ("aufc", "aufc_paper")
NEEDS = {
    "aufc": "runs at k = 0 and k = L from a source, on a learned target",
    "aufc_paper": "runs at every k = 1..L from a source, on a learned target",
}


def aufc_tables(
    scores: pd.DataFrame, rule: AufcRule, inputs: Inputs
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(cells, seeds): AuFC per (source, target) as the mean over seeds, and per seed;
    beside ours the original code's variant (`aufc_paper`: every k = 1..L at
    x = (k − 1)/L). Every cell of the matrix has a row: one without a number says why in
    `status` (its target's label, a source that diverged, missing k; a single seed keeps
    its number). A seed lacking a k, or with a non-finite score, is left out, listed."""
    seeds, cells_ = [], []
    for source, target in inputs.pairs():
        group = scores[(scores.source == source) & (scores.target == target)]
        with inputs.computing(f"AuFC cell {source}->{target}"):
            found, per_seed = _aufc_cell(inputs, source, target, group, rule)
        cells_ += found
        seeds += per_seed
    return typed(cells_, CELL_COLUMNS), typed(seeds, SEED_COLUMNS)


CELL_COLUMNS = {"source": TEXT, "target": TEXT, "variant": TEXT, "value": FLOAT, "seeds": INT,
                "best": FLOAT, "chance": FLOAT, "num_layers": INT, "ks": TEXT,
                "source_versions": TEXT, "status": TEXT}  # fmt: skip
SEED_COLUMNS = {"source": TEXT, "target": TEXT, "variant": TEXT, "seed": INT, "value": FLOAT,
                "ks": TEXT, "run_ids": TEXT}  # fmt: skip


def _aufc_cell(inputs: Inputs, source, target, group: pd.DataFrame, rule: AufcRule):
    """(cell rows, seed rows) of one (source, target) pair, a cell row per variant."""
    if group.empty:
        status = inputs.empty_status(source)
        return [{"source": source, "target": target, "variant": v, "seeds": 0, "status": status}
                for v in VARIANTS], []  # fmt: skip
    num_layers = int(group.num_layers.iloc[0])
    common = {"source": source, "target": target, "best": float(group.best.iloc[0]),
              "chance": float(group.chance.iloc[0]), "num_layers": num_layers, "seeds": 0,
              "source_versions": ",".join(sorted(set(group.source_version) - {""}))}  # fmt: skip
    status = _cell_status(inputs, source, group.status.iloc[0])
    if status != cells.OK:
        _missing(inputs, "AuFC", f"{source}->{target}: {status} ({cells.MEANING[status]})")
        return [common | {"variant": v, "status": status} for v in VARIANTS], []
    ks = [int(k) for k in rule.grid or sorted(group.frozen_layers.unique())]
    ends = {0, num_layers} <= set(ks) or not rule.require_endpoints
    if len(ks) < 2 or not ends:
        _missing(inputs, "AuFC", f"{source}->{target}: k = {ks} (needs 0 and L = {num_layers})")
        return [common | {"variant": v, "status": cells.MISSING} for v in VARIANTS], []
    per_seed = _seed_grids(inputs, source, target, group, ks)
    every_k = list(range(1, num_layers + 1))
    variants = {"aufc": (ks, _aufc), "aufc_paper": (every_k, _aufc_paper)}
    found, seeds = [], []
    for variant, (need, value_of) in variants.items():
        row = common | {"variant": variant, "ks": ",".join(map(str, need))}
        usable = {s: g for s, g in per_seed.items() if set(need) <= set(g.index)}
        if not usable:
            what = f"{source}->{target}: {variant} needs every k in {need[0]}..{need[-1]}"
            _missing(inputs, variant, what)
            found.append(row | {"status": cells.MISSING})
            continue
        values = {}
        for seed, runs in usable.items():
            runs = runs.loc[need]
            values[seed] = value_of(runs, need, num_layers, rule)
            seeds.append({"source": source, "target": target, "variant": variant, "seed": seed,
                          "value": values[seed], "ks": row["ks"],
                          "run_ids": ",".join(runs.run_id)})  # fmt: skip
        single = len(values) == 1
        found.append(row | {"value": float(np.mean(list(values.values()))),
                            "seeds": len(values),
                            "status": cells.SINGLE_SEED if single else cells.OK})  # fmt: skip
    return found, seeds


def _cell_status(inputs: Inputs, source: str, target_status: str) -> str:
    """A transfer cell with runs: its target's label first (at chance, not learned, below
    the margin), then whether its source is a model of its task (every seed diverged)."""
    if target_status != cells.OK:
        return target_status
    return cells.DIVERGED if inputs.source_status(source) == cells.DIVERGED else cells.OK


def _missing(inputs: Inputs, what: str, detail: str, kind: str = "aufc") -> None:
    inputs.missing.append(Missing(what, detail, kind))


def _seed_grids(inputs, source, target, group: pd.DataFrame, ks) -> dict[int, pd.DataFrame]:
    """{seed: its runs indexed by k} with a finite score, best and chance at every k of
    `ks` (others are listed missing); two runs at one k are ambiguous: listed, left out."""
    out = {}
    for seed, runs in group.groupby("seed"):
        runs = runs[np.isfinite(runs.score) & np.isfinite(runs.chance) & np.isfinite(runs.best)]
        if len(twice := runs[runs.frozen_layers.duplicated(keep=False)]):
            ids = ", ".join(twice.run_id)
            _missing(inputs, "AuFC", f"{source}->{target} seed {seed}: runs {ids} share a k")
            continue
        lacking = [k for k in ks if k not in set(runs.frozen_layers)]
        if lacking:
            what = f"{source}->{target} seed {seed}: no finished run with a score at k = {lacking}"
            _missing(inputs, "AuFC", what)
            continue
        out[int(seed)] = runs.set_index("frozen_layers").sort_index()
    return out


def _aufc(runs: pd.DataFrame, ks: list[int], num_layers: int, rule: AufcRule) -> float:
    return transfer.aufc(
        ks,
        runs.score.to_numpy(),
        num_layers=num_layers,
        chance=runs.chance.iloc[0],
        best=runs.best.iloc[0],
        require_endpoints=rule.require_endpoints,
    )


def _aufc_paper(runs: pd.DataFrame, ks: list[int], num_layers: int, rule) -> float:
    """The original code froze embeddings + blocks 0..k (our k + 1) and integrated with
    sklearn's auc over x = 0, 1/L, ..., (L − 1)/L: our k = 1..L at x = (k − 1) / L, so a
    perfect curve scores (L − 1)/L."""
    y = transfer.normalize(runs.score.to_numpy(), runs.chance.iloc[0], runs.best.iloc[0])
    x = (np.asarray(ks) - 1) / num_layers
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2))


K0_COLUMNS = {"source": TEXT, "target": TEXT, "value": FLOAT, "score": FLOAT, "seeds": INT,
              "run_ids": TEXT, "status": TEXT}  # fmt: skip


def transfer_k0(inputs: Inputs, scores: pd.DataFrame) -> pd.DataFrame:
    """The no-freeze transfer matrix: mean normalized k = 0 score per (source, target),
    a row for every cell (status as in AuFC's cells)."""
    rows = []
    k0 = scores[scores.frozen_layers == 0]
    for source, target in inputs.pairs():
        runs = k0[(k0.source == source) & (k0.target == target)]
        if runs.empty:
            rows.append({"source": source, "target": target, "seeds": 0,
                         "status": inputs.empty_status(source)})  # fmt: skip
            continue
        status = _cell_status(inputs, source, runs.status.iloc[0])
        value = runs.norm_score.mean() if status == cells.OK else np.nan
        rows.append({"source": source, "target": target, "value": value,
                     "score": runs.score.mean(), "seeds": runs.seed.nunique(),
                     "run_ids": ",".join(runs.run_id), "status": status})  # fmt: skip
    return typed(rows, K0_COLUMNS)
