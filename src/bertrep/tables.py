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

    def select(self, **tags) -> list[TrainRun]:
        """Runs whose attributes equal every given value, by seed."""
        out = [r for r in self.runs if all(getattr(r, k) == v for k, v in tags.items())]
        return sorted(out, key=lambda r: (r.seed, r.run_id))

    def full_fine_tuning(self, task: str, diverged: bool = False) -> list[TrainRun]:
        """k = 0 single-task runs of `task` from the pretrained model: best_B, the
        target models of Mean-CKA and the registered sources."""
        runs = self.select(task=task, mode="single", source_task=BASE, frozen_layers=0)
        return [r for r in runs if r.diverged == diverged]

    def pretrained(self) -> list[TrainRun]:
        return self.select(mode=tracking.EXTRACT_MODE)


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
    """One row per single-task run on a target: its source (base or the task of the
    registered version it started from), k, seed, raw and normalized score."""
    best_of = best.set_index("task")["best"].to_dict()
    rows = []
    for r in inputs.select(mode="single"):
        if r.task not in inputs.tasks or r.source_task not in (BASE, *inputs.tasks):
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
                "lr": float(r.params.get("lr", "nan")),
            }
        )
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    # The deliberately failed runs of a single sweep use another lr: they are profiled,
    # not part of the transfer grid.
    grid_lr = frame.loc[~frame.diverged].groupby("target")["lr"].agg(lambda s: s.mode()[0])
    return frame[frame.lr == frame.target.map(grid_lr)].reset_index(drop=True)


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
    beside ours the original code's variant (`aufc_paper`: k = 1..L at x = (k − 1)/L)."""
    seeds, cells = [], []
    if scores.empty:
        return pd.DataFrame(), pd.DataFrame()
    for (source, target), group in scores.groupby(["source", "target"]):
        num_layers = int(group.num_layers.iloc[0])
        ks = [int(k) for k in rule.grid or sorted(group.frozen_layers.unique())]
        ends = {0, num_layers} <= set(ks) or not rule.require_endpoints
        if len(ks) < 2 or not ends:
            detail = f"{source}->{target}: k = {ks} (needs 0 and L = {num_layers} and more)"
            inputs.missing.append(Missing("AuFC", detail, sweep_command("aufc")))
            continue
        per_seed = {}
        for seed, runs in group.groupby("seed"):
            have = runs.set_index("frozen_layers")["score"]
            lacking = [k for k in ks if k not in have.index]
            if lacking:
                inputs.missing.append(
                    Missing(
                        "AuFC",
                        f"{source}->{target} seed {seed}: no run with k={lacking}",
                        sweep_command("aufc"),
                    )
                )
                continue
            per_seed[seed] = runs.set_index("frozen_layers").loc[ks]
        for variant, value_of in (("aufc", _aufc), ("aufc_paper", _aufc_paper)):
            values = {}
            for seed, runs in per_seed.items():
                value = value_of(runs, ks, num_layers, rule)
                if value is not None:
                    values[seed] = value
                    seeds.append(
                        {
                            "source": source,
                            "target": target,
                            "variant": variant,
                            "seed": seed,
                            "value": value,
                            "ks": ",".join(map(str, ks)),
                            "run_ids": ",".join(runs.run_id),
                        }
                    )
            if values:
                cells.append(
                    {
                        "source": source,
                        "target": target,
                        "variant": variant,
                        "value": float(np.mean(list(values.values()))),
                        "seeds": len(values),
                        "best": float(group.best.iloc[0]),
                        "chance": float(group.chance.iloc[0]),
                        "num_layers": num_layers,
                        "ks": ",".join(map(str, ks)),
                        "source_versions": ",".join(sorted(set(group.source_version) - {""})),
                    }
                )
    return pd.DataFrame(cells), pd.DataFrame(seeds)


def _aufc(runs: pd.DataFrame, ks: list[int], num_layers: int, rule: AufcRule) -> float | None:
    if not np.isfinite(runs.best.iloc[0]):
        return None
    return transfer.aufc(
        ks,
        runs.score.to_numpy(),
        num_layers=num_layers,
        chance=runs.chance.iloc[0],
        best=runs.best.iloc[0],
        require_endpoints=rule.require_endpoints,
    )


def _aufc_paper(runs: pd.DataFrame, ks: list[int], num_layers: int, rule) -> float | None:
    """The original code froze embeddings + blocks 0..k (our k + 1) and integrated over
    x = 0, 1/L, ..., (L − 1)/L: from our runs with k ≥ 1, at x = (k − 1) / L."""
    shifted = [k for k in ks if k >= 1]
    if len(shifted) < 2 or not np.isfinite(runs.best.iloc[0]):
        return None
    y = transfer.normalize(
        runs.loc[shifted].score.to_numpy(), runs.chance.iloc[0], runs.best.iloc[0]
    )
    x = (np.asarray(shifted) - 1) / num_layers
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2))


def transfer_k0(scores: pd.DataFrame) -> pd.DataFrame:
    """The no-freeze transfer matrix: mean normalized k = 0 score per (source, target)."""
    if scores.empty:
        return pd.DataFrame()
    k0 = scores[scores.frozen_layers == 0]
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
