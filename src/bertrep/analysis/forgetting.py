"""The forgetting tables of sequential and shuffled runs: both tasks' scores at every
checkpoint of the B phase, and the CKA profile against the models tuned on A (and B)
alone, whose diagonal is each layer's drift.

    scores, rows = forgetting_tables(inputs, best)
    summary = forgetting_summary(scores)       # first -> last checkpoint per run and task
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd

from bertrep import tracking
from bertrep.analysis.cells import FLOAT, INT, TEXT, typed
from bertrep.analysis.collect import TrainRun
from bertrep.analysis.profiles import guarded, profile_rows
from bertrep.analysis.tables import Inputs, learned_best
from bertrep.data.tasks import get_task
from bertrep.maths import transfer
from bertrep.maths.forgetting import forgotten


def forgetting_tables(inputs: Inputs, best: pd.DataFrame) -> tuple[pd.DataFrame, list[dict]]:
    """(scores, profile rows) of every sequential and shuffled run: at each checkpoint of
    the B phase both tasks' raw and normalized scores, and the profile of the model
    against the one tuned on A alone (and, where registered, on B alone) on both probe
    sets; its diagonal is each layer's drift."""
    best_of, learned = dict(zip(best.task, best.best, strict=True)), learned_best(best)
    scores, profiles = [], []
    for run in [r for r in inputs.runs if r.mode in ("sequential", "shuffled")]:
        a, b = run.source_task, run.task
        steps = inputs.store.activation_steps(run.run_id, b)
        span = max(int(float(run.params.get("max_steps", max(steps, default=1)))), 1)
        pair = {"run_id": run.run_id, "mode": run.mode, "task_a": a, "task_b": b,
                "seed": run.seed, "sampling": run.params.get("sampling", "")}  # fmt: skip
        for role, task in (("A", a), ("B", b)):
            scope = None if task == b else task
            metric = get_task(task).metric
            raw = inputs.store.history(run.run_id, tracking.eval_metric(metric, scope))
            chance = inputs.store.history(run.run_id, tracking.eval_metric("chance", scope))
            for step in steps:
                value, c = raw.get(step, np.nan), chance.get(step, np.nan)
                scores.append(
                    {
                        **pair,
                        "step": step,
                        "fraction": step / span,
                        "scored": role,
                        "task": task,
                        "metric": metric,
                        "score": value,
                        "chance": c,
                        "best": best_of.get(task, np.nan),
                        "norm_score": transfer.normalize(
                            value, c, learned.get(task, np.nan), strict=False
                        ),
                    }
                )
        for reference, ref_run, ref_step in _references(inputs, run):
            for step, probe in itertools.product(steps, (a, b)):
                profiles += guarded(
                    inputs,
                    "forgetting",
                    profile_rows,
                    inputs,
                    "forgetting",
                    probe,
                    ref_run,
                    run,
                    step_x=ref_step,
                    step_y=step,
                    fraction=step / span,
                    reference=reference,
                    **pair,
                )
    return typed(scores, FORGETTING_COLUMNS), profiles


FORGETTING_COLUMNS = {
    "run_id": TEXT, "mode": TEXT, "task_a": TEXT, "task_b": TEXT, "seed": INT, "sampling": TEXT,
    "step": INT, "fraction": FLOAT, "scored": TEXT, "task": TEXT, "metric": TEXT,
    "score": FLOAT, "chance": FLOAT, "best": FLOAT, "norm_score": FLOAT,
}  # fmt: skip


def _references(inputs: Inputs, run: TrainRun) -> list[tuple[str, TrainRun, int | None]]:
    """(role, run, step) of the models a two-task run is compared with: the model tuned
    on A alone (a sequential run's own B-phase start; a shuffled run's reference model),
    and for shuffled runs also the registered model tuned on B alone, where there is one."""
    if run.mode == "sequential":
        return [("A", run, 0)]
    out = []
    uri = run.params.get("reference_model", "")
    if tracking.is_model_uri(uri):
        out.append(("A", inputs.store.source_run(uri), None))
    alone_b = [r for r in inputs.full_fine_tuning(run.task) if r.seed == run.seed]
    alone_b = [r for r in alone_b if r.registered_as and r.root_model == run.root_model]
    if alone_b:
        out.append(("B", alone_b[0], None))
    return out


def forgetting_summary(scores: pd.DataFrame) -> pd.DataFrame:
    """Per two-task run and scored task: the normalized score at the first and the last
    checkpoint, and the change. For A in a sequential run the drop is what was forgotten
    (`forgotten`); B's rise is what was learned; a shuffled run learns both from the start.
    Rows in the order of their runs' settings, not of their random run ids, so that two
    stores of one study list them alike."""
    rows = []
    for (run_id, role), g in scores.groupby(["run_id", "scored"]):
        g = g.sort_values("step")
        norm = g.norm_score.to_numpy()
        sequential_a = g["mode"].iloc[0] == "sequential" and role == "A"
        rows.append(
            {"run_id": run_id, "mode": g["mode"].iloc[0], "task_a": g.task_a.iloc[0],
             "task_b": g.task_b.iloc[0], "scored": role, "task": g.task.iloc[0],
             "first": norm[0], "last": norm[-1], "seed": g.seed.iloc[0],
             "forgotten": forgotten(norm) if sequential_a and len(norm) >= 2 else np.nan}
        )  # fmt: skip
    order = ["mode", "task_a", "task_b", "seed", "scored", "run_id"]
    return typed(rows, FORGETTING_SUMMARY_COLUMNS).sort_values(order, ignore_index=True)


FORGETTING_SUMMARY_COLUMNS = {"run_id": TEXT, "mode": TEXT, "task_a": TEXT, "task_b": TEXT,
                              "scored": TEXT, "task": TEXT, "first": FLOAT, "last": FLOAT,
                              "forgotten": FLOAT, "seed": INT}  # fmt: skip
