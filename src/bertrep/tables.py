"""The analysis's tidy tables, one row per number, built from collected runs.

    inputs = Inputs(runs, store, tasks, estimators, embeddings=False)   # what sweeps logged
    best = best_scores(inputs)            # best_B per task, from the raw k = 0 base scores
    scores = transfer_scores(inputs, best)
    cells, seeds = aufc_tables(scores, num_layers, rule)

Every row carries what it was computed from (run ids, registered versions, k, seeds),
so each number can be traced back to its runs; the CKA tables are in `profiles`. The
maths is in `transfer`; this module only arranges it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from bertrep import tracking, transfer
from bertrep.collect import Store, TrainRun
from bertrep.intervals import Intervals
from bertrep.tasks import get_task

BASE = tracking.BASE_SOURCE  # the row of the pretrained model


@dataclass
class Missing:
    """What the analysis could not find, and the command that would produce it."""

    what: str
    detail: str
    command: str


@dataclass
class Inputs:
    runs: list[TrainRun]
    store: Store  # where activation tables, metric histories and registered versions are
    tasks: tuple[str, ...]
    estimators: tuple[str, ...]
    embeddings: bool  # whether hidden state 0 (the embedding output) joins the profiles
    missing: list[Missing]
    intervals: Intervals | None = None  # bootstrap replicates of the profiles, if asked

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
                groups.setdefault(_setting(r), []).append(r)
        # the most seeds; on a tie the registered sources, which transfer started from
        return max(groups.values(), key=lambda g: (len(g), sum(bool(r.registered_as) for r in g)),
                   default=[])  # fmt: skip

    def pretrained(self) -> list[TrainRun]:
        return self.select(mode=tracking.EXTRACT_MODE)


def _setting(run: TrainRun) -> tuple:
    """A run's configuration but for its seed (and where it read or wrote): what makes
    two runs seeds of one setting."""
    skip = {"seed", "data_dir", "data_files", "probe_tasks", "save_checkpoint"}
    return tuple(sorted((k, v) for k, v in run.params.items() if k not in skip))


def sweep_command(kind: str) -> str:
    return f"mlflow run . -e sweep_{kind} --env-manager local -P spec=sweeps/quick/{kind}.yaml"


# --- scores: best_B, the transfer grid, AuFC ---


def best_scores(inputs: Inputs) -> pd.DataFrame:
    """best_B of each task: the mean raw final score of its successful full fine-tuning
    runs from the pretrained model (never a normalized score logged during a sweep)."""
    rows = []
    for task in inputs.tasks:
        runs = inputs.full_fine_tuning(task)
        if not runs:
            inputs.missing.append(
                Missing(
                    "best_B",
                    f"{task}: no k=0 run from the pretrained model",
                    sweep_command("aufc"),
                )
            )
            continue
        rows.append(
            {
                "task": task,
                "metric": get_task(task).metric,
                "best": float(np.mean([r.final_score for r in runs])),
                "chance": runs[0].chance,
                "runs": len(runs),
                "run_ids": ",".join(r.run_id for r in runs),
            }
        )
    return pd.DataFrame(rows, columns=["task", "metric", "best", "chance", "runs", "run_ids"])


def transfer_scores(inputs: Inputs, best: pd.DataFrame) -> pd.DataFrame:
    """One row per single-task run on a target in the transfer grid: its source (base or
    the task of the registered version it started from), k, seed, raw and normalized
    score. The grid is the target's full fine-tuning setting (its lr): a deliberately
    failed run of a single sweep is profiled, not part of the grid."""
    best_of = best.set_index("task")["best"].to_dict()
    rows = []
    for r in inputs.select(mode="single"):
        if r.task not in inputs.tasks or r.source_task not in (BASE, *inputs.tasks):
            continue
        grid = inputs.full_fine_tuning(r.task)
        if grid and r.params.get("lr") != grid[0].params.get("lr"):
            continue
        b = best_of.get(r.task, np.nan)
        rows.append(
            {
                "target": r.task,
                "source": r.source_task,
                "frozen_layers": r.frozen_layers,
                "seed": r.seed,
                "num_layers": r.num_layers,
                "score": r.final_score,
                "chance": r.chance,
                "best": b,
                "norm_score": transfer.normalize(r.final_score, r.chance, b, strict=False),
                "diverged": r.diverged,
                "run_id": r.run_id,
                "source_version": r.base_model if tracking.is_model_uri(r.base_model) else "",
            }
        )
    return pd.DataFrame(rows, columns=SCORE_COLUMNS)


SCORE_COLUMNS = ["target", "source", "frozen_layers", "seed", "num_layers", "score", "chance",
                 "best", "norm_score", "diverged", "run_id", "source_version"]  # fmt: skip


@dataclass(frozen=True)
class AufcRule:
    """Which k enter AuFC: `grid` (default: every k the runs have), which must include 0
    and L unless require_endpoints is false."""

    grid: tuple[int, ...] = ()
    require_endpoints: bool = True


def aufc_tables(
    scores: pd.DataFrame, rule: AufcRule, inputs: Inputs
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(cells, seeds): AuFC per (source, target) as the mean over seeds, and per seed;
    beside ours the original code's variant (`aufc_paper`: every k = 1..L at
    x = (k − 1)/L). A seed lacking a k, or with a non-finite score, is left out and
    listed as missing; a variant no seed can give is missing too."""
    seeds, cells = [], []
    for (source, target), group in scores.groupby(["source", "target"]):
        num_layers = int(group.num_layers.iloc[0])
        ks = [int(k) for k in rule.grid or sorted(group.frozen_layers.unique())]
        ends = {0, num_layers} <= set(ks) or not rule.require_endpoints
        if len(ks) < 2 or not ends:
            _missing(inputs, "AuFC", f"{source}->{target}: k = {ks} (needs 0 and L = {num_layers})")
            continue
        if (group.best == group.chance).any():
            what = f"{source}->{target}: best_B equals chance, the normalized score is undefined"
            _missing(inputs, "AuFC", what)
            continue
        per_seed = _seed_grids(inputs, source, target, group, ks)
        every_k = list(range(1, num_layers + 1))
        variants = {"aufc": (ks, _aufc), "aufc_paper": (every_k, _aufc_paper)}
        for variant, (need, value_of) in variants.items():
            usable = {s: g for s, g in per_seed.items() if set(need) <= set(g.index)}
            if not usable:
                what = f"{source}->{target}: {variant} needs every k in {need[0]}..{need[-1]}"
                _missing(inputs, variant, what)
                continue
            values = {}
            for seed, runs in usable.items():
                runs = runs.loc[need]
                values[seed] = value_of(runs, need, num_layers, rule)
                seeds.append(
                    {"source": source, "target": target, "variant": variant, "seed": seed,
                     "value": values[seed], "ks": ",".join(map(str, need)),
                     "run_ids": ",".join(runs.run_id)}
                )  # fmt: skip
            cells.append(
                {"source": source, "target": target, "variant": variant,
                 "value": float(np.mean(list(values.values()))), "seeds": len(values),
                 "best": float(group.best.iloc[0]), "chance": float(group.chance.iloc[0]),
                 "num_layers": num_layers, "ks": ",".join(map(str, need)),
                 "source_versions": ",".join(sorted(set(group.source_version) - {""}))}
            )  # fmt: skip
    return pd.DataFrame(cells, columns=CELL_COLUMNS), pd.DataFrame(seeds, columns=SEED_COLUMNS)


CELL_COLUMNS = ["source", "target", "variant", "value", "seeds", "best", "chance",
                "num_layers", "ks", "source_versions"]  # fmt: skip
SEED_COLUMNS = ["source", "target", "variant", "seed", "value", "ks", "run_ids"]


def _missing(inputs: Inputs, what: str, detail: str, kind: str = "aufc") -> None:
    inputs.missing.append(Missing(what, detail, sweep_command(kind)))


def _seed_grids(inputs, source, target, group: pd.DataFrame, ks) -> dict[int, pd.DataFrame]:
    """{seed: its runs indexed by k} with a finite score, best and chance at every k of
    `ks` (others are listed missing); two runs at one k are ambiguous: listed, left out."""
    out = {}
    for seed, runs in group.groupby("seed"):
        runs = runs[np.isfinite(runs.score) & np.isfinite(runs.chance) & np.isfinite(runs.best)]
        twice = runs[runs.frozen_layers.duplicated(keep=False)]
        if len(twice):
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


def transfer_k0(scores: pd.DataFrame) -> pd.DataFrame:
    """The no-freeze transfer matrix: mean normalized k = 0 score per (source, target)."""
    columns = ["source", "target", "value", "score", "seeds", "run_ids"]
    k0 = scores[scores.frozen_layers == 0]
    if k0.empty:
        return pd.DataFrame(columns=columns)
    out = k0.groupby(["source", "target"]).agg(
        value=("norm_score", "mean"),
        score=("score", "mean"),
        seeds=("seed", "nunique"),
        run_ids=("run_id", ",".join),
    )
    return out.reset_index()


def matrix(cells: pd.DataFrame, tasks: tuple[str, ...], **where) -> pd.DataFrame:
    """(sources, targets) frame of a cell table: rows the tasks then base, NaN if missing."""
    rows = [*tasks, tracking.BASE_SOURCE]
    frame = pd.DataFrame(index=rows, columns=list(tasks), dtype=float)
    if cells.empty:
        return frame
    sel = cells
    for k, v in where.items():
        sel = sel[sel[k] == v]
    for r in sel.itertuples():
        if r.source in frame.index and r.target in frame.columns:
            frame.loc[r.source, r.target] = r.value
    return frame
