"""Ray Tune sweeps: a YAML grid of training runs, one MLflow parent run, one child per trial.

    python -m bertrep.sweep --spec sweeps/quick/aufc.yaml
    python -m bertrep.sweep --spec sweeps/smoke/aufc.yaml --overrides "max_steps=2,seed=[0]"
    python -m bertrep.sweep --spec sweeps/quick/aufc.yaml --resume     # continue a killed sweep
    mlflow run . -e sweep_aufc --env-manager local -P spec=sweeps/quick/aufc.yaml

The spec and its trials are `bertrep.sweeps.spec`; this module is the driver and the Ray
trainable. Trials run on a local Ray instance, or on the cluster at $RAY_ADDRESS.
Unless $MLFLOW_TRACKING_URI is an http(s) server, the sweep serves its store through
a local `mlflow server` (`bertrep.tracking.server`) so parallel trials have one writer.

A trial whose config key already has a FINISHED run in the store is skipped.
A trial with source_task A (not "base") starts from the registered model of A trained
with the same seed (target seed s uses source seed s); missing sources are trained
first, as an earlier stage of the same sweep. A longer repeat of a trial that early-stops
at a constant rate (a convergence check) comes last, and is trained only where that
trial used its whole cap (spec.split_repeats).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ray import tune

from bertrep import env, tracking
from bertrep.errors import InputError, UnavailableError
from bertrep.sweeps import runs as sweep_runs
from bertrep.sweeps.progress import INPUT_ERROR, Progress
from bertrep.sweeps.spec import (
    KINDS,
    Spec,
    load_spec,
    needs_source,
    source_config,
    sources,
    split_repeats,
    trials,
)
from bertrep.tracking import registry, server
from bertrep.training.config import Runtime, TrainConfig, parse_bool

OUTPUT_DIR = server.LOG_DIR  # also Ray Tune's trial folders


class SweepFailed(RuntimeError):
    """Some trials failed (their runs, where one was opened, ended FAILED); the parent
    ends FAILED."""


class SweepInterrupted(Exception):
    """A stage was interrupted (Ctrl-C reached Tune): the parent ends KILLED."""


def resolve(spec: Spec, target: TrainConfig) -> TrainConfig:
    """A trial pointed at its source's registered version (its start, or for shuffled
    training its drift reference)."""
    if not needs_source(target):
        return target
    source = source_config(spec, target)
    uri = registry.find_source(source.task, source.key())
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
        import transformers

        from bertrep import train

        transformers.logging.disable_progress_bar()  # a bar per model load and save
        context, trial = self.config["context"], self.config["trial"]
        # The worker may have inherited the driver's run (under `mlflow run`): never resume it.
        os.environ.pop(env.MLFLOW_RUN_ID, None)
        server.point_at(context["tracking_uri"])
        torch.set_num_threads(context["threads"])
        tags = {
            tracking.PARENT_RUN: context["parent"],
            tracking.RAY_NODE_ID: ray.get_runtime_context().get_node_id(),
            tracking.RAY_WORKER: f"{socket.gethostname()}:{os.getpid()}",
        }
        runtime = Runtime(experiment_name=context["experiment"], progress=False)
        cfg = TrainConfig.from_dict(trial["train"])
        sweep_runs.fail_dead_attempts(context["parent"], cfg.key())  # this is a retry
        tags[tracking.RUN_NAME] = trial["name"]
        try:
            run_id = train.run(cfg, runtime, tags)
        except UnavailableError:
            raise  # a download that failed: Tune's retry may get it
        except InputError as error:
            # Bad input fails the same way every time: reported, not raised for Tune to
            # retry. run_id "" (no run to name) tells run_stage it was not interrupted.
            return {"done": True, "run_id": "", INPUT_ERROR: str(error)}
        startup = sweep_runs.first_step_time(run_id) - self.started
        sweep_runs.log_trial_stats(run_id, startup, self.index)
        score, diverged = sweep_runs.outcome(run_id)
        return {
            "done": True,
            "run_id": run_id,
            "startup_s": startup,
            "worker_index": self.index,
            "score": score,
            "diverged": diverged,
        }


# --- the driver ---


@contextmanager
def ray_session(env_vars: dict[str, str]) -> Iterator[None]:
    """A local Ray instance, or the cluster at $RAY_ADDRESS (ray.init reads it)."""
    import ray

    started = not ray.is_initialized()
    if started:
        print(f"sweep on {os.environ.get(env.RAY_ADDRESS) or 'a local Ray instance'}")
        ray.init(runtime_env={"env_vars": env_vars}, include_dashboard=False)
    try:
        yield
    finally:
        if started:
            ray.shutdown()


def check_artifacts_reach_driver(exp_id: str) -> None:
    """On a cluster of several nodes, refuse an experiment whose artifacts go to a local
    folder: each trial would write them to its own node's disk, out of the driver's
    reach. (An experiment the sweep's server created stores them through the server.)"""
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    location = tracking.mlflow.get_experiment(exp_id).artifact_location
    if len(nodes) > 1 and server.is_local_location(location):
        raise SweepFailed(
            f"experiment {exp_id} stores artifacts in the local folder {location}, which the "
            f"other {len(nodes) - 1} node(s) cannot reach: point MLFLOW_TRACKING_URI at a "
            "tracking server whose artifact store every node reaches (mlflow server "
            "--serve-artifacts), or run `python -m bertrep.sweep` with MLFLOW_EXPERIMENT_NAME "
            "naming a new experiment, which the sweep creates through its own server"
        )


def run_stage(
    stage: str,
    configs: list[TrainConfig],
    spec: Spec,
    context: dict,
    names: dict | None = None,
    found: int = 0,
) -> dict[str, int]:
    """Run the configs without a FINISHED run as one Tune grid; counts of what happened.
    names: {config key: run name} where the configs are part of a larger list (run_names);
    found: configs of the stage found done before and so not passed (registered sources)."""
    import ray

    finished = sweep_runs.finished_keys()
    todo = [c for c in configs if c.key() not in finished]
    counts = {"trials": len(configs) + found, "skipped": len(configs) - len(todo) + found,
              "failed": 0}  # fmt: skip
    print(f"sweep {spec.name}, {stage}: {len(todo)} to run, {counts['skipped']} finished before")
    if not todo:
        return counts
    gpus = spec.resources.gpus_per_trial if ray.cluster_resources().get("GPU", 0) else 0
    trainable = tune.with_resources(SweepTrial, {"cpu": spec.resources.cpus_per_trial, "gpu": gpus})
    names = names or dict(zip([c.key() for c in configs], run_names(configs), strict=True))
    todo_space = [{"train": dataclasses.asdict(c), "name": names[c.key()]} for c in todo]
    # Tune's own console output: none (its new engine prints tables at every verbosity)
    os.environ[env.RAY_AIR_NEW_OUTPUT] = "0"
    tuner = tune.Tuner(
        trainable,
        param_space={"trial": tune.grid_search(todo_space), "context": context},
        tune_config=tune.TuneConfig(
            reuse_actors=True,
            max_concurrent_trials=spec.resources.max_concurrent_trials or None,
            trial_dirname_creator=lambda trial: f"trial_{trial.trial_id}",
        ),
        run_config=tune.RunConfig(
            name=f"{spec.name}-{stage}-{context['parent'][:8]}",
            storage_path=str(Path(OUTPUT_DIR).resolve() / "ray_results"),
            failure_config=tune.FailureConfig(max_failures=spec.resources.max_failures),
            # MLflow holds every result; Tune checkpoints would only cost time.
            checkpoint_config=tune.CheckpointConfig(checkpoint_at_end=False),
            # One line per trial event (bertrep.sweeps.progress), not Tune's tables.
            verbose=0,
            callbacks=[Progress(f"{spec.name} {stage}", len(todo))],
        ),
    )
    results = list(tuner.fit())
    if any(r.error is None and "run_id" not in r.metrics for r in results):
        # Tune caught the Ctrl-C and stopped its workers: their runs end KILLED (end_sweep)
        raise SweepInterrupted(f"sweep {spec.name} interrupted")
    sweep_runs.fail_dead_attempts(context["parent"])  # a last attempt's worker died
    counts["failed"] = sum(r.error is not None or INPUT_ERROR in r.metrics for r in results)
    return counts


def run_names(configs: list[TrainConfig]) -> list[str]:
    """What the UI and the progress call each run: its display name, and where several
    configs share one, the parameters that tell them apart (`..., seed 0, lr=0.1`)."""
    names = [c.display_name for c in configs]
    groups: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        groups.setdefault(name, []).append(i)
    for name, members in groups.items():
        if len(members) < 2:
            continue
        values = [dataclasses.asdict(configs[i]) for i in members]
        differ = [k for k in values[0] if len({repr(v[k]) for v in values}) > 1]
        for i, v in zip(members, values, strict=True):
            names[i] = ", ".join([name, *(f"{k}={v[k]}" for k in differ)])
    return names


def run_grid(spec: Spec, context: dict) -> dict[str, int]:
    """Sources missing from the registry first, then every trial of the grid."""
    targets = trials(spec)
    needed = sources(spec, targets)
    for task in {c.task for c in [*targets, *needed] if c.registers_source}:
        registry.ensure_registered_model(task)  # trials would race to create it
    missing = [s for s in needed if not registry.find_source(s.task, s.key())]
    first = run_stage("sources", missing, spec, context, found=len(needed) - len(missing))
    if first["failed"]:
        raise SweepFailed(f"{first['failed']} source trials failed; transfer trials not run")
    resolved = [resolve(spec, t) for t in targets]
    grid, repeats = split_repeats(resolved)
    names = dict(zip([c.key() for c in resolved], run_names(resolved), strict=True))
    counts = run_stage("trials", grid, spec, context, names)
    if counts["failed"]:
        raise SweepFailed(f"{counts['failed']} of {counts['trials']} trials failed")
    checks = run_repeats(repeats, spec, context, names)
    counts = {name: counts[name] + checks[name] for name in counts}
    if checks["failed"]:
        raise SweepFailed(f"{checks['failed']} of {checks['trials']} longer repeats failed")
    # The analysis reads a sweep through this list: trials skipped because an earlier
    # sweep trained them are the sweep's runs too.
    keys = [c.key() for c in [*needed, *resolved]]
    sweep_runs.log_sweep_runs(context["parent"], sweep_runs.finished_runs(keys))
    return counts


def run_repeats(
    repeats: list[tuple[TrainConfig, TrainConfig]], spec: Spec, context: dict, names: dict
) -> dict[str, int]:
    """The longer repeats (spec.split_repeats) of trials that used their whole cap: did
    more updates move the score? The repeat of a trial that stopped before its cap would
    do the same updates again and stop at the same one: it is skipped, not trained."""
    if not repeats:
        return {"trials": 0, "skipped": 0, "failed": 0}
    done = sweep_runs.updates_done([shorter.key() for _, shorter in repeats])
    stopped = {s.key() for _, s in repeats if done.get(s.key(), math.nan) < s.max_steps}
    needed = [r for r, shorter in repeats if shorter.key() not in stopped]
    if len(needed) < len(repeats):
        print(f"sweep {spec.name}, repeats: {len(repeats) - len(needed)} of {len(repeats)} "
              "not trained: their trials stopped before the cap, which a larger cap repeats "
              "exactly")  # fmt: skip
    counts = run_stage("repeats", needed, spec, context, names)
    unneeded = len(repeats) - len(needed)
    return counts | {"trials": len(repeats), "skipped": counts["skipped"] + unneeded}


def open_parent(spec: Spec, exp_id: str, resume: bool) -> str:
    """The parent run; with `resume`, the newest unfinished parent of the same spec,
    its children left RUNNING by a killed driver marked KILLED."""
    tags = {
        tracking.KIND: tracking.SWEEP_KIND,
        tracking.SWEEP_NAME: spec.name,
        tracking.SWEEP_KIND_TAG: spec.kind,
        tracking.SWEEP_DIGEST: spec.digest(),
        tracking.SWEEP_SPEC: spec.yaml()[:5000],  # the whole spec is an artifact too
        tracking.RUN_NAME: f"sweep {spec.name}",
    }
    earlier = sweep_runs.unfinished_parent(exp_id, spec.digest()) if resume else None
    parent = sweep_runs.start_parent(exp_id, tags, earlier)
    if earlier:
        stale = sweep_runs.end_stale_children(parent)
        print(f"resuming sweep run {parent}; {stale} stale RUNNING children marked KILLED")
    return parent


def sweep(spec: Spec, resume: bool = False) -> str:
    """Run the whole sweep; returns the parent run id. No run is left RUNNING."""
    targets = trials(spec)  # a bad spec fails before anything starts
    store = server.store_uri()
    lasting = server.lasting_store()  # the same, except under bertrep.study's shared server
    outputs = Path(OUTPUT_DIR).resolve()
    parent, status = None, "FAILED"
    try:
        with server.starting(store, outputs) as served, server.tracking_at(served.url):
            uri = served.url
            forwarded = {k: os.environ[k] for k in env.FORWARDED if k in os.environ}
            # Trials print no "View run" link: it names the sweep's short-lived server.
            quiet = {env.MLFLOW_SUPPRESS_URL: "true"}
            # Ray starts while the server does (each takes seconds)
            with ray_session(forwarded | quiet | {env.MLFLOW_TRACKING_URI: uri}):
                served.wait()
                exp_id = sweep_runs.sweep_experiment()
                check_artifacts_reach_driver(exp_id)  # before any run is opened
                parent = open_parent(spec, exp_id, resume)
                trial_list = [dataclasses.asdict(c) for c in targets]
                sweep_runs.log_sweep(parent, spec.yaml(), trial_list)
                context = {
                    "tracking_uri": uri,
                    "experiment": sweep_runs.experiment_name(exp_id),
                    "parent": parent,
                    "threads": max(1, int(spec.resources.cpus_per_trial)),
                }
                counts = run_grid(spec, context)
            counts["artifact_bytes"] = sweep_runs.artifact_bytes(parent)
            sweep_runs.log_counts(parent, _sweep_metrics(counts))
            print(f"sweep {spec.name}: its runs stored {counts['artifact_bytes'] / 2**20:,.1f} MiB "
                  "of artifacts")  # fmt: skip
            print(f"runs: {server.runs_page(lasting, exp_id)}")
            status = "FINISHED"
    except (SweepInterrupted, KeyboardInterrupt):
        status = "KILLED"
        raise
    finally:
        if parent is not None:
            sweep_runs.end_sweep(lasting, parent, status)
    return parent


def _sweep_metrics(counts: dict[str, int]) -> dict[str, float]:
    return {
        tracking.SWEEP_TRIALS: counts["trials"],
        tracking.SWEEP_SKIPPED: counts["skipped"],
        tracking.SWEEP_FAILED: counts["failed"],
        tracking.SWEEP_ARTIFACT_BYTES: counts["artifact_bytes"],
    }


def main(argv: list[str] | None = None) -> None:
    tracking.end_killed_on_sigterm()  # as Ctrl-C: the parent ends KILLED, --resume continues
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--spec", required=True, help="a sweep spec (YAML)")
    parser.add_argument("--overrides", default="", help='e.g. "max_steps=10,seed=[0,1]"')
    parser.add_argument("--resume", type=parse_bool, nargs="?", const=True, default=False)
    parser.add_argument("--kind", choices=KINDS, help="refuse a spec of another kind")
    args = parser.parse_args(argv)
    try:
        spec = load_spec(args.spec, args.overrides)
        trials(spec)  # every trial's config is valid
    except (InputError, FileNotFoundError) as error:
        sys.exit(f"bertrep.sweep: {error}")
    if args.kind and spec.kind != args.kind:
        parser.error(f"{args.spec} is a {spec.kind} sweep, not {args.kind}")
    try:
        parent = sweep(spec, args.resume)
    except SweepFailed as error:
        sys.exit(f"sweep {spec.name} failed: {error}")
    except (SweepInterrupted, KeyboardInterrupt):
        print(f"sweep {spec.name} interrupted; continue it with --resume", file=sys.stderr)
        sys.exit(130)
    print(f"sweep {spec.name} finished: parent run {parent}")


if __name__ == "__main__":
    main()
