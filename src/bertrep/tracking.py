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
MODE = "mode"
BEST_SOURCE = "best_source"

# metrics


def phase_metric(phase: str, name: str) -> str:
    """Training metrics of a phase: train/loss, or source/loss for the A phase of a
    sequential run."""
    return f"{phase}/{name}"


def eval_metric(name: str, task: str | None = None) -> str:
    """eval/<name> for the run's own task; eval/<task>/<name> for the other task of a
    two-task run."""
    return f"eval/{task}/{name}" if task else f"eval/{name}"


def drift_metric(probe_task: str, layer: int) -> str:
    """CKA of hidden state `layer` against the model fine-tuned on A alone."""
    return f"cka/{probe_task}/layer_{layer}"


LOSS = phase_metric("train", "loss")
LR = phase_metric("train", "lr")
THROUGHPUT = phase_metric("train", "examples_per_s")
CHANCE = eval_metric("chance")
NORM_SCORE = eval_metric("norm_score")
BEST_SCORE = "eval/best"
FINAL_SCORE = "final/score"
FINAL_NORM_SCORE = "final/norm_score"

# artifacts
CHECKPOINT = "checkpoint"
CONFIG_FILE = "config.json"


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


def reference_best(task: str, base_model: str) -> tuple[float, int]:
    """best_B: mean final score of full fine-tuning (k = 0) of `task` from the pretrained
    `base_model` over the finished, non-diverged runs of the active experiment.
    Returns (mean, number of runs); (nan, 0) when there are none."""
    experiment = mlflow.get_experiment_by_name(_experiment_name()) if _experiment_name() else None
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
    return os.environ.get("MLFLOW_EXPERIMENT_NAME", "")


def registered_model_name(task: str) -> str:
    return f"bertrep-{task}"


def register_checkpoint(run_id: str, task: str, tags: dict) -> str:
    """Register the run's checkpoint as a new version of `bertrep-<task>`; its URI."""
    client = MlflowClient()
    name = registered_model_name(task)
    ensure_registered_model(task)
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


# --- sweeps: parent runs, trial children, resume, the local tracking server ---

PARENT_RUN = "mlflow.parentRunId"  # MLflow's own tag: the UI nests a child under it
SWEEP_KIND = "sweep"  # the KIND tag of a sweep's parent run
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
SWEEP_SPEC_FILE = "sweep/spec.yaml"
SWEEP_TRIALS_FILE = "sweep/trials.json"

SERVER_START_TIMEOUT_S = 120.0
SERVER_ARTIFACTS = "mlartifacts"  # beside the store, as `mlflow server` names it


def is_server_uri(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def store_uri() -> str:
    """The store runs go to: $MLFLOW_TRACKING_URI, else MLflow's default, local paths
    absolute (trials run in other working folders)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or mlflow.get_tracking_uri()
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{Path(uri[len('sqlite:///') :]).resolve()}"
    if "://" not in uri:
        return Path(uri).resolve().as_uri()
    return uri


def _artifacts_beside(store: str) -> Path:
    if store.startswith("sqlite:///"):
        return Path(store[len("sqlite:///") :]).parent / SERVER_ARTIFACTS
    if store.startswith("file://"):
        return Path(store[len("file://") :]).parent / SERVER_ARTIFACTS
    return Path.cwd().resolve() / SERVER_ARTIFACTS


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, proc, log: Path, timeout_s: float) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"mlflow server exited ({proc.returncode}): {log.read_text()[-2000:]}"
            )
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            time.sleep(0.5)  # not listening yet: poll the health endpoint again
    raise TimeoutError(f"mlflow server at {url} not healthy after {timeout_s}s; log: {log}")


@contextmanager
def serve(store: str, log_dir: Path) -> Iterator[str]:
    """One writer for parallel trials: serve a local store through an `mlflow server` on
    loopback and yield its URL (an http(s) store is yielded as it is). The server runs in
    this process group, so killing the sweep's group kills it too."""
    import subprocess
    import sys

    if is_server_uri(store):
        yield store
        return
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"mlflow-server-{port}.log"
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store]
    cmd += ["--artifacts-destination", str(_artifacts_beside(store))]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_healthy(url, proc, log, SERVER_START_TIMEOUT_S)
        yield url
    finally:
        _stop_tree(proc.pid)


def _stop_tree(pid: int) -> None:
    """Stop a process and its children (`mlflow server` runs uvicorn as a child)."""
    import psutil

    try:
        root = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return
    procs = [*root.children(recursive=True), root]
    for p in procs:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=15)
    for p in alive:
        p.kill()
    psutil.wait_procs(alive, timeout=5)


def experiment_id(name: str) -> str:
    """The id of experiment `name`, created if missing."""
    found = mlflow.get_experiment_by_name(name)
    return found.experiment_id if found else mlflow.create_experiment(name)


def sweep_experiment() -> str:
    """The experiment a sweep logs to: `mlflow run`'s, else $MLFLOW_EXPERIMENT_NAME or
    $MLFLOW_EXPERIMENT_ID, else the project's default."""
    if os.environ.get("MLFLOW_RUN_ID"):
        run = MlflowClient().get_run(os.environ["MLFLOW_RUN_ID"])
        return run.info.experiment_id
    if os.environ.get("MLFLOW_EXPERIMENT_NAME"):
        return experiment_id(os.environ["MLFLOW_EXPERIMENT_NAME"])
    return os.environ.get("MLFLOW_EXPERIMENT_ID") or experiment_id(DEFAULT_EXPERIMENT)


def experiment_name(exp_id: str) -> str:
    return MlflowClient().get_experiment(exp_id).name


def _search(exp_id: str, query: str) -> list:
    return mlflow.search_runs(experiment_ids=[exp_id], filter_string=query, output_format="list")


def unfinished_parent(exp_id: str, digest: str) -> str | None:
    """The newest parent run of a sweep with this spec digest that did not finish."""
    query = (
        f"tags.`{KIND}` = '{SWEEP_KIND}' and tags.`{SWEEP_DIGEST}` = '{digest}' "
        "and attributes.status != 'FINISHED'"
    )
    runs = _search(exp_id, query)
    return max(runs, key=lambda r: r.info.start_time).info.run_id if runs else None


def start_parent(exp_id: str, tags: dict, resume_id: str | None = None) -> str:
    """The sweep's parent run: `mlflow run`'s own run, else a new one; with `resume_id`,
    that earlier parent reopened (and `mlflow run`'s run tagged as resuming it)."""
    client = MlflowClient()
    tags = {k: str(v) for k, v in tags.items()}
    own = os.environ.get("MLFLOW_RUN_ID")
    if resume_id:
        client.update_run(resume_id, status="RUNNING")
        if own and own != resume_id:
            client.set_tag(own, SWEEP_RESUMED, resume_id)
        return resume_id
    if own:
        for key, value in tags.items():
            client.set_tag(own, key, value)
        return own
    return client.create_run(exp_id, tags=tags).info.run_id


def children(parent_id: str, status: str | None = None) -> list:
    query = f"tags.`{PARENT_RUN}` = '{parent_id}'"
    if status:
        query += f" and attributes.status = '{status}'"
    run = MlflowClient().get_run(parent_id)
    return _search(run.info.experiment_id, query)


def end_stale_children(parent_id: str, status: str = "KILLED") -> int:
    """Mark the parent's children still RUNNING (their process is gone) as `status`."""
    stale = children(parent_id, "RUNNING")
    for run in stale:
        MlflowClient().set_terminated(run.info.run_id, status)
    return len(stale)


def end_sweep(store: str, parent_id: str, status: str) -> None:
    """End a sweep on its store directly (its server may be gone after Ctrl-C): no child
    left RUNNING, the parent ended with `status`."""
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(store)
    try:
        end_stale_children(parent_id)
        MlflowClient().set_terminated(parent_id, status)
    finally:
        mlflow.set_tracking_uri(previous)


def finished_keys() -> set[str]:
    """Config keys of the FINISHED training runs of every experiment: trials to skip (a
    config key is a run's identity wherever it was logged)."""
    query = f"tags.`{KIND}` = 'train' and attributes.status = 'FINISHED'"
    runs = mlflow.search_runs(
        filter_string=query, output_format="list", search_all_experiments=True
    )
    return {r.data.tags[CONFIG_KEY] for r in runs if CONFIG_KEY in r.data.tags}


def ensure_registered_model(task: str) -> None:
    """Create `bertrep-<task>` unless it exists; safe when parallel trials race to it."""
    client = MlflowClient()
    name = registered_model_name(task)
    try:
        client.get_registered_model(name)
    except mlflow.exceptions.MlflowException:
        try:
            client.create_registered_model(name, tags={TASK: task})
        except mlflow.exceptions.MlflowException as e:
            if e.error_code != "RESOURCE_ALREADY_EXISTS":
                raise


def first_step_time(run_id: str) -> float:
    """Wall time (s since the epoch) at which the run logged its first training loss."""
    history = MlflowClient().get_metric_history(run_id, LOSS)
    return min(m.timestamp for m in history) / 1000 if history else math.nan


def log_trial_stats(run_id: str, startup_s: float, index: int) -> None:
    client = MlflowClient()
    client.log_batch(
        run_id,
        metrics=[
            Metric(TRIAL_STARTUP, startup_s, int(time.time() * 1000), 0),
            Metric(TRIAL_INDEX, index, int(time.time() * 1000), 0),
        ],
    )


def log_sweep(parent_id: str, spec_yaml: str, trials: list[dict]) -> None:
    """The spec (after overrides) and its trial list as artifacts of the parent run."""
    import json

    client = MlflowClient()
    client.log_text(parent_id, spec_yaml, SWEEP_SPEC_FILE)
    client.log_text(parent_id, json.dumps(trials, indent=1), SWEEP_TRIALS_FILE)


def log_counts(parent_id: str, counts: dict[str, float]) -> None:
    now = int(time.time() * 1000)
    metrics = [Metric(k, v, now, 0) for k, v in counts.items()]
    MlflowClient().log_batch(parent_id, metrics=metrics)
