"""Ray Tune sweeps: a YAML grid of training runs, one MLflow parent run, one child per trial.

    python -m bertrep.sweep --spec sweeps/quick/aufc.yaml
    python -m bertrep.sweep --spec sweeps/smoke/aufc.yaml --overrides "max_steps=2,seed=[0]"
    python -m bertrep.sweep --spec sweeps/quick/aufc.yaml --resume     # continue a killed sweep
    mlflow run . -e sweep_aufc --env-manager local -P spec=sweeps/quick/aufc.yaml

A spec (see sweeps/README.md) names fixed training parameters, a grid (or a list of
grids) over any TrainConfig field, per-task parameters, how transfer sources are
trained, and per-trial resources. Trials run on a local Ray instance, or on the
cluster at $RAY_ADDRESS. Unless $MLFLOW_TRACKING_URI is an http(s) server, the sweep
serves its store through a local `mlflow server` so parallel trials have one writer.

A trial whose config key already has a FINISHED run in the experiment is skipped.
A trial with source_task A (not "base") starts from the registered model of A trained
with the same seed (target seed s uses source seed s); missing sources are trained
first, as an earlier stage of the same sweep.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import itertools
import json
import os
import re
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import yaml
from ray import tune

from bertrep import tracking
from bertrep.config import Runtime, TrainConfig
from bertrep.train import registers_source

KINDS = ("single", "aufc", "forgetting")
SPEC_KEYS = ("kind", "name", "description", "fixed", "grid", "per_task", "sources", "resources")
OUTPUT_DIR = "outputs"  # Ray Tune's trial folders and the tracking server's log, under cwd
# Environment the trials need on any node (Ray workers of a separate cluster do not
# inherit the driver's); MLFLOW_TRACKING_URI is added: the sweep's server.
FORWARDED_ENV = (
    "BERTREP_DATA_DIR",
    "BERTREP_CACHE_DIR",
    "HF_HOME",
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
)
# A source is full fine-tuning from the pretrained model: the sweep decides these.
SOURCE_FIXED = (
    "mode",
    "task",
    "seed",
    "source_task",
    "frozen_layers",
    "base_model",
    "save_checkpoint",
)
FIELDS = tuple(f.name for f in dataclasses.fields(TrainConfig))


@dataclass(frozen=True)
class Resources:
    cpus_per_trial: float = 1  # also the trial's torch threads, so trials never oversubscribe
    gpus_per_trial: float = 0.25  # used only where the cluster has GPUs; < 1 packs trials
    max_concurrent_trials: int = 0  # 0: as many as the resources allow


@dataclass(frozen=True)
class Spec:
    kind: str
    name: str
    fixed: dict[str, Any]
    grids: list[dict[str, list]]
    per_task: dict[str, dict[str, Any]] = field(default_factory=dict)
    sources: dict[str, Any] = field(default_factory=dict)
    resources: Resources = Resources()
    raw: dict = field(default_factory=dict)  # after overrides: what is tagged and digested
    path: str = ""

    def digest(self) -> str:
        blob = json.dumps(self.raw, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def yaml(self) -> str:
        return yaml.safe_dump(self.raw, sort_keys=False)


class SweepFailed(RuntimeError):
    """Some trials raised: their runs ended FAILED, the parent ends FAILED."""


# --- the spec: YAML + overrides -> validated Spec -> trial configs ---


def parse_overrides(text: str) -> dict[str, Any]:
    """`max_steps=10,seed=[0,1],resources.cpus_per_trial=2` -> {key: YAML value}."""
    out = {}
    for item in re.split(r",(?![^\[]*\])", text or ""):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"override {item!r} is not key=value")
        out[key.strip()] = yaml.safe_load(value)
    return out


def apply_overrides(raw: dict, overrides: dict[str, Any]) -> dict:
    """A dotted key sets that place in the spec. A training parameter wins everywhere:
    `k=v` sets it for every trial and source, `k=[a,b]` makes it the grid axis."""
    raw = copy.deepcopy(raw)
    grids = raw.get("grid") or {}
    raw["grid"] = grids = [grids] if isinstance(grids, dict) else grids
    if not grids:
        grids.append({})
    for key, value in overrides.items():
        if "." in key:
            *path, last = key.split(".")
            place = raw
            for part in path:
                place = place.setdefault(part, {})
            place[last] = value
            continue
        if key not in FIELDS:
            raise ValueError(f"override: unknown training parameter {key!r}")
        for section in [*grids, *(raw.get("per_task") or {}).values(), raw.get("sources") or {}]:
            section.pop(key, None)
        if isinstance(value, list):
            (raw.get("fixed") or {}).pop(key, None)
            for grid in grids:
                grid[key] = value
        else:
            raw.setdefault("fixed", {})[key] = value
    return raw


def _params(where: str, values: Any, source: str) -> dict[str, Any]:
    if not isinstance(values, dict):
        raise ValueError(f"{source}: {where} must be a mapping of training parameters")
    for key in values:
        if key not in FIELDS:
            raise ValueError(f"{source}: unknown training parameter {key!r} in {where}")
    return dict(values)


def spec_from_dict(raw: dict, source: str = "<spec>") -> Spec:
    """Validate a spec mapping; an unknown key anywhere is an error naming it."""
    if not isinstance(raw, dict):
        raise ValueError(f"{source}: a spec is a mapping")
    for key in raw:
        if key not in SPEC_KEYS:
            raise ValueError(f"{source}: unknown key {key!r} (known: {', '.join(SPEC_KEYS)})")
    if raw.get("kind") not in KINDS:
        raise ValueError(f"{source}: kind must be one of {', '.join(KINDS)}")
    grids = raw.get("grid") or [{}]
    grids = [grids] if isinstance(grids, dict) else grids
    grids = [
        {k: v if isinstance(v, list) else [v] for k, v in _params("grid", g, source).items()}
        for g in grids
    ]
    per_task = raw.get("per_task") or {}
    from bertrep.tasks import TASKS

    for task, values in per_task.items():
        if task not in TASKS:
            raise ValueError(f"{source}: unknown task {task!r} in per_task")
        _params(f"per_task.{task}", values, source)
    sources = _params("sources", raw.get("sources") or {}, source)
    for key in SOURCE_FIXED:
        if key in sources:
            raise ValueError(f"{source}: sources cannot set {key!r} (the sweep decides it)")
    resources = raw.get("resources") or {}
    known = [f.name for f in dataclasses.fields(Resources)]
    for key in resources:
        if key not in known:
            raise ValueError(f"{source}: unknown key {key!r} in resources")
    return Spec(
        kind=raw["kind"],
        name=str(raw.get("name") or Path(source).stem),
        fixed=_params("fixed", raw.get("fixed") or {}, source),
        grids=grids,
        per_task={t: dict(v) for t, v in per_task.items()},
        sources=sources,
        resources=Resources(**resources),
        raw=raw,
        path=source,
    )


def load_spec(path: str | Path, overrides: str = "") -> Spec:
    path = Path(path).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"sweep spec {path} does not exist")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a spec is a mapping")
    return spec_from_dict(apply_overrides(raw, parse_overrides(overrides)), str(path))


def absolute_paths(params: dict[str, Any]) -> dict[str, Any]:
    """Trials run in Ray's trial folders: every local path they get is absolute."""
    out = dict(params)
    data_dir = str(out.get("data_dir") or os.environ.get("BERTREP_DATA_DIR", ""))
    if data_dir:
        out["data_dir"] = str(Path(data_dir).expanduser().resolve())
    base = Path(str(out.get("base_model", TrainConfig.base_model))).expanduser()
    if base.exists():
        out["base_model"] = str(base.resolve())
    return out


def config(spec: Spec, params: dict[str, Any]) -> TrainConfig:
    """fixed < per_task[task] < the grid point, local paths made absolute."""
    task = params.get("task", spec.fixed.get("task", TrainConfig.task))
    merged = spec.fixed | spec.per_task.get(str(task), {}) | params
    try:
        return TrainConfig.from_dict(absolute_paths(merged))
    except (TypeError, ValueError) as error:
        raise ValueError(f"{spec.path}: {error} (trial {params})") from error


def trials(spec: Spec) -> list[TrainConfig]:
    """Every grid point as a config, once each; full fine-tuning from the pretrained
    model first, so later trials find best_B for their normalized scores."""
    out: dict[str, TrainConfig] = {}
    for grid in spec.grids:
        for point in itertools.product(*grid.values()):
            cfg = config(spec, dict(zip(grid, point, strict=True)))
            out.setdefault(cfg.key(), cfg)
    return sorted(out.values(), key=lambda c: not registers_source(c))


def needs_source(cfg: TrainConfig) -> bool:
    """A trial that needs the model tuned on source_task A alone, looked up (or trained)
    in the registry: transfer and sequential trials start from it (unless base_model
    already names a model, or a sequential run trains its own A phase), shuffled trials
    measure drift against it (unless reference_model names one)."""
    if cfg.source_task == "base" or cfg.base_model.startswith(("models:/", "runs:/")):
        return False
    if cfg.mode == "shuffled":
        return not cfg.reference_model
    return cfg.mode == "single" or (cfg.mode == "sequential" and cfg.source_steps == 0)


def source_config(spec: Spec, target: TrainConfig) -> TrainConfig:
    """The source of a transfer trial: full fine-tuning on its source task from the
    pretrained model with the target's seed, trained as `sources` (over fixed) says."""
    task = target.source_task
    decided = {
        "mode": "single",
        "task": task,
        "seed": target.seed,
        "source_task": "base",
        "frozen_layers": 0,
        "base_model": target.base_model,
        "save_checkpoint": True,
    }
    merged = spec.fixed | spec.per_task.get(task, {}) | spec.sources | decided
    return TrainConfig.from_dict(absolute_paths(merged))


def sources(spec: Spec, targets: list[TrainConfig]) -> list[TrainConfig]:
    found = {(s := source_config(spec, t)).key(): s for t in targets if needs_source(t)}
    return list(found.values())


def resolve(spec: Spec, target: TrainConfig) -> TrainConfig:
    """A trial pointed at its source's registered version (its start, or for shuffled
    training its drift reference)."""
    if not needs_source(target):
        return target
    source = source_config(spec, target)
    uri = tracking.find_registered(source.task, {tracking.CONFIG_KEY: source.key()})
    if uri is None:
        raise SweepFailed(f"source {source.task} seed {source.seed} is not registered")
    if target.mode == "shuffled":
        return dataclasses.replace(target, reference_model=uri)
    return dataclasses.replace(target, base_model=uri)


# --- the trainable: one training run per trial, worker processes reused ---


class SweepTrial(tune.Trainable):
    """One trial is one `train.run`. Tune hands the worker process its next trial through
    reset_config, so tokenized splits and pretrained weights (cached in-process by
    encode/model) are loaded once per worker, not once per trial."""

    def setup(self, config: dict) -> None:
        self.index = 0
        self._begin()

    def reset_config(self, new_config: dict) -> bool:
        self._begin()
        return True

    def _begin(self) -> None:
        self.started = time.time()
        self.index += 1

    def step(self) -> dict:
        import ray
        import torch

        from bertrep import train

        context = self.config["context"]
        # The worker may have inherited the driver's run (under `mlflow run`): never resume it.
        os.environ.pop("MLFLOW_RUN_ID", None)
        os.environ["MLFLOW_TRACKING_URI"] = context["tracking_uri"]
        mlflow.set_tracking_uri(context["tracking_uri"])
        torch.set_num_threads(context["threads"])
        tags = {
            tracking.PARENT_RUN: context["parent"],
            tracking.RAY_NODE_ID: ray.get_runtime_context().get_node_id(),
            tracking.RAY_WORKER: f"{socket.gethostname()}:{os.getpid()}",
        }
        runtime = Runtime(experiment_name=context["experiment"], progress=False)
        run_id = train.run(TrainConfig.from_dict(self.config["train"]), runtime, tags)
        startup = tracking.first_step_time(run_id) - self.started
        tracking.log_trial_stats(run_id, startup, self.index)
        return {"done": True, "run_id": run_id, "startup_s": startup, "worker_index": self.index}


# --- the driver ---


@contextmanager
def tracking_at(uri: str) -> Iterator[None]:
    """Point this process (and Ray workers it starts) at `uri`, restored afterwards."""
    old_env, old_uri = os.environ.get("MLFLOW_TRACKING_URI"), mlflow.get_tracking_uri()
    os.environ["MLFLOW_TRACKING_URI"] = uri
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        if old_env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = old_env
        mlflow.set_tracking_uri(old_uri)


@contextmanager
def ray_session(env: dict[str, str]) -> Iterator[None]:
    """A local Ray instance, or the cluster at $RAY_ADDRESS (ray.init reads it)."""
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(runtime_env={"env_vars": env}, include_dashboard=False)
    try:
        yield
    finally:
        if started:
            ray.shutdown()


def run_stage(stage: str, configs: list[TrainConfig], spec: Spec, context: dict) -> dict[str, int]:
    """Run the configs without a FINISHED run as one Tune grid; counts of what happened."""
    import ray

    finished = tracking.finished_keys()
    todo = [c for c in configs if c.key() not in finished]
    counts = {"trials": len(configs), "skipped": len(configs) - len(todo), "failed": 0}
    print(f"sweep {spec.name}, {stage}: {len(todo)} to run, {counts['skipped']} finished before")
    if not todo:
        return counts
    gpus = spec.resources.gpus_per_trial if ray.cluster_resources().get("GPU", 0) else 0
    trainable = tune.with_resources(SweepTrial, {"cpu": spec.resources.cpus_per_trial, "gpu": gpus})
    tuner = tune.Tuner(
        trainable,
        param_space={
            "train": tune.grid_search([dataclasses.asdict(c) for c in todo]),
            "context": context,
        },
        tune_config=tune.TuneConfig(
            reuse_actors=True,
            max_concurrent_trials=spec.resources.max_concurrent_trials or None,
            trial_dirname_creator=lambda trial: f"trial_{trial.trial_id}",
        ),
        run_config=tune.RunConfig(
            name=f"{spec.name}-{stage}-{context['parent'][:8]}",
            storage_path=str(Path(OUTPUT_DIR).resolve() / "ray_results"),
            failure_config=tune.FailureConfig(max_failures=0),
            # MLflow holds every result; Tune checkpoints would only cost time.
            checkpoint_config=tune.CheckpointConfig(checkpoint_at_end=False),
            verbose=1,
        ),
    )
    results = list(tuner.fit())
    counts["failed"] = sum(r.error is not None for r in results)
    if any(r.error is None and "run_id" not in r.metrics for r in results):
        raise KeyboardInterrupt(f"sweep {spec.name} interrupted")  # Tune caught the Ctrl-C
    return counts


def run_grid(spec: Spec, context: dict) -> dict[str, int]:
    """Sources missing from the registry first, then every trial of the grid."""
    targets = trials(spec)
    needed = sources(spec, targets)
    for task in {c.task for c in [*targets, *needed] if registers_source(c)}:
        tracking.ensure_registered_model(task)  # trials would race to create it
    missing = [
        s for s in needed if not tracking.find_registered(s.task, {tracking.CONFIG_KEY: s.key()})
    ]
    first = run_stage("sources", missing, spec, context)
    if first["failed"]:
        raise SweepFailed(f"{first['failed']} source trials failed; transfer trials not run")
    counts = run_stage("trials", [resolve(spec, t) for t in targets], spec, context)
    if counts["failed"]:
        raise SweepFailed(f"{counts['failed']} of {counts['trials']} trials failed")
    return counts


def open_parent(spec: Spec, exp_id: str, resume: bool) -> str:
    """The parent run; with `resume`, the newest unfinished parent of the same spec,
    its children left RUNNING by a killed driver marked KILLED."""
    tags = {
        tracking.KIND: tracking.SWEEP_KIND,
        tracking.SWEEP_NAME: spec.name,
        tracking.SWEEP_DIGEST: spec.digest(),
        tracking.SWEEP_SPEC: spec.yaml()[:5000],  # the whole spec is an artifact too
        "mlflow.runName": f"sweep-{spec.name}",
    }
    earlier = tracking.unfinished_parent(exp_id, spec.digest()) if resume else None
    parent = tracking.start_parent(exp_id, tags, earlier)
    if earlier:
        stale = tracking.end_stale_children(parent)
        print(f"resuming sweep run {parent}; {stale} stale RUNNING children marked KILLED")
    return parent


def sweep(spec: Spec, resume: bool = False) -> str:
    """Run the whole sweep; returns the parent run id. No run is left RUNNING."""
    targets = trials(spec)  # a bad spec fails before anything starts
    store = tracking.store_uri()
    outputs = Path(OUTPUT_DIR).resolve()
    parent, status = None, "FAILED"
    try:
        with tracking.serve(store, outputs) as uri, tracking_at(uri):
            exp_id = tracking.sweep_experiment()
            parent = open_parent(spec, exp_id, resume)
            tracking.log_sweep(parent, spec.yaml(), [dataclasses.asdict(c) for c in targets])
            cpus = spec.resources.cpus_per_trial
            context = {
                "tracking_uri": uri,
                "experiment": tracking.experiment_name(exp_id),
                "parent": parent,
                "threads": max(1, int(cpus)),
            }
            env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
            with ray_session(env | {"MLFLOW_TRACKING_URI": uri}):
                counts = run_grid(spec, context)
            tracking.log_counts(parent, _sweep_metrics(counts))
            status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        if parent is not None:
            tracking.end_sweep(store, parent, status)
    return parent


def _sweep_metrics(counts: dict[str, int]) -> dict[str, float]:
    return {
        tracking.SWEEP_TRIALS: counts["trials"],
        tracking.SWEEP_SKIPPED: counts["skipped"],
        tracking.SWEEP_FAILED: counts["failed"],
    }


def _bool(value: str) -> bool:
    return str(value).lower() in ("true", "1", "yes")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--spec", required=True, help="a sweep spec (YAML)")
    parser.add_argument("--overrides", default="", help='e.g. "max_steps=10,seed=[0,1]"')
    parser.add_argument("--resume", type=_bool, nargs="?", const=True, default=False)
    parser.add_argument("--kind", choices=KINDS, help="refuse a spec of another kind")
    args = parser.parse_args(argv)
    spec = load_spec(args.spec, args.overrides)
    if args.kind and spec.kind != args.kind:
        parser.error(f"{args.spec} is a {spec.kind} sweep, not {args.kind}")
    try:
        parent = sweep(spec, args.resume)
    except SweepFailed as error:
        sys.exit(f"sweep {spec.name} failed: {error}")
    print(f"sweep {spec.name} finished: parent run {parent}")


if __name__ == "__main__":
    main()
