"""Everything MLflow: the only module that spells a param, tag, metric key, artifact
path, registered-model name or URI scheme, and that knows how to find runs again.

    mlflow ui --backend-store-uri sqlite:///mlflow.db    # what these names look like

Where runs go is MLflow's own choice: $MLFLOW_TRACKING_URI, else MLflow's default
store (`sqlite:///mlflow.db` in the working folder). `mlflow run` sets the run. MLflow
itself is imported on first use, so configs and sweep specs use these names without
loading it. The local tracking server a sweep starts is `bertrep.tracking.server`.
"""

from __future__ import annotations

import importlib
import math
import os
import signal
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bertrep import env


class _OnFirstUse:
    """A module imported when an attribute of it is first used."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        return getattr(importlib.import_module(self._name), attr)


# Importing MLflow takes seconds; configs and sweep specs use the names below without it.
mlflow = _OnFirstUse("mlflow")

DEFAULT_EXPERIMENT = "bertrep"


def study_experiment(setting: str) -> str:
    """The experiment a study's stages log into (bertrep-quick), so that two settings in
    one store stay apart in the UI."""
    return f"{DEFAULT_EXPERIMENT}-{setting}"


# URI schemes
MODELS_URI = "models:/"  # models:/<name>/<version>, models:/<name>@<alias>
LOGGED_MODELS_URI = "models:/m-"  # models:/<model id>: a logged model, not a registered one
RUNS_URI = "runs:/"  # runs:/<run id>/<artifact path>
MODEL_URIS = (MODELS_URI, RUNS_URI)  # what base_model and reference_model may name
ARTIFACTS_URI = "mlflow-artifacts:/"  # artifacts proxied by a tracking server
HTTP_URI = "http://"
SERVER_URIS = (HTTP_URI, "https://")  # a tracking server (one writer)
SQLITE_URI = "sqlite:///"
FILE_URI = "file://"

# MLflow's own tags
PARENT_RUN = "mlflow.parentRunId"  # the UI nests a child under it
RUN_NAME = "mlflow.runName"

# tags
KIND = "bertrep.kind"
TRAIN_KIND = "train"  # the KIND of a training run
SWEEP_KIND = "sweep"  # the KIND of a sweep's parent run
TASK = "task"
BASE_MODEL = "base_model"
SOURCE_TASK = "source_task"
FROZEN_LAYERS = "frozen_layers"
SEED = "seed"
CONFIG_KEY = "config_key"
DIVERGED = "diverged"
DIVERGED_REASON = "diverged_reason"
FAILURE_REASON = "failure_reason"  # why a run ended FAILED (the exception, a dead worker)
TRAIN_FILE = "train_file"
EVAL_FILE = "eval_file"
NUM_LAYERS = "num_layers"
MODEL_TYPE = "model_type"  # the encoder's (config.model_type): its family
REGISTERED_AS = "registered_as"
MODE = "mode"
BEST_ORIGIN = "best_origin"  # where best_B came from (the experiment, best_score, none)
BEST_SOURCE = BEST_ORIGIN  # the old name of the constant, until its users move
RUN_ID = "run_id"  # on a registered model version: the run it came from

# metrics
TRAIN_PHASE = "train"
A_PHASE = "train_a"  # the A phase of a sequential run


def phase_metric(phase: str, name: str) -> str:
    """Training metrics of a phase: train/loss, or train_a/loss for the A phase of a
    sequential run."""
    return f"{phase}/{name}"


def eval_metric(name: str, task: str | None = None) -> str:
    """eval/<name> for the run's own task; eval/<task>/<name> for the other task of a
    two-task run."""
    return f"eval/{task}/{name}" if task else f"eval/{name}"


def drift_metric(probe_task: str, layer: int) -> str:
    """CKA of hidden state `layer` against the model fine-tuned on A alone."""
    return f"drift/{probe_task}/layer_{layer}"


LOSS = phase_metric(TRAIN_PHASE, "loss")
LR = phase_metric(TRAIN_PHASE, "lr")
THROUGHPUT = phase_metric(TRAIN_PHASE, "examples_per_s")
# updates done: fewer than max_steps where the run stopped early or its loss went non-finite
UPDATES = phase_metric(TRAIN_PHASE, "updates")
CHANCE = eval_metric("chance")
NORM_SCORE = eval_metric("norm_score")
BEST_SCORE = "eval/best"
FINAL_SCORE = "final/score"
FINAL_NORM_SCORE = "final/norm_score"
ARTIFACT_BYTES = "artifacts/bytes"  # what a run stored: tables, checkpoint or model

# artifacts
CHECKPOINT = "checkpoint"  # a run's model as bertrep writes it (model.save_checkpoint)
MODEL_NAME = "model"  # the MLflow Model a source run logs (mlmodel.log_model)
MODEL_META = "bertrep"  # its MLmodel metadata key: what model.load_model needs
CONFIG_FILE = "config.json"


def probe_artifact(task: str) -> str:
    return f"probes/{task}.parquet"


def activations_dir(task: str) -> str:
    return f"activations/{task}"


def activations_file(step: int) -> str:
    return f"step_{step}.parquet"


def activations_step(path: str) -> int:
    """The step of an activation table's artifact path (.../step_<step>.parquet)."""
    return int(Path(path).stem.removeprefix("step_"))


# activations_from.<task>: on a run whose every hidden state equals its start model's
# (all layers frozen), the runs:/ URI of the table the start model's run logged instead
ACTIVATIONS_FROM = "activations_from."


def activations_from_tag(task: str) -> str:
    return f"{ACTIVATIONS_FROM}{task}"


def activations_from(tags: dict[str, str]) -> dict[str, tuple[str, str]]:
    """{probe task: (run id, artifact path)} of the tables a run references (its
    activations_from.<task> tags)."""
    out = {}
    for key, uri in tags.items():
        if key.startswith(ACTIVATIONS_FROM) and uri.startswith(RUNS_URI):
            run_id, _, path = uri.removeprefix(RUNS_URI).partition("/")
            out[key.removeprefix(ACTIVATIONS_FROM)] = (run_id, path)
    return out


# An own task's file (tag task_file.<name>), content digest and label order as read
TASK_FILE = "task_file."
TASK_DIGEST = "task_digest."
TASK_LABELS = "task_labels."

PROBE_CONTEXT = "probe"  # the context of a run's probe sets among its MLflow dataset inputs
PROBE_TAG = "probe."  # probe.<task>: the digest of the run's probe set of that task
EXTRACT_MODE = "extract"  # the mode of a run that only reads a model out on probe sets
BASE_SOURCE = "base"  # the source_task of a run from the pretrained model


def probe_tag(task: str) -> str:
    return f"{PROBE_TAG}{task}"


def probe_digests(tags: dict[str, str]) -> dict[str, str]:
    """{probe task: digest} from a run's tags."""
    return {k[len(PROBE_TAG) :]: v for k, v in tags.items() if k.startswith(PROBE_TAG)}


WORD_PROBE_TAG = "word_probe."  # word_probe.<task>: its word probe set's digest


def word_probe_tag(task: str) -> str:
    return f"{WORD_PROBE_TAG}{task}"


def word_probe_digests(tags: dict[str, str]) -> dict[str, str]:
    """{probe task: word probe digest} from a run's tags (runs with word tables)."""
    return {k[len(WORD_PROBE_TAG) :]: v for k, v in tags.items() if k.startswith(WORD_PROBE_TAG)}


def words_dir(task: str) -> str:
    """Where a run's word tables of a probe task lie (beside activations/<task>)."""
    return f"words/{task}"


def registered_model_name(task: str) -> str:
    return f"bertrep-{task}"


def parse_model_uri(uri: str) -> tuple[str, str]:
    """models:/<name>/<version> -> (name, version)."""
    name, _, version = uri.removeprefix(MODELS_URI).partition("/")
    if not uri.startswith(MODELS_URI) or not name or not version.isdigit():
        raise ValueError(f"{uri!r} is not a models:/<name>/<version> URI")
    return name, version


def is_model_uri(value: str) -> bool:
    """A models:/ or runs:/ URI: a model to download from MLflow, not a folder or hub id."""
    return value.startswith(MODEL_URIS)


def is_server_uri(uri: str) -> bool:
    return uri.startswith(SERVER_URIS)


def client() -> mlflow.MlflowClient:
    return mlflow.MlflowClient()


def metric_entities(values: dict[str, float], step: int = 0) -> list:
    now = int(time.time() * 1000)
    return [mlflow.entities.Metric(k, float(v), now, step) for k, v in values.items()]


# --- a training run ---


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def end_killed_on_sigterm() -> None:
    """SIGTERM (kill, a scheduler's stop) raises KeyboardInterrupt in this process, so
    its run ends KILLED (`start_run`), not left RUNNING."""
    signal.signal(signal.SIGTERM, _interrupt)


@contextmanager
def start_run(
    experiment_name: str = "", run_name: str | None = None, tags: dict | None = None
) -> Iterator[mlflow.ActiveRun]:
    """Start (or, under `mlflow run`, resume) a run; on an exception it ends FAILED,
    on Ctrl-C KILLED, never left RUNNING."""
    if experiment_name:
        mlflow.set_experiment(experiment_name)
    elif not any(
        os.environ.get(k)
        for k in (env.MLFLOW_RUN_ID, env.MLFLOW_EXPERIMENT_NAME, env.MLFLOW_EXPERIMENT_ID)
    ):
        mlflow.set_experiment(DEFAULT_EXPERIMENT)
    run = mlflow.start_run(run_name=run_name, tags=tags)
    try:
        yield run
    except KeyboardInterrupt:
        mlflow.end_run("KILLED")
        raise
    except BaseException as error:
        try:
            mlflow.set_tag(FAILURE_REASON, f"{type(error).__name__}: {error}"[:5000])
        except Exception:  # the store may be what failed: the status matters more
            pass
        finally:
            mlflow.end_run("FAILED")
        raise
    mlflow.end_run("FINISHED")


def log_config(params: dict[str, str]) -> None:
    """Log the resolved config: params (those `mlflow run` has not logged already, in
    the user's spelling) and the exact values as `config.json`."""
    run = mlflow.active_run()
    existing = client().get_run(run.info.run_id).data.params
    mlflow.log_params({k: v for k, v in params.items() if k not in existing})
    mlflow.log_dict(params, CONFIG_FILE)


def set_tags(tags: dict) -> None:
    mlflow.set_tags({k: str(v) for k, v in tags.items()})


class MetricLogger:
    """Buffers metrics and sends them in batches (one request per `every` points)."""

    def __init__(self, run_id: str, every: int = 200) -> None:
        self.client = client()
        self.run_id = run_id
        self.every = every
        self.buffer: list = []

    def log(self, metrics: dict[str, float], step: int) -> None:
        values = {k: float(v) for k, v in metrics.items()}
        # MLflow stores NaN but not inf; a diverged loss is still worth seeing.
        values = {k: math.copysign(1e308, v) if math.isinf(v) else v for k, v in values.items()}
        self.buffer += metric_entities(values, step)
        if len(self.buffer) >= self.every:
            self.flush()

    def flush(self) -> None:
        for start in range(0, len(self.buffer), 1000):  # log_batch takes 1000 at most
            self.client.log_batch(self.run_id, metrics=self.buffer[start : start + 1000])
        self.buffer = []


def probe_dataset_name(task: str) -> str:
    return f"{task}-probe"


def log_probe_input(rows, meta: dict) -> None:
    """A probe set as an MLflow dataset input of the active run: the UI's Dataset column
    shows it, and `datasets.digest = '<probe digest>'` finds every run read out on it."""
    with warnings.catch_warnings():  # neither applies: a local file; ids never missing
        warnings.filterwarnings("ignore", "The specified dataset source can be interpreted")
        warnings.filterwarnings("ignore", "Hint: Inferred schema contains integer")
        # A local file names its source; MLflow resolves no source for a hub split
        # (hf://...), which the probe set's tags and digest identify anyway.
        source = meta["file"] if os.path.isfile(meta["file"]) else None
        dataset = mlflow.data.from_pandas(
            rows, source=source, name=probe_dataset_name(meta["task"]), digest=meta["digest"]
        )
        tags = {k: str(meta[k]) for k in ("task", "split", "rows", "max_length", "seed")}
        try:
            mlflow.log_input(dataset, context=PROBE_CONTEXT, tags=tags)  # infers the schema
        except mlflow.exceptions.MlflowException as error:
            # Two runs that log a new probe set at once both find it missing and insert
            # it; the second insert fails. The set is stored now: logging again links it.
            if "UNIQUE constraint failed" not in str(error):
                raise
            mlflow.log_input(dataset, context=PROBE_CONTEXT, tags=tags)


def log_artifact(local_path: str | Path, artifact_path: str | None = None) -> None:
    local_path = Path(local_path)
    if local_path.is_dir():
        mlflow.log_artifacts(str(local_path), artifact_path)
    else:
        mlflow.log_artifact(str(local_path), artifact_path)


# --- sweeps: parent runs, trial children, resume ---

SWEEP_NAME = "sweep.name"
SWEEP_DIGEST = "sweep.digest"  # digest of the spec after overrides: the identity for --resume
SWEEP_SPEC = "sweep.spec"  # the spec after overrides, as YAML
SWEEP_RESUMED = "sweep.resumed"  # on an `mlflow run` run that resumed an earlier parent: its id
RAY_NODE_ID = "ray_node_id"
RAY_WORKER = "ray_worker"  # hostname:pid of the process that ran the trial
TRIAL_STARTUP = "trial/startup_s"  # trial start (setup/reset_config) to the first step's end
TRIAL_INDEX = "trial/worker_index"  # 1 for a worker's first trial, 2 for its second, ...
SWEEP_TRIALS = "sweep/trials"
SWEEP_SKIPPED = "sweep/skipped"  # trials whose config key already had a FINISHED run
SWEEP_FAILED = "sweep/failed"
SWEEP_ARTIFACT_BYTES = "sweep/artifact_bytes"  # summed over the runs the sweep trained
SWEEP_SPEC_FILE = "sweep/spec.yaml"
SWEEP_TRIALS_FILE = "sweep/trials.json"
SWEEP_KIND_TAG = "sweep.kind"  # single | aufc | forgetting
SWEEP_RUNS_FILE = "sweep/runs.json"  # config key -> FINISHED run of every trial and source


# --- the analysis stage ---

ANALYSIS_KIND = "analysis"  # the KIND of an analysis run
ANALYSIS_NAME = "analysis.name"
ANALYSIS_SWEEPS = "analysis.sweeps"  # kind=parent run id,... of the sweeps it read
TABLES_DIR = "tables"  # tables/<name>.parquet
FIGURES_DIR = "figures"  # figures/<name>.png and .pdf
ANALYSIS_SUMMARY = "analysis/summary.md"
ANALYSIS_SPEC = "analysis/spec.yaml"
ANALYSIS_TRACEBACK = "analysis/traceback.txt"  # a failed analysis's full traceback
ANALYSIS_DOWNLOADS = "analysis/downloads"  # activation tables fetched from the store
ANALYSIS_CACHE_HITS = "analysis/cache_hits"  # ... and found in the local cache
ANALYSIS_MISSING = "analysis/missing"  # missing inputs listed in the summary
ANALYSIS_FIGURES = "analysis/figures"  # figure files drawn
ANALYSIS_SECONDS = "analysis/seconds"


def table_artifact(name: str) -> str:
    return f"{TABLES_DIR}/{name}.parquet"
