"""Everything MLflow: the only module that spells a param, tag, metric key, artifact
path or registered-model name, and that knows how to find runs again.

Where runs go is MLflow's own choice: $MLFLOW_TRACKING_URI, else MLflow's default
store (`sqlite:///mlflow.db` in the working folder). `mlflow run` sets the run.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mlflow
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

DEFAULT_EXPERIMENT = "bertrep"

# tags
TASK = "task"
BASE_MODEL = "base_model"
SOURCE_TASK = "source_task"
FROZEN_LAYERS = "frozen_layers"
SEED = "seed"
CONFIG_KEY = "config_key"
DIVERGED = "diverged"
DIVERGED_REASON = "diverged_reason"
KIND = "bertrep.kind"  # "train" for a training run
TRAIN_FILE = "train_file"
EVAL_FILE = "eval_file"
NUM_LAYERS = "num_layers"
REGISTERED_AS = "registered_as"

# metrics
LOSS = "train/loss"
LR = "train/lr"
THROUGHPUT = "train/examples_per_s"
CHANCE = "eval/chance"
NORM_SCORE = "eval/norm_score"
BEST_SCORE = "eval/best"
FINAL_SCORE = "final/score"
FINAL_NORM_SCORE = "final/norm_score"

# artifacts
CHECKPOINT = "checkpoint"
CONFIG_FILE = "config.json"


def eval_metric(name: str) -> str:
    return f"eval/{name}"


def probe_artifact(task: str) -> str:
    return f"probes/{task}.parquet"


def activations_dir(task: str) -> str:
    return f"activations/{task}"


def activations_file(step: int) -> str:
    return f"step_{step}.parquet"


@contextmanager
def start_run(
    experiment_name: str = "", run_name: str | None = None, tags: dict | None = None
) -> Iterator[mlflow.ActiveRun]:
    """Start (or, under `mlflow run`, resume) a run; on an exception it ends FAILED,
    on Ctrl-C KILLED, never left RUNNING."""
    if experiment_name:
        mlflow.set_experiment(experiment_name)
    elif not os.environ.get("MLFLOW_RUN_ID") and not os.environ.get("MLFLOW_EXPERIMENT_NAME"):
        if not os.environ.get("MLFLOW_EXPERIMENT_ID"):
            mlflow.set_experiment(DEFAULT_EXPERIMENT)
    run = mlflow.start_run(run_name=run_name, tags=tags)
    try:
        yield run
    except KeyboardInterrupt:
        mlflow.end_run("KILLED")
        raise
    except BaseException:
        mlflow.end_run("FAILED")
        raise
    mlflow.end_run("FINISHED")


def log_config(params: dict[str, str]) -> None:
    """Log the resolved config: params (those `mlflow run` has not logged already, in
    the user's spelling) and the exact values as `config.json`."""
    run = mlflow.active_run()
    existing = MlflowClient().get_run(run.info.run_id).data.params
    mlflow.log_params({k: v for k, v in params.items() if k not in existing})
    mlflow.log_dict(params, CONFIG_FILE)


def set_tags(tags: dict) -> None:
    mlflow.set_tags({k: str(v) for k, v in tags.items()})


class MetricLogger:
    """Buffers metrics and sends them in batches (one request per `every` points)."""

    def __init__(self, run_id: str, every: int = 200) -> None:
        self.client = MlflowClient()
        self.run_id = run_id
        self.every = every
        self.buffer: list[Metric] = []

    def log(self, metrics: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        for key, value in metrics.items():
            value = float(value)
            # MLflow stores NaN but not inf; a diverged loss is still worth seeing.
            if math.isinf(value):
                value = math.copysign(1e308, value)
            self.buffer.append(Metric(key, value, now, step))
        if len(self.buffer) >= self.every:
            self.flush()

    def flush(self) -> None:
        for start in range(0, len(self.buffer), 1000):  # log_batch takes 1000 at most
            self.client.log_batch(self.run_id, metrics=self.buffer[start : start + 1000])
        self.buffer = []


def log_artifact(local_path: str | Path, artifact_path: str | None = None) -> None:
    local_path = Path(local_path)
    if local_path.is_dir():
        mlflow.log_artifacts(str(local_path), artifact_path)
    else:
        mlflow.log_artifact(str(local_path), artifact_path)


def reference_best(task: str, base_model: str, metric: str) -> tuple[float, int]:
    """best_B: mean final score of full fine-tuning (k = 0) of `task` from the pretrained
    `base_model` over the finished, non-diverged runs of the active experiment.
    Returns (mean, number of runs); (nan, 0) when there are none."""
    experiment = mlflow.get_experiment_by_name(_experiment_name()) if _experiment_name() else None
    ids = [experiment.experiment_id] if experiment else None
    query = (
        f"tags.{TASK} = '{task}' and tags.{FROZEN_LAYERS} = '0' "
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
    return os.environ.get("MLFLOW_EXPERIMENT_NAME", "")


def registered_model_name(task: str) -> str:
    return f"bertrep-{task}"


def register_checkpoint(run_id: str, task: str, tags: dict) -> str:
    """Register the run's checkpoint as a new version of `bertrep-<task>`; its URI."""
    client = MlflowClient()
    name = registered_model_name(task)
    try:
        client.get_registered_model(name)
    except mlflow.exceptions.MlflowException:
        client.create_registered_model(name, tags={TASK: task})
    version = client.create_model_version(
        name,
        source=f"runs:/{run_id}/{CHECKPOINT}",
        run_id=run_id,
        tags={k: str(v) for k, v in tags.items()} | {"run_id": run_id},
    )
    return f"models:/{name}/{version.version}"


def find_registered(task: str, tags: dict) -> str | None:
    """The newest registered version of `bertrep-<task>` carrying `tags`, as a
    models:/ URI, or None."""
    query = f"name = '{registered_model_name(task)}'" + "".join(
        f" and tags.{k} = '{v}'" for k, v in tags.items()
    )
    versions = MlflowClient().search_model_versions(query)
    if not versions:
        return None
    newest = max(versions, key=lambda v: int(v.version))
    return f"models:/{newest.name}/{newest.version}"


def download_model(uri: str) -> str:
    """A local folder holding the checkpoint at an MLflow URI (models:/name/version,
    models:/name@alias, runs:/id/checkpoint). Downloads are cached by resolved source."""
    source = uri
    if uri.startswith("models:/"):
        name, _, ref = uri[len("models:/") :].partition("/")
        if "@" in name:
            name, alias = name.split("@", 1)
            version = MlflowClient().get_model_version_by_alias(name, alias)
        elif ref:
            version = MlflowClient().get_model_version(name, ref)
        else:
            raise ValueError(f"model URI {uri} names no version: use models:/NAME/VERSION")
        source = version.source
    key = hashlib.sha256(f"{mlflow.get_tracking_uri()}|{source}".encode()).hexdigest()[:20]
    root = Path(os.environ.get("BERTREP_CACHE_DIR", Path.home() / ".cache" / "bertrep"))
    target = root / "models" / key
    done = target / ".complete"
    if not done.exists():
        target.mkdir(parents=True, exist_ok=True)
        local = mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(target))
        (target / ".path").write_text(local)
        done.touch()
    return (target / ".path").read_text()
