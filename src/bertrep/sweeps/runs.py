"""A sweep's runs in MLflow: its parent run, the trial children, resume, what is done.

    parent = start_parent(exp_id, tags)          # or an earlier parent, reopened
    done = finished_keys()                       # config keys with a FINISHED run
    end_sweep(store, parent, "FINISHED")         # no child left RUNNING

Every name (tag, metric, artifact path) comes from `tracking`.
"""

from __future__ import annotations

import json
import math
import os

from bertrep import env, tracking
from bertrep.tracking import metric_entities, mlflow


def experiment_id(name: str) -> str:
    """The id of experiment `name`, created if missing."""
    found = mlflow.get_experiment_by_name(name)
    return found.experiment_id if found else mlflow.create_experiment(name)


def sweep_experiment() -> str:
    """The experiment a sweep logs to: `mlflow run`'s, else $MLFLOW_EXPERIMENT_NAME or
    $MLFLOW_EXPERIMENT_ID, else the project's default."""
    if os.environ.get(env.MLFLOW_RUN_ID):
        return tracking.client().get_run(os.environ[env.MLFLOW_RUN_ID]).info.experiment_id
    if os.environ.get(env.MLFLOW_EXPERIMENT_NAME):
        return experiment_id(os.environ[env.MLFLOW_EXPERIMENT_NAME])
    return os.environ.get(env.MLFLOW_EXPERIMENT_ID) or experiment_id(tracking.DEFAULT_EXPERIMENT)


def experiment_name(exp_id: str) -> str:
    return tracking.client().get_experiment(exp_id).name


def _search(exp_id: str, query: str) -> list:
    return mlflow.search_runs(experiment_ids=[exp_id], filter_string=query, output_format="list")


def unfinished_parent(exp_id: str, digest: str) -> str | None:
    """The newest parent run of a sweep with this spec digest that did not finish."""
    query = (
        f"tags.`{tracking.KIND}` = '{tracking.SWEEP_KIND}' "
        f"and tags.`{tracking.SWEEP_DIGEST}` = '{digest}' and attributes.status != 'FINISHED'"
    )
    runs = _search(exp_id, query)
    return max(runs, key=lambda r: r.info.start_time).info.run_id if runs else None


def start_parent(exp_id: str, tags: dict, resume_id: str | None = None) -> str:
    """The sweep's parent run: `mlflow run`'s own run, else a new one; with `resume_id`,
    that earlier parent reopened (and `mlflow run`'s run tagged as resuming it)."""
    client = tracking.client()
    tags = {k: str(v) for k, v in tags.items()}
    own = os.environ.get(env.MLFLOW_RUN_ID)
    if resume_id:
        client.update_run(resume_id, status="RUNNING")
        if own and own != resume_id:
            client.set_tag(own, tracking.SWEEP_RESUMED, resume_id)
        return resume_id
    if own:
        for key, value in tags.items():
            client.set_tag(own, key, value)
        return own
    return client.create_run(exp_id, tags=tags).info.run_id


def children(parent_id: str, status: str | None = None) -> list:
    query = f"tags.`{tracking.PARENT_RUN}` = '{parent_id}'"
    if status:
        query += f" and attributes.status = '{status}'"
    return _search(tracking.client().get_run(parent_id).info.experiment_id, query)


def end_stale_children(parent_id: str, status: str = "KILLED") -> int:
    """Mark the parent's children still RUNNING (their process is gone) as `status`."""
    stale = children(parent_id, "RUNNING")
    for run in stale:
        tracking.client().set_terminated(run.info.run_id, status)
    return len(stale)


WORKER_DIED = (
    "its worker process {worker} died before the run ended (killed, out of memory, or its "
    "node lost); the sweep retries a trial up to resources.max_failures times"
)


def fail_dead_attempts(parent_id: str, config_key: str | None = None) -> int:
    """Mark the parent's children of this config key (all, without one) still RUNNING as
    FAILED, with the reason. Called when a trial starts (Tune starts an attempt only once
    the previous one ended, so a RUNNING run of its key lost its worker) and after each
    stage (every trial has ended then)."""
    client = tracking.client()
    dead = children(parent_id, "RUNNING")
    if config_key is not None:
        dead = [r for r in dead if r.data.tags.get(tracking.CONFIG_KEY) == config_key]
    for run in dead:
        worker = run.data.tags.get(tracking.RAY_WORKER, "?")
        client.set_tag(run.info.run_id, tracking.FAILURE_REASON, WORKER_DIED.format(worker=worker))
        client.set_terminated(run.info.run_id, "FAILED")
    return len(dead)


def end_sweep(store: str, parent_id: str, status: str) -> None:
    """End a sweep on its store directly (its server may be gone after Ctrl-C): no child
    left RUNNING, the parent ended with `status`."""
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(store)
    try:
        end_stale_children(parent_id)
        tracking.client().set_terminated(parent_id, status)
    finally:
        mlflow.set_tracking_uri(previous)


def finished_keys() -> set[str]:
    """Config keys of the FINISHED training runs of every experiment: trials to skip (a
    config key is a run's identity wherever it was logged)."""
    query = f"tags.`{tracking.KIND}` = '{tracking.TRAIN_KIND}' and attributes.status = 'FINISHED'"
    runs = mlflow.search_runs(
        filter_string=query, output_format="list", search_all_experiments=True
    )
    return {r.data.tags[tracking.CONFIG_KEY] for r in runs if tracking.CONFIG_KEY in r.data.tags}


def first_step_time(run_id: str) -> float:
    """Wall time (s since the epoch) at which the run logged its first training loss, or
    for a run that trains nothing (mode extract) at which it ended."""
    history = tracking.client().get_metric_history(run_id, tracking.LOSS)
    if history:
        return min(m.timestamp for m in history) / 1000
    end = tracking.client().get_run(run_id).info.end_time
    return end / 1000 if end else math.nan


def outcome(run_id: str) -> tuple[float, bool]:
    """A finished training run's final score (NaN for a read-out) and whether it diverged."""
    data = tracking.client().get_run(run_id).data
    diverged = data.tags.get(tracking.DIVERGED) == "true"
    return data.metrics.get(tracking.FINAL_SCORE, math.nan), diverged


def log_trial_stats(run_id: str, startup_s: float, index: int) -> None:
    tracking.client().log_batch(
        run_id,
        metrics=metric_entities({tracking.TRIAL_STARTUP: startup_s, tracking.TRIAL_INDEX: index}),
    )


def log_sweep(parent_id: str, spec_yaml: str, trials: list[dict]) -> None:
    """The spec (after overrides) and its trial list as artifacts of the parent run."""
    client = tracking.client()
    client.log_text(parent_id, spec_yaml, tracking.SWEEP_SPEC_FILE)
    client.log_text(parent_id, json.dumps(trials, indent=1), tracking.SWEEP_TRIALS_FILE)


def log_counts(parent_id: str, counts: dict[str, float]) -> None:
    tracking.client().log_batch(parent_id, metrics=metric_entities(counts))


def finished_runs(keys: list[str]) -> dict[str, str]:
    """{config key: run id} of the newest FINISHED training run of each key, any experiment."""
    return {key: run.info.run_id for key, run in _newest_finished(keys).items()}


def updates_done(keys: list[str]) -> dict[str, float]:
    """{config key: updates its newest FINISHED run did} (NaN for a run logged before
    runs counted them)."""
    found = _newest_finished(keys).items()
    return {key: run.data.metrics.get(tracking.UPDATES, math.nan) for key, run in found}


def _newest_finished(keys: list[str]) -> dict:
    wanted, out = set(keys), {}
    query = f"tags.`{tracking.KIND}` = '{tracking.TRAIN_KIND}' and attributes.status = 'FINISHED'"
    runs = mlflow.search_runs(
        filter_string=query, output_format="list", search_all_experiments=True,
        order_by=["attributes.start_time ASC"],
    )  # fmt: skip
    for r in runs:
        if r.data.tags.get(tracking.CONFIG_KEY) in wanted:
            out[r.data.tags[tracking.CONFIG_KEY]] = r
    return out


def sweep_kind(run) -> str:
    """single | aufc | forgetting: what kind of sweep a parent run is."""
    return run.data.tags.get(tracking.SWEEP_KIND_TAG, "")


def log_sweep_runs(parent_id: str, runs: dict[str, str]) -> None:
    """Which run stands for each of the sweep's configs (trained now or before)."""
    tracking.client().log_text(parent_id, json.dumps(runs, indent=1), tracking.SWEEP_RUNS_FILE)


def artifact_bytes(parent_id: str) -> int:
    """Bytes of artifacts stored by the runs this sweep trained (its children)."""
    query = f"tags.`{tracking.PARENT_RUN}` = '{parent_id}'"
    runs = mlflow.search_runs(
        filter_string=query, output_format="list", search_all_experiments=True
    )
    return int(sum(r.data.metrics.get(tracking.ARTIFACT_BYTES, 0) for r in runs))
