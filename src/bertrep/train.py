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
In the two-task modes, at each fraction of the B phase in `checkpoints` both tasks
are scored, activations are extracted on both probe sets, and each layer's CKA
against the model fine-tuned on A alone is logged as a metric.

Every run logs its params and tags, per-step loss and learning rate, eval scores
(raw, chance, normalized), throughput, the checkpoint, the probe sets and the
Parquet activation tables of every hidden state on each probe set.
"""

from __future__ import annotations

import argparse
import math
import signal
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from bertrep import activations, cka, tracking
from bertrep.config import Runtime, TrainConfig, add_arguments, from_namespace
from bertrep.encode import (
    IGNORE,
    Encoded,
    LengthGroupedBatches,
    collate,
    encode_cached,
    eval_batches,
    tokenizer_digest,
)
from bertrep.model import TaskModel, load_model, loss_fn, predictions, save_checkpoint
from bertrep.prefix import prefix_states
from bertrep.probes import ProbeSet, build_probe_set, excluded_ids
from bertrep.tasks import TaskSpec, chance_score, get_task, load_split, score

DATA_SEED = 0  # the training subsample is the same for every run; seeds vary init and order


@dataclass
class TaskData:
    spec: TaskSpec
    train: Encoded
    eval: Encoded
    chance: float
    train_source: str
    eval_source: str
    best: float = 1.0  # best_B of the normalized score
    best_source: str = ""


@dataclass
class Context:
    """What every stage of one run shares."""

    cfg: TrainConfig
    accelerator: Accelerator
    metrics: tracking.MetricLogger
    pad_id: int
    run_id: str
    folder: Path  # where artifacts are written before they are logged
    runtime: Runtime


def load_task_data(cfg: TrainConfig, task: str, tokenizer) -> TaskData:
    """Tokenized train and eval splits of `task`, subsampled as `cfg` says."""
    spec = get_task(task)
    where = {"data_dir": cfg.data_dir, "data_files": cfg.data_files if task == cfg.task else ""}
    eval_examples, eval_source = load_split(spec, spec.eval_split, **where)
    if cfg.max_eval_examples:
        eval_examples = eval_examples[: cfg.max_eval_examples]
    eval_data = encode_cached(spec, eval_examples, eval_source, tokenizer, cfg.max_length)
    examples, train_source = load_split(spec, "train", **where)
    train_data = encode_cached(spec, examples, train_source, tokenizer, cfg.max_length)
    if cfg.max_train_examples and cfg.max_train_examples < len(train_data):
        rng = np.random.default_rng(DATA_SEED)
        keep = np.sort(rng.choice(len(train_data), cfg.max_train_examples, replace=False))
        train_data = train_data.subset(keep)
    chance = chance_score(spec, eval_examples)
    return TaskData(spec, train_data, eval_data, chance, train_source, eval_source)


def make_loader(data: Encoded, batch_sampler, pad_id: int, prefix=None) -> DataLoader:
    return DataLoader(
        range(len(data)),
        batch_sampler=batch_sampler,
        collate_fn=lambda index: collate(data, index, pad_id, prefix),
    )


def endless(loader: DataLoader):
    while True:
        yield from loader


@torch.no_grad()
def evaluate(ctx: Context, model: TaskModel, task: TaskData) -> dict[str, float]:
    """The task's metrics on its eval split."""
    model.eval()
    batches = eval_batches(task.eval, max(64, ctx.cfg.batch_size))
    loader = ctx.accelerator.prepare(make_loader(task.eval, batches, ctx.pad_id))
    preds, golds = [], []
    for batch in loader:
        labels = batch.pop("labels")
        pred = predictions(task.spec, model(task.spec.name, **batch))
        if task.spec.kind == "tagging":
            keep = labels != IGNORE
            pred = ctx.accelerator.pad_across_processes(pred[keep], pad_index=IGNORE)
            labels = ctx.accelerator.pad_across_processes(labels[keep], pad_index=IGNORE)
        pred, labels = ctx.accelerator.gather_for_metrics((pred, labels))
        preds.append(pred.cpu())
        golds.append(labels.cpu())
    model.train()
    pred, gold = torch.cat(preds).numpy(), torch.cat(golds).numpy()
    if task.spec.kind == "tagging":
        pred, gold = pred[gold != IGNORE], gold[gold != IGNORE]
    return score(task.spec, pred, gold)


def normalized(value: float, chance: float, best: float) -> float:
    """(s - chance) / (best - chance); NaN where best equals chance (nothing to scale by)."""
    return (value - chance) / (best - chance) if best != chance else math.nan


def log_eval(ctx: Context, model: TaskModel, task: TaskData, step: int) -> dict[str, float]:
    """Score `task` and log raw, chance and normalized scores; the run's own task under
    eval/..., the other task of a two-task run under eval/<task>/..."""
    scores = evaluate(ctx, model, task)
    scope = None if task.spec.name == ctx.cfg.task else task.spec.name
    logged = {tracking.eval_metric(k, scope): v for k, v in scores.items()}
    logged[tracking.eval_metric("chance", scope)] = task.chance
    norm = normalized(scores[task.spec.metric], task.chance, task.best)
    logged[tracking.eval_metric("norm_score", scope)] = norm
    ctx.metrics.log(logged, step)
    return scores


def optimise(
    ctx: Context,
    model: TaskModel,
    tasks: list[TaskData],
    steps: int,
    phase: str,
    on_step: Callable[[int], None] | None = None,
) -> tuple[int, str]:
    """`steps` AdamW updates (bias-corrected; linear warm-up, then linear decay) on
    batches of `tasks`: with one task its batches in turn, with several a task drawn per
    step (`cfg.sampling`). Calls on_step(0) first, then on_step(s) after update s.
    Returns (updates done, why the loss diverged or "")."""
    cfg, accelerator = ctx.cfg, ctx.accelerator
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        [
            {"params": [p for p in trainable if p.ndim > 1], "weight_decay": cfg.weight_decay},
            {"params": [p for p in trainable if p.ndim <= 1], "weight_decay": 0.0},
        ],
        lr=cfg.lr,
    )
    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * steps), steps)
    optimizer, scheduler = accelerator.prepare(optimizer, scheduler)
    loaders = []
    for i, task in enumerate(tasks):
        sampler = LengthGroupedBatches(task.train.lengths(), cfg.batch_size, cfg.seed + i)
        frozen = prefix_states(
            accelerator.unwrap_model(model),
            task.train,
            cfg.base_model,
            ctx.pad_id,
            ctx.runtime.prefix_cache_gb,
            uses=steps * cfg.batch_size,
        )
        loader = make_loader(task.train, sampler, ctx.pad_id, frozen)
        loaders.append(endless(accelerator.prepare(loader)))
    sizes = np.array([len(t.train) for t in tasks], dtype=float)
    weights = sizes / sizes.sum() if cfg.sampling == "proportional" else None
    pick = np.random.default_rng(cfg.seed).choice(len(tasks), size=steps, p=weights)
    if on_step:
        on_step(0)
    model.train()
    seen, busy, diverged = 0, 0.0, ""
    loss_key = tracking.phase_metric(phase, "loss")
    bar = tqdm(range(1, steps + 1), desc=f"{phase} {'+'.join(t.spec.name for t in tasks)}",
               disable=not ctx.runtime.progress)  # fmt: skip
    for step in bar:
        start = time.perf_counter()
        task = tasks[pick[step - 1]]
        batch = next(loaders[pick[step - 1]])
        labels = batch.pop("labels")
        loss = loss_fn(task.spec, model(task.spec.name, **batch), labels)
        if not torch.isfinite(loss):
            # Keep the last finite weights: the run is kept and analysable.
            ctx.metrics.log({loss_key: loss.item()}, step)
            diverged = f"non-finite {phase} loss at step {step}"
            step -= 1
            break
        accelerator.backward(loss)
        if cfg.max_grad_norm > 0:
            accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        busy += time.perf_counter() - start
        seen += len(labels)
        lr = scheduler.get_last_lr()[0]
        ctx.metrics.log({loss_key: loss.item(), tracking.phase_metric(phase, "lr"): lr}, step)
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if on_step:
            on_step(step)
    bar.close()
    ctx.metrics.log({tracking.phase_metric(phase, "examples_per_s"): seen / max(busy, 1e-9)}, step)
    return step, diverged


def resolve_best(cfg: TrainConfig, task: TaskData) -> None:
    """best_B for the normalized score: given (for the run's task), else the mean of the
    experiment's full fine-tuning runs from this base model, else the ideal score 1."""
    if cfg.best_score and task.spec.name == cfg.task:
        task.best, task.best_source = cfg.best_score, "given"
        return
    best, runs = tracking.reference_best(task.spec.name, cfg.base_model)
    if runs:
        task.best, task.best_source = best, f"mean of {runs} full fine-tuning runs"
    else:
        task.best, task.best_source = 1.0, "ideal score (no full fine-tuning runs yet)"


def probe_sets(cfg: TrainConfig, tokenizer) -> list[tuple[ProbeSet, Encoded]]:
    """The probe set (and its tokenized split) of every probe task, for this tokenizer."""
    digest = tokenizer_digest(tokenizer)
    out = []
    for name in cfg.probe_task_list:
        spec = get_task(name)
        # Probe sets never depend on max_eval_examples: every model compared must agree.
        files = cfg.data_files if name == cfg.task else ""
        examples, source = load_split(
            spec, spec.eval_split, data_dir=cfg.data_dir, data_files=files
        )
        data = encode_cached(spec, examples, source, tokenizer, cfg.max_length)
        probe = build_probe_set(
            data,
            task=name,
            split=spec.eval_split,
            source=source,
            tokenizer_digest=digest,
            excluded=excluded_ids(tokenizer),
            max_length=cfg.max_length,
            n_tokens=cfg.probe_tokens,
            seed=cfg.probe_seed,
        )
        out.append((probe, data))
    return out


def log_probe_tables(ctx: Context, probes: list[tuple[ProbeSet, Encoded]]) -> None:
    for probe, _ in probes:
        artifact = tracking.probe_artifact(probe.meta["task"])
        path = ctx.folder / artifact
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(probe.to_table(), path)
        tracking.log_artifact(path, str(Path(artifact).parent))


def log_activations(ctx: Context, model, probes, step: int) -> dict[str, np.ndarray]:
    """Extract, write and log every hidden state on each probe set at `step`.
    Returns {probe task: (L + 1, N, width) float32 states}."""
    out = {}
    for probe, data in probes:
        task = probe.meta["task"]
        states = activations.extract(model, data, probe, pad_id=ctx.pad_id)
        path = ctx.folder / tracking.activations_dir(task) / tracking.activations_file(step)
        activations.write_table(path, states, probe, {"run_id": ctx.run_id, "step": step})
        tracking.log_artifact(path, tracking.activations_dir(task))
        out[task] = states
    return out


def log_drift(ctx: Context, states: dict, reference: dict, step: int) -> None:
    """Per-layer CKA of the current model against the reference (the model fine-tuned on
    A alone), same layer index, on each probe set."""
    logged = {}
    for task, current in states.items():
        for layer in range(len(current)):
            value = cka.linear_cka(reference[task][layer], current[layer])
            logged[tracking.drift_metric(task, layer)] = value
    ctx.metrics.log(logged, step)


def checkpoint_steps(cfg: TrainConfig) -> list[int]:
    return sorted({round(f * cfg.max_steps) for f in cfg.checkpoint_fractions} | {cfg.max_steps})


def reference_states(cfg: TrainConfig, probes, pad_id: int) -> dict[str, np.ndarray]:
    """Activations of the model fine-tuned on A alone (shuffled mode's reference)."""
    uri = cfg.reference_model or tracking.find_registered(
        cfg.source_task, {tracking.BASE_MODEL: cfg.base_model, tracking.SEED: str(cfg.seed)}
    )
    if not uri:
        raise ValueError(
            f"shuffled mode needs a model fine-tuned on {cfg.source_task} alone: set "
            f"reference_model, or register one (a {cfg.source_task} run from {cfg.base_model}, "
            f"seed {cfg.seed})"
        )
    model, _, _ = load_model(uri, [])
    return {
        probe.meta["task"]: activations.extract(model, data, probe, pad_id=pad_id)
        for probe, data in probes
    }


def train_two_tasks(ctx: Context, model, source: TaskData, target: TaskData, probes, has_head):
    """Sequential or shuffled training with the checkpoint series. Returns (final scores
    of the target, updates done in the B phase, divergence reason)."""
    cfg = ctx.cfg
    diverged = ""
    if cfg.mode == "sequential":
        if not has_head:
            steps = cfg.source_steps or cfg.max_steps
            _, diverged = optimise(ctx, model, [source], steps, phase="source")
        reference = {}  # the start of the B phase is the model fine-tuned on A
        tasks = [target]
    else:
        reference = reference_states(cfg, probes, ctx.pad_id)
        tasks = [source, target]
    due = checkpoint_steps(cfg)
    done: dict[int, dict] = {}

    def at_checkpoint(step: int) -> None:
        if step not in due or step in done:
            return
        log_eval(ctx, model, source, step)
        done[step] = log_eval(ctx, model, target, step)
        states = log_activations(ctx, model, probes, step)
        if not reference:
            reference.update(states)
        log_drift(ctx, states, reference, step)

    steps, why = optimise(ctx, model, tasks, cfg.max_steps, phase="train", on_step=at_checkpoint)
    if steps not in done:  # stopped early: close the series where training stopped
        due.append(steps)
        at_checkpoint(steps)
    return done[steps], steps, diverged or why


def train_one_task(ctx: Context, model, target: TaskData, probes):
    cfg = ctx.cfg

    def periodic_eval(step: int) -> None:
        if cfg.eval_every and 0 < step < cfg.max_steps and step % cfg.eval_every == 0:
            log_eval(ctx, model, target, step)

    steps, diverged = optimise(ctx, model, [target], cfg.max_steps, "train", periodic_eval)
    scores = log_eval(ctx, model, target, steps)
    log_activations(ctx, model, probes, steps)
    return scores, steps, diverged


def run(cfg: TrainConfig, runtime: Runtime | None = None, tags: dict | None = None) -> str:
    """One training run, start to end, in one MLflow run. Returns the run id."""
    runtime = runtime or Runtime()
    set_seed(cfg.seed)
    precision = runtime.mixed_precision
    if precision == "auto":
        precision = "bf16" if torch.cuda.is_available() else "no"
    accelerator = Accelerator(mixed_precision=precision)
    two_tasks = cfg.mode != "single"
    heads = [cfg.source_task, cfg.task] if two_tasks else [cfg.task]
    model, tokenizer, source_meta = load_model(cfg.base_model, heads)
    has_head = cfg.source_task in source_meta.get("heads", [])
    model.freeze(cfg.frozen_layers)
    target = load_task_data(cfg, cfg.task, tokenizer)
    source = load_task_data(cfg, cfg.source_task, tokenizer) if two_tasks else None
    run_tags = {
        tracking.KIND: "train",
        tracking.MODE: cfg.mode,
        tracking.TASK: cfg.task,
        tracking.BASE_MODEL: cfg.base_model,
        tracking.SOURCE_TASK: cfg.source_task,
        tracking.FROZEN_LAYERS: cfg.frozen_layers,
        tracking.SEED: cfg.seed,
        tracking.CONFIG_KEY: cfg.key(),
        tracking.NUM_LAYERS: model.num_layers,
        tracking.TRAIN_FILE: target.train_source,
        tracking.EVAL_FILE: target.eval_source,
        **(tags or {}),
    }
    run_tags = {k: str(v) for k, v in run_tags.items()}
    with tracking.start_run(runtime.experiment_name, tags=run_tags) as active:
        tracking.log_config(cfg.to_params())
        probes = probe_sets(cfg, tokenizer)  # before training: a bad probe task fails fast
        for task in filter(None, (target, source)):
            resolve_best(cfg, task)
        tracking.set_tags({tracking.BEST_SOURCE: target.best_source})
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
            ctx.metrics.log({tracking.BEST_SCORE: target.best}, 0)
            log_probe_tables(ctx, probes)
            model = accelerator.prepare(model)
            if two_tasks:
                scores, steps, diverged = train_two_tasks(
                    ctx, model, source, target, probes, has_head
                )
            else:
                scores, steps, diverged = train_one_task(ctx, model, target, probes)
            final = scores[target.spec.metric]
            if not diverged and abs(final - target.chance) <= cfg.diverge_margin:
                diverged = (
                    f"final {target.spec.metric} {final:.4f} within {cfg.diverge_margin} of chance"  # noqa: E501
                )
            ctx.metrics.log(
                {
                    tracking.FINAL_SCORE: final,
                    tracking.FINAL_NORM_SCORE: normalized(final, target.chance, target.best),
                },
                steps,
            )
            ctx.metrics.flush()
            tracking.set_tags({tracking.DIVERGED: str(bool(diverged)).lower()})
            if diverged:
                tracking.set_tags({tracking.DIVERGED_REASON: diverged})
            if cfg.save_checkpoint:
                log_checkpoint(ctx, accelerator.unwrap_model(model), tokenizer, source_meta)
    return active.info.run_id


def log_checkpoint(ctx: Context, model: TaskModel, tokenizer, source_meta: dict) -> None:
    cfg = ctx.cfg
    meta = {
        "base_model": cfg.base_model,
        "task": cfg.task,
        "mode": cfg.mode,
        "frozen_layers": cfg.frozen_layers,
        "source": source_meta,
    }
    save_checkpoint(model, tokenizer, ctx.folder / tracking.CHECKPOINT, meta)
    tracking.log_artifact(ctx.folder / tracking.CHECKPOINT, tracking.CHECKPOINT)
    if registers_source(cfg):
        uri = tracking.register_checkpoint(ctx.run_id, cfg.task, source_tags(cfg))
        tracking.set_tags({tracking.REGISTERED_AS: uri})


def registers_source(cfg: TrainConfig) -> bool:
    """Full fine-tuning from the pretrained model: the runs transfer starts from."""
    return (
        cfg.mode == "single"
        and cfg.source_task == "base"
        and cfg.frozen_layers == 0
        and cfg.save_checkpoint
    )


def source_tags(cfg: TrainConfig) -> dict[str, str]:
    """What identifies a registered source model (a version of `bertrep-<task>`)."""
    return {
        tracking.BASE_MODEL: cfg.base_model,
        tracking.SEED: str(cfg.seed),
        tracking.CONFIG_KEY: cfg.key(),
    }


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> None:
    # A terminated run (kill, a scheduler's SIGTERM) ends KILLED, not left RUNNING.
    signal.signal(signal.SIGTERM, _interrupt)
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser, TrainConfig)
    add_arguments(parser, Runtime)
    args = parser.parse_args(argv)
    run_id = run(from_namespace(args, TrainConfig), from_namespace(args, Runtime))
    print(f"run {run_id} finished")


if __name__ == "__main__":
    main()
