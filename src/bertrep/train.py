"""Fine-tune an encoder with Accelerate; log everything to MLflow.

    python -m bertrep.train --task sst2 --base_model minilm --max_steps 60 --lr 1e-4 \
        --data_dir ../shared/data
    mlflow run . -e train --env-manager local -P task=sst2 -P max_steps=60 -P lr=1e-4

Modes (`mode`):
- single: fine-tune on `task`.
- sequential: fine-tune on `source_task` (A) — skipped when `base_model` already
  carries A's head, e.g. a registered A model — then on `task` (B), keeping A's head.
- shuffled: each step draws a batch of A or B (`sampling`: uniform or proportional
  to size), one head per task.
- extract: no training; `base_model`'s activations on every probe set (the pretrained
  model's own row of the Mean-CKA matrix).
In the two-task modes, at each fraction of the B phase in `checkpoints` both tasks
are scored, activations are extracted on both probe sets, and each layer's CKA
against the model fine-tuned on A alone is logged as a metric.

Every run logs its params and tags, per-step loss and learning rate, eval scores
(raw, chance, normalized), throughput, the model (a source run: an MLflow Model,
registered as `bertrep-<task>`; see mlmodel), the probe sets and the Parquet
activation tables of every hidden state on each probe set.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

from bertrep import tracking
from bertrep.data.tasks import get_task
from bertrep.errors import InputError
from bertrep.maths.forgetting import drift
from bertrep.maths.transfer import normalize
from bertrep.tracking import best, registry
from bertrep.training import mlmodel, stopping
from bertrep.training.config import (
    TWO_TASK_MODES,
    Runtime,
    TrainConfig,
    add_arguments,
    from_namespace,
)
from bertrep.training.loop import Context, TaskData, load_task_data, log_eval, optimise
from bertrep.training.model import UNTIED, TaskModel, load_model, save_checkpoint
from bertrep.training.readout import (
    Probes,
    extract_all,
    log_activations,
    log_probe_tables,
    log_word_tables,
    probe_sets,
    word_probe_sets,
)


def resolve_best(cfg: TrainConfig, task: TaskData) -> None:
    """best_B for the normalized score: given (for the run's task), else the mean of the
    experiment's full fine-tuning runs from this base model, else the ideal score 1."""
    if cfg.best_score and task.spec.name == cfg.task:
        task.best, task.best_origin = cfg.best_score, "given"
        return
    score, runs = best.reference_best(task.spec.name, cfg.base_model)
    if runs:
        task.best, task.best_origin = score, f"mean of {runs} full fine-tuning runs"
    else:
        task.best, task.best_origin = 1.0, "ideal score (no full fine-tuning runs yet)"


# --- two-task training (forgetting): sequential A -> B, shuffled A + B ---


def checkpoint_steps(cfg: TrainConfig) -> list[int]:
    return sorted({round(f * cfg.max_steps) for f in cfg.checkpoint_fractions} | {cfg.max_steps})


def alone_on_a(cfg: TrainConfig) -> TrainConfig:
    """The run that fine-tuned task A alone with this run's settings: full fine-tuning
    from the pretrained model (what a shuffled run without `reference_model` compares
    against, found in the registry by its config key)."""
    defaults = TrainConfig()
    return dataclasses.replace(
        cfg,
        **cfg.source_fields(),
        source_steps=defaults.source_steps,
        checkpoints=defaults.checkpoints,
        sampling=defaults.sampling,
        reference_model="",
    )


def reference_states(cfg: TrainConfig, probes: Probes, pad_id: int) -> dict[str, np.ndarray]:
    """Activations of the model fine-tuned on A alone (shuffled mode's reference)."""
    alone = alone_on_a(cfg)
    uri = cfg.reference_model or registry.find_source(alone.task, alone.key())
    if not uri:
        raise ValueError(
            f"shuffled mode needs a model fine-tuned on {cfg.source_task} alone: set "
            f"reference_model, or register one (a {cfg.source_task} run from {cfg.base_model} "
            f"with this run's settings, config key {alone.key()})"
        )
    model, _, _ = load_model(uri, [])
    return extract_all(model, probes, pad_id)


@dataclass
class CheckpointSeries:
    """At each due step of the B phase: both tasks scored, activations on every probe set,
    and each hidden state's CKA against `reference` (the model tuned on A alone)."""

    ctx: Context
    model: TaskModel
    source: TaskData
    target: TaskData
    probes: Probes
    reference: dict[str, np.ndarray]
    due: set[int]
    reference_is_start: bool = False  # the reference is this model before the B phase
    scores: dict[int, dict[str, float]] = field(default_factory=dict)

    def __call__(self, step: int) -> None:
        if step in self.due and step not in self.scores:
            self.record(step)

    def record(self, step: int) -> None:
        ctx = self.ctx
        log_eval(ctx, self.model, self.source, step)
        self.scores[step] = log_eval(ctx, self.model, self.target, step)
        known = self.reference if step == 0 and self.reference_is_start else None
        states = log_activations(
            self.model, self.probes, ctx.folder, ctx.run_id, step, pad_id=ctx.pad_id, known=known
        )
        logged = {}
        for task, current in states.items():
            for h, value in enumerate(drift(self.reference[task], current)):
                logged[tracking.drift_metric(task, h)] = value
        ctx.metrics.log(logged, step)


def train_two_tasks(ctx: Context, model, source: TaskData, target: TaskData, probes, has_head):
    """Sequential or shuffled training with the checkpoint series. Returns (final scores
    of the target, updates done in the B phase, divergence reason)."""
    cfg, diverged = ctx.cfg, ""
    if cfg.mode == "sequential":
        if not has_head:
            steps = cfg.source_steps or cfg.max_steps
            _, diverged = optimise(ctx, model, [source], steps, phase=tracking.A_PHASE)
        reference = extract_all(model, probes, ctx.pad_id)  # the model tuned on A
        tasks = [target]
    else:
        reference = reference_states(cfg, probes, ctx.pad_id)
        tasks = [source, target]
    series = CheckpointSeries(
        ctx, model, source, target, probes, reference, set(checkpoint_steps(cfg)),
        reference_is_start=cfg.mode == "sequential",
    )  # fmt: skip
    steps, why = optimise(ctx, model, tasks, cfg.max_steps, phase="train", on_step=series)
    if steps not in series.scores:  # stopped early: close the series where training stopped
        series.record(steps)
    return series.scores[steps], steps, diverged or why


def train_one_task(ctx: Context, model, target: TaskData, probes):
    train_on, watch = stopping.watcher(ctx, model, target)  # early stopping or eval_every
    steps, diverged = optimise(ctx, model, [train_on], ctx.cfg.max_steps, "train", watch)
    steps = watch.finish(steps, diverged)  # the update whose weights the model now holds
    scores = log_eval(ctx, model, target, steps)
    reused = reusable_tables(ctx, model, probes)
    if reused:
        tracking.set_tags({tracking.activations_from_tag(t): uri for t, uri in reused.items()})
    rest = [(p, data) for p, data in probes if p.meta["task"] not in reused]
    log_activations(model, rest, ctx.folder, ctx.run_id, steps, pad_id=ctx.pad_id)
    return scores, steps, diverged


def reusable_tables(ctx: Context, model: TaskModel, probes: Probes) -> dict[str, str]:
    """{probe task: runs:/ URI} of the tables this run can reference instead of
    extracting: with every layer frozen its hidden states are the start model's, which
    the registered source's run logged on the same probe sets (same digest)."""
    model = ctx.accelerator.unwrap_model(model)
    if not ctx.runtime.reuse_tables or model.frozen_layers < model.num_layers:
        return {}
    digests = {p.meta["task"]: p.digest for p, _ in probes}
    try:
        return registry.source_tables(ctx.cfg.base_model, digests)
    except tracking.mlflow.exceptions.MlflowException as error:  # extract them instead
        warnings.warn(
            f"the source's tables could not be listed ({error}); extracting", stacklevel=2
        )
        return {}


# --- one run ---


def run_tags(cfg: TrainConfig, model: TaskModel, target: TaskData | None, extra: dict) -> dict:
    tags = {
        tracking.RUN_NAME: cfg.display_name,
        tracking.KIND: tracking.TRAIN_KIND,
        tracking.MODE: cfg.mode,
        tracking.TASK: cfg.task,
        tracking.BASE_MODEL: cfg.base_model,
        tracking.SOURCE_TASK: cfg.source_task,
        tracking.FROZEN_LAYERS: cfg.frozen_layers,
        tracking.SEED: cfg.seed,
        tracking.CONFIG_KEY: cfg.key(),
        tracking.NUM_LAYERS: model.num_layers,
        tracking.MODEL_TYPE: model.encoder.config.model_type,
        **extra,
    }
    if target is not None:
        tags |= {tracking.TRAIN_FILE: target.train_file, tracking.EVAL_FILE: target.eval_file}
    for name, digest in cfg.own_tasks().items():
        spec = get_task(name)
        tags |= {f"{tracking.TASK_FILE}{name}": spec.source,
                 f"{tracking.TASK_DIGEST}{name}": digest,
                 f"{tracking.TASK_LABELS}{name}": json.dumps(list(spec.labels))}  # fmt: skip
    return {k: str(v) for k, v in tags.items()}


def check_task_names(cfg: TrainConfig) -> None:
    """Two different task files may not share a name in one store: one error naming both."""
    for name, digest in cfg.own_tasks().items():
        source = get_task(name).source
        other = registry.task_file_of_name(name, digest, source)
        if other:
            raise InputError(
                f"task name {name!r} is taken in this store by {other}; {source} is another "
                "task: rename one"
            )


def run(cfg: TrainConfig, runtime: Runtime | None = None, tags: dict | None = None) -> str:
    """One training run (or, with mode=extract, one read-out of base_model), start to
    end, in one MLflow run. Returns the run id."""
    runtime = runtime or Runtime()
    set_seed(cfg.seed)
    precision = runtime.mixed_precision
    if precision == "auto":
        precision = "bf16" if torch.cuda.is_available() else "no"
    accelerator = Accelerator(mixed_precision=precision)
    check_task_names(cfg)
    two_tasks = cfg.mode in TWO_TASK_MODES
    heads = [cfg.source_task, cfg.task] if two_tasks else [cfg.task]
    model, tokenizer, base_meta = load_model(
        cfg.base_model,
        heads,
        pooling=cfg.pooling,
        head_dropout=cfg.head_dropout,
        untie_blocks=cfg.untie_blocks,
    )
    model.freeze(cfg.frozen_layers)
    training = cfg.mode != "extract"
    target = load_task_data(cfg, cfg.task, tokenizer) if training else None
    source = load_task_data(cfg, cfg.source_task, tokenizer) if two_tasks else None
    with tracking.start_run(
        runtime.experiment_name, tags=run_tags(cfg, model, target, tags or {})
    ) as active:
        tracking.log_config(cfg.to_params())
        probes = probe_sets(cfg, tokenizer)  # before training: a bad probe task fails fast
        words = word_probe_sets(cfg)
        tracking.set_tags({tracking.probe_tag(p.meta["task"]): p.digest for p, _ in probes})
        tracking.set_tags({tracking.word_probe_tag(p.meta["task"]): p.digest for p, _ in words})
        with tempfile.TemporaryDirectory() as tmp:
            ctx = Context(
                cfg,
                accelerator,
                tracking.MetricLogger(active.info.run_id),
                tokenizer.pad_token_id,
                active.info.run_id,
                Path(tmp),
                runtime,
            )
            log_probe_tables(probes, ctx.folder)
            if training:
                fine_tune(ctx, model, tokenizer, base_meta, target, source, (probes, words))
            else:
                log_activations(model, probes, ctx.folder, ctx.run_id, 0, pad_id=ctx.pad_id)
                log_word_tables(ctx, model, tokenizer, words, 0)
            ctx.metrics.log({tracking.ARTIFACT_BYTES: artifact_bytes(ctx)}, 0)
            ctx.metrics.flush()
    return active.info.run_id


def fine_tune(ctx: Context, model, tokenizer, base_meta: dict, target, source, read_out) -> None:
    """Train, score, tag the outcome and log the checkpoint of one training run.
    read_out: (token probe sets, word probe sets)."""
    cfg, accelerator = ctx.cfg, ctx.accelerator
    probes, words = read_out
    for task in filter(None, (target, source)):
        resolve_best(cfg, task)
    tracking.set_tags({tracking.BEST_ORIGIN: target.best_origin})
    ctx.metrics.log({tracking.BEST_SCORE: target.best}, 0)
    model = accelerator.prepare(model)
    if source is not None:
        has_head = cfg.source_task in base_meta.get("heads", [])
        scores, steps, diverged = train_two_tasks(ctx, model, source, target, probes, has_head)
    else:
        scores, steps, diverged = train_one_task(ctx, model, target, probes)
    final = scores[target.spec.metric]
    near_chance = final - target.chance <= cfg.diverge_margin  # at, near or below chance
    if not diverged and cfg.diverge_margin > 0 and near_chance:
        diverged = (
            f"final {target.spec.metric} {final:.4f} not above chance {target.chance:.4f} "
            f"by more than {cfg.diverge_margin}"
        )
    norm = normalize(final, target.chance, target.best, strict=False)
    ctx.metrics.log({tracking.FINAL_SCORE: final, tracking.FINAL_NORM_SCORE: norm}, steps)
    ctx.metrics.flush()
    tracking.set_tags({tracking.DIVERGED: str(bool(diverged)).lower()})
    if diverged:
        tracking.set_tags({tracking.DIVERGED_REASON: diverged})
    log_word_tables(ctx, accelerator.unwrap_model(model), tokenizer, words, steps)
    if cfg.save_checkpoint:
        log_checkpoint(ctx, accelerator.unwrap_model(model), tokenizer, base_meta, bool(diverged))


def log_checkpoint(
    ctx: Context, model: TaskModel, tokenizer, base_meta: dict, diverged: bool
) -> None:
    """A source run logs its model as an MLflow Model and registers it (a diverged one
    without the seed aliases); any other run, and a source whose head no Hugging Face
    head class computes (`mlmodel.has_hf_head`), writes bertrep's checkpoint folder (a
    two-task model keeps both heads), which such a source registers instead."""
    cfg = ctx.cfg
    meta = {
        "base_model": cfg.base_model,
        "task": cfg.task,
        "mode": cfg.mode,
        "frozen_layers": cfg.frozen_layers,
        UNTIED: cfg.untie_blocks,
        "base": base_meta,  # the checkpoint this run started from, as it described itself
    }
    if cfg.registers_source and mlmodel.has_hf_head(model, cfg.task):
        source = mlmodel.log_model(model, tokenizer, cfg.task, meta)
        ctx.logged_elsewhere += registry.model_bytes(source)
    else:
        save_checkpoint(model, tokenizer, ctx.folder / tracking.CHECKPOINT, meta)
        tracking.log_artifact(ctx.folder / tracking.CHECKPOINT, tracking.CHECKPOINT)
        source = f"{tracking.RUNS_URI}{ctx.run_id}/{tracking.CHECKPOINT}"
    if cfg.registers_source:
        tags = source_tags(cfg, model.encoder.config.model_type)
        uri = registry.register_model(cfg.task, source, ctx.run_id, tags, alias=not diverged)
        tracking.set_tags({tracking.REGISTERED_AS: uri})


def artifact_bytes(ctx: Context) -> int:
    """Bytes of every artifact the run logged: what it wrote to its folder, and its model."""
    written = sum(p.stat().st_size for p in ctx.folder.rglob("*") if p.is_file())
    return written + ctx.logged_elsewhere


def source_tags(cfg: TrainConfig, model_type: str) -> dict[str, str]:
    """What identifies a registered source model (a version of `bertrep-<task>`); the
    base model and seed also name its aliases (`registry.source_aliases`), and the model
    type says its family where the base model's name does not."""
    return {
        tracking.BASE_MODEL: cfg.base_model,
        tracking.SEED: str(cfg.seed),
        tracking.CONFIG_KEY: cfg.key(),
        tracking.MODEL_TYPE: model_type,
    }


def main(argv: list[str] | None = None) -> None:
    # A terminated run (kill, a scheduler's SIGTERM) ends KILLED, not left RUNNING.
    tracking.end_killed_on_sigterm()
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser, TrainConfig)
    add_arguments(parser, Runtime)
    args = parser.parse_args(argv)
    try:
        run_id = run(from_namespace(args, TrainConfig), from_namespace(args, Runtime))
    except (InputError, FileNotFoundError) as error:  # bad input, a missing file: one line
        sys.exit(f"bertrep.train: {error}")
    print(f"run {run_id} finished")


if __name__ == "__main__":
    main()
