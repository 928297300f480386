"""best_B, the score a target's normalized scores divide by: found among the finished runs
of the experiment (see docs/definitions.md, "Normalized score")."""

from __future__ import annotations

import math
import os

from bertrep import env
from bertrep.tracking import (
    BASE_MODEL,
    DIVERGED,
    FINAL_SCORE,
    FROZEN_LAYERS,
    MODE,
    SOURCE_TASK,
    TASK,
    mlflow,
)


def reference_best(task: str, base_model: str) -> tuple[float, int]:
    """best_B: mean final score of full fine-tuning (k = 0) of `task` from the pretrained
    `base_model` over the finished, non-diverged runs of the active experiment.
    Returns (mean, number of runs); (nan, 0) when there are none."""
    name = _experiment_name()
    experiment = mlflow.get_experiment_by_name(name) if name else None
    ids = [experiment.experiment_id] if experiment else None
    query = (
        f"tags.{TASK} = '{task}' and tags.{FROZEN_LAYERS} = '0' and tags.{MODE} = 'single' "
        f"and tags.{SOURCE_TASK} = 'base' and tags.{BASE_MODEL} = '{base_model}' "
        "and attributes.status = 'FINISHED'"
    )
    runs = mlflow.search_runs(
        experiment_ids=ids, filter_string=query, output_format="list", search_all_experiments=True
    )
    scores = [
        r.data.metrics[FINAL_SCORE]
        for r in runs
        if FINAL_SCORE in r.data.metrics and r.data.tags.get(DIVERGED) != "true"
    ]
    if not scores:
        return math.nan, 0
    return sum(scores) / len(scores), len(scores)


def _experiment_name() -> str:
    run = mlflow.active_run()
    if run is not None:
        return mlflow.get_experiment(run.info.experiment_id).name
    return os.environ.get(env.MLFLOW_EXPERIMENT_NAME, "")
