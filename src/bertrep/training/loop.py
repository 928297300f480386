"""The Accelerate training loop and evaluation: what one run shares, the task data,
batches, the optimiser and its updates, scores.

    ctx = Context(cfg, accelerator, tracking.MetricLogger(run_id), pad_id, run_id, folder, rt)
    steps, diverged = optimise(ctx, model, [task_data], cfg.max_steps, phase="train")
    scores = log_eval(ctx, model, task_data, steps)

`train` builds runs out of these (single, sequential, shuffled).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_constant_schedule_with_warmup, get_linear_schedule_with_warmup

from bertrep import tracking
from bertrep.data.encode import (
    IGNORE,
    Encoded,
    LengthGroupedBatches,
    collate,
    encode_cached,
    eval_batches,
)
from bertrep.data.metrics import chance_score, score
from bertrep.data.tasks import TaskSpec, get_task, load_split
from bertrep.maths.transfer import normalize
from bertrep.training.config import Runtime, TrainConfig
from bertrep.training.model import TaskModel, loss_fn, predictions
from bertrep.training.prefix import prefix_states

DATA_SEED = 0  # the training subsample is the same for every run; seeds vary init and order


@dataclass
class TaskData:
    spec: TaskSpec
    train: Encoded
    eval: Encoded
    chance: float
    train_file: str  # the files read (or the hub dataset)
    eval_file: str
    best: float = 1.0  # best_B of the normalized score
    best_origin: str = ""  # where best came from


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
    logged_elsewhere: int = 0  # bytes of artifacts logged from outside `folder` (a model)


def load_task_data(cfg: TrainConfig, task: str, tokenizer) -> TaskData:
    """Tokenized train and eval splits of `task`, subsampled as `cfg` says."""
    spec = get_task(task)
    where = {"data_dir": cfg.data_dir, "data_files": cfg.data_files if task == cfg.task else ""}
    eval_examples, eval_file = load_split(spec, spec.eval_split, **where)
    if cfg.max_eval_examples:
        eval_examples = eval_examples[: cfg.max_eval_examples]
    eval_data = encode_cached(spec, eval_examples, eval_file, tokenizer, cfg.max_length)
    examples, train_file = load_split(spec, spec.train_split, **where)
    train_data = encode_cached(spec, examples, train_file, tokenizer, cfg.max_length)
    if cfg.max_train_examples and cfg.max_train_examples < len(train_data):
        rng = np.random.default_rng(DATA_SEED)
        keep = np.sort(rng.choice(len(train_data), cfg.max_train_examples, replace=False))
        train_data = train_data.subset(keep)
    chance = chance_score(spec, eval_examples)
    return TaskData(spec, train_data, eval_data, chance, train_file, eval_file)


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
def evaluate(
    ctx: Context, model: TaskModel, task: TaskData, data: Encoded | None = None, prefix=None
) -> dict[str, float]:
    """The task's metrics on its eval split (or on `data`, with its frozen-prefix states)."""
    data = task.eval if data is None else data
    model.eval()
    batches = eval_batches(data, max(64, ctx.cfg.batch_size))
    loader = ctx.accelerator.prepare(make_loader(data, batches, ctx.pad_id, prefix))
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


def log_eval(ctx: Context, model: TaskModel, task: TaskData, step: int) -> dict[str, float]:
    """Score `task` and log raw, chance and normalized scores; the run's own task under
    eval/..., the other task of a two-task run under eval/<task>/..."""
    scores = evaluate(ctx, model, task)
    scope = None if task.spec.name == ctx.cfg.task else task.spec.name
    logged = {tracking.eval_metric(k, scope): v for k, v in scores.items()}
    logged[tracking.eval_metric("chance", scope)] = task.chance
    norm = normalize(scores[task.spec.metric], task.chance, task.best, strict=False)
    logged[tracking.eval_metric("norm_score", scope)] = norm
    ctx.metrics.log(logged, step)
    return scores


def make_optimizer(ctx: Context, model: TaskModel, steps: int):
    """AdamW (bias-corrected, no decay on biases and norms), linear warm-up, then linear
    decay to 0 at `steps` or a constant rate (`schedule`); the heads (and BERT's pooler)
    at `head_lr` when it is set, the encoder at `lr`. The fused kernel (one pass over all
    parameters, on CPU and GPU) is what Trainer uses too."""
    cfg = ctx.cfg
    heads = {id(p) for p in ctx.accelerator.unwrap_model(model).head_parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    body = [p for p in trainable if id(p) not in heads]
    head = [p for p in trainable if id(p) in heads]
    groups = []
    for part, lr in ((body, cfg.lr), (head, cfg.head_lr or cfg.lr)):
        groups += [
            {"params": [p for p in part if p.ndim > 1], "weight_decay": cfg.weight_decay},
            {"params": [p for p in part if p.ndim <= 1], "weight_decay": 0.0},
        ]
        groups[-2]["lr"] = groups[-1]["lr"] = lr
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr, fused=True)
    warmup = int(cfg.warmup_ratio * steps)
    if cfg.schedule == "constant":
        scheduler = get_constant_schedule_with_warmup(optimizer, warmup)
    else:
        scheduler = get_linear_schedule_with_warmup(optimizer, warmup, steps)
    return ctx.accelerator.prepare(optimizer, scheduler)


def task_batches(
    ctx: Context, model: TaskModel, tasks: list[TaskData], steps: int
) -> Iterator[tuple[TaskData, dict]]:
    """`steps` training batches: with one task its batches in turn, with several a task
    drawn per step (`cfg.sampling`). Frozen-prefix outputs come from the cache."""
    cfg, accelerator = ctx.cfg, ctx.accelerator
    loaders = []
    for i, task in enumerate(tasks):
        sampler = LengthGroupedBatches(task.train.lengths(), cfg.batch_size, cfg.seed + i)
        frozen = prefix_states(
            accelerator.unwrap_model(model),
            task.train,
            ctx.pad_id,
            ctx.runtime.prefix_cache_gb,
            ctx.runtime.prefix_disk_gb,
            uses=steps * cfg.batch_size,
        )
        loader = make_loader(task.train, sampler, ctx.pad_id, frozen)
        loaders.append(endless(accelerator.prepare(loader)))
    sizes = np.array([len(t.train) for t in tasks], dtype=float)
    weights = sizes / sizes.sum() if cfg.sampling == "proportional" else None
    for i in np.random.default_rng(cfg.seed).choice(len(tasks), size=steps, p=weights):
        yield tasks[i], next(loaders[i])


def optimise(
    ctx: Context,
    model: TaskModel,
    tasks: list[TaskData],
    steps: int,
    phase: str,
    on_step: Callable[[int], bool | None] | None = None,
) -> tuple[int, str]:
    """`steps` updates on batches of `tasks`. Calls on_step(0) first, then on_step(s)
    after update s; a true answer stops training there (early stopping). Returns
    (updates done, why the loss diverged or "")."""
    optimizer, scheduler = make_optimizer(ctx, model, steps)
    batches = task_batches(ctx, model, tasks, steps)
    loss_key, lr_key = tracking.phase_metric(phase, "loss"), tracking.phase_metric(phase, "lr")
    if on_step:
        on_step(0)
    model.train()
    done, seen, busy, diverged = 0, 0, 0.0, ""
    names = "+".join(t.spec.name for t in tasks)
    bar = tqdm(total=steps, desc=f"{phase} {names}", disable=not ctx.runtime.progress)
    for step, (task, batch) in enumerate(batches, start=1):
        start = time.perf_counter()
        labels = batch.pop("labels")
        loss = loss_fn(task.spec, model(task.spec.name, **batch), labels)
        ctx.metrics.log({loss_key: loss.item()}, step)
        if not torch.isfinite(loss):  # keep the last finite weights: the run stays analysable
            diverged = f"non-finite {phase} loss at step {step}"
            break
        ctx.accelerator.backward(loss)
        if ctx.cfg.max_grad_norm > 0:
            ctx.accelerator.clip_grad_norm_(model.parameters(), ctx.cfg.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        busy += time.perf_counter() - start
        done, seen = step, seen + len(labels)
        ctx.metrics.log({lr_key: scheduler.get_last_lr()[0]}, step)
        bar.update()
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if on_step and on_step(step):
            break
    bar.close()
    throughput = tracking.phase_metric(phase, "examples_per_s")
    updates = tracking.phase_metric(phase, "updates")
    ctx.metrics.log({throughput: seen / max(busy, 1e-9), updates: done}, done)
    return done, diverged
